// virtchnl 1.1 wire format: opcodes, status codes, capability flags and the
// message layouts exchanged between an iavf VF driver and its PF (here: this
// device model). Everything is little endian and packed as in
// include/linux/avf/virtchnl.h; the structs below reproduce the byte layout
// (checked by static_assert) so messages can be memcpy'd after a length check.
#ifndef EMUD_AVF_VIRTCHNL_H_
#define EMUD_AVF_VIRTCHNL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <cstring>

#include "absl/types/span.h"

namespace emud::avf::vc {

enum Op : uint32_t {
  kOpUnknown = 0,
  kOpVersion = 1,
  kOpResetVf = 2,
  kOpGetVfResources = 3,
  kOpConfigTxQueue = 4,
  kOpConfigRxQueue = 5,
  kOpConfigVsiQueues = 6,
  kOpConfigIrqMap = 7,
  kOpEnableQueues = 8,
  kOpDisableQueues = 9,
  kOpAddEthAddr = 10,
  kOpDelEthAddr = 11,
  kOpAddVlan = 12,
  kOpDelVlan = 13,
  kOpConfigPromiscuousMode = 14,
  kOpGetStats = 15,
  kOpEvent = 17,
  kOpConfigRssHfunc = 18,
  kOpConfigRssKey = 23,
  kOpConfigRssLut = 24,
  kOpGetRssHenaCaps = 25,
  kOpSetRssHena = 26,
  kOpEnableVlanStripping = 27,
  kOpDisableVlanStripping = 28,
  kOpRequestQueues = 29,
  kOpGetSupportedRxdids = 44,
  kOpGetMaxRssQregion = 50,
  kOpGetOffloadVlanV2Caps = 51,
  kOpAddVlanV2 = 52,
  kOpDelVlanV2 = 53,
  kOpEnableVlanStrippingV2 = 54,
  kOpDisableVlanStrippingV2 = 55,
  kOpEnableVlanInsertionV2 = 56,
  kOpDisableVlanInsertionV2 = 57,
  kOpEnableVlanFilteringV2 = 58,
  kOpDisableVlanFilteringV2 = 59,
  kOpEnableQueuesV2 = 107,
  kOpDisableQueuesV2 = 108,
  kOpMapQueueVector = 111,
};

// Reply status (cookie_low of an ARQ descriptor), s32.
enum Status : int32_t {
  kSuccess = 0,
  kErrParam = -5,
  kErrNoMemory = -18,
  kErrOpcodeMismatch = -38,
  kErrCqpComplError = -39,
  kErrInvalidVfId = -40,
  kErrAdminQueueError = -53,
  kNotSupported = -64,
};

// vf_cap_flags.
inline constexpr uint32_t kCapL2 = 1u << 0;
inline constexpr uint32_t kCapRdma = 1u << 1;
inline constexpr uint32_t kCapRssAq = 1u << 3;
inline constexpr uint32_t kCapRssReg = 1u << 4;
inline constexpr uint32_t kCapWbOnItr = 1u << 5;
inline constexpr uint32_t kCapReqQueues = 1u << 6;
inline constexpr uint32_t kCapAdvLinkSpeed = 1u << 7;
inline constexpr uint32_t kCapLargeNumQpairs = 1u << 9;
inline constexpr uint32_t kCapCrc = 1u << 10;
inline constexpr uint32_t kCapVlanV2 = 1u << 15;
inline constexpr uint32_t kCapVlan = 1u << 16;
inline constexpr uint32_t kCapRxPolling = 1u << 17;
inline constexpr uint32_t kCapRssPctypeV2 = 1u << 18;
inline constexpr uint32_t kCapRssPf = 1u << 19;
// Tunnel TX offloads: no opcode, the data path acts on the TX context
// descriptor's tunnelling fields. ice grants both whenever asked
// (ice_vc_get_vf_res_msg) and never RX_ENCAP_CSUM (1 << 22).
inline constexpr uint32_t kCapEncap = 1u << 20;
inline constexpr uint32_t kCapEncapCsum = 1u << 21;
inline constexpr uint32_t kCapRxFlexDesc = 1u << 26;

inline constexpr uint32_t kVsiTypeSriov = 6;

// RX descriptor formats (RXDIDs, ice_lan_tx_rx.h ICE_RXDID_*): the legacy
// 32-byte one, the flex NIC profile (RSS hash in bytes 12..15, flow id in
// 24..27) and DPDK's default COMMS_OVS_1 (flow id in 12..15, RSS hash in
// 24..27).
inline constexpr uint8_t kRxdidLegacy1 = 1;
inline constexpr uint8_t kRxdidFlexNic = 2;
inline constexpr uint8_t kRxdidCommsOvs1 = 22;

// Events.
inline constexpr int32_t kEventLinkChange = 1;
inline constexpr int32_t kEventResetImpending = 2;
inline constexpr int32_t kEventPfDriverClose = 3;
inline constexpr int32_t kSeverityInfo = 0;
inline constexpr int32_t kSeverityCertainDoom = 255;

// Legacy link speed enum (without ADV_LINK_SPEED).
inline constexpr uint32_t kLinkSpeed100Mb = 1u << 1;
inline constexpr uint32_t kLinkSpeed1Gb = 1u << 2;
inline constexpr uint32_t kLinkSpeed10Gb = 1u << 3;
inline constexpr uint32_t kLinkSpeed40Gb = 1u << 4;
inline constexpr uint32_t kLinkSpeed20Gb = 1u << 5;
inline constexpr uint32_t kLinkSpeed25Gb = 1u << 6;

// Promiscuous flags.
inline constexpr uint16_t kPromiscUnicast = 0x1;
inline constexpr uint16_t kPromiscMulticast = 0x2;

struct VersionInfo {
  uint32_t major;
  uint32_t minor;
};
static_assert(sizeof(VersionInfo) == 8);

struct VsiResource {
  uint16_t vsi_id;
  uint16_t num_queue_pairs;
  int32_t vsi_type;
  uint16_t qset_handle;
  uint8_t default_mac_addr[6];
};
static_assert(sizeof(VsiResource) == 16);

struct VfResource {
  uint16_t num_vsis;
  uint16_t num_queue_pairs;
  uint16_t max_vectors;
  uint16_t max_mtu;
  uint32_t vf_cap_flags;
  uint32_t rss_key_size;
  uint32_t rss_lut_size;
  VsiResource vsi_res[1];
};
static_assert(sizeof(VfResource) == 36);
static_assert(offsetof(VfResource, vsi_res) == 20);

struct TxqInfo {
  uint16_t vsi_id;
  uint16_t queue_id;
  uint16_t ring_len;
  uint16_t headwb_enabled;
  uint64_t dma_ring_addr;
  uint64_t dma_headwb_addr;
};
static_assert(sizeof(TxqInfo) == 24);

struct RxqInfo {
  uint16_t vsi_id;
  uint16_t queue_id;
  uint32_t ring_len;
  uint16_t hdr_size;
  uint16_t splithdr_enabled;
  uint32_t databuffer_size;
  uint32_t max_pkt_size;
  uint8_t crc_disable;
  uint8_t rxdid;
  uint8_t flags;
  uint8_t pad1;
  uint64_t dma_ring_addr;
  int32_t rx_split_pos;
  uint32_t pad2;
};
static_assert(sizeof(RxqInfo) == 40);
static_assert(offsetof(RxqInfo, dma_ring_addr) == 24);

struct QueuePairInfo {
  TxqInfo txq;
  RxqInfo rxq;
};
static_assert(sizeof(QueuePairInfo) == 64);

// Header of CONFIG_VSI_QUEUES; QueuePairInfo[num_queue_pairs] follows at 8.
struct VsiQueueConfigHeader {
  uint16_t vsi_id;
  uint16_t num_queue_pairs;
  uint32_t pad;
};
static_assert(sizeof(VsiQueueConfigHeader) == 8);

struct VectorMap {
  uint16_t vsi_id;
  uint16_t vector_id;
  uint16_t rxq_map;
  uint16_t txq_map;
  uint16_t rxitr_idx;
  uint16_t txitr_idx;
};
static_assert(sizeof(VectorMap) == 12);
// CONFIG_IRQ_MAP: u16 num_vectors, then VectorMap[num_vectors] at offset 2.

struct QueueSelect {
  uint16_t vsi_id;
  uint16_t pad;
  uint32_t rx_queues;
  uint32_t tx_queues;
};
static_assert(sizeof(QueueSelect) == 12);

struct EtherAddr {
  uint8_t addr[6];
  uint8_t type;
  uint8_t pad;
};
static_assert(sizeof(EtherAddr) == 8);
// ADD/DEL_ETH_ADDR: u16 vsi_id, u16 num_elements, EtherAddr[] at 4.
// ADD/DEL_VLAN: u16 vsi_id, u16 num_elements, u16 vlan_id[] at 4.
// CONFIG_RSS_KEY / LUT: u16 vsi_id, u16 len, u8[] at 4.

struct PromiscInfo {
  uint16_t vsi_id;
  uint16_t flags;
};
static_assert(sizeof(PromiscInfo) == 4);

struct EthStats {
  uint64_t rx_bytes;
  uint64_t rx_unicast;
  uint64_t rx_multicast;
  uint64_t rx_broadcast;
  uint64_t rx_discards;
  uint64_t rx_unknown_protocol;
  uint64_t tx_bytes;
  uint64_t tx_unicast;
  uint64_t tx_multicast;
  uint64_t tx_broadcast;
  uint64_t tx_discards;
  uint64_t tx_errors;
};
static_assert(sizeof(EthStats) == 96);

struct RssHfunc {
  uint16_t vsi_id;
  uint16_t rss_algorithm;
  uint32_t reserved;
};
static_assert(sizeof(RssHfunc) == 8);

struct PfEvent {
  int32_t event;
  uint32_t link_speed;  // enum, or Mbps when ADV_LINK_SPEED was granted
  uint8_t link_status;
  uint8_t pad[3];
  int32_t severity;
};
static_assert(sizeof(PfEvent) == 16);

// VLAN_V2 (virtchnl_vlan_support bits, used in every *_support word and
// in the ethertype settings).
inline constexpr uint32_t kVlanUnsupported = 0;
inline constexpr uint32_t kVlanEthertype8100 = 0x1;
inline constexpr uint32_t kVlanEthertype88a8 = 0x2;
inline constexpr uint32_t kVlanEthertype9100 = 0x4;
inline constexpr uint32_t kVlanTagLocationL2tag1 = 0x100;
inline constexpr uint32_t kVlanTagLocationL2tag2 = 0x200;
inline constexpr uint32_t kVlanTagLocationL2tag2_2 = 0x400;
inline constexpr uint32_t kVlanPrio = 0x01000000;
inline constexpr uint32_t kVlanFilterMask = 0x10000000;
inline constexpr uint32_t kVlanEthertypeAnd = 0x20000000;
inline constexpr uint32_t kVlanEthertypeXor = 0x40000000;
inline constexpr uint32_t kVlanToggle = 0x80000000;
inline constexpr uint8_t kEthertypeStrippingMatchesInsertion = 1;

struct VlanSupportedCaps {
  uint32_t outer;
  uint32_t inner;
};
static_assert(sizeof(VlanSupportedCaps) == 8);

struct VlanFilteringCaps {
  VlanSupportedCaps filtering_support;
  uint32_t ethertype_init;
  uint16_t max_filters;
  uint8_t pad[2];
};
static_assert(sizeof(VlanFilteringCaps) == 16);

struct VlanOffloadCaps {
  VlanSupportedCaps stripping_support;
  VlanSupportedCaps insertion_support;
  uint32_t ethertype_init;
  uint8_t ethertype_match;
  uint8_t pad[3];
};
static_assert(sizeof(VlanOffloadCaps) == 24);

// GET_OFFLOAD_VLAN_V2_CAPS reply.
struct VlanCaps {
  VlanFilteringCaps filtering;
  VlanOffloadCaps offloads;
};
static_assert(sizeof(VlanCaps) == 40);

struct Vlan {
  uint16_t tci;       // 15:13 PCP, 11:0 VID
  uint16_t tci_mask;  // only with VIRTCHNL_VLAN_FILTER_MASK
  uint16_t tpid;      // 0x8100, 0x88a8, ... (the TPID itself)
  uint8_t pad[2];
};
static_assert(sizeof(Vlan) == 8);

// Inner first (virtchnl.h: VIRTCHNL_CHECK_STRUCT_LEN(32, virtchnl_vlan_filter)).
struct VlanFilter {
  Vlan inner;
  Vlan outer;
  uint8_t pad[16];
};
static_assert(sizeof(VlanFilter) == 32);
static_assert(offsetof(VlanFilter, outer) == 8);
// ADD/DEL_VLAN_V2: u16 vport_id, u16 num_elements, u8 pad[4], VlanFilter[] at 8.

// ENABLE/DISABLE_VLAN_STRIPPING_V2 / _INSERTION_V2 / _FILTERING_V2.
struct VlanSetting {
  uint32_t outer_ethertype_setting;
  uint32_t inner_ethertype_setting;
  uint16_t vport_id;
  uint8_t pad[6];
};
static_assert(sizeof(VlanSetting) == 16);

struct VfResRequest {
  uint16_t num_queue_pairs;
};
static_assert(sizeof(VfResRequest) == 2);

// LARGE_NUM_QPAIRS (virtchnl.h: virtchnl_queue_chunk, virtchnl_queue_chunks,
// virtchnl_del_ena_dis_queues, virtchnl_queue_vector(_maps),
// virtchnl_max_rss_qregion).
inline constexpr int32_t kQueueTypeTx = 0;
inline constexpr int32_t kQueueTypeRx = 1;

struct QueueChunk {
  int32_t type;  // kQueueTypeTx / kQueueTypeRx
  uint16_t start_queue_id;
  uint16_t num_queues;
};
static_assert(sizeof(QueueChunk) == 8);

// ENABLE/DISABLE_QUEUES_V2: this header, then QueueChunk[num_chunks] at 8.
struct DelEnaDisQueuesHeader {
  uint16_t vport_id;
  uint16_t pad;
  uint16_t num_chunks;
  uint16_t rsvd;
};
static_assert(sizeof(DelEnaDisQueuesHeader) == 8);

struct QueueVector {
  uint16_t queue_id;
  uint16_t vector_id;
  uint8_t pad[4];
  int32_t itr_idx;     // 0, 1 or 3 (VIRTCHNL_ITR_IDX_NO_ITR)
  int32_t queue_type;  // kQueueTypeTx / kQueueTypeRx
};
static_assert(sizeof(QueueVector) == 16);

// MAP_QUEUE_VECTOR: this header, then QueueVector[num_qv_maps] at 8.
struct QueueVectorMapsHeader {
  uint16_t vport_id;
  uint16_t num_qv_maps;
  uint8_t pad[4];
};
static_assert(sizeof(QueueVectorMapsHeader) == 8);

struct MaxRssQregion {
  uint16_t vport_id;
  uint16_t qregion_width;  // log2 of the queues one RSS region may span
  uint8_t pad[4];
};
static_assert(sizeof(MaxRssQregion) == 8);

// Reads a T from msg at `offset`; the caller has checked the length.
template <typename T>
T Load(absl::Span<const uint8_t> msg, size_t offset) {
  T v;
  std::memcpy(&v, msg.data() + offset, sizeof(T));
  return v;
}

// Human-readable opcode name for logs ("op 42" for unknown ones).
const char* OpName(uint32_t op);
// "SUCCESS", "ERR_PARAM", "NOT_SUPPORTED", ... ("STATUS_<n>" for others).
std::string StatusName(int32_t status);

}  // namespace emud::avf::vc

#endif  // EMUD_AVF_VIRTCHNL_H_
