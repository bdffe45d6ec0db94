#include "avf/interrupts.h"

#include <algorithm>

#include "avf/avf_state.pb.h"
#include "vfio_user/device.h"

namespace emud::avf {

namespace {
// The DYN_CTL bits a read returns (self-clearing ones dropped).
constexpr uint32_t kDynCtlStoredMask =
    ~(kDynCtlClearPba | kDynCtlSwintTrig | kDynCtlIntenaMsk | kDynCtlIntena);
}  // namespace

InterruptController::InterruptController(volatile uint32_t* itrn, volatile uint32_t* vectors,
                                         uint32_t num_queue_vectors)
    : itrn_(itrn),
      vectors_(vectors != nullptr ? vectors : own_vectors_.data()),
      num_vectors_(std::clamp<uint32_t>(num_queue_vectors, 1, kMaxQueueVectors)) {}

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
  if (v >= num_vectors_) {
    ++bad_vector_;
    return;
  }
  const uint32_t old = Word(v);
  bool armed = (old & kWordArmed) != 0;
  bool pending = (old & kWordPending) != 0;
  const bool arming = !(value & kDynCtlIntenaMsk) && (value & kDynCtlIntena) != 0;
  if (!(value & kDynCtlIntenaMsk)) armed = arming;
  uint32_t idx = (value & kDynCtlItrIndxMask) >> kDynCtlItrIndxShift;
  if (idx < kNumItrIndexes && v < kNumItrnVectors) {
    itrn_[kNumItrnVectors * idx + v] = (value & kDynCtlIntervalMask) >> kDynCtlIntervalShift;
  }
  // An arming write keeps a pending data-path cause despite CLEARPBA (see
  // the header); CLEARPBA alone drops it.
  if ((value & kDynCtlClearPba) && !arming) pending = false;
  if (value & kDynCtlSwintTrig) pending = true;
  // WB_ON_ITR is kept in the stored bits (kDynCtlStoredMask keeps bit 30).
  uint32_t word = value & kDynCtlStoredMask;
  if (armed && pending) {
    Fire(v + 1);  // before the store that disarms (see the header)
  } else {
    word |= (armed ? kWordArmed : 0) | (pending ? kWordPending : 0);
  }
  Word(v) = word;
}

uint32_t InterruptController::dyn_ctln(uint32_t v) const {
  if (v >= num_vectors_) return 0;
  const uint32_t w = Word(v);
  return (w & kDynCtlStoredMask) | ((w & kWordArmed) ? kDynCtlIntena : 0);
}

void InterruptController::WriteItrn(uint32_t index, uint32_t v, uint32_t value) {
  if (index < kNumItrIndexes && v < kNumItrnVectors) {
    itrn_[kNumItrnVectors * index + v] = value & kItrIntervalMask;
  }
}

uint32_t InterruptController::itrn(uint32_t index, uint32_t v) const {
  if (index < kNumItrIndexes && v < kNumItrnVectors && v < num_vectors_) {
    return itrn_[kNumItrnVectors * index + v] & kItrIntervalMask;
  }
  return 0;
}

void InterruptController::RaiseAdminQueue() {
  icr01_ |= kIcr0AdminQ;
  misc_event_pending_ = true;
  EvaluateMisc();
}

bool InterruptController::RaiseQueueVector(uint32_t msix_vector) {
  if (msix_vector == 0 || msix_vector > num_vectors_) {
    ++bad_vector_;
    return false;
  }
  volatile uint32_t& w = Word(msix_vector - 1);
  const uint32_t old = w;
  if (!(old & kWordArmed) || sink_ == nullptr) {
    if (!(old & kWordPending)) w = old | kWordPending;
    return false;
  }
  Fire(msix_vector);  // before the store that disarms (see the header)
  w = old & ~(kWordArmed | kWordPending);
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
  if (msix_vector > num_vectors_) return s;
  const uint32_t w = Word(msix_vector - 1);
  s.armed = (w & kWordArmed) != 0;
  s.pending = (w & kWordPending) != 0;
  s.wb_on_itr = (w & kDynCtlWbOnItr) != 0;
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
  for (uint32_t v = 0; v < kMaxQueueVectors; ++v) Word(v) = 0;
  for (uint32_t i = 0; i < kNumItrIndexes * kNumItrnVectors; ++i) itrn_[i] = 0;
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
  out->mutable_itr01()->Add(itr01_.begin(), itr01_.end());
  // Positional; vectors after the last one with any state are left out (they
  // restore as zero), so the record grows with the vectors in use.
  uint32_t used = 0;
  for (uint32_t v = 0; v < num_vectors_; ++v) {
    if (Word(v) != 0) used = v + 1;
  }
  for (uint32_t v = 0; v < used; ++v) {
    const uint32_t w = Word(v);
    auto* qv = out->add_queue_vector();
    qv->set_dyn_ctl(w & kDynCtlStoredMask);
    qv->set_armed((w & kWordArmed) != 0);
    qv->set_pending((w & kWordPending) != 0);
    qv->set_wb_on_itr((w & kDynCtlWbOnItr) != 0);
  }
  out->mutable_itrn()->Reserve(kNumItrIndexes * kNumItrnVectors);  // one allocation
  for (uint32_t i = 0; i < kNumItrIndexes * kNumItrnVectors; ++i) out->add_itrn(itrn_[i]);
}

void InterruptController::RestoreFrom(const AvfInterruptState& in, bool keep_live_queue_vectors) {
  std::array<uint32_t, kNumItrIndexes * kNumItrnVectors> itrn{};
  std::array<uint32_t, kMaxQueueVectors> words{};
  if (keep_live_queue_vectors) {
    for (uint32_t i = 0; i < itrn.size(); ++i) itrn[i] = itrn_[i];
    for (uint32_t v = 0; v < kMaxQueueVectors; ++v) words[v] = Word(v);
  }
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
  if (keep_live_queue_vectors) {
    for (uint32_t i = 0; i < itrn.size(); ++i) itrn_[i] = itrn[i];
    for (uint32_t v = 0; v < kMaxQueueVectors; ++v) Word(v) = v < num_vectors_ ? words[v] : 0;
    return;
  }
  for (int i = 0; i < in.queue_vector_size() && i < int(num_vectors_); ++i) {
    const auto& qv = in.queue_vector(i);
    // wb_on_itr is bit 30 of the stored bits; the flag wins for old records.
    uint32_t w = (qv.dyn_ctl() & kDynCtlStoredMask & ~kDynCtlWbOnItr) |
                 (qv.wb_on_itr() ? kDynCtlWbOnItr : 0);
    if (qv.armed()) w |= kWordArmed;
    if (qv.pending()) w |= kWordPending;
    Word(i) = w;
  }
  for (int i = 0; i < in.itrn_size() && i < int(kNumItrIndexes * kNumItrnVectors); ++i) {
    itrn_[i] = in.itrn(i) & kItrIntervalMask;
  }
}

}  // namespace emud::avf
