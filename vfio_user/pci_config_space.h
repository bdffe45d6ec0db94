// PciConfigSpace: an emulated PCI/PCIe type-0 configuration space.
//
// A device model owns one, describes itself with the builder methods (header,
// BARs, capabilities) once at construction, and forwards the CONFIG region
// (index 7) reads and writes to Read()/Write(). The class applies PCI write
// semantics byte by byte: read-only bits keep their value, RW1C bits clear when
// written with 1, BARs report their size when written with all ones. Side
// effects a device must act on come back through callbacks (FLR, MSI-X
// control) and accessors (command register bits, BAR addresses).
//
// Not thread-safe; used from the device's event loop only.
#ifndef EMUD_VFIO_USER_PCI_CONFIG_SPACE_H_
#define EMUD_VFIO_USER_PCI_CONFIG_SPACE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace emud::vfio_user {

class MsixTable;

// Standard config-space offsets and bits used by devices and tests.
namespace pci {
inline constexpr uint32_t kVendorId = 0x00;
inline constexpr uint32_t kDeviceId = 0x02;
inline constexpr uint32_t kCommand = 0x04;
inline constexpr uint32_t kStatus = 0x06;
inline constexpr uint32_t kRevision = 0x08;
inline constexpr uint32_t kClassProgIf = 0x09;
inline constexpr uint32_t kHeaderType = 0x0e;
inline constexpr uint32_t kBar0 = 0x10;
inline constexpr uint32_t kSubsysVendorId = 0x2c;
inline constexpr uint32_t kSubsysId = 0x2e;
inline constexpr uint32_t kRomBar = 0x30;
inline constexpr uint32_t kCapPtr = 0x34;
inline constexpr uint32_t kInterruptLine = 0x3c;
inline constexpr uint32_t kInterruptPin = 0x3d;

inline constexpr uint16_t kCommandIo = 1 << 0;
inline constexpr uint16_t kCommandMemory = 1 << 1;
inline constexpr uint16_t kCommandBusMaster = 1 << 2;
inline constexpr uint16_t kCommandIntxDisable = 1 << 10;
inline constexpr uint16_t kStatusCapList = 1 << 4;

inline constexpr uint8_t kCapIdPm = 0x01;
inline constexpr uint8_t kCapIdMsi = 0x05;
inline constexpr uint8_t kCapIdVendor = 0x09;
inline constexpr uint8_t kCapIdPcie = 0x10;
inline constexpr uint8_t kCapIdMsix = 0x11;

// MSI-X capability layout (offsets from the capability start).
inline constexpr uint32_t kMsixControl = 2;
inline constexpr uint32_t kMsixTable = 4;
inline constexpr uint32_t kMsixPba = 8;
inline constexpr uint16_t kMsixControlEnable = 1 << 15;
inline constexpr uint16_t kMsixControlFunctionMask = 1 << 14;

// PCIe capability layout (offsets from the capability start).
inline constexpr uint32_t kPcieCaps = 2;
inline constexpr uint32_t kPcieDevCap = 4;
inline constexpr uint32_t kPcieDevCtl = 8;
inline constexpr uint32_t kPcieDevSta = 10;
inline constexpr uint32_t kPcieLinkCap = 12;
inline constexpr uint32_t kPcieLinkSta = 18;
inline constexpr uint32_t kPcieDevCap2 = 0x24;
inline constexpr uint32_t kPcieDevCtl2 = 0x28;
inline constexpr uint32_t kPcieCapSize = 0x3c;  // version 2, endpoint
inline constexpr uint32_t kPcieDevCapFlr = 1u << 28;
inline constexpr uint16_t kPcieDevCtlFlr = 1u << 15;

// Power-management capability layout.
inline constexpr uint32_t kPmCaps = 2;
inline constexpr uint32_t kPmCsr = 4;
inline constexpr uint32_t kPmCapSize = 8;
}  // namespace pci

class PciConfigSpace {
 public:
  enum class BarType { kMem32, kMem64, kIo };

  struct Header {
    uint16_t vendor_id = 0;
    uint16_t device_id = 0;
    uint16_t subsystem_vendor_id = 0;
    uint16_t subsystem_id = 0;
    uint8_t revision = 0;
    uint32_t class_code = 0;  // 24 bits: class << 16 | subclass << 8 | prog-if
    uint8_t interrupt_pin = 0;  // 0 = no INTx, 1 = INTA ...
  };

  enum class PcieDeviceType : uint8_t { kEndpoint = 0x0, kLegacyEndpoint = 0x1, kRcEndpoint = 0x9 };

  struct PcieOptions {
    PcieDeviceType type = PcieDeviceType::kEndpoint;
    bool flr = true;                // advertise Function Level Reset
    uint8_t max_payload_code = 1;   // Device Capabilities bits 2:0 (1 = 256 B)
    uint8_t link_speed = 1;         // 1 = 2.5 GT/s
    uint8_t link_width = 1;         // lanes
  };

  // `size` is 256 (conventional PCI) or 4096 (PCIe extended config space).
  explicit PciConfigSpace(uint32_t size = 256);
  PciConfigSpace(const PciConfigSpace&) = delete;
  PciConfigSpace& operator=(const PciConfigSpace&) = delete;

  uint32_t size() const { return static_cast<uint32_t>(cfg_.size()); }

  // ---- Builders (call before the device is exposed) ----

  // Writes the identification fields of the type-0 header.
  void SetHeader(const Header& h);

  // Declares BAR `index` (0..5) of `size` bytes (a power of two; >= 16 for
  // memory, 4..256 for I/O). kMem64 also consumes index + 1. Fails with
  // INVALID_ARGUMENT on a bad index/size or an already used slot.
  absl::Status SetBar(int index, uint64_t size, BarType type, bool prefetchable = false);

  // Appends a capability with id `id` whose body (bytes after id/next) is
  // `body`; `wmask` (same length as body, or empty = read-only) gives the
  // guest-writable bits and `w1c` (same, or empty) the write-1-to-clear bits.
  // Returns the capability's offset. RESOURCE_EXHAUSTED when it does not fit
  // in the first 256 bytes.
  absl::StatusOr<uint8_t> AddCapability(uint8_t id, absl::Span<const uint8_t> body,
                                        absl::Span<const uint8_t> wmask = {},
                                        absl::Span<const uint8_t> w1c = {});

  // MSI-X capability for `table`: the table lives in BAR `table_bar` at
  // `table_offset`, the PBA in BAR `pba_bar` at `pba_offset` (offsets 8-byte
  // aligned). Guest writes of the enable / function-mask bits are forwarded to
  // `table` (which must outlive this object).
  absl::StatusOr<uint8_t> AddMsixCapability(MsixTable* table, uint8_t table_bar,
                                            uint32_t table_offset, uint8_t pba_bar,
                                            uint32_t pba_offset);
  // PCI Express capability (version 2). With options.flr, a guest write of
  // Initiate-FLR calls the FLR callback (the bit itself always reads 0).
  absl::StatusOr<uint8_t> AddPcieCapability(const PcieOptions& options);
  // Power-management capability (version 3, D0/D3hot, No_Soft_Reset set).
  absl::StatusOr<uint8_t> AddPmCapability();

  // Offset of the first capability with `id`, or 0 if absent.
  uint8_t FindCapability(uint8_t id) const;

  // Called after a guest sets Initiate-FLR. The callback typically resets the
  // device model and then calls Reset() on this object.
  void set_flr_callback(std::function<void()> cb) { flr_cb_ = std::move(cb); }

  // ---- Guest access ----

  // Reads `out.size()` bytes at `offset`. OUT_OF_RANGE if the access does not
  // fit (overflow-safe); nothing is read then.
  absl::Status Read(uint64_t offset, absl::Span<uint8_t> out) const;
  // Applies a guest write with PCI semantics and runs side effects.
  // OUT_OF_RANGE if the access does not fit.
  absl::Status Write(uint64_t offset, absl::Span<const uint8_t> data);

  // ---- Device-side accessors ----
  uint8_t Read8(uint32_t offset) const;
  uint16_t Read16(uint32_t offset) const;
  uint32_t Read32(uint32_t offset) const;
  // Device-side writes bypass write masks (e.g. to set a status bit).
  void Write16Raw(uint32_t offset, uint16_t v);
  void Write32Raw(uint32_t offset, uint32_t v);

  uint16_t command() const { return Read16(pci::kCommand); }
  bool bus_master_enabled() const { return command() & pci::kCommandBusMaster; }
  bool memory_enabled() const { return command() & pci::kCommandMemory; }
  // Guest-programmed base address of BAR `index` (flag bits stripped); 0 for
  // an unused BAR. A 64-bit BAR combines both dwords.
  uint64_t BarAddress(int index) const;
  uint64_t BarSize(int index) const { return index >= 0 && index < 6 ? bar_size_[index] : 0; }

  // Back to the power-on image built by the builders (FLR / DEVICE_RESET).
  // Also resets the linked MsixTable's control state.
  void Reset();

  // Persistence: the current bytes, and restoring them into an object built
  // with the same layout (INVALID_ARGUMENT on size mismatch). Restore does not
  // run side effects except re-deriving the MSI-X control state.
  std::string SaveState() const { return std::string(cfg_.begin(), cfg_.end()); }
  absl::Status RestoreState(absl::string_view bytes);

 private:
  void InitBytes(uint32_t offset, absl::Span<const uint8_t> bytes, absl::Span<const uint8_t> wmask,
                 absl::Span<const uint8_t> w1c);
  void SyncMsix();

  std::vector<uint8_t> cfg_;
  std::vector<uint8_t> reset_;
  std::vector<uint8_t> wmask_;
  std::vector<uint8_t> w1c_;
  uint64_t bar_size_[6] = {};
  BarType bar_type_[6] = {};
  bool bar_used_[6] = {};
  uint8_t last_cap_ = 0;     // offset of the last capability (0 = none)
  uint32_t next_cap_ = 0x40; // where the next capability goes
  uint8_t msix_cap_ = 0;
  uint8_t pcie_cap_ = 0;
  bool flr_supported_ = false;
  MsixTable* msix_table_ = nullptr;
  std::function<void()> flr_cb_;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_PCI_CONFIG_SPACE_H_
