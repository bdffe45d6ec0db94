#include "base/command_line.h"

#include "absl/flags/parse.h"

namespace emud {

std::vector<std::string> UnderscoreFlagNames(int argc, const char* const* argv) {
  std::vector<std::string> out(argv, argv + argc);
  for (size_t i = 1; i < out.size(); ++i) {
    std::string& a = out[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    const size_t end = std::min(a.find('='), a.size());
    for (size_t j = 2; j < end; ++j) {
      if (a[j] == '-') a[j] = '_';
    }
  }
  return out;
}

std::vector<std::string> ParseDashedCommandLine(int argc, const char* const* argv) {
  std::vector<std::string> storage = UnderscoreFlagNames(argc, argv);
  std::vector<char*> fixed;
  fixed.reserve(storage.size() + 1);
  for (std::string& a : storage) fixed.push_back(a.data());
  fixed.push_back(nullptr);
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(storage.size()), fixed.data());
  return std::vector<std::string>(rest.begin(), rest.end());
}

}  // namespace emud
