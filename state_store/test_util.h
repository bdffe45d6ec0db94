// Helpers for tests that need a fresh state directory on tmpfs.
#ifndef EMUD_STATE_STORE_TEST_UTIL_H_
#define EMUD_STATE_STORE_TEST_UTIL_H_

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"

namespace emud::state_store {

// A unique directory under /dev/shm (tmpfs, like production), removed on
// destruction.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag = "t") {
    static std::atomic<int> seq{0};
    const char* base = std::getenv("EMUD_TEST_TMPDIR");
    path_ = absl::StrCat(base != nullptr ? base : "/dev/shm", "/emud-test-", tag, "-", getpid(),
                         "-", seq++);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace emud::state_store

#endif  // EMUD_STATE_STORE_TEST_UTIL_H_
