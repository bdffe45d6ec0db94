#include "server/device_manager.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/exit_reason.h"
#include "base/socket_access.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"
#include "state_store/state_dir.h"
#include "worker_api/fd_keys.h"
#include "worker_api/worker_args.h"

namespace emud::server {
namespace {

using emud::internal::DeviceRecord;
using fdstore::AdoptProcess;
using fdstore::HasExited;
using fdstore::Process;
using fdstore::ReapAndDescribe;
using fdstore::SignalProcess;
using emud::internal::WorkerStatus;
using google::protobuf::util::TimeUtil;
namespace v1 = emud::v1;

constexpr uint64_t kWakeId = 1;
constexpr uint64_t kInotifyId = 2;
constexpr uint64_t kStoreListenId = 3;
// Watch history: watchers consume continuously; one that falls further
// behind than this is told to restart its watch. Bounds memory.
constexpr size_t kMaxRetainedEvents = 2048;
// Status refreshes allowed back to back before rate limiting sets in.
constexpr int kRefreshBurst = 8;
constexpr absl::Duration kSettle = absl::Milliseconds(10);
constexpr absl::Duration kKillGrace = absl::Seconds(3);
// Safety net: every device's record is re-read this often even without events.
constexpr absl::Duration kFallbackRefresh = absl::Seconds(2);
constexpr absl::Duration kKeeperPoll = absl::Milliseconds(100);

void Log(absl::string_view msg) { std::cerr << "emud: " << msg << std::endl; }

int64_t NowNanos() { return absl::ToUnixNanos(absl::Now()); }

google::protobuf::Timestamp Ts(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

bool GuestAttached(v1::Phase p) {
  return p == v1::PHASE_CONNECTED || p == v1::PHASE_DRIVER_READY || p == v1::PHASE_LINK_UP;
}

// Makes `path` usable for a new listening socket: creates its parent and
// removes a stale socket left by a dead process. Refuses to touch a live
// socket or a non-socket file.
absl::Status PrepareSocketPath(const std::string& path, bool probe) {
  std::error_code ec;
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!std::filesystem::exists(parent, ec)) {
    std::filesystem::create_directories(parent, ec);
    if (ec) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot create socket directory ", parent.string(), ": ", ec.message()));
    }
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "socket path ", path, " exists and is not a socket; remove it or choose another path"));
  }
  if (probe) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), std::min(path.size(), sizeof(addr.sun_path) - 1));
    bool live = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    if (live) {
      return absl::FailedPreconditionError(absl::StrCat(
          "socket path ", path, " is served by another process; choose another path"));
    }
  }
  ::unlink(path.c_str());
  return absl::OkStatus();
}

void RemoveSocketFile(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
}

v1::Phase FromWorkerPhase(WorkerStatus::Phase p) {
  switch (p) {
    case WorkerStatus::LISTENING: return v1::PHASE_LISTENING;
    case WorkerStatus::CONNECTED: return v1::PHASE_CONNECTED;
    case WorkerStatus::DRIVER_READY: return v1::PHASE_DRIVER_READY;
    case WorkerStatus::LINK_UP: return v1::PHASE_LINK_UP;
    default: return v1::PHASE_CREATED;
  }
}

// A device's state takes ~110 KiB of tmpfs idle (LMDB environment, queue
// state, journal, poison page) and grows with DMA windows; refuse a create
// that could not even start.
constexpr uint64_t kDeviceStateBytes = 256 * 1024;

absl::Status CheckStateRoom(const std::string& state_dir) {
  struct statvfs vfs;
  if (::statvfs(state_dir.c_str(), &vfs) != 0) return absl::OkStatus();
  uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  if (free_bytes >= kDeviceStateBytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the filesystem holding the state directory ", state_dir, " is full: ", free_bytes / 1024,
      " KiB free, a device needs about ", kDeviceStateBytes / 1024,
      " KiB; free space on it or make it larger (mount -o remount,size=...), then retry"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceManager>> DeviceManager::Open(ManagerOptions options,
                                                                   Metrics* metrics) {
  std::unique_ptr<DeviceManager> m(new DeviceManager(std::move(options), metrics));
  state_store::EnvOptions eo;
  eo.tables = {"devices", "fds"};
  eo.schema_version = 1;
  eo.on_commit = [metrics](absl::Duration d) {
    if (metrics != nullptr) metrics->ObserveCommit(d);
  };
  auto env = state_store::Env::Open(state_store::ControlEnvDir(m->options_.state_dir), eo);
  if (!env.ok()) return env.status();
  m->control_ = std::move(*env);
  m->EnsureReserve();
  return m;
}

DeviceManager::~DeviceManager() { Shutdown(); }

absl::Status DeviceManager::Start(std::function<absl::Status(const std::string&)> take_over) {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  inotify_.reset(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!epoll_.valid() || !wake_.valid() || !inotify_.valid()) {
    return absl::InternalError(absl::StrCat("event loop setup: ", std::strerror(errno)));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeId;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev);
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.u64 = kInotifyId;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, inotify_.get(), &ev);

  if (!options_.fd_keeper.empty()) {
    // The keeper may be starting beside us (a node boot): wait for it.
    absl::Time give_up = absl::Now() + options_.fd_keeper_wait;
    absl::StatusOr<std::unique_ptr<fdstore::KeeperClient>> k;
    for (;;) {
      k = fdstore::KeeperClient::Connect(options_.fd_keeper);
      if (k.ok() || absl::Now() >= give_up) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    if (!k.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "no emud-keeper answers at --fd-keeper ", options_.fd_keeper, " (", k.status().message(),
          "); start emud-keeper first (deploy/k8s/keeper.yaml, deploy/systemd), or pass "
          "--fd-keeper=none to keep the fds in emud (a container restart then resets guests)"));
    }
    absl::MutexLock lock(&mu_);
    keeper_ = std::move(*k);
    Log(absl::StrCat("fd store: emud-keeper at ", options_.fd_keeper));
  } else {
    auto listen = fdstore::ListenSeqpacket(FdStoreSocket());
    if (!listen.ok()) return listen.status();
    store_listen_ = std::move(*listen);
    ev.events = EPOLLIN;
    ev.data.u64 = kStoreListenId;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, store_listen_.get(), &ev);
  }

  std::vector<DeviceRecord> recs;
  std::map<std::string, std::set<std::string>> fd_keys;
  absl::Status s = control_->View([&](const state_store::ReadTxn& txn) {
    absl::Status st = devices_table_.ForEach(txn, "", [&](absl::string_view, const DeviceRecord& r) {
      recs.push_back(r);
      return absl::OkStatus();
    });
    if (!st.ok()) return st;
    return fds_table_.ForEach(txn, "", [&](absl::string_view k, const emud::internal::FdRecord&) {
      size_t slash = k.find('/');
      if (slash != absl::string_view::npos) {
        fd_keys[std::string(k.substr(0, slash))].insert(std::string(k.substr(slash + 1)));
      }
      return absl::OkStatus();
    });
  });
  if (!s.ok()) return s;

  absl::MutexLock lock(&mu_);
  for (auto& r : recs) {
    Dev& d = AddDevLocked(std::move(r));
    metrics_->InitRestarts(d.rec.name(), d.rec.restart_count());
    d.recorded_fds = fd_keys[d.rec.name()];
    if (!d.recorded_fds.empty()) {
      Log(absl::StrCat("device ", d.rec.name(), ": ", d.recorded_fds.size(),
                       " fds were held by the previous emud; its worker re-deposits them"));
    }
    if (d.rec.failed()) {
      Log(absl::StrCat("device ", d.rec.name(), " is FAILED: ", d.rec.last_error()));
    } else if (take_over) {
      // The running emud stops its worker (the session stays in the keeper);
      // ours resumes it: a live upgrade of the device.
      absl::Status r = take_over(d.rec.name());
      if (!r.ok()) return r;
      d.rec.set_worker_pid(0);
      d.rec.set_worker_start_ticks(0);
      Log(absl::StrCat("device ", d.rec.name(), ": taken over from the previous emud"));
      StartWorkerLocked(d, /*count_restart=*/false);
    } else if (d.rec.worker_pid() > 0) {
      auto p = AdoptProcess(d.rec.worker_pid(), d.rec.worker_start_ticks());
      if (p.ok()) {
        d.proc = std::move(*p);
        d.started = absl::Now();
        if (keeper_ != nullptr && d.rec.fd_keeper_token() != 0) {
          // A keeper that restarted meanwhile learns who may reconnect.
          absl::Status a = keeper_->Adopt(d.rec.name(), d.rec.fd_keeper_token());
          if (!a.ok()) Log(absl::StrCat("device ", d.rec.name(), ": keeper adopt: ", a.ToString()));
        }
        epoll_event pev{};
        pev.events = EPOLLIN;
        pev.data.u64 = d.id;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, d.proc.pidfd.get(), &pev);
        Log(absl::StrCat("device ", d.rec.name(), ": adopted running worker pid ", d.proc.pid));
      } else {
        d.rec.set_last_error(absl::StrCat("worker pid ", d.rec.worker_pid(),
                                          " exited while emud was not running"));
        Log(absl::StrCat("device ", d.rec.name(), ": ", d.rec.last_error(), "; restarting it"));
        StartWorkerLocked(d, /*count_restart=*/true);
      }
    } else {
      StartWorkerLocked(d, /*count_restart=*/false);
    }
    RefreshLocked(d);
    NotifyLocked(d);
    if (keeper_ != nullptr) metrics_->SetFdsHeld(d.rec.name(), HeldKeysLocked(d.rec.name()).size());
  }
  UpdatePhaseGaugesLocked();
  started_ = true;
  loop_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

absl::Status DeviceManager::BeginHandover() {
  absl::MutexLock lock(&mu_);
  if (keeper_ == nullptr) {
    return absl::FailedPreconditionError(
        "this emud keeps the devices' fds itself (no --fd-keeper): they would die with it, so "
        "a successor cannot take the devices over; run emud-keeper and restart emud on it");
  }
  if (handing_over_) return absl::FailedPreconditionError("a handover is already in progress");
  handing_over_ = true;
  shutting_down_ = true;  // API mutations are refused from now on
  for (auto& [name, d] : devs_) d->restart_at.reset();
  Log("handing the devices over to a successor emud");
  return absl::OkStatus();
}

absl::Status DeviceManager::ReleaseForSuccessor(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (!handing_over_) return absl::FailedPreconditionError("no handover in progress");
  Dev* d = FindLocked(name);
  if (d == nullptr) return absl::OkStatus();  // created meanwhile elsewhere: nothing to stop
  if (d->busy) return absl::AbortedError(absl::StrCat("device ", name, " is busy; retry"));
  d->busy = true;
  absl::Status s = StopWorkerLocked(*d, absl::Now() + options_.worker_stop_timeout);
  d->busy = false;
  if (s.ok()) Log(absl::StrCat("device ", name, ": worker stopped for the successor"));
  return s;
}

void DeviceManager::AbortHandover() {
  absl::MutexLock lock(&mu_);
  handing_over_ = false;
  shutting_down_ = false;
  // Devices already released may be served by the successor's workers:
  // leave them; restart only what dies from now on.
  Log("handover aborted; supervising the devices still held");
}

void DeviceManager::BeginShutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
}

void DeviceManager::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    stop_loop_ = true;
  }
  if (loop_.joinable()) {
    Wake();
    loop_.join();
  }
  if (!started_) return;
  started_ = false;
  absl::MutexLock lock(&mu_);
  if (!options_.stop_workers_on_exit) {
    Log("leaving workers running; the next emud adopts them");
    return;
  }
  for (auto& [name, d] : devs_) {
    if (d->proc.pid > 0) (void)SignalProcess(d->proc, SIGTERM);
  }
  absl::Time deadline = absl::Now() + options_.worker_stop_timeout;
  for (auto& [name, d] : devs_) {
    if (d->proc.pid == 0) continue;
    while (!HasExited(d->proc) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
    if (!HasExited(d->proc)) {
      (void)SignalProcess(d->proc, SIGKILL);
      struct pollfd pfd = {d->proc.pidfd.get(), POLLIN, 0};
      ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(kKillGrace)));
    }
    ReapAndDescribe(d->proc);
    d->proc = Process{};
    d->rec.set_worker_pid(0);
    d->rec.set_worker_start_ticks(0);
    (void)PersistLocked(*d);
  }
  Log("workers stopped");
}

void DeviceManager::Wake() {
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

absl::Status DeviceManager::CheckAcceptingLocked() const {
  if (handing_over_) {
    return absl::UnavailableError("emud is handing its devices over to its successor; retry in a moment");
  }
  if (shutting_down_) return absl::UnavailableError("emud is shutting down");
  return absl::OkStatus();
}

DeviceManager::Dev* DeviceManager::FindLocked(const std::string& name) {
  auto it = devs_.find(name);
  return it == devs_.end() ? nullptr : it->second.get();
}

DeviceManager::Dev& DeviceManager::AddDevLocked(DeviceRecord rec) {
  auto d = std::make_unique<Dev>();
  d->id = next_id_++;
  d->policy = RestartPolicy(options_.restart);
  std::string dir = state_store::DeviceEnvDir(options_.state_dir, rec.name());
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  d->reader = std::make_unique<WorkerStatusReader>(dir);
  d->watch = ::inotify_add_watch(inotify_.get(), dir.c_str(),
                                 IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE);
  if (d->watch < 0) {
    Log(absl::StrCat("inotify on ", dir, ": ", std::strerror(errno),
                     " (status updates fall back to polling every ",
                     absl::FormatDuration(kFallbackRefresh), ")"));
  }
  d->rec = std::move(rec);
  d->phase_time = absl::Now();
  Dev& ref = *d;
  by_id_[ref.id] = &ref;
  if (ref.watch >= 0) by_watch_[ref.watch] = &ref;
  devs_[ref.rec.name()] = std::move(d);
  return ref;
}

absl::Status DeviceManager::PersistLocked(const Dev& d) {
  absl::Status s = control_->Update(
      [&](state_store::WriteTxn& txn) { return devices_table_.Put(txn, d.rec.name(), d.rec); });
  if (!s.ok()) Log(absl::StrCat("persisting device ", d.rec.name(), ": ", s.ToString()));
  return s;
}

void DeviceManager::StartWorkerLocked(Dev& d, bool count_restart) {
  d.restart_at.reset();
  const auto& spec = d.rec.spec();
  std::string binary = d.rec.worker_binary().empty() ? options_.worker_binary : d.rec.worker_binary();
  worker_api::WorkerArgs args;
  args.device = d.rec.name();
  args.state_dir = options_.state_dir;
  args.socket_path = spec.socket_path();
  args.mac = spec.mac();
  args.queues = static_cast<int>(spec.queue_pairs());
  args.backend = spec.backend();
  args.doorbell = spec.doorbell() == v1::DOORBELL_MODE_MMAP ? worker_api::DoorbellMode::kMmap
                                                            : worker_api::DoorbellMode::kTrap;
  // Socket access (only when not the default, so an older worker binary
  // that lacks these flags still runs default devices: ToArgv).
  if (spec.has_socket_uid()) args.socket_uid = spec.socket_uid();
  if (spec.has_socket_gid()) args.socket_gid = spec.socket_gid();
  if (spec.socket_mode() != 0) args.socket_mode = spec.socket_mode();
  const std::vector<std::string> argv = args.ToArgv(binary);
  if (count_restart) {
    d.rec.set_restart_count(d.rec.restart_count() + 1);
    metrics_->WorkerRestarted(d.rec.name());
  }
  // The worker's fd-store channel, then every fd held for the device.
  std::vector<fdstore::InheritedFd> inherit;
  std::vector<std::string> env;
  UniqueFd mine;  // emud's end of the channel (in-process store)
  fdstore::KeeperClient::Bound bound;
  if (keeper_ != nullptr) {
    // The keeper makes the channel and hands over what it holds.
    auto b = keeper_->Bind(d.rec.name());
    if (!b.ok()) {
      WorkerFailedLocked(d, absl::StrCat("emud-keeper: ", b.status().message()), false);
      return;
    }
    bound = std::move(*b);
    for (const auto& [key, fd] : bound.fds) inherit.push_back({key, fd.get()});
    env = {absl::StrCat(fdstore::kStoreSocketEnv, "=", options_.fd_keeper),
           absl::StrCat(fdstore::kTokenEnv, "=", bound.token)};
    d.rec.set_fd_keeper_token(bound.token);
  } else {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      WorkerFailedLocked(d, absl::StrCat("fd-store channel: ", std::strerror(errno)), false);
      return;
    }
    mine.reset(sv[0]);
    bound.fds.emplace_back(fdstore::kChannelKey, UniqueFd(sv[1]));
    ::fcntl(mine.get(), F_SETFL, ::fcntl(mine.get(), F_GETFL) | O_NONBLOCK);
    inherit.push_back({fdstore::kChannelKey, bound.fds[0].second.get()});
    for (const auto& [key, fd] : store_.Fds(d.rec.name())) inherit.push_back({key, fd});
    env = {absl::StrCat(fdstore::kStoreSocketEnv, "=", FdStoreSocket())};
  }
  // Where the worker writes why it gave up (read back in HandleExitLocked).
  d.exit_reason.reset();
  if (auto r = CreateExitReasonFile(); r.ok()) {
    d.exit_reason = std::move(*r);
    inherit.push_back({"exit-reason", d.exit_reason.get(), kExitReasonEnv});
  }
  bool has_listener = false;
  for (const auto& in : inherit) has_listener = has_listener || in.key == worker_api::kListenFdKey;
  // A successor inherits the listening socket when the store holds it;
  // otherwise it binds a fresh one and the dead worker's file must go.
  if (!has_listener) RemoveSocketFile(spec.socket_path());
  auto p = fdstore::SpawnWithFds(argv, inherit, env);
  if (!p.ok()) {
    WorkerFailedLocked(d, std::string(p.status().message()), false);
    return;
  }
  if (mine.valid()) {
    if (d.channel_id != 0) CloseChannelLocked(d.channel_id);
    auto ch = std::make_unique<Channel>();
    ch->fd = std::move(mine);
    ch->device = d.rec.name();
    d.channel_id = next_id_++;
    epoll_event cev{};
    cev.events = EPOLLIN;
    cev.data.u64 = d.channel_id;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, ch->fd.get(), &cev);
    channels_[d.channel_id] = std::move(ch);
  }
  d.proc = std::move(*p);
  d.started = absl::Now();
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = d.id;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, d.proc.pidfd.get(), &ev);
  d.rec.set_worker_pid(d.proc.pid);
  d.rec.set_worker_start_ticks(d.proc.start_ticks);
  d.rec.set_worker_start_unix_nanos(absl::ToUnixNanos(d.started));
  if (keeper_ != nullptr) metrics_->SetFdsHeld(d.rec.name(), bound.fds.size() - 1);
  (void)PersistLocked(d);
  NotifyLocked(d);
}

void DeviceManager::WorkerFailedLocked(Dev& d, const std::string& reason, bool healthy) {
  absl::Time now = absl::Now();
  bool guest_connected = false;  // the store holds the client's connection
  for (const auto& key : HeldKeysLocked(d.rec.name())) guest_connected |= key == worker_api::kConnFdKey;
  RestartPolicy::Decision dec = d.policy.OnExit(healthy, guest_connected);
  if (dec.give_up) {
    d.rec.set_failed(true);
    d.rec.set_last_error(absl::StrCat(
        "crash loop: the worker failed ", d.policy.consecutive_failures(),
        " times in a row before it was serving (resumed or created its session and entered "
        "its event loop); last: ",
        reason, "; fix the cause, then run 'emuctl reset ", d.rec.name(), "'"));
    Log(absl::StrCat("device ", d.rec.name(), " FAILED: ", d.rec.last_error()));
  } else {
    d.rec.set_last_error(reason);
    d.restart_at = now + dec.delay;
    Log(absl::StrCat("device ", d.rec.name(), ": ", reason,
                     healthy ? " (after serving)" : " (before serving)", "; restarting ",
                     dec.delay == absl::ZeroDuration()
                         ? std::string("now")
                         : absl::StrCat("in ", absl::FormatDuration(dec.delay))));
  }
  d.started = absl::Time();
  (void)PersistLocked(d);
  NotifyLocked(d);
}

// A file of kReserveBytes in emud's environment directory, allocated while
// there is room and released when a commit that frees space (a delete)
// finds the tmpfs full, so that emptying a full tmpfs through the API works.
namespace {
constexpr off_t kReserveBytes = 256 * 1024;
std::string ReservePath(const std::string& state_dir) {
  return state_store::ControlEnvDir(state_dir) + "/reserve";
}
}  // namespace

void DeviceManager::EnsureReserve() {
  std::string path = ReservePath(options_.state_dir);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  if (::posix_fallocate(fd, 0, kReserveBytes) != 0) {
    // No room now: leave no partial reserve behind (it would only take the
    // room a device needs); the next delete tries again.
    ::close(fd);
    ::unlink(path.c_str());
    return;
  }
  ::close(fd);
}

bool DeviceManager::ReleaseReserve() {
  std::string path = ReservePath(options_.state_dir);
  bool released = ::unlink(path.c_str()) == 0;
  if (released) Log("the state tmpfs is full: released emud's reserve to record a delete");
  return released;
}

void DeviceManager::StoreFullLocked(Dev& d, const std::string& reason) {
  bool guest_connected = false;
  for (const auto& key : HeldKeysLocked(d.rec.name())) guest_connected |= key == "vfio/conn";
  // With a guest connected its request waits (QEMU gives up after 5 s): retry
  // often. Otherwise once a second is plenty.
  absl::Duration delay = guest_connected ? d.policy.options().connected_max_backoff
                                         : absl::Seconds(1);
  d.rec.set_last_error(absl::StrCat(reason, "; retrying every ", absl::FormatDuration(delay),
                                    " until there is room"));
  d.restart_at = absl::Now() + delay;
  d.started = absl::Time();
  if (!d.store_full_logged) {
    Log(absl::StrCat("device ", d.rec.name(), ": ", d.rec.last_error()));
    d.store_full_logged = true;
  }
  (void)PersistLocked(d);
  NotifyLocked(d);
}

void DeviceManager::HandleExitLocked(Dev& d) {
  std::string how = ReapAndDescribe(d.proc);
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, d.proc.pidfd.get(), nullptr);
  pid_t pid = d.proc.pid;
  absl::Time started = d.started;
  d.proc = Process{};
  d.rec.set_worker_pid(0);
  d.rec.set_worker_start_ticks(0);
  RefreshLocked(d);
  if (d.stopping || d.deleting || handing_over_) {
    d.stopping = false;
    (void)PersistLocked(d);
    NotifyLocked(d);
    return;
  }
  std::string reason = absl::StrCat("worker pid ", pid, " ", how);
  // Its own words first (base/exit_reason.h): "TUNSETIFF lo: Invalid
  // argument" says what to fix, "exited with status 1" does not.
  const std::string said = ReadExitReason(d.exit_reason.get());
  d.exit_reason.reset();
  if (!said.empty()) {
    absl::StrAppend(&reason, ": ", said);
  } else if (d.status.has_value() && d.status->pid() == pid && !d.status->last_error().empty()) {
    absl::StrAppend(&reason, ": ", d.status->last_error());
  }
  // Healthy (restart_policy.h): the worker published its status record,
  // which it does once its session is up and it enters its event loop.
  const bool healthy = d.status.has_value() && d.status->pid() == pid &&
                       d.status->phase() != WorkerStatus::PHASE_UNSPECIFIED;
  d.started = started;
  if (ExitReasonIsResourceExhausted(said)) {
    // A full tmpfs (or memory): neither a crash loop (the device must go on
    // by itself once space is freed) nor a reason to restart at once (the
    // successor would fail the same way, in a tight loop). Retry at a pace.
    StoreFullLocked(d, reason);
    return;
  }
  d.store_full_logged = false;
  WorkerFailedLocked(d, reason, healthy);
  // Restart due now (a worker killed after a healthy run): spawn it here
  // rather than one loop round later - the guest is waiting.
  if (d.restart_at.has_value() && *d.restart_at <= absl::Now() && !d.rec.failed()) {
    StartWorkerLocked(d, /*count_restart=*/true);
  }
}

absl::Status DeviceManager::StopWorkerLocked(Dev& d, absl::Time deadline) {
  if (d.proc.pid == 0) return absl::OkStatus();
  d.stopping = true;
  (void)SignalProcess(d.proc, SIGTERM);
  auto gone = [](Dev* dev) { return dev->proc.pid == 0; };
  absl::Condition cond(+gone, &d);
  absl::Time term_deadline = std::min(deadline, absl::Now() + options_.worker_stop_timeout);
  if (mu_.AwaitWithDeadline(cond, term_deadline)) return absl::OkStatus();
  Log(absl::StrCat("device ", d.rec.name(), ": worker pid ", d.proc.pid,
                   " ignored SIGTERM; sending SIGKILL"));
  (void)SignalProcess(d.proc, SIGKILL);
  if (mu_.AwaitWithTimeout(cond, kKillGrace)) return absl::OkStatus();
  d.stopping = false;
  return absl::UnavailableError(absl::StrCat("worker pid ", d.proc.pid, " of device ",
                                             d.rec.name(), " did not exit after SIGKILL; retry"));
}

DeviceManager::Refresh DeviceManager::RefreshLocked(Dev& d) {
  d.dirty = false;
  auto st = d.reader->Read();
  if (!st.ok()) {
    Log(absl::StrCat("device ", d.rec.name(), ": reading worker status: ", st.status().ToString()));
    return Refresh::kNothingNew;
  }
  if (!st->has_value()) return Refresh::kNothingNew;
  WorkerStatus& next = **st;
  if (d.status.has_value()) {
    // Every publish stamps the record: same pid and stamp, same record.
    if (next.updated_unix_nanos() == d.status->updated_unix_nanos() &&
        next.pid() == d.status->pid()) {
      return Refresh::kNothingNew;
    }
    // A worker refreshes its record periodically; only the timestamp moves
    // then, and nothing downstream (metrics, phase, watchers) needs to run.
    // (MessageDifferencer: serialized maps have no stable order.)
    int64_t stamp = next.updated_unix_nanos();
    next.set_updated_unix_nanos(d.status->updated_unix_nanos());
    bool same = google::protobuf::util::MessageDifferencer::Equals(*d.status, next);
    next.set_updated_unix_nanos(stamp);
    if (same) {
      d.status->set_updated_unix_nanos(stamp);
      return Refresh::kTimestampOnly;
    }
  }
  // Phases the worker went through since our last read, other than the one
  // it is in now (e.g. LINK_UP of a guest that already detached).
  if (d.proc.pid != 0 && next.pid() == d.proc.pid) {
    for (int i = 0; i + 1 < next.recent_phases_size(); ++i) {
      const auto& change = next.recent_phases(i);
      if (change.seq() > d.seen_phase_seq) d.missed_phases.push_back(FromWorkerPhase(change.phase()));
    }
    d.seen_phase_seq = std::max(d.seen_phase_seq, next.phase_seq());
  }
  d.status = std::move(next);
  metrics_->UpdateFromWorkerStatus(d.rec.name(), *d.status);
  return Refresh::kChanged;
}

v1::Phase DeviceManager::PhaseLocked(const Dev& d) const {
  if (d.rec.failed()) return v1::PHASE_FAILED;
  if (d.proc.pid == 0) return v1::PHASE_CREATED;
  // A record published by a previous worker says nothing about this one.
  if (!d.status.has_value() || d.status->pid() != d.proc.pid) return v1::PHASE_CREATED;
  return FromWorkerPhase(d.status->phase());
}

v1::Device DeviceManager::BuildLocked(const Dev& d) const {
  v1::Device out;
  out.set_name(d.rec.name());
  out.set_type(d.rec.type());
  *out.mutable_spec() = d.rec.spec();
  v1::DeviceStatus* st = out.mutable_status();
  st->set_phase(d.phase == v1::PHASE_UNSPECIFIED ? PhaseLocked(d) : d.phase);
  st->set_worker_pid(d.proc.pid);
  st->set_restart_count(d.rec.restart_count());
  st->set_consecutive_failures(static_cast<uint32_t>(d.policy.consecutive_failures()));
  if (d.status.has_value() && d.status->virtchnl_major() != 0) {
    st->mutable_virtchnl_version()->set_major(d.status->virtchnl_major());
    st->mutable_virtchnl_version()->set_minor(d.status->virtchnl_minor());
  }
  // The running worker's own report (e.g. a quarantined poison input) is
  // newer than emud's record of how its predecessor ended.
  std::string err = d.rec.last_error();
  if (!d.rec.failed() && d.status.has_value() && d.proc.pid != 0 &&
      d.status->pid() == d.proc.pid && !d.status->last_error().empty()) {
    err = d.status->last_error();
  }
  st->set_last_error(err);
  *st->mutable_create_time() = TimeUtil::NanosecondsToTimestamp(d.rec.create_unix_nanos());
  *st->mutable_phase_time() = Ts(d.phase_time);
  if (d.proc.pid != 0 && d.started != absl::Time()) *st->mutable_worker_start_time() = Ts(d.started);
  return out;
}

void DeviceManager::NotifyLocked(Dev& d) {
  v1::Phase p = PhaseLocked(d);
  bool first = d.last_emitted.empty();
  std::vector<v1::Phase> missed;
  missed.swap(d.missed_phases);
  if (!first && p != v1::PHASE_FAILED) {
    for (v1::Phase m : missed) {
      if (m == d.phase) continue;
      d.phase = m;
      d.phase_time = absl::Now();
      v1::Device dev = BuildLocked(d);
      d.last_emitted = dev.SerializeAsString();
      EmitLocked(v1::DeviceEvent::KIND_MODIFIED, dev);
    }
  }
  if (p != d.phase) {
    d.phase = p;
    d.phase_time = absl::Now();
    UpdatePhaseGaugesLocked();
  }
  v1::Device dev = BuildLocked(d);
  std::string bytes = dev.SerializeAsString();
  if (bytes == d.last_emitted) return;
  d.last_emitted = std::move(bytes);
  EmitLocked(first ? v1::DeviceEvent::KIND_ADDED : v1::DeviceEvent::KIND_MODIFIED, dev);
}

void DeviceManager::EmitLocked(v1::DeviceEvent::Kind kind, const v1::Device& dev) {
  v1::DeviceEvent ev;
  ev.set_kind(kind);
  *ev.mutable_device() = dev;
  *ev.mutable_time() = Ts(absl::Now());
  events_.push_back(std::move(ev));
  while (events_.size() > kMaxRetainedEvents) {
    events_.pop_front();
    ++first_seq_;
  }
}

void DeviceManager::UpdatePhaseGaugesLocked() {
  std::map<v1::Phase, int> counts;
  for (const auto& [name, d] : devs_) ++counts[d->phase];
  metrics_->SetDeviceCounts(counts);
}

// ------------------------------------------------------------------ RPCs

absl::StatusOr<v1::Device> DeviceManager::CreateDevice(const v1::CreateDeviceRequest& req) {
  auto rec = NormalizeCreateRequest(req, options_.socket_dir, options_.socket_group,
                                    options_.socket_roots);
  if (!rec.ok()) return rec.status();
  absl::MutexLock lock(&mu_);
  absl::Status s = CheckAcceptingLocked();
  if (!s.ok()) return s;
  std::vector<const DeviceRecord*> existing;
  for (const auto& [name, d] : devs_) existing.push_back(&d->rec);
  s = CheckConflictsAndAssignMac(*rec, existing);
  if (!s.ok()) return s;
  s = CheckStateRoom(options_.state_dir);
  if (!s.ok()) return s;
  s = PrepareSocketPath(rec->spec().socket_path(), /*probe=*/true);
  if (!s.ok()) return s;
  if (InDeviceSocketDir(*rec, options_.socket_dir)) {
    // The per-device directory: the VMM's owner/group, nobody else.
    const auto& sp = rec->spec();
    s = PrepareOwnedDir(DeviceSocketDir(*rec, options_.socket_dir),
                        sp.has_socket_uid() ? sp.socket_uid() : static_cast<uid_t>(-1),
                        sp.has_socket_gid() ? sp.socket_gid() : static_cast<gid_t>(-1),
                        kSocketDirMode);
    if (!s.ok()) return s;
  }
  // A fresh device never inherits state left by an earlier one of its name.
  s = state_store::RemoveDeviceState(options_.state_dir, rec->name());
  if (!s.ok()) return s;
  rec->set_create_unix_nanos(NowNanos());
  s = control_->Update(
      [&](state_store::WriteTxn& txn) { return devices_table_.Put(txn, rec->name(), *rec); });
  if (!s.ok()) {
    // Nothing of the device may stay behind a failed create.
    (void)state_store::RemoveDeviceState(options_.state_dir, rec->name());
    if (InDeviceSocketDir(*rec, options_.socket_dir)) {
      ::rmdir(DeviceSocketDir(*rec, options_.socket_dir).c_str());
    }
    return s;
  }
  Dev& d = AddDevLocked(std::move(*rec));
  metrics_->InitRestarts(d.rec.name(), 0);
  Log(absl::StrCat("device ", d.rec.name(), " created (", d.rec.spec().backend(), ", ",
                   d.rec.spec().queue_pairs(), " queue pairs, socket ", d.rec.spec().socket_path(),
                   ")"));
  StartWorkerLocked(d, /*count_restart=*/false);
  NotifyLocked(d);
  return BuildLocked(d);
}

absl::StatusOr<v1::Device> DeviceManager::GetDevice(const std::string& name) {
  absl::MutexLock lock(&mu_);
  Dev* d = FindLocked(name);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("no device named '", name, "'"));
  return BuildLocked(*d);
}

std::vector<v1::Device> DeviceManager::ListDevices() {
  absl::MutexLock lock(&mu_);
  std::vector<v1::Device> out;
  for (const auto& [name, d] : devs_) out.push_back(BuildLocked(*d));
  return out;
}

absl::Status DeviceManager::DeleteDevice(const std::string& name, bool force,
                                         absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  absl::Status s = CheckAcceptingLocked();
  if (!s.ok()) return s;
  Dev* d = FindLocked(name);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("no device named '", name, "'"));
  if (d->busy) {
    return absl::AbortedError(
        absl::StrCat("another operation on device '", name, "' is in progress; retry"));
  }
  v1::Phase phase = PhaseLocked(*d);
  if (GuestAttached(phase) && !force) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", name, "' has a connected guest (phase ", v1::Phase_Name(phase),
        "); detach it from the VM first, or delete with force to pull it from under the guest"));
  }
  d->busy = true;
  d->deleting = true;
  d->restart_at.reset();
  s = StopWorkerLocked(*d, deadline);
  if (!s.ok()) {
    d->busy = false;
    d->deleting = false;
    return s;
  }
  // The device stays findable until its record is gone, so a crash here
  // leaves a record that the next emud starts again (and can be deleted).
  auto forget = [&](state_store::WriteTxn& txn) -> absl::Status {
    absl::Status st = devices_table_.Delete(txn, name);
    if (!st.ok()) return st;
    return txn.DeletePrefix(fds_table_.name(), absl::StrCat(name, "/"));
  };
  s = control_->Update(forget);
  if (s.code() == absl::StatusCode::kResourceExhausted && ReleaseReserve()) {
    // A full tmpfs: the reserve (EnsureReserve) makes room for the commit
    // that frees the device's state.
    s = control_->Update(forget);
  }
  if (!s.ok()) {
    // Nothing is lost yet (fds held, state intact): put the device back as it
    // was, worker running, so the delete can simply be retried.
    d->busy = false;
    d->deleting = false;
    StartWorkerLocked(*d, /*count_restart=*/false);
    return absl::Status(s.code(), absl::StrCat("could not record the deletion of device '", name,
                                               "': ", s.message(),
                                               "; the device was restarted unchanged - retry "
                                               "the delete once there is room"));
  }
  store_.ReleaseDevice(name);
  if (keeper_ != nullptr) {
    absl::Status k = keeper_->Drop(name);
    if (!k.ok()) Log(absl::StrCat("device ", name, ": emud-keeper drop: ", k.ToString()));
  }
  std::vector<uint64_t> gone;
  for (const auto& [id, ch] : channels_) {
    if (ch->device == name) gone.push_back(id);
  }
  for (uint64_t id : gone) CloseChannelLocked(id);
  if (d->watch >= 0) {
    ::inotify_rm_watch(inotify_.get(), d->watch);
    by_watch_.erase(d->watch);
  }
  d->reader->Close();
  absl::Status rm = state_store::RemoveDeviceState(options_.state_dir, name);
  if (!rm.ok()) Log(rm.ToString());
  EnsureReserve();  // the device's state just freed room for it
  RemoveSocketFile(d->rec.spec().socket_path());
  if (InDeviceSocketDir(d->rec, options_.socket_dir)) {
    ::rmdir(DeviceSocketDir(d->rec, options_.socket_dir).c_str());  // only if empty
  }
  metrics_->RemoveDevice(name);
  v1::Device last = BuildLocked(*d);
  by_id_.erase(d->id);
  devs_.erase(name);
  EmitLocked(v1::DeviceEvent::KIND_DELETED, last);
  UpdatePhaseGaugesLocked();
  Log(absl::StrCat("device ", name, " deleted"));
  return absl::OkStatus();
}

absl::StatusOr<v1::Device> DeviceManager::ResetDevice(const std::string& name,
                                                      absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  absl::Status s = CheckAcceptingLocked();
  if (!s.ok()) return s;
  Dev* d = FindLocked(name);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("no device named '", name, "'"));
  if (d->busy) {
    return absl::AbortedError(
        absl::StrCat("another operation on device '", name, "' is in progress; retry"));
  }
  d->busy = true;
  d->restart_at.reset();
  s = StopWorkerLocked(*d, deadline);
  d->busy = false;
  if (!s.ok()) return s;
  d->policy.Reset();
  d->rec.set_failed(false);
  d->rec.set_last_error("");
  Log(absl::StrCat("device ", name, " reset"));
  StartWorkerLocked(*d, /*count_restart=*/false);
  return BuildLocked(*d);
}

absl::StatusOr<v1::DeviceStats> DeviceManager::GetDeviceStats(const std::string& name) {
  absl::MutexLock lock(&mu_);
  Dev* d = FindLocked(name);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("no device named '", name, "'"));
  RefreshLocked(*d);
  NotifyLocked(*d);
  v1::DeviceStats out;
  out.set_name(name);
  out.set_worker_restarts(d->rec.restart_count());
  if (d->status.has_value()) {
    const WorkerStatus& st = *d->status;
    auto copy = [](const auto& from, auto* to) {
      for (const auto& q : from) {
        v1::QueueStats* o = to->Add();
        o->set_queue(q.queue());
        o->set_packets(q.packets());
        o->set_bytes(q.bytes());
        o->set_drops(q.drops());
        o->set_errors(q.errors());
      }
    };
    copy(st.rx(), out.mutable_rx());
    copy(st.tx(), out.mutable_tx());
    out.mutable_vfio_user_messages()->insert(st.vfio_user_messages().begin(),
                                             st.vfio_user_messages().end());
    out.mutable_vfio_user_errors()->insert(st.vfio_user_errors().begin(),
                                           st.vfio_user_errors().end());
    out.mutable_virtchnl_ops()->insert(st.virtchnl_ops().begin(), st.virtchnl_ops().end());
    out.mutable_quarantined()->insert(st.quarantined().begin(), st.quarantined().end());
    out.set_reattaches(st.reattaches());
    out.set_last_reattach_seconds(st.last_reattach_seconds());
    if (st.updated_unix_nanos() != 0) {
      *out.mutable_update_time() = TimeUtil::NanosecondsToTimestamp(st.updated_unix_nanos());
    }
  }
  return out;
}

absl::StatusOr<v1::Device> DeviceManager::UpgradeWorker(const std::string& name,
                                                        const std::string& binary,
                                                        absl::Time deadline) {
  if (!binary.empty()) {
    if (!options_.allow_worker_override) {
      return absl::FailedPreconditionError(
          "worker_binary may only be given when emud runs with --allow-worker-override; leave "
          "it empty to restart the device on emud's --worker-binary");
    }
    if (binary[0] != '/' || ::access(binary.c_str(), X_OK) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "worker_binary '", binary, "' must be an absolute path to an executable file"));
    }
  }
  absl::MutexLock lock(&mu_);
  absl::Status s = CheckAcceptingLocked();
  if (!s.ok()) return s;
  Dev* d = FindLocked(name);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("no device named '", name, "'"));
  if (d->rec.failed()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", name, "' is FAILED; run reset to start a fresh worker instead"));
  }
  if (d->busy) {
    return absl::AbortedError(
        absl::StrCat("another operation on device '", name, "' is in progress; retry"));
  }
  // The old worker stops (a persisted emud-worker exits at once on SIGTERM,
  // leaving the guest's session to the fd store), then the new one starts
  // with the device's fds and resumes the session: the guest keeps its
  // connection (tests/chaos upgrades under traffic). The gap is one worker
  // start-up.
  d->busy = true;
  d->restart_at.reset();
  s = StopWorkerLocked(*d, deadline);
  d->busy = false;
  if (!s.ok()) return s;
  if (!binary.empty()) d->rec.set_worker_binary(binary);
  Log(absl::StrCat("device ", name, ": upgrading worker"));
  StartWorkerLocked(*d, /*count_restart=*/false);
  return BuildLocked(*d);
}

std::vector<v1::Device> DeviceManager::Snapshot(uint64_t* cursor) {
  absl::MutexLock lock(&mu_);
  std::vector<v1::Device> out;
  for (const auto& [name, d] : devs_) out.push_back(BuildLocked(*d));
  *cursor = first_seq_ + events_.size();
  return out;
}

DeviceManager::WaitResult DeviceManager::WaitForEvents(uint64_t* cursor,
                                                       std::vector<v1::DeviceEvent>* out,
                                                       absl::Duration timeout) {
  struct Args {
    DeviceManager* m;
    uint64_t cursor;
  } args{this, *cursor};
  auto ready = [](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return a->m->shutting_down_ || a->m->first_seq_ + a->m->events_.size() > a->cursor;
  };
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(+ready, &args), timeout);
  if (*cursor < first_seq_) return WaitResult::kFellBehind;
  uint64_t end = first_seq_ + events_.size();
  if (*cursor >= end) return shutting_down_ ? WaitResult::kShutdown : WaitResult::kTimeout;
  for (uint64_t i = *cursor; i < end; ++i) out->push_back(events_[i - first_seq_]);
  *cursor = end;
  return WaitResult::kEvents;
}

// ------------------------------------------------------------- fd store

void DeviceManager::AcceptChannelsLocked() {
  while (true) {
    int fd = ::accept4(store_listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    auto ch = std::make_unique<Channel>();
    ch->fd.reset(fd);
    uint64_t id = next_id_++;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev);
    channels_[id] = std::move(ch);
  }
}

void DeviceManager::CloseChannelLocked(uint64_t id) {
  auto it = channels_.find(id);
  if (it == channels_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd.get(), nullptr);
  channels_.erase(it);
  for (auto& [name, d] : devs_) {
    if (d->channel_id == id) d->channel_id = 0;
  }
}

void DeviceManager::HandleChannelLocked(uint64_t id) {
  Channel& ch = *channels_[id];
  const bool anonymous = ch.device.empty();
  absl::Status s = store_.ServeOne(ch.fd.get(), &ch.device);
  if (!s.ok()) {  // closed by the worker (exit, crash) or unusable
    CloseChannelLocked(id);
    return;
  }
  if (ch.device.empty()) return;
  Dev* d = FindLocked(ch.device);
  if (anonymous) {
    // A reconnecting worker: only the device's current worker may speak
    // for it.
    struct ucred cred {};
    socklen_t len = sizeof(cred);
    bool ok = ::getsockopt(ch.fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
              d != nullptr && d->proc.pid != 0 && cred.pid == d->proc.pid;
    if (!ok) {
      Log(absl::StrCat("fd store: refusing a channel from pid ", cred.pid, " for device '",
                       ch.device, "' (not its current worker)"));
      CloseChannelLocked(id);
      return;
    }
    Log(absl::StrCat("device ", ch.device, ": worker pid ", cred.pid,
                     " reconnected to the fd store"));
  }
  if (d != nullptr) SyncFdRecordsLocked(*d);
}

void DeviceManager::SyncFdRecordsLocked(Dev& d) {
  std::vector<std::string> keys = store_.Keys(d.rec.name());
  std::set<std::string> now(keys.begin(), keys.end());
  metrics_->SetFdsHeld(d.rec.name(), now.size());
  if (now == d.recorded_fds) return;
  emud::internal::FdRecord rec;
  rec.set_worker_pid(d.proc.pid);
  rec.set_deposit_unix_nanos(NowNanos());
  absl::Status s = control_->Update([&](state_store::WriteTxn& txn) -> absl::Status {
    for (const auto& k : now) {
      if (d.recorded_fds.count(k) > 0) continue;
      absl::Status st = fds_table_.Put(txn, absl::StrCat(d.rec.name(), "/", k), rec);
      if (!st.ok()) return st;
    }
    for (const auto& k : d.recorded_fds) {
      if (now.count(k) > 0) continue;
      absl::Status st = fds_table_.Delete(txn, absl::StrCat(d.rec.name(), "/", k));
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  });
  if (s.ok()) {
    d.recorded_fds = std::move(now);
  } else {
    Log(absl::StrCat("device ", d.rec.name(), ": recording fd-store keys: ", s.ToString()));
  }
}

size_t DeviceManager::FdsHeldForTest(const std::string& name) {
  absl::MutexLock lock(&mu_);
  return HeldKeysLocked(name).size();
}

std::vector<std::string> DeviceManager::HeldKeysLocked(const std::string& device) {
  if (keeper_ == nullptr) return store_.Keys(device);
  auto keys = keeper_->List(device);
  if (!keys.ok()) {
    Log(absl::StrCat("emud-keeper: listing ", device, ": ", keys.status().ToString()));
    return {};
  }
  if (keeper_->TakeReconnected()) ReadoptTokensLocked();
  return *keys;
}

void DeviceManager::ReadoptTokensLocked() {
  Log("emud-keeper restarted or was upgraded: telling it the running workers' tokens");
  for (auto& [name, d] : devs_) {
    if (d->proc.pid == 0 || d->rec.fd_keeper_token() == 0) continue;
    absl::Status a = keeper_->Adopt(name, d->rec.fd_keeper_token());
    if (!a.ok()) Log(absl::StrCat("device ", name, ": keeper adopt: ", a.ToString()));
  }
}

pid_t DeviceManager::WorkerPidForTest(const std::string& name) {
  absl::MutexLock lock(&mu_);
  Dev* d = FindLocked(name);
  return d == nullptr ? 0 : d->proc.pid;
}

// ------------------------------------------------------------- event loop

void DeviceManager::Loop() {
  bool inotify_armed = true;
  // Times of the last kRefreshBurst refreshes: a device's first few changes
  // (CREATED -> LISTENING) are seen at once, a busy worker's stream of
  // commits at most kRefreshBurst times per status_refresh_interval.
  std::deque<absl::Time> recent_refreshes;
  absl::Time next_refresh_allowed = absl::InfinitePast();
  // inotify reports a commit's writes before LMDB makes it visible to
  // readers, so a device refreshed on an event is read once more a little
  // later (kSettle) to catch a commit that was in flight.
  std::set<std::string> settle;
  absl::Time settle_at = absl::InfiniteFuture();
  absl::Time next_fallback = absl::Now() + kFallbackRefresh;
  // With a keeper, deposits do not pass through emud: the fds-held gauge is
  // polled (one short control call per device).
  absl::Time next_keeper_poll = absl::Now() + kKeeperPoll;
  while (true) {
    absl::Time wake_at = next_fallback;
    {
      absl::MutexLock lock(&mu_);
      if (keeper_ != nullptr) wake_at = std::min(wake_at, next_keeper_poll);
    }
    {
      absl::MutexLock lock(&mu_);
      if (stop_loop_) return;
      for (const auto& [name, d] : devs_) {
        if (d->restart_at.has_value()) wake_at = std::min(wake_at, *d->restart_at);
      }
    }
    if (!inotify_armed) wake_at = std::min(wake_at, next_refresh_allowed);
    wake_at = std::min(wake_at, settle_at);
    int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(wake_at - absl::Now()) + 1);
    epoll_event evs[64];
    int n = ::epoll_wait(epoll_.get(), evs, 64, static_cast<int>(std::min<int64_t>(ms, 60000)));
    if (n < 0 && errno != EINTR) {
      Log(absl::StrCat("epoll_wait: ", std::strerror(errno)));
      absl::SleepFor(absl::Milliseconds(10));
      continue;
    }
    absl::MutexLock lock(&mu_);
    if (stop_loop_) return;
    for (int i = 0; i < n; ++i) {
      uint64_t id = evs[i].data.u64;
      if (id == kWakeId) {
        uint64_t v;
        (void)!::read(wake_.get(), &v, sizeof(v));
      } else if (id == kInotifyId) {
        inotify_armed = false;
        alignas(inotify_event) char buf[16384];
        ssize_t len;
        while ((len = ::read(inotify_.get(), buf, sizeof(buf))) > 0) {
          for (char* p = buf; p < buf + len;) {
            auto* e = reinterpret_cast<inotify_event*>(p);
            if (e->mask & IN_Q_OVERFLOW) {
              for (auto& [name, d] : devs_) d->dirty = true;
            } else if (e->len > 0 && std::strcmp(e->name, "data.mdb") == 0) {
              // Only commits matter (lock.mdb changes through mmap or at open).
              auto it = by_watch_.find(e->wd);
              if (it != by_watch_.end()) it->second->dirty = true;
            }
            p += sizeof(inotify_event) + e->len;
          }
        }
      } else if (id == kStoreListenId) {
        AcceptChannelsLocked();
      } else if (channels_.count(id) > 0) {
        HandleChannelLocked(id);
      } else {
        auto it = by_id_.find(id);
        if (it != by_id_.end() && it->second->proc.pid != 0 && HasExited(it->second->proc)) {
          HandleExitLocked(*it->second);
        }
      }
    }
    absl::Time now = absl::Now();
    if (!inotify_armed && now >= next_refresh_allowed) {
      for (auto& [name, d] : devs_) {
        if (!d->dirty) continue;
        if (RefreshLocked(*d) == Refresh::kChanged) {
          NotifyLocked(*d);
          // With a keeper, deposits do not pass through emud; a status
          // change (phase, counters) is when the count may have moved.
          if (keeper_ != nullptr) metrics_->SetFdsHeld(name, HeldKeysLocked(name).size());
        }
        // The commit that raised the event may not be visible yet (LMDB
        // publishes its txn id after the meta page write, which raises no
        // further event): read once more shortly.
        settle.insert(name);
      }
      if (!settle.empty() && settle_at == absl::InfiniteFuture()) settle_at = now + kSettle;
      recent_refreshes.push_back(now);
      while (recent_refreshes.size() > static_cast<size_t>(kRefreshBurst)) {
        recent_refreshes.pop_front();
      }
      next_refresh_allowed =
          recent_refreshes.size() < static_cast<size_t>(kRefreshBurst)
              ? now
              : recent_refreshes.front() + options_.status_refresh_interval;
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLONESHOT;
      ev.data.u64 = kInotifyId;
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, inotify_.get(), &ev);
      inotify_armed = true;
    }
    if (now >= settle_at) {
      for (const auto& name : settle) {
        Dev* d = FindLocked(name);
        Refresh r = d != nullptr ? RefreshLocked(*d) : Refresh::kNothingNew;
        if (r == Refresh::kChanged) NotifyLocked(*d);
      }
      settle.clear();
      settle_at = absl::InfiniteFuture();
    }
    if (keeper_ != nullptr && now >= next_keeper_poll) {
      for (auto& [name, d] : devs_) metrics_->SetFdsHeld(name, HeldKeysLocked(name).size());
      next_keeper_poll = now + kKeeperPoll;
    }
    if (now >= next_fallback) {
      for (auto& [name, d] : devs_) {
        if (RefreshLocked(*d) == Refresh::kChanged) NotifyLocked(*d);
        // With a keeper, deposits do not pass through emud: poll the count.
        if (keeper_ != nullptr) metrics_->SetFdsHeld(name, HeldKeysLocked(name).size());
      }
      next_fallback = now + kFallbackRefresh;
    }
    std::vector<Dev*> due;
    for (auto& [name, d] : devs_) {
      if (d->restart_at.has_value() && *d->restart_at <= now && d->proc.pid == 0) due.push_back(d.get());
    }
    for (Dev* d : due) StartWorkerLocked(*d, /*count_restart=*/true);
  }
}

}  // namespace emud::server
