#include "fdstore/standby.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/scm_rights.h"
#include "fdstore/fd_store.h"
#include "worker_api/fd_keys.h"

namespace emud::fdstore {
namespace {

// Environment and keys: a few KiB at most (a socket path, a trace line).
constexpr size_t kMaxPromotionBytes = 64 * 1024;

}  // namespace

absl::Status SendPromotion(int go, const std::vector<InheritedFd>& inherit,
                           const std::vector<std::string>& env) {
  if (inherit.size() > kMaxFdsPerMessage) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a promotion carries at most ", kMaxFdsPerMessage, " fds, not ", inherit.size()));
  }
  std::string payload;
  std::vector<int> fds;
  for (const InheritedFd& in : inherit) {
    if (in.env.empty()) {
      if (absl::Status s = ValidateKey(in.key); !s.ok()) return s;
    }
    payload.push_back('f');
    absl::StrAppend(&payload, in.key, "\x01", in.env);
    payload.push_back('\0');
    fds.push_back(in.fd);
  }
  for (const std::string& e : env) {
    payload.push_back('e');
    payload.append(e);
    payload.push_back('\0');
  }
  if (payload.size() > kMaxPromotionBytes) {
    return absl::InvalidArgumentError("promotion message too large");
  }
  SendResult r = SendWithFds(
      go,
      absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()),
      fds, MSG_DONTWAIT);
  if (!r.ok()) return r.status("promoting the standby worker");
  return absl::OkStatus();
}

absl::Status StandbyReady(int go) {
  const uint8_t b = static_cast<uint8_t>(kStandbyReady);
  SendResult r = SendWithFds(go, absl::Span<const uint8_t>(&b, 1), {});
  return r.ok() ? absl::OkStatus() : r.status("standby ready");
}

absl::Status AwaitPromotion(int go) {
  std::string buf(kMaxPromotionBytes, '\0');
  std::vector<UniqueFd> fds;
  RecvResult r = RecvWithFds(
      go, absl::Span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()), buf.size()), &fds);
  if (r.ok() && r.bytes == 0) return absl::CancelledError("emud no longer wants this standby");
  if (!r.ok()) {
    if (r.error == ECONNRESET) return absl::CancelledError("emud no longer wants this standby");
    return r.status("awaiting promotion");
  }
  if (r.data_truncated || r.fds_truncated) {
    return absl::InternalError("truncated promotion message");
  }
  buf.resize(r.bytes);
  std::string described;
  size_t next_fd = 0;
  // The fds keep their numbers: ownership passes to the environment's
  // readers (TakeInheritedFds, InitExitReasonFromEnv), as with a spawn.
  std::vector<int> taken;
  for (absl::string_view item : absl::StrSplit(buf, '\0', absl::SkipEmpty())) {
    const char kind = item[0];
    item.remove_prefix(1);
    if (kind == 'f') {
      if (next_fd >= fds.size())
        return absl::InternalError("promotion names more fds than it carries");
      std::pair<std::string, std::string> ke = absl::StrSplit(item, absl::MaxSplits('\x01', 1));
      const int fd = fds[next_fd++].release();
      taken.push_back(fd);
      if (ke.second.empty()) {
        absl::StrAppend(&described, described.empty() ? "" : ",", ke.first, "=", fd);
      } else {
        ::setenv(ke.second.c_str(), absl::StrCat(fd).c_str(), 1);
      }
    } else if (kind == 'e') {
      std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
      ::setenv(kv.first.c_str(), kv.second.c_str(), 1);
    } else {
      for (int fd : taken) ::close(fd);
      return absl::InternalError("malformed promotion message");
    }
  }
  if (next_fd != fds.size()) {
    for (int fd : taken) ::close(fd);
    return absl::InternalError("promotion carries fds it does not name");
  }
  if (described.empty()) {
    ::unsetenv(worker_api::kInheritedFdsEnv);
  } else {
    ::setenv(worker_api::kInheritedFdsEnv, described.c_str(), 1);
  }
  return absl::OkStatus();
}

}  // namespace emud::fdstore
