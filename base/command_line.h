// Command lines of emud's binaries: flags are documented and passed with
// dashes (--state-dir), while Abseil's flag names use underscores
// (ABSL_FLAG(std::string, state_dir, ...)). Every main parses its command
// line through ParseDashedCommandLine, so both spellings are accepted, on
// the command line and in --flagfile files, and --help lists every flag of
// the binary with the dashed spelling.
#ifndef EMUD_BASE_COMMAND_LINE_H_
#define EMUD_BASE_COMMAND_LINE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace emud {

// Returns argv[0..argc) with every dash in a flag's name replaced by an
// underscore: "--state-dir=/x" -> "--state_dir=/x", "--socket-uid" ->
// "--socket_uid". Only arguments starting with "--" are flags; the value
// after '=' and separate value arguments are left alone. Rewriting stops at
// a bare "--" (what follows is positional). argv itself is not modified, so
// /proc/PID/cmdline keeps the spelling the process was started with.
std::vector<std::string> UnderscoreFlagNames(int argc, const char* const* argv);

// Replaces every --flagfile=FILE (or --flagfile FILE) before a bare "--" by
// FILE's flags: one per line, leading and trailing blanks ignored, empty
// lines and lines starting with '#' skipped; nested --flagfile lines are
// expanded too (at most 16 deep). A line that is not a flag, or a file that
// cannot be read, is an error naming the file and line.
absl::StatusOr<std::vector<std::string>> ExpandFlagfiles(const std::vector<std::string>& args);

// What --help and --version print.
struct ProgramInfo {
  std::string name;   // "emud"
  std::string usage;  // the lines before the flag list
};

// The --help text: `info.usage`, then every flag registered in the binary
// (except Abseil's own) in dashed spelling with its default and help, then
// --flagfile, --help and --version.
std::string HelpText(const ProgramInfo& info);

// absl::ParseCommandLine over ExpandFlagfiles + UnderscoreFlagNames. Like
// it, exits the process on an unknown flag or a bad value (status 1).
// --help, -h or --helpfull print HelpText to stdout and exit 0; --version
// prints "NAME VERSION" and exits 0 (only before a bare "--"). Returns the
// positional arguments, argv[0] first.
std::vector<std::string> ParseDashedCommandLine(int argc, const char* const* argv,
                                                const ProgramInfo& info);
// The same with the program's name taken from argv[0] and Abseil's program
// usage message (absl::SetProgramUsageMessage) as the usage.
std::vector<std::string> ParseDashedCommandLine(int argc, const char* const* argv);

}  // namespace emud

#endif  // EMUD_BASE_COMMAND_LINE_H_
