#include "vfio_user/examples/example_device.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/backed_file.h"
#include "state_store/store.h"

namespace emud::vfio_user {

ExampleDevice::ExampleDevice() = default;

absl::StatusOr<std::unique_ptr<ExampleDevice>> ExampleDevice::Create() {
  std::unique_ptr<ExampleDevice> d(new ExampleDevice());
  d->shared_fd_.reset(::memfd_create("emud-example-bar0", MFD_CLOEXEC));
  if (!d->shared_fd_.valid()) return absl::InternalError(absl::StrCat("memfd: ", std::strerror(errno)));
  // Allocated before it is mapped (base/backed_file.h): the client maps the
  // same memfd and stores into it.
  if (auto s = BackFile(d->shared_fd_.get(), kBar0Size, "example BAR0 memfd"); !s.ok()) return s;
  auto m = MappedFile::Map(d->shared_fd_.get(), kSharedOffset, kSharedSize, PROT_READ | PROT_WRITE);
  if (!m.ok()) return m.status();
  d->shared_ = std::move(*m);
  PciConfigSpace& c = d->config_;
  c.SetHeader({.vendor_id = 0x1b36, .device_id = 0x10f0, .subsystem_vendor_id = 0x1b36,
               .subsystem_id = 0x0001, .revision = 1, .class_code = 0xff0000});
  if (auto s = c.SetBar(0, kBar0Size, PciConfigSpace::BarType::kMem32); !s.ok()) return s;
  if (auto s = c.AddPmCapability(); !s.ok()) return s.status();
  if (auto s = c.AddMsixCapability(&d->msix_, 0, kMsixTableOffset, 0, kMsixPbaOffset); !s.ok()) return s.status();
  if (auto s = c.AddPcieCapability({}); !s.ok()) return s.status();
  ExampleDevice* raw = d.get();
  c.set_flr_callback([raw] { (void)raw->Reset(); });
  return d;
}

std::vector<RegionDesc> ExampleDevice::Regions() const {
  RegionDesc bar0;
  bar0.index = kBar0;
  bar0.size = kBar0Size;
  bar0.readable = bar0.writable = true;
  bar0.mmap_areas.push_back(MmapArea{kSharedOffset, kSharedSize});
  bar0.mmap_fd = shared_fd_.get();
  // The memfd spans the whole BAR (only its shared part is used), so a
  // client maps fd offset (0 + area.offset) for the area at region offset
  // area.offset.
  bar0.fd_offset = 0;
  RegionDesc cfg;
  cfg.index = kConfigRegion;
  cfg.size = config_.size();
  cfg.readable = cfg.writable = true;
  return {bar0, cfg};
}

std::vector<IrqDesc> ExampleDevice::Irqs() const { return {IrqDesc{kMsixIrq, 1, true}}; }

uint32_t ExampleDevice::ReadReg(uint64_t off) const {
  switch (off) {
    case kId: return kIdValue;
    case kScratch: return regs_.scratch;
    case kIrqCount: return regs_.irq_count;
    case kDmaAddr: return static_cast<uint32_t>(regs_.dma_addr);
    case kDmaAddr + 4: return static_cast<uint32_t>(regs_.dma_addr >> 32);
    case kDmaLen: return regs_.dma_len;
    case kDmaCmd: return regs_.dma_cmd;
    case kDmaResult: return regs_.dma_result;
    case kStatus: return regs_.status;
    case kAcc: return regs_.acc;
    default: return 0;
  }
}

void ExampleDevice::WriteReg(uint64_t off, uint32_t v) {
  switch (off) {
    case kScratch: regs_.scratch = v; break;
    case kDoorbell:
      if (v == 1) {
        ++regs_.irq_count;
        if (ctx_.irqs) ctx_.irqs->TriggerMsix(0);
      } else if (v == 2) {
        RunDma();
      }
      break;
    case kDmaAddr: regs_.dma_addr = (regs_.dma_addr & ~uint64_t{0xffffffff}) | v; break;
    case kDmaAddr + 4: regs_.dma_addr = (regs_.dma_addr & 0xffffffff) | (uint64_t{v} << 32); break;
    case kDmaLen: regs_.dma_len = v; break;
    case kDmaCmd: regs_.dma_cmd = v; break;
    case kAdd: regs_.acc += v; break;
    default: break;
  }
}

void ExampleDevice::RunDma() {
  regs_.status = 0;
  regs_.dma_result = 0;
  if (!ctx_.dma || !config_.bus_master_enabled()) {
    regs_.status = EPERM;
    return;
  }
  if (regs_.dma_len == 0 || regs_.dma_len > kSharedSize) {
    regs_.status = EINVAL;
    return;
  }
  absl::Status s;
  switch (regs_.dma_cmd) {
    case 1: s = ctx_.dma->Read(regs_.dma_addr, absl::MakeSpan(shared(), regs_.dma_len)); break;
    case 2: s = ctx_.dma->Write(regs_.dma_addr, absl::MakeConstSpan(shared(), regs_.dma_len)); break;
    case 3: {
      std::vector<uint8_t> buf(regs_.dma_len);
      s = ctx_.dma->Read(regs_.dma_addr, absl::MakeSpan(buf));
      if (s.ok()) {
        for (uint8_t b : buf) regs_.dma_result += b;
      }
      break;
    }
    default: regs_.status = EINVAL; return;
  }
  if (!s.ok()) {
    regs_.status = EFAULT;
    return;
  }
  ++regs_.irq_count;
  if (ctx_.irqs) ctx_.irqs->TriggerMsix(0);
}

absl::Status ExampleDevice::RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out) {
  if (region == kConfigRegion) return config_.Read(offset, out);
  if (region != kBar0) return absl::InvalidArgumentError("no such region");
  if (offset >= kSharedOffset) {
    std::memcpy(out.data(), shared() + (offset - kSharedOffset), out.size());
    return absl::OkStatus();
  }
  if (offset >= kMsixPbaOffset) {
    msix_.PbaRead(offset - kMsixPbaOffset, out);
    return absl::OkStatus();
  }
  if (offset >= kMsixTableOffset) {
    msix_.TableRead(offset - kMsixTableOffset, out);
    return absl::OkStatus();
  }
  // Registers: any size, composed from the aligned dwords.
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t o = offset + i;
    uint32_t reg = o + 4 <= kMsixTableOffset ? ReadReg(o & ~uint64_t{3}) : 0;
    out[i] = static_cast<uint8_t>(reg >> (8 * (o & 3)));
  }
  return absl::OkStatus();
}

absl::Status ExampleDevice::RegionWrite(uint32_t region, uint64_t offset, absl::Span<const uint8_t> data) {
  if (region == kConfigRegion) return config_.Write(offset, data);
  if (region != kBar0) return absl::InvalidArgumentError("no such region");
  if (offset >= kSharedOffset) {
    std::memcpy(shared() + (offset - kSharedOffset), data.data(), data.size());
    return absl::OkStatus();
  }
  if (offset >= kMsixPbaOffset) return absl::OkStatus();  // PBA is read-only
  if (offset >= kMsixTableOffset) {
    msix_.TableWrite(offset - kMsixTableOffset, data);
    return absl::OkStatus();
  }
  // Registers take aligned 4-byte writes only (8-byte: two registers).
  if ((offset & 3) || (data.size() != 4 && data.size() != 8)) {
    return absl::InvalidArgumentError("register writes must be aligned dwords");
  }
  for (size_t i = 0; i < data.size(); i += 4) {
    uint32_t v;
    std::memcpy(&v, data.data() + i, 4);
    WriteReg(offset + i, v);
  }
  return absl::OkStatus();
}

void ExampleDevice::Attach(const DeviceContext& ctx) {
  ctx_ = ctx;
  attached_ = true;
  msix_.Attach(ctx.irqs);
}

void ExampleDevice::Detach() {
  msix_.Detach();
  ctx_ = DeviceContext{};
  attached_ = false;
}

absl::Status ExampleDevice::Reset() {
  ++resets_;
  regs_ = Regs{};
  config_.Reset();
  msix_.Reset();
  std::memset(shared(), 0, kSharedSize);
  return absl::OkStatus();
}

void ExampleDevice::OnDmaUnmap(uint64_t, uint64_t) { ++unmaps_seen_; }

absl::Status ExampleDevice::Save(DeviceRecordWriter& records) {
  std::string regs(reinterpret_cast<const char*>(&regs_), sizeof(regs_));
  if (auto s = records.Put("regs", regs); !s.ok()) return s;
  if (auto s = records.Put("config", config_.SaveState()); !s.ok()) return s;
  return records.Put("msix", msix_.SaveState());
}

absl::Status ExampleDevice::Restore(const DeviceRecordReader& records) {
  auto regs = records.Get("regs");
  if (!regs.ok()) return regs.status();
  if (!regs->has_value()) return absl::NotFoundError("no saved example device");
  if ((*regs)->size() != sizeof(regs_)) return absl::DataLossError("saved registers have the wrong size");
  std::memcpy(&regs_, (*regs)->data(), sizeof(regs_));
  auto cfg = records.Get("config");
  if (!cfg.ok()) return cfg.status();
  if (cfg->has_value()) {
    if (auto s = config_.RestoreState(**cfg); !s.ok()) return s;
  }
  auto msix = records.Get("msix");
  if (!msix.ok()) return msix.status();
  if (msix->has_value()) {
    if (auto s = msix_.RestoreState(**msix); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace emud::vfio_user
