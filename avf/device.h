// avf::Device: an emulated Intel Ethernet Adaptive Virtual Function
// (PCI 8086:1889) as a vfio_user::PciDevice.
//
// The model does what the PF driver plus silicon do for a VF: PCI identity
// and config space (MSI-X with 1 + 16..64 vectors, PCIe with FLR), the BAR0
// registers, the admin-queue mailbox, virtchnl 1.1 (as the ice PF answers
// it), VF reset, and the queue contexts the data path runs on. It moves no
// packets itself: the data path (dataplane/, issue 5) sits on top of the API
// at the end of this header (queue contexts, tails, doorbell and lifecycle
// hooks, interrupt raising, filters, RSS, stats).
//
// Threading: not thread-safe. Every method, including the data-path API and
// every hook callback, runs on the one event loop that owns the device (the
// vfio-user session's). Hooks are called synchronously from inside region
// writes (doorbells) and virtchnl handling (queue start/stop, stats).
//
// virtchnl answers (virtchnl_pf.cc): one reply per request with the same
// opcode (none for RESET_VF and for a granted REQUEST_QUEUES, which resets);
// ERR_PARAM for a message failing the length rules or carrying bad fields
// (foreign VSI, queue beyond those granted, ring outside the DMA map, ...),
// NOT_SUPPORTED for any opcode not implemented; never the AQ ERR flag.
// EVENT LINK_CHANGE follows a successful ENABLE_QUEUES that starts the first
// queue (none was running before) or finds the link changed since it was
// last reported, and any SetLink change while queues run. Linux iavf and
// DPDK net/iavf bring-up orders are both exercised by tests/guest.
//
// Hostile input: register writes, descriptors and messages from the guest are
// validated; bad ones are ignored or refused with an AVF/virtchnl error
// status and counted in counters(); nothing crashes, hangs or touches memory
// outside the DMA map (avf/fuzz holds a libFuzzer target checking that).
#ifndef EMUD_AVF_DEVICE_H_
#define EMUD_AVF_DEVICE_H_

#include <array>
#include <bitset>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "avf/admin_queue.h"
#include "avf/interrupts.h"
#include "avf/regs.h"
#include "avf/virtchnl.h"
#include "base/mapped_file.h"
#include "base/poison_guard.h"
#include "base/unique_fd.h"
#include "vfio_user/device.h"
#include "vfio_user/msix_table.h"
#include "vfio_user/pci_config_space.h"
#include "worker_api/counters.h"

namespace emud::avf {

using MacAddr = std::array<uint8_t, 6>;

// Capabilities the device grants when asked (requested & supported; RSS_AQ
// never; RSS_REG, when supported, to every VF not granted RSS_PF, asked for
// or not, as i40e does; ice itself has stopped granting RSS_REG). CRC as ice
// grants it (ice_vc_get_vf_res_msg: to a VF asking): an RX queue configured
// with crc_disable gets frames with their Ethernet FCS (DPDK's KEEP_CRC,
// Linux's rx-fcs). VLAN_V2 to a driver asking for it, else VLAN, never both,
// as ice_vc_get_vf_res_msg grants them. ENCAP and ENCAP_CSUM as ice grants
// them (whenever asked): the data path performs tunnel (VXLAN/GENEVE/GRE/
// IPIP) checksum offloads and TSO from the context descriptor's tunnelling
// fields (dataplane/offload.h TxTunnel). LARGE_NUM_QPAIRS is granted only to
// a device of more than 16 queue pairs (as ice grants it only to a VF given
// a bigger RSS LUT). RX_POLLING and RSS_PCTYPE_V2 carry no opcode and no
// behaviour in ice (granted when asked): RX_POLLING is a hint DPDK and VPP
// send, RSS_PCTYPE_V2 only changes Linux's default HENA on the RSS_REG path,
// whose SYN-without-ACK types (34/44) kRssHenaCaps accepts. RX_FLEX_DESC as
// ice grants it (to a VF asking): RX queues may then be configured with any
// RXDID of kSupportedRxdids.
inline constexpr uint32_t kDefaultSupportedCaps =
    vc::kCapL2 | vc::kCapRssPf | vc::kCapRssReg | vc::kCapWbOnItr | vc::kCapReqQueues |
    vc::kCapAdvLinkSpeed | vc::kCapLargeNumQpairs | vc::kCapCrc | vc::kCapVlan | vc::kCapVlanV2 |
    vc::kCapEncap | vc::kCapEncapCsum | vc::kCapRxPolling | vc::kCapRssPctypeV2 | vc::kCapRxFlexDesc;

// GET_SUPPORTED_RXDIDS (bit n: RXDID n). ice answers BIT(LEGACY_1) plus the
// flex profiles its DDP package enables (ice_vc_query_rxdid; the OS default
// package: 2 and 16..22). emud writes the profiles whose metadata it has:
// the legacy descriptor (1), FLEX_NIC (2: RSS hash, ptype, VLAN; Linux iavf
// asks it with PTP) and COMMS_OVS_1 (22: DPDK's default, the same fields).
// Not offered: 16..21, whose extraction words carry DDP-defined protocol
// fields (IPv4/IPv6/TCP header words, flow labels) emud does not extract;
// DPDK asked for one falls back to RXDID 1 (iavf_configure_queues), as on
// an ice PF whose package lacks it. Never 0 (16-byte legacy), as ice.
inline constexpr uint64_t kSupportedRxdids = (uint64_t{1} << vc::kRxdidLegacy1) |
                                             (uint64_t{1} << vc::kRxdidFlexNic) |
                                             (uint64_t{1} << vc::kRxdidCommsOvs1);
constexpr bool RxdidSupported(uint32_t rxdid) { return rxdid < 64 && (kSupportedRxdids >> rxdid & 1); }

// MSI-X vectors of a device offering `max_queue_pairs`: 17 (misc + 16, what
// an ice VF gets by default, ICE_NUM_VF_MSIX_MED) up to 16 queue pairs, else
// one per queue pair plus misc (at most 65, ICE_NUM_VF_MSIX_MAX).
constexpr uint32_t DeviceMsixVectors(uint32_t max_queue_pairs) {
  return max_queue_pairs <= kLegacyMaxQueuePairs ? 1 + kLegacyMaxQueuePairs
         : max_queue_pairs >= kMaxQueuePairs     ? kMaxMsixVectors
                                                 : 1 + max_queue_pairs;
}

// A set of queues (bit q = queue q; kMaxQueuePairs <= 64).
using QueueMask = uint64_t;
static_assert(kMaxQueuePairs <= 64);

// VLAN filters a VF may hold (ice's ICE_MAX_VLAN_PER_VF for an untrusted
// VF; VLAN 0 is implicit and never counted). VLAN_V2 reports it as
// max_filters; legacy ADD_VLAN stops adding, answering success, once
// non-zero filters + 1 reach it (ice_vf_has_max_vlans).
inline constexpr uint32_t kMaxVlanFilters = 8;

// What GET_OFFLOAD_VLAN_V2_CAPS answers: ice in single VLAN mode for a VF
// without a port VLAN (ice_virtchnl.c:ice_vc_set_svm_caps): filtering,
// stripping and insertion of the one 802.1Q tag, toggleable, stripped into
// and inserted from L2TAG1; no 802.1ad (ice offers 0x88a8 only as the outer
// tag in double VLAN mode, which this model does not emulate).
vc::VlanCaps VlanV2Caps();

// RSS hash types (i40e PCTYPE bits) the VF hashes on after power-on and
// every VF reset, before (and unless) the driver sends SET_RSS_HENA: the
// PF's default, I40E_DEFAULT_RSS_HENA - IPv4/IPv6 UDP (31/41), TCP (33/43),
// SCTP (35/45), other (36/46), fragments (38/48) and L2 payload (63). The
// i40e PF programs it into the VF's HENA when it creates the VF VSI
// (i40e_virtchnl_pf.c:i40e_alloc_vsi_res) and ice does the same
// (ice_vsi_set_vf_rss_flow_fld); Linux iavf with RSS_PF never sends
// SET_RSS_HENA (iavf_main.c:iavf_init_rss only queues CONFIG_RSS_KEY/LUT), so
// without this default a Linux guest gets no RSS hash and no spreading.
inline constexpr uint64_t kRssHenaDefault =
    (1ull << 31) | (1ull << 33) | (1ull << 35) | (1ull << 36) | (1ull << 38) | (1ull << 41) |
    (1ull << 43) | (1ull << 45) | (1ull << 46) | (1ull << 48) | (1ull << 63);
// RSS hash types offered by GET_RSS_HENA_CAPS (and accepted by SET_RSS_HENA):
// the default plus the "expanded" TCP SYN-without-ACK types (34/44).
inline constexpr uint64_t kRssHenaCaps = kRssHenaDefault | (1ull << 34) | (1ull << 44);

inline constexpr uint16_t kVsiId = 1;

struct DeviceOptions {
  // Queue pairs the VSI offers (1..kMaxQueuePairs = 64); REQUEST_QUEUES may
  // change the number granted after a VF reset, up to this many. A driver
  // that does not negotiate LARGE_NUM_QPAIRS gets at most 16. The device has
  // DeviceMsixVectors(max_queue_pairs) MSI-X vectors.
  uint32_t max_queue_pairs = 4;
  // Permanent MAC in GET_VF_RESOURCES; all zero lets the driver pick a
  // random one (Linux then adds it with ADD_ETH_ADDR).
  MacAddr mac{};
  uint32_t supported_caps = kDefaultSupportedCaps;
  // "Physical" link reported with LINK_CHANGE when the first queue starts.
  bool link_up = true;
  uint32_t link_speed_mbps = 25000;
  // Doorbells: trapped (every QTX/QRX_TAIL write is a region write and calls
  // the doorbell hook) or mapped (BAR0 [0, 0x3000) - the tail registers and
  // VFINT_ITRN1 - is an mmappable sparse area; the guest writes tails without
  // a trap, no doorbell hook runs, the data path polls TxTail()/RxTail()).
  // In both modes that window lives in a memfd (tmpfs: it survives a process
  // kill), so a trapped tail write is self-durable (WriteIsSelfDurable); only
  // mapped mode advertises it as mmappable. The memfd's page after the window
  // (never mapped by the client) holds the queue vectors' state
  // (InterruptController::kWordArmed...), so that the interrupt re-arm path
  // (DYN_CTLN, ITRN writes) is self-durable too.
  bool mapped_doorbells = false;
  // Adopt this memfd (size >= kDoorbellWindowSize; e.g. handed over by a
  // predecessor through the fd store; ownership is taken) instead of creating
  // one, in either mode. -1 = create. Its tails (and ITRN values) are newer
  // than any saved record: Restore keeps them.
  int doorbell_fd = -1;
  // Poison-message quarantine (optional, not owned): every admin-queue
  // message is handled inside PoisonGuard::kVirtchnl, keyed by its opcode,
  // ATQ slot and bytes; one that PoisonGuard::kQuarantineAfter workers died
  // handling is answered ADMIN_QUEUE_ERROR in its ARQ descriptor without
  // being applied, and counted (Counters::vc_quarantined).
  PoisonGuard* poison_guard = nullptr;
};

// Queue contexts, from CONFIG_VSI_QUEUES, validated against the DMA map at
// configuration time (the data path must still handle a later DMA_UNMAP:
// see DataPathHooks::OnDmaUnmap).
struct TxQueueContext {
  bool configured = false;  // a ring was given (ring_len > 0)
  bool enabled = false;     // started by ENABLE_QUEUES, not stopped since
  uint64_t ring_addr = 0;   // IOVA of descriptor 0 (16-byte descriptors)
  uint32_t ring_len = 0;    // descriptors: 64..8160, multiple of 32
  uint32_t msix_vector = 0; // from CONFIG_IRQ_MAP; 0 = unmapped or mapped to
                            // the misc vector: no queue interrupt
  uint32_t itr_index = kItrIndexNone;  // ITR register the vector coalesces with
};

struct RxQueueContext {
  bool configured = false;
  bool enabled = false;
  uint64_t ring_addr = 0;    // IOVA of descriptor 0 (32-byte legacy descriptors)
  uint32_t ring_len = 0;     // descriptors: 64..8160, multiple of 32
  uint32_t buffer_size = 0;  // bytes per posted buffer (databuffer_size & ~127)
  uint32_t max_frame = 0;    // largest frame to deliver (max_pkt_size, <= 9728)
  bool keep_crc = false;     // crc_disable (only with the CRC cap)
  // Write-back format (vc::kRxdid*): 1 unless RX_FLEX_DESC was granted and
  // the driver asked for another of kSupportedRxdids.
  uint8_t rxdid = vc::kRxdidLegacy1;
  uint32_t msix_vector = 0;
  uint32_t itr_index = kItrIndexNone;
};

enum class QueueKind : uint8_t { kRx, kTx };

struct RssConfig {
  std::array<uint8_t, kRssKeySize> key{};
  std::array<uint8_t, kRssLutSize> lut{};
  uint64_t hena = kRssHenaDefault;  // the PF default until SET_RSS_HENA
  uint32_t hfunc = 0;  // 0 Toeplitz, 1 XOR, 2 symmetric Toeplitz, 3 symmetric XOR
};

struct MacFilterEntry {
  MacAddr addr{};
  uint8_t type = 0;  // virtchnl: 0 legacy, 1 primary, 2 extra
};

// Counters of refused guest input and notable events.
// (worker_api/counters.h: EMUD_AVF_COUNTERS lists them with their meaning.)
struct DeviceCounters {
#define EMUD_AVF_COUNTER_FIELD(name, help) uint64_t name = 0;
  EMUD_AVF_COUNTERS(EMUD_AVF_COUNTER_FIELD)
#undef EMUD_AVF_COUNTER_FIELD
  // Replies posted to the driver, by (virtchnl op, status); events excluded.
  std::map<std::pair<uint32_t, int32_t>, uint64_t> vc_replies;
};

// What the data path implements; every method has a default so a control-
// plane-only user (tests, the test rig) can leave it unset.
class DataPathHooks {
 public:
  virtual ~DataPathHooks() = default;
  // Trapped doorbells only: the guest wrote QTX_TAIL(queue) / QRX_TAIL(queue)
  // of an enabled queue with a value < ring_len (out-of-range tails are
  // counted and not reported). Read the tail with TxTail()/RxTail().
  virtual void OnTxDoorbell(uint32_t /*queue*/) {}
  virtual void OnRxDoorbell(uint32_t /*queue*/) {}
  // ENABLE_QUEUES(_V2) started these queues (bit q = queue q; only queues
  // that were not running). Contexts are final; the device's ring heads
  // start at descriptor 0. Called before the reply reaches the guest.
  virtual void OnQueuesEnabled(QueueMask /*rx_mask*/, QueueMask /*tx_mask*/) {}
  // These queues stop (DISABLE_QUEUES(_V2), CONFIG_VSI_QUEUES of a running
  // queue, VF reset, FLR). The data path must have stopped all DMA to their
  // rings when this returns; the guest sees the reply / reset only afterwards.
  virtual void OnQueuesDisabled(QueueMask /*rx_mask*/, QueueMask /*tx_mask*/) {}
  // GET_STATS: fill the VSI totals (all queues; zeros if not overridden).
  virtual void GetStats(vc::EthStats* /*stats*/) {}
  // MAC filters, VLAN filters or promiscuous flags changed (read them with
  // mac_filters() / vlan_filters() / promisc_flags()).
  virtual void OnFiltersChanged() {}
  // The guest is unmapping [iova, iova + size): drop every pointer into it
  // before returning (called from PciDevice::OnDmaUnmap).
  virtual void OnDmaUnmap(uint64_t /*iova*/, uint64_t /*size*/) {}
};

class Device final : public vfio_user::PciDevice {
 public:
  // The namespace of this device's records (RecordNamespace(); the
  // session's state_store table, which the worker's Env lists).
  static constexpr char kStateTable[] = "avf";

  // INVALID_ARGUMENT for bad options (queue count, doorbell fd).
  static absl::StatusOr<std::unique_ptr<Device>> Create(const DeviceOptions& options);
  ~Device() override;

  // ---- vfio_user::PciDevice ----
  std::vector<vfio_user::RegionDesc> Regions() const override;
  std::vector<vfio_user::IrqDesc> Irqs() const override;
  absl::Status RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out) override;
  absl::Status RegionWrite(uint32_t region, uint64_t offset,
                           absl::Span<const uint8_t> data) override;
  void Attach(const vfio_user::DeviceContext& ctx) override;
  void Detach() override;
  // DEVICE_RESET / FLR: power-on state (config space, MSI-X, VF state,
  // negotiated version and queue count); RSTAT then steps 0 -> 1 -> 2 on
  // successive reads.
  absl::Status Reset() override;
  void OnDmaUnmap(uint64_t iova, uint64_t size) override;
  // Records (namespace kStateTable): identity, regs, aq, irq, vf, pci. Save
  // puts only those whose bytes differ from what `records` holds (no state
  // outside the records, so an aborted or retried commit loses nothing).
  absl::string_view RecordNamespace() const override { return kStateTable; }
  absl::Status Save(vfio_user::DeviceRecordWriter& records) override;
  // NOT_FOUND if nothing was saved; FAILED_PRECONDITION if the records were
  // written by a device with other options (queue count, doorbell mode).
  absl::Status Restore(const vfio_user::DeviceRecordReader& records) override;
  // True for a BAR0 write of 4 or 8 bytes, dword-aligned, lying entirely in
  // QTX_TAIL(0..255) or QRX_TAIL(0..255): its only state effect is the tail
  // store into the doorbell memfd (plus the doorbell hook, whose data path
  // keeps its own tmpfs state), and storing the same tail twice equals once.
  // Also for a 4-byte VFINT_DYN_CTLN1(0..15) or VFINT_ITRN1 write (Linux
  // iavf's re-arm after every NAPI poll, iavf_txrx.c:iavf_update_enable_itr,
  // and its ITR settings): the vector's state is one word and the ITRN a
  // dword of the memfd, each changed by one store, a fire's eventfd write
  // before the store that disarms (avf/interrupts.h). Applying the same
  // write again can only re-arm a vector that fired: at most one spurious
  // interrupt, never a lost one. Never while a VF reset is pending (the next
  // register access performs it, which must be committed).
  bool WriteIsSelfDurable(uint32_t region, uint64_t offset, uint64_t size) const override;
  // Every config-space, BAR3 (MSI-X table) and BAR0 write except ATQT and
  // ARQT: those run the admin queue, which writes descriptors and replies
  // into guest memory at once (and may start queues). Config writes (an FLR
  // included) and register writes change device state and at most raise
  // interrupts.
  bool WriteIsDeferrable(uint32_t region, uint64_t offset, uint64_t size) const override;
  // Reads with side effects: BAR0 VFINT_ICR01 (read-to-clear), VFGEN_RSTAT
  // while a reset is still stepping it, any BAR0 register but ATQH while a
  // VF reset is pending (the read performs the reset), and an odd-sized
  // BAR0 read covering one of those. Config space and BAR3 (MSI-X table,
  // PBA) reads change nothing.
  bool ReadHasSideEffects(uint32_t region, uint64_t offset, uint64_t size) const override;
  // The sum of the records' generations (Touch moves one on every change).
  uint64_t StateGeneration() const override;

  // ---- BAR0 register access (also what RegionRead/Write of BAR0 use) ----
  // `offset` is 4-byte aligned, < kBar0Size. Reads have the register's side
  // effects (ICR01 read-to-clear, RSTAT progress after a reset).
  uint32_t ReadReg(uint32_t offset);
  void WriteReg(uint32_t offset, uint32_t value);

  // ---- Data-path API ----
  void set_hooks(DataPathHooks* hooks) { hooks_ = hooks; }
  // Guest memory of the attached client; nullptr while detached.
  vfio_user::DmaMemory* dma() const { return ctx_.dma; }
  // Queue pairs currently granted to the VF (queues 0..n-1 are valid).
  uint32_t num_queue_pairs() const { return num_queue_pairs_; }
  // Contexts of queue q (unconfigured beyond the granted ones; one
  // unconfigured context for any q >= options().max_queue_pairs).
  const TxQueueContext& tx_queue(uint32_t q) const { return q < txq_.size() ? txq_[q] : kNoTxq; }
  const RxQueueContext& rx_queue(uint32_t q) const { return q < rxq_.size() ? rxq_[q] : kNoRxq; }
  // MSI-X vectors of this device (misc included): DeviceMsixVectors().
  uint32_t msix_vectors() const { return msix_.num_vectors(); }
  // Last value the guest wrote to QTX_TAIL(q) / QRX_TAIL(q) (q < 256). Raw:
  // it may be >= ring_len, which the data path must treat as "no new work".
  // In mapped mode this reads the shared doorbell page.
  uint32_t TxTail(uint32_t q) const;
  uint32_t RxTail(uint32_t q) const;
  // Signals the completion interrupt of queue q: the MSI-X vector mapped by
  // CONFIG_IRQ_MAP fires if armed (then auto-masks until the driver writes
  // INTENA again), else stays pending and fires on re-arm. No-op for a
  // queue unmapped or mapped to vector 0 (DPDK without WB_ON_ITR polls).
  // Returns true if the vector fired now.
  bool RaiseQueueInterrupt(QueueKind kind, uint32_t q);
  // Same for queue vector `msix_vector` (1..msix_vectors() - 1) directly.
  bool RaiseVector(uint32_t msix_vector);
  // Armed/pending/WB_ON_ITR/ITR intervals of a vector, for coalescing.
  VectorState vector_state(uint32_t msix_vector) const { return irq_->state(msix_vector); }
  // Receive filtering state from virtchnl.
  const std::vector<MacFilterEntry>& mac_filters() const { return macs_; }
  uint16_t promisc_flags() const { return promisc_flags_; }  // vc::kPromisc*
  // VLAN IDs (1..4095) with a filter; VLAN 0 (untagged and priority-tagged
  // frames) always passes.
  const std::bitset<4096>& vlan_filters() const { return vlans_; }
  // Whether the data path filters received 802.1Q frames by VLAN ID: once
  // VLAN or VLAN_V2 is granted (ice prunes a VF VSI's VLANs); bypassed by
  // either promiscuous flag (ice's VLAN promiscuous mode).
  bool vlan_filtering() const { return (granted_caps_ & (vc::kCapVlan | vc::kCapVlanV2)) != 0; }
  // 802.1Q stripping into L2TAG1 (legacy ENABLE_VLAN_STRIPPING or
  // ENABLE_VLAN_STRIPPING_V2 inner 0x8100; on after GET_VF_RESOURCES for a
  // driver asking for VLAN, as ice_vf_init_vlan_stripping).
  bool vlan_strip() const { return vlan_strip_; }
  // TX VLAN insertion the data path performs: from the data descriptor's
  // L2TAG1 unless VLAN_V2 insertion was disabled
  // (DISABLE_VLAN_INSERTION_V2); from the context descriptor's L2TAG2 only
  // without VLAN_V2 (the VLAN_V2 caps offer the L2TAG1 location only).
  bool vlan_insert_l2tag1() const { return !vlan_insert_off_; }
  bool vlan_insert_l2tag2() const { return !(granted_caps_ & vc::kCapVlanV2); }
  const RssConfig& rss() const { return rss_; }
  uint32_t granted_caps() const { return granted_caps_; }
  // Changes the "physical" link; sends LINK_CHANGE now if queues are running.
  void SetLink(bool up, uint32_t speed_mbps);
  // A PF-initiated VF reset (what the PF does on "ip link set ... vf N
  // trust/mac" or recovery): EVENT RESET_IMPENDING on the ARQ, then the same
  // reset as RESET_VF. The driver notices (ARQLEN.ENABLE == 0) and
  // re-initialises.
  void ResetVfFromPf();
  // The memfd backing BAR0 [0, kDoorbellWindowSize) in either doorbell mode
  // (owned by the device; dup it to hand it over, e.g. deposit it in the fd
  // store so that a successor adopts it through DeviceOptions::doorbell_fd).
  int doorbell_fd() const { return doorbell_fd_.get(); }
  // Whether the doorbell memfd was adopted (DeviceOptions::doorbell_fd).
  bool doorbell_adopted() const { return doorbell_adopted_; }

  // ---- Diagnostics ----
  const DeviceCounters& counters() const { return counters_; }
  const AdminQueueCounters& aq_counters() const { return aq_.counters(); }
  uint64_t interrupts_fired() const { return irq_->fired(); }
  const DeviceOptions& options() const { return options_; }
  const vfio_user::PciConfigSpace& config_space() const { return *config_; }
  // Test hook: every memoized record whose generation did not move since the
  // previous call still equals a fresh serialization (a missed Touch would
  // show here); then refreshes the memo.
  bool SaveCacheConsistentForTest();

 private:
  explicit Device(const DeviceOptions& options);
  absl::Status Init();
  absl::Status InitConfigSpace();

  // Register helpers.
  uint32_t DoorbellRead(uint32_t index) const;
  void DoorbellWrite(uint32_t index, uint32_t value);
  // Zeroes the QTX_TAIL and QRX_TAIL registers of all kMaxDecodedQueues.
  void ZeroTails();
  // 1 + the last of the kMaxDecodedQueues tail registers from doorbell
  // index `first_index` on that is not zero (0: all are).
  uint32_t TailsInUse(uint32_t first_index) const;
  void OnTailWrite(QueueKind kind, uint32_t q, uint32_t value);
  // Records a BAR0 write at `off` may change (bit per Record).
  uint32_t RecordsWrittenBy(uint32_t off) const;

  // Admin queue / virtchnl (virtchnl_pf.cc).
  void RunAtq();
  AdminQueue::Next HandleVfMessage(uint32_t v_op, absl::Span<const uint8_t> msg, bool dma_error);
  void Reply(uint32_t v_op, int32_t status, absl::Span<const uint8_t> payload = {});
  void SendLinkEvent();
  bool AnyQueueEnabled() const;
  int32_t OpVersion(absl::Span<const uint8_t> msg, std::vector<uint8_t>* out);
  int32_t OpGetVfResources(absl::Span<const uint8_t> msg, std::vector<uint8_t>* out);
  int32_t OpConfigVsiQueues(absl::Span<const uint8_t> msg);
  int32_t OpConfigIrqMap(absl::Span<const uint8_t> msg);
  int32_t OpEnableQueues(absl::Span<const uint8_t> msg);
  int32_t OpDisableQueues(absl::Span<const uint8_t> msg);
  // LARGE_NUM_QPAIRS ops (ice: virt/queues.c ice_vc_ena_qs_v2_msg,
  // ice_vc_dis_qs_v2_msg, ice_vc_map_q_vector_msg; virt/rss.c
  // ice_vc_get_max_rss_qregion).
  int32_t OpQueuesV2(absl::Span<const uint8_t> msg, bool enable);
  int32_t OpMapQueueVector(absl::Span<const uint8_t> msg);
  int32_t OpGetMaxRssQregion(std::vector<uint8_t>* out);
  int32_t OpGetSupportedRxdids(std::vector<uint8_t>* out);
  int32_t EnableQueueMasks(QueueMask rx, QueueMask tx);
  // Queue pairs a driver may hold: all with LARGE_NUM_QPAIRS, else 16.
  uint32_t QueuePairLimit() const;
  int32_t OpEthAddr(absl::Span<const uint8_t> msg, bool add);
  int32_t OpVlan(absl::Span<const uint8_t> msg, bool add);
  int32_t OpVlanStripping(bool enable);
  int32_t OpGetVlanV2Caps(std::vector<uint8_t>* out);
  int32_t OpVlanV2(absl::Span<const uint8_t> msg, bool add);
  int32_t OpVlanSettingV2(uint32_t v_op, absl::Span<const uint8_t> msg);
  int32_t OpPromisc(absl::Span<const uint8_t> msg);
  int32_t OpGetStats(absl::Span<const uint8_t> msg, std::vector<uint8_t>* out);
  int32_t OpRssKey(absl::Span<const uint8_t> msg);
  int32_t OpRssLut(absl::Span<const uint8_t> msg);
  int32_t OpRssHfunc(absl::Span<const uint8_t> msg);
  int32_t OpSetRssHena(absl::Span<const uint8_t> msg);
  // Returns true if the request was granted (a VF reset followed, no reply).
  bool OpRequestQueues(absl::Span<const uint8_t> msg, std::vector<uint8_t>* out);
  bool RingInDmaMap(uint64_t addr, uint64_t bytes);
  void StopQueues(QueueMask rx_mask, QueueMask tx_mask);

  // VF reset (RESET_VF, REQUEST_QUEUES): mailbox, queues, interrupts and
  // configuration back to their post-reset state; RSTAT -> INPROGRESS.
  void VfReset();

  // Persistence. Records and the generation of each: every path that may
  // change a record's content Touch()es it; Save re-serializes only records
  // whose generation moved (a memo, compared with the transaction anyway).
  enum Record { kRecIdentity, kRecRegs, kRecAq, kRecIrq, kRecVf, kRecPci, kNumRecords };
  static constexpr uint32_t kAllRecords = (1u << kNumRecords) - 1;
  static const char* const kRecordKeys[kNumRecords];
  void Touch(uint32_t records);
  std::string SerializeRecord(int record) const;
  const std::string& RecordBytes(int record);
  struct Memo {
    bool valid = false;
    uint64_t gen = 0;
    std::string bytes;
  };

  DeviceOptions options_;
  vfio_user::DeviceContext ctx_;
  DataPathHooks* hooks_ = nullptr;

  std::unique_ptr<vfio_user::PciConfigSpace> config_;
  vfio_user::MsixTable msix_;

  // BAR0 [0, kDoorbellWindowSize) and the queue-vector page after it
  // (kDoorbellFileSize in all): the memfd and its shared mapping.
  UniqueFd doorbell_fd_;
  MappedFile doorbell_map_;  // all of doorbell_fd_
  volatile uint32_t* doorbell_ = nullptr;
  bool doorbell_adopted_ = false;

  std::unique_ptr<InterruptController> irq_;
  AdminQueue aq_;
  uint32_t rstat_ = kVfrVfActive;
  std::array<uint32_t, kNumHenaRegs> hena_reg_{};
  std::array<uint32_t, kNumHkeyRegs> hkey_reg_{};
  std::array<uint32_t, kNumHlutRegs> hlut_reg_{};

  // virtchnl state.
  uint32_t vf_major_ = 0, vf_minor_ = 0;
  uint32_t granted_caps_ = 0;
  bool resources_sent_ = false;
  uint32_t num_queue_pairs_ = 0;
  // One context per queue pair the device offers (options_.max_queue_pairs).
  std::vector<TxQueueContext> txq_;
  std::vector<RxQueueContext> rxq_;
  static const TxQueueContext kNoTxq;
  static const RxQueueContext kNoRxq;
  std::vector<MacFilterEntry> macs_;
  std::bitset<4096> vlans_;
  uint16_t promisc_flags_ = 0;
  bool vlan_strip_ = false;
  uint32_t requested_caps_ = 0;    // GET_VF_RESOURCES' word (ice: driver_caps)
  bool vlan_v2_caps_sent_ = false; // GET_OFFLOAD_VLAN_V2_CAPS answered since the reset
  bool vlan_insert_off_ = false;   // DISABLE_VLAN_INSERTION_V2
  RssConfig rss_;
  bool link_reported_up_ = false;
  std::vector<uint8_t> reply_scratch_;  // HandleVfMessage's reply buffer (not state)
  bool reset_pending_ = false;  // RESET_VF handled; reset at the next register read
  bool link_up_ = true;
  uint32_t link_speed_mbps_ = 0;

  DeviceCounters counters_;
  std::array<uint64_t, kNumRecords> gen_{};
  std::array<Memo, kNumRecords> memo_{};
};

}  // namespace emud::avf

#endif  // EMUD_AVF_DEVICE_H_
