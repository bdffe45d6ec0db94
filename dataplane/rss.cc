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

std::optional<uint32_t> FrameRssHash(absl::Span<const uint8_t> key,
                                     absl::Span<const uint8_t> f) {
  if (f.size() < 14) return std::nullopt;
  size_t off = 12;
  uint16_t et = uint16_t(f[off] << 8 | f[off + 1]);
  if (et == 0x8100 && f.size() >= 18) {
    off += 4;
    et = uint16_t(f[off] << 8 | f[off + 1]);
  }
  const size_t l3 = off + 2;
  uint8_t in[36];
  size_t n = 0;
  size_t l4 = 0;
  uint8_t proto = 0;
  bool frag = false;
  if (et == 0x0800 && f.size() >= l3 + 20 && (f[l3] >> 4) == 4) {
    size_t ihl = size_t(f[l3] & 0xf) * 4;
    if (ihl < 20 || f.size() < l3 + ihl) return std::nullopt;
    for (int i = 0; i < 8; ++i) in[n++] = f[l3 + 12 + i];
    proto = f[l3 + 9];
    frag = (uint16_t(f[l3 + 6] << 8 | f[l3 + 7]) & 0x3fff) != 0;
    l4 = l3 + ihl;
  } else if (et == 0x86dd && f.size() >= l3 + 40 && (f[l3] >> 4) == 6) {
    for (int i = 0; i < 32; ++i) in[n++] = f[l3 + 8 + i];
    proto = f[l3 + 6];
    l4 = l3 + 40;
  } else {
    return std::nullopt;
  }
  if (!frag && (proto == 6 || proto == 17) && f.size() >= l4 + 4) {
    for (int i = 0; i < 4; ++i) in[n++] = f[l4 + i];
  }
  return ToeplitzHash(key, absl::Span<const uint8_t>(in, n));
}

}  // namespace emud::dataplane
