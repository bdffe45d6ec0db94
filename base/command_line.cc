#include "base/command_line.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <cerrno>
#include <cstring>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "base/version.h"

namespace emud {
namespace {

constexpr int kMaxFlagfileDepth = 16;

void Underscore(std::string& a) {
  const size_t end = std::min(a.find('='), a.size());
  for (size_t j = 2; j < end; ++j) {
    if (a[j] == '-') a[j] = '_';
  }
}

// "--flagfile=F" or "--flagfile F" (Abseil also takes a single dash).
bool IsFlagfile(const std::string& a, std::string* inline_value, bool* has_value) {
  for (const char* p : {"--flagfile", "-flagfile"}) {
    if (a == p) {
      *has_value = false;
      return true;
    }
    if (absl::StartsWith(a, absl::StrCat(p, "="))) {
      *inline_value = a.substr(std::string(p).size() + 1);
      *has_value = true;
      return true;
    }
  }
  return false;
}

absl::Status ExpandInto(const std::vector<std::string>& args, size_t first, int depth,
                        std::vector<std::string>* out) {
  bool positional = false;
  for (size_t i = first; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (positional || a == "--") {
      positional = true;
      out->push_back(a);
      continue;
    }
    std::string file;
    bool has_value = false;
    if (!IsFlagfile(a, &file, &has_value)) {
      out->push_back(a);
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError("--flagfile needs a FILE");
      file = args[++i];
    }
    if (depth >= kMaxFlagfileDepth) {
      return absl::InvalidArgumentError(
          absl::StrCat("--flagfile ", file, ": flag files nested more than ",
                       kMaxFlagfileDepth, " deep (does one include itself?)"));
    }
    std::ifstream in(file);
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("--flagfile ", file, ": cannot read it: ", std::strerror(errno)));
    }
    std::vector<std::string> lines;
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      absl::string_view t = absl::StripAsciiWhitespace(line);
      if (t.empty() || t[0] == '#') continue;
      if (t[0] != '-' || t == "--") {
        return absl::InvalidArgumentError(
            absl::StrCat("--flagfile ", file, ":", lineno, ": '", t,
                         "' is not a flag; write one --flag=value per line"));
      }
      lines.emplace_back(t);
    }
    absl::Status s = ExpandInto(lines, 0, depth + 1, out);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// Abseil's own flags (parse.cc: --flagfile, --fromenv, ...; usage: --help,
// ...), described separately or not offered.
bool IsLibraryFlag(absl::string_view name, const absl::CommandLineFlag& f) {
  for (const char* n : {"flagfile", "fromenv", "tryfromenv", "undefok", "help", "helpfull",
                        "helpshort", "helppackage", "helpon", "helpmatch", "version",
                        "only_check_args"}) {
    if (name == n) return true;
  }
  return absl::StrContains(f.Filename(), "absl/flags/");
}

void AppendWrapped(std::string* out, absl::string_view text, absl::string_view indent) {
  size_t col = 0;
  out->append(indent.data(), indent.size());
  col = indent.size();
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (col > indent.size() && col + 1 + word.size() > 79) {
      out->push_back('\n');
      out->append(indent.data(), indent.size());
      col = indent.size();
    } else if (col > indent.size()) {
      out->push_back(' ');
      ++col;
    }
    out->append(word.data(), word.size());
    col += word.size();
  }
  out->push_back('\n');
}

std::string Basename(const char* argv0) {
  std::string s = argv0 == nullptr ? "" : argv0;
  size_t slash = s.rfind('/');
  return slash == std::string::npos ? s : s.substr(slash + 1);
}

}  // namespace

std::vector<std::string> UnderscoreFlagNames(int argc, const char* const* argv) {
  std::vector<std::string> out(argv, argv + argc);
  for (size_t i = 1; i < out.size(); ++i) {
    std::string& a = out[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    Underscore(a);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ExpandFlagfiles(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  if (args.empty()) return out;
  out.push_back(args[0]);
  absl::Status s = ExpandInto(args, 1, 0, &out);
  if (!s.ok()) return s;
  return out;
}

std::string HelpText(const ProgramInfo& info) {
  std::string out = info.usage;
  if (!out.empty() && out.back() != '\n') out.push_back('\n');
  // Sorted by their dashed names.
  std::map<std::string, absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsLibraryFlag(name, *flag)) continue;
    flags[absl::StrReplaceAll(std::string(name), {{"_", "-"}})] = flag;
  }
  absl::StrAppend(&out, "\nFlags (--name=value or --name value; dashes or underscores: "
                        "--state-dir = --state_dir):\n");
  for (const auto& [name, flag] : flags) {
    std::string def = flag->DefaultValue();
    absl::StrAppend(&out, name.size() == 1 ? "  -" : "  --", name,
                    " (default: ", def.empty() ? "\"\"" : def, ")\n");
    AppendWrapped(&out, flag->Help(), "      ");
  }
  absl::StrAppend(&out,
                  "  --flagfile=FILE\n"
                  "      Read flags from FILE, one --flag=value per line ('#' starts a comment "
                  "line)\n"
                  "  --help, -h\n      Print this text and exit\n"
                  "  --version\n      Print \"",
                  info.name, " ", kVersion, "\" and exit\n");
  return out;
}

std::vector<std::string> ParseDashedCommandLine(int argc, const char* const* argv,
                                                const ProgramInfo& info) {
  std::vector<std::string> raw(argv, argv + argc);
  for (size_t i = 1; i < raw.size(); ++i) {
    const std::string& a = raw[i];
    if (a == "--") break;
    if (a == "--help" || a == "-h" || a == "-help" || a == "--helpfull" || a == "--helpshort") {
      std::fputs(HelpText(info).c_str(), stdout);
      std::fflush(stdout);
      std::exit(0);
    }
    if (a == "--version" || a == "-version") {
      std::printf("%s %s\n", info.name.c_str(), kVersion);
      std::fflush(stdout);
      std::exit(0);
    }
  }
  auto expanded = ExpandFlagfiles(raw);
  if (!expanded.ok()) {
    std::fprintf(stderr, "%s: %s\n", info.name.c_str(),
                 std::string(expanded.status().message()).c_str());
    std::exit(1);
  }
  std::vector<const char*> ptrs;
  for (const std::string& a : *expanded) ptrs.push_back(a.c_str());
  std::vector<std::string> storage =
      UnderscoreFlagNames(static_cast<int>(ptrs.size()), ptrs.data());
  std::vector<char*> fixed;
  fixed.reserve(storage.size() + 1);
  for (std::string& a : storage) fixed.push_back(a.data());
  fixed.push_back(nullptr);
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(storage.size()), fixed.data());
  return std::vector<std::string>(rest.begin(), rest.end());
}

std::vector<std::string> ParseDashedCommandLine(int argc, const char* const* argv) {
  ProgramInfo info;
  info.name = Basename(argc > 0 ? argv[0] : nullptr);
  info.usage = std::string(absl::ProgramUsageMessage());
  return ParseDashedCommandLine(argc, argv, info);
}

}  // namespace emud
