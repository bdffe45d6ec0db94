// Replays the seeds (and deterministic mutations of them) through the AVF
// fuzz entry point, built with the default toolchain, so `bazel test`
// exercises the fuzz target without clang.
#include <cstring>
#include <string>

#include "avf/fuzz/seeds.h"
#include "avf/testing.h"
#include "gtest/gtest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace emud::avf::fuzz {
namespace {

int RunInput(const std::string& s) {
  return LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// The fuzzer reuses one FakeDma per process and resets it with ZeroTouched:
// every byte written through Write, Translate or At (spans across pages, at
// the very end) is zero again, as in a new FakeDma.
TEST(AvfFuzzReplayTest, ZeroTouchedLeavesTheMemoryOfANewFakeDma) {
  constexpr uint64_t kBase = 0x100000;
  constexpr size_t kSize = 512 << 10;
  testing::FakeDma dma(kBase, kSize);
  for (int round = 0; round < 2; ++round) {
    const std::string bytes(9000, static_cast<char>(0x5A + round));
    const auto span = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    ASSERT_TRUE(dma.Write(kBase + 4000, span).ok());                           // 3 pages
    ASSERT_TRUE(dma.Write(kBase + kSize - 100, span.subspan(0, 100)).ok());    // the last bytes
    auto p = dma.Translate(kBase + 0x20000 - 1, 2, vfio_user::DmaMemory::kWrite);  // straddles
    ASSERT_TRUE(p.ok());
    (*p)[0] = (*p)[1] = 0xFF;
    std::memset(dma.At(kBase + 0x40000 + 17, 5000), 0xEE, 5000);
    *dma.At(kBase + 0x60000) = 1;
    dma.ZeroTouched();
    const uint8_t* m = dma.At(kBase);
    size_t nonzero = 0;
    for (size_t i = 0; i < kSize; ++i) nonzero += m[i] != 0;
    EXPECT_EQ(nonzero, 0u) << "round " << round;
  }
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
