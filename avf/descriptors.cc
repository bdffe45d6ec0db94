#include "avf/descriptors.h"

#include <cstring>

namespace emud::avf {

namespace {
uint64_t Get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
void Put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint64_t Bits(uint64_t v, int lo, int width) { return (v >> lo) & ((uint64_t{1} << width) - 1); }
}  // namespace

uint8_t TxDescType(const uint8_t desc[kTxDescSize]) { return desc[8] & 0xF; }

TxDataDesc TxDataDesc::Decode(const uint8_t desc[kTxDescSize]) {
  TxDataDesc d;
  d.buffer_addr = Get64(desc);
  uint64_t q1 = Get64(desc + 8);
  d.dtype = static_cast<uint8_t>(Bits(q1, 0, 4));
  d.cmd = static_cast<uint16_t>(Bits(q1, 4, 10));
  d.offset = static_cast<uint32_t>(Bits(q1, 16, 18));
  d.buf_size = static_cast<uint16_t>(Bits(q1, 34, 14));
  d.l2tag1 = static_cast<uint16_t>(Bits(q1, 48, 16));
  return d;
}

void TxDataDesc::Encode(uint8_t desc[kTxDescSize]) const {
  Put64(desc, buffer_addr);
  uint64_t q1 = (uint64_t{dtype} & 0xF) | ((uint64_t{cmd} & 0x3FF) << 4) |
                ((uint64_t{offset} & 0x3FFFF) << 16) | ((uint64_t{buf_size} & 0x3FFF) << 34) |
                (uint64_t{l2tag1} << 48);
  Put64(desc + 8, q1);
}

TxContextDesc TxContextDesc::Decode(const uint8_t desc[kTxDescSize]) {
  TxContextDesc c;
  uint64_t q0 = Get64(desc);
  uint64_t q1 = Get64(desc + 8);
  c.tunneling = static_cast<uint32_t>(Bits(q0, 0, 32));
  c.l2tag2 = static_cast<uint16_t>(Bits(q0, 32, 16));
  c.cmd = static_cast<uint16_t>(Bits(q1, 4, 16));
  c.tso_len = static_cast<uint32_t>(Bits(q1, 30, 18));
  c.mss = static_cast<uint16_t>(Bits(q1, 50, 14));
  return c;
}

void TxContextDesc::Encode(uint8_t desc[kTxDescSize]) const {
  Put64(desc, uint64_t{tunneling} | (uint64_t{l2tag2} << 32));
  uint64_t q1 = uint64_t{kTxDtypeContext} | (uint64_t{cmd} << 4) |
                ((uint64_t{tso_len} & 0x3FFFF) << 30) | ((uint64_t{mss} & 0x3FFF) << 50);
  Put64(desc + 8, q1);
}

void TxMarkDone(uint8_t desc[kTxDescSize]) { desc[8] = static_cast<uint8_t>((desc[8] & 0xF0) | kTxDtypeDescDone); }

RxReadDesc RxReadDesc::Decode(const uint8_t desc[kRxDescSize]) {
  return RxReadDesc{Get64(desc), Get64(desc + 8)};
}

void RxReadDesc::Encode(uint8_t desc[kRxDescSize]) const {
  Put64(desc, pkt_addr);
  Put64(desc + 8, hdr_addr);
  Put64(desc + 16, 0);
  Put64(desc + 24, 0);
}

uint64_t RxWriteBack::Qw1() const {
  return (uint64_t{status} & 0x7FFFF) | (uint64_t{error} << 19) | (uint64_t{ptype} << 30) |
         ((uint64_t{pkt_len} & 0x3FFF) << 38) | ((uint64_t{hdr_len} & 0x7FF) << 52) |
         (uint64_t{sph ? 1u : 0u} << 63);
}

RxWriteBack RxWriteBack::Decode(const uint8_t desc[kRxDescSize]) {
  RxWriteBack w;
  uint64_t q0 = Get64(desc), q1 = Get64(desc + 8), q2 = Get64(desc + 16);
  w.mirror = static_cast<uint16_t>(Bits(q0, 0, 16));
  w.l2tag1 = static_cast<uint16_t>(Bits(q0, 16, 16));
  w.rss_hash = static_cast<uint32_t>(Bits(q0, 32, 32));
  w.status = static_cast<uint32_t>(Bits(q1, 0, 19));
  w.error = static_cast<uint8_t>(Bits(q1, 19, 8));
  w.ptype = static_cast<uint8_t>(Bits(q1, 30, 8));
  w.pkt_len = static_cast<uint16_t>(Bits(q1, 38, 14));
  w.hdr_len = static_cast<uint16_t>(Bits(q1, 52, 11));
  w.sph = Bits(q1, 63, 1) != 0;
  w.ext_status = static_cast<uint16_t>(Bits(q2, 0, 16));
  w.l2tag2_1 = static_cast<uint16_t>(Bits(q2, 32, 16));
  w.l2tag2_2 = static_cast<uint16_t>(Bits(q2, 48, 16));
  w.qw3 = Get64(desc + 24);
  return w;
}

void RxWriteBack::Encode(uint8_t desc[kRxDescSize]) const {
  Put64(desc, uint64_t{mirror} | (uint64_t{l2tag1} << 16) | (uint64_t{rss_hash} << 32));
  Put64(desc + 8, Qw1());
  Put64(desc + 16, uint64_t{ext_status} | (uint64_t{l2tag2_1} << 32) | (uint64_t{l2tag2_2} << 48));
  Put64(desc + 24, qw3);
}

void StoreRxWriteBack(uint8_t* slot, const RxWriteBack& wb) {
  uint8_t tmp[kRxDescSize];
  wb.Encode(tmp);
  std::memcpy(slot, tmp, 8);
  std::memcpy(slot + 16, tmp + 16, 16);
  const uint64_t qw1 = wb.Qw1();
  if ((reinterpret_cast<uintptr_t>(slot + 8) & 7) == 0) {
    // Release store: everything above is visible before DD is.
    __atomic_store_n(reinterpret_cast<uint64_t*>(slot + 8), qw1, __ATOMIC_RELEASE);
  } else {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    std::memcpy(slot + 8, &qw1, 8);
  }
}

}  // namespace emud::avf
