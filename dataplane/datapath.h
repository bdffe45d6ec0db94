// DataPath: the data path of one AVF device. It implements the AVF model's
// DataPathHooks (queue start/stop, doorbells, stats, filters, DMA unmap),
// runs the TX/RX engines over the device's queue contexts and moves frames
// to and from a Backend, raising queue interrupts through the model.
//
// Data-path threads (DataPathOptions::threads = N, default 1): queue pair q
// is served by lane q % N, and so is backend queue k (k % N). Lane 0 is the
// caller's thread (the worker's event loop, which also carries the
// vfio-user session and every control request): PollOnce() runs lane 0.
// Lanes 1..N-1 are threads of their own (StartThreads), each with its own
// adaptive poller and epoll (its backend queues' fds and a wake eventfd).
//
// Ownership: a queue pair's engines, hot state and counters are written by
// its lane only; device-wide counters (filtered, multicast, broadcast,
// malformed) are atomic adds. Interrupts are raised by lane 0 only (the
// AVF interrupt block is single-threaded): other lanes post their queues'
// causes (atomic bits) and wake lane 0, which applies ITR coalescing and
// raises the vectors. A frame is delivered by the lane that read it, to an
// RX queue of that lane (Deliver).
//
// Control: the device model, the DMA table, queue contexts, RSS and filters
// change only on the control thread (lane 0's), inside a PauseLanes() /
// ResumeLanes() bracket (PauseGuard): every lane finishes its current round
// and parks before the bracket is entered, and none runs while it is held.
// The worker brackets each dispatch of vfio-user events; the hooks below
// bracket themselves too (nesting is counted), so a DMA_UNMAP, a queue
// stop, a reset or a filter change never races a lane's copy.
#ifndef EMUD_DATAPLANE_DATAPATH_H_
#define EMUD_DATAPLANE_DATAPATH_H_

#include <atomic>
#include <bitset>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "base/unique_fd.h"

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
  // Lanes (data-path threads), lane 0 being the caller's: 1..kMaxQueues,
  // clamped to that. Queue pair q -> lane q % threads (all of a device's
  // queue pairs, up to 64, are served).
  uint32_t threads = 1;
  // Poison guards of lanes 1.. (index t - 1; a missing one: that lane's
  // bursts are not bracketed). Each lane brackets its bursts in its own
  // guard page, so a worker that dies charges every burst in flight.
  std::vector<PoisonGuard*> lane_poison_guards;
  // Monotonic clock in ns for ITR coalescing; nullptr: CLOCK_MONOTONIC
  // (AdaptivePoller::NowNs). A seam so tests decide when an interval has
  // elapsed instead of racing the machine's load.
  int64_t (*now_ns)() = nullptr;
};

class DataPath : public avf::DataPathHooks, public FrameSink {
 public:
  // `device`, `backend` and `state` must outlive the DataPath. The DataPath
  // installs itself as the device's hooks and the backend's sink.
  DataPath(avf::Device* device, Backend* backend, QueueStateFile* state,
           DataPathOptions options = {});
  // Stops the lanes' threads first.
  ~DataPath() override;

  // Lane 0's round: TX of its running queues with new descriptors (all of
  // them in mapped-doorbell mode, the rung ones in trapped mode), then frames
  // from its backend queues, then interrupts for every lane's queues with
  // write-backs. Returns true if any descriptor or frame moved (the caller
  // keeps polling while true).
  bool PollOnce();
  // True if some lane-0 queue may have work that PollOnce would find without
  // an event (mapped doorbells with running queues, frames held back by the
  // backend, interrupts posted by other lanes). The caller must not block
  // indefinitely while this is true.
  bool NeedsPolling() const;

  // Lanes (1 = no thread besides the caller's).
  uint32_t threads() const { return uint32_t(lanes_.size()); }
  // The lane serving queue pair / backend queue q.
  uint32_t LaneOf(uint32_t q) const { return q % lanes_.size(); }
  // Starts lanes 1..N-1 (no-op with one lane or when running). Call after
  // Recover(), from the control thread. INTERNAL if an epoll/eventfd fails.
  absl::Status StartThreads();
  // Stops and joins them (no-op if not running).
  void StopThreads();
  bool threads_running() const { return running_; }
  // Readable when another lane posted interrupts for PollOnce to raise (-1
  // with one lane). The caller's wait includes it and drains it (read).
  int wake_fd() const { return main_wake_.get(); }

  // Control thread only: parks every other lane (each finishes its current
  // round first) / lets them run again. Nested brackets count.
  void PauseLanes();
  void ResumeLanes();
  class PauseGuard {
   public:
    explicit PauseGuard(DataPath* dp) : dp_(dp) { dp_->PauseLanes(); }
    ~PauseGuard() { dp_->ResumeLanes(); }
    PauseGuard(const PauseGuard&) = delete;
    PauseGuard& operator=(const PauseGuard&) = delete;

   private:
    DataPath* dp_;
  };
  // Rounds lane t ran (tests: a lane is alive / parked).
  uint64_t lane_rounds(uint32_t t) const {
    return lanes_[t]->rounds.load(std::memory_order_relaxed);
  }
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
  uint64_t tx_quarantines() const { return tx_quarantines_.load(std::memory_order_relaxed); }
  // Device-wide data-path counters (persisted in the queue-state file, so
  // cumulative across workers).
  const DataPathCounters& counters() const { return *counters_; }
  uint64_t total_packets() const;

  // ---- avf::DataPathHooks ----
  void OnTxDoorbell(uint32_t queue) override;
  void OnRxDoorbell(uint32_t queue) override;
  void OnQueuesEnabled(avf::QueueMask rx_mask, avf::QueueMask tx_mask) override;
  void OnQueuesDisabled(avf::QueueMask rx_mask, avf::QueueMask tx_mask) override;
  void GetStats(avf::vc::EthStats* stats) override;
  void OnFiltersChanged() override;
  void OnDmaUnmap(uint64_t iova, uint64_t size) override;

  // ---- FrameSink (frames from the backend) ----
  bool Deliver(uint16_t queue, FrameView frame) override;
  void EndBurst(uint16_t queue) override;

  const MacFilter& filter() const { return filter_; }
  uint64_t filtered() const { return counters_->rx_filtered.load(std::memory_order_relaxed); }
  uint64_t irqs_raised() const { return irqs_raised_; }
  uint64_t irqs_deferred() const { return irqs_deferred_; }

 private:
  // One lane's state: written by its own thread, except `kicked` (set by the
  // control thread's doorbell hooks).
  struct Lane {
    uint32_t id = 0;
    uint64_t queues = 0;          // bit q: queue pairs served here
    uint32_t backend_queues = 0;  // bit k: backend queues polled here
    PoisonGuard* guard = nullptr;
    std::atomic<uint64_t> kicked{0};  // trapped TX doorbells since the last round
    uint64_t tx_irq = 0;              // queues with write-backs this round
    uint64_t rx_irq = 0;
    // RX queues holding a descriptor write-back (RxQueue::Deliver's
    // may_hold), written at the end of the backend's burst (EndBurst) and,
    // as a backstop, at the end of the round.
    uint64_t rx_held = 0;
    // RX tails read once per round (bit q valid), not once per frame: with
    // mapped doorbells the tail sits on a cache line the guest's CPU keeps
    // writing, and a load per frame cost about half the worker's cycles at
    // 1518 bytes. A stale tail only hides buffers posted since it was read
    // (tails only move forward within a round); kNoBuffers re-reads it.
    uint32_t rx_tail_cache[kMaxQueues] = {};
    uint64_t rx_tail_valid = 0;
    // A frame with its FCS appended, for RX queues that keep the CRC.
    std::vector<uint8_t> fcs_frame;
    std::atomic<uint64_t> rounds{0};
    // Lanes 1..: the thread, its epoll and wake eventfd, and the pause
    // handshake flag (true while a round runs).
    std::thread thread;
    UniqueFd epoll, wake;
    std::atomic<bool> active{false};
    uint32_t watched = 0;  // backend queues whose fd is in `epoll`
    std::vector<uint8_t> strip_buf;  // a frame without its stripped VLAN tag
  };
  __attribute__((noinline)) bool VlanRx(Lane& lane, FrameView* frame, uint32_t* l2tag1);
  bool Round(Lane& lane);
  void FlushHeld(Lane& lane);
  void LaneMain(Lane& lane);
  void Wake(Lane& lane);
  void PostInterrupts(Lane& lane);
  bool LaneNeedsPolling(const Lane& lane) const;
  // Which backend queues the host should feed (Backend::SetActiveQueues):
  // with RSS on, those of running RX queues; with RSS off, queue 0 only
  // (a real NIC without RSS receives everything on queue 0).
  void UpdateBackendQueues();

  avf::Device* dev_;
  Backend* backend_;
  QueueStateFile* state_;
  DataPathOptions options_;
  std::atomic<uint64_t> tx_quarantines_{0};
  std::vector<std::unique_ptr<TxQueue>> tx_;
  std::vector<std::unique_ptr<RxQueue>> rx_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  // Changed only while the other lanes are parked (control thread).
  uint64_t tx_running_ = 0;  // bit q
  uint64_t rx_running_ = 0;
  // RX queues configured with crc_disable (VIRTCHNL_VF_OFFLOAD_CRC): frames
  // are written with their Ethernet FCS, as the NIC leaves it in place.
  uint64_t rx_keep_crc_ = 0;
  uint32_t active_backend_ = 0;  // last SetActiveQueues mask (0: not yet)
  // Interrupt causes posted by lanes 1.. for lane 0 to raise.
  std::atomic<uint64_t> posted_tx_irq_{0}, posted_rx_irq_{0};
  UniqueFd main_wake_;
  // Pause handshake (lanes_.size() > 1).
  bool running_ = false;
  int pause_depth_ = 0;  // control thread only
  std::atomic<bool> pause_{false};
  std::atomic<bool> stop_{false};
  std::mutex park_mu_;
  std::condition_variable park_cv_;
  uint32_t RxTail(Lane& lane, uint32_t q, bool refresh);
  // ITR coalescing per MSI-X vector (index = vector number): a vector does
  // not fire again before its ITR interval since the last firing elapsed;
  // a cause arriving earlier is deferred (never dropped) to the deadline.
  static constexpr uint32_t kVectors = avf::kMaxMsixVectors;  // 0 (misc) unused
  int64_t next_fire_ns_[kVectors] = {};
  int64_t itr_ns_[kVectors] = {};
  uint64_t deferred_ = 0;  // bit v - 1: a cause waits for vector v's deadline
  uint64_t irqs_raised_ = 0, irqs_deferred_ = 0;
  void SignalVector(uint32_t v, uint32_t itr_index, int64_t now);
  void FlushDeferred(int64_t now);
  MacFilter filter_;  // read by every lane, rebuilt while they are parked
  // VLAN receive state, likewise (OnFiltersChanged): filter 802.1Q frames by
  // VLAN ID (VLAN 0 always passes), strip the tag into L2TAG1.
  bool vlan_filter_ = false;
  bool vlan_strip_ = false;
  std::bitset<4096> vlans_;
  // Device-wide counters in the queue state file (a successor continues
  // them): frames refused by the filter, RX frames counted in the RX queues
  // (delivered or dropped) by class of destination MAC (unicast is the
  // rest), malformed TX packets.
  DataPathCounters* counters_;
  static void Bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }
  void CountClass(FrameView frame) {
    if (frame.size() < 6 || !(frame[0] & 1)) return;
    const bool bc = frame[0] == 0xff && frame[1] == 0xff && frame[2] == 0xff &&
                    frame[3] == 0xff && frame[4] == 0xff && frame[5] == 0xff;
    Bump(bc ? counters_->rx_broadcast : counters_->rx_multicast);
  }
  bool loopback_;
  uint32_t nq_;  // queue pairs served: the state file's (>= the device's)
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_DATAPATH_H_
