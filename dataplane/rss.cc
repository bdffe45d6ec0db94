#include "dataplane/rss.h"

namespace emud::dataplane {

uint32_t ToeplitzHash(absl::Span<const uint8_t> key, absl::Span<const uint8_t> input) {
  if (key.size() < input.size() + 4) return 0;
  uint32_t result = 0;
  // The 32-bit window of the key starting at bit i.
  uint32_t window = uint32_t(key[0]) << 24 | uint32_t(key[1]) << 16 | uint32_t(key[2]) << 8 | key[3];
  size_t next_key_byte = 4;
  for (size_t i = 0; i < input.size(); ++i) {
    uint8_t nk = next_key_byte < key.size() ? key[next_key_byte] : 0;
    ++next_key_byte;
    for (int b = 7; b >= 0; --b) {
      if (input[i] & (1u << b)) result ^= window;
      window = window << 1 | ((nk >> b) & 1);
    }
  }
  return result;
}

namespace {

// What RSS needs of a frame's headers.
struct L3Info {
  bool v6 = false;
  size_t l3 = 0, l4 = 0;
  uint8_t proto = 0;
  bool frag = false;
};

std::optional<L3Info> ParseL3(absl::Span<const uint8_t> f) {
  if (f.size() < 14) return std::nullopt;
  size_t off = 12;
  uint16_t et = uint16_t(f[off] << 8 | f[off + 1]);
  if (et == 0x8100 && f.size() >= 18) {
    off += 4;
    et = uint16_t(f[off] << 8 | f[off + 1]);
  }
  L3Info i;
  i.l3 = off + 2;
  if (et == 0x0800 && f.size() >= i.l3 + 20 && (f[i.l3] >> 4) == 4) {
    size_t ihl = size_t(f[i.l3] & 0xf) * 4;
    if (ihl < 20 || f.size() < i.l3 + ihl) return std::nullopt;
    i.proto = f[i.l3 + 9];
    i.frag = (uint16_t(f[i.l3 + 6] << 8 | f[i.l3 + 7]) & 0x3fff) != 0;
    i.l4 = i.l3 + ihl;
    return i;
  }
  if (et == 0x86dd && f.size() >= i.l3 + 40 && (f[i.l3] >> 4) == 6) {
    i.v6 = true;
    i.proto = f[i.l3 + 6];
    if (i.proto == 44) {  // a fragment header
      i.frag = true;
      if (f.size() >= i.l3 + 48) i.proto = f[i.l3 + 40];
    }
    i.l4 = i.l3 + 40;
    return i;
  }
  return std::nullopt;
}

bool HasPorts(const L3Info& i, size_t frame_size) {
  return !i.frag && (i.proto == 6 || i.proto == 17 || i.proto == 132) && frame_size >= i.l4 + 4;
}

}  // namespace

std::optional<uint32_t> FramePctype(absl::Span<const uint8_t> f) {
  auto i = ParseL3(f);
  if (!i) return std::nullopt;
  const uint32_t base = i->v6 ? 41 : 31;  // UDP; TCP +2, SYN-no-ACK +3, SCTP +4, other +5, frag +7
  if (i->frag) return base + 7;
  switch (i->proto) {
    case 17:
      return base;
    case 6:
      if (f.size() >= i->l4 + 14 && (f[i->l4 + 13] & 0x12) == 0x02) return base + 3;
      return base + 2;
    case 132:
      return base + 4;
    default:
      return base + 5;
  }
}

std::optional<uint32_t> FrameRssHash(absl::Span<const uint8_t> key,
                                     absl::Span<const uint8_t> f, uint64_t hena) {
  auto i = ParseL3(f);
  auto pctype = FramePctype(f);
  if (!i || !pctype) return std::nullopt;
  uint64_t on = hena & (1ull << *pctype);
  const uint32_t tcp = i->v6 ? 43 : 33;
  if (*pctype == tcp + 1) on |= hena & (1ull << tcp);  // SYN without ACK
  if (on == 0) return std::nullopt;
  uint8_t in[36];
  size_t n = 0;
  if (!i->v6) {
    for (int k = 0; k < 8; ++k) in[n++] = f[i->l3 + 12 + k];
  } else {
    for (int k = 0; k < 32; ++k) in[n++] = f[i->l3 + 8 + k];
  }
  if (HasPorts(*i, f.size())) {
    for (int k = 0; k < 4; ++k) in[n++] = f[i->l4 + k];
  }
  return ToeplitzHash(key, absl::Span<const uint8_t>(in, n));
}

}  // namespace emud::dataplane
