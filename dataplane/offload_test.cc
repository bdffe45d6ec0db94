#include "dataplane/offload.h"

#include <cstring>
#include <random>
#include <vector>

#include "dataplane/tunnel_frames_testutil.h"
#include "gtest/gtest.h"

namespace emud::dataplane {
namespace {

// ---- Independent reference computations (byte-wise, big-endian words). ----

uint32_t RefSum(const std::vector<uint8_t>& b, uint32_t sum = 0) {
  for (size_t i = 0; i < b.size(); i += 2) {
    uint32_t w = uint32_t(b[i]) << 8;
    if (i + 1 < b.size()) w |= b[i + 1];
    sum += w;
  }
  return sum;
}
uint16_t RefFinish(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(~sum);
}
uint16_t Be16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
uint32_t Be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}
void PutBe16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
void PutBe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (24 - 8 * i));
}

// Reference L4 checksum (field zeroed) of the L4 segment of `frame`.
uint16_t RefL4(const std::vector<uint8_t>& frame, size_t l3, size_t l4, bool v6, uint8_t proto,
               size_t field) {
  std::vector<uint8_t> pseudo;
  if (!v6) {
    pseudo.insert(pseudo.end(), &frame[l3 + 12], &frame[l3 + 20]);
  } else {
    pseudo.insert(pseudo.end(), &frame[l3 + 8], &frame[l3 + 40]);
  }
  uint32_t len = uint32_t(frame.size() - l4);
  pseudo.push_back(0);
  pseudo.push_back(proto);
  pseudo.push_back(uint8_t(len >> 8));
  pseudo.push_back(uint8_t(len));
  std::vector<uint8_t> seg(frame.begin() + l4, frame.end());
  seg[field] = seg[field + 1] = 0;
  uint16_t c = RefFinish(RefSum(seg, RefSum(pseudo)));
  if (proto == 17 && c == 0) c = 0xffff;
  return c;
}

uint32_t RefCrc32c(const uint8_t* p, size_t n) {
  uint32_t c = 0xffffffff;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78 : c >> 1;
  }
  return ~c;
}

// Pseudo-header seed as the Linux stack leaves it for CHECKSUM_PARTIAL:
// non-inverted folded sum, optionally without the length (iavf_tso).
uint16_t Seed(const std::vector<uint8_t>& f, size_t l3, bool v6, uint8_t proto, uint32_t len,
              bool with_len) {
  std::vector<uint8_t> pseudo;
  if (!v6) pseudo.insert(pseudo.end(), &f[l3 + 12], &f[l3 + 20]);
  else pseudo.insert(pseudo.end(), &f[l3 + 8], &f[l3 + 40]);
  pseudo.push_back(0);
  pseudo.push_back(proto);
  if (with_len) {
    pseudo.push_back(uint8_t(len >> 8));
    pseudo.push_back(uint8_t(len));
  }
  uint32_t s = RefSum(pseudo);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return uint16_t(s);
}

struct Pkt {
  std::vector<uint8_t> f;
  size_t l3 = 14, l4 = 0;
  bool v6 = false;
  uint8_t proto = 6;
};

Pkt MakePacket(bool v6, uint8_t proto, size_t payload, std::mt19937& rng) {
  Pkt p;
  p.v6 = v6;
  p.proto = proto;
  size_t iplen = v6 ? 40 : 20;
  size_t l4len = proto == 6 ? 32 : (proto == 17 ? 8 : 12);  // TCP with 12 bytes of options
  p.l4 = 14 + iplen;
  p.f.resize(p.l4 + l4len + payload);
  for (auto& b : p.f) b = uint8_t(rng());
  uint8_t* e = p.f.data();
  PutBe16(e + 12, v6 ? 0x86dd : 0x0800);
  uint8_t* ip = e + 14;
  if (!v6) {
    ip[0] = 0x45;
    ip[1] = 0;
    PutBe16(ip + 2, uint16_t(p.f.size() - 14));
    PutBe16(ip + 4, 0xfffe);  // id wraps during TSO
    PutBe16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = proto;
    PutBe16(ip + 10, 0x1234);  // garbage, must be replaced
  } else {
    ip[0] = 0x60;
    ip[1] = ip[2] = ip[3] = 0;
    PutBe16(ip + 4, uint16_t(p.f.size() - p.l4));
    ip[6] = proto;
    ip[7] = 64;
  }
  uint8_t* l4 = e + p.l4;
  if (proto == 6) {
    PutBe32(l4 + 4, 0xfffffff0u);  // sequence wraps during TSO
    l4[12] = uint8_t((l4len / 4) << 4);
    l4[13] = 0x80 | 0x10 | 0x08 | 0x01;  // CWR ACK PSH FIN
  } else if (proto == 17) {
    PutBe16(l4 + 4, uint16_t(8 + payload));
  }
  return p;
}

TEST(Csum, MatchesReferenceAtAllLengthsAndAlignments) {
  std::mt19937 rng(1);
  std::vector<uint8_t> buf(3000 + 8);
  for (auto& b : buf) b = uint8_t(rng());
  for (size_t off = 0; off < 8; off += 2) {
    for (size_t len : {0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 63, 64, 65, 1499, 1500, 2999, 3000}) {
      std::vector<uint8_t> v(buf.begin() + off, buf.begin() + off + len);
      uint16_t ours = InternetChecksum(buf.data() + off, len);
      uint16_t ref = RefFinish(RefSum(v));
      // Ours is in memory order: compare as network bytes.
      uint8_t mem[2];
      std::memcpy(mem, &ours, 2);
      EXPECT_EQ(Be16(mem), ref) << "off " << off << " len " << len;
    }
  }
}

TEST(Csum, AllOnesAndCarryHeavyInput) {
  std::vector<uint8_t> v(4099, 0xff);
  uint16_t ours = InternetChecksum(v.data(), v.size());
  uint8_t mem[2];
  std::memcpy(mem, &ours, 2);
  EXPECT_EQ(Be16(mem), RefFinish(RefSum(v)));
}

TEST(Ipv4Header, ChecksumVerifiesToZero) {
  std::mt19937 rng(2);
  Pkt p = MakePacket(false, 6, 10, rng);
  absl::Span<uint8_t> hdr(p.f.data() + 14, 20);
  ASSERT_TRUE(FillIpv4HeaderChecksum(hdr).ok());
  std::vector<uint8_t> h(hdr.begin(), hdr.end());
  EXPECT_EQ(RefFinish(RefSum(h)), 0);
  EXPECT_FALSE(FillIpv4HeaderChecksum(absl::Span<uint8_t>(p.f.data() + 14, 19)).ok());
}

TEST(Crc32c, KnownVectorAndReference) {
  const char* s = "123456789";
  EXPECT_EQ(Crc32c(reinterpret_cast<const uint8_t*>(s), 9), 0xE3069283u);
  std::mt19937 rng(3);
  std::vector<uint8_t> v(1001);
  for (auto& b : v) b = uint8_t(rng());
  for (size_t n : {0, 1, 7, 8, 9, 100, 1001}) {
    EXPECT_EQ(Crc32c(v.data(), n), RefCrc32c(v.data(), n)) << n;
  }
  // Continuation.
  EXPECT_EQ(Crc32c(v.data() + 100, 901, Crc32c(v.data(), 100)), RefCrc32c(v.data(), 1001));
}

class ChecksumOffload : public ::testing::TestWithParam<std::tuple<bool, int, int>> {};

TEST_P(ChecksumOffload, CompletesFromDriverSeed) {
  auto [v6, proto, payload] = GetParam();
  std::mt19937 rng(payload * 7 + proto + v6);
  Pkt p = MakePacket(v6, uint8_t(proto), payload, rng);
  size_t field = proto == 6 ? 16 : (proto == 17 ? 6 : 8);
  uint32_t l4bytes = uint32_t(p.f.size() - p.l4);
  if (proto != 132) {
    uint16_t seed = Seed(p.f, p.l3, v6, uint8_t(proto), l4bytes, true);
    PutBe16(&p.f[p.l4 + field], seed);
  }
  TxOffload off;
  off.maclen = 14;
  off.iplen = v6 ? 40 : 20;
  off.iipt = v6 ? TxOffload::kIiptIpv6 : TxOffload::kIiptIpv4Csum;
  off.l4t = proto == 6 ? TxOffload::kL4Tcp : (proto == 17 ? TxOffload::kL4Udp : TxOffload::kL4Sctp);
  ASSERT_TRUE(ApplyChecksumOffloads(absl::MakeSpan(p.f), off).ok());
  if (!v6) {
    std::vector<uint8_t> h(p.f.begin() + 14, p.f.begin() + 34);
    EXPECT_EQ(RefFinish(RefSum(h)), 0) << "IPv4 header checksum";
  }
  if (proto == 132) {
    std::vector<uint8_t> s(p.f.begin() + p.l4, p.f.end());
    uint32_t stored;
    std::memcpy(&stored, &s[8], 4);
    s[8] = s[9] = s[10] = s[11] = 0;
    EXPECT_EQ(stored, RefCrc32c(s.data(), s.size()));
  } else {
    EXPECT_EQ(Be16(&p.f[p.l4 + field]), RefL4(p.f, p.l3, p.l4, v6, uint8_t(proto), field));
  }
}

INSTANTIATE_TEST_SUITE_P(All, ChecksumOffload,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(6, 17, 132),
                                            ::testing::Values(0, 1, 2, 3, 45, 1401, 8999)));

TEST(ChecksumOffloadBad, RejectsOffsetsOutsideFrame) {
  std::vector<uint8_t> f(40, 0);
  f[14] = 0x45;
  TxOffload off;
  off.maclen = 14;
  off.iplen = 20;
  off.iipt = TxOffload::kIiptIpv4Csum;
  off.l4t = TxOffload::kL4Tcp;
  EXPECT_FALSE(ApplyChecksumOffloads(absl::MakeSpan(f), off).ok());  // TCP header cut
  off.maclen = 254;
  EXPECT_FALSE(ApplyChecksumOffloads(absl::MakeSpan(f), off).ok());
}

class Tso : public ::testing::TestWithParam<std::tuple<bool, bool, int, int>> {};

TEST_P(Tso, SegmentsMatchReference) {
  auto [v6, udp, payload, mss] = GetParam();
  uint8_t proto = udp ? 17 : 6;
  std::mt19937 rng(payload + mss + v6 * 3 + udp);
  Pkt p = MakePacket(v6, proto, payload, rng);
  size_t field = udp ? 6 : 16;
  // What iavf_tso leaves: IP length fields and IPv4 checksum zeroed, L4 seed
  // without the length.
  if (!v6) {
    PutBe16(&p.f[14 + 2], 0);
    PutBe16(&p.f[14 + 10], 0);
  } else {
    PutBe16(&p.f[14 + 4], 0);
  }
  PutBe16(&p.f[p.l4 + field], Seed(p.f, p.l3, v6, proto, 0, false));
  TxOffload off;
  off.maclen = 14;
  off.iplen = v6 ? 40 : 20;
  off.l4len = udp ? 8 : 32;
  off.iipt = v6 ? TxOffload::kIiptIpv6 : TxOffload::kIiptIpv4Csum;
  off.l4t = udp ? TxOffload::kL4Udp : TxOffload::kL4Tcp;
  off.tso = true;
  off.tso_len = uint32_t(payload);
  off.mss = uint32_t(mss);
  size_t hdr = p.l4 + off.l4len;
  std::vector<uint8_t> scratch;
  std::vector<std::vector<uint8_t>> segs;
  ASSERT_TRUE(SegmentTso(p.f, off, scratch, [&](absl::Span<const uint8_t> s) {
                segs.emplace_back(s.begin(), s.end());
              }).ok());
  size_t expect_n = (payload + mss - 1) / mss;
  ASSERT_EQ(segs.size(), expect_n);
  std::vector<uint8_t> joined;
  for (size_t i = 0; i < segs.size(); ++i) {
    const auto& s = segs[i];
    size_t pay = s.size() - hdr;
    EXPECT_EQ(pay, std::min<size_t>(mss, payload - i * mss));
    EXPECT_EQ(0, std::memcmp(s.data(), p.f.data(), 14)) << "MAC header replicated";
    if (!v6) {
      EXPECT_EQ(Be16(&s[16]), s.size() - 14);
      EXPECT_EQ(Be16(&s[18]), uint16_t(0xfffe + i));
      std::vector<uint8_t> h(s.begin() + 14, s.begin() + 34);
      EXPECT_EQ(RefFinish(RefSum(h)), 0) << "segment " << i;
    } else {
      EXPECT_EQ(Be16(&s[18]), s.size() - p.l4);
    }
    if (!udp) {
      EXPECT_EQ(Be32(&s[p.l4 + 4]), uint32_t(0xfffffff0u + i * mss));
      uint8_t f = s[p.l4 + 13];
      bool last = i + 1 == segs.size();
      EXPECT_EQ((f & 0x01) != 0, last) << "FIN";
      EXPECT_EQ((f & 0x08) != 0, last) << "PSH";
      EXPECT_EQ((f & 0x80) != 0, i == 0) << "CWR";
      EXPECT_TRUE(f & 0x10) << "ACK";
      EXPECT_EQ(0, std::memcmp(&s[p.l4 + 20], &p.f[p.l4 + 20], 12)) << "TCP options";
    } else {
      EXPECT_EQ(Be16(&s[p.l4 + 4]), s.size() - p.l4);
    }
    EXPECT_EQ(Be16(&s[p.l4 + field]), RefL4(s, 14, p.l4, v6, proto, field)) << "segment " << i;
    joined.insert(joined.end(), s.begin() + hdr, s.end());
  }
  EXPECT_EQ(joined, std::vector<uint8_t>(p.f.begin() + hdr, p.f.end()));
}

INSTANTIATE_TEST_SUITE_P(All, Tso,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values(1, 1447, 1448, 1449, 9001, 64001),
                                            ::testing::Values(536, 1448, 1447)));

TEST(TsoBad, RejectsNonsense) {
  std::mt19937 rng(9);
  Pkt p = MakePacket(false, 6, 3000, rng);
  TxOffload off;
  off.maclen = 14;
  off.iplen = 20;
  off.l4len = 32;
  off.iipt = TxOffload::kIiptIpv4Csum;
  off.l4t = TxOffload::kL4Tcp;
  off.tso = true;
  off.tso_len = 3000;
  off.mss = 0;
  std::vector<uint8_t> scratch;
  int n = 0;
  auto emit = [&](absl::Span<const uint8_t>) { ++n; };
  EXPECT_FALSE(SegmentTso(p.f, off, scratch, emit).ok());
  off.mss = 1000;
  off.tso_len = 3001;  // longer than the frame
  EXPECT_FALSE(SegmentTso(p.f, off, scratch, emit).ok());
  off.tso_len = 3000;
  off.l4len = 4;
  EXPECT_FALSE(SegmentTso(p.f, off, scratch, emit).ok());
  off.l4len = 32;
  off.iipt = TxOffload::kIiptIpv6;  // header says v4
  EXPECT_FALSE(SegmentTso(p.f, off, scratch, emit).ok());
  off.iipt = TxOffload::kIiptIpv4Csum;
  off.mss = 64;
  EXPECT_FALSE(SegmentTso(p.f, off, scratch, emit, /*max_segments=*/10).ok());
  EXPECT_EQ(n, 0);
  EXPECT_TRUE(SegmentTso(p.f, off, scratch, emit).ok());
  EXPECT_EQ(n, 47);
}

TEST(RxChecksums, VerifiesWhatTxCompleted) {
  for (bool v6 : {false, true}) {
    for (int proto : {6, 17}) {
      std::mt19937 rng(proto + v6);
      Pkt p = MakePacket(v6, uint8_t(proto), 333, rng);
      size_t field = proto == 6 ? 16 : 6;
      uint32_t l4bytes = uint32_t(p.f.size() - p.l4);
      if (!v6) PutBe16(&p.f[14 + 2], uint16_t(p.f.size() - 14));
      PutBe16(&p.f[p.l4 + field], Seed(p.f, p.l3, v6, uint8_t(proto), l4bytes, true));
      TxOffload off;
      off.maclen = 14;
      off.iplen = v6 ? 40 : 20;
      off.iipt = v6 ? TxOffload::kIiptIpv6 : TxOffload::kIiptIpv4Csum;
      off.l4t = proto == 6 ? TxOffload::kL4Tcp : TxOffload::kL4Udp;
      ASSERT_TRUE(ApplyChecksumOffloads(absl::MakeSpan(p.f), off).ok());
      EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked) << v6 << proto;
      p.f.back() ^= 0x40;  // corrupt the payload
      EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked | RxCsum::kL4Bad) << v6 << proto;
      if (!v6) {
        p.f[14 + 8] ^= 1;  // TTL: the IPv4 header checksum breaks
        EXPECT_TRUE(CheckRxChecksums(p.f) & RxCsum::kIpBad);
        // A fragment: the header checksum is still checked (DPDK reports IP
        // GOOD whenever IPE is clear), the L4 is not.
        p.f[14 + 6] = 0x20;  // MF
        EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked | RxCsum::kIpBad) << proto;
        PutBe16(&p.f[14 + 10], 0);
        PutBe16(&p.f[14 + 10], RefFinish(RefSum(std::vector<uint8_t>(&p.f[14], &p.f[34]))));
        EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked) << proto;
      }
    }
  }
  // IPv4 carrying neither TCP nor UDP (ICMP, GRE, ...): the header checksum
  // result is reported, never discarded.
  {
    std::mt19937 rng(7);
    Pkt p = MakePacket(false, 6, 40, rng);
    p.f[14 + 9] = 1;  // ICMP
    PutBe16(&p.f[14 + 10], 0);
    PutBe16(&p.f[14 + 10], RefFinish(RefSum(std::vector<uint8_t>(&p.f[14], &p.f[34]))));
    EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked);
    p.f[14 + 8] ^= 1;
    EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked | RxCsum::kIpBad);
    p.f[14 + 9] = 47;  // GRE
    EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked | RxCsum::kIpBad);
  }
  std::vector<uint8_t> arp(60, 0);
  arp[12] = 0x08;
  arp[13] = 0x06;
  EXPECT_EQ(CheckRxChecksums(arp), 0u);
  std::mt19937 rng(1);
  Pkt t = MakePacket(false, 6, 100, rng);
  PutBe16(&t.f[14 + 2], 2000);  // IP length beyond the frame
  PutBe16(&t.f[14 + 10], 0);
  PutBe16(&t.f[14 + 10], RefFinish(RefSum(std::vector<uint8_t>(&t.f[14], &t.f[34]))));
  // L4 not checkable: no L3L4P (Linux would take a clear L4E on a TCP ptype
  // for CHECKSUM_UNNECESSARY) ...
  EXPECT_EQ(CheckRxChecksums(t.f), 0u);
  // ... unless the header checksum is wrong: that is reported.
  t.f[14 + 8] ^= 1;
  EXPECT_EQ(CheckRxChecksums(t.f), RxCsum::kChecked | RxCsum::kIpBad);
}

// ---- RX checksums of tunnelled packets (VXLAN, GENEVE, GRE). ----

using testutil::BuildTunnel;
using testutil::Tun;
using testutil::TunFrame;
using testutil::TunSpec;

using testutil::Describe;
using testutil::FixOuterUdp;
using testutil::TunnelSpecs;

TEST(RxTunnelChecksums, EachChecksumReportsItsOwnBit) {
  for (const TunSpec& s : TunnelSpecs()) {
    SCOPED_TRACE(Describe(s));
    const TunFrame good = BuildTunnel(s);
    EXPECT_EQ(CheckRxChecksums(good.f), RxCsum::kChecked);
    EXPECT_NE(ClassifyRxTunnel(good.f, good.outer_l3, s.outer_v6), 0);
    if (!s.outer_v6) {  // outer IPv4 header (TTL: not in any pseudo-header)
      TunFrame t = good;
      t.f[t.outer_l3 + 8] ^= 1;
      EXPECT_EQ(CheckRxChecksums(t.f), RxCsum::kChecked | RxCsum::kOuterIpBad);
    }
    if (s.tun != Tun::kGre) {
      TunFrame t = good;
      t.f[t.outer_l4 + 6] ^= 0x10;  // the outer UDP checksum field
      EXPECT_EQ(CheckRxChecksums(t.f), s.outer_udp_csum || t.f[t.outer_l4 + 6] != 0
                                           ? RxCsum::kChecked | RxCsum::kOuterUdpBad
                                           : RxCsum::kChecked);
    }
    if (!s.inner_v6) {  // inner IPv4 header
      TunFrame t = good;
      t.f[t.inner_l3 + 8] ^= 1;
      FixOuterUdp(t, s);
      EXPECT_EQ(CheckRxChecksums(t.f), RxCsum::kChecked | RxCsum::kIpBad);
    }
    {  // inner TCP/UDP
      TunFrame t = good;
      t.f.back() ^= 0x21;
      FixOuterUdp(t, s);
      EXPECT_EQ(CheckRxChecksums(t.f), RxCsum::kChecked | RxCsum::kL4Bad);
    }
    if (!s.outer_v6 && !s.inner_v6) {  // all four at once
      TunFrame t = good;
      t.f.back() ^= 0x21;
      t.f[t.inner_l3 + 8] ^= 1;
      if (s.tun != Tun::kGre && s.outer_udp_csum) t.f[t.outer_l4 + 6] ^= 0x10;
      t.f[t.outer_l3 + 8] ^= 1;
      EXPECT_EQ(CheckRxChecksums(t.f),
                RxCsum::kChecked | RxCsum::kIpBad | RxCsum::kL4Bad | RxCsum::kOuterIpBad |
                    (s.tun != Tun::kGre && s.outer_udp_csum ? RxCsum::kOuterUdpBad : 0));
    }
  }
}

TEST(RxTunnelChecksums, UncheckedInnerL4ReportsOnlyBadIpHeaders) {
  TunSpec s;
  s.tun = Tun::kVxlan;
  TunFrame t = BuildTunnel(s);
  // The inner IPv4 length runs past the outer packet: its L4 is not checked.
  testutil::tun_internal::Put16(t.f, t.inner_l3 + 2, 1400);
  t.f[t.inner_l3 + 10] = t.f[t.inner_l3 + 11] = 0;
  testutil::tun_internal::Put16(
      t.f, t.inner_l3 + 10,
      testutil::tun_internal::Finish(testutil::tun_internal::Sum(t.f, t.inner_l3, 20)));
  FixOuterUdp(t, s);
  EXPECT_EQ(CheckRxChecksums(t.f), 0u);
  EXPECT_NE(ClassifyRxTunnel(t.f, t.outer_l3, false), 0) << "still a tunnel packet";
  t.f[t.outer_l3 + 8] ^= 1;
  EXPECT_EQ(CheckRxChecksums(t.f), RxCsum::kChecked | RxCsum::kOuterIpBad);
}

TEST(RxTunnelChecksums, TruncatedInnerHeadersAreTheOuterPacketOnly) {
  for (const TunSpec& s : TunnelSpecs()) {
    SCOPED_TRACE(Describe(s));
    const TunFrame good = BuildTunnel(s);
    // The outer packet ends inside the tunnel/inner headers (lengths and
    // checksums consistent): the outer packet's own checks, no tunnel.
    for (size_t end = good.outer_l4 + 8; end < good.inner_l3 + (s.inner_v6 ? 40 : 20); ++end) {
      std::vector<uint8_t> f(good.f.begin(), good.f.begin() + end);
      using namespace testutil::tun_internal;
      const size_t ol4len = end - good.outer_l4;
      if (s.outer_v6) {
        Put16(f, good.outer_l3 + 4, uint16_t(ol4len));
      } else {
        Put16(f, good.outer_l3 + 2, uint16_t(20 + ol4len));
        Put16(f, good.outer_l3 + 10, 0);
        Put16(f, good.outer_l3 + 10, Finish(Sum(f, good.outer_l3, 20)));
      }
      if (s.tun != Tun::kGre) {
        Put16(f, good.outer_l4 + 4, uint16_t(ol4len));
        PutL4Csum(f, good.outer_l3, s.outer_v6, 17, good.outer_l4, ol4len, 6);
      }
      EXPECT_EQ(ClassifyRxTunnel(f, good.outer_l3, s.outer_v6), 0) << end;
      // UDP: checked as plain UDP; GRE over IPv4: the header alone; GRE over
      // IPv6: not an L4 that is checked.
      const uint32_t want = s.tun != Tun::kGre || !s.outer_v6 ? RxCsum::kChecked : 0u;
      EXPECT_EQ(CheckRxChecksums(f), want) << end;
    }
    // The frame cut anywhere (lengths left as they were): never a read past
    // it (ASan), never a tunnel report.
    for (size_t end = 0; end < good.f.size(); ++end) {
      const absl::Span<const uint8_t> f(good.f.data(), end);
      const uint32_t c = CheckRxChecksums(f);
      EXPECT_EQ(c & (RxCsum::kOuterUdpBad | RxCsum::kL4Bad), 0u) << end;
      if (end >= good.outer_l4) {
        EXPECT_EQ(ClassifyRxTunnel(f, good.outer_l3, s.outer_v6), 0);
      }
    }
  }
}

// SCTP: the CRC32c is verified (DPDK reports L4 GOOD when L4E is clear);
// the reference CRC is the bitwise one, stored little-endian (RFC 4960 B).
TEST(RxChecksums, VerifiesSctpCrc32c) {
  for (bool v6 : {false, true}) {
    std::mt19937 rng(11 + v6);
    Pkt p = MakePacket(v6, 132, 200, rng);
    if (!v6) {
      PutBe16(&p.f[14 + 10], 0);
      PutBe16(&p.f[14 + 10], RefFinish(RefSum(std::vector<uint8_t>(&p.f[14], &p.f[34]))));
    }
    std::memset(&p.f[p.l4 + 8], 0, 4);
    uint32_t crc = RefCrc32c(&p.f[p.l4], p.f.size() - p.l4);
    for (int i = 0; i < 4; ++i) p.f[p.l4 + 8 + i] = uint8_t(crc >> (8 * i));
    EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked) << v6;
    p.f[p.l4 + 20] ^= 0x01;
    EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked | RxCsum::kL4Bad) << v6;
    p.f[p.l4 + 20] ^= 0x01;
    p.f[p.l4 + 9] ^= 0x80;  // the CRC itself
    EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked | RxCsum::kL4Bad) << v6;
  }
  // What the TX offload fills in, RX accepts.
  std::mt19937 rng(5);
  Pkt p = MakePacket(false, 132, 77, rng);
  TxOffload off;
  off.maclen = 14;
  off.iplen = 20;
  off.iipt = TxOffload::kIiptIpv4Csum;
  off.l4t = TxOffload::kL4Sctp;
  ASSERT_TRUE(ApplyChecksumOffloads(absl::MakeSpan(p.f), off).ok());
  EXPECT_EQ(CheckRxChecksums(p.f), RxCsum::kChecked);
  // Too short to hold an SCTP common header: nothing reported.
  std::vector<uint8_t> shorty(p.f.begin(), p.f.begin() + 14 + 20 + 8);
  PutBe16(&shorty[14 + 2], 28);
  PutBe16(&shorty[14 + 10], 0);
  PutBe16(&shorty[14 + 10], RefFinish(RefSum(std::vector<uint8_t>(&shorty[14], &shorty[34]))));
  EXPECT_EQ(CheckRxChecksums(shorty), 0u);
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

// IPv6 with extension headers: DPDK reports L4 GOOD when L4E is clear, so
// the L4 behind hop-by-hop / destination options headers is verified too.
// Routing headers (the pseudo-header uses the final destination) and
// fragments are not checked.
TEST(RxChecksums, Ipv6ExtensionHeaders) {
  for (int proto : {6, 17, 132}) {
    std::mt19937 rng(proto);
    Pkt p = MakePacket(true, uint8_t(proto), 150, rng);
    // Insert a hop-by-hop (8 bytes) and a destination options header
    // (16 bytes) between the IPv6 header and the L4 header.
    std::vector<uint8_t> hbh = {60, 0, 1, 4, 0, 0, 0, 0};
    std::vector<uint8_t> dst = {uint8_t(proto), 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    std::vector<uint8_t> f(p.f.begin(), p.f.begin() + 54);
    f.insert(f.end(), hbh.begin(), hbh.end());
    f.insert(f.end(), dst.begin(), dst.end());
    f.insert(f.end(), p.f.begin() + 54, p.f.end());
    f[14 + 6] = 0;  // next header: hop-by-hop
    PutBe16(&f[14 + 4], uint16_t(f.size() - 54));
    const size_t l4 = 54 + 24;
    const uint32_t l4bytes = uint32_t(f.size() - l4);
    if (proto == 132) {
      std::memset(&f[l4 + 8], 0, 4);
      uint32_t crc = RefCrc32c(&f[l4], l4bytes);
      for (int i = 0; i < 4; ++i) f[l4 + 8 + i] = uint8_t(crc >> (8 * i));
    } else {
      const size_t field = proto == 6 ? 16 : 6;
      if (proto == 17) PutBe16(&f[l4 + 4], uint16_t(l4bytes));
      // Reference over the L4 segment with the pseudo-header (RFC 8200 8.1).
      std::vector<uint8_t> pseudo(&f[14 + 8], &f[14 + 40]);
      pseudo.insert(pseudo.end(), {0, 0, uint8_t(l4bytes >> 8), uint8_t(l4bytes), 0, 0, 0,
                                   uint8_t(proto)});
      f[l4 + field] = f[l4 + field + 1] = 0;
      std::vector<uint8_t> seg(f.begin() + l4, f.end());
      uint16_t c = RefFinish(RefSum(seg, RefSum(pseudo)));
      if (proto == 17 && c == 0) c = 0xffff;
      PutBe16(&f[l4 + field], c);
    }
    EXPECT_EQ(CheckRxChecksums(f), RxCsum::kChecked) << proto;
    f.back() ^= 0x10;
    EXPECT_EQ(CheckRxChecksums(f), RxCsum::kChecked | RxCsum::kL4Bad) << proto;
    f.back() ^= 0x10;
    // A routing header instead of the destination options: not checked.
    f[54] = 43;
    EXPECT_EQ(CheckRxChecksums(f), 0u) << proto;
    // A fragment header: not checked.
    f[54] = 44;
    EXPECT_EQ(CheckRxChecksums(f), 0u) << proto;
    // An extension header running past the payload: not checked.
    f[54] = 60;
    f[54 + 8 + 1] = 200;
    EXPECT_EQ(CheckRxChecksums(f), 0u) << proto;
  }
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

// RFC 1071 over 16-bit words in memory order (little-endian loads, as
// CsumPartial's native-order sum), an odd last byte as the low byte.
uint16_t ReferenceFold(const uint8_t* p, size_t n) {
  uint64_t sum = 0;
  for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i]) | uint32_t(p[i + 1]) << 8;
  if (n & 1) sum += p[n - 1];
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(sum);
}

TEST(CsumPartialTest, EveryLengthAndAlignmentMatchesRfc1071) {
  std::vector<uint8_t> buf(400);
  uint32_t x = 12345;
  for (auto& b : buf) {
    x = x * 1103515245 + 12345;
    b = uint8_t(x >> 16);
  }
  for (size_t off = 0; off < 8; ++off) {
    for (size_t len = 0; len <= 300; ++len) {
      const uint8_t* p = buf.data() + off;
      ASSERT_EQ(CsumFold(CsumPartial(p, len, 0)), ReferenceFold(p, len)) << "off " << off << " len " << len;
    }
  }
  std::vector<uint8_t> ones(7, 0xff);
  for (size_t len = 1; len <= 7; ++len) {
    EXPECT_EQ(CsumFold(CsumPartial(ones.data(), len, 0)), ReferenceFold(ones.data(), len)) << len;
  }
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

// CheckRxChecksums takes untagged IPv4/UDP frames without a UDP checksum on
// a short path; a VLAN tag sends the same frame through the general walk.
// Both must agree on every variation of the fields the short path reads.
TEST(RxChecksums, UdpShortPathAgreesWithTheGeneralWalk) {
  std::mt19937 rng(7);
  int short_path = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    size_t len = 34 + rng() % 80;
    std::vector<uint8_t> f(len);
    for (auto& b : f) b = uint8_t(rng());
    f[12] = 0x08;
    f[13] = 0x00;
    f[14] = (rng() % 8) ? 0x45 : uint8_t(rng());
    f[23] = (rng() % 8) ? 17 : uint8_t(rng());
    if (rng() % 2) f[20] = f[21] = 0;  // not a fragment
    const size_t tot = (rng() % 4) ? len - 14 - rng() % 3 : rng() % 0x10000;
    f[16] = uint8_t(tot >> 8);
    f[17] = uint8_t(tot);
    if (len >= 42 && rng() % 4) f[40] = f[41] = 0;  // no UDP checksum
    if (rng() % 2) {  // a valid IPv4 header checksum
      f[24] = f[25] = 0;
      uint32_t sum = 0;
      for (int i = 14; i < 34; i += 2) sum += uint32_t(f[i] << 8 | f[i + 1]);
      while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
      f[24] = uint8_t(~sum >> 8);
      f[25] = uint8_t(~sum);
    }
    std::vector<uint8_t> tagged(f.begin(), f.begin() + 12);
    const uint8_t tag[4] = {0x81, 0x00, 0x00, 0x05};
    tagged.insert(tagged.end(), tag, tag + 4);
    tagged.insert(tagged.end(), f.begin() + 12, f.end());
    const uint32_t untagged = CheckRxChecksums(f);
    ASSERT_EQ(untagged, CheckRxChecksums(tagged)) << "iteration " << iter;
    if (f[14] == 0x45 && f[23] == 17 && len >= 42 && f[40] == 0 && f[41] == 0) ++short_path;
  }
  EXPECT_GT(short_path, 1000);
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

TEST(EthernetFcs, CheckValueAndBitwiseReference) {
  const char* check = "123456789";
  EXPECT_EQ(EthernetFcs(reinterpret_cast<const uint8_t*>(check), 9), 0xCBF43926u);
  EXPECT_EQ(EthernetFcs(nullptr, 0), 0u);
  std::mt19937 rng(7);
  for (size_t len : {1, 7, 8, 9, 60, 64, 1514, 9000}) {
    std::vector<uint8_t> d(len);
    for (auto& b : d) b = uint8_t(rng());
    uint32_t c = 0xFFFFFFFF;
    for (uint8_t b : d) {
      c ^= b;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    EXPECT_EQ(EthernetFcs(d.data(), d.size()), ~c) << len;
    // A frame followed by its FCS (LSB first) has the CRC residue 0x2144DF1C.
    for (int i = 0; i < 4; ++i) d.push_back(uint8_t(~c >> (8 * i)));
    EXPECT_EQ(EthernetFcs(d.data(), d.size()), 0x2144DF1Cu) << len;
  }
}

// Context qword 0 tunnelling fields at the bit positions iavf_type.h gives
// (IAVF_TXD_CTX_QW0_*): EIPT 1:0, EIPLEN 7:2 (dwords), L4TUNT 10:9,
// EIP_NOINC 11, L4TUNLEN 18:12 (words), L4T_CS 23.
TEST(TxTunnelDecode, FieldPositions) {
  // VXLAN over IPv4 as Linux writes it for a GSO_UDP_TUNNEL_CSUM skb:
  // EIPT 3, EIPLEN 5, UDP tunnel, NATLEN 15 (8 UDP + 8 VXLAN + 14 MAC), L4T_CS.
  const uint64_t qw0 = 0x3 | (5u << 2) | (1u << 9) | (15u << 12) | (1u << 23) |
                       (uint64_t{0xABCD} << 32);  // L2TAG2: not a tunnelling field
  TxTunnel t = TxTunnel::Decode(qw0);
  EXPECT_TRUE(t.present);
  EXPECT_EQ(t.eipt, TxTunnel::kIpv4Csum);
  EXPECT_EQ(t.eiplen, 20u);
  EXPECT_EQ(t.natt, TxTunnel::kNattUdp);
  EXPECT_EQ(t.natlen, 30u);
  EXPECT_TRUE(t.l4t_cs);
  EXPECT_FALSE(t.eip_noinc);
  t = TxTunnel::Decode(0x1 | (10u << 2) | (2u << 9) | (1u << 11) | (9u << 12));
  EXPECT_EQ(t.eipt, TxTunnel::kIpv6);
  EXPECT_EQ(t.eiplen, 40u);
  EXPECT_EQ(t.natt, TxTunnel::kNattGre);
  EXPECT_EQ(t.natlen, 18u);
  EXPECT_TRUE(t.eip_noinc);
  EXPECT_FALSE(t.l4t_cs);
  EXPECT_FALSE(TxTunnel::Decode(uint64_t{0xABCD} << 32).present);
}

// IP-in-IPv6 (L4TUNT 0, L4TUNLEN 0: Linux IPPROTO_IPIP, DPDK TUNNEL_IPIP):
// the inner IPv4 header starts right after the outer IPv6 one; inner IPv4
// header checksum and inner SCTP CRC32c.
TEST(TunnelChecksums, IpInIpv6WithInnerSctp) {
  std::vector<uint8_t> f(14 + 40 + 20 + 12 + 64);
  f[12] = 0x86;
  f[13] = 0xDD;
  f[14] = 0x60;
  PutBe16(&f[14 + 4], uint16_t(f.size() - 54));
  f[14 + 6] = 4;  // IPv4 inside
  for (int i = 0; i < 32; ++i) f[14 + 8 + i] = uint8_t(i * 5 + 1);
  const size_t il3 = 54, il4 = 74;
  f[il3] = 0x45;
  PutBe16(&f[il3 + 2], uint16_t(f.size() - il3));
  f[il3 + 8] = 64;
  f[il3 + 9] = 132;
  for (int i = 0; i < 8; ++i) f[il3 + 12 + i] = uint8_t(0x40 + i);
  PutBe16(&f[il3 + 10], 0x7777);  // junk: the device computes it
  for (size_t i = il4; i < f.size(); ++i) f[i] = uint8_t(i * 3);
  TxOffload off;
  off.iipt = TxOffload::kIiptIpv4Csum;
  off.l4t = TxOffload::kL4Sctp;
  off.maclen = 14;
  off.iplen = 20;
  off.tun = TxTunnel::Decode(0x1 | (10u << 2));
  std::vector<uint8_t> out = f;
  ASSERT_TRUE(ApplyChecksumOffloads(absl::MakeSpan(out), off).ok());
  std::vector<uint8_t> ip(out.begin() + il3, out.begin() + il4);
  EXPECT_EQ(RefFinish(RefSum(ip)), 0) << "inner IPv4 header verifies";
  std::vector<uint8_t> sctp(out.begin() + il4, out.end());
  uint32_t stored = uint32_t(sctp[8]) | uint32_t(sctp[9]) << 8 | uint32_t(sctp[10]) << 16 |
                    uint32_t(sctp[11]) << 24;
  std::memset(&sctp[8], 0, 4);
  EXPECT_EQ(stored, RefCrc32c(sctp.data(), sctp.size()));
  EXPECT_EQ(0, std::memcmp(out.data(), f.data(), il3)) << "outer IPv6 untouched";

  // The same descriptors with IPv4 as the outer type: refused, unchanged.
  off.tun = TxTunnel::Decode(0x3 | (10u << 2));
  std::vector<uint8_t> again = f;
  EXPECT_FALSE(ApplyChecksumOffloads(absl::MakeSpan(again), off).ok());
  EXPECT_EQ(again, f);
}

}  // namespace
}  // namespace emud::dataplane
