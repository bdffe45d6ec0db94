// Replays the built-in seeds (and deterministic mutations of them) through
// the libFuzzer entry point (the checked-in corpus: corpus_replay_test), built with the default toolchain, so that
// `bazel test` exercises the fuzz target without clang.
#include <string>

#include "gtest/gtest.h"
#include "vfio_user/fuzz/seeds.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace emud::vfio_user::fuzz {
namespace {

int RunInput(const std::string& s) {
  return LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

TEST(FuzzReplayTest, Seeds) {
  for (const auto& s : SeedInputs()) EXPECT_EQ(RunInput(s), 0);
}

TEST(FuzzReplayTest, MutatedSeeds) {
  // Deterministic bit flips, truncations and length lies over every seed.
  uint32_t x = 12345;
  for (const auto& seed : SeedInputs()) {
    for (int i = 0; i < 60; ++i) {  // 45 seeds: 2700 inputs
      std::string s = seed;
      x = x * 1103515245 + 12345;
      size_t pos = 1 + (x >> 8) % (s.size() - 1);
      switch (i % 4) {
        case 0: s[pos] ^= static_cast<char>(1 << (x % 8)); break;
        case 1: s.resize(pos); break;
        case 2: s[pos] = static_cast<char>(0xff); break;
        case 3: s.insert(pos, std::string(1 + x % 16, static_cast<char>(x))); break;
      }
      EXPECT_EQ(RunInput(s), 0);
    }
  }
}

}  // namespace
}  // namespace emud::vfio_user::fuzz
