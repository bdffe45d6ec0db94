// Writes the built-in seed inputs into a directory (for the clang fuzz run).
#include <cstdio>
#include <fstream>
#include <string>

#include "vfio_user/fuzz/seeds.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: seed_writer DIR\n");
    return 2;
  }
  int i = 0;
  for (const auto& s : emud::vfio_user::fuzz::SeedInputs()) {
    std::ofstream(std::string(argv[1]) + "/seed-" + std::to_string(i++), std::ios::binary) << s;
  }
  return 0;
}
