// IrqState: the client's interrupt configuration (DEVICE_SET_IRQS) for every
// IRQ index, and the InterruptSink the device signals MSI-X through.
//
// Per vector: an eventfd (or none), the transport mask (ACTION_MASK/UNMASK),
// the guest's table mask (if the guest wrote it through the transport) and a
// pending bit. A vector fires (eventfd write) only when it has an eventfd and
// no mask applies; otherwise it becomes pending and fires on the unmask or the
// eventfd assignment that makes it deliverable.
//
// Thread-safe: the session configures it from its event loop while a data
// path on another thread may call TriggerMsix.
#ifndef EMUD_VFIO_USER_IRQ_STATE_H_
#define EMUD_VFIO_USER_IRQ_STATE_H_

#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "vfio_user/device.h"

namespace emud::vfio_user {

class IrqState : public InterruptSink {
 public:
  // Persistable view of one vector (the eventfd only as present / absent).
  struct VectorState {
    bool has_fd = false;
    bool masked = false;        // transport mask
    bool guest_masked = false;  // MSI-X table mask written by the guest
    bool pending = false;
  };

  // counts[i] = number of vectors of IRQ index i (0 = unsupported).
  explicit IrqState(std::vector<uint32_t> counts);

  uint32_t count(uint32_t index) const {
    return index < counts_.size() ? counts_[index] : 0;
  }

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
  bool MsixEnabled() const override;
  void SetMsixGuestMask(uint32_t vector, bool masked) override;
  void SetMsixControl(bool enabled, bool function_masked) override;

  // Triggers any index/vector (software trigger / tests).
  void Trigger(uint32_t index, uint32_t vector);

  // Persistence.
  std::vector<VectorState> Snapshot(uint32_t index) const;
  bool HasEventfd(uint32_t index, uint32_t vector) const;
  // Restores one vector (resume); `efd` may be invalid.
  void RestoreVector(uint32_t index, uint32_t vector, const VectorState& st, UniqueFd efd);
  bool function_masked() const;
  bool msix_enabled() const;
  void set_control(bool enabled, bool function_masked);

  uint64_t fired() const;
  uint64_t dropped() const;
  // Changes since the last call (persistence uses it to skip unchanged irq records).
  bool TakeDirty();
  // Whether there are changes since the last TakeDirty (without taking them).
  bool dirty() const {
    std::lock_guard<std::mutex> l(mu_);
    return dirty_;
  }

 private:
  struct Vector {
    UniqueFd efd;
    bool masked = false;
    bool guest_masked = false;
    bool pending = false;
  };
  bool Deliverable(uint32_t index, const Vector& v) const;
  void Fire(Vector& v);
  void TriggerLocked(uint32_t index, uint32_t vector);
  void DeliverPending(uint32_t index, uint32_t start, uint32_t count);

  const std::vector<uint32_t> counts_;
  // std::mutex rather than absl::Mutex: Debian's Abseil is not built for
  // ThreadSanitizer, so its lock would look like no lock at all there.
  // Guards everything below.
  mutable std::mutex mu_;
  std::vector<std::vector<Vector>> irqs_;
  bool msix_enabled_ = false;
  bool function_masked_ = false;
  uint64_t fired_ = 0;
  uint64_t dropped_ = 0;
  bool dirty_ = false;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_IRQ_STATE_H_
