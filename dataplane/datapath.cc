#include "dataplane/datapath.h"

#include <cstdio>

#include "absl/strings/match.h"
#include "dataplane/adaptive_poll.h"
#include "dataplane/offload.h"
#include "dataplane/rss.h"

namespace emud::dataplane {

DataPath::DataPath(avf::Device* device, Backend* backend, QueueStateFile* state,
                   DataPathOptions options)
    : dev_(device), backend_(backend), state_(state), options_(options), counters_(state->device()) {
  for (uint32_t q = 0; q < kMaxQueues; ++q) {
    tx_.push_back(std::make_unique<TxQueue>(uint16_t(q), state_->tx(q)));
    tx_.back()->CountMalformedInto(&state_->device()->tx_malformed);
    rx_.push_back(std::make_unique<RxQueue>(uint16_t(q), state_->rx(q)));
  }
  loopback_ = backend_->spec() == "loopback";
  dev_->set_hooks(this);
  backend_->set_sink(this);
  OnFiltersChanged();
}

DataPath::~DataPath() {
  dev_->set_hooks(nullptr);
  backend_->set_sink(nullptr);
}

void DataPath::OnTxDoorbell(uint32_t queue) {
  if (queue < kMaxQueues) tx_kicked_ |= 1u << queue;
}

void DataPath::OnRxDoorbell(uint32_t) { rx_kicked_ = true; }

void DataPath::OnQueuesEnabled(uint32_t rx_mask, uint32_t tx_mask) {
  rx_tail_valid_ = 0;
  for (uint32_t q = 0; q < kMaxQueues; ++q) {
    if (tx_mask & (1u << q)) {
      const avf::TxQueueContext& c = dev_->tx_queue(q);
      if (tx_[q]->Configure(c.ring_addr, c.ring_len).ok() && tx_[q]->SetEnabled(true).ok()) {
        tx_running_ |= 1u << q;
        tx_kicked_ |= 1u << q;
      }
    }
    if (rx_mask & (1u << q)) {
      const avf::RxQueueContext& c = dev_->rx_queue(q);
      if (rx_[q]->Configure(c.ring_addr, c.ring_len, c.buffer_size, c.max_frame).ok() &&
          rx_[q]->SetEnabled(true).ok()) {
        rx_running_ |= 1u << q;
      }
    }
  }
}

void DataPath::OnQueuesDisabled(uint32_t rx_mask, uint32_t tx_mask) {
  rx_tail_valid_ = 0;
  for (uint32_t q = 0; q < kMaxQueues; ++q) {
    if (tx_mask & (1u << q)) {
      (void)tx_[q]->SetEnabled(false);
      tx_running_ &= ~(1u << q);
    }
    if (rx_mask & (1u << q)) {
      (void)rx_[q]->SetEnabled(false);
      rx_running_ &= ~(1u << q);
    }
  }
}

// Hardware counter semantics, which both drivers assume: the per-class RX
// counters count every frame that reached the VF, discarded or not (DPDK's
// iavf_dev_stats_get takes rx_discards out of their sum), byte counters
// include each frame's 4-byte CRC (DPDK subtracts it per received packet
// unless KEEP_CRC), and tx_errors / tx_discards are disjoint (DPDK's oerrors
// is their sum; Linux iavf_virtchnl_completion reports them as tx_errors /
// tx_dropped). TX frames are not classified: tx_unicast counts them all.
void DataPath::GetStats(avf::vc::EthStats* s) {
  constexpr uint64_t kCrc = 4;
  *s = {};
  uint64_t rx_frames = 0, tx_frames = 0, tx_drops = 0;
  for (uint32_t q = 0; q < kMaxQueues; ++q) {
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
  filter_.Clear();
  for (const avf::MacFilterEntry& e : dev_->mac_filters()) filter_.Add(e.addr);
  uint16_t p = dev_->promisc_flags();
  filter_.SetPromisc(p & avf::vc::kPromiscUnicast, p & avf::vc::kPromiscMulticast);
}

void DataPath::OnDmaUnmap(uint64_t iova, uint64_t size) {
  for (auto& q : tx_) q->OnDmaUnmap(iova, size);
  for (auto& q : rx_) q->OnDmaUnmap(iova, size);
}

bool DataPath::Deliver(uint16_t queue, FrameView frame) {
  vfio_user::DmaMemory* dma = dev_->dma();
  if (rx_running_ == 0 || dma == nullptr) return true;  // link down: dropped
  if (!filter_.Accept(frame)) {
    Bump(counters_->rx_filtered);
    return true;
  }
  // RSS (tap/peer: the backend has no flows of its own): hash, then the
  // driver's lookup table; loopback keeps the TX queue. Fallback: the lowest
  // running queue.
  uint32_t q = queue;
  std::optional<uint32_t> hash;
  const avf::RssConfig& rss = dev_->rss();
  if (!loopback_ && rss.hena != 0) {
    hash = FrameRssHash(rss.key, frame, rss.hena);
    if (hash) q = rss.lut[*hash % rss.lut.size()];
  }
  if (q >= kMaxQueues || !(rx_running_ & (1u << q))) q = __builtin_ctz(rx_running_);
  RxQueue& rx = *rx_[q];
  uint64_t csum_bits = 0;
  if (options_.rx_checksum) {
    uint32_t c = CheckRxChecksums(frame);
    if (c & RxCsum::kChecked) csum_bits |= rxd::kL3L4P;
    if (c & RxCsum::kIpBad) csum_bits |= rxd::kErrIpe;
    if (c & RxCsum::kL4Bad) csum_bits |= rxd::kErrL4e;
  }
  RxQueue::DeliverResult res =
      rx.Deliver(frame, RxTail(q, false), *dma, csum_bits, hash.has_value(), hash.value_or(0));
  if (res == RxQueue::DeliverResult::kNoBuffers) {
    // Nothing was written: look at the live tail once before giving up.
    const uint32_t cached = rx_tail_cache_[q];
    if (RxTail(q, true) != cached) {
      res = rx.Deliver(frame, rx_tail_cache_[q], *dma, csum_bits, hash.has_value(),
                       hash.value_or(0));
    }
  }
  switch (res) {
    case RxQueue::DeliverResult::kDelivered:
      rx_irq_ |= 1u << q;
      CountClass(frame);
      return true;
    case RxQueue::DeliverResult::kDropped:
      if (rx.TakeWroteBack()) rx_irq_ |= 1u << q;
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

uint32_t DataPath::RxTail(uint32_t q, bool refresh) {
  if (refresh || !(rx_tail_valid_ & (1u << q))) {
    rx_tail_cache_[q] = dev_->RxTail(q);
    rx_tail_valid_ |= 1u << q;
  }
  return rx_tail_cache_[q];
}

bool DataPath::PollOnce() {
  vfio_user::DmaMemory* dma = dev_->dma();
  if (dma == nullptr) return false;
  bool work = false;
  rx_tail_valid_ = 0;  // tails are read afresh each round
  const bool mapped = dev_->options().mapped_doorbells;
  uint32_t todo = mapped ? tx_running_ : (tx_kicked_ & tx_running_);
  tx_kicked_ = 0;
  while (todo != 0) {
    uint32_t q = __builtin_ctz(todo);
    todo &= todo - 1;
    TxQueue& tx = *tx_[q];
    uint32_t tail = dev_->TxTail(q);
    if (tail == tx.head()) continue;
    PoisonGuard* guard = options_.poison_guard;
    if (guard != nullptr && guard->Enter(PoisonGuard::kTxQueue, (uint64_t{q} << 32) | tx.head()) >=
                                PoisonGuard::kQuarantineAfter) [[unlikely]] {
      guard->Leave(PoisonGuard::kTxQueue);
      std::fprintf(stderr,
                   "dataplane: quarantined TX queue %u at descriptor %u: %u workers died "
                   "processing it; the queue stops until the guest enables it again\n",
                   q, tx.head(), PoisonGuard::kQuarantineAfter);
      tx.Quarantine();
      ++tx_quarantines_;
      continue;
    }
    TxQueue::Result r = tx.Process(tail, *dma, *backend_, options_.tx_budget);
    if (guard != nullptr) guard->Leave(PoisonGuard::kTxQueue);
    if (r.packets > 0) work = true;
    if (r.wrote_back) tx_irq_ |= 1u << q;
    if (r.more) tx_kicked_ |= 1u << q;  // trapped mode: come back without a doorbell
  }
  if (backend_->event_fd() >= 0 || backend_->HasPending()) {
    if (backend_->Poll(options_.rx_budget) > 0) work = true;
  }
  rx_kicked_ = false;
  rx_tail_valid_ = 0;  // a Deliver outside a round reads the live tail
  // Interrupts: at most one per vector per round and per ITR interval; the
  // model auto-masks, so a disarmed vector stays pending until the driver
  // re-arms it (no storm, no lost wake-up).
  if ((tx_irq_ | rx_irq_ | deferred_) != 0) {
    int64_t now = AdaptivePoller::NowNs();
    for (uint32_t m = tx_irq_; m != 0; m &= m - 1) {
      const avf::TxQueueContext& c = dev_->tx_queue(__builtin_ctz(m));
      SignalVector(c.msix_vector, c.itr_index, now);
    }
    for (uint32_t m = rx_irq_; m != 0; m &= m - 1) {
      const avf::RxQueueContext& c = dev_->rx_queue(__builtin_ctz(m));
      SignalVector(c.msix_vector, c.itr_index, now);
    }
    tx_irq_ = rx_irq_ = 0;
    FlushDeferred(now);
  }
  return work;
}

void DataPath::SignalVector(uint32_t v, uint32_t itr_index, int64_t now) {
  if (v == 0 || v >= kVectors) return;  // unmapped queue: no interrupt
  if (now < next_fire_ns_[v]) {
    if (!(deferred_ & (1u << v))) ++irqs_deferred_;
    deferred_ |= 1u << v;
    return;
  }
  deferred_ &= ~(1u << v);
  dev_->RaiseVector(v);
  ++irqs_raised_;
  avf::VectorState st = dev_->vector_state(v);
  uint32_t itr = itr_index < avf::kNumItrIndexes ? st.itr[itr_index] : 0;
  itr_ns_[v] = int64_t(itr) * 2000;  // ITR unit: 2 us
  next_fire_ns_[v] = now + itr_ns_[v];
}

void DataPath::FlushDeferred(int64_t now) {
  for (uint32_t m = deferred_; m != 0; m &= m - 1) {
    uint32_t v = __builtin_ctz(m);
    if (now >= next_fire_ns_[v]) {
      deferred_ &= ~(1u << v);
      dev_->RaiseVector(v);
      ++irqs_raised_;
      next_fire_ns_[v] = now + itr_ns_[v];
    }
  }
}

int64_t DataPath::NextInterruptDeadlineNs(int64_t now) const {
  int64_t best = -1;
  for (uint32_t m = deferred_; m != 0; m &= m - 1) {
    int64_t d = std::max<int64_t>(0, next_fire_ns_[__builtin_ctz(m)] - now);
    if (best < 0 || d < best) best = d;
  }
  return best;
}

bool DataPath::NeedsPolling() const {
  if (dev_->options().mapped_doorbells && (tx_running_ | rx_running_) != 0) return true;
  return tx_kicked_ != 0 || backend_->HasPending() || deferred_ != 0;
}

void DataPath::Recover() {
  vfio_user::DmaMemory* dma = dev_->dma();
  if (dma == nullptr) return;
  uint32_t vectors = 0;
  for (uint32_t q = 0; q < kMaxQueues; ++q) {
    if (rx_[q]->enabled()) {
      const avf::RxQueueContext& c = dev_->rx_queue(q);
      rx_[q]->SetBufferSizes(c.buffer_size, c.max_frame);
      rx_[q]->Recover(*dma);
      rx_running_ |= 1u << q;
      vectors |= 1u << (dev_->rx_queue(q).msix_vector % kVectors);
    }
    if (tx_[q]->enabled()) {
      tx_[q]->Recover(*dma);
      tx_running_ |= 1u << q;
      tx_kicked_ |= 1u << q;
      vectors |= 1u << (dev_->tx_queue(q).msix_vector % kVectors);
    }
  }
  // A wake-up may have been lost with the predecessor: fire each queue
  // vector once (a spurious MSI-X only makes NAPI poll an empty ring).
  for (uint32_t m = vectors & ~1u; m != 0; m &= m - 1) dev_->RaiseVector(__builtin_ctz(m));
}

void DataPath::FillCounters(internal::WorkerStatus* status) const {
  status->clear_rx();
  status->clear_tx();
  for (uint32_t q = 0; q < dev_->num_queue_pairs() && q < kMaxQueues; ++q) {
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
  for (uint32_t q = 0; q < kMaxQueues; ++q) {
    n += rx_[q]->stats().packets.load(std::memory_order_relaxed) +
         tx_[q]->stats().packets.load(std::memory_order_relaxed);
  }
  return n;
}

}  // namespace emud::dataplane
