// libFuzzer entry point for the AVF device model: register accesses, admin
// queue descriptors, virtchnl messages and guest-memory corruption in any
// order (encoding in ops.h). After every operation it checks what must hold
// for any input: queue contexts stay inside the DMA map and the granted
// queues, the persistence memo never goes stale, the ATQ head stays inside
// its ring. A violation aborts (the fuzzer reports it as a crash).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "avf/device.h"
#include "avf/fuzz/ops.h"
#include "avf/testing.h"
#include "avf/virtchnl.h"
#include "tests/fuzz/fuzz_reader.h"

namespace {

using namespace emud::avf;
using emud::avf::fuzz::Op;

constexpr uint64_t kRamBase = 0x100000;
constexpr size_t kRamSize = 512 << 10;

using emud::fuzz::Reader;

template <typename T>
void Add(std::string* s, const T& v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

void Check(bool ok, const char* what) { emud::fuzz::Check(ok, "avf", what); }

struct Rig {
  explicit Rig(testing::FakeDma* d) : dma(*d) {}
  testing::FakeDma& dma;
  testing::FakeIrqs irqs;
  std::unique_ptr<Device> dev;
  std::unique_ptr<testing::MiniDriver> drv;

  // 4 queue pairs of at most 512 descriptors after the mailbox memory.
  uint64_t TxRing(uint32_t q) const { return drv->scratch_base() + q * 0x8000; }
  uint64_t RxRing(uint32_t q) const { return drv->scratch_base() + q * 0x8000 + 0x2000; }

  // Builds the message into `m` (cleared first; the harness reuses one
  // buffer for every message instead of allocating one each).
  void Template(uint8_t t, uint32_t arg, uint32_t* v_op, std::string& m) {
    m.clear();
    const uint16_t nq = static_cast<uint16_t>(1 + arg % 4);
    switch (t % fuzz::kNumTemplates) {
      case fuzz::kTVersion:
        *v_op = vc::kOpVersion;
        Add(&m, vc::VersionInfo{1, arg & 1});
        break;
      case fuzz::kTGetResources:
        *v_op = vc::kOpGetVfResources;
        Add(&m, arg == 0 ? 0xFFFFFFFFu : arg);
        break;
      case fuzz::kTIrqMap:
        *v_op = vc::kOpConfigIrqMap;
        Add(&m, static_cast<uint16_t>(nq + 1));
        for (uint16_t q = 0; q < nq; ++q) {
          Add(&m, vc::VectorMap{kVsiId, static_cast<uint16_t>(q + 1), static_cast<uint16_t>(1u << q),
                                static_cast<uint16_t>(1u << q), 0, 1});
        }
        Add(&m, vc::VectorMap{kVsiId, 0, 0, 0, 0, 0});
        break;
      case fuzz::kTVsiQueues: {
        *v_op = vc::kOpConfigVsiQueues;
        Add(&m, vc::VsiQueueConfigHeader{kVsiId, nq, 0});
        for (uint16_t q = 0; q < nq; ++q) {
          vc::QueuePairInfo p{};
          p.txq.vsi_id = p.rxq.vsi_id = kVsiId;
          p.txq.queue_id = p.rxq.queue_id = q;
          p.txq.ring_len = static_cast<uint16_t>(64 * (1 + (arg >> 4) % 8));
          p.rxq.ring_len = 64 * (1 + (arg >> 8) % 8);
          p.txq.dma_ring_addr = TxRing(q);
          p.rxq.dma_ring_addr = RxRing(q);
          p.rxq.databuffer_size = 1024 + 128 * ((arg >> 12) % 100);
          p.rxq.max_pkt_size = 64 + (arg >> 16) % 9700;
          Add(&m, p);
        }
        break;
      }
      case fuzz::kTEnable:
      case fuzz::kTDisable:
        *v_op = t % fuzz::kNumTemplates == fuzz::kTEnable ? vc::kOpEnableQueues : vc::kOpDisableQueues;
        Add(&m, vc::QueueSelect{kVsiId, 0, arg & 0xFFFF, arg >> 16 ? arg >> 16 : arg & 0xFFFF});
        break;
      case fuzz::kTAddMac:
        *v_op = (arg & 1) ? vc::kOpDelEthAddr : vc::kOpAddEthAddr;
        Add(&m, kVsiId);
        Add(&m, uint16_t{1});
        Add(&m, vc::EtherAddr{{2, 0, 0, 0, static_cast<uint8_t>(arg >> 8), static_cast<uint8_t>(arg >> 16)}, 1, 0});
        break;
      case fuzz::kTRssKey:
        *v_op = (arg & 1) ? vc::kOpConfigRssLut : vc::kOpConfigRssKey;
        Add(&m, kVsiId);
        Add(&m, static_cast<uint16_t>((arg & 1) ? kRssLutSize : kRssKeySize));
        m.append((arg & 1) ? kRssLutSize : kRssKeySize, static_cast<char>(arg >> 8));
        break;
      case fuzz::kTStats:
        *v_op = vc::kOpGetStats;
        Add(&m, vc::QueueSelect{kVsiId, 0, 0, 0});
        break;
      case fuzz::kTResetVf:
      default:
        *v_op = vc::kOpResetVf;
        break;
    }
  }

  void CheckInvariants(bool memo) {
    if (memo) Check(dev->SaveCacheConsistentForTest(), "persistence memo stale");
    Check(dev->ReadReg(kVfAtqh1) < 1024, "ATQH out of range");
    const uint32_t pairs = dev->num_queue_pairs(), vectors = dev->msix_vectors();
    Check(pairs >= 1 && pairs <= kMaxQueuePairs, "queue count");
    // Every queue the device has a context for: tx_queue/rx_queue(q) of a
    // q >= max_queue_pairs is the constant unconfigured context, which
    // passes every check below whatever the input does.
    const uint32_t offered = std::min(dev->options().max_queue_pairs, kMaxQueuePairs);
    for (uint32_t q = 0; q < offered; ++q) {
      const TxQueueContext& t = dev->tx_queue(q);
      const RxQueueContext& r = dev->rx_queue(q);
      Check(!t.enabled || t.configured, "enabled TX queue without ring");
      Check(!r.enabled || r.configured, "enabled RX queue without ring");
      if (t.configured) {
        Check(q < pairs, "TX queue beyond the granted ones");
        Check(dma.Contains(t.ring_addr, uint64_t{t.ring_len} * 16), "TX ring outside the DMA map");
      }
      if (r.configured) {
        Check(dma.Contains(r.ring_addr, uint64_t{r.ring_len} * 32), "RX ring outside the DMA map");
        // CONFIG_VSI_QUEUES' floor is 128 bytes, as i40e's (Linux >= 6.10
        // sizes buffers from the MTU), and buffers are whole 128-byte units.
        Check(r.buffer_size >= 128 && r.buffer_size <= 16256 && r.buffer_size % 128 == 0 &&
                  r.max_frame >= 64 && r.max_frame <= kMaxFrameSize,
              "RX sizes");
      }
      Check(t.msix_vector < vectors && r.msix_vector < vectors, "vector");
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Reader in(data, size);
  const uint8_t flags = in.U8();
  // Guest RAM outlives the input (a fresh 512 KiB per input costs more page
  // faults than the whole run); the pages the last input touched are
  // zeroed, so every input starts from the same memory as a fresh one would.
  static testing::FakeDma* dma = new testing::FakeDma(kRamBase, kRamSize);
  dma->ZeroTouched();
  Rig rig(dma);
  DeviceOptions o;
  o.mapped_doorbells = (flags & 2) != 0;
  auto dev = Device::Create(o);
  if (!dev.ok()) std::abort();
  rig.dev = std::move(*dev);
  rig.dev->Attach({&rig.dma, &rig.irqs});
  rig.drv = std::make_unique<testing::MiniDriver>(rig.dev.get(), &rig.dma);
  if (flags & 1) rig.drv->InitAdminQueue();

  for (int steps = 0; !in.done() && steps < 1024; ++steps) {
    switch (static_cast<Op>(in.U8() % fuzz::kNumOps)) {
      case fuzz::kWrite: {
        uint32_t off = (uint32_t{in.U16()} * 4) % kBar0Size;
        rig.dev->WriteReg(off, in.U32());
        break;
      }
      case fuzz::kRead:
        rig.dev->ReadReg((uint32_t{in.U16()} * 4) % kBar0Size);
        break;
      case fuzz::kMsg: {
        // Any opcode: one byte covers every virtchnl opcode defined so far
        // (new ones included, with no list to update); 0xFF escapes to a
        // full 32-bit opcode.
        uint32_t v_op = in.U8();
        if (v_op == 0xFF) v_op = in.U32();
        rig.drv->Send(v_op, in.Bytes(in.U16() % (kAqMaxBufSize + 1)));
        break;
      }
      case fuzz::kPoke: {
        uint64_t off = in.U32() % kRamSize;
        absl::Span<const uint8_t> b = in.Bytes(in.U8());
        if (rig.dma.Contains(kRamBase + off, b.size())) std::memcpy(rig.dma.At(kRamBase + off, b.size()), b.data(), b.size());
        break;
      }
      case fuzz::kDrain:
        // Bounded: the input may have given the ARQ another length than the
        // driver's 32, so its head need never meet the driver's index.
        for (int n = 0; n < 64 && rig.drv->Discard(); ++n) {
        }
        break;
      case fuzz::kMisc: {
        uint8_t what = in.U8();
        uint32_t arg = in.U32();
        switch (what % 7) {
          case 0: (void)rig.dev->Reset(); break;
          case 1: rig.dev->ResetVfFromPf(); break;
          case 2: rig.dev->RaiseQueueInterrupt(arg & 1 ? QueueKind::kTx : QueueKind::kRx, (arg >> 1) % 32); break;
          case 3: rig.dev->SetLink(arg & 1, arg >> 1); break;
          case 4: {
            uint32_t v = arg >> 12;
            (void)rig.dev->RegionWrite(emud::vfio_user::kConfigRegion, arg % 4093,
                                       absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&v), 3));
            break;
          }
          case 5: {
            uint32_t v = arg;
            (void)rig.dev->RegionWrite(emud::vfio_user::kBar3, (arg >> 4) % (kBar3Size - 4),
                                       absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&v), 4));
            break;
          }
          case 6:
            rig.dev->Detach();
            rig.dev->Attach({&rig.dma, &rig.irqs});
            break;
        }
        break;
      }
      case fuzz::kRawAtq: {
        uint8_t raw[kAqDescSize] = {};
        absl::Span<const uint8_t> given = in.Bytes(kAqDescSize);
        std::memcpy(raw, given.data(), given.size());
        AqDesc d = AqDesc::Decode(raw);
        uint16_t tail = in.U16();
        d.Encode(rig.dma.At(rig.drv->atq() + (tail % testing::MiniDriver::kLen) * kAqDescSize, kAqDescSize));
        rig.dev->WriteReg(kVfAtqt1, tail);
        break;
      }
      case fuzz::kValid: {
        uint8_t t = in.U8();
        uint32_t arg = in.U32();
        uint32_t v_op = 0;
        static std::string* body = new std::string();
        rig.Template(t, arg, &v_op, *body);
        rig.drv->Send(v_op, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(body->data()), body->size()));
        break;
      }
      default:
        break;
    }
    rig.CheckInvariants(false);
  }
  // Flags bit 2: also check the persistence memo (it serializes every
  // record, more than the rest of a typical input costs).
  rig.CheckInvariants((flags & 4) != 0);
  return 0;
}
