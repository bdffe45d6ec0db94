#include "base/mapped_file.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/backed_file.h"

namespace emud {

absl::StatusOr<MappedFile> MappedFile::MapBacked(int fd, size_t size, absl::string_view what,
                                                 int extra_flags) {
  if (size == 0) return absl::InvalidArgumentError(absl::StrCat("map ", what, ": empty mapping"));
  if (absl::Status s = BackFile(fd, size, what); !s.ok()) return s;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | extra_flags, fd, 0);
  if (p == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("mmap ", what, ": ", std::strerror(errno)));
  }
  MappedFile m;
  m.base_ = p;
  m.base_len_ = size;
  m.data_ = static_cast<uint8_t*>(p);
  m.size_ = size;
  return m;
}

absl::StatusOr<MappedFile> MappedFile::Map(int fd, uint64_t offset, uint64_t size, int prot,
                                           int* map_errno) {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  auto fail = [map_errno](int err, absl::Status s) {
    if (map_errno != nullptr) *map_errno = err;
    return s;
  };
  if (size == 0) return fail(EINVAL, absl::InvalidArgumentError("empty mapping"));
  const uint64_t delta = offset % page;
  const uint64_t len = size + delta;
  if (len < size || offset - delta > uint64_t{INT64_MAX} || len > SIZE_MAX) {
    return fail(EINVAL, absl::InvalidArgumentError("mapping overflows"));
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(len), prot, MAP_SHARED, fd,
                   static_cast<off_t>(offset - delta));
  if (p == MAP_FAILED) {
    const int e = errno;
    return fail(e, absl::InternalError(absl::StrCat("mmap: ", std::strerror(e))));
  }
  MappedFile m;
  m.base_ = p;
  m.base_len_ = static_cast<size_t>(len);
  m.data_ = static_cast<uint8_t*>(p) + delta;
  m.size_ = static_cast<size_t>(size);
  return m;
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)),
      base_len_(std::exchange(o.base_len_, 0)),
      data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    reset();
    base_ = std::exchange(o.base_, nullptr);
    base_len_ = std::exchange(o.base_len_, 0);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void MappedFile::reset() {
  if (base_ != nullptr) ::munmap(base_, base_len_);
  base_ = nullptr;
  base_len_ = 0;
  data_ = nullptr;
  size_ = 0;
}

}  // namespace emud
