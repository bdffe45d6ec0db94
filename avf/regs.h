// BAR0 register map of an Intel Ethernet Adaptive Virtual Function (VF view)
// and the admin-queue descriptor constants. Offsets and bit positions are
// hardware facts (Linux iavf_register.h / iavf_adminq_cmd.h, DPDK base/).
#ifndef EMUD_AVF_REGS_H_
#define EMUD_AVF_REGS_H_

#include <cstdint>

namespace emud::avf {

// ---------------------------------------------------------------- identity
inline constexpr uint16_t kVendorIntel = 0x8086;
inline constexpr uint16_t kDeviceAdaptiveVf = 0x1889;
inline constexpr uint32_t kClassEthernet = 0x020000;

// Device limits of this model.
// Queue pairs: up to 16 for a VF that did not negotiate LARGE_NUM_QPAIRS
// (ICE_MAX_RSS_QS_PER_VF, IAVF_MAX_REQ_QUEUES; legacy ENABLE_QUEUES and
// CONFIG_IRQ_MAP carry 16-bit/32-bit queue bitmaps), up to 64 with it: ice's
// tier for a VF given a 512-entry global RSS LUT (ice_lut_type_to_qs_num,
// ICE_LUT_GLOBAL_MAX_QS). The 256-queue tier needs ice's 2048-entry PF LUT;
// this model's RSS LUT has 64 entries, so it stops at 64.
inline constexpr uint32_t kLegacyMaxQueuePairs = 16;
inline constexpr uint32_t kMaxQueuePairs = 64;
// MSI-X: the misc vector plus up to 64 queue vectors (ICE_NUM_VF_MSIX_MAX).
// A device has DeviceMsixVectors(max_queue_pairs) of them (device.h).
inline constexpr uint32_t kMaxMsixVectors = 1 + kMaxQueuePairs;
inline constexpr uint64_t kBar0Size = 64 * 1024;
inline constexpr uint64_t kBar3Size = 16 * 1024;
inline constexpr uint64_t kMsixTableOffset = 0x0;       // in BAR3
inline constexpr uint64_t kMsixPbaOffset = 0x2000;      // in BAR3
inline constexpr uint32_t kMaxFrameSize = 9728;         // IAVF_FRAME_SIZE_MAX
inline constexpr uint32_t kRssKeySize = 52;
inline constexpr uint32_t kRssLutSize = 64;

// ---------------------------------------------------------------- BAR0
inline constexpr uint32_t QtxTail(uint32_t q) { return 0x0000 + 4 * q; }
inline constexpr uint32_t QrxTail(uint32_t q) { return 0x2000 + 4 * q; }
// ITR interval for queue vector v (MSI-X vector v + 1), ITR index i (0..2).
inline constexpr uint32_t VfintItrn1(uint32_t i, uint32_t v) { return 0x2800 + 64 * i + 4 * v; }
inline constexpr uint32_t VfintDynCtln1(uint32_t v) { return 0x3800 + 4 * v; }
inline constexpr uint32_t kVfintIcr01 = 0x4800;
inline constexpr uint32_t VfintItr01(uint32_t i) { return 0x4C00 + 4 * i; }
inline constexpr uint32_t kVfintIcr0Ena1 = 0x5000;
inline constexpr uint32_t kVfintStatCtl01 = 0x5400;
inline constexpr uint32_t kVfintDynCtl01 = 0x5C00;
inline constexpr uint32_t kVfArqbah1 = 0x6000;
inline constexpr uint32_t kVfAtqh1 = 0x6400;
inline constexpr uint32_t kVfAtqlen1 = 0x6800;
inline constexpr uint32_t kVfArqbal1 = 0x6C00;
inline constexpr uint32_t kVfArqt1 = 0x7000;
inline constexpr uint32_t kVfArqh1 = 0x7400;
inline constexpr uint32_t kVfAtqbah1 = 0x7800;
inline constexpr uint32_t kVfAtqbal1 = 0x7C00;
inline constexpr uint32_t kVfArqlen1 = 0x8000;
inline constexpr uint32_t kVfAtqt1 = 0x8400;
inline constexpr uint32_t kVfgenRstat = 0x8800;
inline constexpr uint32_t VfqfHena(uint32_t i) { return 0xC400 + 4 * i; }  // i 0..1
inline constexpr uint32_t VfqfHkey(uint32_t i) { return 0xCC00 + 4 * i; }  // i 0..12
inline constexpr uint32_t VfqfHlut(uint32_t i) { return 0xD000 + 4 * i; }  // i 0..15
inline constexpr uint32_t kNumHenaRegs = 2;
inline constexpr uint32_t kNumHkeyRegs = 13;
inline constexpr uint32_t kNumHlutRegs = 16;

// Tail registers of up to 256 queues (large VF) are decoded; only queues
// granted to the VF have an effect.
inline constexpr uint32_t kMaxDecodedQueues = 256;
inline constexpr uint32_t kNumItrIndexes = 3;
inline constexpr uint32_t kItrIndexNone = 3;
inline constexpr uint32_t kMaxQueueVectors = kMaxMsixVectors - 1;  // DYN_CTLN1(0..63)
// VFINT_ITRN1(i, v) is decoded for queue vectors 0..15 (64-byte stride per
// ITR index, iavf_register.h); vectors 16.. coalesce with ITR 0 = none (their
// DYN_CTLN INTERVAL is not kept).
inline constexpr uint32_t kNumItrnVectors = 16;

// The mmappable doorbell window when doorbells are mapped: [0, 0x3000)
// holds QTX_TAIL (page 0) and QRX_TAIL + VFINT_ITRN1 (page 2).
inline constexpr uint32_t kDoorbellWindowSize = 0x3000;

// VFGEN_RSTAT values (VIRTCHNL_VFR_*), bits 1:0.
inline constexpr uint32_t kRstatMask = 0x3;
inline constexpr uint32_t kVfrInProgress = 0;
inline constexpr uint32_t kVfrCompleted = 1;
inline constexpr uint32_t kVfrVfActive = 2;

// ATQLEN / ARQLEN.
inline constexpr uint32_t kAqLenMask = 0x3FF;
inline constexpr uint32_t kAqLenVfe = 1u << 28;
inline constexpr uint32_t kAqLenOvfl = 1u << 29;
inline constexpr uint32_t kAqLenCrit = 1u << 30;
inline constexpr uint32_t kAqLenEnable = 1u << 31;
inline constexpr uint32_t kAqHeadMask = 0x3FF;
inline constexpr uint32_t kAqTailMask = 0x3FF;

// VFINT_DYN_CTL01 / VFINT_DYN_CTLN1 (same layout).
inline constexpr uint32_t kDynCtlIntena = 1u << 0;
inline constexpr uint32_t kDynCtlClearPba = 1u << 1;
inline constexpr uint32_t kDynCtlSwintTrig = 1u << 2;
inline constexpr uint32_t kDynCtlItrIndxShift = 3;
inline constexpr uint32_t kDynCtlItrIndxMask = 0x3u << kDynCtlItrIndxShift;
inline constexpr uint32_t kDynCtlIntervalShift = 5;
inline constexpr uint32_t kDynCtlIntervalMask = 0xFFFu << kDynCtlIntervalShift;
inline constexpr uint32_t kDynCtlSwItrIndxEna = 1u << 24;
inline constexpr uint32_t kDynCtlSwItrIndxShift = 25;
inline constexpr uint32_t kDynCtlSwItrIndxMask = 0x3u << kDynCtlSwItrIndxShift;
inline constexpr uint32_t kDynCtlWbOnItr = 1u << 30;
inline constexpr uint32_t kDynCtlIntenaMsk = 1u << 31;
inline constexpr uint32_t kItrIntervalMask = 0xFFF;  // ITR registers, 2 us units

// VFINT_ICR01 / VFINT_ICR0_ENA1 cause bits.
inline constexpr uint32_t kIcr0Queue0 = 1u << 1;
inline constexpr uint32_t kIcr0LinkStatChange = 1u << 25;
inline constexpr uint32_t kIcr0AdminQ = 1u << 30;
inline constexpr uint32_t kIcr0Swint = 1u << 31;

// ---------------------------------------------------------------- admin queue
inline constexpr uint32_t kAqDescSize = 32;
inline constexpr uint32_t kAqMaxBufSize = 4096;  // IAVF_MAX_AQ_BUF_SIZE
inline constexpr uint32_t kAqLargeBuf = 512;     // LB flag threshold

inline constexpr uint16_t kAqFlagDd = 0x0001;
inline constexpr uint16_t kAqFlagCmp = 0x0002;
inline constexpr uint16_t kAqFlagErr = 0x0004;
inline constexpr uint16_t kAqFlagVfe = 0x0008;
inline constexpr uint16_t kAqFlagLb = 0x0200;
inline constexpr uint16_t kAqFlagRd = 0x0400;
inline constexpr uint16_t kAqFlagVfc = 0x0800;
inline constexpr uint16_t kAqFlagBuf = 0x1000;
inline constexpr uint16_t kAqFlagSi = 0x2000;
inline constexpr uint16_t kAqFlagEi = 0x4000;
inline constexpr uint16_t kAqFlagFe = 0x8000;

inline constexpr uint16_t kAqOpcQueueShutdown = 0x0003;
inline constexpr uint16_t kAqOpcSendMsgToPf = 0x0801;
inline constexpr uint16_t kAqOpcSendMsgToVf = 0x0802;

// Admin-queue return codes (descriptor retval).
inline constexpr uint16_t kAqRcOk = 0;
inline constexpr uint16_t kAqRcEfault = 11;
inline constexpr uint16_t kAqRcEinval = 14;
inline constexpr uint16_t kAqRcEnosys = 17;

}  // namespace emud::avf

#endif  // EMUD_AVF_REGS_H_
