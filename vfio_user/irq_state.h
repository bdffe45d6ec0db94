// IrqState: the client's interrupt configuration (DEVICE_SET_IRQS) for every
// IRQ index, and the InterruptSink the device signals MSI-X through.
//
// Per vector: an eventfd (or none), the transport mask (ACTION_MASK/UNMASK),
// the guest's table mask (if the guest wrote it through the transport) and a
// pending bit. A vector fires (eventfd write) only when it has an eventfd and
// no mask applies; otherwise it becomes pending and fires on the unmask or the
// eventfd assignment that makes it deliverable.
#ifndef EMUD_VFIO_USER_IRQ_STATE_H_
#define EMUD_VFIO_USER_IRQ_STATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "vfio_user/device.h"

namespace emud::vfio_user {

class IrqState : public InterruptSink {
 public:
  struct Vector {
    UniqueFd efd;
    bool masked = false;        // transport mask
    bool guest_masked = false;  // MSI-X table mask written by the guest
    bool pending = false;
  };

  // counts[i] = number of vectors of IRQ index i (0 = unsupported).
  explicit IrqState(std::vector<uint32_t> counts);

  uint32_t count(uint32_t index) const { return index < irqs_.size() ? static_cast<uint32_t>(irqs_[index].size()) : 0; }

  // DEVICE_SET_IRQS, already validated for index/start/count/flag shape.
  // `fds` (DATA_EVENTFD) is empty (de-assign) or has `count` entries;
  // `bools` (DATA_BOOL) has `count` entries. EINVAL-carrying errors for
  // combinations that are meaningless (eventfd with mask/unmask).
  absl::Status SetIrqs(uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                       std::vector<UniqueFd> fds, absl::Span<const uint8_t> bools);

  // Client went away: close every eventfd, clear transport masks. Pending
  // bits survive (device state).
  void DisconnectAll();
  // Device reset: pending bits clear.
  void ClearPending();

  // InterruptSink.
  void TriggerMsix(uint32_t vector) override;
  bool MsixPending(uint32_t vector) const override;
  bool MsixEnabled() const override { return msix_enabled_ && !function_masked_; }
  void SetMsixGuestMask(uint32_t vector, bool masked) override;
  void SetMsixControl(bool enabled, bool function_masked) override;

  // Triggers any index/vector (software trigger / tests).
  void Trigger(uint32_t index, uint32_t vector);

  const std::vector<Vector>& vectors(uint32_t index) const { return irqs_[index]; }
  std::vector<Vector>& mutable_vectors(uint32_t index) { return irqs_[index]; }
  bool function_masked() const { return function_masked_; }
  bool msix_enabled() const { return msix_enabled_; }
  void set_control(bool enabled, bool function_masked) {
    msix_enabled_ = enabled;
    function_masked_ = function_masked;
  }

  uint64_t fired() const { return fired_; }
  uint64_t dropped() const { return dropped_; }
  // Changes since the last call (persistence uses it to skip unchanged irq records).
  bool TakeDirty() { bool d = dirty_; dirty_ = false; return d; }

 private:
  bool Deliverable(uint32_t index, const Vector& v) const;
  void Fire(uint32_t index, Vector& v);
  void DeliverPending(uint32_t index, uint32_t start, uint32_t count);

  std::vector<std::vector<Vector>> irqs_;
  bool msix_enabled_ = false;
  bool function_masked_ = false;
  uint64_t fired_ = 0;
  uint64_t dropped_ = 0;
  bool dirty_ = false;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_IRQ_STATE_H_
