// TX and RX queue engines of an AVF device: they move frames between the
// guest's descriptor rings (through DmaMemory) and a Backend.
//
// Each queue's engine is driven by one data-path thread at a time (its
// lane, dataplane/datapath.h). Every
// value read from guest memory or from a doorbell is untrusted: a bad tail,
// a descriptor pointing outside the DMA map, a zero or oversized length, a
// chain without EOP or with too many buffers ends in a drop/error counter
// and never in an out-of-bounds access or an unbounded loop (one Process /
// Deliver call touches at most ring_len descriptors).
//
// Ring memory is translated once and cached, and so is the DMA window the
// last buffer was found in (DmaWindowCache: every buffer address and length
// is still checked against it); OnDmaUnmap drops both (the next call
// translates again or counts a fault).
#ifndef EMUD_DATAPLANE_QUEUES_H_
#define EMUD_DATAPLANE_QUEUES_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "dataplane/backend.h"
#include "dataplane/offload.h"
#include "dataplane/offload.h"
#include "dataplane/queue_state.h"
#include "vfio_user/device.h"

namespace emud::dataplane {

// AVF TX descriptor fields (16-byte descriptors, qw1).
namespace txd {
inline constexpr uint64_t kDtypeData = 0x0;
inline constexpr uint64_t kDtypeContext = 0x1;
inline constexpr uint64_t kDtypeDone = 0xF;
inline constexpr uint32_t kCmdEop = 0x001;
inline constexpr uint32_t kCmdRs = 0x002;
inline constexpr uint32_t kCmdIl2tag1 = 0x008;  // insert the L2TAG1 field (qw1 63:48)
inline constexpr uint32_t kCmdDummy = 0x010;
inline constexpr uint32_t kCtxCmdTso = 0x1;
inline constexpr uint32_t kCtxCmdIl2tag2 = 0x4;
// Context descriptor qword 0: tunnel parameters (TxTunnel::Decode). EIPT
// (outer IP type, bits 1:0) and L4TUNT (tunnel type, bits 10:9) mark a
// tunnelled packet whose data-descriptor MACLEN is the OUTER L2 length (DPDK
// iavf_fill_ctx_desc_tunnelling_field / iavf_txd_enable_offload, Linux
// iavf_tx_enable_csum).
inline constexpr uint64_t kCtxQw0Eipt = 0x3;
inline constexpr uint64_t kCtxQw0L4tunt = 0x3ull << 9;
// Tunnel qword 0 from byte lengths: eipt 0..3, natt 0..2.
inline uint64_t CtxTunnelQw0(uint32_t eipt, uint32_t eiplen, uint32_t natt, uint32_t natlen,
                             bool l4t_cs = false, bool eip_noinc = false) {
  return uint64_t(eipt) | uint64_t(eiplen / 4) << 2 | uint64_t(natt) << 9 |
         uint64_t(eip_noinc) << 11 | uint64_t(natlen / 2) << 12 | uint64_t(l4t_cs) << 23;
}
inline uint32_t CtxL2tag2(uint64_t qw0) { return uint32_t(qw0 >> 32) & 0xFFFF; }
inline uint64_t DataQw1(uint32_t cmd, uint32_t offset, uint32_t size) {
  return kDtypeData | uint64_t(cmd) << 4 | uint64_t(offset) << 16 | uint64_t(size) << 34;
}
// offset field from byte lengths.
inline uint32_t Offsets(uint32_t maclen, uint32_t iplen, uint32_t l4len) {
  return (maclen / 2) | (iplen / 4) << 7 | (l4len / 4) << 14;
}
inline uint64_t ContextQw1(uint32_t cmd, uint32_t tso_len, uint32_t mss) {
  return kDtypeContext | uint64_t(cmd) << 4 | uint64_t(tso_len) << 30 | uint64_t(mss) << 50;
}
}  // namespace txd

// AVF legacy 32-byte RX write-back fields (qw1).
namespace rxd {
inline constexpr uint64_t kDd = 1ull << 0;
inline constexpr uint64_t kEof = 1ull << 1;
inline constexpr uint64_t kL3L4P = 1ull << 3;
inline constexpr uint64_t kFltstatRss = 3ull << 12;  // qw0[63:32] holds the RSS hash
inline constexpr uint64_t kErrRxe = 1ull << 19;
inline constexpr uint64_t kErrIpe = 1ull << 22;
inline constexpr uint64_t kErrL4e = 1ull << 23;
// EIPE: the outer IPv4 header checksum of a tunnelled packet is wrong.
inline constexpr uint64_t kErrEipe = 1ull << 24;
// Not a legacy bit (qw1 bit 63 is SPH there): in the data path's checksum
// status only, for the flex XSUM_EUDPE (outer UDP checksum wrong), which
// the legacy descriptor cannot carry; its writer drops it.
inline constexpr uint64_t kCsumEudpe = 1ull << 63;
inline constexpr int kPtypeShift = 30;
inline constexpr int kLenShift = 38;
inline uint32_t Len(uint64_t qw1) { return uint32_t(qw1 >> kLenShift) & 0x3FFF; }
// A descriptor the device hands back without a frame in it (a buffer it
// could not write, the tail of a frame torn by a worker crash): DD, EOF, RXE
// and a length of 1. Never 0: Linux before the libeth conversion (<= 6.9,
// iavf_txrx.c:iavf_clean_rx_irq) gets no skb from iavf_build_skb for a
// 0-byte first buffer, takes it for an allocation failure and stops at that
// descriptor on every poll - the RX queue would stall for good. With a
// length the driver builds the skb, sees EOF, then RXE, and drops it.
// DPDK never tests RXE (iavf_rxtx.c:iavf_rxd_to_pkt_flags, the vector
// paths' desc_to_olflags_v) and delivers the byte as a packet: IPE and L4E
// make it checksum-BAD there, ptype 0 unknown. Linux drops on RXE before it
// reads them (iavf_clean_rx_irq).
inline constexpr uint64_t kErrorDescQw1 =
    kDd | kEof | kErrRxe | kErrIpe | kErrL4e | (uint64_t{1} << kLenShift);
inline uint32_t Ptype(uint64_t qw1) { return uint32_t(qw1 >> kPtypeShift) & 0xFF; }
// CheckRxChecksums' result as RxQueue::Deliver's checksum status.
inline uint64_t FromRxCsum(uint32_t c) {
  uint64_t bits = (c & RxCsum::kChecked ? kL3L4P : 0) | (c & RxCsum::kIpBad ? kErrIpe : 0) |
                  (c & RxCsum::kL4Bad ? kErrL4e : 0);
  if (c & (RxCsum::kOuterIpBad | RxCsum::kOuterUdpBad)) [[unlikely]] {
    if (c & RxCsum::kOuterIpBad) bits |= kErrEipe;
    if (c & RxCsum::kOuterUdpBad) bits |= kCsumEudpe;
  }
  return bits;
}
// Status L2TAG1P: qw0 bits 31:16 hold the stripped 802.1Q TCI.
inline constexpr uint64_t kL2tag1p = 1ull << 2;
// RxQueue::Deliver's `l2tag1` argument: this bit plus the TCI.
inline constexpr uint32_t kL2tag1Present = 1u << 16;
}  // namespace rxd

// The 32-byte flex RX write-back (ice_lan_tx_rx.h union ice_32b_rx_flex_desc,
// DPDK iavf_rxtx.h iavf_32b_rx_flex_desc_comms_ovs / Linux ice
// ice_32b_rx_flex_desc_nic), as four little-endian quadwords:
//   qw0: rxdid [5:0] | mirror/umbcast [15:8] | ptype [25:16] (10 bits) |
//        pkt_len [45:32] (14 bits) | hdr_len/sph/ff1 [63:48]
//   qw1: status_error0 [15:0] | l2tag1 [31:16] | bytes 12..15 [63:32]
//   qw2: status_error1, flex_flags2, ts_low, l2tag2 1st/2nd (all 0 here)
//   qw3: bytes 24..27 [31:0] | bytes 28..31 [63:32]
// Bytes 12..15 / 24..27: FLEX_NIC (2) RSS hash / flow id, COMMS_OVS_1 (22)
// flow id / RSS hash. No flow director here: the flow id is 0xFFFFFFFF
// ("none", DPDK iavf_rxd_to_pkt_fields_by_comms_ovs tests it).
namespace rxflex {
inline constexpr uint64_t kDd = 1ull << 0;
inline constexpr uint64_t kEof = 1ull << 1;
inline constexpr uint64_t kL3L4P = 1ull << 3;
inline constexpr uint64_t kXsumIpe = 1ull << 4;
inline constexpr uint64_t kXsumL4e = 1ull << 5;
inline constexpr uint64_t kXsumEipe = 1ull << 6;
inline constexpr uint64_t kXsumEudpe = 1ull << 7;
inline constexpr uint64_t kRxe = 1ull << 10;
inline constexpr uint64_t kRssValid = 1ull << 12;
inline constexpr uint64_t kL2tag1p = 1ull << 13;
inline constexpr int kPtypeShift = 16;
inline constexpr int kLenShift = 32;
inline constexpr uint32_t kNoFlowId = 0xFFFFFFFFu;
inline uint32_t Rxdid(uint64_t qw0) { return uint32_t(qw0) & 0x3F; }
inline uint32_t Ptype(uint64_t qw0) { return uint32_t(qw0 >> kPtypeShift) & 0x3FF; }
inline uint32_t Len(uint64_t qw0) { return uint32_t(qw0 >> kLenShift) & 0x3FFF; }
// The legacy checksum status bits (rxd::kL3L4P/kErrIpe/kErrL4e/kErrEipe
// and rxd::kCsumEudpe, what the data path computes) in status_error0
// (L3L4P, XSUM_IPE, XSUM_L4E, XSUM_EIPE, XSUM_EUDPE).
inline constexpr uint64_t FromLegacyCsum(uint64_t csum_bits) {
  return (csum_bits & rxd::kL3L4P) |
         ((csum_bits & (rxd::kErrIpe | rxd::kErrL4e | rxd::kErrEipe)) >> 18) |
         ((csum_bits >> 63) << 7);
}
static_assert(FromLegacyCsum(rxd::kL3L4P | rxd::kErrIpe | rxd::kErrL4e) ==
              (kL3L4P | kXsumIpe | kXsumL4e));
static_assert(FromLegacyCsum(rxd::kErrEipe | rxd::kCsumEudpe) == (kXsumEipe | kXsumEudpe));
}  // namespace rxflex

// The write-back format of an RX queue, from its RXDID.
enum class RxDescFormat : uint8_t {
  kLegacy,   // RXDID 1: the legacy 32-byte descriptor
  kFlexNic,  // RXDID 2: FLEX_NIC
  kFlexOvs,  // RXDID 22: COMMS_OVS_1 (DPDK's default)
};
// kLegacy for any RXDID not written as flex (the device validated it).
RxDescFormat RxDescFormatOf(uint32_t rxdid);

// The DMA window a queue translated its last buffer in. A buffer inside it
// costs a bounds check and an add instead of a virtual Translate (nearly
// every buffer: guest RAM is one or a few windows). Every address and length
// is still checked against the window, so a hostile descriptor that points
// elsewhere takes the slow path and fails there; the queue drops the window
// in OnDmaUnmap, before the unmap completes (the ring pointer's lifetime).
class DmaWindowCache {
 public:
  using Access = vfio_user::DmaMemory::Access;
  // Host pointer to [iova, iova + len), or nullptr when the range is not
  // inside one mapped window allowing `access` (or len == 0).
  uint8_t* Translate(vfio_user::DmaMemory& dma, uint64_t iova, uint64_t len, Access access) {
    const uint64_t off = iova - w_.iova;
    if (off < w_.size && len - 1 < w_.size - off && (access & ~w_.access) == 0) [[likely]] {
      return w_.host + off;  // len - 1 < size - off: 0 < len <= size - off
    }
    return Slow(dma, iova, len, access);
  }
  void Clear() { w_ = {}; }
  // The cached window only (no lookup), for prefetch hints: nullptr if the
  // range is not inside it.
  uint8_t* Peek(uint64_t iova, uint64_t len) const {
    const uint64_t off = iova - w_.iova;
    return off < w_.size && len - 1 < w_.size - off ? w_.host + off : nullptr;
  }

 private:
  uint8_t* Slow(vfio_user::DmaMemory& dma, uint64_t iova, uint64_t len, Access access);
  vfio_user::DmaMemory::Window w_;  // size 0: empty
};

// The legacy packet type of `frame` (AVF PTYPE table: 1 L2, 11 ARP, 22..28
// IPv4, 88..94 IPv6; tunnels: 43..87 over IPv4, 109..153 over IPv6, see
// ClassifyRxTunnel - only UDP to port 4789/6081 and GRE look further).
uint8_t ClassifyPtype(FrameView frame);

struct QueueLimits {
  uint32_t max_frame = 9728;         // non-TSO frame limit (IAVF_FRAME_SIZE_MAX)
  uint32_t max_tx_buffers = 8;       // data descriptors per non-TSO packet
  // Data descriptors per TSO packet (further bounded by ring_len - 1, the
  // most a driver can post). Linux bounds only each MSS worth of a GSO skb
  // to 8 buffers (iavf_txrx.c:__iavf_chk_linearize), not the whole skb:
  // head + MAX_SKB_FRAGS (17, up to 45) frags, each split at 12 KiB by
  // iavf_tx_map. DPDK accepts TSO mbufs of up to 255 segments
  // (iavf_rxtx.h:IAVF_TSO_MAX_SEG, iavf_prep_pkts) and splits every segment
  // over 16383 bytes into more descriptors (iavf_calc_pkt_desc), ~17 more
  // for a 256 KiB packet. 512 covers both with room.
  uint32_t max_tso_buffers = 512;
  uint32_t max_tso_bytes = 262143 + 256;  // 18-bit TSO_LEN + headers
};

class TxQueue {
 public:
  // The batch arena: copies of gathered, offloaded and segmented frames.
  static constexpr size_t kArenaBytes = size_t{1} << 20;
  // `arena`: kArenaBytes that the caller owns and that outlive the queue, so
  // a queue built again reuses them (a fuzzer builds one per input); null:
  // the queue allocates its own on the first frame that needs it.
  TxQueue(uint16_t id, HotQueue* hot, QueueLimits limits = {}, uint8_t* arena = nullptr);

  // CONFIG_VSI_QUEUES: ring at `ring_addr` of `ring_len` descriptors
  // (0 = unconfigured). Resets the head to 0. INVALID_ARGUMENT for a ring
  // length outside 8..8192 or a misaligned address.
  absl::Status Configure(uint64_t ring_addr, uint32_t ring_len);
  // ENABLE/DISABLE_QUEUES. Enabling an unconfigured queue fails.
  absl::Status SetEnabled(bool on);
  bool enabled() const { return hot_->enabled.load(std::memory_order_relaxed) == 1; }
  uint32_t head() const { return hot_->head.load(std::memory_order_relaxed); }
  uint32_t ring_len() const { return hot_->ring_len; }
  void OnDmaUnmap(uint64_t iova, uint64_t size);
  // Stops the queue because its ring at head() kept killing workers
  // (DataPathOptions::poison_guard): persisted (HotQueue::enabled = 2), so
  // successors leave it stopped; counts an error. SetEnabled(true) restarts.
  void Quarantine();
  bool quarantined() const { return hot_->enabled.load(std::memory_order_relaxed) == 2; }

  struct Result {
    uint32_t packets = 0;     // packets consumed (sent or dropped)
    bool wrote_back = false;  // at least one RS completion written
    bool more = false;        // budget exhausted with work left
  };
  // Transmits the packets in [head, tail), at most `budget` packets.
  // Per packet: checksum offloads / TSO as its descriptors ask (tunnelled
  // too: context EIPT/L4TUNT, see TxTunnel), then VLAN
  // insertion (data CMD.IL2TAG1 + L2TAG1, or context CMD.IL2TAG2 + L2TAG2;
  // into every TSO segment), then padding to 60 bytes. Dropped and counted
  // as malformed (errors + drops): tunnel fields that do not fit the packet
  // (also counted in tunnel_malformed()), both VLAN tags at once, a tag
  // location not enabled (SetVlanInsertion), a context descriptor inside a
  // packet,
  // more than max_tx_buffers (TSO: min(max_tso_buffers, ring_len - 1)) data
  // descriptors, zero-length or unmapped buffers, offsets outside the frame.
  Result Process(uint32_t tail, vfio_user::DmaMemory& dma, Backend& backend, uint32_t budget);

  const HotQueue& stats() const { return *hot_; }
  // Which VLAN insertion requests are honoured (avf::Device::
  // vlan_insert_l2tag1/2); a packet asking for another is malformed. Both
  // by default.
  void SetVlanInsertion(bool l2tag1, bool l2tag2) {
    insert_l2tag1_ = l2tag1;
    insert_l2tag2_ = l2tag2;
  }
  // Packets dropped because the guest's descriptors were malformed (counted
  // in stats().errors AND stats().drops): what GET_STATS takes out of
  // tx_discards so that the drivers' tx_errors + tx_discards counts each
  // packet once. Counted into `total` from now on (DataPath points every
  // queue at the device's persisted DataPathCounters::tx_malformed, so a
  // successor continues the count); by default a counter of this queue.
  void CountMalformedInto(std::atomic<uint64_t>* total) { malformed_ = total; }
  uint64_t malformed() const { return malformed_->load(std::memory_order_relaxed); }
  // Of those, tunnelled packets whose tunnel or inner header lengths do not
  // fit the packet (ValidateTunnel, or the inner offloads refusing them).
  // DataPath points it at DataPathCounters::tx_tunnel_malformed.
  void CountTunnelMalformedInto(std::atomic<uint64_t>* total) { tunnel_malformed_ = total; }
  uint64_t tunnel_malformed() const {
    return tunnel_malformed_->load(std::memory_order_relaxed);
  }
  TxQueue(const TxQueue&) = delete;
  TxQueue& operator=(const TxQueue&) = delete;

  // After a crash: write the completions of a burst whose head was stored
  // but whose write-backs may not have happened (see queue_state.h).
  // Returns how many descriptors were completed.
  uint32_t Recover(vfio_user::DmaMemory& dma);

 private:
  struct Buf {
    uint64_t addr;
    uint32_t len;
    const uint8_t* ptr;  // translated
  };
  bool EnsureRing(vfio_user::DmaMemory& dma);
  void Flush(Backend& backend);
  uint8_t* ArenaAlloc(size_t n, Backend& backend);
  void Count(std::atomic<uint64_t>& c, uint64_t n) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  // A packet the guest described wrongly: error, drop.
  void DropMalformed() {
    Count(hot_->errors, 1);
    Count(hot_->drops, 1);
    malformed_->fetch_add(1, std::memory_order_relaxed);  // shared by every lane's queues
  }

  uint16_t id_;
  HotQueue* hot_;
  QueueLimits limits_;
  std::atomic<uint64_t> own_malformed_{0};
  std::atomic<uint64_t>* malformed_ = &own_malformed_;
  std::atomic<uint64_t> own_tunnel_malformed_{0};
  std::atomic<uint64_t>* tunnel_malformed_ = &own_tunnel_malformed_;
  volatile uint64_t* ring_ = nullptr;  // cached translation of the ring
  DmaWindowCache buf_window_;          // cached window of the buffers
  uint32_t bad_tail_ = UINT32_MAX;
  bool ring_fault_ = false;
  // Current batch.
  std::vector<FrameView> frames_;
  struct Completion {
    uint32_t idx;
    uint64_t qw1;  // as read, for crash recovery
  };
  std::vector<Completion> completions_;  // RS descriptors to write back
  uint32_t batch_head_ = 0;            // head after the batch's packets
  std::unique_ptr<uint8_t[]> own_arena_;
  uint8_t* arena_;  // own_arena_ or the caller's; kArenaBytes
  size_t arena_used_ = 0;
  std::vector<uint8_t> tso_scratch_;
  // The current packet's buffers; sized once to the per-packet maximum
  // (never per packet).
  std::vector<Buf> bufs_;
  bool wrote_back_ = false;
  bool insert_l2tag1_ = true;
  bool insert_l2tag2_ = true;
};

class RxQueue {
 public:
  RxQueue(uint16_t id, HotQueue* hot, QueueLimits limits = {});

  // CONFIG_VSI_QUEUES rxq_info. Resets the head to 0 (tail values written
  // before are kept by the register file). Validates ring_len 8..8192,
  // databuffer_size 128..16256 (multiple of 128 not required), max_pkt_size
  // 64..max_frame.
  absl::Status Configure(uint64_t ring_addr, uint32_t ring_len, uint32_t databuffer_size,
                         uint32_t max_pkt_size);
  absl::Status SetEnabled(bool on);
  bool enabled() const { return hot_->enabled.load(std::memory_order_relaxed) != 0; }
  uint32_t head() const { return hot_->head.load(std::memory_order_relaxed); }
  void OnDmaUnmap(uint64_t iova, uint64_t size);

  enum class DeliverResult { kDelivered, kNoBuffers, kDropped };
  // Writes `frame` into the buffers posted in [head, tail). kNoBuffers: not
  // enough posted buffers (nothing written); kDropped: the frame was
  // discarded (too long, queue disabled, bad tail, DMA fault; counted).
  // `csum_bits`: L3L4P / IPE / L4E for the last descriptor (rxd::).
  // `rss_hash` (when `has_rss_hash`): reported in the descriptor (qw0 bits
  // 63:32, FLTSTAT = 3). Scalars, not a std::optional: GCC builds an
  // optional argument with two stores and reloads it as one word, a failed
  // store forwarding that waits for every older store (the previous
  // frame's copy) to drain.
  // `l2tag1`: rxd::kL2tag1Present | TCI for a frame whose 802.1Q tag was
  // stripped (VLAN stripping; `frame` is the untagged rest): reported in
  // the EOF descriptor (qw0 bits 31:16, status L2TAG1P); 0 for none.
  // `may_hold`: a frame whose descriptor opens a cache line (the next one,
  // posted, shares it) may have its write-back, and the head past it, held
  // until the next frame's, so that the line a polling guest keeps reading
  // is taken from it once for two descriptors instead of once each. The
  // frame's bytes are written either way; `holding()` says a write-back is
  // held, and the caller must FlushHeld() before the burst ends. Without it
  // (the default) every write-back is done on return.
  DeliverResult Deliver(FrameView frame, uint32_t tail, vfio_user::DmaMemory& dma,
                        uint64_t csum_bits = 0, bool has_rss_hash = false,
                        uint32_t rss_hash = 0, uint32_t l2tag1 = 0, bool may_hold = false);
  bool holding() const { return held_desc_ != nullptr; }
  // Writes the held descriptor (DD last) and moves the head past it. Every
  // other operation on the queue does this first, so a held write-back never
  // outlives the data path's burst.
  void FlushHeld() {
    if (held_desc_ != nullptr) WriteHeld();
  }

  // Descriptors written since the last call (for interrupt decisions).
  bool TakeWroteBack() {
    bool w = wrote_back_;
    wrote_back_ = false;
    return w;
  }
  // The write-back format (from the queue context's RXDID); set before the
  // queue runs, and before Recover on a successor.
  void SetDescFormat(RxDescFormat f) { fmt_ = f; }
  RxDescFormat desc_format() const { return fmt_; }
  // After a crash: reconcile head with the ring (see queue_state.h).
  void Recover(vfio_user::DmaMemory& dma);
  // A successor's engine takes the buffer geometry from the restored queue
  // context (the ring position comes from the hot state, untouched).
  void SetBufferSizes(uint32_t databuffer_size, uint32_t max_pkt_size) {
    if (databuffer_size >= 128 && databuffer_size <= 16256) dbuf_ = databuffer_size;
    if (max_pkt_size >= 64 && max_pkt_size <= limits_.max_frame) max_pkt_ = max_pkt_size;
  }

  const HotQueue& stats() const { return *hot_; }
  void CountDrop() { Count(hot_->drops, 1); }

 private:
  bool EnsureRing(vfio_user::DmaMemory& dma);
  // Deliver in format F: one branch on the queue's format per frame, then
  // straight-line descriptor stores.
  template <RxDescFormat F>
  DeliverResult DeliverFast(FrameView frame, uint32_t tail, vfio_user::DmaMemory& dma,
                            uint64_t csum_bits, bool has_rss_hash, uint32_t rss_hash,
                            uint32_t l2tag1, bool may_hold);
  // The descriptor of a buffer given back without a frame (kErrorDescQw1 or
  // its flex equivalent: DD, EOF, RXE, checksum errors, length 1).
  void WriteErrorDesc(volatile uint64_t* d);
  void WriteHeld();
  // Deliver for every case (several buffers, errors, the first frame).
  template <RxDescFormat F>
  __attribute__((noinline)) DeliverResult DeliverSlow(FrameView frame, uint32_t tail,
                                                      vfio_user::DmaMemory& dma,
                                                      uint64_t csum_bits, bool has_rss_hash,
                                                      uint32_t rss_hash, uint32_t l2tag1);
  void Count(std::atomic<uint64_t>& c, uint64_t n) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }

  uint16_t id_;
  HotQueue* hot_;
  QueueLimits limits_;
  uint32_t dbuf_ = 2048;
  uint32_t max_pkt_ = 1518;
  volatile uint64_t* ring_ = nullptr;
  DmaWindowCache buf_window_;
  uint32_t bad_tail_ = UINT32_MAX;
  bool ring_fault_ = false;
  bool wrote_back_ = false;
  RxDescFormat fmt_ = RxDescFormat::kLegacy;
  // A held write-back (Deliver's may_hold): the descriptor, its qw0/qw1/qw3,
  // and the head after it. The hot state's intent already covers it.
  volatile uint64_t* held_desc_ = nullptr;
  uint64_t held_qw_[3] = {0, 0, 0};
  uint32_t held_next_ = 0;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_QUEUES_H_
