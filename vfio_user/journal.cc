#include "vfio_user/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/unique_fd.h"

namespace emud::vfio_user {

absl::StatusOr<RequestJournal> RequestJournal::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("open journal ", path, ": ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 ||
      (st.st_size < static_cast<off_t>(2 * kPage) && ::ftruncate(fd.get(), 2 * kPage) != 0)) {
    return absl::InternalError(absl::StrCat("size journal: ", std::strerror(errno)));
  }
  auto pages = Mapping::Map(fd.get(), 0, 2 * kPage, PROT_READ | PROT_WRITE);
  if (!pages.ok()) return absl::InternalError(absl::StrCat("mmap journal: ", pages.status().message()));
  return RequestJournal(std::move(*pages));
}

}  // namespace emud::vfio_user
