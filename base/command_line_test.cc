#include "base/command_line.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace emud {
namespace {

std::vector<std::string> Rewrite(std::vector<const char*> argv) {
  return UnderscoreFlagNames(static_cast<int>(argv.size()), argv.data());
}

TEST(UnderscoreFlagNames, RewritesFlagNamesOnly) {
  EXPECT_EQ(Rewrite({"/bin/emud-worker", "--state-dir", "/dev/shm/a-b", "--socket-mode=06-60",
                     "-x-y", "--persist_session=false"}),
            (std::vector<std::string>{"/bin/emud-worker", "--state_dir", "/dev/shm/a-b",
                                      "--socket_mode=06-60", "-x-y", "--persist_session=false"}));
}

TEST(UnderscoreFlagNames, StopsAtDoubleDash) {
  EXPECT_EQ(Rewrite({"prog-name", "--pool-size", "8", "--", "--not-a-flag"}),
            (std::vector<std::string>{"prog-name", "--pool_size", "8", "--", "--not-a-flag"}));
}

TEST(UnderscoreFlagNames, KeepsShortAndEmptyArguments) {
  EXPECT_EQ(Rewrite({"p", "", "-", "--", "--a-b"}),
            (std::vector<std::string>{"p", "", "-", "--", "--a-b"}));
}

}  // namespace
}  // namespace emud
