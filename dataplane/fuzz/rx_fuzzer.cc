// libFuzzer entry point for the RX queue engine (dataplane/queues.h): ring
// state (head, tail anywhere, rings of every length, reconfiguration, enable
// and disable, crash recovery with a half-written frame), buffer sizes
// (databuffer_size and max_pkt_size in and out of range, frames spanning
// buffers), buffers inside, across and outside the DMA windows (read-only
// ones too), windows unmapped mid-use.
//
// Input: byte 0 picks the ring length (8 << (b % 6)); then operations, an
// opcode byte (% kNumOps) and its operands:
//   0 post       u8 idx, u8 addr-sel, u16 addr, u8 hdr-sel, u16 hdr
//   1 raw desc   u8 idx, 32 bytes
//   2 deliver    u16 tail, u16 frame length, u8 csum/rss/hold bits (bit 6: may_hold,
//                as the data path delivers; bit 7 then: FlushHeld after it)
//   3 configure  u8 ring-sel, u16 addr, u16 dbuf, u16 max_pkt, u8 enable
//   4 sizes      u16 dbuf, u16 max_pkt (a successor's SetBufferSizes)
//   5 unmap      unmaps the writable window (OnDmaUnmap), delivers, maps it again
//   6 recover    RxQueue::Recover
//   7 intent     u32: the persisted intent word (as a killed predecessor left it)
// After every operation: head inside the ring, and a held write-back's frame
// covered by the persisted intent (a crash then is a write-back in progress). Every frame byte the queue
// writes lands in the DMA window's host buffer, whose end ASan guards.
#include <cstdint>

#include "dataplane/fuzz/fuzz_input.h"
#include "dataplane/queues.h"

namespace {

using namespace emud::dataplane;
using namespace emud::dataplane::fuzz;

constexpr uint64_t kRing = kBase;

void Desc(GuestMemory& m, uint32_t ring_len, uint8_t idx, uint64_t qw0, uint64_t qw1) {
  uint64_t iova = kRing + uint64_t{idx % (ring_len ? ring_len : 8)} * 32;
  m.Poke(iova, reinterpret_cast<const uint8_t*>(&qw0), 8);
  m.Poke(iova + 8, reinterpret_cast<const uint8_t*>(&qw1), 8);
  uint64_t zero[2] = {0, 0};
  m.Poke(iova + 16, reinterpret_cast<const uint8_t*>(zero), 16);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Reader in(data, size);
  const uint8_t cfg = in.U8();
  uint32_t ring_len = 8u << (cfg % 6);
  GuestMemory m;
  static QueueStateFile* state = QueueStateFile::Anonymous().release();
  HotQueue* hot = state->rx(0);
  std::memset(static_cast<void*>(hot), 0, sizeof(*hot));
  RxQueue q(0, hot);
  Check(q.Configure(kRing, ring_len, 2048, 1518).ok(), "configure");
  Check(q.SetEnabled(true).ok(), "enable");
  // Frame bytes: a fixed pattern, read at an offset the input picks.
  static std::vector<uint8_t>* frame = [] {
    auto* f = new std::vector<uint8_t>(16384 + 256);
    for (size_t i = 0; i < f->size(); ++i) (*f)[i] = uint8_t(i * 7);
    return f;
  }();

  for (int steps = 0; !in.done() && steps < 512; ++steps) {
    switch (in.U8() % 8) {
      case 0: {
        uint8_t idx = in.U8(), sel = in.U8();
        uint64_t pkt = GuestMemory::Addr(sel, in.U16());
        uint8_t hsel = in.U8();
        uint64_t hdr = (hsel & 8) ? GuestMemory::Addr(hsel, in.U16()) : (in.U16(), 0);
        Desc(m, ring_len, idx, pkt, hdr);
        break;
      }
      case 1: {
        uint8_t idx = in.U8();
        absl::Span<const uint8_t> p = in.Bytes(32);
        m.Poke(kRing + uint64_t{idx % (ring_len ? ring_len : 8)} * 32, p.data(), p.size());
        break;
      }
      case 2: {
        uint32_t tail = in.U16() % (ring_len + 2);
        size_t len = in.U16() % 16384;
        uint8_t bits = in.U8();
        uint64_t csum = (bits & 1 ? rxd::kL3L4P : 0) | (bits & 2 ? rxd::kErrIpe : 0) | (bits & 4 ? rxd::kErrL4e : 0);
        const FrameView fv(frame->data() + bits, len);
        // The data path's own check (tunnel parsing included) on the fuzzed
        // bytes, or the outer-checksum bits the legacy writer must mask.
        if (bits & 16) csum = rxd::FromRxCsum(CheckRxChecksums(fv));
        if (bits & 32) csum |= rxd::kErrEipe | rxd::kCsumEudpe;
        (void)q.Deliver(fv, tail, m.dma, csum, bits & 8, bits * 0x01010101u, 0,
                        /*may_hold=*/(bits & 64) != 0);
        if (bits & 128) q.FlushHeld();
        (void)q.TakeWroteBack();
        break;
      }
      case 3: {
        uint8_t sel = in.U8();
        uint64_t addr = (sel & 0x80) ? GuestMemory::Addr(sel, in.U16()) : (in.U16(), kRing);
        uint32_t len = (sel & 0x40) ? in.U16() : 8u << (sel % 6);
        uint32_t b = in.U16(), mp = in.U16();
        if (q.Configure(addr, len, b, mp).ok()) {
          ring_len = len;
        }
        (void)q.SetEnabled(in.U8() & 1);
        break;
      }
      case 4: {
        uint32_t b = in.U16(), mp = in.U16();
        q.SetBufferSizes(b, mp);
        break;
      }
      case 5: {
        q.OnDmaUnmap(kBase, kMemSize);
        m.dma.RemoveWindow(kBase);
        size_t len = 60 + in.U16() % 1500;
        (void)q.Deliver(FrameView(frame->data(), len), in.U16() % (ring_len + 1), m.dma);
        m.Map();
        break;
      }
      case 6:
        q.Recover(m.dma);
        break;
      case 7:
        // A predecessor's word: the engine that wrote it had ended its burst.
        q.FlushHeld();
        hot->intent.store(in.U32(), std::memory_order_relaxed);
        break;
    }
    Check(q.head() < ring_len || ring_len == 0, "RX head outside the ring");
    Check(!q.holding() || hot->intent.load(std::memory_order_relaxed) != q.head(),
          "RX write-back held outside the intent");
  }
  q.FlushHeld();
  Check(q.head() < ring_len || ring_len == 0, "RX head outside the ring");
  return 0;
}
