// libFuzzer entry point for the TX queue engine (dataplane/queues.h):
// descriptor chains (data and context descriptors, RS/EOP/dummy bits),
// checksum offsets and TSO header lengths, VLAN insertion (L2TAG1 and
// L2TAG2), rings of every length, tails anywhere, buffers inside, across
// and outside the DMA windows, windows unmapped mid-use, crash recovery.
//
// Input: byte 0 picks the ring length (8 << (b % 6)) and the queue limits;
// then operations, an opcode byte (% kNumOps) and its operands:
//   0 data desc   u8 idx, u8 addr-sel, u16 addr, u16 size, u16 cmd, u32 offsets, u16 l2tag1
//   1 ctx desc    u8 idx, u64 qw0, u8 cmd, u32 tso_len, u16 mss
//   2 raw desc    u8 idx, 16 bytes
//   3 headers     u16 addr, u8 kind, u8 options, u16 payload, i8 length lie
//   4 bytes       u16 addr, u8 n, n bytes
//   5 doorbell    u16 tail, u8 budget
//   6 reconfig    u8 ring-sel, u16 addr (a ring anywhere), u8 enable
//   7 unmap       unmaps the writable window (OnDmaUnmap), runs, maps it again
//   8 recover     TxQueue::Recover (a successor after a crash)
//   9 backend     u8: frames the backend accepts per Send (0 = all)
// After every operation: head inside the ring; every frame handed to the
// backend was read in full (ASan checks the bytes) and is within bounds.
#include <cstdint>
#include <cstring>

#include "dataplane/fuzz/fuzz_input.h"
#include "dataplane/queues.h"

namespace {

using namespace emud::dataplane;
using namespace emud::dataplane::fuzz;

constexpr uint64_t kRing = kBase;  // ring at the start of the window

struct Sink : Backend {
  size_t accept = 0;  // 0: all
  uint64_t sum = 0;
  std::string spec() const override { return "fuzz"; }
  size_t Send(uint16_t, absl::Span<const FrameView> frames) override {
    size_t n = 0;
    for (FrameView f : frames) {
      if (accept != 0 && n >= accept) break;
      Check(!f.empty(), "empty frame sent");
      Check(f.size() <= 256 * 1024 + 512, "frame larger than any TSO packet");
      // Every byte must be readable: one memcpy, which ASan checks whole
      // (a byte loop would cost a comparison callback per byte).
      static uint8_t* copy = new uint8_t[256 * 1024 + 512];
      std::memcpy(copy, f.data(), f.size());
      sum += copy[f.size() - 1];
      ++n;
    }
    return n;
  }
  size_t Poll(size_t, uint32_t) override { return 0; }
  int event_fd(uint32_t) const override { return -1; }
};

void Desc(GuestMemory& m, uint32_t ring_len, uint8_t idx, uint64_t qw0, uint64_t qw1) {
  uint64_t iova = kRing + uint64_t{idx % (ring_len ? ring_len : 8)} * 16;
  m.Poke(iova, reinterpret_cast<const uint8_t*>(&qw0), 8);
  m.Poke(iova + 8, reinterpret_cast<const uint8_t*>(&qw1), 8);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Reader in(data, size);
  const uint8_t cfg = in.U8();
  uint32_t ring_len = 8u << (cfg % 6);  // 8..256
  QueueLimits limits;
  if (cfg & 0x40) limits.max_tso_buffers = 8;
  if (cfg & 0x80) limits.max_frame = 1518;
  GuestMemory m;
  static QueueStateFile* state = QueueStateFile::Anonymous().release();
  HotQueue* hot = state->tx(0);
  std::memset(static_cast<void*>(hot), 0, sizeof(*hot));
  Sink sink;
  // The batch arena outlives the input (1 MiB allocated per input costs
  // more than the input): the queue writes every arena byte it hands the
  // backend, so what an earlier input left there is never read.
  static auto* arena = new uint8_t[TxQueue::kArenaBytes];
  TxQueue q(0, hot, limits, arena);
  Check(q.Configure(kRing, ring_len).ok(), "configure");
  Check(q.SetEnabled(true).ok(), "enable");

  for (int steps = 0; !in.done() && steps < 512; ++steps) {
    switch (in.U8() % 10) {
      case 0: {
        uint8_t idx = in.U8(), sel = in.U8();
        uint64_t addr = GuestMemory::Addr(sel, in.U16());
        uint32_t sz = in.U16() & 0x3FFF, cmd = in.U16() & 0x3FF, offs = in.U32() & 0x3FFFF;
        uint64_t l2tag1 = in.U16();
        Desc(m, ring_len, idx, addr, txd::DataQw1(cmd, offs, sz) | l2tag1 << 48);
        break;
      }
      case 1: {
        uint8_t idx = in.U8();
        uint64_t qw0 = in.U64();
        uint32_t cmd = in.U8(), tso_len = in.U32() & 0x3FFFF, mss = in.U16() & 0x3FFF;
        Desc(m, ring_len, idx, qw0, txd::ContextQw1(cmd, tso_len, mss));
        break;
      }
      case 2: {
        uint8_t idx = in.U8();
        absl::Span<const uint8_t> p = in.Bytes(16);
        uint8_t raw[16] = {};
        std::memcpy(raw, p.data(), p.size());
        uint64_t qw0, qw1;
        std::memcpy(&qw0, raw, 8);
        std::memcpy(&qw1, raw + 8, 8);
        Desc(m, ring_len, idx, qw0, qw1);
        break;
      }
      case 3: {
        uint64_t at = kBase + in.U16() % kMemSize;
        uint8_t kind = in.U8(), opt = in.U8();
        uint16_t payload = in.U16() % 9000;
        m.Headers(at, kind, opt, payload, static_cast<int8_t>(in.U8()));
        break;
      }
      case 4: {
        uint64_t at = kBase + in.U16() % kMemSize;
        absl::Span<const uint8_t> p = in.Bytes(in.U8());
        m.Poke(at, p.data(), p.size());
        break;
      }
      case 5: {
        uint32_t tail = in.U16() % (ring_len + 2);
        uint32_t budget = 1 + in.U8();
        (void)q.Process(tail, m.dma, sink, budget);
        break;
      }
      case 6: {
        uint8_t sel = in.U8();
        uint64_t addr = (sel & 0x80) ? GuestMemory::Addr(sel, in.U16()) : kRing;
        if (!(sel & 0x80)) (void)in.U16();
        uint32_t len = (sel & 0x40) ? in.U16() : 8u << (sel % 6);
        if (q.Configure(addr, len).ok()) ring_len = len;
        (void)q.SetEnabled(in.U8() & 1);
        break;
      }
      case 7:
        q.OnDmaUnmap(kBase, kMemSize);
        m.dma.RemoveWindow(kBase);
        (void)q.Process(in.U16() % (ring_len + 1), m.dma, sink, 64);
        m.Map();
        break;
      case 8:
        (void)q.Recover(m.dma);
        break;
      case 9:
        sink.accept = in.U8();
        break;
    }
    Check(q.ring_len() == 0 || q.head() < q.ring_len(), "TX head outside the ring");
  }
  return 0;
}
