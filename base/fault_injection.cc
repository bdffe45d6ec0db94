// Test-only: installs a fault_point hook from the environment.
//
//   EMUD_TEST_CRASH_ON=POINT:HEX[,POINT:HEX...]
//
// crashes the process (SIGABRT) when fault point POINT ("vfio", "virtchnl",
// "tx") sees input containing the bytes HEX (e.g. "tx:c0ffee0ddba11").
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "base/fault_point.h"

namespace emud::fault {
namespace {

std::vector<std::pair<std::string, std::string>>* Rules() {
  static auto* rules = new std::vector<std::pair<std::string, std::string>>();
  return rules;
}

int Nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void CrashOnMatch(const char* point, const void* data, size_t len) {
  for (const auto& [p, bytes] : *Rules()) {
    if (p != point || bytes.empty() || len < bytes.size()) continue;
    const char* d = static_cast<const char*>(data);
    for (size_t i = 0; i + bytes.size() <= len; ++i) {
      if (std::memcmp(d + i, bytes.data(), bytes.size()) == 0) {
        std::fprintf(stderr, "fault injection: crashing at %s on the requested input\n", point);
        std::abort();
      }
    }
  }
}

struct Installer {
  Installer() {
    const char* env = std::getenv("EMUD_TEST_CRASH_ON");
    if (env == nullptr || *env == '\0') return;
    std::string spec(env);
    size_t start = 0;
    while (start < spec.size()) {
      size_t end = spec.find(',', start);
      if (end == std::string::npos) end = spec.size();
      std::string item = spec.substr(start, end - start);
      start = end + 1;
      size_t colon = item.find(':');
      if (colon == std::string::npos) continue;
      std::string hex = item.substr(colon + 1), bytes;
      bool ok = hex.size() % 2 == 0;
      for (size_t i = 0; ok && i < hex.size(); i += 2) {
        int hi = Nibble(hex[i]), lo = Nibble(hex[i + 1]);
        ok = hi >= 0 && lo >= 0;
        bytes.push_back(static_cast<char>(hi * 16 + lo));
      }
      if (!ok) {
        std::fprintf(stderr, "EMUD_TEST_CRASH_ON: bad hex in '%s'\n", item.c_str());
        std::abort();
      }
      Rules()->emplace_back(item.substr(0, colon), bytes);
    }
    if (!Rules()->empty()) g_hook = &CrashOnMatch;
  }
};
Installer installer;

}  // namespace
}  // namespace emud::fault
