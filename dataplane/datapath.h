// DataPath: the data path of one AVF device. It implements the AVF model's
// DataPathHooks (queue start/stop, doorbells, stats, filters, DMA unmap),
// runs the TX/RX engines over the device's queue contexts and moves frames
// to and from a Backend, raising queue interrupts through the model.
//
// Single-threaded: everything runs on the worker's event loop, the same one
// that carries the vfio-user session.
#ifndef EMUD_DATAPLANE_DATAPATH_H_
#define EMUD_DATAPLANE_DATAPATH_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "avf/device.h"
#include "base/poison_guard.h"
#include "dataplane/backend.h"
#include "dataplane/mac_filter.h"
#include "dataplane/queue_state.h"
#include "dataplane/queues.h"
#include "proto/worker_status.pb.h"

namespace emud::dataplane {

struct DataPathOptions {
  // Packets per queue per PollOnce (fairness between queues).
  uint32_t tx_budget = 256;
  // Frames taken from the backend per PollOnce.
  uint32_t rx_budget = 256;
  // Verify IPv4/TCP/UDP checksums of received frames and report them in the
  // descriptor (L3L4P, IPE, L4E) so the guest need not (NETIF_F_RXCSUM).
  bool rx_checksum = true;
  // Poison-ring quarantine (optional, not owned): each TX burst runs inside
  // PoisonGuard::kTxQueue keyed by (queue, head). A ring position that
  // PoisonGuard::kQuarantineAfter workers died processing stops that queue
  // (TxQueue::Quarantine: counted in its errors, logged, published in
  // WorkerStatus.quarantined) while the device and its other queues go on;
  // the guest's next ENABLE_QUEUES (or a reset) starts it again.
  PoisonGuard* poison_guard = nullptr;
};

class DataPath : public avf::DataPathHooks, public FrameSink {
 public:
  // `device`, `backend` and `state` must outlive the DataPath. The DataPath
  // installs itself as the device's hooks and the backend's sink.
  DataPath(avf::Device* device, Backend* backend, QueueStateFile* state,
           DataPathOptions options = {});
  ~DataPath() override;

  // One round: TX of every running queue with new descriptors (all of them
  // in mapped-doorbell mode, the rung ones in trapped mode), then frames from
  // the backend, then interrupts for queues with write-backs. Returns true if
  // any descriptor or frame moved (the caller keeps polling while true).
  bool PollOnce();
  // True if some queue may have work that PollOnce would find without an
  // event (mapped doorbells with running queues, or frames held back by the
  // backend). The caller must not block indefinitely while this is true.
  bool NeedsPolling() const;
  // Nanoseconds until an interrupt held back by its ITR interval is due, or
  // -1 if none is waiting. The caller must not sleep longer than this.
  int64_t NextInterruptDeadlineNs(int64_t now_ns) const;

  // After a worker restart (device and queue state restored, DMA attached):
  // completes the last TX burst's write-backs, reconciles RX heads with the
  // rings (queue_state.h) and fires each running queue's vector once.
  void Recover();

  // Per-queue counters for the WorkerStatus record.
  void FillCounters(internal::WorkerStatus* status) const;
  // TX queues this worker stopped as poisoned (DataPathOptions::poison_guard).
  uint64_t tx_quarantines() const { return tx_quarantines_; }
  // Device-wide data-path counters (persisted in the queue-state file, so
  // cumulative across workers).
  const DataPathCounters& counters() const { return *counters_; }
  uint64_t total_packets() const;

  // ---- avf::DataPathHooks ----
  void OnTxDoorbell(uint32_t queue) override;
  void OnRxDoorbell(uint32_t queue) override;
  void OnQueuesEnabled(uint32_t rx_mask, uint32_t tx_mask) override;
  void OnQueuesDisabled(uint32_t rx_mask, uint32_t tx_mask) override;
  void GetStats(avf::vc::EthStats* stats) override;
  void OnFiltersChanged() override;
  void OnDmaUnmap(uint64_t iova, uint64_t size) override;

  // ---- FrameSink (frames from the backend) ----
  bool Deliver(uint16_t queue, FrameView frame) override;

  const MacFilter& filter() const { return filter_; }
  uint64_t filtered() const { return counters_->rx_filtered.load(std::memory_order_relaxed); }
  uint64_t irqs_raised() const { return irqs_raised_; }
  uint64_t irqs_deferred() const { return irqs_deferred_; }

 private:
  avf::Device* dev_;
  Backend* backend_;
  QueueStateFile* state_;
  DataPathOptions options_;
  uint64_t tx_quarantines_ = 0;
  std::vector<std::unique_ptr<TxQueue>> tx_;
  std::vector<std::unique_ptr<RxQueue>> rx_;
  uint32_t tx_running_ = 0;  // bit q
  uint32_t rx_running_ = 0;
  uint32_t tx_kicked_ = 0;   // trapped doorbells rung since the last round
  bool rx_kicked_ = false;
  uint32_t tx_irq_ = 0;      // queues with write-backs this round
  uint32_t rx_irq_ = 0;
  // RX tails read once per round (bit q valid), not once per frame: with
  // mapped doorbells the tail sits on a cache line the guest's CPU keeps
  // writing, and a load per frame cost about half the worker's cycles at
  // 1518 bytes. A stale tail only hides buffers posted since it was read
  // (tails only move forward within a round); kNoBuffers re-reads it.
  uint32_t rx_tail_cache_[kMaxQueues] = {};
  uint32_t rx_tail_valid_ = 0;
  uint32_t RxTail(uint32_t q, bool refresh);
  // ITR coalescing per MSI-X vector (index = vector number): a vector does
  // not fire again before its ITR interval since the last firing elapsed;
  // a cause arriving earlier is deferred (never dropped) to the deadline.
  static constexpr uint32_t kVectors = 17;
  int64_t next_fire_ns_[kVectors] = {};
  int64_t itr_ns_[kVectors] = {};
  uint32_t deferred_ = 0;  // bit v: a cause waits for vector v's deadline
  uint64_t irqs_raised_ = 0, irqs_deferred_ = 0;
  void SignalVector(uint32_t v, uint32_t itr_index, int64_t now);
  void FlushDeferred(int64_t now);
  MacFilter filter_;
  // Device-wide counters in the queue state file (a successor continues
  // them): frames refused by the filter, RX frames counted in the RX queues
  // (delivered or dropped) by class of destination MAC (unicast is the
  // rest), malformed TX packets.
  DataPathCounters* counters_;
  static void Bump(std::atomic<uint64_t>& c) {
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  void CountClass(FrameView frame) {
    if (frame.size() < 6 || !(frame[0] & 1)) return;
    const bool bc = frame[0] == 0xff && frame[1] == 0xff && frame[2] == 0xff &&
                    frame[3] == 0xff && frame[4] == 0xff && frame[5] == 0xff;
    Bump(bc ? counters_->rx_broadcast : counters_->rx_multicast);
  }
  bool loopback_;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_DATAPATH_H_
