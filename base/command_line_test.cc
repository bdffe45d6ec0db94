#include "base/command_line.h"

#include <string>
#include <vector>

#include <fstream>

#include "absl/flags/flag.h"
#include "gtest/gtest.h"

ABSL_FLAG(std::string, test_state_dir, "/dev/shm/x", "Where the test's state lives");
ABSL_FLAG(bool, test_takeover, false, "Take over");

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

std::string WriteFile(const std::string& name, const std::string& text) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir ? dir : "/tmp") + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ExpandFlagfiles, ReadsDashedFlagsOneALineWithCommentsAndNesting) {
  std::string inner = WriteFile("inner.flags", "--test-takeover\n");
  std::string outer = WriteFile(
      "outer.flags", "# emud's flags\n\n  --test-state-dir=/dev/shm/y z  \n--flagfile=" + inner + "\n");
  auto got = ExpandFlagfiles({"emud", "--a", "--flagfile", outer, "--", "--flagfile=x"});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (std::vector<std::string>{"emud", "--a", "--test-state-dir=/dev/shm/y z",
                                            "--test-takeover", "--", "--flagfile=x"}));
}

TEST(ExpandFlagfiles, ErrorsNameTheFileAndLine) {
  std::string bad = WriteFile("bad.flags", "--ok\nstate-dir=/x\n");
  auto got = ExpandFlagfiles({"emud", "--flagfile=" + bad});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("bad.flags:2: 'state-dir=/x' is not a flag"),
            absl::string_view::npos)
      << got.status();
  got = ExpandFlagfiles({"emud", "--flagfile=/nonexistent/emud.flags"});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("/nonexistent/emud.flags: cannot read it"),
            absl::string_view::npos);
  std::string loop = WriteFile("loop.flags", "");
  std::ofstream(loop) << "--flagfile=" << loop << "\n";
  got = ExpandFlagfiles({"emud", "--flagfile=" + loop});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("nested more than"), absl::string_view::npos);
}

TEST(ParseDashedCommandLine, FlagfileWithDashedNamesSetsFlags) {
  std::string f = WriteFile("set.flags", "--test-state-dir=/dev/shm/from-file\n--test-takeover\n");
  std::string arg = "--flagfile=" + f;
  const char* argv[] = {"prog", arg.c_str(), "positional"};
  std::vector<std::string> rest = ParseDashedCommandLine(3, argv, {"prog", "usage"});
  EXPECT_EQ(rest, (std::vector<std::string>{"prog", "positional"}));
  EXPECT_EQ(absl::GetFlag(FLAGS_test_state_dir), "/dev/shm/from-file");
  EXPECT_TRUE(absl::GetFlag(FLAGS_test_takeover));
}

TEST(HelpText, ListsEveryFlagDashedWithDefaultAndHelp) {
  std::string h = HelpText({"prog", "prog: does things.\nUsage: prog [flags]"});
  EXPECT_EQ(h.rfind("prog: does things.\nUsage: prog [flags]\n", 0), 0u) << h;
  EXPECT_NE(h.find("  --test-state-dir (default: /dev/shm/x)\n      Where the test's state lives\n"),
            std::string::npos) << h;
  EXPECT_NE(h.find("  --test-takeover (default: false)\n"), std::string::npos);
  EXPECT_NE(h.find("--flagfile=FILE"), std::string::npos);
  EXPECT_NE(h.find("--version"), std::string::npos);
  EXPECT_EQ(h.find("--test_state_dir"), std::string::npos);
  EXPECT_EQ(h.find("--fromenv"), std::string::npos) << h;  // Abseil's own are not ours
}

}  // namespace
}  // namespace emud
