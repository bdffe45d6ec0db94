#include "vfio_user/irq_state.h"

#include <errno.h>
#include <unistd.h>

#include "vfio_user/protocol.h"

namespace emud::vfio_user {

IrqState::IrqState(std::vector<uint32_t> counts) {
  irqs_.resize(kNumPciIrqs);
  for (size_t i = 0; i < counts.size() && i < irqs_.size(); ++i) irqs_[i].resize(counts[i]);
}

bool IrqState::Deliverable(uint32_t index, const Vector& v) const {
  if (!v.efd.valid() || v.masked) return false;
  if (index == kMsixIrq && (v.guest_masked || function_masked_)) return false;
  return true;
}

void IrqState::Fire(uint32_t /*index*/, Vector& v) {
  uint64_t one = 1;
  ssize_t r = ::write(v.efd.get(), &one, sizeof(one));
  if (r == sizeof(one)) {
    ++fired_;
  } else {
    ++dropped_;
  }
}

void IrqState::Trigger(uint32_t index, uint32_t vector) {
  if (index >= irqs_.size() || vector >= irqs_[index].size()) {
    ++dropped_;
    return;
  }
  Vector& v = irqs_[index][vector];
  if (Deliverable(index, v)) {
    Fire(index, v);
  } else if (!v.pending) {
    v.pending = true;
    dirty_ = true;
  }
}

void IrqState::TriggerMsix(uint32_t vector) { Trigger(kMsixIrq, vector); }

bool IrqState::MsixPending(uint32_t vector) const {
  return vector < irqs_[kMsixIrq].size() && irqs_[kMsixIrq][vector].pending;
}

void IrqState::DeliverPending(uint32_t index, uint32_t start, uint32_t count) {
  for (uint32_t i = start; i < start + count && i < irqs_[index].size(); ++i) {
    Vector& v = irqs_[index][i];
    if (v.pending && Deliverable(index, v)) {
      v.pending = false;
      dirty_ = true;
      Fire(index, v);
    }
  }
}

void IrqState::SetMsixGuestMask(uint32_t vector, bool masked) {
  if (vector >= irqs_[kMsixIrq].size()) return;
  irqs_[kMsixIrq][vector].guest_masked = masked;
  dirty_ = true;
  if (!masked) DeliverPending(kMsixIrq, vector, 1);
}

void IrqState::SetMsixControl(bool enabled, bool function_masked) {
  msix_enabled_ = enabled;
  function_masked_ = function_masked;
  dirty_ = true;
  if (!function_masked) DeliverPending(kMsixIrq, 0, static_cast<uint32_t>(irqs_[kMsixIrq].size()));
}

absl::Status IrqState::SetIrqs(uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                               std::vector<UniqueFd> fds, absl::Span<const uint8_t> bools) {
  auto& vecs = irqs_[index];
  uint32_t data = flags & kIrqSetDataMask;
  uint32_t action = flags & kIrqSetActionMaskAll;
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
        if (selected(i)) Trigger(index, start + i);
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
  for (auto& idx : irqs_) {
    for (auto& v : idx) {
      v.efd.reset();
      v.masked = false;
    }
  }
  dirty_ = true;
}

void IrqState::ClearPending() {
  for (auto& idx : irqs_) {
    for (auto& v : idx) v.pending = false;
  }
  dirty_ = true;
}

}  // namespace emud::vfio_user
