// MappedFile: the RAII owner of one MAP_SHARED mapping of a file or memfd.
//
// Two ways in:
//   MapBacked  - a file this process writes through its mapping (journal,
//                queue state, TAP receive stage, peer rings, doorbell memfd,
//                poison page). The file is grown and allocated with BackFile
//                (base/backed_file.h) BEFORE it is mapped, so no store into the
//                mapping can SIGBUS on a full tmpfs.
//   Map        - any range of someone else's file (a client's DMA window):
//                nothing is allocated, any offset alignment is accepted.
//
// The mapping does not own the fd: the fd may be closed right after mapping.
// Move-only; the destructor (or reset) unmaps. Not thread-safe (like a
// pointer: the bytes it maps are the caller's to synchronize).
#ifndef EMUD_BASE_MAPPED_FILE_H_
#define EMUD_BASE_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace emud {

class MappedFile {
 public:
  // An empty owner: data() is null, size() 0, destruction does nothing.
  MappedFile() = default;

  // Allocates [0, size) of `fd` with BackFile (growing it, never shrinking)
  // and maps those bytes PROT_READ | PROT_WRITE, MAP_SHARED | `extra_flags`
  // (e.g. MAP_POPULATE). `what` names the file in errors ("journal PATH").
  // RESOURCE_EXHAUSTED when the filesystem is full (nothing mapped),
  // INVALID_ARGUMENT for size 0, INTERNAL when fstat/fallocate/mmap fail
  // otherwise.
  static absl::StatusOr<MappedFile> MapBacked(int fd, size_t size, absl::string_view what,
                                              int extra_flags = 0);

  // Maps `size` bytes of `fd` starting at `offset` (any alignment: the
  // page-aligned superset is mapped, data() points at `offset`) with `prot`
  // (PROT_* as for mmap) and MAP_SHARED. Allocates nothing: for files this
  // process does not own. INVALID_ARGUMENT for size 0 or a range that
  // overflows, INTERNAL if mmap fails; `*map_errno` (if given) receives the
  // errno of the failure (EINVAL for the argument errors), for callers that
  // report it to a peer.
  static absl::StatusOr<MappedFile> Map(int fd, uint64_t offset, uint64_t size, int prot,
                                        int* map_errno = nullptr);

  ~MappedFile() { reset(); }
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // The first mapped byte the caller asked for (null when empty).
  uint8_t* data() const { return data_; }
  // The bytes the caller asked for (0 when empty).
  size_t size() const { return size_; }
  bool mapped() const { return data_ != nullptr; }
  // data() viewed as a T (the caller vouches for size and alignment).
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }

  // Unmaps (if mapped); the owner is empty afterwards. Pointers into the
  // mapping are invalid from here on.
  void reset();

 private:
  void* base_ = nullptr;  // page-aligned start handed to munmap
  size_t base_len_ = 0;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace emud

#endif  // EMUD_BASE_MAPPED_FILE_H_
