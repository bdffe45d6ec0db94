// Replays the seeds (and deterministic mutations of them) through the AVF
// fuzz entry point, built with the default toolchain, so `bazel test`
// exercises the fuzz target without clang.
#include <cstring>
#include <string>

#include "avf/fuzz/seeds.h"
#include "avf/testing.h"
#include "gtest/gtest.h"
#include "tests/fuzz/seed_mutations.h"

namespace emud::avf::fuzz {
namespace {

using ::emud::fuzz::RunInput;

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
  for (const auto& s : ::emud::fuzz::MutatedSeeds(SeedInputs(), 300, 777)) {
    EXPECT_EQ(RunInput(s), 0);
  }
}

}  // namespace
}  // namespace emud::avf::fuzz
