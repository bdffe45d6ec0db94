// The AVF interrupt block: the misc vector (MSI-X 0: VFINT_ICR01,
// VFINT_ICR0_ENA1, VFINT_DYN_CTL01, VFINT_ITR01) and the queue vectors
// (MSI-X 1..num_queue_vectors, at most 64: VFINT_DYN_CTLN1, and VFINT_ITRN1
// for the first 16).
//
// Model (what iavf and DPDK rely on):
//  * A vector is "armed" by a DYN_CTL write with INTENA=1 (unless INTENA_MSK
//    is set, which leaves the armed state alone). Firing disarms it
//    (auto-mask); the driver re-arms by writing INTENA=1 again.
//  * A cause raised while the vector is disarmed is remembered as pending and
//    fires as soon as the vector is re-armed. CLEARPBA drops it, except in a
//    write that arms the vector: DPDK's rx-interrupt mode re-arms with
//    INTENA|CLEARPBA (iavf_ethdev.c:iavf_dev_rx_queue_intr_enable) after its
//    last empty poll, and a packet written back in between must still wake
//    it (a spurious wakeup costs one empty poll; Linux's re-arm,
//    iavf_txrx.c:iavf_update_enable_itr, carries no CLEARPBA).
//  * SWINT_TRIG raises the vector (fires now if armed after the same write).
//  * ITR_INDX 0..2 with INTERVAL updates that ITR register; 3 = no update.
//  * WB_ON_ITR is recorded per vector for the data path (a software device
//    writes descriptors back immediately, which satisfies it).
//  * Crash consistency of the queue vectors (ARCHITECTURE.md, "Doorbells:
//    self-durable writes"): each vector's state is one word, changed by one
//    store, and a fire's eventfd write comes BEFORE the store that disarms
//    the vector. A process killed anywhere leaves either the state before
//    the change (re-applying the DYN_CTLN write, or the successor's "fire
//    every armed vector", fires it: a duplicate at most) or after it (the
//    interrupt went out). Never "disarmed but not fired".
//  * ICR01 latches causes (ADMINQ) regardless of masking and is read-to-clear.
//    Vector 0 is edge-triggered by events, not by the latched level: it
//    fires when DYN_CTL01 is armed and either a message was posted since it
//    last fired (or since ICR01 was last read) with ICR0_ENA1.ADMINQ set, or
//    SWINT_TRIG is pending. DPDK's handler (iavf_ethdev.c:
//    iavf_dev_interrupt_handler) never reads ICR01 and re-enables with
//    INTENA|CLEARPBA: with a level model that re-enable would fire forever.
//    CLEARPBA does not drop a posted message (one DPDK posts while its
//    handler runs still fires after the re-enable; a spurious fire costs an
//    empty drain, a lost one a 2 s command timeout). Linux (iavf_main.c:
//    iavf_msix_aq) reads ICR01 before draining, so it gets one interrupt per
//    message its drain could not have seen.
//
// Not thread-safe: owned by one avf::Device, used from its event loop.
#ifndef EMUD_AVF_INTERRUPTS_H_
#define EMUD_AVF_INTERRUPTS_H_

#include <array>
#include <cstdint>

#include "avf/regs.h"

namespace emud::vfio_user {
class InterruptSink;
}

namespace emud::avf {

class AvfInterruptState;  // proto, avf/avf_state.proto

// A snapshot of one vector, for the data path's coalescing decisions.
struct VectorState {
  bool armed = false;      // INTENA set and not auto-masked since
  bool pending = false;    // a cause is waiting for re-arm
  bool wb_on_itr = false;  // last DYN_CTL write asked for write-back on ITR
  std::array<uint32_t, kNumItrIndexes> itr{};  // intervals, 2 us units
};

class InterruptController {
 public:
  // `itrn` points at 48 dwords holding VFINT_ITRN1(i, v) at [16 * i + v]
  // (the device's register page, possibly a shared doorbell mapping);
  // `vectors`, if not null, at kVectorWords dwords holding each queue
  // vector's whole state (QueueVectorWord of vector v at VectorWordIndex(v);
  // the device keeps them in its doorbell memfd so that DYN_CTLN writes are
  // self-durable), else the controller keeps them itself. Both must outlive
  // the controller. `num_queue_vectors` (1..kMaxQueueVectors): MSI-X vectors
  // 1..num_queue_vectors exist.
  explicit InterruptController(volatile uint32_t* itrn, volatile uint32_t* vectors = nullptr,
                               uint32_t num_queue_vectors = kNumItrnVectors);

  // Where the word of queue vector v lives among the vector dwords: the
  // first 16 at 0..15 (the layout predecessors share), then, past the dword
  // 16 that the device uses as the page's validity mark, 17.. for 16..63.
  static constexpr uint32_t VectorWordIndex(uint32_t v) { return v < 16 ? v : v + 1; }
  static constexpr uint32_t kVectorWords = kMaxQueueVectors + 1;
  uint32_t num_queue_vectors() const { return num_vectors_; }

  InterruptController(const InterruptController&) = delete;
  InterruptController& operator=(const InterruptController&) = delete;

  // Where vectors are signalled; nullptr while no client is attached (causes
  // then stay pending and fire on the next re-arm after attach).
  void set_sink(vfio_user::InterruptSink* sink) { sink_ = sink; }

  // --- register accesses (BAR0) ---
  // Returns and clears the latched causes; the caller has now seen every
  // message posted so far (no fire for them on re-arm).
  uint32_t ReadIcr01();
  uint32_t PeekIcr01() const { return icr01_; }
  void WriteIcr0Ena1(uint32_t value);
  uint32_t icr0_ena1() const { return icr0_ena1_; }
  void WriteDynCtl01(uint32_t value);
  uint32_t dyn_ctl01() const;
  void WriteStatCtl01(uint32_t value) { stat_ctl01_ = value; }
  uint32_t stat_ctl01() const { return stat_ctl01_; }
  void WriteItr01(uint32_t index, uint32_t value);  // index < 3
  uint32_t itr01(uint32_t index) const;
  // `v` is the DYN_CTLN1 index (MSI-X vector v + 1), < num_queue_vectors().
  void WriteDynCtln(uint32_t v, uint32_t value);
  uint32_t dyn_ctln(uint32_t v) const;
  void WriteItrn(uint32_t index, uint32_t v, uint32_t value);
  uint32_t itrn(uint32_t index, uint32_t v) const;

  // --- causes ---
  // A message was posted on the ARQ: latch ICR01.ADMINQ, note the event and
  // fire vector 0 if enabled and armed (else it fires on the next arming).
  void RaiseAdminQueue();
  // A queue cause for MSI-X vector `msix_vector` (1..num_queue_vectors()).
  // Returns true if the vector fired now, false if it was left pending (or
  // the vector number is out of range, counted).
  bool RaiseQueueVector(uint32_t msix_vector);

  // State of MSI-X vector `msix_vector` (0 = misc).
  VectorState state(uint32_t msix_vector) const;

  // VF reset / FLR: every vector disabled and disarmed, causes and pending
  // bits cleared, ITRs zeroed.
  void Reset();

  // Counters.
  uint64_t fired() const { return fired_; }
  uint64_t bad_vector() const { return bad_vector_; }

  void SaveTo(AvfInterruptState* out) const;
  // `keep_live_queue_vectors`: the ITRN and queue-vector words already hold
  // newer state than `in` (an adopted doorbell memfd): only the misc vector
  // is restored from `in`.
  void RestoreFrom(const AvfInterruptState& in, bool keep_live_queue_vectors = false);

  // A queue vector's whole state in one dword, so that every change is one
  // aligned store into the (tmpfs) word a successor finds: the stored
  // DYN_CTLN bits (ITR_INDX, INTERVAL, SW_ITR_INDX*, WB_ON_ITR) plus
  // "armed" in the INTENA bit and "pending" in the CLEARPBA bit, which a
  // DYN_CTLN read never returns as such.
  static constexpr uint32_t kWordArmed = kDynCtlIntena;
  static constexpr uint32_t kWordPending = kDynCtlClearPba;

 private:
  void EvaluateMisc();
  bool MiscPending() const;
  void Fire(uint32_t msix_vector);

  vfio_user::InterruptSink* sink_ = nullptr;
  volatile uint32_t* itrn_;
  uint32_t icr01_ = 0;
  uint32_t icr0_ena1_ = 0;
  uint32_t dyn_ctl01_ = 0;
  bool misc_armed_ = false;
  bool misc_swint_pending_ = false;
  bool misc_event_pending_ = false;  // ARQ message since the last fire / ICR01 read
  uint32_t stat_ctl01_ = 0;
  std::array<uint32_t, kNumItrIndexes> itr01_{};
  volatile uint32_t& Word(uint32_t v) const { return vectors_[VectorWordIndex(v)]; }

  std::array<uint32_t, kVectorWords> own_vectors_{};
  volatile uint32_t* vectors_;  // QueueVectorWord per DYN_CTLN index (Word)
  uint32_t num_vectors_;
  uint64_t fired_ = 0;
  uint64_t bad_vector_ = 0;
};

}  // namespace emud::avf

#endif  // EMUD_AVF_INTERRUPTS_H_
