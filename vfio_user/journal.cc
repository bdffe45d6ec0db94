#include "vfio_user/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/mapped_file.h"
#include "base/unique_fd.h"

namespace emud::vfio_user {

absl::StatusOr<RequestJournal> RequestJournal::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("open journal ", path, ": ", std::strerror(errno)));
  // Allocated before it is mapped: the mark is a plain store (no SIGBUS on a
  // full tmpfs, see base/mapped_file.h).
  auto pages = MappedFile::MapBacked(fd.get(), 2 * kPage, absl::StrCat("journal ", path));
  if (!pages.ok()) return pages.status();
  return RequestJournal(std::move(*pages));
}

}  // namespace emud::vfio_user
