#include "fdstore/keeper.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace emud::fdstore {
namespace {

constexpr uint64_t kListenId = 1;
// A reply that cannot be written within this time drops the peer.
constexpr int kSendTimeoutMs = 2000;

void Log(absl::string_view msg) { std::fprintf(stderr, "emud-keeper: %.*s\n", int(msg.size()), msg.data()); }

// Replies of many messages (a bind, a handoff) are written blocking, bounded.
void MakeBlockingWithTimeout(int fd, int ms) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

int64_t NewToken() {
  uint64_t t = 0;
  while (t == 0) {
    if (::getrandom(&t, sizeof(t), 0) != sizeof(t)) t = uint64_t(::getpid()) << 32 | uint64_t(::time(nullptr));
    t &= 0x7fffffffffffffffull;  // positive: a pid never reaches 2^32, tokens are >= 2^32
    if (t < (uint64_t{1} << 32)) t |= uint64_t{1} << 40;
  }
  return static_cast<int64_t>(t);
}

absl::StatusOr<UniqueFd> ConnectSeqpacket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("keeper socket path too long: ", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!s.valid()) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect to emud-keeper at ", path, ": ", std::strerror(errno)));
  }
  return s;
}

// Device names as emud allows them (state_store::ValidateDeviceName; the
// keeper links no LMDB): 1..63 of [A-Za-z0-9._-]. They never contain '/',
// which separates device and key in a handoff.
bool state_store_name_ok(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

// ------------------------------------------------------------------- Keeper

absl::StatusOr<std::unique_ptr<Keeper>> Keeper::Start(const std::string& path) {
  std::unique_ptr<Keeper> k(new Keeper(path));
  k->epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!k->epoll_.valid()) return absl::InternalError("epoll_create1");
  auto old = ConnectSeqpacket(path);
  if (old.ok()) {
    absl::Status s = k->TakeOver(old->get());
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("taking over from the keeper at ", path, ": ",
                                                 s.message()));
    }
  } else {
    auto l = ListenSeqpacket(path);
    if (!l.ok()) return l.status();
    k->listen_ = std::move(*l);
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenId;
  ::epoll_ctl(k->epoll_.get(), EPOLL_CTL_ADD, k->listen_.get(), &ev);
  return k;
}

Keeper::~Keeper() = default;

size_t Keeper::devices() const {
  std::set<std::string> d;
  for (const auto& [dev, tok] : tokens_) d.insert(dev);
  return d.size();
}

absl::Status Keeper::TakeOver(int old_keeper) {
  MakeBlockingWithTimeout(old_keeper, 5000);
  absl::Status s = SendMessage(old_keeper, Message{Op::kHandoff, ::getpid(), ""});
  if (!s.ok()) return s;
  for (;;) {
    UniqueFd fd;
    auto m = ReceiveMessage(old_keeper, &fd);
    if (!m.ok()) return m.status();
    switch (m->op) {
      case Op::kFd: {
        size_t slash = m->name.find('/');
        if (slash == std::string::npos || !fd.valid()) {
          return absl::InvalidArgumentError(absl::StrCat("bad handoff entry '", m->name, "'"));
        }
        absl::Status p = store_.Put(m->name.substr(0, slash), m->name.substr(slash + 1), std::move(fd));
        if (!p.ok()) return p;
        break;
      }
      case Op::kChannel:
        if (!fd.valid() || m->name.empty()) return absl::InvalidArgumentError("bad handoff channel");
        AddChannel(std::move(fd), m->name);
        tokens_[m->name] = m->arg;
        break;
      case Op::kAdopt:
        tokens_[m->name] = m->arg;
        break;
      case Op::kListener:
        if (!fd.valid()) return absl::InvalidArgumentError("handoff without the listening socket");
        ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
        listen_ = std::move(fd);
        break;
      case Op::kAck:
        if (m->arg != 0) return absl::InternalError(absl::StrCat("handoff refused: ", std::strerror(int(m->arg))));
        if (!listen_.valid()) return absl::InternalError("handoff ended without the listening socket");
        took_over_ = true;
        Log(absl::StrCat("took over ", store_.size(), " fds of ", tokens_.size(),
                         " devices and the listening socket ", path_, " from the previous keeper"));
        return absl::OkStatus();
      default:
        return absl::InvalidArgumentError("unexpected message in a handoff");
    }
  }
}

uint64_t Keeper::AddChannel(UniqueFd fd, std::string device) {
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
  auto ch = std::make_unique<Channel>();
  ch->fd = std::move(fd);
  ch->device = std::move(device);
  uint64_t id = next_id_++;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = id;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, ch->fd.get(), &ev);
  channels_[id] = std::move(ch);
  return id;
}

void Keeper::CloseChannel(uint64_t id) {
  auto it = channels_.find(id);
  if (it == channels_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd.get(), nullptr);
  channels_.erase(it);
}

bool Keeper::PeerAllowed(int fd) const {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  return cred.uid == 0 || cred.uid == ::getuid();
}

absl::Status Keeper::Run(const std::atomic<bool>* stop) {
  while (!stop->load() && !handed_over_) {
    epoll_event evs[64];
    int n = ::epoll_wait(epoll_.get(), evs, 64, 100);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("epoll_wait: ", std::strerror(errno)));
    }
    for (int i = 0; i < n && !handed_over_; ++i) {
      uint64_t id = evs[i].data.u64;
      if (id == kListenId) {
        for (;;) {
          int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
          if (fd < 0) break;
          UniqueFd owned(fd);
          if (!PeerAllowed(fd)) {
            Log("refusing a connection from another uid");
            continue;
          }
          AddChannel(std::move(owned), "");
        }
      } else if (channels_.count(id) > 0) {
        HandleMessage(id);
      }
    }
  }
  return absl::OkStatus();
}

void Keeper::HandleMessage(uint64_t id) {
  Channel& ch = *channels_[id];
  UniqueFd fd;
  auto msg = ReceiveMessage(ch.fd.get(), &fd);
  if (!msg.ok()) {
    if (absl::IsUnavailable(msg.status())) {
      if (ch.control) Log("emud's control channel closed");
      CloseChannel(id);  // a worker exited or died: its fds stay for its successor
    } else {
      (void)SendMessage(ch.fd.get(), Message{Op::kAck, EINVAL, ""});
    }
    return;
  }
  if (msg->op == Op::kHandoff) {
    if (!ch.device.empty() || ch.control) {
      (void)SendMessage(ch.fd.get(), Message{Op::kAck, EPERM, ""});
      return;
    }
    UniqueFd successor(::dup(ch.fd.get()));
    CloseChannel(id);
    absl::Status s = HandOff(successor.get());
    if (!s.ok()) {
      Log(absl::StrCat("handoff failed, serving on: ", s.ToString()));
      return;
    }
    handed_over_ = true;
    return;
  }
  if (msg->op == Op::kControl) {
    if (!ch.device.empty()) {
      (void)SendMessage(ch.fd.get(), Message{Op::kAck, EPERM, ""});
      return;
    }
    ch.control = true;
    MakeBlockingWithTimeout(ch.fd.get(), kSendTimeoutMs);
    Log(absl::StrCat("emud (pid ", msg->arg, " in its namespace) connected"));
    (void)SendMessage(ch.fd.get(), Message{Op::kAck, 0, ""});
    return;
  }
  if (ch.control) {
    HandleControl(ch, *msg);
    return;
  }
  int err = 0;
  if (msg->op == Op::kHello) {
    // A worker reconnecting after a keeper restart: it must be the device's
    // current worker (the token emud got for it), unless no token is known
    // yet (a fresh keeper that emud has not told): then its word is taken.
    // A channel made by kBind already names its device: the channel itself
    // is the credential.
    auto it = tokens_.find(msg->name);
    if (!ch.device.empty()) {
      err = ch.device == msg->name ? 0 : EPERM;
    } else if (it != tokens_.end() && it->second != msg->arg) {
      err = EPERM;
      Log(absl::StrCat("refusing a channel for device '", msg->name,
                       "' with a stale token (not its current worker)"));
    } else if (state_store_name_ok(msg->name)) {
      err = store_.Apply(*msg, std::move(fd), &ch.device);
      if (err == 0 && it == tokens_.end()) tokens_[msg->name] = msg->arg;
    } else {
      err = EINVAL;
    }
  } else {
    err = store_.Apply(*msg, std::move(fd), &ch.device);
  }
  (void)SendMessage(ch.fd.get(), Message{Op::kAck, err, ""});
}

void Keeper::HandleControl(Channel& ch, const Message& msg) {
  const int fd = ch.fd.get();
  const std::string& device = msg.name;
  if (!state_store_name_ok(device)) {
    // kBind answers a token (> 0) or -errno; the other ops 0 or errno.
    (void)SendMessage(fd, Message{Op::kAck, msg.op == Op::kBind ? -EINVAL : EINVAL, ""});
    return;
  }
  switch (msg.op) {
    case Op::kBind: {
      // The device's earlier channels belong to workers that are gone (emud
      // binds only after the previous worker exited).
      std::vector<uint64_t> old;
      for (const auto& [id, c] : channels_) {
        if (c->device == device) old.push_back(id);
      }
      for (uint64_t id : old) CloseChannel(id);
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        (void)SendMessage(fd, Message{Op::kAck, -errno, ""});
        return;
      }
      UniqueFd mine(sv[0]), theirs(sv[1]);
      const int64_t token = NewToken();
      tokens_[device] = token;
      AddChannel(std::move(mine), device);
      if (!SendMessage(fd, Message{Op::kFd, 0, kChannelKey}, theirs.get()).ok()) return;
      for (const auto& [key, kfd] : store_.Fds(device)) {
        if (!SendMessage(fd, Message{Op::kFd, 0, key}, kfd).ok()) return;
      }
      (void)SendMessage(fd, Message{Op::kAck, token, ""});
      return;
    }
    case Op::kList: {
      std::vector<std::string> keys = store_.Keys(device);
      for (const auto& k : keys) {
        if (!SendMessage(fd, Message{Op::kFd, 0, k}).ok()) return;
      }
      (void)SendMessage(fd, Message{Op::kAck, static_cast<int64_t>(keys.size()), ""});
      return;
    }
    case Op::kDrop: {
      store_.ReleaseDevice(device);
      tokens_.erase(device);
      std::vector<uint64_t> old;
      for (const auto& [id, c] : channels_) {
        if (c->device == device) old.push_back(id);
      }
      for (uint64_t id : old) CloseChannel(id);
      (void)SendMessage(fd, Message{Op::kAck, 0, ""});
      return;
    }
    case Op::kAdopt:
      tokens_[device] = msg.arg;
      (void)SendMessage(fd, Message{Op::kAck, 0, ""});
      return;
    default:
      (void)SendMessage(fd, Message{Op::kAck, EINVAL, ""});
      return;
  }
}

absl::Status Keeper::HandOff(int successor) {
  if (!PeerAllowed(successor)) return absl::PermissionDeniedError("successor of another uid");
  MakeBlockingWithTimeout(successor, 5000);
  std::set<std::string> devices;
  for (const auto& [dev, tok] : tokens_) devices.insert(dev);
  // Every held fd, as "device/key".
  for (const auto& [id, c] : channels_) {
    if (!c->device.empty()) devices.insert(c->device);
  }
  for (const std::string& dev : store_.Devices()) devices.insert(dev);
  for (const std::string& dev : devices) {
    for (const auto& [key, kfd] : store_.Fds(dev)) {
      absl::Status s = SendMessage(successor, Message{Op::kFd, 0, absl::StrCat(dev, "/", key)}, kfd);
      if (!s.ok()) return s;
    }
  }
  std::set<std::string> with_channel;
  for (const auto& [id, c] : channels_) {
    if (c->device.empty() || c->control) continue;  // emud reconnects by itself
    auto t = tokens_.find(c->device);
    absl::Status s = SendMessage(
        successor, Message{Op::kChannel, t == tokens_.end() ? 0 : t->second, c->device},
        c->fd.get());
    if (!s.ok()) return s;
    with_channel.insert(c->device);
  }
  for (const auto& [dev, tok] : tokens_) {
    if (with_channel.count(dev) > 0) continue;
    absl::Status s = SendMessage(successor, Message{Op::kAdopt, tok, dev});
    if (!s.ok()) return s;
  }
  absl::Status s = SendMessage(successor, Message{Op::kListener, 0, ""}, listen_.get());
  if (!s.ok()) return s;
  s = SendMessage(successor, Message{Op::kAck, 0, ""});
  if (!s.ok()) return s;
  Log(absl::StrCat("handed ", store_.size(), " fds of ", devices.size(),
                   " devices and the listening socket over to a successor keeper"));
  return absl::OkStatus();
}

// -------------------------------------------------------------- KeeperClient

absl::StatusOr<std::unique_ptr<KeeperClient>> KeeperClient::Connect(const std::string& path,
                                                                     absl::Duration timeout) {
  std::unique_ptr<KeeperClient> c(new KeeperClient(path, timeout));
  absl::Status s = c->EnsureConnected();
  if (!s.ok()) return s;
  return c;
}

absl::Status KeeperClient::EnsureConnected() {
  if (channel_.valid()) return absl::OkStatus();
  auto s = ConnectSeqpacket(path_);
  if (!s.ok()) return s.status();
  MakeBlockingWithTimeout(s->get(), static_cast<int>(absl::ToInt64Milliseconds(timeout_)));
  absl::Status st = SendMessage(s->get(), Message{Op::kControl, ::getpid(), ""});
  if (!st.ok()) return st;
  UniqueFd stray;
  auto ack = ReceiveMessage(s->get(), &stray);
  if (!ack.ok()) return ack.status();
  if (ack->op != Op::kAck || ack->arg != 0) {
    return absl::PermissionDeniedError(absl::StrCat("emud-keeper at ", path_, " refused emud"));
  }
  channel_ = std::move(*s);
  if (ever_connected_) reconnected_ = true;
  ever_connected_ = true;
  return absl::OkStatus();
}

absl::StatusOr<Message> KeeperClient::Call(const Message& msg,
                                           std::vector<std::pair<std::string, UniqueFd>>* fds) {
  // One retry: the first attempt may find the channel of a keeper that has
  // since been replaced (upgrade) or restarted.
  for (int attempt = 0; attempt < 2; ++attempt) {
    absl::Status s = EnsureConnected();
    if (!s.ok()) return s;
    if (fds != nullptr) fds->clear();
    s = SendMessage(channel_.get(), msg);
    if (s.ok()) {
      for (;;) {
        UniqueFd fd;
        auto m = ReceiveMessage(channel_.get(), &fd);
        if (!m.ok()) {
          s = m.status();
          break;
        }
        if (m->op == Op::kAck) return *m;
        if (m->op != Op::kFd || fds == nullptr) {
          s = absl::InternalError("unexpected message from emud-keeper");
          break;
        }
        fds->emplace_back(m->name, std::move(fd));
      }
    }
    channel_.reset();
    if (attempt == 1) return s;
  }
  return absl::InternalError("unreachable");
}

absl::StatusOr<KeeperClient::Bound> KeeperClient::Bind(const std::string& device) {
  Bound b;
  auto ack = Call(Message{Op::kBind, 0, device}, &b.fds);
  if (!ack.ok()) return ack.status();
  if (ack->arg <= 0) {
    return absl::InternalError(absl::StrCat("emud-keeper refused to bind device ", device, ": ",
                                            std::strerror(int(-ack->arg))));
  }
  if (b.fds.empty() || b.fds[0].first != kChannelKey || !b.fds[0].second.valid()) {
    return absl::InternalError("emud-keeper's bind reply lacks the worker channel");
  }
  b.token = ack->arg;
  return b;
}

absl::StatusOr<std::vector<std::string>> KeeperClient::List(const std::string& device) {
  std::vector<std::pair<std::string, UniqueFd>> keys;
  auto ack = Call(Message{Op::kList, 0, device}, &keys);
  if (!ack.ok()) return ack.status();
  std::vector<std::string> out;
  for (auto& [k, fd] : keys) out.push_back(k);
  return out;
}

absl::Status KeeperClient::Drop(const std::string& device) {
  auto ack = Call(Message{Op::kDrop, 0, device}, nullptr);
  if (!ack.ok()) return ack.status();
  if (ack->arg != 0) return absl::InternalError(std::strerror(int(ack->arg)));
  return absl::OkStatus();
}

absl::Status KeeperClient::Adopt(const std::string& device, int64_t token) {
  auto ack = Call(Message{Op::kAdopt, token, device}, nullptr);
  if (!ack.ok()) return ack.status();
  if (ack->arg != 0) return absl::InternalError(std::strerror(int(ack->arg)));
  return absl::OkStatus();
}

}  // namespace emud::fdstore
