#include "avf/descriptors.h"

#include <cstring>

#include "gtest/gtest.h"

namespace emud::avf {
namespace {

uint64_t Qw(const uint8_t* d, int i) {
  uint64_t v;
  std::memcpy(&v, d + 8 * i, 8);
  return v;
}

TEST(TxDataDesc, EncodesFieldsAtHardwarePositions) {
  TxDataDesc d;
  d.buffer_addr = 0x1122334455667788ull;
  d.cmd = kTxCmdEop | kTxCmdRs | kTxCmdIcrc | kTxCmdIiptIpv4Csum | kTxCmdL4tTcp;
  d.offset = TxDataDesc::MakeOffset(14, 20, 20);
  d.buf_size = 1514;
  d.l2tag1 = 0xabc;
  uint8_t raw[16];
  d.Encode(raw);
  EXPECT_EQ(Qw(raw, 0), 0x1122334455667788ull);
  uint64_t q1 = Qw(raw, 1);
  EXPECT_EQ(q1 & 0xF, 0u);
  EXPECT_EQ((q1 >> 4) & 0x3FF, uint64_t{d.cmd});
  EXPECT_EQ((q1 >> 16) & 0x7F, 7u);        // MACLEN in words
  EXPECT_EQ((q1 >> 23) & 0x7F, 5u);        // IPLEN in dwords
  EXPECT_EQ((q1 >> 30) & 0xF, 5u);         // L4LEN in dwords
  EXPECT_EQ((q1 >> 34) & 0x3FFF, 1514u);
  EXPECT_EQ(q1 >> 48, 0xabcu);

  TxDataDesc back = TxDataDesc::Decode(raw);
  EXPECT_EQ(back.buffer_addr, d.buffer_addr);
  EXPECT_EQ(back.cmd, d.cmd);
  EXPECT_EQ(back.maclen(), 14u);
  EXPECT_EQ(back.iplen(), 20u);
  EXPECT_EQ(back.l4len(), 20u);
  EXPECT_EQ(back.buf_size, 1514);
  EXPECT_EQ(back.l2tag1, 0xabc);
  EXPECT_EQ(TxDescType(raw), kTxDtypeData);
}

TEST(TxDataDesc, DecodesWhatLinuxBuilds) {
  // iavf_build_ctob: DTYPE_DATA | cmd << 4 | offset << 16 | size << 34 | tag << 48
  uint64_t cmd = kTxCmdEop | kTxCmdRs | kTxCmdIcrc;
  uint64_t q1 = 0 | (cmd << 4) | (uint64_t{7} << 16) | (uint64_t{60} << 34);
  uint8_t raw[16] = {};
  std::memcpy(raw + 8, &q1, 8);
  TxDataDesc d = TxDataDesc::Decode(raw);
  EXPECT_EQ(d.cmd, cmd);
  EXPECT_EQ(d.maclen(), 14u);
  EXPECT_EQ(d.buf_size, 60);
  EXPECT_EQ(d.l2tag1, 0);
}

TEST(TxDataDesc, MarkDoneSetsDtypeF) {
  TxDataDesc d;
  d.cmd = kTxCmdEop | kTxCmdRs;
  d.buf_size = 100;
  uint8_t raw[16];
  d.Encode(raw);
  TxMarkDone(raw);
  EXPECT_EQ(TxDescType(raw), kTxDtypeDescDone);
  EXPECT_EQ(TxDataDesc::Decode(raw).buf_size, 100);  // rest kept
}

TEST(TxContextDesc, RoundTripsTsoFields) {
  TxContextDesc c;
  c.cmd = kTxCtxCmdTso;
  c.tso_len = 0x3FFFF;
  c.mss = 1448;
  c.l2tag2 = 0x123;
  c.tunneling = 0x5a5a;
  uint8_t raw[16];
  c.Encode(raw);
  EXPECT_EQ(TxDescType(raw), kTxDtypeContext);
  uint64_t q1 = Qw(raw, 1);
  EXPECT_EQ((q1 >> 4) & 0xFFFF, uint64_t{kTxCtxCmdTso});
  EXPECT_EQ((q1 >> 30) & 0x3FFFF, 0x3FFFFu);
  EXPECT_EQ(q1 >> 50, 1448u);
  TxContextDesc back = TxContextDesc::Decode(raw);
  EXPECT_EQ(back.cmd, c.cmd);
  EXPECT_EQ(back.tso_len, c.tso_len);
  EXPECT_EQ(back.mss, c.mss);
  EXPECT_EQ(back.l2tag2, c.l2tag2);
  EXPECT_EQ(back.tunneling, c.tunneling);
}

TEST(TxDataDesc, OversizedFieldsAreTruncatedToTheirWidth) {
  TxDataDesc d;
  d.cmd = 0xFFFF;
  d.offset = 0xFFFFFFFF;
  d.buf_size = 0xFFFF;
  uint8_t raw[16];
  d.Encode(raw);
  TxDataDesc back = TxDataDesc::Decode(raw);
  EXPECT_EQ(back.dtype, kTxDtypeData);  // cmd did not leak into DTYPE
  EXPECT_EQ(back.cmd, 0x3FF);
  EXPECT_EQ(back.offset, 0x3FFFFu);
  EXPECT_EQ(back.buf_size, kTxMaxBufSize);
}

TEST(RxDesc, ReadFormat) {
  RxReadDesc r{0xdead0000, 0};
  uint8_t raw[32];
  std::memset(raw, 0xee, sizeof(raw));
  r.Encode(raw);
  EXPECT_EQ(Qw(raw, 0), 0xdead0000u);
  EXPECT_EQ(Qw(raw, 1), 0u);
  EXPECT_EQ(Qw(raw, 2), 0u);
  EXPECT_EQ(RxReadDesc::Decode(raw).pkt_addr, 0xdead0000u);
}

TEST(RxDesc, WriteBackFieldsAtHardwarePositions) {
  RxWriteBack w;
  w.status = kRxStatusDd | kRxStatusEof | kRxStatusL3l4p | kRxStatusFltstatRssHash;
  w.error = kRxErrorIpe;
  w.ptype = kPtypeIpv4Tcp;
  w.pkt_len = 1514;
  w.rss_hash = 0xcafebabe;
  w.l2tag1 = 100;
  uint8_t raw[32];
  w.Encode(raw);
  uint64_t q1 = Qw(raw, 1);
  EXPECT_EQ(q1 & 0x7FFFF, w.status);
  EXPECT_EQ((q1 >> 19) & 0xFF, uint64_t{kRxErrorIpe});
  EXPECT_EQ((q1 >> 30) & 0xFF, uint64_t{kPtypeIpv4Tcp});
  EXPECT_EQ((q1 >> 38) & 0x3FFF, 1514u);
  EXPECT_EQ(Qw(raw, 0) >> 32, 0xcafebabeu);
  EXPECT_EQ((Qw(raw, 0) >> 16) & 0xFFFF, 100u);
  RxWriteBack back = RxWriteBack::Decode(raw);
  EXPECT_EQ(back.status, w.status);
  EXPECT_EQ(back.error, w.error);
  EXPECT_EQ(back.ptype, w.ptype);
  EXPECT_EQ(back.pkt_len, w.pkt_len);
  EXPECT_EQ(back.rss_hash, w.rss_hash);
  EXPECT_EQ(back.l2tag1, w.l2tag1);
}

TEST(RxDesc, StoreWritesEveryQuadword) {
  RxWriteBack w;
  w.status = kRxStatusDd | kRxStatusEof;
  w.pkt_len = 64;
  w.qw3 = 0x0102030405060708ull;
  w.l2tag2_2 = 7;
  alignas(32) uint8_t slot[32];
  std::memset(slot, 0xff, sizeof(slot));
  StoreRxWriteBack(slot, w);
  uint8_t want[32];
  w.Encode(want);
  EXPECT_EQ(std::memcmp(slot, want, 32), 0);
}

}  // namespace
}  // namespace emud::avf
