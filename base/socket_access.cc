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
#include "base/unix_listener.h"

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
    return ChownFailure(dir, uid, gid, errno);
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

}  // namespace emud
