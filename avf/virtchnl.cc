#include "avf/virtchnl.h"

namespace emud::avf::vc {

std::string StatusName(int32_t status) {
  switch (status) {
    case kSuccess: return "SUCCESS";
    case kErrParam: return "ERR_PARAM";
    case kErrNoMemory: return "ERR_NO_MEMORY";
    case kErrOpcodeMismatch: return "ERR_OPCODE_MISMATCH";
    case kErrCqpComplError: return "ERR_CQP_COMPL_ERROR";
    case kErrInvalidVfId: return "ERR_INVALID_VF_ID";
    case kErrAdminQueueError: return "ERR_ADMIN_QUEUE_ERROR";
    case kNotSupported: return "NOT_SUPPORTED";
    default: return "STATUS_" + std::to_string(status);
  }
}

const char* OpName(uint32_t op) {
  switch (op) {
    case kOpUnknown: return "UNKNOWN";
    case kOpVersion: return "VERSION";
    case kOpResetVf: return "RESET_VF";
    case kOpGetVfResources: return "GET_VF_RESOURCES";
    case kOpConfigTxQueue: return "CONFIG_TX_QUEUE";
    case kOpConfigRxQueue: return "CONFIG_RX_QUEUE";
    case kOpConfigVsiQueues: return "CONFIG_VSI_QUEUES";
    case kOpConfigIrqMap: return "CONFIG_IRQ_MAP";
    case kOpEnableQueues: return "ENABLE_QUEUES";
    case kOpDisableQueues: return "DISABLE_QUEUES";
    case kOpAddEthAddr: return "ADD_ETH_ADDR";
    case kOpDelEthAddr: return "DEL_ETH_ADDR";
    case kOpAddVlan: return "ADD_VLAN";
    case kOpDelVlan: return "DEL_VLAN";
    case kOpConfigPromiscuousMode: return "CONFIG_PROMISCUOUS_MODE";
    case kOpGetStats: return "GET_STATS";
    case kOpEvent: return "EVENT";
    case kOpConfigRssHfunc: return "CONFIG_RSS_HFUNC";
    case kOpConfigRssKey: return "CONFIG_RSS_KEY";
    case kOpConfigRssLut: return "CONFIG_RSS_LUT";
    case kOpGetRssHenaCaps: return "GET_RSS_HENA_CAPS";
    case kOpSetRssHena: return "SET_RSS_HENA";
    case kOpEnableVlanStripping: return "ENABLE_VLAN_STRIPPING";
    case kOpDisableVlanStripping: return "DISABLE_VLAN_STRIPPING";
    case kOpRequestQueues: return "REQUEST_QUEUES";
    case kOpGetMaxRssQregion: return "GET_MAX_RSS_QREGION";
    case kOpGetSupportedRxdids: return "GET_SUPPORTED_RXDIDS";
    case kOpGetOffloadVlanV2Caps: return "GET_OFFLOAD_VLAN_V2_CAPS";
    case kOpAddVlanV2: return "ADD_VLAN_V2";
    case kOpDelVlanV2: return "DEL_VLAN_V2";
    case kOpEnableVlanStrippingV2: return "ENABLE_VLAN_STRIPPING_V2";
    case kOpDisableVlanStrippingV2: return "DISABLE_VLAN_STRIPPING_V2";
    case kOpEnableVlanInsertionV2: return "ENABLE_VLAN_INSERTION_V2";
    case kOpDisableVlanInsertionV2: return "DISABLE_VLAN_INSERTION_V2";
    case kOpEnableVlanFilteringV2: return "ENABLE_VLAN_FILTERING_V2";
    case kOpDisableVlanFilteringV2: return "DISABLE_VLAN_FILTERING_V2";
    case kOpEnableQueuesV2: return "ENABLE_QUEUES_V2";
    case kOpDisableQueuesV2: return "DISABLE_QUEUES_V2";
    case kOpMapQueueVector: return "MAP_QUEUE_VECTOR";
    default: return "op?";
  }
}

}  // namespace emud::avf::vc
