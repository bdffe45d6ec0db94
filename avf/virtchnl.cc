#include "avf/virtchnl.h"

namespace emud::avf::vc {

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
    case kOpGetOffloadVlanV2Caps: return "GET_OFFLOAD_VLAN_V2_CAPS";
    default: return "op?";
  }
}

}  // namespace emud::avf::vc
