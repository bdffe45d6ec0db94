// Replays the built-in seeds (and deterministic mutations of them) through
// the libFuzzer entry point (the checked-in corpus: corpus_replay_test), built with the default toolchain, so that
// `bazel test` exercises the fuzz target without clang.
#include <string>

#include "gtest/gtest.h"
#include "tests/fuzz/seed_mutations.h"
#include "vfio_user/fuzz/seeds.h"

namespace emud::vfio_user::fuzz {
namespace {

using ::emud::fuzz::RunInput;

TEST(FuzzReplayTest, Seeds) {
  for (const auto& s : SeedInputs()) EXPECT_EQ(RunInput(s), 0);
}

TEST(FuzzReplayTest, MutatedSeeds) {
  // Deterministic bit flips, truncations and length lies over every seed.
  for (const auto& s : ::emud::fuzz::MutatedSeeds(SeedInputs(), 60, 12345)) {  // 45 seeds: 2700
    EXPECT_EQ(RunInput(s), 0);
  }
}

}  // namespace
}  // namespace emud::vfio_user::fuzz
