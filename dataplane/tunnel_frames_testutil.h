#ifndef EMUD_DATAPLANE_TUNNEL_FRAMES_TESTUTIL_H_
#define EMUD_DATAPLANE_TUNNEL_FRAMES_TESTUTIL_H_

// Tunnelled test frames (VXLAN, GENEVE, GRE) with every checksum computed
// here byte by byte, independently of dataplane/offload.cc.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace emud::dataplane::testutil {

enum class Tun { kVxlan, kGeneve, kGre };

struct TunFrame {
  std::vector<uint8_t> f;
  size_t outer_l3 = 0, outer_l4 = 0, inner_l3 = 0, inner_l4 = 0;
};

struct TunSpec {
  Tun tun = Tun::kVxlan;
  bool outer_v6 = false;
  bool inner_v6 = false;
  uint8_t inner_proto = 6;  // 6 TCP, 17 UDP
  bool inner_vlan = false;
  bool gre_csum_key_seq = false;  // GRE: the C, K and S options
  uint8_t geneve_opt_words = 2;   // GENEVE options (4-byte words)
  bool outer_udp_csum = true;     // UDP tunnels: compute it (else 0)
  bool gre_ip = false;            // GRE carrying the inner IP packet directly
  size_t payload = 100;
};

namespace tun_internal {
inline void Put16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  b[at] = uint8_t(v >> 8);
  b[at + 1] = uint8_t(v);
}
inline uint32_t Sum(const std::vector<uint8_t>& b, size_t from, size_t len, uint32_t s = 0) {
  for (size_t i = 0; i < len; i += 2) {
    uint32_t w = uint32_t(b[from + i]) << 8;
    if (i + 1 < len) w |= b[from + i + 1];
    s += w;
  }
  return s;
}
inline uint16_t Finish(uint32_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return uint16_t(~s);
}
// An IP header at `at` (v4: 20 bytes, v6: 40) for `proto` and `l4_len`.
inline void PutIp(std::vector<uint8_t>& b, size_t at, bool v6, uint8_t proto, size_t l4_len,
                  uint8_t seed) {
  if (v6) {
    b[at] = 0x60;
    Put16(b, at + 4, uint16_t(l4_len));
    b[at + 6] = proto;
    b[at + 7] = 64;
    for (int i = 0; i < 32; ++i) b[at + 8 + i] = uint8_t(seed + 3 * i);
  } else {
    b[at] = 0x45;
    Put16(b, at + 2, uint16_t(20 + l4_len));
    Put16(b, at + 4, uint16_t(0x1234 + seed));
    b[at + 8] = 64;
    b[at + 9] = proto;
    for (int i = 0; i < 8; ++i) b[at + 12 + i] = uint8_t(seed + 7 * i);
    Put16(b, at + 10, Finish(Sum(b, at, 20)));
  }
}
// The L4 checksum at `field` of the L4 segment [l4, l4 + len) under the IP
// header at l3.
inline void PutL4Csum(std::vector<uint8_t>& b, size_t l3, bool v6, uint8_t proto, size_t l4,
                      size_t len, size_t field) {
  Put16(b, l4 + field, 0);
  uint32_t s = v6 ? Sum(b, l3 + 8, 32) : Sum(b, l3 + 12, 8);
  s += proto;
  s += uint32_t(len);
  s = Sum(b, l4, len, s);
  uint16_t c = Finish(s);
  if (proto == 17 && c == 0) c = 0xffff;
  Put16(b, l4 + field, c);
}
inline void PutEth(std::vector<uint8_t>& b, size_t at, bool vlan, uint16_t et, uint8_t seed) {
  for (int i = 0; i < 12; ++i) b[at + i] = uint8_t(seed + i);
  b[at] &= 0xfe;
  if (vlan) {
    Put16(b, at + 12, 0x8100);
    Put16(b, at + 14, 0x0064);
    Put16(b, at + 16, et);
  } else {
    Put16(b, at + 12, et);
  }
}
}  // namespace tun_internal

inline TunFrame BuildTunnel(const TunSpec& s) {
  using namespace tun_internal;
  TunFrame t;
  const size_t ohl = s.outer_v6 ? 40 : 20;
  const size_t ihl = s.inner_v6 ? 40 : 20;
  const size_t il4len = (s.inner_proto == 6 ? 20 : 8) + s.payload;
  size_t tunhdr;
  switch (s.tun) {
    case Tun::kVxlan: tunhdr = 16; break;
    case Tun::kGeneve: tunhdr = 16 + size_t(s.geneve_opt_words) * 4; break;
    default: tunhdr = 4 + (s.gre_csum_key_seq ? 12 : 0); break;
  }
  const size_t inner_mac = (s.tun == Tun::kGre && s.gre_ip) ? 0 : (s.inner_vlan ? 18 : 14);
  t.outer_l3 = 14;
  t.outer_l4 = 14 + ohl;
  const size_t inner_l2 = t.outer_l4 + tunhdr;
  t.inner_l3 = inner_l2 + inner_mac;
  t.inner_l4 = t.inner_l3 + ihl;
  const size_t total = t.inner_l4 + il4len;
  t.f.assign(total, 0);
  std::vector<uint8_t>& b = t.f;
  PutEth(b, 0, false, s.outer_v6 ? 0x86dd : 0x0800, 0x10);
  // Inner packet first (the outer checksums cover it).
  if (inner_mac) PutEth(b, inner_l2, s.inner_vlan, s.inner_v6 ? 0x86dd : 0x0800, 0x40);
  PutIp(b, t.inner_l3, s.inner_v6, s.inner_proto, il4len, 0x55);
  for (size_t i = 0; i < s.payload; ++i) b[total - s.payload + i] = uint8_t(i * 13 + 5);
  Put16(b, t.inner_l4, 40000);
  Put16(b, t.inner_l4 + 2, 80);
  if (s.inner_proto == 6) {
    b[t.inner_l4 + 12] = 0x50;
    b[t.inner_l4 + 13] = 0x18;
    PutL4Csum(b, t.inner_l3, s.inner_v6, 6, t.inner_l4, il4len, 16);
  } else {
    Put16(b, t.inner_l4 + 4, uint16_t(il4len));
    PutL4Csum(b, t.inner_l3, s.inner_v6, 17, t.inner_l4, il4len, 6);
  }
  // Tunnel header.
  const size_t l4 = t.outer_l4;
  const size_t ol4len = total - l4;
  uint8_t proto = 17;
  if (s.tun == Tun::kGre) {
    proto = 47;
    uint16_t flags = s.gre_csum_key_seq ? 0xB000 : 0;
    Put16(b, l4, flags);
    Put16(b, l4 + 2, s.gre_ip ? (s.inner_v6 ? 0x86dd : 0x0800) : 0x6558);
    if (s.gre_csum_key_seq) {
      Put16(b, l4 + 8, 0x1234);  // key
      Put16(b, l4 + 14, 7);      // sequence
      Put16(b, l4 + 4, Finish(Sum(b, l4, ol4len)));  // GRE checksum
    }
  } else {
    Put16(b, l4, 50000);
    Put16(b, l4 + 2, s.tun == Tun::kVxlan ? 4789 : 6081);
    Put16(b, l4 + 4, uint16_t(ol4len));
    if (s.tun == Tun::kVxlan) {
      b[l4 + 8] = 0x08;  // I
      b[l4 + 13] = 42;   // VNI
    } else {
      b[l4 + 8] = s.geneve_opt_words;  // version 0, options length
      Put16(b, l4 + 10, 0x6558);
      b[l4 + 14] = 42;  // VNI
      for (size_t i = 0; i < size_t(s.geneve_opt_words) * 4; ++i) b[l4 + 16 + i] = uint8_t(0xA0 + i);
    }
  }
  PutIp(b, t.outer_l3, s.outer_v6, proto, ol4len, 0x21);
  if (proto == 17 && s.outer_udp_csum) PutL4Csum(b, t.outer_l3, s.outer_v6, 17, l4, ol4len, 6);
  return t;
}

// A spread of tunnels: each kind over IPv4 and IPv6 outers, IPv4/IPv6
// inners, TCP/UDP, with an inner VLAN tag, GRE options, GENEVE options,
// VXLAN without an outer UDP checksum and GRE carrying IP directly.
inline std::vector<TunSpec> TunnelSpecs() {
  std::vector<TunSpec> v;
  for (Tun tun : {Tun::kVxlan, Tun::kGeneve, Tun::kGre}) {
    for (bool ov6 : {false, true}) {
      for (bool iv6 : {false, true}) {
        for (uint8_t proto : {uint8_t{6}, uint8_t{17}}) {
          TunSpec s;
          s.tun = tun;
          s.outer_v6 = ov6;
          s.inner_v6 = iv6;
          s.inner_proto = proto;
          s.inner_vlan = proto == 17 && !iv6;
          s.gre_csum_key_seq = tun == Tun::kGre && iv6;
          s.geneve_opt_words = iv6 ? 0 : 3;
          s.outer_udp_csum = !(tun == Tun::kVxlan && !ov6 && proto == 17);
          s.gre_ip = tun == Tun::kGre && ov6 && proto == 17;
          v.push_back(s);
        }
      }
    }
  }
  return v;
}

// After changing the inner packet: the outer UDP checksum again (when the
// tunnel carries one), so that only the inner change is wrong.
inline void FixOuterUdp(TunFrame& t, const TunSpec& s) {
  if (s.tun == Tun::kGre || !s.outer_udp_csum) return;
  tun_internal::PutL4Csum(t.f, t.outer_l3, s.outer_v6, 17, t.outer_l4,
                                    t.f.size() - t.outer_l4, 6);
}

inline std::string Describe(const TunSpec& s) {
  return std::string(s.tun == Tun::kVxlan ? "vxlan" : s.tun == Tun::kGeneve ? "geneve" : "gre") +
         (s.outer_v6 ? " o6" : " o4") + (s.inner_v6 ? " i6" : " i4") +
         (s.inner_proto == 6 ? " tcp" : " udp") + (s.inner_vlan ? " vlan" : "") +
         (s.gre_ip ? " ip" : "");
}

}  // namespace emud::dataplane::testutil

#endif  // EMUD_DATAPLANE_TUNNEL_FRAMES_TESTUTIL_H_
