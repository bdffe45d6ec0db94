#include "dataplane/rss.h"

#include <array>
#include <vector>

#include "gtest/gtest.h"

namespace emud::dataplane {
namespace {

// The Microsoft RSS verification key and vectors ("Verifying the RSS Hash
// Calculation").
const std::vector<uint8_t> kKey = {
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
    0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
    0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa};

std::vector<uint8_t> Ipv4Tcp(std::array<uint8_t, 4> src, std::array<uint8_t, 4> dst,
                             uint16_t sport, uint16_t dport) {
  std::vector<uint8_t> f(14 + 20 + 20, 0);
  f[12] = 0x08;
  f[14] = 0x45;
  f[23] = 6;
  std::copy(src.begin(), src.end(), f.begin() + 26);
  std::copy(dst.begin(), dst.end(), f.begin() + 30);
  f[34] = uint8_t(sport >> 8);
  f[35] = uint8_t(sport);
  f[36] = uint8_t(dport >> 8);
  f[37] = uint8_t(dport);
  return f;
}

TEST(Rss, MicrosoftIpv4Vectors) {
  // 66.9.149.187:2794 -> 161.142.100.80:1766
  auto f = Ipv4Tcp({66, 9, 149, 187}, {161, 142, 100, 80}, 2794, 1766);
  EXPECT_EQ(*FrameRssHash(kKey, f), 0x51ccc178u);
  // 199.92.111.2:14230 -> 65.69.140.83:4739
  auto g = Ipv4Tcp({199, 92, 111, 2}, {65, 69, 140, 83}, 14230, 4739);
  EXPECT_EQ(*FrameRssHash(kKey, g), 0xc626b0eau);
  // Addresses only (the "IPv4" column): fragments hash without ports.
  f[14 + 6] = 0x20;  // MF
  EXPECT_EQ(*FrameRssHash(kKey, f), 0x323e8fc2u);
}

TEST(Rss, NonIpAndShortFrames) {
  std::vector<uint8_t> arp(60, 0);
  arp[12] = 0x08;
  arp[13] = 0x06;
  EXPECT_FALSE(FrameRssHash(kKey, arp).has_value());
  EXPECT_FALSE(FrameRssHash(kKey, std::vector<uint8_t>(10, 0)).has_value());
  auto f = Ipv4Tcp({1, 2, 3, 4}, {5, 6, 7, 8}, 1, 2);
  f.resize(30);  // cut inside the IPv4 header
  EXPECT_FALSE(FrameRssHash(kKey, f).has_value());
}

TEST(Rss, PctypeClassification) {
  auto tcp = Ipv4Tcp({1, 2, 3, 4}, {5, 6, 7, 8}, 1, 2);
  tcp[14 + 20 + 13] = 0x10;  // ACK
  EXPECT_EQ(FramePctype(tcp), 33u);
  tcp[14 + 20 + 13] = 0x02;  // SYN
  EXPECT_EQ(FramePctype(tcp), 34u);
  auto udp = tcp;
  udp[23] = 17;
  EXPECT_EQ(FramePctype(udp), 31u);
  auto sctp = tcp;
  sctp[23] = 132;
  EXPECT_EQ(FramePctype(sctp), 35u);
  auto icmp = tcp;
  icmp[23] = 1;
  EXPECT_EQ(FramePctype(icmp), 36u);
  auto frag = udp;
  frag[14 + 6] = 0x20;
  EXPECT_EQ(FramePctype(frag), 38u);

  std::vector<uint8_t> v6(14 + 40 + 8, 0);
  v6[12] = 0x86;
  v6[13] = 0xdd;
  v6[14] = 0x60;
  v6[14 + 6] = 17;
  EXPECT_EQ(FramePctype(v6), 41u);
  v6[14 + 6] = 58;  // ICMPv6
  EXPECT_EQ(FramePctype(v6), 46u);
  v6[14 + 6] = 44;  // fragment header
  EXPECT_EQ(FramePctype(v6), 48u);
  std::vector<uint8_t> arp(60, 0);
  arp[12] = 0x08;
  arp[13] = 0x06;
  EXPECT_FALSE(FramePctype(arp).has_value());
}

TEST(Rss, HashOnlyForEnabledTypes) {
  auto tcp = Ipv4Tcp({66, 9, 149, 187}, {161, 142, 100, 80}, 2794, 1766);
  tcp[14 + 20 + 13] = 0x10;
  auto udp = tcp;
  udp[23] = 17;
  const uint64_t only_tcp = 1ull << 33;
  EXPECT_EQ(FrameRssHash(kKey, tcp, only_tcp), 0x51ccc178u);
  EXPECT_FALSE(FrameRssHash(kKey, udp, only_tcp).has_value());
  EXPECT_TRUE(FrameRssHash(kKey, udp, 1ull << 31).has_value());
  EXPECT_FALSE(FrameRssHash(kKey, tcp, 0).has_value());
  // A SYN hashes under either TCP type.
  tcp[14 + 20 + 13] = 0x02;
  EXPECT_EQ(FrameRssHash(kKey, tcp, only_tcp), 0x51ccc178u);
  EXPECT_EQ(FrameRssHash(kKey, tcp, 1ull << 34), 0x51ccc178u);
  EXPECT_FALSE(FrameRssHash(kKey, tcp, 1ull << 31).has_value());
}

}  // namespace
}  // namespace emud::dataplane
