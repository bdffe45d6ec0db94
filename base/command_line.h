// Command lines of emud's binaries: flags are documented and passed with
// dashes (--state-dir), while Abseil's flag names use underscores
// (ABSL_FLAG(std::string, state_dir, ...)). Every main parses its command
// line through ParseDashedCommandLine, so both spellings are accepted.
#ifndef EMUD_BASE_COMMAND_LINE_H_
#define EMUD_BASE_COMMAND_LINE_H_

#include <string>
#include <vector>

namespace emud {

// Returns argv[0..argc) with every dash in a flag's name replaced by an
// underscore: "--state-dir=/x" -> "--state_dir=/x", "--socket-uid" ->
// "--socket_uid". Only arguments starting with "--" are flags; the value
// after '=' and separate value arguments are left alone. Rewriting stops at
// a bare "--" (what follows is positional). argv itself is not modified, so
// /proc/PID/cmdline keeps the spelling the process was started with.
std::vector<std::string> UnderscoreFlagNames(int argc, const char* const* argv);

// absl::ParseCommandLine over UnderscoreFlagNames(argc, argv). Like it, exits
// the process on an unknown flag, a bad value or --help. Returns the
// positional arguments, argv[0] first.
std::vector<std::string> ParseDashedCommandLine(int argc, const char* const* argv);

}  // namespace emud

#endif  // EMUD_BASE_COMMAND_LINE_H_
