#include "dataplane/queues.h"

#include "base/fault_point.h"

#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dataplane/offload.h"

namespace emud::dataplane {
namespace {

constexpr size_t kBatch = 32;
constexpr uint32_t kMinFrame = 60;
constexpr uint32_t kL2tag2Present = 1u << 16;
// TX fast path: qw1 bits that must be exactly so (DTYPE data; CMD EOP set,
// IL2TAG1, DUMMY and L4T clear). IIPT 3 (IPv4 checksum) is tested apart.
constexpr uint64_t kFastMask =
    0xFull | uint64_t{txd::kCmdEop | txd::kCmdIl2tag1 | txd::kCmdDummy | 0x300} << 4;
constexpr uint64_t kFastBits = uint64_t{txd::kCmdEop} << 4;

inline uint64_t LoadQw(volatile uint64_t* p) {
  return __atomic_load_n(const_cast<uint64_t*>(p), __ATOMIC_ACQUIRE);
}
inline void StoreQw(volatile uint64_t* p, uint64_t v) {
  __atomic_store_n(const_cast<uint64_t*>(p), v, __ATOMIC_RELEASE);
}
inline void StoreQwRelaxed(volatile uint64_t* p, uint64_t v) {
  __atomic_store_n(const_cast<uint64_t*>(p), v, __ATOMIC_RELAXED);
}

// Asks for the cache line at `p` in a writable state. GCC emits prefetcht0
// for __builtin_prefetch(p, 1) unless the target has PRFCHW; prefetchw
// itself is harmless everywhere on x86-64 (a NOP where unsupported).
inline void PrefetchForWrite(const volatile void* p) {
#if defined(__x86_64__)
  asm volatile("prefetchw %0" : : "m"(*static_cast<const volatile char*>(p)));
#else
  __builtin_prefetch(const_cast<const void*>(p), 1);
#endif
}

// Frames from this size on have the RX buffer two frames ahead prefetched
// (DeliverFast).
constexpr size_t kDeepPrefetchMin = 1024;

// An 802.1Q tag (TPID 0x8100, TCI `tci`) at `p`.
inline void PutVlanTag(uint8_t* p, uint16_t tci) {
  p[0] = 0x81;
  p[1] = 0x00;
  p[2] = uint8_t(tci >> 8);
  p[3] = uint8_t(tci);
}

bool RangesOverlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}

}  // namespace

uint8_t ClassifyPtype(FrameView f) {
  if (f.size() < 14) return 1;
  size_t off = 12;
  uint16_t et = uint16_t(f[off] << 8 | f[off + 1]);
  if (et == 0x8100 && f.size() >= 18) {  // one VLAN tag
    off += 4;
    et = uint16_t(f[off] << 8 | f[off + 1]);
  }
  size_t l3 = off + 2;
  if (et == 0x0806) return 11;
  if (et == 0x0800 && f.size() >= l3 + 20 && (f[l3] >> 4) == 4) {
    uint16_t frag = uint16_t(f[l3 + 6] << 8 | f[l3 + 7]);
    if (frag & 0x3fff) return 22;
    switch (f[l3 + 9]) {
      case 17:
        if (const size_t d = l3 + size_t(f[l3] & 0xf) * 4 + 2;
            f.size() >= d + 2 && IsRxTunnelPort(uint16_t(f[d] << 8 | f[d + 1]))) [[unlikely]] {
          if (uint8_t t = ClassifyRxTunnel(f, l3, false)) return t;
        }
        return 24;
      case 6: return 26;
      case 132: return 27;
      case 1: return 28;
      case 47:
        if (uint8_t t = ClassifyRxTunnel(f, l3, false)) return t;
        return 23;
      default: return 23;
    }
  }
  if (et == 0x86dd && f.size() >= l3 + 40 && (f[l3] >> 4) == 6) {
    switch (f[l3 + 6]) {
      case 44: return 88;
      case 17:
        if (f.size() >= l3 + 44 && IsRxTunnelPort(uint16_t(f[l3 + 42] << 8 | f[l3 + 43])))
            [[unlikely]] {
          if (uint8_t t = ClassifyRxTunnel(f, l3, true)) return t;
        }
        return 90;
      case 47:
        if (uint8_t t = ClassifyRxTunnel(f, l3, true)) return t;
        return 89;
      case 6: return 92;
      case 132: return 93;
      case 58: return 94;
      default: return 89;
    }
  }
  return 1;
}

uint8_t* DmaWindowCache::Slow(vfio_user::DmaMemory& dma, uint64_t iova, uint64_t len,
                              Access access) {
  if (len == 0) return nullptr;
  vfio_user::DmaMemory::Window w;
  if (dma.FindWindow(iova, access, &w)) {
    const uint64_t off = iova - w.iova;
    if (off >= w.size || len > w.size - off) return nullptr;  // crosses the window's end
    w_ = w;
    return w.host + off;
  }
  // No window: an implementation without them, or a range it refuses
  // (Translate says which; nothing is cached).
  auto p = dma.Translate(iova, len, access);
  return p.ok() ? *p : nullptr;
}

// ------------------------------------------------------------------ TX

TxQueue::TxQueue(uint16_t id, HotQueue* hot, QueueLimits limits, uint8_t* arena)
    : id_(id), hot_(hot), limits_(limits), arena_(arena) {
  // arena_ is allocated on first use: a worker builds all kMaxQueues queues
  // at start, and a successor's start is on the guest's critical path.
  frames_.reserve(kBatch * 64);
  completions_.reserve(kBatch * 8);
}

absl::Status TxQueue::Configure(uint64_t ring_addr, uint32_t ring_len) {
  if (ring_len != 0 && (ring_len < 8 || ring_len > 8192)) {
    return absl::InvalidArgumentError(absl::StrCat("TX ring length ", ring_len));
  }
  if ((ring_addr & 127) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("TX ring address 0x", absl::Hex(ring_addr)));
  }
  hot_->enabled.store(0);
  hot_->ring_addr = ring_addr;
  hot_->ring_len = ring_len;
  hot_->head.store(0, std::memory_order_release);
  hot_->intent.store(0, std::memory_order_release);
  ring_ = nullptr;
  ring_fault_ = false;
  bad_tail_ = UINT32_MAX;
  return absl::OkStatus();
}

absl::Status TxQueue::SetEnabled(bool on) {
  if (on && hot_->ring_len == 0) {
    return absl::FailedPreconditionError(absl::StrCat("TX queue ", id_, " not configured"));
  }
  hot_->enabled.store(on ? 1 : 0, std::memory_order_release);
  return absl::OkStatus();
}

void TxQueue::Quarantine() {
  hot_->enabled.store(2, std::memory_order_release);
  Count(hot_->errors, 1);
}

void TxQueue::OnDmaUnmap(uint64_t iova, uint64_t size) {
  buf_window_.Clear();
  if (RangesOverlap(iova, size, hot_->ring_addr, uint64_t{hot_->ring_len} * 16)) ring_ = nullptr;
}

bool TxQueue::EnsureRing(vfio_user::DmaMemory& dma) {
  if (ring_ != nullptr) return true;
  auto p = dma.Translate(hot_->ring_addr, uint64_t{hot_->ring_len} * 16,
                         static_cast<vfio_user::DmaMemory::Access>(vfio_user::DmaMemory::kRead |
                                                                   vfio_user::DmaMemory::kWrite));
  if (!p.ok()) {
    if (!ring_fault_) Count(hot_->errors, 1);  // once per fault episode
    ring_fault_ = true;
    return false;
  }
  ring_fault_ = false;
  ring_ = reinterpret_cast<volatile uint64_t*>(*p);
  return true;
}

uint8_t* TxQueue::ArenaAlloc(size_t n, Backend& backend) {
  // Not zero-filled (new uint8_t[], not a vector's resize): the arena is
  // handed out from its start after every flush, so only the pages a burst
  // uses are ever touched. Zeroing it cost 256 page faults per queue on the
  // first slow-path frame, in a successor on the guest's critical path:
  // 3-5 ms of a 20-queue device's reattach (10 queues per lane).
  if (arena_ == nullptr) {
    own_arena_.reset(new uint8_t[kArenaBytes]);
    arena_ = own_arena_.get();
  }
  if (n > kArenaBytes) return nullptr;
  if (arena_used_ + n > kArenaBytes) Flush(backend);
  uint8_t* p = arena_ + arena_used_;
  arena_used_ += (n + 63) & ~size_t{63};
  if (arena_used_ > kArenaBytes) arena_used_ = kArenaBytes;
  return p;
}

void TxQueue::Flush(Backend& backend) {
  if (!frames_.empty()) {
    size_t sent = backend.Send(id_, frames_);
    uint64_t bytes = 0;
    for (size_t i = 0; i < sent; ++i) bytes += frames_[i].size();
    Count(hot_->packets, sent);
    Count(hot_->bytes, bytes);
    if (sent < frames_.size()) Count(hot_->drops, frames_.size() - sent);
    frames_.clear();
  }
  // Record the completions with the head they belong to, store the head,
  // then write them back (queue_state.h: crash protocol).
  const uint32_t n = uint32_t(std::min<size_t>(completions_.size(), kMaxPendingRs));
  for (uint32_t i = 0; i < n; ++i) {
    hot_->rs_idx[i] = completions_[i].idx;
    hot_->rs_qw1[i] = completions_[i].qw1;
  }
  hot_->rs_head = batch_head_;
  hot_->rs_count.store(n, std::memory_order_release);
  hot_->head.store(batch_head_, std::memory_order_release);
  for (const Completion& c : completions_) StoreQw(&ring_[c.idx * 2 + 1], txd::kDtypeDone);
  hot_->rs_count.store(0, std::memory_order_release);
  if (!completions_.empty()) wrote_back_ = true;
  completions_.clear();
  arena_used_ = 0;
}

uint32_t TxQueue::Recover(vfio_user::DmaMemory& dma) {
  uint32_t n = hot_->rs_count.load(std::memory_order_acquire);
  uint32_t done = 0;
  if (n > 0 && n <= kMaxPendingRs && hot_->rs_head == head() && hot_->ring_len != 0 &&
      EnsureRing(dma)) {
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t idx = hot_->rs_idx[i];
      if (idx >= hot_->ring_len) continue;
      // Only a slot the guest has not reclaimed still holds the recorded qw1.
      if (LoadQw(&ring_[idx * 2 + 1]) == hot_->rs_qw1[i]) {
        StoreQw(&ring_[idx * 2 + 1], txd::kDtypeDone);
        ++done;
      }
    }
    if (done > 0) wrote_back_ = true;
  }
  hot_->rs_count.store(0, std::memory_order_release);
  return done;
}

TxQueue::Result TxQueue::Process(uint32_t tail, vfio_user::DmaMemory& dma, Backend& backend,
                                 uint32_t budget) {
  Result r;
  const uint32_t n = hot_->ring_len;
  if (!enabled() || n == 0) return r;
  if (tail >= n) {
    if (tail != bad_tail_) Count(hot_->errors, 1);
    bad_tail_ = tail;
    return r;
  }
  bad_tail_ = UINT32_MAX;
  if (!EnsureRing(dma)) return r;
  uint32_t h = head();
  batch_head_ = h;
  wrote_back_ = false;
  auto next = [n](uint32_t i) { return i + 1 == n ? 0 : i + 1; };

  // Per-packet buffer bound: a TSO packet may use up to ring_len - 1
  // descriptors (what a driver can post), capped by the limit.
  const uint32_t max_tso_bufs = std::min(limits_.max_tso_buffers, n - 1);
  const uint32_t max_bufs = std::max(max_tso_bufs, limits_.max_tx_buffers);
  if (bufs_.size() < max_bufs) bufs_.resize(max_bufs);
  Buf* const bufs = bufs_.data();
  while (h != tail) {
    // A packet adds at most 64 completions: keep the burst's record bounded.
    if (completions_.size() >= kMaxPendingRs - 64) Flush(backend);
    if (r.packets >= budget) {
      r.more = true;
      break;
    }
    // The common packet first: one data descriptor with EOP, nothing to
    // offload, insert or pad (what the general path below sends zero-copy
    // too, with the same checks): no per-packet scan state.
    {
      const uint64_t qw1 = LoadQw(&ring_[h * 2 + 1]);  // qw1 first (see below)
      const uint32_t size = uint32_t(qw1 >> 34) & 0x3FFF;
      if ((qw1 & kFastMask) == kFastBits && ((qw1 >> 9) & 3) != TxOffload::kIiptIpv4Csum &&
          size >= kMinFrame && size <= limits_.max_frame) [[likely]] {
        const uint64_t qw0 = LoadQw(&ring_[h * 2]);
        const uint8_t* p = buf_window_.Translate(dma, qw0, size, vfio_user::DmaMemory::kRead);
        if (p != nullptr) [[likely]] {
          fault::Point("tx", p, size);
          frames_.push_back(FrameView(p, size));
          if (qw1 & (uint64_t{txd::kCmdRs} << 4)) completions_.push_back({h, qw1});
          h = next(h);
          batch_head_ = h;
          ++r.packets;
          if (frames_.size() >= kBatch) Flush(backend);
          continue;
        }
      }
    }
    // Scan one packet: optional context descriptors, then data until EOP.
    uint32_t scan = h;
    uint32_t nbuf = 0, ndesc = 0;
    bool eop = false, bad = false, dummy = false;
    uint32_t l2tag2 = 0;  // context CMD.IL2TAG2: kL2tag2Present | tag
    TxOffload off;
    uint64_t first_qw1 = 0;  // the first data descriptor's (CMD, OFFSET, L2TAG1)
    bool have_first = false;
    size_t total = 0;
    Completion pkt_rs[64];
    uint32_t npkt_rs = 0;
    // Completions of this packet join the batch only once its frames did.
    auto complete = [&]() {
      for (uint32_t k = 0; k < npkt_rs; ++k) completions_.push_back(pkt_rs[k]);
    };
    while (scan != tail && ndesc < n) {
      // qw1 first: a driver stores qw0 before qw1, so a qw1 that is new
      // implies its qw0 is (x86 TSO; both loads acquire). It matters when
      // the scan runs ahead of the driver: a tail written by a transmit that
      // raced a VF reset (mapped doorbells) points into a new, still-empty
      // ring.
      uint64_t qw1 = LoadQw(&ring_[scan * 2 + 1]);
      uint64_t qw0 = LoadQw(&ring_[scan * 2]);
      ++ndesc;
      uint32_t idx = scan;
      scan = next(scan);
      uint64_t dtype = qw1 & 0xF;
      if (dtype == txd::kDtypeContext) [[unlikely]] {
        uint32_t cmd = uint32_t(qw1 >> 4) & 0xFFFF;
        if (have_first) bad = true;  // a context descriptor inside a packet
        if (cmd & txd::kCtxCmdTso) {
          off.tso = true;
          off.tso_len = uint32_t(qw1 >> 30) & 0x3FFFF;
          off.mss = uint32_t(qw1 >> 50) & 0x3FFF;
        }
        // Tunnel offloads: outer IP/UDP fields here, inner offsets in the
        // data descriptor (validated against the frame when applied).
        if (qw0 & TxTunnel::kMask) off.tun = TxTunnel::Decode(qw0);
        if (cmd & txd::kCtxCmdIl2tag2) l2tag2 = kL2tag2Present | txd::CtxL2tag2(qw0);
        continue;
      }
      uint32_t cmd = uint32_t(qw1 >> 4) & 0x3FF;
      if ((cmd & txd::kCmdRs) && npkt_rs < 64) pkt_rs[npkt_rs++] = {idx, qw1};
      if (dtype != txd::kDtypeData) bad = true;
      uint32_t size = uint32_t(qw1 >> 34) & 0x3FFF;
      if (!have_first) {
        have_first = true;
        first_qw1 = qw1;
      }
      if (cmd & txd::kCmdDummy) dummy = true;
      uint32_t maxbuf = off.tso ? max_tso_bufs : limits_.max_tx_buffers;
      if (nbuf < maxbuf) {
        bufs[nbuf] = {qw0, size, nullptr};
      } else {
        bad = true;  // too many buffers: drop the whole packet
      }
      ++nbuf;
      total += size;
      if (size == 0) bad = true;
      if (cmd & txd::kCmdEop) {
        eop = true;
        break;
      }
    }
    if (!eop) [[unlikely]] {
      if (ndesc + 1 >= n || nbuf > max_tso_bufs) {
        // A chain that can never end (the driver can post at most
        // ring_len - 1 descriptors): drop everything scanned.
        DropMalformed();
        h = scan;
        complete();
        batch_head_ = h;
        ++r.packets;
        continue;
      }
      break;  // incomplete packet: wait for the rest
    }
    h = scan;
    ++r.packets;
    if (dummy) [[unlikely]] {  // the driver asked for the packet to be dropped
      complete();
      batch_head_ = h;
      continue;
    }
    // VLAN insertion: CMD.IL2TAG1 with the data descriptor's L2TAG1 (DPDK
    // iavf_build_data_desc_cmd_offset_fields, Linux iavf_tx_map), or the
    // context descriptor's CMD.IL2TAG2 with its L2TAG2 (the VLAN_V2 L2TAG2
    // location). Both at once would need an order we do not know: error.
    // So is a location the device does not offer now (SetVlanInsertion:
    // VLAN_V2 offers L2TAG1 only, and the driver may turn insertion off):
    // the frame would leave without the tag its driver meant it to carry.
    const uint32_t first_cmd = uint32_t(first_qw1 >> 4) & 0x3FF;
    const uint32_t first_offset = uint32_t(first_qw1 >> 16) & 0x3FFFF;
    const bool il2tag1 = (first_cmd & txd::kCmdIl2tag1) != 0;
    const bool il2tag2 = l2tag2 != 0;
    const bool vlan = il2tag1 || il2tag2;
    const uint16_t vlan_tag = uint16_t(il2tag1 ? first_qw1 >> 48 : l2tag2);
    const size_t limit = off.tso ? limits_.max_tso_bytes : limits_.max_frame;
    if (bad || (il2tag1 && il2tag2) || (il2tag1 && !insert_l2tag1_) ||
        (il2tag2 && !insert_l2tag2_) || total > limit || total < 14 || nbuf == 0) [[unlikely]] {
      DropMalformed();
      complete();
      batch_head_ = h;
      continue;
    }
    off.maclen = (first_offset & 0x7F) * 2;
    off.iplen = ((first_offset >> 7) & 0x7F) * 4;
    off.l4len = ((first_offset >> 14) & 0xF) * 4;
    off.iipt = static_cast<TxOffload::Iipt>((first_cmd >> 5) & 3);
    off.l4t = static_cast<TxOffload::L4t>((first_cmd >> 8) & 3);
    const bool csum =
        off.iipt == TxOffload::kIiptIpv4Csum || off.l4t != TxOffload::kL4None || off.tun.present;

    // Resolve buffers.
    bool fault = false;
    for (uint32_t i = 0; i < nbuf; ++i) {
      const uint8_t* p =
          buf_window_.Translate(dma, bufs[i].addr, bufs[i].len, vfio_user::DmaMemory::kRead);
      if (p == nullptr) {
        fault = true;
        break;
      }
      bufs[i].ptr = p;
    }
    if (fault) [[unlikely]] {
      DropMalformed();
      complete();
      batch_head_ = h;
      continue;
    }
    fault::Point("tx", bufs[0].ptr, bufs[0].len);
    if (nbuf == 1 && !csum && !off.tso && !vlan && total >= kMinFrame) [[likely]] {
      frames_.push_back(FrameView(bufs[0].ptr, total));  // zero copy
    } else {
      // The tag goes in after the offloads, whose header lengths exclude it
      // (the driver's MACLEN is that of the untagged frame): the packet is
      // gathered tag_len bytes into its slot, offloaded there, and then its
      // MAC addresses move to the front to make room for the tag.
      const size_t tag_len = vlan ? 4 : 0;
      const size_t out_len = off.tso ? total : std::max<size_t>(total + tag_len, kMinFrame);
      uint8_t* out = ArenaAlloc(out_len, backend);
      if (out == nullptr) {
        Count(hot_->drops, 1);
        complete();
        batch_head_ = h;
        continue;
      }
      uint8_t* dst = off.tso ? out : out + tag_len;
      size_t o = 0;
      for (uint32_t i = 0; i < nbuf; ++i) {
        std::memcpy(dst + o, bufs[i].ptr, bufs[i].len);
        o += bufs[i].len;
      }
      if (off.tso) {
        absl::Status s = SegmentTso(
            FrameView(dst, total), off, tso_scratch_,
            [&](absl::Span<const uint8_t> seg) {
              size_t sl = seg.size() + tag_len;
              uint8_t* sd = ArenaAlloc(std::max<size_t>(sl, kMinFrame), backend);
              if (sd == nullptr) return;
              if (vlan) {
                std::memcpy(sd, seg.data(), 12);
                PutVlanTag(sd + 12, vlan_tag);
                std::memcpy(sd + 16, seg.data() + 12, seg.size() - 12);
              } else {
                std::memcpy(sd, seg.data(), seg.size());
              }
              if (sl < kMinFrame) {
                std::memset(sd + sl, 0, kMinFrame - sl);
                sl = kMinFrame;
              }
              frames_.push_back(FrameView(sd, sl));
            });
        if (!s.ok()) {
          DropMalformed();
          if (off.tun.present) tunnel_malformed_->fetch_add(1, std::memory_order_relaxed);
        }
      } else {
        // Checksums over the packet's own length, not the padding.
        absl::Status s = csum ? ApplyChecksumOffloads(absl::Span<uint8_t>(dst, total), off)
                              : absl::OkStatus();
        if (s.ok()) {
          if (vlan) {
            std::memmove(out, dst, 12);
            PutVlanTag(out + 12, vlan_tag);
          }
          if (out_len > total + tag_len) {
            std::memset(out + total + tag_len, 0, out_len - total - tag_len);
          }
          frames_.push_back(FrameView(out, out_len));
        } else {
          DropMalformed();
          if (off.tun.present) tunnel_malformed_->fetch_add(1, std::memory_order_relaxed);
        }
      }
    }
    complete();
    batch_head_ = h;
    if (frames_.size() >= kBatch) Flush(backend);
  }
  Flush(backend);
  r.wrote_back = wrote_back_;
  return r;
}

// ------------------------------------------------------------------ RX

RxQueue::RxQueue(uint16_t id, HotQueue* hot, QueueLimits limits)
    : id_(id), hot_(hot), limits_(limits) {}

absl::Status RxQueue::Configure(uint64_t ring_addr, uint32_t ring_len, uint32_t databuffer_size,
                                uint32_t max_pkt_size) {
  if (ring_len != 0 && (ring_len < 8 || ring_len > 8192)) {
    return absl::InvalidArgumentError(absl::StrCat("RX ring length ", ring_len));
  }
  if ((ring_addr & 127) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("RX ring address 0x", absl::Hex(ring_addr)));
  }
  if (ring_len != 0 && (databuffer_size < 128 || databuffer_size > 16256)) {
    return absl::InvalidArgumentError(absl::StrCat("RX buffer size ", databuffer_size));
  }
  if (ring_len != 0 && (max_pkt_size < 64 || max_pkt_size > limits_.max_frame)) {
    return absl::InvalidArgumentError(absl::StrCat("RX max packet size ", max_pkt_size));
  }
  FlushHeld();
  hot_->enabled.store(0);
  hot_->ring_addr = ring_addr;
  hot_->ring_len = ring_len;
  hot_->head.store(0, std::memory_order_release);
  hot_->intent.store(0, std::memory_order_release);
  dbuf_ = databuffer_size;
  max_pkt_ = max_pkt_size;
  ring_ = nullptr;
  ring_fault_ = false;
  bad_tail_ = UINT32_MAX;
  return absl::OkStatus();
}

absl::Status RxQueue::SetEnabled(bool on) {
  if (on && hot_->ring_len == 0) {
    return absl::FailedPreconditionError(absl::StrCat("RX queue ", id_, " not configured"));
  }
  FlushHeld();
  hot_->enabled.store(on ? 1 : 0, std::memory_order_release);
  return absl::OkStatus();
}

void RxQueue::OnDmaUnmap(uint64_t iova, uint64_t size) {
  FlushHeld();  // the ring is still mapped until this returns
  buf_window_.Clear();
  if (RangesOverlap(iova, size, hot_->ring_addr, uint64_t{hot_->ring_len} * 32)) ring_ = nullptr;
}

bool RxQueue::EnsureRing(vfio_user::DmaMemory& dma) {
  if (ring_ != nullptr) return true;
  auto p = dma.Translate(hot_->ring_addr, uint64_t{hot_->ring_len} * 32,
                         static_cast<vfio_user::DmaMemory::Access>(vfio_user::DmaMemory::kRead |
                                                                   vfio_user::DmaMemory::kWrite));
  if (!p.ok()) {
    if (!ring_fault_) Count(hot_->errors, 1);
    ring_fault_ = true;
    return false;
  }
  ring_fault_ = false;
  ring_ = reinterpret_cast<volatile uint64_t*>(*p);
  return true;
}

namespace {

// One descriptor's write-back in format F: qw0, qw1, qw3 (qw2 is 0 in every
// format here). `last`: the EOF descriptor, which carries the checksum
// status and the stripped tag (where both drivers read them); the ptype,
// length and hash go in every descriptor of the frame.
struct RxWb {
  uint64_t qw0, qw1, qw3;
};

template <RxDescFormat F>
inline RxWb MakeRxWb(uint64_t len, uint64_t ptype, uint64_t csum_bits, bool has_rss_hash,
                     uint32_t rss_hash, uint32_t l2tag1, bool last) {
  const uint64_t hash = has_rss_hash ? rss_hash : 0;
  const uint64_t tag = last ? (l2tag1 & 0xFFFF) : 0;
  const uint64_t tagp = last ? (l2tag1 >> 16) : 0;  // kL2tag1Present -> 1
  if constexpr (F == RxDescFormat::kLegacy) {
    return {hash << 32 | tag << 16,
            rxd::kDd | ptype << rxd::kPtypeShift | len << rxd::kLenShift |
                (has_rss_hash ? rxd::kFltstatRss : 0) |
                (last ? rxd::kEof | (csum_bits & ~rxd::kCsumEudpe) | tagp << 2 : 0),
            0};
  } else {
    constexpr uint64_t kRxdid = F == RxDescFormat::kFlexNic ? 2 : 22;
    const uint64_t status = rxflex::kDd | (has_rss_hash ? rxflex::kRssValid : 0) |
                            (last ? rxflex::kEof | rxflex::FromLegacyCsum(csum_bits) |
                                        tagp << 13  // L2TAG1P
                                  : 0);
    const uint64_t qw0 = kRxdid | ptype << rxflex::kPtypeShift | len << rxflex::kLenShift;
    if constexpr (F == RxDescFormat::kFlexNic) {
      return {qw0, status | tag << 16 | hash << 32, rxflex::kNoFlowId};
    } else {
      return {qw0, status | tag << 16 | uint64_t{rxflex::kNoFlowId} << 32, hash};
    }
  }
}

// Writes a descriptor back: qw0, qw2 (0), qw3, then qw1 with a release
// store, so the guest sees DD only on a complete descriptor.
inline void StoreRxWb(volatile uint64_t* d, const RxWb& wb) {
  StoreQwRelaxed(&d[0], wb.qw0);
  StoreQwRelaxed(&d[2], 0);
  StoreQwRelaxed(&d[3], wb.qw3);
  StoreQw(&d[1], wb.qw1);
}

}  // namespace

RxDescFormat RxDescFormatOf(uint32_t rxdid) {
  switch (rxdid) {
    case 2: return RxDescFormat::kFlexNic;
    case 22: return RxDescFormat::kFlexOvs;
    default: return RxDescFormat::kLegacy;
  }
}

void RxQueue::WriteErrorDesc(volatile uint64_t* d) {
  RxWb wb;
  switch (fmt_) {
    case RxDescFormat::kLegacy:
      wb = {0, rxd::kErrorDescQw1, 0};
      break;
    default: {
      // DD, EOF, RXE, IPE, L4E and a length of 1 (see rxd::kErrorDescQw1),
      // no hash, no flow id.
      wb = MakeRxWb<RxDescFormat::kFlexNic>(1, 0, 0, false, 0, 0, true);
      if (fmt_ == RxDescFormat::kFlexOvs) {
        wb = MakeRxWb<RxDescFormat::kFlexOvs>(1, 0, 0, false, 0, 0, true);
      }
      wb.qw1 |= rxflex::kRxe | rxflex::kXsumIpe | rxflex::kXsumL4e;
      break;
    }
  }
  StoreRxWb(d, wb);
}

void RxQueue::WriteHeld() {
  StoreRxWb(held_desc_, {held_qw_[0], held_qw_[1], held_qw_[2]});
  held_desc_ = nullptr;
  hot_->head.store(held_next_, std::memory_order_release);
}

RxQueue::DeliverResult RxQueue::Deliver(FrameView frame, uint32_t tail,
                                        vfio_user::DmaMemory& dma, uint64_t csum_bits,
                                        bool has_rss_hash, uint32_t rss_hash, uint32_t l2tag1,
                                        bool may_hold) {
  switch (fmt_) {
    case RxDescFormat::kLegacy:
      return DeliverFast<RxDescFormat::kLegacy>(frame, tail, dma, csum_bits, has_rss_hash,
                                                rss_hash, l2tag1, may_hold);
    case RxDescFormat::kFlexNic:
      return DeliverFast<RxDescFormat::kFlexNic>(frame, tail, dma, csum_bits, has_rss_hash,
                                                 rss_hash, l2tag1, may_hold);
    case RxDescFormat::kFlexOvs:
      return DeliverFast<RxDescFormat::kFlexOvs>(frame, tail, dma, csum_bits, has_rss_hash,
                                                 rss_hash, l2tag1, may_hold);
  }
  return DeliverResult::kDropped;
}

template <RxDescFormat F>
RxQueue::DeliverResult RxQueue::DeliverFast(FrameView frame, uint32_t tail,
                                            vfio_user::DmaMemory& dma, uint64_t csum_bits,
                                            bool has_rss_hash, uint32_t rss_hash,
                                            uint32_t l2tag1, bool may_hold) {
  // The common frame straight through: queue running, tail in the ring, a
  // frame that fits one buffer, the ring translated, its buffer inside the
  // cached window. The same checks and the same order of durable writes as
  // DeliverSlow (intent, descriptor with DD last, head), which takes every
  // other case from the start (after writing a held write-back).
  const uint32_t n = hot_->ring_len;
  const size_t len = frame.size();
  if (tail < n && len - 1 < max_pkt_ && len <= dbuf_ && ring_ != nullptr &&
      hot_->enabled.load(std::memory_order_relaxed) != 0) [[likely]] {
    // With a write-back held, the durable head is still at it.
    const uint32_t h = held_desc_ != nullptr ? held_next_ : head();
    if (h == tail) return DeliverResult::kNoBuffers;  // nothing posted
    volatile uint64_t* d = &ring_[h * 4];
    uint8_t* p = buf_window_.Translate(dma, LoadQw(&d[0]), len, vfio_user::DmaMemory::kWrite);
    if (p != nullptr) [[likely]] {
      bad_tail_ = UINT32_MAX;
      const uint32_t avail = tail > h ? tail - h : tail + n - h;
      if (avail > 9) {  // see DeliverSlow
        uint32_t ahead = h + 9;
        if (ahead >= n) ahead -= n;
        PrefetchForWrite(&ring_[ahead * 4]);
      }
      const uint32_t next = h + 1 == n ? 0 : h + 1;
      hot_->intent.store(next, std::memory_order_release);
      std::memcpy(p, frame.data(), len);
      const RxWb wb = MakeRxWb<F>(len, ClassifyPtype(frame), csum_bits, has_rss_hash, rss_hash,
                                  l2tag1, /*last=*/true);
      wrote_back_ = true;
      if (held_desc_ == nullptr && may_hold && avail > 1 && next != 0 &&
          (reinterpret_cast<uintptr_t>(d) & 63) == 0) {
        // Crash-safe as a write-back in progress: intent is past this frame,
        // head before it, and Recover keeps only descriptors carrying DD.
        held_desc_ = d;
        held_qw_[0] = wb.qw0;
        held_qw_[1] = wb.qw1;
        held_qw_[2] = wb.qw3;
        held_next_ = next;
      } else {
        FlushHeld();  // its line-mate: both descriptors in one ownership of the line
        StoreRxWb(d, wb);
        hot_->head.store(next, std::memory_order_release);
        hot_->intent.store(next, std::memory_order_release);
      }
      Count(hot_->packets, 1);
      Count(hot_->bytes, len);
      // A later buffer, if posted and in the window: ask for its lines
      // (as many as this frame filled) now, so that their ownership
      // transfers overlap other frames' work instead of stalling a copy's
      // stores. A hint only: nothing is read or written there. The next
      // buffer for small frames; for frames of 1 KiB and more, whose copy
      // is most of their cost, the one after it, so each buffer's lines
      // have a whole frame more to arrive (with the loopback's prefetch of
      // the next TX frame, 1518 B, 512-entry rings: +4-9% in three A/B
      // runs; at 64 B the deeper lead cost ~5%, hence the threshold).
      const uint32_t lead = len >= kDeepPrefetchMin ? 2 : 1;
      if (avail > lead) {
        uint32_t later = h + lead;
        if (later >= n) later -= n;
        const uint64_t addr = LoadQw(&ring_[later * 4]);
        if (uint8_t* q = buf_window_.Peek(addr, len)) {
          for (size_t o = 0; o < len; o += 64) PrefetchForWrite(q + o);
        }
      }
      return DeliverResult::kDelivered;
    }
  }
  return DeliverSlow<F>(frame, tail, dma, csum_bits, has_rss_hash, rss_hash, l2tag1);
}

template <RxDescFormat F>
RxQueue::DeliverResult RxQueue::DeliverSlow(FrameView frame, uint32_t tail,
                                            vfio_user::DmaMemory& dma, uint64_t csum_bits,
                                            bool has_rss_hash, uint32_t rss_hash,
                                            uint32_t l2tag1) {
  FlushHeld();
  const uint32_t n = hot_->ring_len;
  if (!enabled() || n == 0) [[unlikely]] {
    Count(hot_->drops, 1);
    return DeliverResult::kDropped;
  }
  if (tail >= n) [[unlikely]] {
    if (tail != bad_tail_) Count(hot_->errors, 1);
    bad_tail_ = tail;
    Count(hot_->drops, 1);
    return DeliverResult::kDropped;
  }
  bad_tail_ = UINT32_MAX;
  if (frame.size() > max_pkt_ || frame.empty()) [[unlikely]] {
    Count(hot_->drops, 1);
    return DeliverResult::kDropped;
  }
  if (!EnsureRing(dma)) [[unlikely]] {
    Count(hot_->drops, 1);
    return DeliverResult::kDropped;
  }
  const uint32_t h = head();
  const uint32_t avail = tail >= h ? tail - h : tail + n - h;
  const uint32_t need =
      frame.size() <= dbuf_ ? 1 : uint32_t((frame.size() + dbuf_ - 1) / dbuf_);
  if (need > avail) return DeliverResult::kNoBuffers;
  // The descriptors a few frames ahead, if posted: the guest wrote them
  // last, so each line is a transfer from its core; ask for it now (for
  // writing: we write it back) instead of stalling on it then.
  if (avail > need + 8) {
    uint32_t ahead = h + need + 8;
    if (ahead >= n) ahead -= n;
    PrefetchForWrite(&ring_[ahead * 4]);
  }

  const uint64_t ptype = ClassifyPtype(frame);
  uint32_t end = h + need >= n ? h + need - n : h + need;
  hot_->intent.store(end, std::memory_order_release);
  size_t done = 0;
  uint32_t idx = h;
  bool ok = true;
  for (uint32_t i = 0; i < need; ++i) {
    volatile uint64_t* d = &ring_[idx * 4];
    uint64_t addr = LoadQw(&d[0]);
    size_t chunk = std::min<size_t>(dbuf_, frame.size() - done);
    bool last = i + 1 == need;
    uint8_t* p = buf_window_.Translate(dma, addr, chunk, vfio_user::DmaMemory::kWrite);
    if (p != nullptr) [[likely]] {
      std::memcpy(p, frame.data() + done, chunk);
      const RxWb wb =
          MakeRxWb<F>(chunk, ptype, csum_bits, has_rss_hash, rss_hash, l2tag1, last);
      StoreRxWb(d, wb);
    } else {
      // Give the buffer back marked bad (RXE + EOF): the driver discards the
      // frame and recycles the buffer; nothing is skipped.
      ok = false;
      last = true;
      WriteErrorDesc(d);
    }
    done += chunk;
    idx = idx + 1 == n ? 0 : idx + 1;
    if (last) break;
  }
  hot_->head.store(idx, std::memory_order_release);
  hot_->intent.store(idx, std::memory_order_release);
  wrote_back_ = true;
  if (!ok) [[unlikely]] {
    Count(hot_->errors, 1);
    Count(hot_->drops, 1);
    return DeliverResult::kDropped;
  }
  Count(hot_->packets, 1);
  Count(hot_->bytes, frame.size());
  return DeliverResult::kDelivered;
}

void RxQueue::Recover(vfio_user::DmaMemory& dma) {
  FlushHeld();
  const uint32_t n = hot_->ring_len;
  uint32_t h = head(), intent = hot_->intent.load();
  if (n == 0 || h == intent || h >= n || intent >= n || !EnsureRing(dma)) {
    hot_->intent.store(h);
    return;
  }
  // Advance over the prefix of [head, intent) whose descriptors carry DD.
  uint32_t i = h;
  bool open_frame = false;  // last written descriptor lacked EOF
  while (i != intent) {
    uint64_t qw1 = LoadQw(&ring_[i * 4 + 1]);
    // DD and EOF sit at the same bits of qw1 in the flex formats.
    static_assert(rxd::kDd == rxflex::kDd && rxd::kEof == rxflex::kEof);
    if ((qw1 & rxd::kDd) == 0) break;
    open_frame = (qw1 & rxd::kEof) == 0;
    i = i + 1 == n ? 0 : i + 1;
  }
  if (open_frame && i != intent) {
    // The crash split a frame: close it with an errored descriptor in the
    // next posted buffer so the driver drops the fragment.
    WriteErrorDesc(&ring_[i * 4]);
    i = i + 1 == n ? 0 : i + 1;
    wrote_back_ = true;
  }
  hot_->head.store(i);
  hot_->intent.store(i);
}

}  // namespace emud::dataplane
