#include "server/handover.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "absl/strings/strip.h"
#include "base/unix_listener.h"

namespace emud::server {
namespace {

// RELEASE waits for a worker to stop (bounded by emud's stop timeout).
constexpr int kReplyTimeoutMs = 15000;

absl::Status SendLine(int fd, const std::string& line) {
  if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
    return absl::UnavailableError(absl::StrCat("handover send: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadLine(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, timeout_ms);
  if (r == 0) return absl::DeadlineExceededError("handover: no answer");
  char buf[512];
  ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
  if (n <= 0) return absl::UnavailableError("handover peer went away");
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

std::string HandoverSocket(const std::string& state_dir) { return state_dir + "/handover.sock"; }

absl::StatusOr<std::unique_ptr<HandoverServer>> HandoverServer::Listen(const std::string& path,
                                                                       Hooks hooks) {
  std::unique_ptr<HandoverServer> s(new HandoverServer());
  s->path_ = path;
  s->hooks_ = std::move(hooks);
  auto listener =
      ListenUnix(path, {.type = SOCK_SEQPACKET, .mode = 0600, .backlog = 1, .nonblocking = false});
  if (!listener.ok()) {
    return absl::Status(listener.status().code(),
                        absl::StrCat("handover socket: ", listener.status().message()));
  }
  s->listen_ = std::move(*listener);
  s->wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  s->thread_ = std::thread([p = s.get()] { p->Serve(); });
  return s;
}

HandoverServer::~HandoverServer() {
  stop_.store(true);
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  if (!done_.load()) ::unlink(path_.c_str());
}

void HandoverServer::Serve() {
  while (!stop_.load() && !done_.load()) {
    pollfd p[2] = {{listen_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) continue;
    if (p[1].revents) return;
    int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    UniqueFd conn(fd);
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != 0 && cred.uid != ::getuid())) {
      continue;
    }
    Session(fd);
  }
}

void HandoverServer::Session(int fd) {
  bool begun = false;
  for (;;) {
    auto line = ReadLine(fd, -1);
    if (!line.ok()) break;
    absl::Status s;
    if (*line == "TAKEOVER") {
      s = begun ? absl::FailedPreconditionError("already taking over") : hooks_.begin();
      begun = begun || s.ok();
    } else if (absl::StartsWith(*line, "RELEASE ") && begun) {
      s = hooks_.release(line->substr(8));
    } else if (*line == "DONE" && begun) {
      hooks_.finish();
      ::unlink(path_.c_str());
      (void)SendLine(fd, "OK");
      done_.store(true);
      if (on_done_) on_done_();
      return;
    } else {
      s = absl::InvalidArgumentError(absl::StrCat("unexpected '", *line, "'"));
    }
    if (!SendLine(fd, s.ok() ? "OK" : absl::StrCat("ERR ", s.message())).ok()) break;
  }
  if (begun) {
    log::Warning("the successor went away before the handover finished; supervising again");
    hooks_.abort();
  }
}

absl::StatusOr<std::unique_ptr<HandoverClient>> HandoverClient::Connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return absl::InvalidArgumentError("handover path too long");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("no emud answers at ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<HandoverClient>(new HandoverClient(std::move(fd)));
}

absl::Status HandoverClient::Call(const std::string& request) {
  absl::Status s = SendLine(fd_.get(), request);
  if (!s.ok()) return s;
  auto line = ReadLine(fd_.get(), kReplyTimeoutMs);
  if (!line.ok()) return line.status();
  if (*line == "OK") return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("the running emud refused ", request, ": ",
                                                    absl::StripPrefix(*line, "ERR ")));
}

absl::Status HandoverClient::Begin() { return Call("TAKEOVER"); }
absl::Status HandoverClient::Release(const std::string& device) { return Call("RELEASE " + device); }
absl::Status HandoverClient::Finish() { return Call("DONE"); }

}  // namespace emud::server
