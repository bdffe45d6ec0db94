// The replay tests' deterministic mutations of a target's seeds (bit flips,
// truncations, 0xff bytes and insertions, from a linear congruential
// sequence starting at `x`), and a runner of the linked target's
// LLVMFuzzerTestOneInput, for the gtest replays built with the default
// toolchain.
#ifndef EMUD_TESTS_FUZZ_SEED_MUTATIONS_H_
#define EMUD_TESTS_FUZZ_SEED_MUTATIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace emud::fuzz {

inline int RunInput(const std::string& s) {
  return LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// `per_seed` mutations of every seed of at least 2 bytes (byte 0, the
// targets' mode or flags byte, is kept).
inline std::vector<std::string> MutatedSeeds(const std::vector<std::string>& seeds, int per_seed, uint32_t x) {
  std::vector<std::string> out;
  for (const auto& seed : seeds) {
    if (seed.size() < 2) continue;
    for (int i = 0; i < per_seed; ++i) {
      std::string s = seed;
      x = x * 1103515245 + 12345;
      size_t pos = 1 + (x >> 8) % (s.size() - 1);
      switch (i % 4) {
        case 0: s[pos] ^= static_cast<char>(1 << (x % 8)); break;
        case 1: s.resize(pos); break;
        case 2: s[pos] = static_cast<char>(0xff); break;
        case 3: s.insert(pos, std::string(1 + x % 16, static_cast<char>(x))); break;
      }
      out.push_back(std::move(s));
    }
  }
  return out;
}

}  // namespace emud::fuzz

#endif  // EMUD_TESTS_FUZZ_SEED_MUTATIONS_H_
