#include "tests/guest/guest_datapath.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace emud::guest {
namespace {

inline uint64_t Load(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint64_t*>(p), __ATOMIC_ACQUIRE);
}
inline void Store(uint8_t* p, uint64_t v) {
  __atomic_store_n(reinterpret_cast<uint64_t*>(p), v, __ATOMIC_RELEASE);
}

}  // namespace

GuestDataPath::~GuestDataPath() {
  for (auto& q : tx_slots_) {
    for (auto& s : q) {
      if (s.buf.valid()) drv_->bus().memory().Free(s.buf);
    }
  }
}

absl::Status GuestDataPath::Transmit(uint32_t q, absl::Span<const uint8_t> frame,
                                     uint32_t cmd_extra, uint32_t offset, int32_t vlan_tci) {
  Ring& r = drv_->tx_ring(q);
  if (tx_slots_.size() <= q) tx_slots_.resize(q + 1);
  if (tx_slots_[q].size() != r.count) tx_slots_[q].assign(r.count, TxSlot{});
  uint32_t next = (r.next_to_use + 1) % r.count;
  if (next == r.next_to_clean) return absl::ResourceExhaustedError("TX ring full");
  auto b = drv_->bus().memory().Allocate(frame.size(), 64);
  if (!b.ok()) return b.status();
  std::memcpy(b->host, frame.data(), frame.size());
  uint8_t* d = r.desc.host + size_t{r.next_to_use} * 16;
  Store(d, b->iova);
  uint64_t cmd = 0x1 /*EOP*/ | 0x2 /*RS*/ | 0x4 /*ICRC*/ | cmd_extra;
  uint64_t tag = 0;
  if (vlan_tci >= 0) {
    cmd |= 0x8;  // IL2TAG1
    tag = uint64_t(uint16_t(vlan_tci)) << 48;
  }
  Store(d + 8, cmd << 4 | uint64_t(offset) << 16 | uint64_t(frame.size()) << 34 | tag);
  tx_slots_[q][r.next_to_use].buf = *b;
  r.next_to_use = next;
  return drv_->bus().Write32(r.tail_offset, r.next_to_use);
}

uint32_t GuestDataPath::ReapTx(uint32_t q) {
  Ring& r = drv_->tx_ring(q);
  uint32_t n = 0;
  while (r.next_to_clean != r.next_to_use) {
    uint8_t* d = r.desc.host + size_t{r.next_to_clean} * 16;
    if ((Load(d + 8) & 0xF) != 0xF) break;
    TxSlot& s = tx_slots_[q][r.next_to_clean];
    if (s.buf.valid()) drv_->bus().memory().Free(s.buf);
    s.buf = {};
    r.next_to_clean = (r.next_to_clean + 1) % r.count;
    ++n;
  }
  return n;
}

absl::StatusOr<std::vector<RxFrame>> GuestDataPath::Receive(uint32_t q) {
  Ring& r = drv_->rx_ring(q);
  if (rx_partial_.size() <= q) rx_partial_.resize(q + 1);
  if (slot_buf_.size() <= q) slot_buf_.resize(q + 1);
  auto& sb = slot_buf_[q];
  if (sb.size() != r.count) {  // as SetupRings posted them: slot i holds buffer i
    sb.assign(r.count, 0);
    for (uint32_t i = 0; i < r.count; ++i) sb[i] = i % uint32_t(r.buffers.size());
  }
  std::vector<RxFrame> out;
  bool error = false;
  uint32_t cleaned = 0;
  for (;;) {
    uint32_t i = r.next_to_clean;
    uint8_t* d = r.desc.host + size_t{i} * 32;
    uint64_t qw1 = Load(d + 8);
    if (!(qw1 & 1)) break;  // DD (status_error0 bit 0 in the flex formats too)
    const uint64_t qw0 = Load(d);
    const bool flex = drv_->rxdid() != 1;
    // Legacy: PBUF_LEN in qw1 51:38; flex: pkt_len in bytes 4..5 (14 bits).
    uint32_t len = flex ? uint32_t(qw0 >> 32) & 0x3FFF : uint32_t(qw1 >> 38) & 0x3FFF;
    const DmaBuffer& b = r.buffers[sb[i]];
    auto& part = rx_partial_[q];
    if (len == 0 && part.empty()) {
      // Linux <= 6.9 (iavf_txrx.c:iavf_clean_rx_irq) gets no skb from
      // iavf_build_skb for a 0-byte first buffer and stops at this
      // descriptor on every poll: the queue would be stalled for good.
      return absl::InternalError(absl::StrCat("RX queue ", q, " descriptor ", i,
                                              ": DD with PBUF_LEN 0 starts a frame (stalls iavf)"));
    }
    if (part.empty()) first_qw0_ = qw0;
    part.insert(part.end(), b.host, b.host + std::min<size_t>(len, b.size));
    // RXE: legacy qw1 bit 19, flex status_error0 bit 10.
    error |= flex ? (qw1 >> 10) & 1 : (qw1 >> 19) & 1;
    if (qw1 & 2) {  // EOF (bit 1 in both)
      RxFrame f;
      f.data = std::move(part);
      f.error = error;
      f.last_qw1 = qw1;
      f.first_qw0 = first_qw0_;
      if (!flex) {
        f.ptype = uint32_t(qw1 >> 30) & 0xFF;
        if (qw1 & 4) f.vlan_tci = int32_t(uint32_t(qw0 >> 16) & 0xFFFF);  // L2TAG1P
        f.rss_valid = ((qw1 >> 12) & 3) == 3;
        if (f.rss_valid) f.rss_hash = uint32_t(first_qw0_ >> 32);
        f.l3l4p = (qw1 >> 3) & 1;
        f.ipe = (qw1 >> 22) & 1;
        f.l4e = (qw1 >> 23) & 1;
      } else {
        const uint64_t qw3 = Load(d + 24);
        f.rxdid = uint8_t(qw0 & 0x3F);
        f.ptype = uint32_t(qw0 >> 16) & 0x3FF;
        if (qw1 & (1u << 13)) f.vlan_tci = int32_t(uint32_t(qw1 >> 16) & 0xFFFF);  // L2TAG1P
        f.rss_valid = (qw1 >> 12) & 1;
        // COMMS_OVS_1: flow id in bytes 12..15, hash in 24..27; FLEX_NIC
        // the other way round.
        const uint32_t b12 = uint32_t(qw1 >> 32), b24 = uint32_t(qw3);
        const bool ovs = f.rxdid == 22;
        if (f.rss_valid) f.rss_hash = ovs ? b24 : b12;
        f.flow_id = ovs ? b12 : b24;
        f.l3l4p = (qw1 >> 3) & 1;
        f.ipe = (qw1 >> 4) & 1;
        f.l4e = (qw1 >> 5) & 1;
      }
      if (!f.error) out.push_back(std::move(f));
      part.clear();
      error = false;
    }
    // Re-post this slot's buffer at next_to_use (Linux recycles in order).
    uint32_t u = r.next_to_use;
    sb[u] = sb[i];  // the reaped buffer moves to the next free slot
    const DmaBuffer& nb = r.buffers[sb[u]];
    uint8_t* ud = r.desc.host + size_t{u} * 32;
    Store(ud, nb.iova);
    Store(ud + 16, 0);
    Store(ud + 24, 0);
    Store(ud + 8, 0);
    r.next_to_use = (u + 1) % r.count;
    r.next_to_clean = (i + 1) % r.count;
    ++cleaned;
  }
  if (cleaned > 0) {
    if (auto s = drv_->bus().Write32(r.tail_offset, r.next_to_use); !s.ok()) return s;
  }
  return out;
}

}  // namespace emud::guest
