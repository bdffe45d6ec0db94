#include "base/backed_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace emud {

absl::Status BackFile(int fd, size_t size, absl::string_view what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat("fstat ", what, ": ", std::strerror(errno)));
  }
  // posix_fallocate also extends the file; no ftruncate (which would leave
  // a hole behind on a full filesystem).
  int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (rc == 0) return absl::OkStatus();
  if (rc == ENOSPC || rc == EDQUOT || rc == ENOMEM) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", size, " bytes for ", what, ": ", std::strerror(rc),
        " (its tmpfs is full - for a file under the state directory, that directory's "
        "filesystem: free space or make it larger; the device goes on by itself once there is "
        "room)"));
  }
  return absl::InternalError(
      absl::StrCat("allocate ", size, " bytes for ", what, ": ", std::strerror(rc)));
}

}  // namespace emud
