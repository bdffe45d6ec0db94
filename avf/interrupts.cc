#include "avf/interrupts.h"

#include "avf/avf_state.pb.h"
#include "vfio_user/device.h"

namespace emud::avf {

namespace {
// The DYN_CTL bits a read returns (self-clearing ones dropped).
constexpr uint32_t kDynCtlStoredMask =
    ~(kDynCtlClearPba | kDynCtlSwintTrig | kDynCtlIntenaMsk | kDynCtlIntena);
}  // namespace

InterruptController::InterruptController(volatile uint32_t* itrn) : itrn_(itrn) {}

uint32_t InterruptController::ReadIcr01() {
  uint32_t v = icr01_;
  icr01_ = 0;
  // The reader learns of every message posted so far (its drain follows).
  misc_event_pending_ = false;
  return v;
}

void InterruptController::WriteIcr0Ena1(uint32_t value) {
  icr0_ena1_ = value;
  EvaluateMisc();
}

void InterruptController::WriteDynCtl01(uint32_t value) {
  if (!(value & kDynCtlIntenaMsk)) misc_armed_ = (value & kDynCtlIntena) != 0;
  uint32_t idx = (value & kDynCtlItrIndxMask) >> kDynCtlItrIndxShift;
  if (idx < kNumItrIndexes) {
    itr01_[idx] = (value & kDynCtlIntervalMask) >> kDynCtlIntervalShift;
  }
  if (value & kDynCtlClearPba) misc_swint_pending_ = false;
  if (value & kDynCtlSwintTrig) misc_swint_pending_ = true;
  dyn_ctl01_ = value & kDynCtlStoredMask;
  EvaluateMisc();
}

uint32_t InterruptController::dyn_ctl01() const {
  return dyn_ctl01_ | (misc_armed_ ? kDynCtlIntena : 0);
}

void InterruptController::WriteItr01(uint32_t index, uint32_t value) {
  if (index < kNumItrIndexes) itr01_[index] = value & kItrIntervalMask;
}

uint32_t InterruptController::itr01(uint32_t index) const {
  return index < kNumItrIndexes ? itr01_[index] : 0;
}

void InterruptController::WriteDynCtln(uint32_t v, uint32_t value) {
  if (v >= kMaxQueueVectors) {
    ++bad_vector_;
    return;
  }
  QueueVector& q = queue_[v];
  const bool arming = !(value & kDynCtlIntenaMsk) && (value & kDynCtlIntena) != 0;
  if (!(value & kDynCtlIntenaMsk)) q.armed = arming;
  uint32_t idx = (value & kDynCtlItrIndxMask) >> kDynCtlItrIndxShift;
  if (idx < kNumItrIndexes) {
    itrn_[16 * idx + v] = (value & kDynCtlIntervalMask) >> kDynCtlIntervalShift;
  }
  // An arming write keeps a pending data-path cause despite CLEARPBA (see
  // the header); CLEARPBA alone drops it.
  if ((value & kDynCtlClearPba) && !arming) q.pending = false;
  if (value & kDynCtlSwintTrig) q.pending = true;
  q.wb_on_itr = (value & kDynCtlWbOnItr) != 0;
  q.dyn_ctl = value & kDynCtlStoredMask;
  if (q.armed && q.pending) {
    q.armed = false;
    q.pending = false;
    Fire(v + 1);
  }
}

uint32_t InterruptController::dyn_ctln(uint32_t v) const {
  if (v >= kMaxQueueVectors) return 0;
  return queue_[v].dyn_ctl | (queue_[v].armed ? kDynCtlIntena : 0);
}

void InterruptController::WriteItrn(uint32_t index, uint32_t v, uint32_t value) {
  if (index < kNumItrIndexes && v < kMaxQueueVectors) {
    itrn_[16 * index + v] = value & kItrIntervalMask;
  }
}

uint32_t InterruptController::itrn(uint32_t index, uint32_t v) const {
  if (index < kNumItrIndexes && v < kMaxQueueVectors) {
    return itrn_[16 * index + v] & kItrIntervalMask;
  }
  return 0;
}

void InterruptController::RaiseAdminQueue() {
  icr01_ |= kIcr0AdminQ;
  misc_event_pending_ = true;
  EvaluateMisc();
}

bool InterruptController::RaiseQueueVector(uint32_t msix_vector) {
  if (msix_vector == 0 || msix_vector > kMaxQueueVectors) {
    ++bad_vector_;
    return false;
  }
  QueueVector& q = queue_[msix_vector - 1];
  if (!q.armed || sink_ == nullptr) {
    q.pending = true;
    return false;
  }
  q.armed = false;
  q.pending = false;
  Fire(msix_vector);
  return true;
}

void InterruptController::EvaluateMisc() {
  if (!misc_armed_ || sink_ == nullptr) return;
  if (MiscPending()) {
    misc_armed_ = false;
    misc_swint_pending_ = false;
    misc_event_pending_ = false;
    Fire(0);
  }
}

bool InterruptController::MiscPending() const {
  return (misc_event_pending_ && (icr0_ena1_ & kIcr0AdminQ) != 0) || misc_swint_pending_;
}

void InterruptController::Fire(uint32_t msix_vector) {
  ++fired_;
  if (sink_ != nullptr) sink_->TriggerMsix(msix_vector);
}

VectorState InterruptController::state(uint32_t msix_vector) const {
  VectorState s;
  if (msix_vector == 0) {
    s.armed = misc_armed_;
    s.pending = MiscPending();
    s.itr = itr01_;
    return s;
  }
  if (msix_vector > kMaxQueueVectors) return s;
  const QueueVector& q = queue_[msix_vector - 1];
  s.armed = q.armed;
  s.pending = q.pending;
  s.wb_on_itr = q.wb_on_itr;
  for (uint32_t i = 0; i < kNumItrIndexes; ++i) s.itr[i] = itrn(i, msix_vector - 1);
  return s;
}

void InterruptController::Reset() {
  icr01_ = 0;
  icr0_ena1_ = 0;
  dyn_ctl01_ = 0;
  misc_armed_ = false;
  misc_swint_pending_ = false;
  misc_event_pending_ = false;
  stat_ctl01_ = 0;
  itr01_ = {};
  queue_ = {};
  for (uint32_t i = 0; i < kNumItrIndexes * 16; ++i) itrn_[i] = 0;
}

void InterruptController::SaveTo(AvfInterruptState* out) const {
  out->Clear();
  out->set_icr01(icr01_);
  out->set_icr0_ena1(icr0_ena1_);
  out->set_dyn_ctl01(dyn_ctl01_);
  out->set_misc_armed(misc_armed_);
  out->set_misc_swint_pending(misc_swint_pending_);
  out->set_misc_event_pending(misc_event_pending_);
  out->set_stat_ctl01(stat_ctl01_);
  for (uint32_t v : itr01_) out->add_itr01(v);
  for (const QueueVector& q : queue_) {
    auto* qv = out->add_queue_vector();
    qv->set_dyn_ctl(q.dyn_ctl);
    qv->set_armed(q.armed);
    qv->set_pending(q.pending);
    qv->set_wb_on_itr(q.wb_on_itr);
  }
  for (uint32_t i = 0; i < kNumItrIndexes * 16; ++i) out->add_itrn(itrn_[i]);
}

void InterruptController::RestoreFrom(const AvfInterruptState& in) {
  Reset();
  icr01_ = in.icr01();
  icr0_ena1_ = in.icr0_ena1();
  dyn_ctl01_ = in.dyn_ctl01();
  misc_armed_ = in.misc_armed();
  misc_swint_pending_ = in.misc_swint_pending();
  // Records from before the flag: the old model fired on a latched cause.
  misc_event_pending_ = in.has_misc_event_pending() ? in.misc_event_pending()
                                                    : (icr01_ & kIcr0AdminQ) != 0;
  stat_ctl01_ = in.stat_ctl01();
  for (int i = 0; i < in.itr01_size() && i < int(kNumItrIndexes); ++i) {
    itr01_[i] = in.itr01(i) & kItrIntervalMask;
  }
  for (int i = 0; i < in.queue_vector_size() && i < int(kMaxQueueVectors); ++i) {
    const auto& qv = in.queue_vector(i);
    queue_[i].dyn_ctl = qv.dyn_ctl() & kDynCtlStoredMask;
    queue_[i].armed = qv.armed();
    queue_[i].pending = qv.pending();
    queue_[i].wb_on_itr = qv.wb_on_itr();
  }
  for (int i = 0; i < in.itrn_size() && i < int(kNumItrIndexes * 16); ++i) {
    itrn_[i] = in.itrn(i) & kItrIntervalMask;
  }
}

}  // namespace emud::avf
