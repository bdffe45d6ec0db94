#include "avf/device.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "avf/avf_state.pb.h"
#include "base/mapped_file.h"
#include "state_store/record_codec.h"

namespace emud::avf {

namespace {

constexpr uint32_t kItrnIndex = 0x2800 / 4;  // first VFINT_ITRN1 dword in the window
// The doorbell memfd: the window, then one page the client never maps with
// the queue vectors' words (InterruptController) and a marker saying they
// are valid (a predecessor from before this layout left the page unset).
constexpr uint32_t kDoorbellFileSize = kDoorbellWindowSize + 0x1000;
// Vector words: InterruptController::VectorWordIndex (0..15, then 17..64);
// the mark sits at 16, where the 16-vector layout put it.
constexpr uint32_t kVectorIndex = kDoorbellWindowSize / 4;
constexpr uint32_t kVectorMarkIndex = kVectorIndex + 16;
static_assert(InterruptController::VectorWordIndex(15) < 16 &&
              InterruptController::VectorWordIndex(16) == 17);
static_assert(kVectorIndex + InterruptController::kVectorWords + 1 <= kDoorbellFileSize / 4);
constexpr uint32_t kVectorMark = 0x31515249;  // "IRQ1"

bool InRange(uint32_t off, uint32_t base, uint32_t count) {
  return off >= base && off < base + 4 * count && ((off - base) & 3) == 0;
}

}  // namespace

const TxQueueContext Device::kNoTxq{};
const RxQueueContext Device::kNoRxq{};

Device::Device(const DeviceOptions& options)
    : options_(options),
      msix_(DeviceMsixVectors(options.max_queue_pairs)),
      txq_(options.max_queue_pairs),
      rxq_(options.max_queue_pairs) {}

Device::~Device() = default;

absl::StatusOr<std::unique_ptr<Device>> Device::Create(const DeviceOptions& options) {
  if (options.max_queue_pairs < 1 || options.max_queue_pairs > kMaxQueuePairs) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_pairs must be 1..", kMaxQueuePairs, ", got ", options.max_queue_pairs,
                     " (more than 16 only for drivers negotiating LARGE_NUM_QPAIRS)"));
  }
  std::unique_ptr<Device> d(new Device(options));
  if (absl::Status s = d->Init(); !s.ok()) return s;
  return d;
}

absl::Status Device::Init() {
  if (options_.doorbell_fd >= 0) {
    doorbell_fd_.reset(options_.doorbell_fd);
    options_.doorbell_fd = -1;
    doorbell_adopted_ = true;
    struct stat st;
    if (fstat(doorbell_fd_.get(), &st) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("doorbell fd: fstat: ", strerror(errno)));
    }
    if (!S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(kDoorbellWindowSize)) {
      return absl::InvalidArgumentError("doorbell fd is not a file of at least the doorbell window");
    }
  } else {
    int fd = memfd_create("emud-avf-doorbells", MFD_CLOEXEC);
    if (fd < 0) return absl::InternalError(absl::StrCat("memfd_create: ", strerror(errno)));
    doorbell_fd_.reset(fd);
  }
  // Allocated before it is mapped (also an adopted one: the guest's stores
  // through QEMU's mapping must never fault; base/backed_file.h).
  // An adopted memfd of an older layout grows by the vector page here.
  auto map = MappedFile::MapBacked(doorbell_fd_.get(), kDoorbellFileSize, "doorbell memfd");
  if (!map.ok()) return map.status();
  doorbell_map_ = std::move(*map);
  doorbell_ = doorbell_map_.as<volatile uint32_t>();
  irq_ = std::make_unique<InterruptController>(doorbell_ + kItrnIndex, doorbell_ + kVectorIndex,
                                               msix_.num_vectors() - 1);
  num_queue_pairs_ = options_.max_queue_pairs;
  link_up_ = options_.link_up;
  link_speed_mbps_ = options_.link_speed_mbps;
  // A memfd of our own is new, so all zeros already (posix_fallocate of a
  // new file allocates zeroed pages): only the mark to set.
  if (!doorbell_adopted_) doorbell_[kVectorMarkIndex] = kVectorMark;
  return InitConfigSpace();
}

absl::Status Device::InitConfigSpace() {
  config_ = std::make_unique<vfio_user::PciConfigSpace>(4096);
  vfio_user::PciConfigSpace::Header h;
  h.vendor_id = kVendorIntel;
  h.device_id = kDeviceAdaptiveVf;
  h.subsystem_vendor_id = kVendorIntel;
  h.subsystem_id = 0x0000;
  h.revision = 0x01;
  h.class_code = kClassEthernet;
  h.interrupt_pin = 0;  // iavf needs MSI-X; no INTx
  config_->SetHeader(h);
  using BarType = vfio_user::PciConfigSpace::BarType;
  if (auto s = config_->SetBar(0, kBar0Size, BarType::kMem64, /*prefetchable=*/true); !s.ok()) {
    return s;
  }
  if (auto s = config_->SetBar(3, kBar3Size, BarType::kMem64, /*prefetchable=*/true); !s.ok()) {
    return s;
  }
  if (auto s = config_->AddPcieCapability({}); !s.ok()) return s.status();
  if (auto s = config_->AddMsixCapability(&msix_, 3, kMsixTableOffset, 3, kMsixPbaOffset); !s.ok()) {
    return s.status();
  }
  config_->set_flr_callback([this] {
    ++counters_.flrs;
    (void)Reset();
  });
  return absl::OkStatus();
}

// ---------------------------------------------------------------- PciDevice

std::vector<vfio_user::RegionDesc> Device::Regions() const {
  std::vector<vfio_user::RegionDesc> r(vfio_user::kNumPciRegions);
  for (uint32_t i = 0; i < vfio_user::kNumPciRegions; ++i) r[i].index = i;
  r[vfio_user::kBar0].size = kBar0Size;
  r[vfio_user::kBar0].readable = r[vfio_user::kBar0].writable = true;
  if (options_.mapped_doorbells) {
    r[vfio_user::kBar0].mmap_areas.push_back({0, kDoorbellWindowSize});
    r[vfio_user::kBar0].mmap_fd = doorbell_fd_.get();
    r[vfio_user::kBar0].fd_offset = 0;
  }
  r[vfio_user::kBar3].size = kBar3Size;
  r[vfio_user::kBar3].readable = r[vfio_user::kBar3].writable = true;
  r[vfio_user::kConfigRegion].size = config_->size();
  r[vfio_user::kConfigRegion].readable = r[vfio_user::kConfigRegion].writable = true;
  return r;
}

std::vector<vfio_user::IrqDesc> Device::Irqs() const {
  std::vector<vfio_user::IrqDesc> v(vfio_user::kNumPciIrqs);
  for (uint32_t i = 0; i < vfio_user::kNumPciIrqs; ++i) v[i].index = i;
  v[vfio_user::kMsixIrq].count = msix_.num_vectors();
  v[vfio_user::kMsixIrq].maskable = true;
  return v;
}

absl::Status Device::RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out) {
  switch (region) {
    case vfio_user::kConfigRegion:
      return config_->Read(offset, out);
    case vfio_user::kBar0: {
      if (offset >= kBar0Size || out.size() > kBar0Size - offset) {
        return absl::OutOfRangeError("BAR0 access out of range");
      }
      if ((out.size() == 4 || out.size() == 8) && (offset & 3) == 0) {
        for (size_t i = 0; i < out.size(); i += 4) {
          uint32_t v = ReadReg(static_cast<uint32_t>(offset + i));
          std::memcpy(out.data() + i, &v, 4);
        }
        return absl::OkStatus();
      }
      // Odd sizes: bytes of the covering dwords (with their read side effects).
      ++counters_.odd_size_accesses;
      for (size_t i = 0; i < out.size(); ++i) {
        uint64_t a = offset + i;
        uint32_t v = ReadReg(static_cast<uint32_t>(a & ~uint64_t{3}));
        out[i] = static_cast<uint8_t>(v >> (8 * (a & 3)));
      }
      return absl::OkStatus();
    }
    case vfio_user::kBar3: {
      if (offset >= kBar3Size || out.size() > kBar3Size - offset) {
        return absl::OutOfRangeError("BAR3 access out of range");
      }
      if (offset >= kMsixPbaOffset) {
        msix_.PbaRead(offset - kMsixPbaOffset, out);
      } else {
        msix_.TableRead(offset - kMsixTableOffset, out);
      }
      return absl::OkStatus();
    }
    default:
      std::memset(out.data(), 0, out.size());
      return absl::OkStatus();
  }
}

absl::Status Device::RegionWrite(uint32_t region, uint64_t offset, absl::Span<const uint8_t> data) {
  switch (region) {
    case vfio_user::kConfigRegion:
      Touch(1u << kRecPci);
      return config_->Write(offset, data);
    case vfio_user::kBar0: {
      if (offset >= kBar0Size || data.size() > kBar0Size - offset) {
        return absl::OutOfRangeError("BAR0 access out of range");
      }
      if ((data.size() == 4 || data.size() == 8) && (offset & 3) == 0) {
        for (size_t i = 0; i < data.size(); i += 4) {
          uint32_t v;
          std::memcpy(&v, data.data() + i, 4);
          WriteReg(static_cast<uint32_t>(offset + i), v);
        }
      } else {
        ++counters_.odd_size_accesses;  // registers are dwords: ignored
      }
      return absl::OkStatus();
    }
    case vfio_user::kBar3: {
      if (offset >= kBar3Size || data.size() > kBar3Size - offset) {
        return absl::OutOfRangeError("BAR3 access out of range");
      }
      Touch(1u << kRecPci);
      if (offset < kMsixPbaOffset) msix_.TableWrite(offset - kMsixTableOffset, data);
      return absl::OkStatus();  // PBA is read-only
    }
    default:
      return absl::OkStatus();
  }
}

void Device::Attach(const vfio_user::DeviceContext& ctx) {
  ctx_ = ctx;
  irq_->set_sink(ctx.irqs);
  msix_.Attach(ctx.irqs);
  Touch((1u << kRecAq) | (1u << kRecIrq));
  // Replies that waited for a client (or for ARQ room) may go now.
  if (aq_.DrainBacklog(ctx_.dma) > 0) irq_->RaiseAdminQueue();
}

void Device::Detach() {
  ctx_ = {};
  irq_->set_sink(nullptr);
  msix_.Detach();
}

absl::Status Device::Reset() {
  Touch(kAllRecords);
  VfReset();
  config_->Reset();  // also resets the MSI-X control state
  msix_.Reset();
  vf_major_ = vf_minor_ = 0;
  granted_caps_ = 0;
  requested_caps_ = 0;
  resources_sent_ = false;
  num_queue_pairs_ = options_.max_queue_pairs;
  return absl::OkStatus();
}

void Device::OnDmaUnmap(uint64_t iova, uint64_t size) {
  // The device itself keeps no pointer into guest memory (admin queue and
  // ring validation use Read/Write); the data path may.
  if (hooks_ != nullptr) hooks_->OnDmaUnmap(iova, size);
}

// ---------------------------------------------------------------- registers

uint32_t Device::DoorbellRead(uint32_t index) const { return doorbell_[index]; }
void Device::DoorbellWrite(uint32_t index, uint32_t value) { doorbell_[index] = value; }

// Out of line and without a decision of the device's logic: the fuzz builds
// leave them uninstrumented (tests/fuzz/coverage_ignore.txt), where a traced
// comparison per register of 512 would cost more than the reset or save
// that calls them.
[[gnu::noinline]] void Device::ZeroTails() {
  volatile uint32_t* tx = doorbell_ + QtxTail(0) / 4;
  volatile uint32_t* rx = doorbell_ + QrxTail(0) / 4;
  for (uint32_t q = 0; q < kMaxDecodedQueues; ++q) {
    tx[q] = 0;
    rx[q] = 0;
  }
}
[[gnu::noinline]] uint32_t Device::TailsInUse(uint32_t first_index) const {
  const volatile uint32_t* tails = doorbell_ + first_index;
  uint32_t n = kMaxDecodedQueues;
  while (n > 0 && tails[n - 1] == 0) --n;
  return n;
}

uint32_t Device::TxTail(uint32_t q) const {
  return q < kMaxDecodedQueues ? DoorbellRead(QtxTail(q) / 4) : 0;
}
uint32_t Device::RxTail(uint32_t q) const {
  return q < kMaxDecodedQueues ? DoorbellRead(QrxTail(q) / 4) : 0;
}

uint32_t Device::ReadReg(uint32_t off) {
  off &= ~3u;
  if (reset_pending_) [[unlikely]] {
    // RESET_VF's ATQ entry completed (head advanced) when it was handled; a
    // PF resets the VF only afterwards, so the driver's wait for that entry
    // sees it done: iavf_asq_send_command polls ATQH == next_to_use, reads
    // it again to take the result, iavf_clean_asq and iavf_remove read it
    // once more. Any other access (the reset detector's ARQLEN read, a
    // register write) comes after the reset.
    if (off == kVfAtqh1) return aq_.ReadReg(kVfAtqh1);
    Touch(1u << kRecVf);
    reset_pending_ = false;
    VfReset();
  }
  if (off < kDoorbellWindowSize) {
    if (InRange(off, QtxTail(0), kMaxDecodedQueues) || InRange(off, QrxTail(0), kMaxDecodedQueues) ||
        InRange(off, VfintItrn1(0, 0), kNumItrIndexes * kNumItrnVectors)) {
      return DoorbellRead(off / 4);
    }
    return 0;
  }
  if (InRange(off, VfintDynCtln1(0), kMaxQueueVectors)) {
    return irq_->dyn_ctln((off - VfintDynCtln1(0)) / 4);
  }
  if (InRange(off, VfintItr01(0), kNumItrIndexes)) return irq_->itr01((off - VfintItr01(0)) / 4);
  // The RSS registers are the VF's view of the same hash configuration the
  // PF programs for virtchnl (i40e writes VFQF_HENA1/HKEY1/HLUT1 for both).
  if (InRange(off, VfqfHena(0), kNumHenaRegs)) {
    return static_cast<uint32_t>(rss_.hena >> (32 * ((off - VfqfHena(0)) / 4)));
  }
  if (InRange(off, VfqfHkey(0), kNumHkeyRegs)) {
    uint32_t v;
    std::memcpy(&v, rss_.key.data() + (off - VfqfHkey(0)), 4);
    return v;
  }
  if (InRange(off, VfqfHlut(0), kNumHlutRegs)) {
    uint32_t v;
    std::memcpy(&v, rss_.lut.data() + (off - VfqfHlut(0)), 4);
    return v;
  }
  switch (off) {
    case kVfintIcr01:
      Touch(1u << kRecIrq);
      return irq_->ReadIcr01();
    case kVfintIcr0Ena1: return irq_->icr0_ena1();
    case kVfintStatCtl01: return irq_->stat_ctl01();
    case kVfintDynCtl01: return irq_->dyn_ctl01();
    case kVfgenRstat: {
      // After a reset RSTAT steps INPROGRESS -> COMPLETED -> VFACTIVE, one
      // step per read: pollers see every state, no timer is needed.
      uint32_t v = rstat_;
      if (rstat_ < kVfrVfActive) {
        ++rstat_;
        Touch(1u << kRecRegs);
      }
      return v;
    }
    case kVfAtqbal1: case kVfAtqbah1: case kVfAtqlen1: case kVfAtqh1: case kVfAtqt1:
    case kVfArqbal1: case kVfArqbah1: case kVfArqlen1: case kVfArqh1: case kVfArqt1:
      return aq_.ReadReg(off);
    default:
      return 0;
  }
}

void Device::WriteReg(uint32_t off, uint32_t value) {
  if (reset_pending_) [[unlikely]] {  // (see ReadReg) any other access comes after the reset
    Touch(1u << kRecVf);
    reset_pending_ = false;
    VfReset();
  }
  off &= ~3u;
  Touch(RecordsWrittenBy(off));
  if (off < kDoorbellWindowSize) {
    if (InRange(off, QtxTail(0), kMaxDecodedQueues)) {
      OnTailWrite(QueueKind::kTx, (off - QtxTail(0)) / 4, value);
    } else if (InRange(off, QrxTail(0), kMaxDecodedQueues)) {
      OnTailWrite(QueueKind::kRx, (off - QrxTail(0)) / 4, value);
    } else if (InRange(off, VfintItrn1(0, 0), kNumItrIndexes * kNumItrnVectors)) {
      uint32_t i = (off - VfintItrn1(0, 0)) / 4;
      irq_->WriteItrn(i / kNumItrnVectors, i % kNumItrnVectors, value);
    }
    return;
  }
  if (InRange(off, VfintDynCtln1(0), kMaxQueueVectors)) {
    irq_->WriteDynCtln((off - VfintDynCtln1(0)) / 4, value);
    return;
  }
  if (InRange(off, VfintItr01(0), kNumItrIndexes)) {
    irq_->WriteItr01((off - VfintItr01(0)) / 4, value);
    return;
  }
  // RSS registers (RSS_REG path). Linux writes one dword past HKEY and HLUT;
  // those offsets decode to nothing and are ignored.
  // Register writes take effect on the hash configuration the data path
  // uses (iavf_main.c:iavf_init_rss / iavf_config_rss_reg, the RSS_REG path).
  if (InRange(off, VfqfHena(0), kNumHenaRegs)) {
    const uint32_t i = (off - VfqfHena(0)) / 4;
    hena_reg_[i] = value;
    const uint64_t mask = uint64_t{0xFFFFFFFF} << (32 * i);
    rss_.hena = (rss_.hena & ~mask) | (uint64_t{value} << (32 * i));
    return;
  }
  if (InRange(off, VfqfHkey(0), kNumHkeyRegs)) {
    hkey_reg_[(off - VfqfHkey(0)) / 4] = value;
    std::memcpy(rss_.key.data() + (off - VfqfHkey(0)), &value, 4);
    return;
  }
  if (InRange(off, VfqfHlut(0), kNumHlutRegs)) {
    hlut_reg_[(off - VfqfHlut(0)) / 4] = value;
    std::memcpy(rss_.lut.data() + (off - VfqfHlut(0)), &value, 4);
    return;
  }
  switch (off) {
    case kVfintIcr0Ena1: irq_->WriteIcr0Ena1(value); return;
    case kVfintStatCtl01: irq_->WriteStatCtl01(value); return;
    case kVfintDynCtl01: irq_->WriteDynCtl01(value); return;
    case kVfAtqt1:
      aq_.WriteReg(off, value);
      RunAtq();
      return;
    case kVfArqt1:
      aq_.WriteReg(off, value);
      if (aq_.DrainBacklog(ctx_.dma) > 0) irq_->RaiseAdminQueue();
      return;
    case kVfArqlen1:
      aq_.WriteReg(off, value);
      return;
    case kVfAtqbal1: case kVfAtqbah1: case kVfAtqlen1: case kVfAtqh1:
    case kVfArqbal1: case kVfArqbah1: case kVfArqh1:
      aq_.WriteReg(off, value);
      return;
    default:
      return;  // read-only (RSTAT, ICR01) or unknown
  }
}

bool Device::WriteIsSelfDurable(uint32_t region, uint64_t offset, uint64_t size) const {
  if (region != vfio_user::kBar0 || doorbell_ == nullptr || reset_pending_) return false;
  if ((size != 4 && size != 8) || (offset & 3) != 0) return false;
  auto inside = [&](uint32_t base, uint32_t dwords) {
    const uint64_t end = base + 4ull * dwords;
    return offset >= base && offset < end && size <= end - offset;
  };
  if (inside(QtxTail(0), kMaxDecodedQueues) || inside(QrxTail(0), kMaxDecodedQueues)) return true;
  // The interrupt re-arm path: one register per write (see the header).
  return size == 4 && (inside(VfintDynCtln1(0), irq_->num_queue_vectors()) ||
                       inside(VfintItrn1(0, 0), kNumItrIndexes * kNumItrnVectors));
}

bool Device::ReadHasSideEffects(uint32_t region, uint64_t offset, uint64_t size) const {
  if (region != vfio_user::kBar0) return false;  // config space, MSI-X table and PBA, unused BARs
  if (size == 0) return false;
  const uint64_t first = offset & ~uint64_t{3};
  const uint64_t end = offset + size;
  if (end < offset) return true;
  if (reset_pending_) {
    // Only a lone ATQH read leaves the pending reset alone (ReadReg).
    return !(first == kVfAtqh1 && end <= kVfAtqh1 + 4u);
  }
  if (kVfintIcr01 >= first && kVfintIcr01 < end) return true;
  if (rstat_ < kVfrVfActive && kVfgenRstat >= first && kVfgenRstat < end) return true;
  return false;
}

uint64_t Device::StateGeneration() const {
  uint64_t g = 0;
  for (int r = 0; r < kNumRecords; ++r) g += gen_[r];
  return g;
}

bool Device::WriteIsDeferrable(uint32_t region, uint64_t offset, uint64_t size) const {
  switch (region) {
    case vfio_user::kConfigRegion:
    case vfio_user::kBar3:
      return true;
    case vfio_user::kBar0: {
      // Any dword the write touches must not be ATQT or ARQT.
      const uint64_t first = offset & ~uint64_t{3};
      const uint64_t end = offset + size;
      if (end < offset) return false;
      for (uint32_t reg : {kVfAtqt1, kVfArqt1}) {
        if (reg >= first && reg < end) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

void Device::OnTailWrite(QueueKind kind, uint32_t q, uint32_t value) {
  DoorbellWrite((kind == QueueKind::kTx ? QtxTail(q) : QrxTail(q)) / 4, value);
  if (q >= num_queue_pairs_) {
    ++counters_.ignored_tail_writes;
    return;
  }
  const bool configured = kind == QueueKind::kTx ? txq_[q].configured : rxq_[q].configured;
  const bool enabled = kind == QueueKind::kTx ? txq_[q].enabled : rxq_[q].enabled;
  const uint32_t ring_len = kind == QueueKind::kTx ? txq_[q].ring_len : rxq_[q].ring_len;
  if (!configured) return;  // e.g. RX buffers posted before CONFIG_VSI_QUEUES
  if (value >= ring_len) {
    ++counters_.bad_tail_writes;
    return;
  }
  if (enabled && hooks_ != nullptr) {
    if (kind == QueueKind::kTx) {
      hooks_->OnTxDoorbell(q);
    } else {
      hooks_->OnRxDoorbell(q);
    }
  }
}

uint32_t Device::RecordsWrittenBy(uint32_t off) const {
  if (off < kDoorbellWindowSize) {
    return InRange(off, VfintItrn1(0, 0), kNumItrIndexes * kNumItrnVectors) ? 1u << kRecIrq
                                                                            : 1u << kRecRegs;
  }
  if (off == kVfAtqt1) return kAllRecords;  // virtchnl may change anything
  if (off == kVfArqt1) return (1u << kRecAq) | (1u << kRecIrq);
  switch (off) {
    case kVfAtqbal1: case kVfAtqbah1: case kVfAtqlen1: case kVfAtqh1:
    case kVfArqbal1: case kVfArqbah1: case kVfArqh1: case kVfArqlen1:
      return 1u << kRecAq;
    default:
      break;
  }
  if (off >= VfqfHena(0)) return (1u << kRecRegs) | (1u << kRecVf);  // RSS registers (rss_)
  return 1u << kRecIrq;                           // interrupt block
}

bool Device::RaiseVector(uint32_t msix_vector) {
  Touch(1u << kRecIrq);
  return irq_->RaiseQueueVector(msix_vector);
}

bool Device::RaiseQueueInterrupt(QueueKind kind, uint32_t q) {
  if (q >= txq_.size()) return false;
  Touch(1u << kRecIrq);
  uint32_t v = kind == QueueKind::kTx ? txq_[q].msix_vector : rxq_[q].msix_vector;
  if (v == 0) return false;
  return irq_->RaiseQueueVector(v);
}

// ---------------------------------------------------------------- reset

void Device::StopQueues(QueueMask rx_mask, QueueMask tx_mask) {
  QueueMask rx_running = 0, tx_running = 0;
  for (uint32_t q = 0; q < txq_.size(); ++q) {
    if ((rx_mask >> q & 1) && rxq_[q].enabled) rx_running |= QueueMask{1} << q;
    if ((tx_mask >> q & 1) && txq_[q].enabled) tx_running |= QueueMask{1} << q;
  }
  if ((rx_running | tx_running) != 0 && hooks_ != nullptr) {
    hooks_->OnQueuesDisabled(rx_running, tx_running);
  }
  for (uint32_t q = 0; q < txq_.size(); ++q) {
    if (rx_running >> q & 1) rxq_[q].enabled = false;
    if (tx_running >> q & 1) {
      txq_[q].enabled = false;
      // A stopped TX ring restarts at descriptor 0 (iavf_setup_tx_descriptors,
      // DPDK iavf_reset_tx_queue); its old tail would make the device fetch
      // descriptors of the next incarnation before they are posted. Drivers
      // stop transmitting before they stop the queue (iavf_down:
      // netif_tx_disable; DPDK dev_stop), so a tail written from now on
      // belongs to the next incarnation and is kept (OpConfigVsiQueues).
      DoorbellWrite(QtxTail(q) / 4, 0);
    }
  }
}

void Device::VfReset() {
  Touch(kAllRecords);
  ++counters_.vf_resets;
  rstat_ = kVfrInProgress;
  StopQueues(~QueueMask{0}, ~QueueMask{0});  // DMA stops before anything else changes
  aq_.Reset();  // ATQLEN/ARQLEN.ENABLE off: the driver's reset detector
  irq_->Reset();
  std::fill(txq_.begin(), txq_.end(), TxQueueContext{});
  std::fill(rxq_.begin(), rxq_.end(), RxQueueContext{});
  ZeroTails();
  macs_.clear();
  vlans_.reset();
  promisc_flags_ = 0;
  vlan_strip_ = false;
  vlan_v2_caps_sent_ = false;
  vlan_insert_off_ = false;
  rss_ = {};
  hena_reg_ = {};
  hkey_reg_ = {};
  hlut_reg_ = {};
  link_reported_up_ = false;
  resources_sent_ = false;
  if (hooks_ != nullptr) hooks_->OnFiltersChanged();
  // Negotiated version and granted queue count survive a VF reset (a driver
  // re-initialising may skip VERSION).
}

// ---------------------------------------------------------------- persistence

const char* const Device::kRecordKeys[Device::kNumRecords] = {"identity", "regs", "aq", "irq", "vf", "pci"};

void Device::Touch(uint32_t records) {
  for (int r = 0; r < kNumRecords; ++r) {
    if (records >> r & 1) ++gen_[r];
  }
}

std::string Device::SerializeRecord(int record) const {
  switch (record) {
    case kRecIdentity: {
      AvfIdentity id;
      id.set_max_queue_pairs(options_.max_queue_pairs);
      id.set_mac(std::string(options_.mac.begin(), options_.mac.end()));
      id.set_supported_caps(options_.supported_caps);
      id.set_mapped_doorbells(options_.mapped_doorbells);
      id.set_msix_vectors(msix_.num_vectors());
      return state_store::EncodeRecord(id);
    }
    case kRecRegs: {
      AvfRegisters regs;
      regs.set_rstat(rstat_);
      // Up to the last non-zero tail (the rest restore as zero): the record
      // grows with the queues in use, not with the 256 decoded registers.
      const uint32_t tx_used = TailsInUse(QtxTail(0) / 4), rx_used = TailsInUse(QrxTail(0) / 4);
      std::string tx(tx_used * 4, '\0'), rx(rx_used * 4, '\0');
      for (uint32_t q = 0; q < tx_used; ++q) {
        uint32_t t = TxTail(q);
        std::memcpy(tx.data() + 4 * q, &t, 4);
      }
      for (uint32_t q = 0; q < rx_used; ++q) {
        uint32_t r = RxTail(q);
        std::memcpy(rx.data() + 4 * q, &r, 4);
      }
      regs.set_qtx_tails(std::move(tx));
      regs.set_qrx_tails(std::move(rx));
      // Whole ranges: one allocation per field, not a regrowth per element.
      regs.mutable_hena()->Add(hena_reg_.begin(), hena_reg_.end());
      regs.mutable_hkey()->Add(hkey_reg_.begin(), hkey_reg_.end());
      regs.mutable_hlut()->Add(hlut_reg_.begin(), hlut_reg_.end());
      return state_store::EncodeRecord(regs);
    }
    case kRecAq: {
      AvfAdminQueueState aq;
      aq_.SaveTo(&aq);
      return state_store::EncodeRecord(aq);
    }
    case kRecIrq: {
      AvfInterruptState irq;
      irq_->SaveTo(&irq);
      return state_store::EncodeRecord(irq);
    }
    case kRecVf: {
      AvfVfState vf;
      vf.set_vf_major(vf_major_);
      vf.set_vf_minor(vf_minor_);
      vf.set_granted_caps(granted_caps_);
      vf.set_resources_sent(resources_sent_);
      vf.set_num_queue_pairs(num_queue_pairs_);
      // Records only for queues with any state (configured, or mapped to a
      // vector): 4 queues in use cost 4 entries whatever the device offers.
      for (uint32_t q = 0; q < txq_.size(); ++q) {
        const TxQueueContext& t = txq_[q];
        const RxQueueContext& r = rxq_[q];
        const bool tx_used = t.configured || t.enabled || t.msix_vector != 0 ||
                             t.itr_index != kItrIndexNone;
        const bool rx_used = r.configured || r.enabled || r.msix_vector != 0 ||
                             r.itr_index != kItrIndexNone;
        if (!tx_used && !rx_used) continue;
        auto* tp = vf.add_txq();
        tp->set_id(q);
        tp->set_configured(t.configured);
        tp->set_enabled(t.enabled);
        tp->set_ring_addr(t.ring_addr);
        tp->set_ring_len(t.ring_len);
        tp->set_msix_vector(t.msix_vector);
        tp->set_itr_index(t.itr_index);
        auto* rp = vf.add_rxq();
        rp->set_id(q);
        rp->set_configured(r.configured);
        rp->set_enabled(r.enabled);
        rp->set_ring_addr(r.ring_addr);
        rp->set_ring_len(r.ring_len);
        rp->set_buffer_size(r.buffer_size);
        rp->set_max_frame(r.max_frame);
        rp->set_keep_crc(r.keep_crc);
        if (r.rxdid != vc::kRxdidLegacy1) rp->set_rxdid(r.rxdid);
        rp->set_msix_vector(r.msix_vector);
        rp->set_itr_index(r.itr_index);
      }
      for (const MacFilterEntry& m : macs_) {
        auto* mp = vf.add_mac_filter();
        mp->set_addr(std::string(m.addr.begin(), m.addr.end()));
        mp->set_type(m.type);
      }
      // Up to the last VLAN set (none: no look at the 4096 bits one by one).
      for (size_t v = 0, left = vlans_.count(); left > 0; ++v) {
        if (vlans_[v]) {
          vf.add_vlan(static_cast<uint32_t>(v));
          --left;
        }
      }
      vf.set_promisc_flags(promisc_flags_);
      vf.set_vlan_strip(vlan_strip_);
      vf.set_rss_key(std::string(rss_.key.begin(), rss_.key.end()));
      vf.set_rss_lut(std::string(rss_.lut.begin(), rss_.lut.end()));
      vf.set_rss_hena(rss_.hena);
      vf.set_rss_hfunc(rss_.hfunc);
      vf.set_link_reported_up(link_reported_up_);
      vf.set_link_up(link_up_);
      vf.set_link_speed_mbps(link_speed_mbps_);
      vf.set_reset_pending(reset_pending_);
      vf.set_requested_caps(requested_caps_);
      vf.set_vlan_v2_caps_sent(vlan_v2_caps_sent_);
      vf.set_vlan_insert_off(vlan_insert_off_);
      return state_store::EncodeRecord(vf);
    }
    case kRecPci: {
      AvfPciState pci;
      pci.set_config(config_->SaveState());
      pci.set_msix_table(msix_.SaveState());
      return state_store::EncodeRecord(pci);
    }
    default:
      return std::string();
  }
}

const std::string& Device::RecordBytes(int record) {
  // Memo keyed by the record's mutation generation (a pure cache: nothing
  // about the store is remembered). In mapped mode the tails and ITRN live
  // in the shared doorbell page and change without a trap: never cached.
  Memo& m = memo_[record];
  const bool volatile_page = options_.mapped_doorbells && (record == kRecRegs || record == kRecIrq);
  if (!m.valid || m.gen != gen_[record] || volatile_page) {
    m.bytes = SerializeRecord(record);
    m.gen = gen_[record];
    m.valid = true;
  }
  return m.bytes;
}

bool Device::SaveCacheConsistentForTest() {
  bool ok = true;
  for (int r = 0; r < kNumRecords; ++r) {
    if (memo_[r].valid && memo_[r].gen == gen_[r] && memo_[r].bytes != SerializeRecord(r)) ok = false;
    RecordBytes(r);  // refresh, so the next call checks the next step
  }
  return ok;
}

absl::Status Device::Save(vfio_user::DeviceRecordWriter& records) {
  // Compared with what the transaction already holds rather than with a
  // private "last saved" copy: Save has no side effect outside the
  // transaction, so an aborted or retried (MAP_FULL) commit loses nothing.
  for (int r = 0; r < kNumRecords; ++r) {
    const std::string& bytes = RecordBytes(r);
    auto cur = records.Get(kRecordKeys[r]);
    if (!cur.ok()) return cur.status();
    if (cur->has_value() && **cur == bytes) continue;
    if (absl::Status s = records.Put(kRecordKeys[r], bytes); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Device::Restore(const vfio_user::DeviceRecordReader& records) {
  auto get = [&](absl::string_view key) -> absl::StatusOr<std::optional<std::string>> {
    auto raw = records.Get(key);
    if (!raw.ok()) return raw.status();
    if (!raw->has_value()) return std::optional<std::string>();
    return std::optional<std::string>(std::string(**raw));
  };
  auto decode = [&]<typename Msg>(absl::string_view key, Msg* msg) -> absl::Status {
    auto raw = get(key);
    if (!raw.ok()) return raw.status();
    if (!raw->has_value()) return absl::DataLossError(absl::StrCat("avf record ", key, " missing"));
    auto m = state_store::DecodeRecord<Msg>(**raw, absl::StrCat(kStateTable, "/", key));
    if (!m.ok()) return m.status();
    *msg = std::move(*m);
    return absl::OkStatus();
  };

  auto id_raw = get("identity");
  if (!id_raw.ok()) return id_raw.status();
  if (!id_raw->has_value()) return absl::NotFoundError("no avf state saved");
  AvfIdentity id;
  AvfRegisters regs;
  AvfAdminQueueState aq;
  AvfInterruptState irq;
  AvfVfState vf;
  AvfPciState pci;
  if (auto s = decode("identity", &id); !s.ok()) return s;
  if (auto s = decode("regs", &regs); !s.ok()) return s;
  if (auto s = decode("aq", &aq); !s.ok()) return s;
  if (auto s = decode("irq", &irq); !s.ok()) return s;
  if (auto s = decode("vf", &vf); !s.ok()) return s;
  if (auto s = decode("pci", &pci); !s.ok()) return s;
  // msix_vectors is absent (0) in records from before it existed: those
  // devices had 17 vectors, DeviceMsixVectors of their (<= 16) queue pairs.
  if (id.max_queue_pairs() != options_.max_queue_pairs ||
      id.mapped_doorbells() != options_.mapped_doorbells ||
      (id.msix_vectors() != 0 && id.msix_vectors() != msix_.num_vectors())) {
    return absl::FailedPreconditionError(
        absl::StrCat("saved avf device has max_queue_pairs=", id.max_queue_pairs(),
                     " mapped_doorbells=", id.mapped_doorbells(), "; this one ",
                     options_.max_queue_pairs, "/", options_.mapped_doorbells));
  }
  if (auto s = config_->RestoreState(pci.config()); !s.ok()) return s;
  if (auto s = msix_.RestoreState(pci.msix_table()); !s.ok()) return s;

  rstat_ = std::min<uint32_t>(regs.rstat(), kVfrVfActive);
  // An adopted doorbell page is newer than any record: keep it.
  if (!doorbell_adopted_) {
    for (uint32_t q = 0; q < kMaxDecodedQueues; ++q) {
      uint32_t t = 0, r = 0;
      if (regs.qtx_tails().size() >= 4 * (q + 1)) std::memcpy(&t, regs.qtx_tails().data() + 4 * q, 4);
      if (regs.qrx_tails().size() >= 4 * (q + 1)) std::memcpy(&r, regs.qrx_tails().data() + 4 * q, 4);
      DoorbellWrite(QtxTail(q) / 4, t);
      DoorbellWrite(QrxTail(q) / 4, r);
    }
  }
  for (int i = 0; i < regs.hena_size() && i < int(kNumHenaRegs); ++i) hena_reg_[i] = regs.hena(i);
  for (int i = 0; i < regs.hkey_size() && i < int(kNumHkeyRegs); ++i) hkey_reg_[i] = regs.hkey(i);
  for (int i = 0; i < regs.hlut_size() && i < int(kNumHlutRegs); ++i) hlut_reg_[i] = regs.hlut(i);

  aq_.RestoreFrom(aq);
  if (doorbell_adopted_ && doorbell_[kVectorMarkIndex] == kVectorMark) {
    // The live ITRN values and queue-vector words are newer than the record
    // (DYN_CTLN/ITRN writes and the data path's fires are never committed).
    irq_->RestoreFrom(irq, /*keep_live_queue_vectors=*/true);
  } else if (doorbell_adopted_) {
    // A predecessor from before the vector page: its ITRN values are live,
    // its vectors are in the record.
    std::array<uint32_t, kNumItrIndexes * kNumItrnVectors> itrn;
    for (uint32_t i = 0; i < itrn.size(); ++i) itrn[i] = doorbell_[kItrnIndex + i];
    irq_->RestoreFrom(irq);
    for (uint32_t i = 0; i < itrn.size(); ++i) doorbell_[kItrnIndex + i] = itrn[i];
  } else {
    irq_->RestoreFrom(irq);
  }
  doorbell_[kVectorMarkIndex] = kVectorMark;

  vf_major_ = vf.vf_major();
  vf_minor_ = vf.vf_minor();
  granted_caps_ = vf.granted_caps() & options_.supported_caps;
  resources_sent_ = vf.resources_sent();
  num_queue_pairs_ = std::clamp<uint32_t>(vf.num_queue_pairs(), 1, options_.max_queue_pairs);
  std::fill(txq_.begin(), txq_.end(), TxQueueContext{});
  std::fill(rxq_.begin(), rxq_.end(), RxQueueContext{});
  const uint32_t vectors = msix_.num_vectors() - 1;
  for (const auto& t : vf.txq()) {
    if (t.id() >= txq_.size()) continue;
    TxQueueContext& c = txq_[t.id()];
    c.configured = t.configured();
    c.enabled = t.enabled() && t.configured();
    c.ring_addr = t.ring_addr();
    c.ring_len = std::min<uint32_t>(t.ring_len(), 8160);
    c.msix_vector = t.msix_vector() <= vectors ? t.msix_vector() : 0;
    c.itr_index = std::min<uint32_t>(t.itr_index(), kItrIndexNone);
  }
  for (const auto& r : vf.rxq()) {
    if (r.id() >= rxq_.size()) continue;
    RxQueueContext& c = rxq_[r.id()];
    c.configured = r.configured();
    c.enabled = r.enabled() && r.configured();
    c.ring_addr = r.ring_addr();
    c.ring_len = std::min<uint32_t>(r.ring_len(), 8160);
    c.buffer_size = r.buffer_size();
    c.max_frame = r.max_frame();
    c.keep_crc = r.keep_crc();
    // Only a format this device writes, and a flex one only with the cap
    // (a record from elsewhere or a damaged one gets the legacy format).
    c.rxdid = (granted_caps_ & vc::kCapRxFlexDesc) && RxdidSupported(r.rxdid()) && r.rxdid() != 0
                  ? static_cast<uint8_t>(r.rxdid())
                  : vc::kRxdidLegacy1;
    c.msix_vector = r.msix_vector() <= vectors ? r.msix_vector() : 0;
    c.itr_index = std::min<uint32_t>(r.itr_index(), kItrIndexNone);
  }
  macs_.clear();
  for (const auto& m : vf.mac_filter()) {
    if (m.addr().size() != 6 || macs_.size() >= 256) continue;
    MacFilterEntry e;
    std::memcpy(e.addr.data(), m.addr().data(), 6);
    e.type = static_cast<uint8_t>(m.type());
    macs_.push_back(e);
  }
  vlans_.reset();
  for (uint32_t v : vf.vlan()) {
    if (v > 0 && v < vlans_.size()) vlans_.set(v);
  }
  promisc_flags_ = vf.promisc_flags() & (vc::kPromiscUnicast | vc::kPromiscMulticast);
  vlan_strip_ = vf.vlan_strip();
  rss_ = {};
  std::memcpy(rss_.key.data(), vf.rss_key().data(), std::min(vf.rss_key().size(), rss_.key.size()));
  std::memcpy(rss_.lut.data(), vf.rss_lut().data(), std::min(vf.rss_lut().size(), rss_.lut.size()));
  rss_.hena = vf.rss_hena();
  rss_.hfunc = vf.rss_hfunc() & 3;
  link_reported_up_ = vf.link_reported_up();
  link_up_ = vf.link_up();
  link_speed_mbps_ = vf.link_speed_mbps();
  reset_pending_ = vf.reset_pending();
  requested_caps_ = vf.requested_caps();
  vlan_v2_caps_sent_ = vf.vlan_v2_caps_sent();
  vlan_insert_off_ = vf.vlan_insert_off();
  Touch(kAllRecords);
  return absl::OkStatus();
}

}  // namespace emud::avf
