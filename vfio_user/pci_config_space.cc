#include "vfio_user/pci_config_space.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "vfio_user/msix_table.h"

namespace emud::vfio_user {
namespace {

bool IsPow2(uint64_t v) { return v && !(v & (v - 1)); }

void Le(uint8_t* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

PciConfigSpace::PciConfigSpace(uint32_t size)
    : cfg_(size == 4096 ? 4096 : 256, 0),
      reset_(cfg_.size(), 0),
      wmask_(cfg_.size(), 0),
      w1c_(cfg_.size(), 0) {
  // Command: I/O, memory, bus master, parity, SERR, INTx disable are writable.
  uint8_t cmd_mask[2] = {0x47, 0x05};
  uint8_t zero2[2] = {0, 0};
  InitBytes(pci::kCommand, zero2, cmd_mask, {});
  // Status: error bits are RW1C.
  uint8_t sta_w1c[2] = {0x00, 0xf9};
  InitBytes(pci::kStatus, zero2, {}, sta_w1c);
  // Cache line size, latency timer, interrupt line: plain RW.
  uint8_t one[1] = {0}, ff[1] = {0xff};
  InitBytes(0x0c, one, ff, {});
  InitBytes(0x0d, one, ff, {});
  InitBytes(pci::kInterruptLine, one, ff, {});
}

void PciConfigSpace::InitBytes(uint32_t offset, absl::Span<const uint8_t> bytes,
                               absl::Span<const uint8_t> wmask, absl::Span<const uint8_t> w1c) {
  for (size_t i = 0; i < bytes.size() && offset + i < cfg_.size(); ++i) {
    cfg_[offset + i] = reset_[offset + i] = bytes[i];
    wmask_[offset + i] = i < wmask.size() ? wmask[i] : 0;
    w1c_[offset + i] = i < w1c.size() ? w1c[i] : 0;
  }
}

void PciConfigSpace::SetHeader(const Header& h) {
  uint8_t b[2];
  Le(b, h.vendor_id, 2);
  InitBytes(pci::kVendorId, b, {}, {});
  Le(b, h.device_id, 2);
  InitBytes(pci::kDeviceId, b, {}, {});
  Le(b, h.subsystem_vendor_id, 2);
  InitBytes(pci::kSubsysVendorId, b, {}, {});
  Le(b, h.subsystem_id, 2);
  InitBytes(pci::kSubsysId, b, {}, {});
  uint8_t rc[4];
  rc[0] = h.revision;
  Le(rc + 1, h.class_code, 3);
  InitBytes(pci::kRevision, rc, {}, {});
  uint8_t pin[1] = {h.interrupt_pin};
  InitBytes(pci::kInterruptPin, pin, {}, {});
}

absl::Status PciConfigSpace::SetBar(int index, uint64_t size, BarType type, bool prefetchable) {
  if (index < 0 || index > 5) return absl::InvalidArgumentError("BAR index out of range");
  if (type == BarType::kMem64 && index == 5) return absl::InvalidArgumentError("64-bit BAR5");
  if (!IsPow2(size)) return absl::InvalidArgumentError("BAR size must be a power of two");
  if (type == BarType::kIo && (size < 4 || size > 256)) return absl::InvalidArgumentError("I/O BAR size");
  if (type != BarType::kIo && size < 16) return absl::InvalidArgumentError("memory BAR size < 16");
  if (type == BarType::kMem32 && size > (uint64_t{1} << 31)) {
    return absl::InvalidArgumentError("32-bit BAR larger than 2 GiB");
  }
  if (bar_used_[index] || (type == BarType::kMem64 && bar_used_[index + 1])) {
    return absl::InvalidArgumentError(absl::StrCat("BAR", index, " already declared"));
  }
  uint32_t flags = 0;
  if (type == BarType::kIo) {
    flags = 1;
  } else {
    if (type == BarType::kMem64) flags |= 0x4;
    if (prefetchable) flags |= 0x8;
  }
  uint64_t addr_mask = ~(size - 1);
  uint32_t lo_mask = static_cast<uint32_t>(addr_mask) & (type == BarType::kIo ? ~3u : ~15u);
  uint8_t v[4], m[4];
  Le(v, flags, 4);
  Le(m, lo_mask, 4);
  InitBytes(pci::kBar0 + 4 * index, v, m, {});
  bar_used_[index] = true;
  bar_size_[index] = size;
  bar_type_[index] = type;
  if (type == BarType::kMem64) {
    Le(v, 0, 4);
    Le(m, static_cast<uint32_t>(addr_mask >> 32), 4);
    InitBytes(pci::kBar0 + 4 * (index + 1), v, m, {});
    bar_used_[index + 1] = true;
  }
  return absl::OkStatus();
}

uint64_t PciConfigSpace::BarAddress(int index) const {
  if (index < 0 || index > 5 || !bar_size_[index]) return 0;
  uint32_t lo = Read32(pci::kBar0 + 4 * index);
  if (bar_type_[index] == BarType::kIo) return lo & ~3u;
  uint64_t addr = lo & ~15u;
  if (bar_type_[index] == BarType::kMem64) addr |= uint64_t{Read32(pci::kBar0 + 4 * (index + 1))} << 32;
  return addr;
}

absl::StatusOr<uint8_t> PciConfigSpace::AddCapability(uint8_t id, absl::Span<const uint8_t> body,
                                                      absl::Span<const uint8_t> wmask,
                                                      absl::Span<const uint8_t> w1c) {
  if ((!wmask.empty() && wmask.size() != body.size()) || (!w1c.empty() && w1c.size() != body.size())) {
    return absl::InvalidArgumentError("capability mask length differs from body");
  }
  uint32_t off = (next_cap_ + 3) & ~3u;
  if (off + 2 + body.size() > 256) return absl::ResourceExhaustedError("config space full");
  uint8_t hdr[2] = {id, 0};
  InitBytes(off, hdr, {}, {});
  InitBytes(off + 2, body, wmask, w1c);
  if (last_cap_ == 0) {
    uint8_t p[1] = {static_cast<uint8_t>(off)};
    InitBytes(pci::kCapPtr, p, {}, {});
    uint16_t sta = Read16(pci::kStatus) | pci::kStatusCapList;
    cfg_[pci::kStatus] = reset_[pci::kStatus] = static_cast<uint8_t>(sta);
  } else {
    cfg_[last_cap_ + 1] = reset_[last_cap_ + 1] = static_cast<uint8_t>(off);
  }
  last_cap_ = static_cast<uint8_t>(off);
  next_cap_ = off + 2 + static_cast<uint32_t>(body.size());
  return static_cast<uint8_t>(off);
}

absl::StatusOr<uint8_t> PciConfigSpace::AddMsixCapability(MsixTable* table, uint8_t table_bar,
                                                          uint32_t table_offset, uint8_t pba_bar,
                                                          uint32_t pba_offset) {
  if (!table) return absl::InvalidArgumentError("null MSI-X table");
  if (msix_cap_) return absl::InvalidArgumentError("MSI-X capability already present");
  if (table_bar > 5 || pba_bar > 5 || !bar_size_[table_bar] || !bar_size_[pba_bar]) {
    return absl::InvalidArgumentError("MSI-X table/PBA BAR not declared");
  }
  if ((table_offset & 7) || (pba_offset & 7)) return absl::InvalidArgumentError("MSI-X offsets not 8-aligned");
  if (table_offset + table->table_bytes() > bar_size_[table_bar] ||
      pba_offset + table->pba_bytes() > bar_size_[pba_bar]) {
    return absl::InvalidArgumentError("MSI-X table/PBA exceed their BAR");
  }
  uint8_t body[10] = {};
  Le(body, table->num_vectors() - 1, 2);
  Le(body + 2, table_offset | table_bar, 4);
  Le(body + 6, pba_offset | pba_bar, 4);
  uint8_t wmask[10] = {0x00, 0xc0};  // enable + function mask
  auto off = AddCapability(pci::kCapIdMsix, body, wmask);
  if (!off.ok()) return off.status();
  msix_cap_ = *off;
  msix_table_ = table;
  return off;
}

absl::StatusOr<uint8_t> PciConfigSpace::AddPcieCapability(const PcieOptions& o) {
  if (pcie_cap_) return absl::InvalidArgumentError("PCIe capability already present");
  uint8_t body[pci::kPcieCapSize - 2] = {};
  uint8_t wmask[sizeof(body)] = {};
  uint8_t w1c[sizeof(body)] = {};
  auto at = [](uint32_t cap_off) { return cap_off - 2; };
  Le(body + at(pci::kPcieCaps), 0x2 | (static_cast<uint8_t>(o.type) << 4), 2);
  uint32_t devcap = (o.max_payload_code & 7) | (o.flr ? pci::kPcieDevCapFlr : 0);
  Le(body + at(pci::kPcieDevCap), devcap, 4);
  Le(body + at(pci::kPcieDevCtl), 0x2810, 2);  // relaxed ordering, no snoop, MRRS 512
  Le(wmask + at(pci::kPcieDevCtl), 0x7fff | (o.flr ? 0x8000 : 0), 2);
  Le(w1c + at(pci::kPcieDevSta), 0x000f, 2);
  uint32_t linkcap = (o.link_speed & 0xf) | ((o.link_width & 0x3f) << 4);
  Le(body + at(pci::kPcieLinkCap), linkcap, 4);
  Le(wmask + at(pci::kPcieLinkCap + 4), 0x01c3, 2);  // link control: ASPM, RCB, CCC
  Le(body + at(pci::kPcieLinkSta), (o.link_speed & 0xf) | ((o.link_width & 0x3f) << 4), 2);
  Le(wmask + at(pci::kPcieDevCtl2), 0x041f, 2);  // completion timeout, LTR-ish bits
  auto off = AddCapability(pci::kCapIdPcie, body, wmask, w1c);
  if (!off.ok()) return off.status();
  pcie_cap_ = *off;
  flr_supported_ = o.flr;
  return off;
}

absl::StatusOr<uint8_t> PciConfigSpace::AddPmCapability() {
  uint8_t body[pci::kPmCapSize - 2] = {};
  uint8_t wmask[sizeof(body)] = {};
  uint8_t w1c[sizeof(body)] = {};
  Le(body, 0x0003, 2);             // PMC: version 3, no PME
  Le(body + 2, 0x0008, 2);         // PMCSR: D0, No_Soft_Reset
  Le(wmask + 2, 0x0103, 2);        // power state, PME_En
  Le(w1c + 2, 0x8000, 2);          // PME_Status
  return AddCapability(pci::kCapIdPm, body, wmask, w1c);
}

uint8_t PciConfigSpace::FindCapability(uint8_t id) const {
  uint8_t off = cfg_[pci::kCapPtr];
  for (int guard = 0; off && guard < 64; ++guard) {
    if (cfg_[off] == id) return off;
    off = cfg_[off + 1];
  }
  return 0;
}

absl::Status PciConfigSpace::Read(uint64_t offset, absl::Span<uint8_t> out) const {
  if (offset > cfg_.size() || out.size() > cfg_.size() - offset) {
    return absl::OutOfRangeError("config read beyond config space");
  }
  if (!out.empty()) std::memcpy(out.data(), cfg_.data() + offset, out.size());
  return absl::OkStatus();
}

absl::Status PciConfigSpace::Write(uint64_t offset, absl::Span<const uint8_t> data) {
  if (offset > cfg_.size() || data.size() > cfg_.size() - offset) {
    return absl::OutOfRangeError("config write beyond config space");
  }
  bool flr = false;
  bool msix_touched = false;
  for (size_t i = 0; i < data.size(); ++i) {
    size_t o = offset + i;
    uint8_t v = data[i];
    uint8_t nv = static_cast<uint8_t>((cfg_[o] & ~wmask_[o]) | (v & wmask_[o]));
    nv &= static_cast<uint8_t>(~(v & w1c_[o]));
    cfg_[o] = nv;
    if (pcie_cap_ && flr_supported_ && o == pcie_cap_ + pci::kPcieDevCtl + 1 && (v & 0x80)) flr = true;
    if (msix_cap_ && (o == msix_cap_ + pci::kMsixControl + 1)) msix_touched = true;
  }
  if (pcie_cap_) cfg_[pcie_cap_ + pci::kPcieDevCtl + 1] &= 0x7f;  // Initiate-FLR reads 0
  if (msix_touched) SyncMsix();
  if (flr && flr_cb_) flr_cb_();
  return absl::OkStatus();
}

void PciConfigSpace::SyncMsix() {
  if (!msix_cap_ || !msix_table_) return;
  uint16_t ctl = Read16(msix_cap_ + pci::kMsixControl);
  msix_table_->SetControl(ctl & pci::kMsixControlEnable, ctl & pci::kMsixControlFunctionMask);
}

uint8_t PciConfigSpace::Read8(uint32_t offset) const { return offset < cfg_.size() ? cfg_[offset] : 0; }
uint16_t PciConfigSpace::Read16(uint32_t offset) const {
  return static_cast<uint16_t>(Read8(offset) | (Read8(offset + 1) << 8));
}
uint32_t PciConfigSpace::Read32(uint32_t offset) const {
  return Read16(offset) | (uint32_t{Read16(offset + 2)} << 16);
}
void PciConfigSpace::Write16Raw(uint32_t offset, uint16_t v) {
  if (offset + 2 <= cfg_.size()) Le(&cfg_[offset], v, 2);
}
void PciConfigSpace::Write32Raw(uint32_t offset, uint32_t v) {
  if (offset + 4 <= cfg_.size()) Le(&cfg_[offset], v, 4);
}

void PciConfigSpace::Reset() {
  cfg_ = reset_;
  if (msix_table_) msix_table_->SetControl(false, false);
}

absl::Status PciConfigSpace::RestoreState(absl::string_view bytes) {
  if (bytes.size() != cfg_.size()) return absl::InvalidArgumentError("config space state has the wrong size");
  std::memcpy(cfg_.data(), bytes.data(), cfg_.size());
  SyncMsix();
  return absl::OkStatus();
}

}  // namespace emud::vfio_user
