#include "fdstore/fd_store.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/scm_rights.h"
#include "base/unix_listener.h"
#include "worker_api/fd_keys.h"

namespace emud::fdstore {
namespace {

constexpr uint32_t kMagic = 0x31444645;  // "EFD1"
constexpr size_t kMaxKey = 200;
constexpr size_t kMaxName = 320;  // on the wire: keys, or "device/key" in a handoff

struct WireHeader {
  uint32_t magic;
  uint8_t op;
  uint8_t pad[3];
  int64_t arg;
  uint32_t name_len;
  uint32_t pad2;
};
static_assert(sizeof(WireHeader) == 24);

absl::Status Errno(absl::string_view what) {
  int e = errno;
  return absl::Status(e == EPIPE || e == ECONNRESET || e == ENOTCONN
                          ? absl::StatusCode::kUnavailable
                          : absl::StatusCode::kInternal,
                      absl::StrCat(what, ": ", strerror(e)));
}

bool KeyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == ':' || c == '/' || c == '=' || c == '-';
}

}  // namespace

absl::Status ValidateKey(absl::string_view key) {
  if (key.empty() || key.size() > kMaxKey) {
    return absl::InvalidArgumentError(absl::StrCat("fd key length ", key.size(), " not in 1..200"));
  }
  for (char c : key) {
    if (!KeyChar(c)) return absl::InvalidArgumentError(absl::StrCat("bad character in fd key '", key, "'"));
  }
  return absl::OkStatus();
}

absl::Status SendMessage(int sock, const Message& msg, int fd) {
  if (msg.name.size() > kMaxName) return absl::InvalidArgumentError("fd-store name too long");
  char buf[sizeof(WireHeader) + kMaxName];
  WireHeader h{};
  h.magic = kMagic;
  h.op = static_cast<uint8_t>(msg.op);
  h.arg = msg.arg;
  h.name_len = static_cast<uint32_t>(msg.name.size());
  std::memcpy(buf, &h, sizeof h);
  std::memcpy(buf + sizeof h, msg.name.data(), msg.name.size());
  const SendResult r =
      SendWithFds(sock, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(buf), sizeof h + msg.name.size()),
                  fd >= 0 ? absl::MakeConstSpan(&fd, 1) : absl::Span<const int>());
  if (r.ok()) return absl::OkStatus();
  errno = r.error;
  return Errno("fd-store send");
}

absl::StatusOr<Message> ReceiveMessage(int sock, UniqueFd* fd) {
  fd->reset();
  char buf[sizeof(WireHeader) + kMaxName + 1];
  // Every fd is owned as it arrives, so that none leaks whatever we decide.
  std::vector<UniqueFd> got;
  const RecvResult r = RecvWithFds(sock, absl::MakeSpan(reinterpret_cast<uint8_t*>(buf), sizeof buf), &got);
  if (!r.ok()) {
    errno = r.error;
    return Errno("fd-store receive");
  }
  const ssize_t n = static_cast<ssize_t>(r.bytes);
  if (n == 0) return absl::UnavailableError("fd-store channel closed by peer");
  if (r.data_truncated || r.fds_truncated) {
    return absl::InvalidArgumentError("fd-store message truncated");
  }
  if (got.size() > 1) return absl::InvalidArgumentError("fd-store message carries more than one fd");
  WireHeader h;
  if (static_cast<size_t>(n) < sizeof h) return absl::InvalidArgumentError("short fd-store message");
  std::memcpy(&h, buf, sizeof h);
  if (h.magic != kMagic) return absl::InvalidArgumentError("bad fd-store magic");
  if (h.name_len > kMaxName || sizeof h + h.name_len != static_cast<size_t>(n)) {
    return absl::InvalidArgumentError("fd-store message size mismatch");
  }
  if (h.op < static_cast<uint8_t>(Op::kHello) || h.op > static_cast<uint8_t>(Op::kListener)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown fd-store op ", h.op));
  }
  Message m;
  m.op = static_cast<Op>(h.op);
  m.arg = h.arg;
  m.name.assign(buf + sizeof h, h.name_len);
  if (!got.empty()) *fd = std::move(got[0]);
  return m;
}

// ----------------------------------------------------------------- FdStore

absl::Status FdStore::Put(absl::string_view device, absl::string_view key, UniqueFd fd) {
  absl::Status s = ValidateKey(key);
  if (!s.ok()) return s;
  if (!fd.valid()) return absl::InvalidArgumentError("no fd to store");
  auto& dev = fds_[std::string(device)];
  dev[std::string(key)] = std::move(fd);
  return absl::OkStatus();
}

void FdStore::Release(absl::string_view device, absl::string_view key) {
  auto it = fds_.find(device);
  if (it == fds_.end()) return;
  auto k = it->second.find(key);
  if (k != it->second.end()) it->second.erase(k);
  if (it->second.empty()) fds_.erase(it);
}

void FdStore::ReleasePrefix(absl::string_view device, absl::string_view prefix) {
  auto it = fds_.find(device);
  if (it == fds_.end()) return;
  auto& m = it->second;
  for (auto k = m.lower_bound(prefix); k != m.end() && absl::string_view(k->first).substr(0, prefix.size()) == prefix;) {
    k = m.erase(k);
  }
  if (m.empty()) fds_.erase(it);
}

void FdStore::ReleaseDevice(absl::string_view device) {
  auto it = fds_.find(device);
  if (it != fds_.end()) fds_.erase(it);
}

std::vector<std::pair<std::string, int>> FdStore::Fds(absl::string_view device) const {
  std::vector<std::pair<std::string, int>> out;
  auto it = fds_.find(device);
  if (it == fds_.end()) return out;
  for (const auto& [k, fd] : it->second) out.emplace_back(k, fd.get());
  return out;
}

std::vector<std::string> FdStore::Keys(absl::string_view device) const {
  std::vector<std::string> out;
  for (auto& [k, fd] : Fds(device)) out.push_back(k);
  return out;
}

std::vector<std::string> FdStore::Devices() const {
  std::vector<std::string> out;
  for (const auto& [d, m] : fds_) out.push_back(d);
  return out;
}

size_t FdStore::size() const {
  size_t n = 0;
  for (const auto& [d, m] : fds_) n += m.size();
  return n;
}

absl::Status FdStore::ServeOne(int channel, std::string* device) {
  UniqueFd fd;
  auto msg = ReceiveMessage(channel, &fd);
  if (!msg.ok()) {
    if (absl::IsUnavailable(msg.status())) return msg.status();
    // Malformed: refuse, keep the channel.
    return SendMessage(channel, Message{Op::kAck, EINVAL, ""});
  }
  int err = Apply(*msg, std::move(fd), device);
  return SendMessage(channel, Message{Op::kAck, err, ""});
}

int FdStore::Apply(const Message& msg, UniqueFd fd, std::string* device) {
  switch (msg.op) {
    case Op::kHello:
      if (!device->empty() && *device != msg.name) return EPERM;  // one device per channel
      if (msg.name.empty()) return EINVAL;
      *device = msg.name;
      return 0;
    case Op::kDeposit:
      if (device->empty()) return EPERM;
      if (!fd.valid() || !ValidateKey(msg.name).ok()) return EINVAL;
      return Put(*device, msg.name, std::move(fd)).ok() ? 0 : EINVAL;
    case Op::kRelease:
      if (device->empty()) return EPERM;
      Release(*device, msg.name);
      return 0;
    case Op::kReleasePrefix:
      if (device->empty()) return EPERM;
      if (msg.name.empty()) return EINVAL;  // releasing everything is emud's decision
      ReleasePrefix(*device, msg.name);
      return 0;
    default:  // acks and the keeper's control ops are not a worker's to send
      return EINVAL;
  }
}

// ------------------------------------------------------------ FdStoreClient

absl::StatusOr<std::unique_ptr<FdStoreClient>> FdStoreClient::Adopt(UniqueFd channel,
                                                                     std::string device) {
  std::unique_ptr<FdStoreClient> c(new FdStoreClient(std::move(channel), std::move(device)));
  absl::Status s = c->Hello();
  if (!s.ok()) return s;
  return c;
}

absl::StatusOr<std::unique_ptr<FdStoreClient>> FdStoreClient::Connect(const std::string& path,
                                                                       std::string device) {
  std::unique_ptr<FdStoreClient> c(new FdStoreClient(UniqueFd(), std::move(device)));
  absl::Status s = c->Reconnect(path);
  if (!s.ok()) return s;
  return c;
}

absl::Status FdStoreClient::Call(const Message& msg, int fd) {
  if (!channel_.valid()) return absl::UnavailableError("not connected to the fd store");
  absl::Status s = SendMessage(channel_.get(), msg, fd);
  if (!s.ok()) return s;
  UniqueFd stray;
  auto ack = ReceiveMessage(channel_.get(), &stray);
  if (!ack.ok()) return ack.status();
  if (ack->op != Op::kAck) return absl::InternalError("fd store answered with a non-ack");
  if (ack->arg != 0) {
    return absl::Status(ack->arg == EPERM ? absl::StatusCode::kPermissionDenied
                                          : absl::StatusCode::kInvalidArgument,
                        absl::StrCat("fd store refused '", msg.name, "': ", strerror(ack->arg)));
  }
  return absl::OkStatus();
}

absl::Status FdStoreClient::Hello() {
  // Behind emud-keeper the worker proves itself with the token emud got for
  // it (pids mean nothing across the keeper's and emud's pid namespaces).
  int64_t id = static_cast<int64_t>(getpid());
  if (const char* t = std::getenv(kTokenEnv); t != nullptr) {
    int64_t token = 0;
    if (absl::SimpleAtoi(t, &token)) id = token;
  }
  return Call(Message{Op::kHello, id, device_}, -1);
}

absl::Status FdStoreClient::Deposit(absl::string_view key, int fd) {
  absl::Status s = ValidateKey(key);
  if (!s.ok()) return s;
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) return Errno("dup for fd store");
  UniqueFd mine(dup);
  s = Call(Message{Op::kDeposit, 0, std::string(key)}, mine.get());
  if (!s.ok()) return s;
  kept_[std::string(key)] = std::move(mine);
  return absl::OkStatus();
}

absl::Status FdStoreClient::Keep(absl::string_view key, int fd) {
  absl::Status s = ValidateKey(key);
  if (!s.ok()) return s;
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) return Errno("dup for fd store");
  kept_[std::string(key)] = UniqueFd(dup);
  return absl::OkStatus();
}

absl::Status FdStoreClient::Release(absl::string_view key) {
  kept_.erase(std::string(key));
  return Call(Message{Op::kRelease, 0, std::string(key)}, -1);
}

absl::Status FdStoreClient::ReleasePrefix(absl::string_view prefix) {
  for (auto it = kept_.lower_bound(prefix);
       it != kept_.end() && absl::string_view(it->first).substr(0, prefix.size()) == prefix;) {
    it = kept_.erase(it);
  }
  return Call(Message{Op::kReleasePrefix, 0, std::string(prefix)}, -1);
}

absl::Status FdStoreClient::Reconnect(const std::string& path) {
  channel_.reset();
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return absl::InvalidArgumentError("fd-store path too long");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd s(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!s.valid()) return Errno("fd-store socket");
  if (connect(s.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0) {
    return absl::UnavailableError(absl::StrCat("connect to fd store ", path, ": ", strerror(errno)));
  }
  channel_ = std::move(s);
  absl::Status st = Hello();
  if (!st.ok()) {
    channel_.reset();
    return st;
  }
  for (const auto& [key, fd] : kept_) {
    st = Call(Message{Op::kDeposit, 0, key}, fd.get());
    if (!st.ok()) {
      channel_.reset();
      return st;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> ListenSeqpacket(const std::string& path) {
  return ListenUnix(path, {.type = SOCK_SEQPACKET, .mode = 0600, .backlog = 64});
}

// ------------------------------------------------- inherited descriptors

absl::StatusOr<std::map<std::string, UniqueFd>> TakeInheritedFds() {
  std::map<std::string, UniqueFd> out;
  const char* v = std::getenv(worker_api::kInheritedFdsEnv);
  if (v == nullptr || *v == '\0') {
    unsetenv(worker_api::kInheritedFdsEnv);
    return out;
  }
  std::string spec(v);
  unsetenv(worker_api::kInheritedFdsEnv);
  for (absl::string_view item : absl::StrSplit(spec, ',')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    int fd;
    if (!ValidateKey(kv.first).ok() || !absl::SimpleAtoi(kv.second, &fd) || fd < 3) {
      return absl::InvalidArgumentError(absl::StrCat("bad EMUD_FDS entry '", item, "'"));
    }
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("EMUD_FDS names fd ", fd, " (", kv.first,
                                                     ") which is not open"));
    }
    out[kv.first] = UniqueFd(fd);
  }
  return out;
}

}  // namespace emud::fdstore
