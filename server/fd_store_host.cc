#include "server/fd_store_host.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <map>

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "fdstore/fd_store.h"
#include "fdstore/keeper.h"

namespace emud::server {
namespace {

// ------------------------------------------------------- in-process store

class LocalFdStoreHost final : public FdStoreHost {
 public:
  LocalFdStoreHost(std::string socket, Metrics* metrics, WorkerDirectory workers)
      : socket_(std::move(socket)), metrics_(metrics), workers_(std::move(workers)) {}

  absl::Status Listen() {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_.valid()) return absl::InternalError(absl::StrCat("epoll: ", std::strerror(errno)));
    auto listen = fdstore::ListenSeqpacket(socket_);
    if (!listen.ok()) return listen.status();
    listen_ = std::move(*listen);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenId;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listen_.get(), &ev);
    return absl::OkStatus();
  }

  bool outlives_emud() const override { return false; }

  absl::StatusOr<Launch> PrepareWorker(const std::string& device) override {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      return absl::InternalError(absl::StrCat("fd-store channel: ", std::strerror(errno)));
    }
    Launch l;
    l.emud_end.reset(sv[0]);
    ::fcntl(l.emud_end.get(), F_SETFL, ::fcntl(l.emud_end.get(), F_GETFL) | O_NONBLOCK);
    l.owned.emplace_back(sv[1]);
    l.inherit.push_back({fdstore::kChannelKey, l.owned[0].get()});
    for (const auto& [key, fd] : store_.Fds(device)) l.inherit.push_back({key, fd});
    l.env = {absl::StrCat(fdstore::kStoreSocketEnv, "=", socket_)};
    return l;
  }

  void WorkerStarted(const std::string& device, Launch& launch) override {
    if (!launch.emud_end.valid()) return;
    auto prev = spawned_.find(device);
    if (prev != spawned_.end()) CloseChannel(prev->second);
    spawned_[device] = AddChannel(std::move(launch.emud_end), device);
  }

  void WorkerAdopted(const std::string&, int64_t) override {}

  std::vector<std::string> HeldKeys(const std::string& device) override {
    return store_.Keys(device);
  }
  void RefreshHeldGauge(const std::string&) override {}
  absl::Duration held_gauge_interval() const override { return absl::InfiniteDuration(); }

  void DropDevice(const std::string& device) override {
    store_.ReleaseDevice(device);
    std::vector<uint64_t> gone;
    for (const auto& [id, ch] : channels_) {
      if (ch.device == device) gone.push_back(id);
    }
    for (uint64_t id : gone) CloseChannel(id);
  }

  int event_fd() const override { return epoll_.get(); }

  std::vector<std::string> HandleEvents() override {
    std::vector<std::string> touched;
    epoll_event evs[64];
    int n = ::epoll_wait(epoll_.get(), evs, 64, 0);
    for (int i = 0; i < n; ++i) {
      uint64_t id = evs[i].data.u64;
      if (id == kListenId) {
        Accept();
        continue;
      }
      std::string device = Serve(id);
      if (device.empty()) continue;
      bool seen = false;
      for (const auto& t : touched) seen = seen || t == device;
      if (!seen) touched.push_back(std::move(device));
    }
    return touched;
  }

 private:
  static constexpr uint64_t kListenId = 1;
  struct Channel {
    UniqueFd fd;         // emud's end, non-blocking
    std::string device;  // preset for spawned channels; set by HELLO otherwise
  };

  uint64_t AddChannel(UniqueFd fd, std::string device) {
    uint64_t id = next_id_++;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd.get(), &ev);
    channels_[id] = Channel{std::move(fd), std::move(device)};
    return id;
  }

  void CloseChannel(uint64_t id) {
    auto it = channels_.find(id);
    if (it == channels_.end()) return;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd.get(), nullptr);
    channels_.erase(it);
    for (auto s = spawned_.begin(); s != spawned_.end();) {
      s = s->second == id ? spawned_.erase(s) : std::next(s);
    }
  }

  void Accept() {
    while (true) {
      int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) return;
      AddChannel(UniqueFd(fd), "");
    }
  }

  // Serves one message of channel `id`; returns its device if the store
  // may have changed for it, else "".
  std::string Serve(uint64_t id) {
    auto it = channels_.find(id);
    if (it == channels_.end()) return "";
    Channel& ch = it->second;
    const bool anonymous = ch.device.empty();
    absl::Status s = store_.ServeOne(ch.fd.get(), &ch.device);
    if (!s.ok()) {  // closed by the worker (exit, crash) or unusable
      CloseChannel(id);
      return "";
    }
    if (ch.device.empty()) return "";
    if (anonymous) {
      // A reconnecting worker: only the device's current worker may speak
      // for it.
      struct ucred cred {};
      socklen_t len = sizeof(cred);
      pid_t current = workers_.current_pid(ch.device);
      bool ok = ::getsockopt(ch.fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
                current != 0 && cred.pid == current;
      if (!ok) {
        log::DeviceWarning(ch.device, absl::StrCat("fd store: refusing a channel from pid ",
                                                   cred.pid, " (not its current worker)"));
        CloseChannel(id);
        return "";
      }
      log::DeviceInfo(ch.device,
                      absl::StrCat("worker pid ", cred.pid, " reconnected to the fd store"));
    }
    metrics_->SetFdsHeld(ch.device, store_.Keys(ch.device).size());
    return ch.device;
  }

  const std::string socket_;
  Metrics* const metrics_;
  const WorkerDirectory workers_;
  UniqueFd epoll_, listen_;
  fdstore::FdStore store_;
  std::map<uint64_t, Channel> channels_;
  std::map<std::string, uint64_t> spawned_;  // device -> channel of the worker we spawned
  uint64_t next_id_ = 16;
};

// ------------------------------------------------------------ emud-keeper

class KeeperFdStoreHost final : public FdStoreHost {
 public:
  KeeperFdStoreHost(std::unique_ptr<fdstore::KeeperClient> keeper, std::string path,
                    Metrics* metrics, WorkerDirectory workers)
      : keeper_(std::move(keeper)),
        path_(std::move(path)),
        metrics_(metrics),
        workers_(std::move(workers)) {}

  bool outlives_emud() const override { return true; }

  absl::StatusOr<Launch> PrepareWorker(const std::string& device) override {
    // The keeper makes the channel and hands over what it holds.
    auto b = keeper_->Bind(device);
    if (!b.ok()) return absl::Status(b.status().code(), absl::StrCat("emud-keeper: ", b.status().message()));
    Launch l;
    l.token = b->token;
    for (auto& [key, fd] : b->fds) {
      l.inherit.push_back({key, fd.get()});
      l.owned.push_back(std::move(fd));
    }
    l.env = {absl::StrCat(fdstore::kStoreSocketEnv, "=", path_),
             absl::StrCat(fdstore::kTokenEnv, "=", b->token)};
    return l;
  }

  void WorkerStarted(const std::string& device, Launch& launch) override {
    // Everything but the worker's channel is a held fd.
    metrics_->SetFdsHeld(device, launch.inherit.empty() ? 0 : launch.inherit.size() - 1);
  }

  void WorkerAdopted(const std::string& device, int64_t token) override {
    if (token == 0) return;
    absl::Status a = keeper_->Adopt(device, token);
    if (!a.ok()) log::DeviceError(device, absl::StrCat("keeper adopt: ", a.ToString()));
  }

  std::vector<std::string> HeldKeys(const std::string& device) override {
    auto keys = keeper_->List(device);
    if (!keys.ok()) {
      log::DeviceError(device, absl::StrCat("emud-keeper: listing: ", keys.status().ToString()));
      return {};
    }
    if (keeper_->TakeReconnected()) Readopt();
    return *keys;
  }

  void RefreshHeldGauge(const std::string& device) override {
    metrics_->SetFdsHeld(device, HeldKeys(device).size());
  }
  absl::Duration held_gauge_interval() const override { return absl::Milliseconds(100); }

  void DropDevice(const std::string& device) override {
    absl::Status k = keeper_->Drop(device);
    if (!k.ok()) log::DeviceError(device, absl::StrCat("emud-keeper drop: ", k.ToString()));
  }

  int event_fd() const override { return -1; }
  std::vector<std::string> HandleEvents() override { return {}; }

 private:
  // After the keeper restarted: tell it the running workers' tokens.
  void Readopt() {
    log::Info("emud-keeper restarted or was upgraded: telling it the running workers' tokens");
    for (const auto& [device, token] : workers_.running_tokens()) {
      absl::Status a = keeper_->Adopt(device, token);
      if (!a.ok()) log::DeviceError(device, absl::StrCat("keeper adopt: ", a.ToString()));
    }
  }

  std::unique_ptr<fdstore::KeeperClient> keeper_;
  const std::string path_;
  Metrics* const metrics_;
  const WorkerDirectory workers_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FdStoreHost>> OpenFdStoreHost(const FdStoreHostOptions& options,
                                                            Metrics* metrics,
                                                            WorkerDirectory workers) {
  if (options.fd_keeper.empty()) {
    auto host = std::make_unique<LocalFdStoreHost>(options.state_dir + "/fdstore.sock", metrics,
                                                   std::move(workers));
    absl::Status s = host->Listen();
    if (!s.ok()) return s;
    return host;
  }
  // The keeper may be starting beside us (a node boot): wait for it.
  absl::Time give_up = absl::Now() + options.fd_keeper_wait;
  absl::StatusOr<std::unique_ptr<fdstore::KeeperClient>> k;
  for (;;) {
    k = fdstore::KeeperClient::Connect(options.fd_keeper);
    if (k.ok() || absl::Now() >= give_up) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (!k.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "no emud-keeper answers at --fd-keeper ", options.fd_keeper, " (", k.status().message(),
        "); start emud-keeper first (deploy/k8s/keeper.yaml, deploy/systemd), or pass "
        "--fd-keeper=none to keep the fds in emud (a container restart then resets guests)"));
  }
  log::Info(absl::StrCat("fd store: emud-keeper at ", options.fd_keeper));
  return std::make_unique<KeeperFdStoreHost>(std::move(*k), options.fd_keeper, metrics,
                                             std::move(workers));
}

}  // namespace emud::server
