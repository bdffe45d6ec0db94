// What the test guest's driver needs from "the machine": BAR0 and config
// space accesses, MSI-X vectors, device reset, time, and its RAM. Two
// implementations: VfioUserBus (a real vfio-user connection) and
// InProcessBus (an avf::Device called directly, for fast tests).
#ifndef EMUD_TESTS_GUEST_BUS_H_
#define EMUD_TESTS_GUEST_BUS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "tests/guest/guest_memory.h"

namespace emud::guest {

class GuestBus {
 public:
  virtual ~GuestBus() = default;
  // 32-bit register access to BAR0 (readl / writel).
  virtual absl::StatusOr<uint32_t> Read32(uint32_t offset) = 0;
  virtual absl::Status Write32(uint32_t offset, uint32_t value) = 0;
  // PCI config space.
  virtual absl::Status ConfigRead(uint32_t offset, absl::Span<uint8_t> out) = 0;
  virtual absl::Status ConfigWrite(uint32_t offset, absl::Span<const uint8_t> data) = 0;
  // Wires MSI-X vectors 0..count-1 to the guest (pci_enable_msix_range).
  virtual absl::Status EnableMsix(uint32_t count) = 0;
  virtual absl::Status DisableMsix() = 0;
  // How often vector `v` fired since the last call, waiting up to `timeout`
  // for at least one (0 after the timeout).
  virtual absl::StatusOr<uint64_t> WaitVector(uint32_t v, absl::Duration timeout) = 0;
  // Whole-device reset (vfio-user DEVICE_RESET).
  virtual absl::Status DeviceReset() = 0;
  // msleep / usleep_range; an in-process bus need not really sleep.
  virtual void Sleep(absl::Duration d) = 0;
  virtual GuestMemory& memory() = 0;
};

}  // namespace emud::guest

#endif  // EMUD_TESTS_GUEST_BUS_H_
