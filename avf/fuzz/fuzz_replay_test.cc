// Replays the seeds (and deterministic mutations of them) through the AVF
// fuzz entry point, built with the default toolchain, so `bazel test`
// exercises the fuzz target without clang.
#include <string>

#include "avf/fuzz/seeds.h"
#include "gtest/gtest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace emud::avf::fuzz {
namespace {

int RunInput(const std::string& s) {
  return LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

TEST(AvfFuzzReplayTest, Seeds) {
  for (const auto& s : SeedInputs()) EXPECT_EQ(RunInput(s), 0);
}

TEST(AvfFuzzReplayTest, MutatedSeeds) {
  uint32_t x = 777;
  for (const auto& seed : SeedInputs()) {
    for (int i = 0; i < 300; ++i) {
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
}  // namespace emud::avf::fuzz
