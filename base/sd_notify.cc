#include "base/sd_notify.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/unique_fd.h"

namespace emud {

absl::Status SdNotifyTo(absl::string_view address, absl::string_view state) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (address.size() < 2 || (address[0] != '/' && address[0] != '@')) {
    return absl::InvalidArgumentError(absl::StrCat(
        kNotifySocketEnv, "='", address, "' is neither an absolute path nor @abstract"));
  }
  if (address.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kNotifySocketEnv, "='", address, "' is too long for a UNIX socket"));
  }
  std::memcpy(addr.sun_path, address.data(), address.size());
  if (address[0] == '@') addr.sun_path[0] = '\0';
  const socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size() +
                                               (address[0] == '@' ? 0 : 1));
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  ssize_t n;
  do {
    n = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                 reinterpret_cast<const sockaddr*>(&addr), len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    return absl::UnavailableError(
        absl::StrCat("notifying systemd at ", address, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status SdNotify(absl::string_view state, bool unset_environment) {
  const char* env = ::getenv(kNotifySocketEnv);
  if (env == nullptr || *env == '\0') return absl::OkStatus();
  const std::string address = env;
  if (unset_environment) ::unsetenv(kNotifySocketEnv);
  return SdNotifyTo(address, state);
}

}  // namespace emud
