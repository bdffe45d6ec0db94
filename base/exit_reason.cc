#include "base/exit_reason.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace emud {
namespace {
int g_fd = -1;
}  // namespace

absl::StatusOr<UniqueFd> CreateExitReasonFile() {
  UniqueFd fd(::memfd_create("emud-exit-reason", MFD_CLOEXEC));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat("memfd_create exit reason: ", std::strerror(errno)));
  }
  // Allocated now, so that the worker's write cannot fail for lack of room.
  if (int rc = ::posix_fallocate(fd.get(), 0, kExitReasonMax + 1); rc != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("allocating the exit reason file: ", std::strerror(rc)));
  }
  return fd;
}

std::string ReadExitReason(int fd) {
  if (fd < 0) return "";
  char buf[kExitReasonMax + 1];
  ssize_t n = ::pread(fd, buf, kExitReasonMax, 0);
  if (n <= 0) return "";
  buf[n] = '\0';
  return std::string(buf, ::strnlen(buf, static_cast<size_t>(n)));
}

void InitExitReasonFromEnv() {
  const char* v = std::getenv(kExitReasonEnv);
  int fd = -1;
  if (v != nullptr && absl::SimpleAtoi(v, &fd) && fd > 2 && ::fcntl(fd, F_GETFD) >= 0) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    g_fd = fd;
  }
  ::unsetenv(kExitReasonEnv);
}

void RecordExitReason(absl::string_view what, const absl::Status& status) {
  if (g_fd < 0) return;
  std::string line = absl::StrCat(absl::StatusCodeToString(status.code()), ": ", what, ": ",
                                  status.message());
  if (line.size() > kExitReasonMax) line.resize(kExitReasonMax);
  line.push_back('\0');
  (void)!::pwrite(g_fd, line.data(), line.size(), 0);
}

bool ExitReasonIsResourceExhausted(absl::string_view reason) {
  return absl::StartsWith(reason, "RESOURCE_EXHAUSTED:");
}

}  // namespace emud
