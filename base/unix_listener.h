// Listening AF_UNIX sockets with one access rule for every listener of the
// project (vfio-user sockets, the fd store, the keeper, emud's handover
// socket):
//
//   1. the socket is born owner-only: its inode mode is set to 0600 with
//      fchmod BEFORE bind (Linux creates the file with the socket inode's
//      mode minus the umask), so the rule holds in threaded processes without
//      touching the process-wide umask;
//   2. then it gets its final owner, group and mode;
//   3. only then listen(): a connect() before listen() is refused, so no
//      client ever reaches the socket with looser access than the final one.
//
// The per-device directory and the validation of owners and modes stay in
// base/socket_access.h.
#ifndef EMUD_BASE_UNIX_LISTENER_H_
#define EMUD_BASE_UNIX_LISTENER_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace emud {

struct UnixListenerOptions {
  int type = SOCK_STREAM;  // SOCK_STREAM or SOCK_SEQPACKET
  uid_t uid = static_cast<uid_t>(-1);  // owner of the socket file; -1: the process's
  gid_t gid = static_cast<gid_t>(-1);  // group of the socket file; -1: the process's
  uint32_t mode = 0600;    // final mode of the socket file
  int backlog = 16;
  bool nonblocking = true;  // O_NONBLOCK on the listening fd (always close-on-exec)
};

// Binds and listens on `path` as described above, removing a stale file
// there first. INVALID_ARGUMENT for an empty path or one longer than
// sun_path; FAILED_PRECONDITION (naming what to fix) if the owner or group
// cannot be set; INTERNAL for other failures. On an error after bind the
// socket file is removed again.
absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, const UnixListenerOptions& options);

// The error for a chown of `path` to `uid`:`gid` that failed with `err`:
// FAILED_PRECONDITION; for EPERM it says the process lacks CAP_CHOWN and what
// to do instead. Shared with base/socket_access (directories).
absl::Status ChownFailure(const std::string& path, uid_t uid, gid_t gid, int err);

}  // namespace emud

#endif  // EMUD_BASE_UNIX_LISTENER_H_
