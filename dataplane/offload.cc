#include "dataplane/offload.h"

#include <nmmintrin.h>

#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace emud::dataplane {
namespace {

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline uint64_t AddCarry(uint64_t a, uint64_t b) {
  uint64_t s = a + b;
  return s + (s < b);
}

inline uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline void Store16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline uint16_t LoadBe16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
inline void StoreBe16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
inline uint32_t LoadBe32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}
inline void StoreBe32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}

// Table-driven reflected CRC-32 of polynomial `kPoly`, slicing by 8:
// 0x82F63B78 CRC32c, 0xEDB88320 IEEE 802.3 (the Ethernet FCS).
template <uint32_t kPoly>
struct Crc32Tables {
  uint32_t t[8][256];
  Crc32Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kPoly & (0u - (c & 1)));
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    }
  }
};

template <uint32_t kPoly>
uint32_t Crc32Soft(const uint8_t* p, size_t len, uint32_t c) {
  static const Crc32Tables<kPoly> tables;
  const auto& t = tables.t;
  while (len >= 8) {
    uint64_t v = Load64(p) ^ c;
    c = t[7][v & 0xff] ^ t[6][(v >> 8) & 0xff] ^ t[5][(v >> 16) & 0xff] ^ t[4][(v >> 24) & 0xff] ^
        t[3][(v >> 32) & 0xff] ^ t[2][(v >> 40) & 0xff] ^ t[1][(v >> 48) & 0xff] ^
        t[0][v >> 56];
    p += 8;
    len -= 8;
  }
  while (len--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xff];
  return c;
}

uint32_t Crc32cSoft(const uint8_t* p, size_t len, uint32_t c) {
  return Crc32Soft<0x82F63B78u>(p, len, c);
}

__attribute__((target("sse4.2"))) uint32_t Crc32cHw(const uint8_t* p, size_t len, uint32_t c) {
  uint64_t c64 = c;
  while (len >= 8) {
    c64 = _mm_crc32_u64(c64, Load64(p));
    p += 8;
    len -= 8;
  }
  c = static_cast<uint32_t>(c64);
  while (len--) c = _mm_crc32_u8(c, *p++);
  return c;
}

bool HaveSse42() {
  static const bool have = __builtin_cpu_supports("sse4.2");
  return have;
}

}  // namespace

uint32_t CsumPartial(const uint8_t* data, size_t len, uint32_t initial) {
  uint64_t sum = initial;
  while (len >= 32) {
    sum = AddCarry(sum, Load64(data));
    sum = AddCarry(sum, Load64(data + 8));
    sum = AddCarry(sum, Load64(data + 16));
    sum = AddCarry(sum, Load64(data + 24));
    data += 32;
    len -= 32;
  }
  while (len >= 8) {
    sum = AddCarry(sum, Load64(data));
    data += 8;
    len -= 8;
  }
  if (len > 0) {
    // The 1..7 trailing bytes in memory order (what a memcpy into a zeroed
    // little-endian word gives), assembled from 4/2/1-byte loads: a byte
    // copy then a word load of the same stack slot stalls on store
    // forwarding, and every IPv4 header (20 bytes) ends here.
    uint64_t tail = 0;
    unsigned shift = 0;
    if (len & 4) {
      uint32_t v;
      std::memcpy(&v, data, 4);
      tail = v;
      data += 4;
      shift = 32;
    }
    if (len & 2) {
      uint16_t v;
      std::memcpy(&v, data, 2);
      tail |= uint64_t(v) << shift;
      data += 2;
      shift += 16;
    }
    if (len & 1) tail |= uint64_t(*data) << shift;
    sum = AddCarry(sum, tail);
  }
  // 64 -> 32 with end-around carry.
  sum = (sum & 0xffffffffu) + (sum >> 32);
  sum = (sum & 0xffffffffu) + (sum >> 32);
  return static_cast<uint32_t>(sum);
}

uint16_t CsumFold(uint32_t partial) {
  partial = (partial & 0xffff) + (partial >> 16);
  partial = (partial & 0xffff) + (partial >> 16);
  return static_cast<uint16_t>(partial);
}

uint32_t CsumAddBe16(uint32_t partial, uint16_t v) {
  uint64_t s = uint64_t(partial) + __builtin_bswap16(v);
  s = (s & 0xffffffffu) + (s >> 32);
  return static_cast<uint32_t>(s);
}

uint16_t InternetChecksum(const uint8_t* data, size_t len) {
  return static_cast<uint16_t>(~CsumFold(CsumPartial(data, len, 0)));
}

absl::Status FillIpv4HeaderChecksum(absl::Span<uint8_t> hdr) {
  if (hdr.size() < 20 || hdr.size() > 60 || (hdr.size() & 3) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("IPv4 header length ", hdr.size()));
  }
  if ((hdr[0] >> 4) != 4) return absl::InvalidArgumentError("not an IPv4 header");
  Store16(&hdr[10], 0);
  Store16(&hdr[10], InternetChecksum(hdr.data(), hdr.size()));
  return absl::OkStatus();
}

uint32_t Crc32c(const uint8_t* data, size_t len, uint32_t crc) {
  uint32_t c = ~crc;
  c = HaveSse42() ? Crc32cHw(data, len, c) : Crc32cSoft(data, len, c);
  return ~c;
}

namespace {

absl::Status FillL4Checksum(uint8_t* l4, size_t l4_bytes, TxOffload::L4t l4t,
                            uint32_t extra_partial) {
  switch (l4t) {
    case TxOffload::kL4None:
      return absl::OkStatus();
    case TxOffload::kL4Tcp:
    case TxOffload::kL4Udp: {
      size_t field = l4t == TxOffload::kL4Tcp ? 16 : 6;
      size_t min = l4t == TxOffload::kL4Tcp ? 20 : 8;
      if (l4_bytes < min) {
        return absl::InvalidArgumentError(absl::StrCat("L4 segment of ", l4_bytes, " bytes"));
      }
      // The field holds the driver's pseudo-header sum: include it as-is.
      uint16_t c = static_cast<uint16_t>(~CsumFold(CsumPartial(l4, l4_bytes, extra_partial)));
      if (l4t == TxOffload::kL4Udp && c == 0) c = 0xffff;
      Store16(l4 + field, c);
      return absl::OkStatus();
    }
    case TxOffload::kL4Sctp: {
      if (l4_bytes < 12) {
        return absl::InvalidArgumentError(absl::StrCat("SCTP packet of ", l4_bytes, " bytes"));
      }
      std::memset(l4 + 8, 0, 4);
      uint32_t crc = Crc32c(l4, l4_bytes);
      std::memcpy(l4 + 8, &crc, 4);  // SCTP stores the CRC32c little-endian
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError("bad L4T");
}

}  // namespace

absl::Status ValidateTunnel(absl::Span<const uint8_t> frame, const TxOffload& off,
                            size_t* inner_l3) {
  const TxTunnel& t = off.tun;
  if (t.eipt == TxTunnel::kNone) {
    return absl::InvalidArgumentError("tunnelling fields without an outer IP type (EIPT 0)");
  }
  if (t.natt > TxTunnel::kNattGre) return absl::InvalidArgumentError("reserved L4TUNT 3");
  if (t.l4t_cs && t.natt != TxTunnel::kNattUdp) {
    return absl::InvalidArgumentError("L4T_CS without a UDP tunnel");
  }
  const size_t l3 = off.maclen;
  const size_t tun = l3 + t.eiplen;
  const size_t inner = tun + t.natlen;
  if (off.maclen < 14 || inner >= frame.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tunnel headers mac ", off.maclen, " outer ip ",
                                                   t.eiplen, " tunnel ", t.natlen,
                                                   " vs frame ", frame.size()));
  }
  if (t.eipt == TxTunnel::kIpv6) {
    if (t.eiplen < 40 || (frame[l3] >> 4) != 6) {
      return absl::InvalidArgumentError(absl::StrCat("outer IPv6 header of ", t.eiplen, " bytes"));
    }
  } else if ((frame[l3] >> 4) != 4 || size_t(frame[l3] & 0xF) * 4 != t.eiplen || t.eiplen < 20) {
    return absl::InvalidArgumentError(
        absl::StrCat("outer IPv4 header of ", t.eiplen, " bytes, IHL ", frame[l3] & 0xF));
  }
  if ((t.natt == TxTunnel::kNattUdp && t.natlen < 8) ||
      (t.natt == TxTunnel::kNattGre && t.natlen < 4)) {
    return absl::InvalidArgumentError(absl::StrCat("tunnel header of ", t.natlen, " bytes"));
  }
  *inner_l3 = inner;
  return absl::OkStatus();
}

namespace {

// The outer UDP checksum of a tunnelled frame `f` of `len` bytes (validated
// by ValidateTunnel): computed whole over the outer pseudo-header, the UDP
// header with its checksum field zeroed and everything to the end.
absl::Status FillOuterUdpChecksum(uint8_t* f, size_t len, const TxOffload& off) {
  const size_t l3 = off.maclen;
  const size_t udp = l3 + off.tun.eiplen;
  const size_t ulen = len - udp;
  if (ulen > 0xFFFF) return absl::InvalidArgumentError(absl::StrCat("outer UDP of ", ulen));
  uint32_t pseudo = off.tun.eipt == TxTunnel::kIpv6 ? CsumPartial(f + l3 + 8, 32, 0)
                                                   : CsumPartial(f + l3 + 12, 8, 0);
  pseudo = CsumAddBe16(pseudo, 17);
  pseudo = CsumAddBe16(pseudo, static_cast<uint16_t>(ulen));
  Store16(f + udp + 6, 0);
  uint16_t c = static_cast<uint16_t>(~CsumFold(CsumPartial(f + udp, ulen, pseudo)));
  Store16(f + udp + 6, c == 0 ? 0xFFFF : c);
  return absl::OkStatus();
}

// One TSO segment's outer headers (`len` bytes, segment `i`, the headers
// copied from the original frame).
absl::Status FixOuterSegment(uint8_t* s, size_t len, const TxOffload& off, uint32_t i) {
  const TxTunnel& t = off.tun;
  const size_t l3 = off.maclen;
  const size_t l4 = l3 + t.eiplen;
  if (t.eipt == TxTunnel::kIpv6) {
    StoreBe16(s + l3 + 4, static_cast<uint16_t>(len - l3 - 40));
  } else {
    StoreBe16(s + l3 + 2, static_cast<uint16_t>(len - l3));
    if (!t.eip_noinc) StoreBe16(s + l3 + 4, static_cast<uint16_t>(LoadBe16(s + l3 + 4) + i));
    Store16(s + l3 + 10, 0);
    Store16(s + l3 + 10, InternetChecksum(s + l3, t.eiplen));
  }
  if (t.natt == TxTunnel::kNattUdp) {
    StoreBe16(s + l4 + 4, static_cast<uint16_t>(len - l4));
    if (t.l4t_cs) return FillOuterUdpChecksum(s, len, off);
    Store16(s + l4 + 6, 0);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyChecksumOffloads(absl::Span<uint8_t> frame, const TxOffload& off) {
  if (off.tun.present) [[unlikely]] {
    size_t inner_l3 = 0;
    absl::Status s = ValidateTunnel(frame, off, &inner_l3);
    if (!s.ok()) return s;
    TxOffload inner = off;
    inner.tun = {};
    inner.maclen = static_cast<uint32_t>(inner_l3);
    s = ApplyChecksumOffloads(frame, inner);
    if (!s.ok()) return s;
    if (off.tun.eipt == TxTunnel::kIpv4Csum) {
      s = FillIpv4HeaderChecksum(frame.subspan(off.maclen, off.tun.eiplen));
      if (!s.ok()) return s;
    }
    if (off.tun.l4t_cs) return FillOuterUdpChecksum(frame.data(), frame.size(), off);
    return absl::OkStatus();
  }
  const size_t l3 = off.maclen;
  const size_t l4 = size_t{off.maclen} + off.iplen;
  if (off.iipt == TxOffload::kIiptIpv4Csum) {
    if (off.iplen < 20 || l4 > frame.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("IPv4 header [", l3, ",", l4, ") outside frame of ", frame.size()));
    }
    absl::Status s = FillIpv4HeaderChecksum(frame.subspan(l3, off.iplen));
    if (!s.ok()) return s;
  }
  if (off.l4t != TxOffload::kL4None) {
    if (l4 >= frame.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("L4 offset ", l4, " outside frame of ", frame.size()));
    }
    return FillL4Checksum(frame.data() + l4, frame.size() - l4, off.l4t, 0);
  }
  return absl::OkStatus();
}

absl::Status SegmentTso(absl::Span<const uint8_t> frame, const TxOffload& off,
                        std::vector<uint8_t>& scratch,
                        absl::FunctionRef<void(absl::Span<const uint8_t>)> emit,
                        uint32_t max_segments) {
  const bool v4 = off.iipt == TxOffload::kIiptIpv4 || off.iipt == TxOffload::kIiptIpv4Csum;
  const bool v6 = off.iipt == TxOffload::kIiptIpv6;
  const bool tcp = off.l4t == TxOffload::kL4Tcp;
  const bool udp = off.l4t == TxOffload::kL4Udp;
  if (!v4 && !v6) return absl::InvalidArgumentError("TSO without an IP type");
  if (!tcp && !udp) return absl::InvalidArgumentError("TSO needs TCP or UDP");
  if ((v4 && off.iplen < 20) || (v6 && off.iplen < 40) || off.maclen < 14) {
    return absl::InvalidArgumentError(
        absl::StrCat("TSO header lengths mac ", off.maclen, " ip ", off.iplen));
  }
  if ((tcp && (off.l4len < 20 || off.l4len > 60)) || (udp && off.l4len != 8)) {
    return absl::InvalidArgumentError(absl::StrCat("TSO L4 header length ", off.l4len));
  }
  if (off.mss < 64 || off.mss > 16383) {
    return absl::InvalidArgumentError(absl::StrCat("TSO MSS ", off.mss));
  }
  size_t l3 = off.maclen;
  if (off.tun.present) {
    absl::Status s = ValidateTunnel(frame, off, &l3);
    if (!s.ok()) return s;
  }
  const size_t l4 = l3 + off.iplen;
  const size_t hdr_len = l4 + off.l4len;
  if (off.tso_len == 0 || hdr_len + off.tso_len > frame.size()) {
    return absl::InvalidArgumentError(absl::StrCat("TSO headers ", hdr_len, " + payload ",
                                                   off.tso_len, " vs frame ", frame.size()));
  }
  const uint32_t nseg = (off.tso_len + off.mss - 1) / off.mss;
  if (nseg > max_segments) {
    return absl::InvalidArgumentError(absl::StrCat("TSO would make ", nseg, " segments"));
  }
  if (v4 && (frame[l3] >> 4) != 4) return absl::InvalidArgumentError("TSO: not IPv4");
  if (v6 && (frame[l3] >> 4) != 6) return absl::InvalidArgumentError("TSO: not IPv6");

  const uint16_t ip_id = v4 ? LoadBe16(&frame[l3 + 4]) : 0;
  const uint32_t seq = tcp ? LoadBe32(&frame[l4 + 4]) : 0;
  const uint8_t tcp_flags = tcp ? frame[l4 + 13] : 0;
  uint32_t done = 0;
  for (uint32_t i = 0; i < nseg; ++i) {
    const uint32_t pay = std::min(off.mss, off.tso_len - done);
    const bool last = i + 1 == nseg;
    scratch.resize(hdr_len + pay);
    uint8_t* s = scratch.data();
    std::memcpy(s, frame.data(), hdr_len);
    std::memcpy(s + hdr_len, frame.data() + hdr_len + done, pay);
    const uint32_t l4_bytes = off.l4len + pay;
    if (v4) {
      StoreBe16(s + l3 + 2, static_cast<uint16_t>(off.iplen + l4_bytes));
      StoreBe16(s + l3 + 4, static_cast<uint16_t>(ip_id + i));
      Store16(s + l3 + 10, 0);
      Store16(s + l3 + 10, InternetChecksum(s + l3, off.iplen));
    } else {
      StoreBe16(s + l3 + 4, static_cast<uint16_t>(off.iplen - 40 + l4_bytes));
    }
    if (tcp) {
      StoreBe32(s + l4 + 4, seq + done);
      uint8_t f = tcp_flags;
      if (!last) f &= static_cast<uint8_t>(~0x09);  // FIN, PSH
      if (i != 0) f &= static_cast<uint8_t>(~0x80);  // CWR
      s[l4 + 13] = f;
    } else {
      StoreBe16(s + l4 + 4, static_cast<uint16_t>(l4_bytes));
    }
    // The seed lacks the length: add this segment's L4 length.
    absl::Status st = FillL4Checksum(s + l4, l4_bytes, off.l4t,
                                     CsumAddBe16(0, static_cast<uint16_t>(l4_bytes)));
    if (!st.ok()) return st;
    if (off.tun.present) {
      st = FixOuterSegment(s, hdr_len + pay, off, i);
      if (!st.ok()) return st;
    }
    emit(absl::Span<const uint8_t>(s, hdr_len + pay));
    done += pay;
  }
  return absl::OkStatus();
}

namespace {
// The partial sum of a 20-byte IPv4 header (no options): five 32-bit words
// summed in 64 bits cannot carry out, then folded to 32 with end-around carry
// (what CsumPartial returns for the same bytes, up to the final fold).
inline uint32_t CsumIpv4Header20(const uint8_t* p) {
  auto word = [p](int i) {
    uint32_t w;
    std::memcpy(&w, p + 4 * i, 4);  // one load each (a 20-byte copy goes via the stack)
    return uint64_t{w};
  };
  uint64_t sum = word(0) + word(1) + word(2) + word(3) + word(4);
  sum = (sum & 0xffffffffu) + (sum >> 32);
  sum = (sum & 0xffffffffu) + (sum >> 32);
  return static_cast<uint32_t>(sum);
}
}  // namespace

namespace {
uint32_t CheckRxChecksumsWalk(absl::Span<const uint8_t> f);
uint32_t CheckRxL3(absl::Span<const uint8_t> f, size_t l3, uint16_t et, bool tunnel_ok);
}  // namespace

bool ParseRxTunnel(absl::Span<const uint8_t> f, size_t l4, uint8_t proto, RxTunnel* t) {
  const size_t end = f.size();
  size_t inner;  // the inner Ethernet header, or the inner IP header (GRE)
  uint16_t et = 0x6558;  // transparent Ethernet bridging
  if (proto == 17) {
    if (l4 + 8 > end) return false;
    const uint16_t dport = LoadBe16(&f[l4 + 2]);
    if (dport == kVxlanPort) {
      // VXLAN (RFC 7348): 8 bytes, the I flag says the VNI is valid.
      if (l4 + 16 > end || (f[l4 + 8] & 0x08) == 0) return false;
      inner = l4 + 16;
    } else if (dport == kGenevePort) {
      // GENEVE (RFC 8926): version 0, options length in 4-byte words,
      // protocol type Ethernet.
      if (l4 + 16 > end || (f[l4 + 8] >> 6) != 0) return false;
      et = LoadBe16(&f[l4 + 10]);
      if (et != 0x6558) return false;
      inner = l4 + 16 + size_t(f[l4 + 8] & 0x3f) * 4;
    } else {
      return false;
    }
  } else if (proto == 47) {
    // GRE (RFC 2784/2890): version 0, no routing; checksum, key and sequence
    // options each add 4 bytes.
    if (l4 + 4 > end) return false;
    const uint16_t flags = LoadBe16(&f[l4]);
    if ((flags & 0x4007) != 0) return false;
    inner = l4 + 4 + ((flags & 0x8000) ? 4 : 0) + ((flags & 0x2000) ? 4 : 0) +
            ((flags & 0x1000) ? 4 : 0);
    et = LoadBe16(&f[l4 + 2]);
    if (et != 0x6558 && et != 0x0800 && et != 0x86dd) return false;
  } else {
    return false;
  }
  t->mac = et == 0x6558;
  t->vlan = false;
  t->inner_l2 = inner;
  if (t->mac) {
    if (inner + 14 > end) return false;
    et = LoadBe16(&f[inner + 12]);
    inner += 14;
    if (et == 0x8100) {
      if (inner + 4 > end) return false;
      t->vlan = true;
      et = LoadBe16(&f[inner + 2]);
      inner += 4;
    }
  }
  t->inner_l3 = inner;
  t->inner_et = et;
  // The inner IP header must fit (a truncated one is not a tunnel packet
  // to the parser: the outer ptype and checks apply).
  if (et == 0x0800) {
    if (inner + 20 > end || (f[inner] >> 4) != 4 || (f[inner] & 0xf) < 5 ||
        inner + size_t(f[inner] & 0xf) * 4 > end) {
      return false;
    }
  } else if (et == 0x86dd) {
    if (inner + 40 > end || (f[inner] >> 4) != 6) return false;
  }
  return true;
}

uint8_t RxTunnelPtype(absl::Span<const uint8_t> f, bool outer_v6, const RxTunnel& t) {
  // ice_lan_tx_rx.h ICE_PTYPES: IPv4 outer -> GRE/NAT 43, GRE/NAT -> MAC 58,
  // GRE/NAT -> MAC/VLAN 73; IPv6 outer: 109, 124, 139. After each base:
  // inner IPv4 frag +1, pay +2, UDP +3, TCP +5, SCTP +6, ICMP +7; inner
  // IPv6 frag +8, pay +9, UDP +10, TCP +12, SCTP +13, ICMPv6 +14.
  uint8_t base = outer_v6 ? 109 : 43;
  if (t.mac) base += t.vlan ? 30 : 15;
  const size_t l3 = t.inner_l3;
  if (t.inner_et == 0x0800) {
    if (LoadBe16(&f[l3 + 6]) & 0x3fff) return base + 1;
    switch (f[l3 + 9]) {
      case 17: return base + 3;
      case 6: return base + 5;
      case 132: return base + 6;
      case 1: return base + 7;
      default: return base + 2;
    }
  }
  if (t.inner_et == 0x86dd) {
    switch (f[l3 + 6]) {
      case 44: return base + 8;
      case 17: return base + 10;
      case 6: return base + 12;
      case 132: return base + 13;
      case 58: return base + 14;
      default: return base + 9;
    }
  }
  return base;  // MAC with another EtherType (GRE IP-only was refused)
}

uint8_t ClassifyRxTunnel(absl::Span<const uint8_t> f, size_t l3, bool outer_v6) {
  // The outer L4 and its end: the IP lengths bound the parse (padding after
  // the packet is not parsed), the frame bounds them too.
  size_t l4, end;
  uint8_t proto;
  if (outer_v6) {
    l4 = l3 + 40;
    end = l4 + LoadBe16(&f[l3 + 4]);
    proto = f[l3 + 6];
  } else {
    if ((LoadBe16(&f[l3 + 6]) & 0x3fff) != 0) return 0;  // a fragment
    const size_t ihl = size_t(f[l3] & 0xf) * 4;
    l4 = l3 + ihl;
    end = l3 + LoadBe16(&f[l3 + 2]);
    proto = f[l3 + 9];
    if (ihl < 20 || end < l4) return 0;
  }
  if (end > f.size()) return 0;
  RxTunnel t;
  if (!ParseRxTunnel(f.first(end), l4, proto, &t)) return 0;
  return RxTunnelPtype(f, outer_v6, t);
}

uint32_t CheckRxChecksums(absl::Span<const uint8_t> f) {
  // The commonest frame first: untagged IPv4 without options, not a
  // fragment, UDP without a checksum (0) and lengths that fit - what the
  // general walk decides for it too (the header checksum alone). A leaf
  // that saves no registers; everything else takes the walk.
  if (f.size() >= 42) {
    const uint8_t* p = f.data();
    const size_t tot = LoadBe16(p + 16);
    if (p[12] == 0x08 && p[13] == 0x00 && p[14] == 0x45 && p[23] == 17 &&
        (LoadBe16(p + 20) & 0x3fff) == 0 && tot >= 28 && 14 + tot <= f.size() &&
        LoadBe16(p + 40) == 0 && !IsRxTunnelPort(LoadBe16(p + 36))) {
      return CsumFold(CsumIpv4Header20(p + 14)) == 0xffff ? RxCsum::kChecked
                                                            : RxCsum::kChecked | RxCsum::kIpBad;
    }
  }
  return CheckRxChecksumsWalk(f);
}

namespace {
__attribute__((noinline)) uint32_t CheckRxChecksumsWalk(absl::Span<const uint8_t> f) {
  if (f.size() < 14) return 0;
  size_t off = 12;
  uint16_t et = LoadBe16(&f[off]);
  if (et == 0x8100 && f.size() >= 18) {
    off += 4;
    et = LoadBe16(&f[off]);
  }
  return CheckRxL3(f, off + 2, et, /*tunnel_ok=*/true);
}

// The checks of a tunnelled packet (ParseRxTunnel accepted it): the outer
// IPv4 header (EIPE) and outer UDP checksum when not 0 (EUDPE), then the
// inner headers as a packet of their own, one level deep. An inner L4 that
// is not checked reports L3L4P only for a bad IP header (see below).
__attribute__((noinline)) uint32_t CheckRxTunnel(absl::Span<const uint8_t> f, const RxTunnel& t,
                                                 bool outer_ip_bad, size_t l4, uint8_t proto,
                                                 uint32_t pseudo) {
  uint32_t outer = outer_ip_bad ? RxCsum::kOuterIpBad : 0;
  if (proto == 17 && LoadBe16(&f[l4 + 6]) != 0) {
    const size_t len = f.size() - l4;
    uint32_t sum = CsumAddBe16(pseudo, 17);
    sum = CsumAddBe16(sum, static_cast<uint16_t>(len));
    if (len > 0xffff || CsumFold(CsumPartial(&f[l4], len, sum)) != 0xffff) {
      outer |= RxCsum::kOuterUdpBad;
    }
  }
  uint32_t inner = 0;
  if (t.inner_et == 0x0800 || t.inner_et == 0x86dd) {
    inner = CheckRxL3(f, t.inner_l3, t.inner_et, /*tunnel_ok=*/false);
  }
  if (inner == 0) return outer_ip_bad ? RxCsum::kChecked | RxCsum::kOuterIpBad : 0;
  return inner | outer;
}

uint32_t CheckRxL3(absl::Span<const uint8_t> f, size_t l3, uint16_t et, bool tunnel_ok) {
  uint32_t result = RxCsum::kChecked;
  size_t l4 = 0, l4_len = 0;
  uint8_t proto = 0;
  uint32_t pseudo = 0;
  bool l4_checkable = true;
  if (et == 0x0800) {
    if (f.size() < l3 + 20 || (f[l3] >> 4) != 4) return 0;
    const size_t ihl = size_t(f[l3] & 0xf) * 4;
    if (ihl < 20 || l3 + ihl > f.size()) return 0;
    // The header checksum is checked whatever follows it: DPDK
    // (iavf_rxd_to_pkt_flags) reports IP GOOD whenever IPE is clear.
    if (CsumFold(ihl == 20 ? CsumIpv4Header20(&f[l3]) : CsumPartial(&f[l3], ihl, 0)) != 0xffff) {
      result |= RxCsum::kIpBad;
    }
    proto = f[l3 + 9];
    const bool fragment = (LoadBe16(&f[l3 + 6]) & 0x3fff) != 0;
    if (tunnel_ok && !fragment && (proto == 47 || proto == 17)) [[unlikely]] {
      // A tunnel (GRE, or UDP to the VXLAN/GENEVE port) within the IP
      // length: the tunnel checks, else the outer packet's own.
      const size_t tot = LoadBe16(&f[l3 + 2]);
      RxTunnel t;
      if (tot >= ihl + 8 && l3 + tot <= f.size() &&
          (proto == 47 || IsRxTunnelPort(LoadBe16(&f[l3 + ihl + 2]))) &&
          ParseRxTunnel(f.first(l3 + tot), l3 + ihl, proto, &t)) {
        return CheckRxTunnel(f.first(l3 + tot), t, result & RxCsum::kIpBad, l3 + ihl, proto,
                             CsumPartial(&f[l3 + 12], 8, 0));
      }
    }
    if (fragment || (proto != 6 && proto != 17 && proto != 132)) {
      // No L4 either driver would take as verified (Linux iavf_rx_checksum
      // trusts only the TCP/UDP/SCTP ptypes; a fragment's ptype is not one).
      return result;
    }
    const size_t tot = LoadBe16(&f[l3 + 2]);
    if (tot < ihl || l3 + tot > f.size()) {
      l4_checkable = false;
    } else {
      l4 = l3 + ihl;
      l4_len = tot - ihl;
      // UDP without a checksum (0) needs no pseudo-header: checked below
      // before it is summed.
      if (proto != 17 || l4_len < 8 || LoadBe16(&f[l4 + 6]) != 0) {
        pseudo = CsumPartial(&f[l3 + 12], 8, 0);
      }
    }
  } else if (et == 0x86dd) {
    if (f.size() < l3 + 40 || (f[l3] >> 4) != 6) return 0;
    size_t plen = LoadBe16(&f[l3 + 4]);
    if (l3 + 40 + plen > f.size()) return 0;
    proto = f[l3 + 6];
    l4 = l3 + 40;
    if (tunnel_ok && (proto == 47 || proto == 17)) [[unlikely]] {
      RxTunnel t;
      if (plen >= 8 && (proto == 47 || IsRxTunnelPort(LoadBe16(&f[l4 + 2]))) &&
          ParseRxTunnel(f.first(l4 + plen), l4, proto, &t)) {
        return CheckRxTunnel(f.first(l4 + plen), t, false, l4, proto,
                             CsumPartial(&f[l3 + 8], 32, 0));
      }
    }
    // Hop-by-hop and destination options headers are skipped (DPDK reports
    // L4 GOOD behind them when L4E is clear). Routing headers (the
    // pseudo-header would use the final destination), fragments and
    // anything else end the walk: proto is then not an L4 we check.
    for (int k = 0; k < 8 && (proto == 0 || proto == 60); ++k) {
      if (l4 + 8 > l3 + 40 + plen) return 0;
      const size_t ext = (size_t{f[l4 + 1]} + 1) * 8;
      if (l4 + ext > l3 + 40 + plen) return 0;
      proto = f[l4];
      l4 += ext;
    }
    l4_len = l3 + 40 + plen - l4;
    pseudo = CsumPartial(&f[l3 + 8], 32, 0);
  } else {
    return 0;
  }
  if (proto != 6 && proto != 17 && proto != 132) return 0;
  if ((proto == 6 && l4_len < 20) || (proto == 17 && l4_len < 8) ||
      (proto == 132 && l4_len < 12)) {
    l4_checkable = false;
  }
  if (!l4_checkable) {
    // L3L4P without L4E on a TCP/UDP/SCTP ptype means "L4 verified" to
    // Linux: report only a bad IPv4 header.
    return (result & RxCsum::kIpBad) ? result : 0;
  }
  if (proto == 132) {
    // CRC32c over the SCTP packet with its checksum field taken as zero,
    // stored little-endian.
    static constexpr uint8_t kZero[4] = {};
    uint32_t crc = Crc32c(&f[l4], 8);
    crc = Crc32c(kZero, 4, crc);
    crc = Crc32c(&f[l4 + 12], l4_len - 12, crc);
    uint32_t stored;
    std::memcpy(&stored, &f[l4 + 8], 4);
    if (crc != stored) result |= RxCsum::kL4Bad;
    return result;
  }
  if (proto == 17 && et == 0x0800 && LoadBe16(&f[l4 + 6]) == 0) return result;  // no UDP csum
  pseudo = CsumAddBe16(pseudo, proto);
  pseudo = CsumAddBe16(pseudo, static_cast<uint16_t>(l4_len));
  if (l4_len > 0xffff) return 0;
  if (CsumFold(CsumPartial(&f[l4], l4_len, pseudo)) != 0xffff) result |= RxCsum::kL4Bad;
  return result;
}
}  // namespace

uint32_t EthernetFcs(const uint8_t* data, size_t len) {
  return ~Crc32Soft<0xEDB88320u>(data, len, ~0u);
}

}  // namespace emud::dataplane
