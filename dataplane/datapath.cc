#include "dataplane/datapath.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/event_loop.h"
#include "base/log.h"
#include "dataplane/adaptive_poll.h"
#include "dataplane/offload.h"
#include "dataplane/rss.h"

namespace emud::dataplane {

DataPath::DataPath(avf::Device* device, Backend* backend, QueueStateFile* state,
                   DataPathOptions options)
    : dev_(device),
      backend_(backend),
      state_(state),
      options_(options),
      counters_(state->device()),
      nq_(std::min(state->num_queues(), kMaxQueues)) {
  if (options_.now_ns == nullptr) options_.now_ns = &AdaptivePoller::NowNs;
  for (uint32_t q = 0; q < nq_; ++q) {
    tx_.push_back(std::make_unique<TxQueue>(uint16_t(q), state_->tx(q)));
    tx_.back()->CountMalformedInto(&state_->device()->tx_malformed);
    tx_.back()->CountTunnelMalformedInto(&state_->device()->tx_tunnel_malformed);
    rx_.push_back(std::make_unique<RxQueue>(uint16_t(q), state_->rx(q)));
  }
  loopback_ = backend_->spec() == "loopback";
  const uint32_t n = std::clamp<uint32_t>(options_.threads, 1, nq_);
  for (uint32_t t = 0; t < n; ++t) {
    auto lane = std::make_unique<Lane>();
    lane->id = t;
    lane->guard = t == 0 ? options_.poison_guard
                         : (t - 1 < options_.lane_poison_guards.size()
                                ? options_.lane_poison_guards[t - 1]
                                : nullptr);
    lanes_.push_back(std::move(lane));
  }
  for (uint32_t q = 0; q < nq_; ++q) lanes_[q % n]->queues |= uint64_t{1} << q;
  for (uint32_t k = 0; k < backend_->num_queues() && k < 32; ++k) {
    lanes_[k % n]->backend_queues |= 1u << k;
  }
  if (n > 1) main_wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  dev_->set_hooks(this);
  backend_->set_sink(this);
  OnFiltersChanged();
}

DataPath::~DataPath() {
  StopThreads();
  dev_->set_hooks(nullptr);
  backend_->set_sink(nullptr);
}

// ---------------------------------------------------------------- lanes

absl::Status DataPath::StartThreads() {
  if (running_ || lanes_.size() == 1) return absl::OkStatus();
  if (!main_wake_.valid()) return absl::InternalError("eventfd for the data-path lanes");
  for (size_t t = 1; t < lanes_.size(); ++t) {
    Lane& l = *lanes_[t];
    l.epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
    l.wake.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!l.epoll.valid() || !l.wake.valid()) {
      return absl::InternalError(absl::StrCat("data-path lane ", t, ": ", std::strerror(errno)));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = UINT32_MAX;
    if (::epoll_ctl(l.epoll.get(), EPOLL_CTL_ADD, l.wake.get(), &ev) != 0) {
      return absl::InternalError(absl::StrCat("data-path lane ", t, ": ", std::strerror(errno)));
    }
    l.watched = 0;
    for (uint32_t m = l.backend_queues; m != 0; m &= m - 1) {
      const uint32_t k = __builtin_ctz(m);
      const int fd = backend_->event_fd(k);
      if (fd < 0) continue;
      ev.data.u32 = k;
      if (::epoll_ctl(l.epoll.get(), EPOLL_CTL_ADD, fd, &ev) == 0) l.watched |= 1u << k;
    }
  }
  stop_.store(false);
  pause_.store(pause_depth_ > 0);
  running_ = true;
  for (size_t t = 1; t < lanes_.size(); ++t) {
    Lane* l = lanes_[t].get();
    l->thread = std::thread([this, l] { LaneMain(*l); });
  }
  return absl::OkStatus();
}

void DataPath::StopThreads() {
  if (!running_) return;
  {
    std::lock_guard<std::mutex> lock(park_mu_);
    stop_.store(true);
  }
  park_cv_.notify_all();
  for (size_t t = 1; t < lanes_.size(); ++t) {
    Wake(*lanes_[t]);
    lanes_[t]->thread.join();
  }
  running_ = false;
}

void DataPath::Wake(Lane& l) {
  if (l.id == 0 || !l.wake.valid()) return;
  const uint64_t one = 1;
  (void)!::write(l.wake.get(), &one, sizeof(one));
}

// The handshake (Dekker's, seq_cst on both sides): a lane announces a round
// (active = true) and only then looks at pause_; the control thread raises
// pause_ and only then waits for every lane's active to fall. Either the
// lane sees the pause and parks, or the control thread sees the round and
// waits for its end: never both running.
void DataPath::PauseLanes() {
  if (pause_depth_++ > 0 || !running_) return;
  pause_.store(true, std::memory_order_seq_cst);
  for (size_t t = 1; t < lanes_.size(); ++t) {
    for (int spins = 0; lanes_[t]->active.load(std::memory_order_seq_cst); ++spins) {
      if (spins > 64) std::this_thread::yield();
    }
  }
}

void DataPath::ResumeLanes() {
  if (--pause_depth_ > 0 || !running_) return;
  {
    std::lock_guard<std::mutex> lock(park_mu_);
    pause_.store(false, std::memory_order_seq_cst);
  }
  park_cv_.notify_all();
}

void DataPath::LaneMain(Lane& l) {
  AdaptivePoller poller;
  epoll_event evs[16];
  uint32_t pending_watch = 0;  // held frames: their fds are not watched
  while (!stop_.load(std::memory_order_relaxed)) {
    l.active.store(true, std::memory_order_seq_cst);
    if (pause_.load(std::memory_order_seq_cst)) {
      l.active.store(false, std::memory_order_seq_cst);
      std::unique_lock<std::mutex> lock(park_mu_);
      park_cv_.wait(lock, [this] { return !pause_.load() || stop_.load(); });
      continue;
    }
    const bool work = Round(l);
    // Counted before active falls: once PauseLanes returns, every round
    // that ran is already in `rounds` (the pause test reads it right away).
    l.rounds.fetch_add(1, std::memory_order_relaxed);
    l.active.store(false, std::memory_order_release);
    PostInterrupts(l);
    // A held frame (no RX buffer) keeps its fd readable: stop watching it
    // until it is taken (the RX doorbell's wake or the poll timeout).
    uint32_t held = 0;
    for (uint32_t m = l.watched; m != 0; m &= m - 1) {
      const uint32_t k = __builtin_ctz(m);
      if (backend_->HasPending(k)) held |= 1u << k;
    }
    if (held != pending_watch) {
      for (uint32_t m = held ^ pending_watch; m != 0; m &= m - 1) {
        const uint32_t k = __builtin_ctz(m);
        epoll_event ev{};
        ev.events = (held & (1u << k)) ? 0u : uint32_t{EPOLLIN};
        ev.data.u32 = k;
        (void)::epoll_ctl(l.epoll.get(), EPOLL_CTL_MOD, backend_->event_fd(k), &ev);
      }
      pending_watch = held;
    }
    int64_t t = poller.Next(work, LaneNeedsPolling(l));
    if (t < 0) {
      for (uint32_t m = l.backend_queues; m != 0; m &= m - 1) {
        if (backend_->ArmNotify(__builtin_ctz(m))) t = 0;
      }
    }
    if (l.kicked.load(std::memory_order_relaxed) != 0) t = 0;
    const int n = EpollWaitNs(l.epoll.get(), evs, 16, t < 0 ? 1'000'000'000 : t);
    if (n > 0) poller.NoteActivity();
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.u32 == UINT32_MAX) {
        uint64_t v;
        (void)!::read(l.wake.get(), &v, sizeof(v));
      }
    }
  }
  l.active.store(false);
}

void DataPath::PostInterrupts(Lane& l) {
  if ((l.tx_irq | l.rx_irq) == 0) return;
  const uint64_t prev_tx = posted_tx_irq_.fetch_or(l.tx_irq, std::memory_order_release);
  const uint64_t prev_rx = posted_rx_irq_.fetch_or(l.rx_irq, std::memory_order_release);
  l.tx_irq = l.rx_irq = 0;
  if ((prev_tx | prev_rx) == 0) {
    const uint64_t one = 1;
    (void)!::write(main_wake_.get(), &one, sizeof(one));
  }
}

bool DataPath::LaneNeedsPolling(const Lane& l) const {
  if (dev_->options().mapped_doorbells && ((tx_running_ | rx_running_) & l.queues) != 0) return true;
  if (l.kicked.load(std::memory_order_relaxed) != 0) return true;
  for (uint32_t m = l.backend_queues; m != 0; m &= m - 1) {
    if (backend_->HasPending(__builtin_ctz(m))) return true;
  }
  return false;
}

void DataPath::UpdateBackendQueues() {
  if (backend_->num_queues() <= 1) return;
  // Backend queues are 32 at most (bit k of a 32-bit mask).
  const uint32_t want = (dev_->rss().hena != 0 ? static_cast<uint32_t>(rx_running_) : 0u) | 1u;
  if (want == active_backend_) return;
  backend_->SetActiveQueues(want);
  active_backend_ = want;
}

// ---------------------------------------------------------------- hooks

void DataPath::OnTxDoorbell(uint32_t queue) {
  if (queue >= nq_) return;
  Lane& l = *lanes_[LaneOf(queue)];
  l.kicked.fetch_or(uint64_t{1} << queue, std::memory_order_relaxed);
  Wake(l);
}

void DataPath::OnRxDoorbell(uint32_t queue) {
  // Buffers for a frame a lane holds: that lane polls its backend again.
  if (queue < nq_) Wake(*lanes_[LaneOf(queue)]);
}

void DataPath::OnQueuesEnabled(avf::QueueMask rx_mask, avf::QueueMask tx_mask) {
  PauseGuard pause(this);
  for (auto& l : lanes_) l->rx_tail_valid = 0;
  for (uint32_t q = 0; q < nq_; ++q) {
    const uint64_t bit = uint64_t{1} << q;
    if (tx_mask & bit) {
      const avf::TxQueueContext& c = dev_->tx_queue(q);
      if (tx_[q]->Configure(c.ring_addr, c.ring_len).ok() && tx_[q]->SetEnabled(true).ok()) {
        tx_running_ |= bit;
        lanes_[LaneOf(q)]->kicked.fetch_or(bit, std::memory_order_relaxed);
      }
    }
    if (rx_mask & bit) {
      const avf::RxQueueContext& c = dev_->rx_queue(q);
      rx_[q]->SetDescFormat(RxDescFormatOf(c.rxdid));
      if (rx_[q]->Configure(c.ring_addr, c.ring_len, c.buffer_size, c.max_frame).ok() &&
          rx_[q]->SetEnabled(true).ok()) {
        rx_running_ |= bit;
        rx_keep_crc_ = c.keep_crc ? (rx_keep_crc_ | bit) : (rx_keep_crc_ & ~bit);
      }
    }
  }
  UpdateBackendQueues();
  for (auto& l : lanes_) Wake(*l);
}

void DataPath::OnQueuesDisabled(avf::QueueMask rx_mask, avf::QueueMask tx_mask) {
  PauseGuard pause(this);
  for (auto& l : lanes_) l->rx_tail_valid = 0;
  for (uint32_t q = 0; q < nq_; ++q) {
    const uint64_t bit = uint64_t{1} << q;
    if (tx_mask & bit) {
      (void)tx_[q]->SetEnabled(false);
      tx_running_ &= ~bit;
    }
    if (rx_mask & bit) {
      (void)rx_[q]->SetEnabled(false);
      rx_running_ &= ~bit;
    }
  }
  UpdateBackendQueues();
}

// Hardware counter semantics, which both drivers assume: the per-class RX
// counters count every frame that reached the VF, discarded or not (DPDK's
// iavf_dev_stats_get takes rx_discards out of their sum), byte counters
// include each frame's 4-byte CRC (DPDK subtracts it per received packet
// unless KEEP_CRC), and tx_errors / tx_discards are disjoint (DPDK's oerrors
// is their sum; Linux iavf_virtchnl_completion reports them as tx_errors /
// tx_dropped). TX frames are not classified: tx_unicast counts them all.
void DataPath::GetStats(avf::vc::EthStats* s) {
  PauseGuard pause(this);  // a consistent snapshot across lanes
  constexpr uint64_t kCrc = 4;
  *s = {};
  uint64_t rx_frames = 0, tx_frames = 0, tx_drops = 0;
  for (uint32_t q = 0; q < nq_; ++q) {
    const HotQueue& r = rx_[q]->stats();
    const HotQueue& t = tx_[q]->stats();
    const uint64_t rx_packets = r.packets.load(std::memory_order_relaxed);
    const uint64_t rx_drops = r.drops.load(std::memory_order_relaxed);
    const uint64_t tx_packets = t.packets.load(std::memory_order_relaxed);
    s->rx_bytes += r.bytes.load(std::memory_order_relaxed) + kCrc * rx_packets;
    s->rx_discards += rx_drops;
    rx_frames += rx_packets + rx_drops;
    s->tx_bytes += t.bytes.load(std::memory_order_relaxed) + kCrc * tx_packets;
    tx_frames += tx_packets;
    tx_drops += t.drops.load(std::memory_order_relaxed);

    s->tx_errors += t.errors.load(std::memory_order_relaxed);
  }
  // Multicast/broadcast are classified per frame (delivered or discarded).
  s->rx_multicast = counters_->rx_multicast.load(std::memory_order_relaxed);
  s->rx_broadcast = counters_->rx_broadcast.load(std::memory_order_relaxed);
  s->rx_unicast = rx_frames - std::min(rx_frames, s->rx_multicast + s->rx_broadcast);
  s->tx_unicast = tx_frames;
  const uint64_t tx_malformed = counters_->tx_malformed.load(std::memory_order_relaxed);
  s->tx_discards = tx_drops - std::min(tx_drops, tx_malformed);
}

void DataPath::OnFiltersChanged() {
  PauseGuard pause(this);
  filter_.Clear();
  for (const avf::MacFilterEntry& e : dev_->mac_filters()) filter_.Add(e.addr);
  uint16_t p = dev_->promisc_flags();
  filter_.SetPromisc(p & avf::vc::kPromiscUnicast, p & avf::vc::kPromiscMulticast);
  // VLAN: ice prunes the VF's VSI by VLAN ID once a VLAN offload is
  // negotiated, except in (VLAN) promiscuous mode, which a VF gets with
  // either promiscuous flag (ice_is_vlan_promisc_allowed).
  vlan_filter_ = dev_->vlan_filtering() && p == 0;
  vlan_strip_ = dev_->vlan_strip();
  vlans_ = dev_->vlan_filters();
  for (auto& q : tx_) q->SetVlanInsertion(dev_->vlan_insert_l2tag1(), dev_->vlan_insert_l2tag2());
}

// A frame whose outer ethertype is 802.1Q: the VLAN filter, then stripping
// into `lane`'s buffer. False if the filter refused it (counted).
bool DataPath::VlanRx(Lane& lane, FrameView* frame, uint32_t* l2tag1) {
  const FrameView f = *frame;
  const uint16_t tci = uint16_t(f[14] << 8 | f[15]);
  const uint16_t vid = tci & 0x0FFF;
  if (vlan_filter_ && vid != 0 && !vlans_[vid]) {
    Bump(counters_->rx_vlan_filtered);
    return false;
  }
  if (!vlan_strip_) return true;
  if (lane.strip_buf.size() < f.size()) lane.strip_buf.resize(std::max<size_t>(f.size(), 16384));
  uint8_t* b = lane.strip_buf.data();
  std::memcpy(b, f.data(), 12);
  std::memcpy(b + 12, f.data() + 16, f.size() - 16);
  *frame = FrameView(b, f.size() - 4);
  *l2tag1 = rxd::kL2tag1Present | tci;
  return true;
}

void DataPath::OnDmaUnmap(uint64_t iova, uint64_t size) {
  PauseGuard pause(this);
  for (auto& q : tx_) q->OnDmaUnmap(iova, size);
  for (auto& q : rx_) q->OnDmaUnmap(iova, size);
}

// Runs on the lane serving backend queue / loopback TX queue `queue`, and
// delivers to an RX queue of that lane only (its engines are that lane's).
bool DataPath::Deliver(uint16_t queue, FrameView frame) {
  vfio_user::DmaMemory* dma = dev_->dma();
  if (!filter_.Accept(frame)) {
    Bump(counters_->rx_filtered);
    return true;
  }
  if (rx_running_ == 0 || dma == nullptr) [[unlikely]] {
    // The VF's filter took it but no RX queue runs (or there is no guest
    // memory): dropped, and counted as a VSI counts a frame it had no queue
    // for (rx_discards, in its class).
    rx_[queue % nq_]->CountDrop();
    CountClass(frame);
    return true;
  }
  Lane& lane = *lanes_[LaneOf(queue)];
  uint32_t l2tag1 = 0;
  if (frame.size() >= 18 && frame[12] == 0x81 && frame[13] == 0x00) [[unlikely]] {
    if (!VlanRx(lane, &frame, &l2tag1)) return true;
  }
  const uint64_t running = rx_running_ & lane.queues;
  if (running == 0) {
    // A frame of a TAP queue whose RX queue just stopped (its detach drops
    // the rest): this lane has nowhere to put it.
    rx_[queue % nq_]->CountDrop();
    CountClass(frame);
    return true;
  }
  // RSS (tap/peer: the backend has no flows of its own): hash, then the
  // driver's lookup table; loopback keeps the TX queue. With several lanes a
  // table entry naming another lane's queue is not followed: the frame stays
  // on the queue of the backend queue that carried it (per flow the same
  // choice, so no reordering). Fallback: the lane's lowest running queue.
  uint32_t q = queue;
  std::optional<uint32_t> hash;
  const avf::RssConfig& rss = dev_->rss();
  if (!loopback_ && rss.hena != 0) {
    hash = FrameRssHash(rss.key, frame, rss.hena);
    if (hash) {
      const uint32_t r = rss.lut[*hash % rss.lut.size()];
      if (r < nq_ && (running >> r & 1)) q = r;
    }
  }
  if (q >= nq_ || !(running >> q & 1)) q = __builtin_ctzll(running);
  RxQueue& rx = *rx_[q];
  if (rx_keep_crc_ >> q & 1) [[unlikely]] {
    // KEEP_CRC: the frame as the wire carried it, FCS included (the length
    // in the descriptor counts it; DPDK subtracts its crc_len).
    const uint32_t fcs = EthernetFcs(frame.data(), frame.size());
    lane.fcs_frame.assign(frame.begin(), frame.end());
    for (int i = 0; i < 4; ++i) lane.fcs_frame.push_back(uint8_t(fcs >> (8 * i)));
    frame = FrameView(lane.fcs_frame);
  }
  uint64_t csum_bits = 0;
  if (options_.rx_checksum) {
    csum_bits = rxd::FromRxCsum(CheckRxChecksums(frame));
  }
  // A write-back may be held until the next frame's on this queue or the
  // end of the burst (RxQueue::Deliver: one transfer of a descriptor line
  // from the polling guest's core for two frames).
  RxQueue::DeliverResult res = rx.Deliver(frame, RxTail(lane, q, false), *dma, csum_bits,
                                          hash.has_value(), hash.value_or(0), l2tag1,
                                          /*may_hold=*/true);
  if (res == RxQueue::DeliverResult::kNoBuffers) {
    // Nothing was written: look at the live tail once before giving up.
    const uint32_t cached = lane.rx_tail_cache[q];
    if (RxTail(lane, q, true) != cached) {
      res = rx.Deliver(frame, lane.rx_tail_cache[q], *dma, csum_bits, hash.has_value(),
                       hash.value_or(0), l2tag1, /*may_hold=*/true);
    }
  }
  if (rx.holding()) lane.rx_held |= uint64_t{1} << q;
  switch (res) {
    case RxQueue::DeliverResult::kDelivered:
      lane.rx_irq |= uint64_t{1} << q;
      CountClass(frame);
      return true;
    case RxQueue::DeliverResult::kDropped:
      if (rx.TakeWroteBack()) lane.rx_irq |= uint64_t{1} << q;
      CountClass(frame);  // a discard is counted in its class too (GetStats)
      return true;
    case RxQueue::DeliverResult::kNoBuffers:
      if (loopback_) {  // loopback cannot hold the frame
        rx.CountDrop();
        CountClass(frame);
      }
      return false;
  }
  return true;
}

void DataPath::EndBurst(uint16_t queue) { FlushHeld(*lanes_[LaneOf(queue)]); }

void DataPath::FlushHeld(Lane& lane) {
  for (uint64_t m = lane.rx_held; m != 0; m &= m - 1) rx_[__builtin_ctzll(m)]->FlushHeld();
  lane.rx_held = 0;
}

uint32_t DataPath::RxTail(Lane& lane, uint32_t q, bool refresh) {
  if (refresh || !(lane.rx_tail_valid >> q & 1)) {
    lane.rx_tail_cache[q] = dev_->RxTail(q);
    lane.rx_tail_valid |= uint64_t{1} << q;
  }
  return lane.rx_tail_cache[q];
}

// One round of `lane`: TX of its queues, then its backend queues.
bool DataPath::Round(Lane& lane) {
  vfio_user::DmaMemory* dma = dev_->dma();
  if (dma == nullptr) return false;
  bool work = false;
  lane.rx_tail_valid = 0;  // tails are read afresh each round
  const bool mapped = dev_->options().mapped_doorbells;
  uint64_t kicked = 0;
  if (lane.kicked.load(std::memory_order_relaxed) != 0) {
    kicked = lane.kicked.exchange(0, std::memory_order_acquire);
  }
  uint64_t todo = (mapped ? tx_running_ : (kicked & tx_running_)) & lane.queues;
  uint64_t more = 0;
  PoisonGuard* guard = lane.guard;
  while (todo != 0) {
    uint32_t q = __builtin_ctzll(todo);
    todo &= todo - 1;
    TxQueue& tx = *tx_[q];
    uint32_t tail = dev_->TxTail(q);
    if (tail == tx.head()) continue;
    if (guard != nullptr && guard->Enter(PoisonGuard::kTxQueue, (uint64_t{q} << 32) | tx.head()) >=
                                PoisonGuard::kQuarantineAfter) [[unlikely]] {
      guard->Leave(PoisonGuard::kTxQueue);
      log::Error(absl::StrCat("dataplane: quarantined TX queue ", q, " at descriptor ",
                              tx.head(), ": ", PoisonGuard::kQuarantineAfter,
                              " workers died processing it; the queue stops until the guest "
                              "enables it again"));
      tx.Quarantine();
      tx_quarantines_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    TxQueue::Result r = tx.Process(tail, *dma, *backend_, options_.tx_budget);
    if (guard != nullptr) guard->Leave(PoisonGuard::kTxQueue);
    if (r.packets > 0) work = true;
    if (r.wrote_back) lane.tx_irq |= uint64_t{1} << q;
    if (r.more) more |= uint64_t{1} << q;  // trapped mode: come back without a doorbell
  }
  if (more != 0) lane.kicked.fetch_or(more, std::memory_order_relaxed);
  for (uint32_t m = lane.backend_queues; m != 0; m &= m - 1) {
    const uint32_t k = __builtin_ctz(m);
    if (backend_->event_fd(k) >= 0 || backend_->HasPending(k)) {
      if (backend_->Poll(options_.rx_budget, k) > 0) work = true;
    }
  }
  FlushHeld(lane);  // a backend that did not end its burst
  lane.rx_tail_valid = 0;  // a Deliver outside a round reads the live tail
  return work;
}

bool DataPath::PollOnce() {
  Lane& lane = *lanes_[0];
  bool work = Round(lane);
  if (lanes_.size() > 1) {
    if ((posted_tx_irq_.load(std::memory_order_relaxed) |
         posted_rx_irq_.load(std::memory_order_relaxed)) != 0) {
      lane.tx_irq |= posted_tx_irq_.exchange(0, std::memory_order_acquire);
      lane.rx_irq |= posted_rx_irq_.exchange(0, std::memory_order_acquire);
    }
  }
  UpdateBackendQueues();
  // Interrupts: at most one per vector per round and per ITR interval; the
  // model auto-masks, so a disarmed vector stays pending until the driver
  // re-arms it (no storm, no lost wake-up).
  if ((lane.tx_irq | lane.rx_irq | deferred_) != 0) {
    int64_t now = options_.now_ns();
    for (uint64_t m = lane.tx_irq; m != 0; m &= m - 1) {
      const avf::TxQueueContext& c = dev_->tx_queue(__builtin_ctzll(m));
      SignalVector(c.msix_vector, c.itr_index, now);
    }
    for (uint64_t m = lane.rx_irq; m != 0; m &= m - 1) {
      const avf::RxQueueContext& c = dev_->rx_queue(__builtin_ctzll(m));
      SignalVector(c.msix_vector, c.itr_index, now);
    }
    lane.tx_irq = lane.rx_irq = 0;
    FlushDeferred(now);
  }
  return work;
}

void DataPath::SignalVector(uint32_t v, uint32_t itr_index, int64_t now) {
  if (v == 0 || v >= kVectors) return;  // unmapped queue: no interrupt
  const uint64_t bit = uint64_t{1} << (v - 1);
  if (now < next_fire_ns_[v]) {
    if (!(deferred_ & bit)) ++irqs_deferred_;
    deferred_ |= bit;
    return;
  }
  deferred_ &= ~bit;
  dev_->RaiseVector(v);
  ++irqs_raised_;
  avf::VectorState st = dev_->vector_state(v);
  uint32_t itr = itr_index < avf::kNumItrIndexes ? st.itr[itr_index] : 0;
  itr_ns_[v] = int64_t(itr) * 2000;  // ITR unit: 2 us
  next_fire_ns_[v] = now + itr_ns_[v];
}

void DataPath::FlushDeferred(int64_t now) {
  for (uint64_t m = deferred_; m != 0; m &= m - 1) {
    const uint32_t v = __builtin_ctzll(m) + 1;
    if (now >= next_fire_ns_[v]) {
      deferred_ &= ~(uint64_t{1} << (v - 1));
      dev_->RaiseVector(v);
      ++irqs_raised_;
      next_fire_ns_[v] = now + itr_ns_[v];
    }
  }
}

int64_t DataPath::NextInterruptDeadlineNs(int64_t now) const {
  int64_t best = -1;
  for (uint64_t m = deferred_; m != 0; m &= m - 1) {
    int64_t d = std::max<int64_t>(0, next_fire_ns_[__builtin_ctzll(m) + 1] - now);
    if (best < 0 || d < best) best = d;
  }
  return best;
}

bool DataPath::NeedsPolling() const {
  if (LaneNeedsPolling(*lanes_[0]) || deferred_ != 0) return true;
  return (posted_tx_irq_.load(std::memory_order_relaxed) |
          posted_rx_irq_.load(std::memory_order_relaxed)) != 0;
}

void DataPath::Recover() {
  PauseGuard pause(this);
  vfio_user::DmaMemory* dma = dev_->dma();
  if (dma == nullptr) return;
  uint64_t vectors = 0;  // bit v - 1: queue vector v
  auto note_vector = [&vectors](uint32_t v) {
    if (v != 0 && v < kVectors) vectors |= uint64_t{1} << (v - 1);
  };
  for (uint32_t q = 0; q < nq_; ++q) {
    const uint64_t bit = uint64_t{1} << q;
    if (rx_[q]->enabled()) {
      const avf::RxQueueContext& c = dev_->rx_queue(q);
      rx_[q]->SetBufferSizes(c.buffer_size, c.max_frame);
      rx_[q]->SetDescFormat(RxDescFormatOf(c.rxdid));
      rx_[q]->Recover(*dma);
      rx_running_ |= bit;
      if (c.keep_crc) rx_keep_crc_ |= bit;
      note_vector(c.msix_vector);
    }
    if (tx_[q]->enabled()) {
      tx_[q]->Recover(*dma);
      tx_running_ |= bit;
      lanes_[LaneOf(q)]->kicked.fetch_or(bit, std::memory_order_relaxed);
      note_vector(dev_->tx_queue(q).msix_vector);
    }
  }
  // A wake-up may have been lost with the predecessor: fire each queue
  // vector once (a spurious MSI-X only makes NAPI poll an empty ring).
  for (uint64_t m = vectors; m != 0; m &= m - 1) dev_->RaiseVector(__builtin_ctzll(m) + 1);
  active_backend_ = 0;  // the predecessor's TAP queue attachment is re-applied
  UpdateBackendQueues();
}

void DataPath::FillCounters(internal::WorkerStatus* status) const {
  status->clear_rx();
  status->clear_tx();
  for (uint32_t q = 0; q < dev_->num_queue_pairs() && q < nq_; ++q) {
    auto fill = [q](internal::QueueCounters* c, const HotQueue& h) {
      c->set_queue(q);
#define EMUD_FILL_QUEUE_COUNTER(name, help) c->set_##name(h.name.load(std::memory_order_relaxed));
      EMUD_QUEUE_COUNTERS(EMUD_FILL_QUEUE_COUNTER)
#undef EMUD_FILL_QUEUE_COUNTER
    };
    fill(status->add_rx(), rx_[q]->stats());
    fill(status->add_tx(), tx_[q]->stats());
  }
}

uint64_t DataPath::total_packets() const {
  uint64_t n = 0;
  for (uint32_t q = 0; q < nq_; ++q) {
    n += rx_[q]->stats().packets.load(std::memory_order_relaxed) +
         tx_[q]->stats().packets.load(std::memory_order_relaxed);
  }
  return n;
}

}  // namespace emud::dataplane
