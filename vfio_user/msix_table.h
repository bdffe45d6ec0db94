// MsixTable: storage for an MSI-X table and the view of its Pending Bit Array.
//
// A device places the table and the PBA inside one of its BARs and forwards
// accesses falling in those windows to TableRead/TableWrite/PbaRead. Pending
// bits are owned by the transport's InterruptSink (it sets them when a vector
// fires while masked), so PbaRead reports InterruptSink::MsixPending.
//
// Masking model: the transport masks vectors itself (vfio-user SET_IRQS with
// ACTION_MASK/UNMASK). A VMM such as QEMU emulates the MSI-X table on its side
// and never writes ours; so the guest's per-vector mask bits and the function
// mask reach the sink only once the guest actually writes them through the
// transport (InterruptSink::SetMsixGuestMask / SetMsixControl). Reset() tells
// the sink those guest masks lapse.
//
// Not thread-safe; used from the device's event loop only.
#ifndef EMUD_VFIO_USER_MSIX_TABLE_H_
#define EMUD_VFIO_USER_MSIX_TABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "vfio_user/device.h"

namespace emud::vfio_user {

class MsixTable {
 public:
  static constexpr uint32_t kMaxVectors = 2048;
  static constexpr uint32_t kEntrySize = 16;

  struct Entry {
    uint64_t address = 0;
    uint32_t data = 0;
    uint32_t control = 1;  // bit 0: masked (power-on value)
  };

  // 1 <= num_vectors <= kMaxVectors (clamped).
  explicit MsixTable(uint32_t num_vectors);

  uint32_t num_vectors() const { return static_cast<uint32_t>(entries_.size()); }
  // Bytes the table and the PBA occupy in their BAR (PBA rounded to 8 bytes).
  uint64_t table_bytes() const { return uint64_t{num_vectors()} * kEntrySize; }
  uint64_t pba_bytes() const { return ((num_vectors() + 63) / 64) * 8; }

  // The sink the pending bits come from and guest masks go to (may be null:
  // then the PBA reads 0). Attach pushes the guest-written masks and the
  // control state to the new sink.
  void Attach(InterruptSink* sink);
  void Detach() { sink_ = nullptr; }

  // Accesses relative to the start of the table / PBA. Any size and alignment
  // is accepted; bytes outside the table read as 0 and ignore writes (the
  // caller bounds the access by its BAR). Table writes only change the
  // address, data and mask bit; they never fail.
  void TableRead(uint64_t offset, absl::Span<uint8_t> out) const;
  void TableWrite(uint64_t offset, absl::Span<const uint8_t> data);
  void PbaRead(uint64_t offset, absl::Span<uint8_t> out) const;

  // From the MSI-X capability's Message Control (PciConfigSpace calls it).
  void SetControl(bool enabled, bool function_masked);
  bool enabled() const { return enabled_; }
  bool function_masked() const { return function_masked_; }

  const Entry& entry(uint32_t vector) const { return entries_[vector]; }
  bool GuestMasked(uint32_t vector) const {
    return vector < entries_.size() && (entries_[vector].control & 1);
  }

  // Power-on state; guest masks lapse in the sink.
  void Reset();

  // Persistence of the entries and control bits.
  std::string SaveState() const;
  absl::Status RestoreState(absl::string_view bytes);

 private:
  std::vector<Entry> entries_;
  std::vector<bool> guest_written_;
  bool enabled_ = false;
  bool function_masked_ = false;
  InterruptSink* sink_ = nullptr;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_MSIX_TABLE_H_
