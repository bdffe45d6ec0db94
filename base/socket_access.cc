#include "base/socket_access.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace emud {

absl::StatusOr<uint32_t> ParseNumericId(absl::string_view text, absl::string_view what) {
  uint32_t id = 0;
  bool digits = !text.empty();
  for (char c : text) digits = digits && absl::ascii_isdigit(static_cast<unsigned char>(c));
  if (!digits || !absl::SimpleAtoi(text, &id) || id == UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", absl::CHexEscape(text),
        "' is not a numeric id; give a number such as 107 (user and group names are not "
        "resolved: emud's container does not know the VMM's users)"));
  }
  return id;
}

absl::StatusOr<SocketOwner> ParseSocketOwner(absl::string_view text, absl::string_view what) {
  SocketOwner o;
  size_t colon = text.find(':');
  absl::string_view user = text.substr(0, colon);
  if (text.empty() || (colon != absl::string_view::npos && colon + 1 == text.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", absl::CHexEscape(text), "' is empty or ends with ':'; expected UID, UID:GID or :GID"));
  }
  if (!user.empty()) {
    auto uid = ParseNumericId(user, absl::StrCat(what, " user"));
    if (!uid.ok()) return uid.status();
    o.uid = *uid;
  }
  if (colon != absl::string_view::npos) {
    auto gid = ParseNumericId(text.substr(colon + 1), absl::StrCat(what, " group"));
    if (!gid.ok()) return gid.status();
    o.gid = *gid;
  }
  return o;
}

absl::Status ValidateSocketMode(uint32_t mode, absl::string_view what) {
  if ((mode & ~0666u) != 0 || (mode & 0600u) != 0600u) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s %04o is not a socket mode; use read/write bits only (a subset of 0666) including "
        "0600 for the owner, e.g. 0660 (owner and group) or 0600 (owner only)",
        what, mode));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> ParseSocketMode(absl::string_view text, absl::string_view what) {
  uint32_t mode = 0;
  bool octal = !text.empty() && text.size() <= 5;
  for (char c : text) {
    octal = octal && c >= '0' && c <= '7';
    if (octal) mode = mode * 8 + static_cast<uint32_t>(c - '0');
  }
  if (!octal) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", absl::CHexEscape(text), "' is not an octal mode; write it like 0660"));
  }
  absl::Status s = ValidateSocketMode(mode, what);
  if (!s.ok()) return s;
  return mode;
}

namespace {

absl::Status ChownError(const std::string& path, uid_t uid, gid_t gid, int err) {
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

}  // namespace

absl::Status PrepareOwnedDir(const std::string& dir, uid_t uid, gid_t gid, uint32_t mode) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create socket directory ", dir, ": ", std::strerror(errno)));
  }
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "socket directory ", dir, " is not a directory (or is a symlink): ", std::strerror(errno),
        "; remove it"));
  }
  UniqueFd owned(fd);
  if ((uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1)) &&
      ::fchown(fd, uid, gid) != 0) {
    return ChownError(dir, uid, gid, errno);
  }
  // fchmod after fchown: chown clears setgid for non-root callers.
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat("stat ", dir, ": ", std::strerror(errno)));
  }
  // Keep a setgid bit inherited from the parent (it chose the group).
  mode_t want = mode | (st.st_mode & S_ISGID);
  if ((st.st_mode & 07777) != want && ::fchmod(fd, want) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("chmod ", dir, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> BindUnixListener(const std::string& path, uid_t uid, gid_t gid,
                                          uint32_t mode, int backlog) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", path, "' is empty or longer than ", sizeof(addr.sun_path) - 1,
                     " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  ::unlink(path.c_str());
  // Owner-only from birth (umask around bind; callers bind before they start
  // threads), then the final ids and mode, then listen: a connect() before
  // listen() is refused, so nobody reaches the socket with looser access.
  const mode_t old_umask = ::umask(0177);
  const int bound = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::umask(old_umask);
  if (bound != 0) {
    return absl::InternalError(absl::StrCat("bind ", path, ": ", std::strerror(errno)));
  }
  if ((uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1)) &&
      ::chown(path.c_str(), uid, gid) != 0) {
    absl::Status s = ChownError(path, uid, gid, errno);
    ::unlink(path.c_str());
    return s;
  }
  if (::chmod(path.c_str(), mode) != 0) {
    absl::Status s = absl::InternalError(absl::StrCat("chmod ", path, ": ", std::strerror(errno)));
    ::unlink(path.c_str());
    return s;
  }
  if (::listen(fd.get(), backlog) != 0) {
    return absl::InternalError(absl::StrCat("listen ", path, ": ", std::strerror(errno)));
  }
  return fd;
}

}  // namespace emud
