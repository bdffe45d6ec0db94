// main() of the Bazel corpus replay tests (one per fuzz target): runs every
// file of the checked-in corpus directory named by argv[1] (a workspace
// path, found in the test's runfiles) through the target's
// LLVMFuzzerTestOneInput, built with the default toolchain, so `bazel test`
// replays every corpus without clang. A target's invariant checks abort, so
// an input that breaks one fails the test; an empty or missing corpus fails
// too (a corpus that silently vanished replays nothing).
#include <dirent.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (workspace-relative)\n", argv[0]);
    return 2;
  }
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  std::string dir = srcdir ? std::string(srcdir) + "/" + (ws ? ws : "emud") + "/" + argv[1] : argv[1];
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    std::fprintf(stderr, "FAIL: no corpus directory %s\n", dir.c_str());
    return 1;
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') names.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  size_t bytes = 0;
  for (const std::string& n : names) {
    std::ifstream f(dir + "/" + n, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string s = ss.str();
    bytes += s.size();
    if (LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size()) != 0) {
      std::fprintf(stderr, "FAIL: %s returned non-zero\n", n.c_str());
      return 1;
    }
  }
  if (names.empty()) {
    std::fprintf(stderr, "FAIL: corpus %s is empty\n", argv[1]);
    return 1;
  }
  std::printf("replayed %zu inputs (%zu bytes) from %s\n", names.size(), bytes, argv[1]);
  return 0;
}
