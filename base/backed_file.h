// Backing a shared mapping of a tmpfs (or memfd) file before it is mapped.
//
// A store into a page of a MAP_SHARED mapping whose file page is a hole is
// where the kernel allocates it; on a full tmpfs (or a memfd over its memory
// limit) that allocation fails and the store is a SIGBUS - a worker killed
// mid-request by the filesystem, not by a bug. Every file a worker maps for
// writing is therefore made at least `size` bytes long AND allocated with
// posix_fallocate before it is mapped: a full filesystem then fails the open
// with RESOURCE_EXHAUSTED and a message that names the file and what to do,
// and once mapped no store can fault.
#ifndef EMUD_BASE_BACKED_FILE_H_
#define EMUD_BASE_BACKED_FILE_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace emud {

// Grows `fd` to at least `size` bytes (never shrinks it) and allocates every
// page of [0, size). Idempotent and cheap on an allocated file. `what` names
// the file in errors ("journal /dev/shm/emud/shm/nic0/journal").
// RESOURCE_EXHAUSTED when the filesystem is full, INTERNAL otherwise.
absl::Status BackFile(int fd, size_t size, absl::string_view what);

}  // namespace emud

#endif  // EMUD_BASE_BACKED_FILE_H_
