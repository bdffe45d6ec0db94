#include "base/unix_listener.h"

#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace emud {

absl::Status ChownFailure(const std::string& path, uid_t uid, gid_t gid, int err) {
  std::string ids = absl::StrCat(uid == static_cast<uid_t>(-1) ? std::string("-") : absl::StrCat(uid), ":",
                                 gid == static_cast<gid_t>(-1) ? std::string("-") : absl::StrCat(gid));
  if (err == EPERM) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot give ", path, " to ", ids, ": this process (uid ", ::geteuid(),
        ") lacks CAP_CHOWN; run emud as root, or leave the socket owner unset and run the VMM "
        "as emud's user or in its group"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("chown ", path, " to ", ids, ": ", std::strerror(err)));
}

absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, const UnixListenerOptions& options) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", path, "' is empty or longer than ", sizeof(addr.sun_path) - 1,
                     " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, options.type | SOCK_CLOEXEC | (options.nonblocking ? SOCK_NONBLOCK : 0), 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  // Owner-only from birth: bind creates the file with the socket inode's
  // mode minus the umask. Per socket, so no other thread's files are
  // affected (a umask would be process-wide).
  if (::fchmod(fd.get(), 0600) != 0) {
    return absl::InternalError(absl::StrCat("fchmod socket ", path, ": ", std::strerror(errno)));
  }
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::InternalError(absl::StrCat("bind ", path, ": ", std::strerror(errno)));
  }
  // Final ids and mode, then listen: a connect() before listen() is refused,
  // so nobody reaches the socket with looser access.
  if ((options.uid != static_cast<uid_t>(-1) || options.gid != static_cast<gid_t>(-1)) &&
      ::chown(path.c_str(), options.uid, options.gid) != 0) {
    absl::Status s = ChownFailure(path, options.uid, options.gid, errno);
    ::unlink(path.c_str());
    return s;
  }
  if (::chmod(path.c_str(), options.mode) != 0) {
    absl::Status s = absl::InternalError(absl::StrCat("chmod ", path, ": ", std::strerror(errno)));
    ::unlink(path.c_str());
    return s;
  }
  if (::listen(fd.get(), options.backlog) != 0) {
    absl::Status s = absl::InternalError(absl::StrCat("listen ", path, ": ", std::strerror(errno)));
    ::unlink(path.c_str());
    return s;
  }
  return fd;
}

}  // namespace emud
