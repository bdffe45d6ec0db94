// The test guest's NIC driver: an iavf-style driver that brings an AVF
// device up the way Linux's iavf does (drivers/net/ethernet/intel/iavf:
// iavf_main.c state machine, iavf_virtchnl.c messages, iavf_adminq.c ring
// setup), over a GuestBus.
//
// Sequence (what the device sees, in order):
//   Init():  RSTAT poll for COMPLETED/VFACTIVE; ATQ/ARQ setup (H, T,
//            LEN|ENABLE, BAL, BAH; ARQ pre-armed, ARQT = N-1); VERSION 1.1
//            (ATQH must have advanced); GET_VF_RESOURCES with Linux's caps;
//            with VLAN_V2: GET_OFFLOAD_VLAN_V2_CAPS; with RX_FLEX_DESC:
//            GET_SUPPORTED_RXDIDS (Linux >= 6.13); MSI-X (queues + 1);
//            misc vector enable (DYN_CTL01, ICR0_ENA1); CONFIG_IRQ_MAP
//            (queue vectors, misc last); with RSS_PF: CONFIG_RSS_KEY,
//            CONFIG_RSS_LUT (hash types: the PF default); with only RSS_REG:
//            the HENA/HKEY/HLUT registers; then the VLAN offloads (V2:
//            ENABLE/DISABLE_VLAN_STRIPPING_V2 and _INSERTION_V2; legacy VLAN:
//            ENABLE/DISABLE_VLAN_STRIPPING).
//   Open():  ring allocation, RX buffers posted and QRX_TAIL written, queue
//            vectors armed, then ADD_ETH_ADDR, CONFIG_VSI_QUEUES,
//            ENABLE_QUEUES, and the LINK_CHANGE event (link up).
//   Reset(): iavf_reset_task with RESET_NEEDED: misc irq off, AQ shutdown +
//            re-init, RESET_VF, poll ARQLEN.ENABLE == 0, poll RSTAT ==
//            VFACTIVE, AQ re-init, misc irq on, if it was open: rings and
//            QRX_TAIL, queue vectors armed; then GET_VF_RESOURCES (no
//            VERSION; GET_OFFLOAD_VLAN_V2_CAPS with VLAN_V2,
//            GET_SUPPORTED_RXDIDS with RX_FLEX_DESC), CONFIG_IRQ_MAP,
//            ADD_ETH_ADDR and, if it was open, CONFIG_VSI_QUEUES +
//            ENABLE_QUEUES, then the RSS key/LUT, the VLAN filters it held
//            and the VLAN offloads.
// Messages use the drivers' historical lengths (one array element more).
// At most one virtchnl request is outstanding; replies are collected from
// the ARQ on the misc interrupt (vector 0) or by polling, events handled as
// they come.
//
// Not thread-safe.
#ifndef EMUD_TESTS_GUEST_IAVF_DRIVER_H_
#define EMUD_TESTS_GUEST_IAVF_DRIVER_H_

#include <array>
#include <cstdint>
#include <deque>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "avf/virtchnl.h"
#include "tests/guest/bus.h"
#include "tests/guest/guest_memory.h"

namespace emud::guest {

// Capabilities Linux iavf (6.x) asks for in GET_VF_RESOURCES.
inline constexpr uint32_t kLinuxIavfCaps =
    avf::vc::kCapL2 | avf::vc::kCapRssPf | avf::vc::kCapRssAq | avf::vc::kCapRssReg |
    avf::vc::kCapVlan | avf::vc::kCapWbOnItr | avf::vc::kCapReqQueues |
    avf::vc::kCapAdvLinkSpeed | avf::vc::kCapVlanV2 | avf::vc::kCapCrc |
    avf::vc::kCapRxFlexDesc | avf::vc::kCapRssPctypeV2 | avf::vc::kCapEncap |
    avf::vc::kCapEncapCsum | (1u << 23) /*ADQ*/ | (1u << 25) /*USO*/ | (1u << 27) /*ADV_RSS*/ |
    (1u << 28) /*FDIR*/ | (1u << 29) /*QOS*/ | (1u << 31) /*PTP*/;

// Capabilities DPDK's iavf PMD asks for.
inline constexpr uint32_t kDpdkIavfCaps =
    avf::vc::kCapL2 | avf::vc::kCapWbOnItr | avf::vc::kCapReqQueues | avf::vc::kCapAdvLinkSpeed |
    (1u << 8) /*INLINE_IPSEC*/ | avf::vc::kCapLargeNumQpairs | avf::vc::kCapCrc | (1u << 14) /*FSUB_PF*/ |
    avf::vc::kCapVlanV2 | avf::vc::kCapVlan | avf::vc::kCapRxPolling | avf::vc::kCapRssPf |
    (1u << 25) /*USO*/ | avf::vc::kCapRxFlexDesc | (1u << 27) /*ADV_RSS*/ | (1u << 28) /*FDIR*/ |
    (1u << 29) /*QOS*/ | (1u << 31) /*PTP*/;

// Whose bring-up order the driver follows.
enum class Flavor {
  kLinux,  // iavf.ko (the default; see the file comment)
  kDpdk,   // net/iavf (drivers/net/intel/iavf): VERSION, GET_VF_RESOURCES
           // (ARQ polled), GET_SUPPORTED_RXDIDS with RX_FLEX_DESC,
           // GET_OFFLOAD_VLAN_V2_CAPS with VLAN_V2 (iavf_init_vf), then
           // vector 0 served as iavf_dev_interrupt_handler does (disable
           // irq0, drain the ARQ, re-enable with CLEARPBA; no ICR01 read),
           // SET_RSS_HENA(0), GET_STATS; configure: the VLAN offloads
           // (iavf_dev_init_vlan: stripping and insertion off), RSS LUT,
           // KEY, GET_RSS_HENA_CAPS, SET_RSS_HENA; start: CONFIG_VSI_QUEUES
           // (72 + 64 n bytes, 2048-byte buffers, max_pkt_size MTU + 26),
           // CONFIG_IRQ_MAP (14 + 12 bytes: RX queues on vector 1,
           // WB_ON_ITR, no misc entry), ADD_ETH_ADDR, ENABLE_QUEUES one queue
           // at a time (TX then RX); stop: one DISABLE_QUEUES; close
           // (Remove): PROMISC(0) if it was on, RESET_VF without waiting, AQ
           // shutdown, irq0 disabled
};

struct DriverOptions {
  Flavor flavor = Flavor::kLinux;
  uint32_t caps = kLinuxIavfCaps;  // kDpdkIavfCaps is used for Flavor::kDpdk
  uint32_t max_queues = 16;     // min(this, VF's queue pairs) become active ("CPUs")
  uint32_t ring_size = 512;     // IAVF_DEFAULT_TXD / RXD
  uint32_t rx_buf_len = 1536;   // databuffer_size for MTU 1500
  uint32_t max_frame = 9728;
  // Keep the Ethernet FCS on RX (DPDK RTE_ETH_RX_OFFLOAD_KEEP_CRC, Linux
  // rx-fcs): crc_disable in CONFIG_VSI_QUEUES when the PF granted CRC.
  bool keep_crc = false;
  // GET_RSS_HENA_CAPS + SET_RSS_HENA before the RSS key/LUT at init. Linux
  // never does: with RSS_PF, iavf_main.c:iavf_init_rss queues only
  // CONFIG_RSS_KEY and CONFIG_RSS_LUT and the hash types stay the PF's
  // default (i40e_alloc_vsi_res). DPDK's flavour sends its own.
  bool hena_at_init = false;
  // VLAN offloads requested at init and after resets (Linux: the netdev's
  // NETIF_F_HW_VLAN_CTAG_RX/TX, on by default; DPDK: the port's
  // RTE_ETH_RX_OFFLOAD_VLAN_STRIP / RTE_ETH_TX_OFFLOAD_VLAN_INSERT, off in
  // testpmd's default configuration). Unset: the flavour's default.
  std::optional<bool> vlan_strip;
  std::optional<bool> vlan_insert;
  // RX descriptor format asked for in CONFIG_VSI_QUEUES when RX_FLEX_DESC
  // was granted and GET_SUPPORTED_RXDIDS lists it (else the legacy 1, as
  // both drivers fall back). Unset: the flavour's default - DPDK 22
  // (COMMS_OVS_1, iavf_rxq.c IAVF_RXDID_COMMS_OVS_1), Linux 1 (it asks
  // FLEX_NIC only with PTP: iavf_select_rx_desc_format).
  std::optional<uint8_t> rxdid;
  // Per virtchnl reply (Linux has none for most ops; DPDK waits ~2 s).
  absl::Duration reply_timeout = absl::Seconds(5);
  // Poll interval while waiting (Linux watchdog: 20 ms when busy).
  absl::Duration poll_interval = absl::Milliseconds(20);
};

// A descriptor ring and its buffers (the data path grows on this).
struct Ring {
  DmaBuffer desc;                 // count * 16 (TX) or * 32 (RX) bytes
  uint32_t count = 0;
  uint32_t next_to_use = 0;
  uint32_t next_to_clean = 0;
  std::vector<DmaBuffer> buffers; // RX: one posted buffer per descriptor
  uint32_t tail_offset = 0;       // BAR0 offset of QTX_TAIL / QRX_TAIL
};

// One virtchnl message from the PF.
struct PfMessage {
  uint32_t v_op = 0;
  int32_t v_retval = 0;
  std::vector<uint8_t> payload;
};

class IavfDriver {
 public:
  IavfDriver(GuestBus* bus, DriverOptions options = {});
  ~IavfDriver();

  // pci probe: identity check, bus master + memory enable.
  absl::Status Probe();
  // Startup to __IAVF_DOWN (see the file comment).
  absl::Status Init();
  // ndo_open: queues up and link up (waits for the LINK_CHANGE event).
  absl::Status Open();
  // VLAN filters (Linux iavf_vlan_rx_add_vid / DPDK iavf_dev_vlan_filter_set):
  // ADD/DEL_VLAN_V2 with the 802.1Q tag where the filtering caps put it
  // (outer if offered, else inner) when VLAN_V2 was granted, else the legacy
  // ADD/DEL_VLAN. Remembered and re-added after a reset
  // (iavf_restore_filters). FAILED_PRECONDITION without a VLAN capability,
  // INTERNAL on an error status.
  absl::Status AddVlan(uint16_t vid);
  absl::Status DelVlan(uint16_t vid);
  // Stripping / insertion on or off (iavf_set_vlan_offload_features,
  // DPDK iavf_config_vlan_strip_v2 / _insert_v2): the V2 messages with the
  // 8100 ethertype where the caps offer it; legacy VLAN: stripping only.
  absl::Status SetVlanStripping(bool on);
  absl::Status SetVlanInsertion(bool on);
  bool vlan_v2() const { return (caps_ & avf::vc::kCapVlanV2) != 0; }
  const avf::vc::VlanCaps& vlan_caps() const { return vlan_caps_; }
  // GET_SUPPORTED_RXDIDS' answer (0: not asked) and the RXDID the RX
  // queues were configured with.
  uint64_t supported_rxdids() const { return supported_rxdids_; }
  uint8_t rxdid() const { return rxdid_; }
  // ndo_stop: DISABLE_QUEUES, DEL_ETH_ADDR, rings freed (DPDK: one
  // DISABLE_QUEUES, no filter removed).
  absl::Status Close();
  // Driver-initiated VF reset and re-initialisation (re-opens if it was open):
  // iavf_reset_task with IAVF_FLAG_RESET_NEEDED (sends RESET_VF).
  absl::Status Reset();
  // One iavf_watchdog_task tick: handles events on the ARQ and, if the PF
  // announced a reset (RESET_IMPENDING) or reset the VF underneath
  // (ARQLEN.ENABLE == 0, "Hardware reset detected"), runs the reset task
  // without sending RESET_VF. Returns true if a reset was handled.
  absl::StatusOr<bool> Watchdog();
  // GET_STATS.
  absl::StatusOr<avf::vc::EthStats> RequestStats();
  // CONFIG_PROMISCUOUS_MODE (remembered for DPDK's close).
  absl::Status ConfigPromisc(bool unicast, bool multicast);
  // Driver unload (iavf_remove): close, RESET_VF, misc vector off, AQ shut
  // down (DPDK: iavf_dev_close, see Flavor::kDpdk).
  absl::Status Remove();

  // One virtchnl exchange, for tests and tools: sends `msg` and waits for
  // the reply with the same opcode.
  absl::StatusOr<PfMessage> Exec(uint32_t v_op, absl::Span<const uint8_t> msg);
  // Processes whatever is on the ARQ now (events); returns how many.
  absl::StatusOr<int> PollArq();

  // State.
  bool link_up() const { return link_up_; }
  uint32_t link_speed() const { return link_speed_; }
  bool running() const { return running_; }
  uint32_t caps() const { return caps_; }
  uint16_t vsi_id() const { return vsi_id_; }
  uint32_t vf_queue_pairs() const { return vf_qps_; }
  uint32_t num_active_queues() const { return num_queues_; }
  uint32_t num_msix_vectors() const { return num_msix_; }
  // DPDK flavour, large VF: queues one RSS region may span (0: not asked).
  uint32_t max_rss_qregion() const { return max_rss_qregion_; }
  uint32_t max_frame() const { return max_frame_; }
  const std::array<uint8_t, 6>& mac() const { return mac_; }
  avf::vc::VersionInfo pf_version() const { return pf_version_; }
  // Virtchnl ops sent, in order (names), since construction.
  const std::vector<std::string>& trace() const { return trace_; }
  uint64_t admin_interrupts() const { return admin_irqs_; }
  // ARQ messages received (replies and events), however collected.
  uint64_t arq_messages() const { return arq_messages_; }
  // DPDK flavour: vector-0 handler runs that found nothing on the ARQ (an
  // interrupt without a new message).
  uint64_t empty_irq0_runs() const { return empty_irq0_runs_; }
  uint64_t events_seen() const { return events_; }
  bool reset_impending() const { return reset_impending_; }

  Ring& tx_ring(uint32_t q) { return tx_rings_[q]; }
  Ring& rx_ring(uint32_t q) { return rx_rings_[q]; }
  GuestBus& bus() { return *bus_; }

 private:
  struct AqRing {
    DmaBuffer desc;
    std::vector<DmaBuffer> bufs;
    uint32_t ntu = 0;
    uint32_t ntc = 0;
  };

  absl::Status CheckResetComplete(bool exact_active);
  absl::Status ResetTask(bool request_reset);
  absl::Status InitAdminQueue();
  absl::Status ShutdownAdminQueue();
  absl::Status SendToPf(uint32_t v_op, absl::Span<const uint8_t> msg);
  absl::Status SendQueueShutdown();
  absl::StatusOr<bool> AsqDone();
  // One ARQ element (iavf_clean_arq_element); nullopt-like false if none.
  absl::StatusOr<bool> CleanArqElement(PfMessage* out);
  void HandleEvent(const PfMessage& m);
  absl::StatusOr<PfMessage> WaitReply(uint32_t v_op);
  // Waits up to `timeout` for the misc vector and runs its handler; true if
  // it fired.
  absl::StatusOr<bool> ServiceMiscIrq(absl::Duration timeout);
  absl::Status MiscIrqEnable();
  absl::Status MiscIrqDisable();
  absl::Status DpdkEnableIrq0();   // iavf_enable_irq0
  absl::Status DpdkDisableIrq0();  // iavf_disable_irq0
  absl::Status RemoveDpdk();
  absl::Status IrqEnableQueues();
  absl::Status IrqDisableQueues();

  absl::Status SendVersion();
  absl::Status GetResources();
  // GET_OFFLOAD_VLAN_V2_CAPS when VLAN_V2 was granted.
  absl::Status GetVlanV2Caps();
  // GET_SUPPORTED_RXDIDS when RX_FLEX_DESC was granted; picks rxdid_.
  absl::Status GetSupportedRxdids();
  // The configured stripping/insertion (and, after a reset, the filters).
  absl::Status ApplyVlanOffloads();
  absl::Status VlanFilterOp(uint16_t vid, bool add);
  absl::Status VlanSetting(uint32_t v2_op, uint32_t legacy_op, bool insertion);
  absl::Status MapVectors();
  absl::Status ConfigureRss();
  absl::Status SetRssKeyLut();
  absl::Status AddPrimaryMac();
  absl::Status ConfigureQueues(bool legacy_length = true);
  absl::Status ConfigureQueueBatch(uint32_t first, uint32_t n, bool legacy_length);
  // More than 16 queues with LARGE_NUM_QPAIRS granted: MAP_QUEUE_VECTOR and
  // ENABLE/DISABLE_QUEUES_V2 instead of CONFIG_IRQ_MAP and the bitmaps.
  bool LargeVf() const;
  absl::Status MapQueueVectors(std::vector<avf::vc::QueueVector> maps);
  absl::Status QueuesV2(uint32_t v_op, std::vector<avf::vc::QueueChunk> chunks);
  absl::Status EnableQueues();
  absl::Status InitDpdk();
  absl::Status OpenDpdk();
  absl::Status WaitLink(bool up);
  absl::Status SetupRings();
  void FreeRings();

  GuestBus* bus_;
  DriverOptions options_;
  AqRing asq_, arq_;
  bool aq_initialised_ = false;

  avf::vc::VersionInfo pf_version_{};
  uint32_t caps_ = 0;
  uint16_t vsi_id_ = 0;
  uint32_t vf_qps_ = 0;
  uint32_t max_vectors_ = 0;
  uint32_t max_rss_qregion_ = 0;
  uint32_t max_frame_ = 0;
  uint32_t num_queues_ = 0;
  uint32_t num_msix_ = 0;
  std::array<uint8_t, 6> mac_{};
  std::array<uint8_t, 52> rss_key_{};
  std::array<uint8_t, 64> rss_lut_{};
  uint64_t hena_ = 0;

  bool running_ = false;
  bool link_up_ = false;
  uint32_t link_speed_ = 0;
  bool reset_impending_ = false;
  std::vector<Ring> tx_rings_, rx_rings_;
  std::vector<std::string> trace_;
  uint64_t admin_irqs_ = 0;
  uint64_t events_ = 0;
  uint64_t arq_messages_ = 0;
  uint64_t empty_irq0_runs_ = 0;
  bool promisc_ = false;
  avf::vc::VlanCaps vlan_caps_{};
  uint64_t supported_rxdids_ = 0;
  uint8_t rxdid_ = avf::vc::kRxdidLegacy1;
  std::set<uint16_t> vlans_;
  bool vlan_strip_on_ = false;
  bool vlan_insert_on_ = false;
  // DPDK with WB_ON_ITR: vector 0 is served by its interrupt handler, which
  // hands replies to the waiting command through `inbox_`.
  bool dpdk_irq0_ = false;
  std::deque<PfMessage> inbox_;
};

}  // namespace emud::guest

#endif  // EMUD_TESTS_GUEST_IAVF_DRIVER_H_
