// Guest memory shared by the data-path fuzzers (tx_fuzzer.cc,
// rx_fuzzer.cc); their input reader is tests/fuzz/fuzz_reader.h.
#ifndef EMUD_DATAPLANE_FUZZ_FUZZ_INPUT_H_
#define EMUD_DATAPLANE_FUZZ_FUZZ_INPUT_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dataplane/simple_dma.h"
#include "tests/fuzz/fuzz_reader.h"

namespace emud::dataplane::fuzz {

using ::emud::fuzz::Reader;

inline void Check(bool ok, const char* what) { ::emud::fuzz::Check(ok, "data-path", what); }

// Guest memory: one writable window of kMemSize at kBase whose host buffer
// ends exactly where the window does (ASan sees any access past it), and a
// read-only window of kRoSize at kRoBase. Between and around them nothing is
// mapped. Buffers outlive inputs and are zeroed per input (a fresh
// allocation per input costs page faults), so inputs stay independent.
inline constexpr uint64_t kBase = 0x10000;
inline constexpr size_t kMemSize = 64 << 10;
inline constexpr uint64_t kRoBase = 0x40000;
inline constexpr size_t kRoSize = 4 << 10;

struct GuestMemory {
  std::vector<uint8_t>& rw() {
    static auto* v = new std::vector<uint8_t>(kMemSize);
    return *v;
  }
  std::vector<uint8_t>& ro() {
    static auto* v = new std::vector<uint8_t>(kRoSize);
    return *v;
  }
  GuestMemory() {
    std::memset(rw().data(), 0, kMemSize);
    std::memset(ro().data(), 0, kRoSize);
    Map();
  }
  void Map() {
    dma.RemoveWindow(kBase);
    dma.RemoveWindow(kRoBase);
    dma.AddWindow(kBase, kMemSize, rw().data());
    dma.AddWindow(kRoBase, kRoSize, ro().data(), /*writable=*/false);
  }
  // An address the input picks: mostly inside the writable window, some in
  // the read-only one, past either, or anywhere.
  static uint64_t Addr(uint8_t sel, uint16_t off) {
    switch (sel & 7) {
      case 0: return kRoBase + off % (kRoSize + 64);
      case 1: return kBase + kMemSize - (off & 0xFFF);  // straddles the end
      case 2: return uint64_t{off} << 20 | off;         // anywhere
      default: return kBase + off % kMemSize;
    }
  }
  void Poke(uint64_t iova, const uint8_t* p, size_t n) {
    if (iova >= kBase && iova - kBase < kMemSize) {
      n = std::min<size_t>(n, kMemSize - (iova - kBase));
      std::memcpy(rw().data() + (iova - kBase), p, n);
    }
  }
  // Writes an Ethernet frame header (optionally VLAN-tagged), an IPv4 (with
  // `opt` option words) or IPv6 header and a TCP or UDP header at `iova`,
  // then `payload` pattern bytes; the IP length fields say `ip_len_lie` more
  // than the truth (0: the truth). Returns the frame length.
  size_t Headers(uint64_t iova, uint8_t kind, uint8_t opt, uint16_t payload, int8_t ip_len_lie) {
    uint8_t h[14 + 4 + 60 + 60];
    size_t n = 0;
    const bool vlan = kind & 1, v6 = kind & 2, udp = kind & 4;
    const uint8_t mac[12] = {2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2};
    std::memcpy(h, mac, 12);
    n = 12;
    if (vlan) {
      h[n++] = 0x81, h[n++] = 0x00, h[n++] = 0x00, h[n++] = 0x05;
    }
    h[n++] = v6 ? 0x86 : 0x08, h[n++] = v6 ? 0xDD : 0x00;
    const size_t l4 = udp ? 8 : 20 + 4 * (opt >> 4 & 3);
    const size_t ip = v6 ? 40 : 20 + 4 * (opt & 7);
    const size_t l3_total = ip + l4 + payload + ip_len_lie;
    std::memset(h + n, 0, ip + l4);
    if (v6) {
      h[n] = 0x60;
      const size_t pl = l3_total - 40;
      h[n + 4] = uint8_t(pl >> 8), h[n + 5] = uint8_t(pl);
      h[n + 6] = udp ? 17 : 6;
      h[n + 7] = 64;
    } else {
      h[n] = uint8_t(0x40 | ip / 4);
      h[n + 2] = uint8_t(l3_total >> 8), h[n + 3] = uint8_t(l3_total);
      h[n + 8] = 64;
      h[n + 9] = udp ? 17 : 6;
      h[n + 12] = 10, h[n + 15] = 1, h[n + 16] = 10, h[n + 19] = 2;
    }
    n += ip;
    h[n] = 0x30, h[n + 1] = 0x39, h[n + 2] = 0x00, h[n + 3] = 0x50;
    if (udp) {
      const size_t ul = l4 + payload;
      h[n + 4] = uint8_t(ul >> 8), h[n + 5] = uint8_t(ul);
    } else {
      h[n + 12] = uint8_t((l4 / 4) << 4);
      h[n + 13] = 0x18;
    }
    n += l4;
    Poke(iova, h, n);
    static uint8_t* pattern = [] {
      auto* p = new uint8_t[65536];
      for (size_t i = 0; i < 65536; ++i) p[i] = uint8_t(i * 13);
      return p;
    }();
    Poke(iova + n, pattern + kind, payload);
    return n + payload;
  }
  SimpleDmaMemory dma;
};

}  // namespace emud::dataplane::fuzz

#endif  // EMUD_DATAPLANE_FUZZ_FUZZ_INPUT_H_
