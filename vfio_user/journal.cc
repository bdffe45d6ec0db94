#include "vfio_user/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/backed_file.h"
#include "base/unique_fd.h"

namespace emud::vfio_user {

absl::StatusOr<RequestJournal> RequestJournal::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("open journal ", path, ": ", std::strerror(errno)));
  // Allocated before it is mapped: the mark is a plain store (no SIGBUS on a
  // full tmpfs, see base/backed_file.h).
  if (absl::Status s = BackFile(fd.get(), 2 * kPage, absl::StrCat("journal ", path)); !s.ok()) {
    return s;
  }
  auto pages = Mapping::Map(fd.get(), 0, 2 * kPage, PROT_READ | PROT_WRITE);
  if (!pages.ok()) return absl::InternalError(absl::StrCat("mmap journal: ", pages.status().message()));
  return RequestJournal(std::move(*pages));
}

}  // namespace emud::vfio_user
