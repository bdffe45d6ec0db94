// Writes the AVF fuzzer's seeds into a directory (for the clang fuzz run).
#include <cstdio>
#include <string>

#include "avf/fuzz/seeds.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  int i = 0;
  for (const std::string& s : emud::avf::fuzz::SeedInputs()) {
    std::string path = std::string(argv[1]) + "/seed-" + std::to_string(i++);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) return 1;
    std::fwrite(s.data(), 1, s.size(), f);
    std::fclose(f);
  }
  return 0;
}
