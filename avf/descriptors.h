// Codec for the AVF data-path descriptors: the 16-byte TX data and context
// descriptors (read by the device, data ones written back with DTYPE 0xF)
// and the 32-byte legacy RX descriptors (read format posted by the driver,
// write-back format written by the device). Field positions are hardware
// facts (Linux iavf_type.h / iavf_txrx.h, DPDK base/iavf_type.h).
//
// All functions work on little-endian byte arrays, so they are usable on
// guest memory directly; none of them validates addresses or lengths against
// anything but the field widths - that is the data path's job.
#ifndef EMUD_AVF_DESCRIPTORS_H_
#define EMUD_AVF_DESCRIPTORS_H_

#include <cstdint>

namespace emud::avf {

inline constexpr uint32_t kTxDescSize = 16;
inline constexpr uint32_t kRxDescSize = 32;

// ------------------------------------------------------------------ TX
inline constexpr uint8_t kTxDtypeData = 0x0;
inline constexpr uint8_t kTxDtypeContext = 0x1;
inline constexpr uint8_t kTxDtypeDescDone = 0xF;

// TX data descriptor CMD field (qw1 bits 13:4).
inline constexpr uint16_t kTxCmdEop = 0x001;
inline constexpr uint16_t kTxCmdRs = 0x002;
inline constexpr uint16_t kTxCmdIcrc = 0x004;
inline constexpr uint16_t kTxCmdIl2tag1 = 0x008;
inline constexpr uint16_t kTxCmdDummy = 0x010;
inline constexpr uint16_t kTxCmdIiptMask = 0x060;
inline constexpr uint16_t kTxCmdIiptIpv6 = 0x020;
inline constexpr uint16_t kTxCmdIiptIpv4 = 0x040;
inline constexpr uint16_t kTxCmdIiptIpv4Csum = 0x060;
inline constexpr uint16_t kTxCmdFcoet = 0x080;
inline constexpr uint16_t kTxCmdL4tMask = 0x300;
inline constexpr uint16_t kTxCmdL4tTcp = 0x100;
inline constexpr uint16_t kTxCmdL4tSctp = 0x200;
inline constexpr uint16_t kTxCmdL4tUdp = 0x300;

inline constexpr uint32_t kTxMaxBufSize = 16383;  // 14-bit TX_BUF_SZ

// TX context descriptor CMD field (qw1 bits 19:4).
inline constexpr uint16_t kTxCtxCmdTso = 0x0001;
inline constexpr uint16_t kTxCtxCmdTsyn = 0x0002;
inline constexpr uint16_t kTxCtxCmdIl2tag2 = 0x0004;

// The low nibble of qw1 (DTYPE) of a 16-byte TX descriptor.
uint8_t TxDescType(const uint8_t desc[kTxDescSize]);

struct TxDataDesc {
  uint64_t buffer_addr = 0;
  uint16_t cmd = 0;       // kTxCmd*
  uint32_t offset = 0;    // raw 18-bit OFFSET field
  uint16_t buf_size = 0;  // bytes in this buffer (14 bits)
  uint16_t l2tag1 = 0;    // VLAN to insert with kTxCmdIl2tag1
  uint8_t dtype = kTxDtypeData;

  // OFFSET decoded to bytes.
  uint32_t maclen() const { return (offset & 0x7F) * 2; }
  uint32_t iplen() const { return ((offset >> 7) & 0x7F) * 4; }
  uint32_t l4len() const { return ((offset >> 14) & 0xF) * 4; }
  static uint32_t MakeOffset(uint32_t maclen, uint32_t iplen, uint32_t l4len) {
    return ((maclen / 2) & 0x7F) | (((iplen / 4) & 0x7F) << 7) | (((l4len / 4) & 0xF) << 14);
  }

  static TxDataDesc Decode(const uint8_t desc[kTxDescSize]);
  void Encode(uint8_t desc[kTxDescSize]) const;
};

struct TxContextDesc {
  uint32_t tunneling = 0;  // qw0 31:0 (EXT_IP, EXT_IPLEN, NATT, ... raw)
  uint16_t l2tag2 = 0;     // qw0 47:32
  uint16_t cmd = 0;        // kTxCtxCmd* (16 bits)
  uint32_t tso_len = 0;    // payload bytes to segment (18 bits)
  uint16_t mss = 0;        // 14 bits

  static TxContextDesc Decode(const uint8_t desc[kTxDescSize]);
  void Encode(uint8_t desc[kTxDescSize]) const;
};

// Marks a transmitted descriptor done: qw1 DTYPE = 0xF, other bits of qw1
// kept (what the drivers test: low nibble != 0 for Linux, == 0xF for DPDK).
void TxMarkDone(uint8_t desc[kTxDescSize]);

// ------------------------------------------------------------------ RX
// Write-back STATUS bits (qw1 18:0).
inline constexpr uint32_t kRxStatusDd = 1u << 0;
inline constexpr uint32_t kRxStatusEof = 1u << 1;
inline constexpr uint32_t kRxStatusL2tag1p = 1u << 2;
inline constexpr uint32_t kRxStatusL3l4p = 1u << 3;
inline constexpr uint32_t kRxStatusCrcp = 1u << 4;
inline constexpr uint32_t kRxStatusUmbcastShift = 9;  // 2 bits: 0 uc, 1 mc, 2 bc
inline constexpr uint32_t kRxStatusFltstatShift = 12; // 2 bits: 3 = RSS hash valid
inline constexpr uint32_t kRxStatusFltstatRssHash = 3u << kRxStatusFltstatShift;
// ERROR bits (qw1 26:19), as an 8-bit field.
inline constexpr uint8_t kRxErrorRxe = 1u << 0;
inline constexpr uint8_t kRxErrorHbo = 1u << 2;
inline constexpr uint8_t kRxErrorIpe = 1u << 3;
inline constexpr uint8_t kRxErrorL4e = 1u << 4;
inline constexpr uint8_t kRxErrorEipe = 1u << 5;
inline constexpr uint8_t kRxErrorOversize = 1u << 6;

// Legacy packet types (decode tables of both drivers).
inline constexpr uint8_t kPtypeL2 = 1;
inline constexpr uint8_t kPtypeArp = 11;
inline constexpr uint8_t kPtypeIpv4Frag = 22;
inline constexpr uint8_t kPtypeIpv4Other = 23;
inline constexpr uint8_t kPtypeIpv4Udp = 24;
inline constexpr uint8_t kPtypeIpv4Tcp = 26;
inline constexpr uint8_t kPtypeIpv4Sctp = 27;
inline constexpr uint8_t kPtypeIpv4Icmp = 28;
inline constexpr uint8_t kPtypeIpv6Frag = 88;
inline constexpr uint8_t kPtypeIpv6Other = 89;
inline constexpr uint8_t kPtypeIpv6Udp = 90;
inline constexpr uint8_t kPtypeIpv6Tcp = 92;
inline constexpr uint8_t kPtypeIpv6Sctp = 93;
inline constexpr uint8_t kPtypeIpv6Icmp = 94;

inline constexpr uint32_t kRxMaxPbufLen = 0x3FFF;  // 14-bit PBUF_LEN

// Read format, as posted by the driver.
struct RxReadDesc {
  uint64_t pkt_addr = 0;
  uint64_t hdr_addr = 0;

  static RxReadDesc Decode(const uint8_t desc[kRxDescSize]);
  void Encode(uint8_t desc[kRxDescSize]) const;  // qw2/qw3 zeroed
};

// Write-back format, as written by the device.
struct RxWriteBack {
  uint16_t mirror = 0;      // qw0 15:0
  uint16_t l2tag1 = 0;      // qw0 31:16, valid with kRxStatusL2tag1p
  uint32_t rss_hash = 0;    // qw0 63:32, valid with FLTSTAT = 3
  uint32_t status = 0;      // qw1 18:0
  uint8_t error = 0;        // qw1 26:19
  uint8_t ptype = 0;        // qw1 37:30
  uint16_t pkt_len = 0;     // qw1 51:38
  uint16_t hdr_len = 0;     // qw1 62:52
  bool sph = false;         // qw1 63
  uint16_t ext_status = 0;  // qw2 15:0
  uint16_t l2tag2_1 = 0;    // qw2 47:32
  uint16_t l2tag2_2 = 0;    // qw2 63:48
  uint64_t qw3 = 0;         // flexible bytes / FD id

  static RxWriteBack Decode(const uint8_t desc[kRxDescSize]);
  // Encodes all four quad-words.
  void Encode(uint8_t desc[kRxDescSize]) const;
  uint64_t Qw1() const;
};

// Writes a write-back descriptor into a ring slot in (shared) guest memory
// so that the driver never sees DD before the rest: qw0, qw2, qw3 first,
// then a release fence, then qw1 (which carries DD).
void StoreRxWriteBack(uint8_t* slot, const RxWriteBack& wb);

}  // namespace emud::avf

#endif  // EMUD_AVF_DESCRIPTORS_H_
