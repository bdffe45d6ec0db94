// TX offloads an AVF device performs for its guest: Internet checksums,
// IPv4 header checksums, TCP/UDP checksum completion over the pseudo-header
// seed the driver left in the checksum field, SCTP CRC32c, and TCP/UDP
// segmentation (TSO/USO).
//
// Conventions: all functions take untrusted header offsets and lengths and
// validate them against the frame; a frame they cannot process is reported
// with INVALID_ARGUMENT and left unchanged (callers count and drop it).
//
// Partial sums: a "partial" is an unfolded 32-bit ones' complement sum of
// 16-bit words as they lie in memory (little-endian loads, RFC 1071 byte-order
// independence). Fold it and store the 16-bit result with memcpy to get the
// network-order checksum. Host numbers (lengths) enter a partial through
// CsumAddBe16().
#ifndef EMUD_DATAPLANE_OFFLOAD_H_
#define EMUD_DATAPLANE_OFFLOAD_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"

namespace emud::dataplane {

// Ones' complement sum of `len` bytes at `data` added to `initial` (a
// partial), returned as a partial. An odd trailing byte is padded with zero.
// `data` must start at an even offset of the checksummed region.
uint32_t CsumPartial(const uint8_t* data, size_t len, uint32_t initial);
// Folds a partial to 16 bits (not inverted).
uint16_t CsumFold(uint32_t partial);
// Adds the host-order 16-bit number `v` as a network-order word.
uint32_t CsumAddBe16(uint32_t partial, uint16_t v);
// ~fold(sum(data)): the Internet checksum in memory order (store with memcpy).
uint16_t InternetChecksum(const uint8_t* data, size_t len);

// Recomputes the IPv4 header checksum of `hdr` in place (`ihl_bytes` bytes,
// 20..60). The old checksum field is ignored.
absl::Status FillIpv4HeaderChecksum(absl::Span<uint8_t> hdr);

// CRC32c (Castagnoli), standard init/final xor: Crc32c("123456789") ==
// 0xE3069283. `crc` continues a previous result.
uint32_t Crc32c(const uint8_t* data, size_t len, uint32_t crc = 0);
// The Ethernet FCS of a frame (IEEE 802.3 CRC-32: reflected 0xEDB88320,
// init and final xor ~0): EthernetFcs("123456789") == 0xCBF43926. On the
// wire (and in a KEEP_CRC receive buffer) it follows the frame least
// significant byte first.
uint32_t EthernetFcs(const uint8_t* data, size_t len);

// The tunnelling fields of a TX context descriptor's qword 0 (iavf_type.h
// IAVF_TXD_CTX_QW0_*; written by Linux iavf_tx_enable_csum and DPDK
// iavf_fill_ctx_desc_tunnelling_field), decoded to bytes. With EIPT set, the
// data descriptor's MACLEN is the OUTER L2 length and IIPT/IPLEN/L4T/L4LEN
// describe the INNER headers, which start at maclen + eiplen + natlen.
struct TxTunnel {
  enum Eipt : uint8_t { kNone = 0, kIpv6 = 1, kIpv4NoCsum = 2, kIpv4Csum = 3 };
  enum Natt : uint8_t { kNattNone = 0, kNattUdp = 1, kNattGre = 2 };
  // The bits the fields occupy (23:0; DECTTL 22:19 is accepted and ignored,
  // neither driver sets it).
  static constexpr uint64_t kMask = 0xFFFFFF;
  static TxTunnel Decode(uint64_t qw0) {
    TxTunnel t;
    t.eipt = static_cast<Eipt>(qw0 & 3);
    t.eiplen = uint32_t((qw0 >> 2) & 0x3F) * 4;
    t.natt = static_cast<uint8_t>((qw0 >> 9) & 3);
    t.eip_noinc = (qw0 >> 11) & 1;
    t.natlen = uint32_t((qw0 >> 12) & 0x7F) * 2;
    t.l4t_cs = (qw0 >> 23) & 1;
    t.present = (qw0 & kMask) != 0;
    return t;
  }
  bool present = false;    // any tunnelling field set
  Eipt eipt = kNone;       // outer IP type
  uint8_t natt = kNattNone;  // L4TUNT (3 is reserved: refused)
  bool eip_noinc = false;  // TSO: keep the outer IPv4 ID on every segment
  bool l4t_cs = false;     // compute the outer UDP checksum
  uint32_t eiplen = 0;     // bytes (EIPLEN * 4): outer IP header + extensions
  uint32_t natlen = 0;     // bytes (L4TUNLEN * 2): UDP/GRE header + inner L2
};

// What a packet's TX descriptors ask for (AVF data + context descriptor
// fields, decoded to bytes).
struct TxOffload {
  enum Iipt : uint8_t { kIiptNone = 0, kIiptIpv6 = 1, kIiptIpv4 = 2, kIiptIpv4Csum = 3 };
  enum L4t : uint8_t { kL4None = 0, kL4Tcp = 1, kL4Sctp = 2, kL4Udp = 3 };
  Iipt iipt = kIiptNone;
  L4t l4t = kL4None;
  uint32_t maclen = 0;  // bytes (descriptor MACLEN * 2)
  uint32_t iplen = 0;   // bytes (IPLEN * 4)
  uint32_t l4len = 0;   // bytes (L4LEN * 4), used by TSO
  bool tso = false;
  uint32_t tso_len = 0;  // payload bytes to segment (context descriptor)
  uint32_t mss = 0;      // context descriptor MSS
  TxTunnel tun;          // context descriptor qword 0 tunnelling fields
};

// Checksum offloads on one linear frame, in place: IPv4 header checksum when
// iipt == kIiptIpv4Csum; L4 checksum per l4t computed from offset
// maclen + iplen to the end of the frame, starting from the value the driver
// left in the checksum field (its pseudo-header sum including the length).
// SCTP: CRC32c over the SCTP packet with the checksum field zeroed.
// Tunnelled (off.tun.present): the same inner offloads at the inner offsets,
// then the outer IPv4 header checksum (EIPT 3) and the outer UDP checksum
// (L4T_CS), computed whole over the outer pseudo-header and the UDP length
// to the end of the frame (the field's old value is ignored); without
// L4T_CS the outer UDP checksum is left as the driver wrote it. The outer
// headers are validated first (ValidateTunnel).
absl::Status ApplyChecksumOffloads(absl::Span<uint8_t> frame, const TxOffload& off);

// Segments `frame` (headers of maclen + iplen + l4len bytes followed by
// tso_len payload bytes; the frame must be exactly that long) into segments of
// at most `mss` payload bytes, each a complete frame written into `scratch`
// and passed to `emit`. Per segment: IPv4 total length, identification
// (+1 per segment) and header checksum, or IPv6 payload length; TCP sequence
// number advanced by the payload already sent, FIN and PSH only on the last
// segment, CWR only on the first; UDP length. L4 checksums are completed from
// the driver's seed, which Linux leaves WITHOUT the length (iavf_tso removes
// it); the segment's L4 length is added here. Rejects mss == 0, mss too
// small (< 64) or headers/lengths that do not fit the frame.
// `max_segments` bounds the work per packet (65535/64 ~ 1024).
// Tunnelled (off.tun.present): the inner headers are segmented as above,
// and per segment the outer headers are fixed too: outer IPv4 total length,
// identification (+1 per segment unless EIP_NOINC) and header checksum (for
// EIPT 2 as well: the length changed) or outer IPv6 payload length; outer
// UDP length, and its checksum computed whole with L4T_CS, else zero (Linux
// iavf_tso leaves a GSO_UDP_TUNNEL checksum 0). GRE headers are copied
// unchanged (the GRE checksum option is not computed).
absl::Status SegmentTso(absl::Span<const uint8_t> frame, const TxOffload& off,
                        std::vector<uint8_t>& scratch,
                        absl::FunctionRef<void(absl::Span<const uint8_t>)> emit,
                        uint32_t max_segments = 1100);

// Checks a tunnelled packet's context fields against the frame and returns
// the offset of the inner L3 header (maclen + eiplen + natlen): EIPT set
// (tunnelling fields without it are refused), L4TUNT not the reserved 3,
// L4T_CS only with a UDP tunnel, MACLEN >= 14, an outer IPv4 header whose
// version is 4 and IHL * 4 == EIPLEN (or an IPv6 header, EIPLEN >= 40),
// a UDP header (8 bytes) or GRE header (4) within NATLEN, and inner headers
// that start inside the frame.
absl::Status ValidateTunnel(absl::Span<const uint8_t> frame, const TxOffload& off,
                            size_t* inner_l3);

// RX checksum check of an Ethernet frame (optionally one VLAN tag), as the
// AVF reports it (kChecked = L3L4P, kIpBad = IPE, kL4Bad = L4E):
// - IPv4: the header checksum is always checked (kIpBad when wrong), also
//   for fragments and for protocols other than TCP/UDP/SCTP, which report
//   kChecked with the IP result alone;
// - TCP/UDP (Internet checksum) and SCTP (CRC32c) over IPv4 or IPv6
//   (IPv6: behind hop-by-hop / destination options headers only):
//   kChecked plus kL4Bad when wrong;
// - an L4 that cannot be checked (truncated, IP length beyond the frame):
//   kChecked | kIpBad if the IPv4 header is bad, else 0 - Linux takes
//   L3L4P without L4E on a TCP/UDP/SCTP ptype for a verified L4;
// - 0 when nothing was checked (non-IP, IPv6 routing or fragment headers
//   and other next headers, a header that does not fit the frame).
// Tunnelled packets (ParseRxTunnel: VXLAN, GENEVE or GRE right after an
// outer IPv4 header that is not a fragment, or an IPv6 header without
// extension headers, inside the outer IP length), as ice reports them for
// its tunnel ptypes: kIpBad/kL4Bad and kChecked are the inner packet's
// (IPE and L4E are the inner headers', as above), plus kOuterIpBad for a
// bad outer IPv4 header checksum (EIPE) and kOuterUdpBad for an outer UDP
// checksum that is not 0 and wrong (XSUM_EUDPE, flex descriptors only).
// When the inner packet reports 0, so does the tunnel unless the outer
// IPv4 header is bad (kChecked | kOuterIpBad). Tunnels whose inner headers
// do not parse are checked as the outer packet alone.
struct RxCsum {
  static constexpr uint32_t kChecked = 1;
  static constexpr uint32_t kIpBad = 2;
  static constexpr uint32_t kL4Bad = 4;
  static constexpr uint32_t kOuterIpBad = 8;
  static constexpr uint32_t kOuterUdpBad = 16;
};
uint32_t CheckRxChecksums(absl::Span<const uint8_t> frame);

// RX tunnel parsing (the parser's view of VXLAN/GENEVE/GRE). Only UDP to
// these destination ports and IP protocol 47 take it.
inline constexpr uint16_t kVxlanPort = 4789;
inline constexpr uint16_t kGenevePort = 6081;
inline bool IsRxTunnelPort(uint16_t dport) {
  return dport == kVxlanPort || dport == kGenevePort;
}
struct RxTunnel {
  bool mac = false;    // an inner Ethernet header (VXLAN, GENEVE, GRE 0x6558)
  bool vlan = false;   // ... with one 802.1Q tag
  size_t inner_l2 = 0;
  size_t inner_l3 = 0;
  uint16_t inner_et = 0;
};
// The tunnel at `l4` (outer IP protocol `proto`) of `f`, which ends where
// the outer IP packet ends: VXLAN (UDP 4789, I flag set), GENEVE (UDP 6081,
// version 0, options, protocol Ethernet) or GRE (version 0, no routing,
// optional checksum/key/sequence; Ethernet, IPv4 or IPv6 inside). False
// when it is none of them or when the inner Ethernet header or an inner
// IPv4/IPv6 header does not fit (never reads past f).
bool ParseRxTunnel(absl::Span<const uint8_t> f, size_t l4, uint8_t proto, RxTunnel* t);
// The ice ptype of a parsed tunnel (ice_lan_tx_rx.h ICE_PTYPES 43..153).
uint8_t RxTunnelPtype(absl::Span<const uint8_t> f, bool outer_v6, const RxTunnel& t);
// The tunnel ptype of the frame whose outer IPv4/IPv6 header (at least 20/40
// bytes inside f) is at `l3`, or 0 when it is not a tunnel.
uint8_t ClassifyRxTunnel(absl::Span<const uint8_t> f, size_t l3, bool outer_v6);

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_OFFLOAD_H_
