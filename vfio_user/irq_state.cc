#include "vfio_user/irq_state.h"

#include <errno.h>
#include <unistd.h>

#include "vfio_user/protocol.h"

namespace emud::vfio_user {
namespace {

std::vector<uint32_t> Normalize(std::vector<uint32_t> counts) {
  counts.resize(kNumPciIrqs, 0);
  return counts;
}

}  // namespace

IrqState::IrqState(std::vector<uint32_t> counts) : counts_(Normalize(std::move(counts))) {
  std::lock_guard<std::mutex> l(mu_);
  irqs_.resize(kNumPciIrqs);
  for (size_t i = 0; i < irqs_.size(); ++i) irqs_[i].resize(counts_[i]);
}

bool IrqState::Deliverable(uint32_t index, const Vector& v) const {
  if (!v.efd.valid() || v.masked) return false;
  if (index == kMsixIrq && (v.guest_masked || function_masked_)) return false;
  return true;
}

void IrqState::Fire(Vector& v) {
  uint64_t one = 1;
  ssize_t r = ::write(v.efd.get(), &one, sizeof(one));
  if (r == sizeof(one)) {
    ++fired_;
  } else {
    ++dropped_;
  }
}

void IrqState::TriggerLocked(uint32_t index, uint32_t vector) {
  if (index >= irqs_.size() || vector >= irqs_[index].size()) {
    ++dropped_;
    return;
  }
  Vector& v = irqs_[index][vector];
  if (Deliverable(index, v)) {
    Fire(v);
  } else if (!v.pending) {
    v.pending = true;
    dirty_ = true;
  }
}

void IrqState::Trigger(uint32_t index, uint32_t vector) {
  std::lock_guard<std::mutex> l(mu_);
  TriggerLocked(index, vector);
}

void IrqState::TriggerMsix(uint32_t vector) { Trigger(kMsixIrq, vector); }

bool IrqState::MsixPending(uint32_t vector) const {
  std::lock_guard<std::mutex> l(mu_);
  return vector < irqs_[kMsixIrq].size() && irqs_[kMsixIrq][vector].pending;
}

bool IrqState::MsixEnabled() const {
  std::lock_guard<std::mutex> l(mu_);
  return msix_enabled_ && !function_masked_;
}

void IrqState::DeliverPending(uint32_t index, uint32_t start, uint32_t count) {
  for (uint64_t i = start; i < uint64_t{start} + count && i < irqs_[index].size(); ++i) {
    Vector& v = irqs_[index][i];
    if (v.pending && Deliverable(index, v)) {
      v.pending = false;
      dirty_ = true;
      Fire(v);
    }
  }
}

void IrqState::SetMsixGuestMask(uint32_t vector, bool masked) {
  std::lock_guard<std::mutex> l(mu_);
  if (vector >= irqs_[kMsixIrq].size()) return;
  irqs_[kMsixIrq][vector].guest_masked = masked;
  dirty_ = true;
  if (!masked) DeliverPending(kMsixIrq, vector, 1);
}

void IrqState::SetMsixControl(bool enabled, bool function_masked) {
  std::lock_guard<std::mutex> l(mu_);
  msix_enabled_ = enabled;
  function_masked_ = function_masked;
  dirty_ = true;
  if (!function_masked) DeliverPending(kMsixIrq, 0, static_cast<uint32_t>(irqs_[kMsixIrq].size()));
}

absl::Status IrqState::SetIrqs(uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                               std::vector<UniqueFd> fds, absl::Span<const uint8_t> bools) {
  std::lock_guard<std::mutex> l(mu_);
  if (index >= irqs_.size() || uint64_t{start} + count > irqs_[index].size()) {
    return ErrnoStatus(EINVAL, "SET_IRQS range");
  }
  auto& vecs = irqs_[index];
  uint32_t data = flags & kIrqSetDataMask;
  uint32_t action = flags & kIrqSetActionMaskAll;
  if (data == kIrqSetDataBool && bools.size() < count) return ErrnoStatus(EINVAL, "SET_IRQS bools");
  if (data == kIrqSetDataEventfd && !fds.empty() && fds.size() != count) return ErrnoStatus(EINVAL, "SET_IRQS fds");
  auto selected = [&](uint32_t i) { return data != kIrqSetDataBool || bools[i] != 0; };
  dirty_ = true;
  switch (action) {
    case kIrqSetActionTrigger:
      if (data == kIrqSetDataEventfd) {
        for (uint32_t i = 0; i < count; ++i) {
          vecs[start + i].efd = fds.empty() ? UniqueFd() : std::move(fds[i]);
        }
        DeliverPending(index, start, count);
        return absl::OkStatus();
      }
      if (data == kIrqSetDataNone && count == 0) {
        // Disable every vector of this index.
        for (auto& v : vecs) {
          v.efd.reset();
          v.masked = false;
        }
        return absl::OkStatus();
      }
      for (uint32_t i = 0; i < count; ++i) {
        if (selected(i)) TriggerLocked(index, start + i);
      }
      return absl::OkStatus();
    case kIrqSetActionMask:
    case kIrqSetActionUnmask:
      if (data == kIrqSetDataEventfd) {
        return ErrnoStatus(EINVAL, "eventfd-based mask/unmask (irqfd resample) not supported");
      }
      for (uint32_t i = 0; i < count; ++i) {
        if (selected(i)) vecs[start + i].masked = action == kIrqSetActionMask;
      }
      if (action == kIrqSetActionUnmask) DeliverPending(index, start, count);
      return absl::OkStatus();
    default:
      return ErrnoStatus(EINVAL, "bad SET_IRQS action");
  }
}

void IrqState::DisconnectAll() {
  std::lock_guard<std::mutex> l(mu_);
  for (auto& idx : irqs_) {
    for (auto& v : idx) {
      v.efd.reset();
      v.masked = false;
    }
  }
  dirty_ = true;
}

void IrqState::ClearPending() {
  std::lock_guard<std::mutex> l(mu_);
  for (auto& idx : irqs_) {
    for (auto& v : idx) v.pending = false;
  }
  dirty_ = true;
}

std::vector<IrqState::VectorState> IrqState::Snapshot(uint32_t index) const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<VectorState> out;
  if (index >= irqs_.size()) return out;
  for (const auto& v : irqs_[index]) out.push_back({v.efd.valid(), v.masked, v.guest_masked, v.pending});
  return out;
}

bool IrqState::HasEventfd(uint32_t index, uint32_t vector) const {
  std::lock_guard<std::mutex> l(mu_);
  return index < irqs_.size() && vector < irqs_[index].size() && irqs_[index][vector].efd.valid();
}

void IrqState::RestoreVector(uint32_t index, uint32_t vector, const VectorState& st, UniqueFd efd) {
  std::lock_guard<std::mutex> l(mu_);
  if (index >= irqs_.size() || vector >= irqs_[index].size()) return;
  Vector& v = irqs_[index][vector];
  v.masked = st.masked;
  v.guest_masked = st.guest_masked;
  v.pending = st.pending;
  v.efd = std::move(efd);
}

bool IrqState::function_masked() const {
  std::lock_guard<std::mutex> l(mu_);
  return function_masked_;
}
bool IrqState::msix_enabled() const {
  std::lock_guard<std::mutex> l(mu_);
  return msix_enabled_;
}
void IrqState::set_control(bool enabled, bool function_masked) {
  std::lock_guard<std::mutex> l(mu_);
  msix_enabled_ = enabled;
  function_masked_ = function_masked;
}
uint64_t IrqState::fired() const {
  std::lock_guard<std::mutex> l(mu_);
  return fired_;
}
uint64_t IrqState::dropped() const {
  std::lock_guard<std::mutex> l(mu_);
  return dropped_;
}
bool IrqState::TakeDirty() {
  std::lock_guard<std::mutex> l(mu_);
  bool d = dirty_;
  dirty_ = false;
  return d;
}

}  // namespace emud::vfio_user
