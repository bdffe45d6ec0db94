#include "server/device_manager.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/exit_reason.h"
#include "base/log.h"
#include "base/socket_access.h"
#include "google/protobuf/util/time_util.h"
#include "state_store/state_dir.h"
#include "worker_api/fd_keys.h"
#include "worker_api/worker_args.h"

namespace emud::server {
namespace {

using emud::internal::DeviceRecord;
using emud::internal::WorkerStatus;
using google::protobuf::util::TimeUtil;
namespace v1 = emud::v1;

// The event loop's sources.
constexpr uint64_t kWakeId = 1;
constexpr uint64_t kSupervisorId = 2;
constexpr uint64_t kWatcherId = 3;
constexpr uint64_t kFdHostId = 4;
// Watch history: watchers consume continuously; one that falls further
// behind than this is told to restart its watch. Bounds memory.
constexpr size_t kMaxRetainedEvents = 2048;

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
  absl::Status s = OpenParts();
  if (!s.ok()) return s;
  std::vector<DeviceRecord> recs;
  std::map<std::string, std::set<std::string>> fd_keys;
  s = control_->View([&](const state_store::ReadTxn& txn) {
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
    const std::string& name = d.rec.name();
    metrics_->InitRestarts(name, d.rec.restart_count());
    d.recorded_fds = fd_keys[name];
    if (!d.recorded_fds.empty()) {
      log::DeviceInfo(name, absl::StrCat(d.recorded_fds.size(),
                       " fds were held by the previous emud; its worker re-deposits them"));
    }
    s = ResumeWorkerLocked(d, take_over);
    if (!s.ok()) return s;
    RefreshLocked(d);
    NotifyLocked(d);
    fd_host_->RefreshHeldGauge(name);
  }
  UpdatePhaseGaugesLocked();
  started_ = true;
  loop_ = std::thread([this] { Loop(); });
  if (options_.standby_workers) standby_spawner_ = std::thread([this] { StandbySpawner(); });
  return absl::OkStatus();
}

absl::Status DeviceManager::OpenParts() {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!epoll_.valid() || !wake_.valid()) {
    return absl::InternalError(absl::StrCat("event loop setup: ", std::strerror(errno)));
  }
  SupervisorOptions sopt;
  sopt.restart = options_.restart;
  sopt.stop_timeout = options_.worker_stop_timeout;
  sopt.startup_rt_priority = options_.startup_rt_priority;
  sopt.standby_workers = options_.standby_workers;
  auto supervisor = Supervisor::Create(sopt);
  if (!supervisor.ok()) return supervisor.status();
  StatusWatcherOptions wo;
  wo.state_dir = options_.state_dir;
  wo.refresh_interval = options_.status_refresh_interval;
  auto watcher = StatusWatcher::Create(
      wo, [metrics = metrics_](const std::string& device, const WorkerStatus& st) {
        metrics->UpdateFromWorkerStatus(device, st);
      });
  if (!watcher.ok()) return watcher.status();
  // The host asks with mu_ held (it is only called under mu_).
  WorkerDirectory workers;
  workers.current_pid = [this](const std::string& device) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return supervisor_->pid(device);
  };
  workers.running_tokens = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::vector<std::pair<std::string, int64_t>> out;
    for (const auto& [name, d] : devs_) {
      if (supervisor_->pid(name) == 0 || d->rec.fd_keeper_token() == 0) continue;
      out.emplace_back(name, d->rec.fd_keeper_token());
    }
    return out;
  };
  FdStoreHostOptions ho;
  ho.state_dir = options_.state_dir;
  ho.fd_keeper = options_.fd_keeper;
  ho.fd_keeper_wait = options_.fd_keeper_wait;
  auto host = OpenFdStoreHost(ho, metrics_, std::move(workers));
  if (!host.ok()) return host.status();

  auto watch = [&](int fd, uint64_t id) {
    if (fd < 0) return;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev);
  };
  watch(wake_.get(), kWakeId);
  watch((*supervisor)->event_fd(), kSupervisorId);
  watch((*watcher)->event_fd(), kWatcherId);
  watch((*host)->event_fd(), kFdHostId);
  absl::MutexLock lock(&mu_);
  supervisor_ = std::move(*supervisor);
  watcher_ = std::move(*watcher);
  fd_host_ = std::move(*host);
  const absl::Duration gauge_interval = fd_host_->held_gauge_interval();
  if (gauge_interval != absl::InfiniteDuration()) next_gauge_poll_ = absl::Now() + gauge_interval;
  return absl::OkStatus();
}

absl::Status DeviceManager::ResumeWorkerLocked(
    Dev& d, const std::function<absl::Status(const std::string&)>& take_over) {
  const std::string& name = d.rec.name();
  if (d.rec.failed()) {
    log::DeviceError(name, absl::StrCat("is FAILED: ", d.rec.last_error()));
  } else if (take_over) {
    // The running emud stops its worker (the session stays in the keeper);
    // ours resumes it: a live upgrade of the device.
    absl::Status r = take_over(name);
    if (!r.ok()) return r;
    d.rec.set_worker_pid(0);
    d.rec.set_worker_start_ticks(0);
    log::DeviceInfo(name, "taken over from the previous emud");
    StartWorkerLocked(d, /*count_restart=*/false);
  } else if (d.rec.worker_pid() > 0) {
    absl::Status a = supervisor_->Adopt(name, d.rec.worker_pid(), d.rec.worker_start_ticks());
    if (a.ok()) {
      fd_host_->WorkerAdopted(name, d.rec.fd_keeper_token());
      log::DeviceInfo(name, absl::StrCat("adopted running worker pid ", supervisor_->pid(name)));
      metrics_->WorkerAdopted(name);
    } else {
      d.rec.set_last_error(absl::StrCat("worker pid ", d.rec.worker_pid(),
                                        " exited while emud was not running"));
      log::DeviceWarning(name, absl::StrCat(d.rec.last_error(), "; restarting it"));
      StartWorkerLocked(d, /*count_restart=*/true);
    }
  } else {
    StartWorkerLocked(d, /*count_restart=*/false);
  }
  return absl::OkStatus();
}

absl::Status DeviceManager::BeginHandover() {
  absl::MutexLock lock(&mu_);
  if (fd_host_ == nullptr || !fd_host_->outlives_emud()) {
    return absl::FailedPreconditionError(
        "this emud keeps the devices' fds itself (no --fd-keeper): they would die with it, so "
        "a successor cannot take the devices over; run emud-keeper and restart emud on it");
  }
  if (handing_over_) return absl::FailedPreconditionError("a handover is already in progress");
  handing_over_ = true;
  shutting_down_ = true;  // API mutations are refused from now on
  supervisor_->CancelAllRestarts();
  // The successor starts its own standbys, from its own binaries.
  supervisor_->DiscardAllStandbys();
  log::Info("handing the devices over to a successor emud");
  return absl::OkStatus();
}

absl::Status DeviceManager::ReleaseForSuccessor(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (!handing_over_) return absl::FailedPreconditionError("no handover in progress");
  Dev* d = FindLocked(name);
  if (d == nullptr) return absl::OkStatus();  // created meanwhile elsewhere: nothing to stop
  if (d->busy) return absl::AbortedError(absl::StrCat("device ", name, " is busy; retry"));
  BusyGuard busy(*d);
  absl::Status s = StopWorkerLocked(*d, absl::Now() + options_.worker_stop_timeout);
  if (s.ok()) log::DeviceInfo(name, "worker stopped for the successor");
  return s;
}

void DeviceManager::AbortHandover() {
  absl::MutexLock lock(&mu_);
  handing_over_ = false;
  shutting_down_ = false;
  // Standbys again for the devices still held (started on the loop's next
  // round; none for a device without a worker).
  for (const auto& [name, d] : devs_) supervisor_->DiscardStandby(name, absl::Now());
  // Devices already released may be served by the successor's workers:
  // leave them; restart only what dies from now on.
  log::Warning("handover aborted; supervising the devices still held");
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
  if (standby_spawner_.joinable()) {
    {
      absl::MutexLock lock(&standby_mu_);
      standby_stop_ = true;
    }
    standby_spawner_.join();
  }
  if (!started_) return;
  started_ = false;
  absl::MutexLock lock(&mu_);
  // Standbys never outlive their emud (they would exit anyway once emud's
  // end of their go channel closes).
  supervisor_->DiscardAllStandbys();
  if (!options_.stop_workers_on_exit) {
    log::Info("leaving workers running; the next emud adopts them");
    return;
  }
  for (const std::string& name : supervisor_->StopAll()) {
    Dev* d = FindLocked(name);
    if (d == nullptr) continue;
    d->rec.set_worker_pid(0);
    d->rec.set_worker_start_ticks(0);
    (void)PersistLocked(*d);
  }
  log::Info("workers stopped");
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

absl::StatusOr<DeviceManager::Dev*> DeviceManager::FindForChangeLocked(const std::string& name) {
  absl::Status s = CheckAcceptingLocked();
  if (!s.ok()) return s;
  Dev* d = FindLocked(name);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("no device named '", name, "'"));
  if (d->busy) {
    return absl::AbortedError(
        absl::StrCat("another operation on device '", name, "' is in progress; retry"));
  }
  return d;
}

DeviceManager::Dev& DeviceManager::AddDevLocked(DeviceRecord rec) {
  auto d = std::make_unique<Dev>();
  supervisor_->Add(rec.name());
  watcher_->Watch(rec.name());
  d->rec = std::move(rec);
  d->phase_time = absl::Now();
  Dev& ref = *d;
  devs_[ref.rec.name()] = std::move(d);
  return ref;
}

absl::Status DeviceManager::PersistLocked(const Dev& d) {
  absl::Status s = control_->Update(
      [&](state_store::WriteTxn& txn) { return devices_table_.Put(txn, d.rec.name(), d.rec); });
  if (!s.ok()) log::DeviceError(d.rec.name(), absl::StrCat("persisting the device: ", s.ToString()));
  return s;
}

std::vector<std::string> DeviceManager::WorkerArgvLocked(const Dev& d) {
  const std::string& name = d.rec.name();
  const auto& spec = d.rec.spec();
  std::string binary = d.rec.worker_binary().empty() ? options_.worker_binary : d.rec.worker_binary();
  worker_api::WorkerArgs args;
  args.device = name;
  args.state_dir = options_.state_dir;
  args.socket_path = spec.socket_path();
  args.mac = spec.mac();
  args.queues = static_cast<int>(spec.queue_pairs());
  args.backend = spec.backend();
  args.doorbell = spec.doorbell() == v1::DOORBELL_MODE_MMAP ? worker_api::DoorbellMode::kMmap
                                                            : worker_api::DoorbellMode::kTrap;
  // (Passed only when not 1: ToArgv.)
  args.datapath_threads = std::min<int>(options_.datapath_threads, args.queues);
  // Socket access (only when not the default, so an older worker binary
  // that lacks these flags still runs default devices: ToArgv).
  if (spec.has_socket_uid()) args.socket_uid = spec.socket_uid();
  if (spec.has_socket_gid()) args.socket_gid = spec.socket_gid();
  if (spec.socket_mode() != 0) args.socket_mode = spec.socket_mode();
  return args.ToArgv(binary);
}

void DeviceManager::StartWorkerLocked(Dev& d, bool count_restart) {
  const std::string& name = d.rec.name();
  supervisor_->CancelRestart(name);
  const auto& spec = d.rec.spec();
  const std::vector<std::string> argv = WorkerArgvLocked(d);
  if (count_restart) {
    d.rec.set_restart_count(d.rec.restart_count() + 1);
    metrics_->WorkerRestarted(name);
  }
  // The worker's fd-store channel, then every fd held for the device.
  auto launch = fd_host_->PrepareWorker(name);
  if (!launch.ok()) {
    WorkerFailedLocked(d, std::string(launch.status().message()), false);
    return;
  }
  if (launch->token != 0) d.rec.set_fd_keeper_token(launch->token);
  bool has_listener = false;
  for (const auto& in : launch->inherit) has_listener |= in.key == worker_api::kListenFdKey;
  // A successor inherits the listening socket when the store holds it;
  // otherwise it binds a fresh one and the dead worker's file must go.
  if (!has_listener) RemoveSocketFile(spec.socket_path());
  std::vector<std::string> env = launch->env;
  if (count_restart && exit_trace_.has_value()) {
    // The predecessor's exit, as this loop round saw it (restart_trace.h).
    worker_api::RestartTrace trace = *exit_trace_;
    trace.Mark("spawn");
    env.push_back(absl::StrCat(worker_api::kRestartTraceEnv, "=", trace.Encode()));
  }
  // A restart (the predecessor died) promotes the device's standby if it
  // has a ready one of this argv and binary; any other start spawns.
  absl::Status s = supervisor_->Spawn(name, argv, launch->inherit, env, /*use_standby=*/count_restart);
  if (!s.ok()) {
    WorkerFailedLocked(d, std::string(s.message()), false);
    return;
  }
  // (The loop takes a real-time start back if the worker does not: its
  // timer is due then.)
  if (supervisor_->startup_rt_priority() > 0) Wake();
  fd_host_->WorkerStarted(name, *launch);
  d.rec.set_worker_pid(supervisor_->pid(name));
  d.rec.set_worker_start_ticks(supervisor_->start_ticks(name));
  d.rec.set_worker_start_unix_nanos(absl::ToUnixNanos(supervisor_->started(name)));
  (void)PersistLocked(d);
  NotifyLocked(d);
}

bool DeviceManager::GuestConnectedLocked(const Dev& d) {
  bool connected = false;
  for (const auto& key : fd_host_->HeldKeys(d.rec.name())) connected |= key == worker_api::kConnFdKey;
  return connected;
}

void DeviceManager::WorkerFailedLocked(Dev& d, const std::string& reason, bool healthy) {
  const std::string& name = d.rec.name();
  RestartPolicy::Decision dec = supervisor_->WorkerFailed(name, healthy, GuestConnectedLocked(d));
  if (dec.give_up) {
    d.rec.set_failed(true);
    d.rec.set_last_error(absl::StrCat(
        "crash loop: the worker failed ", supervisor_->consecutive_failures(name),
        " times in a row before it was serving (resumed or created its session and entered "
        "its event loop); last: ",
        reason, "; fix the cause, then run 'emuctl reset ", name, "'"));
    log::DeviceError(name, absl::StrCat("FAILED: ", d.rec.last_error()));
    supervisor_->DiscardStandby(name);
  } else {
    d.rec.set_last_error(reason);
    log::DeviceWarning(name, absl::StrCat(reason,
                     healthy ? " (after serving)" : " (before serving)", "; restarting ",
                     dec.delay == absl::ZeroDuration()
                         ? std::string("now")
                         : absl::StrCat("in ", absl::FormatDuration(dec.delay))));
  }
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
  if (released) log::Warning("the state tmpfs is full: released emud's reserve to record a delete");
  return released;
}

void DeviceManager::StoreFullLocked(Dev& d, const std::string& reason) {
  Supervisor::Retry retry = supervisor_->StoreFull(d.rec.name(), GuestConnectedLocked(d));
  d.rec.set_last_error(absl::StrCat(reason, "; retrying every ", absl::FormatDuration(retry.delay),
                                    " until there is room"));
  if (retry.first) log::DeviceWarning(d.rec.name(), d.rec.last_error());
  (void)PersistLocked(d);
  NotifyLocked(d);
}

void DeviceManager::HandleExitLocked(Dev& d, const Supervisor::Exit& exit) {
  d.rec.set_worker_pid(0);
  d.rec.set_worker_start_ticks(0);
  RefreshLocked(d);
  if (exit.requested || d.deleting || handing_over_) {
    (void)PersistLocked(d);
    NotifyLocked(d);
    return;
  }
  std::string reason = absl::StrCat("worker pid ", exit.pid, " ", exit.how);
  // Its own words first (base/exit_reason.h), else its status record's.
  const WorkerStatus* st = watcher_->status(d.rec.name());
  if (!exit.said.empty()) {
    absl::StrAppend(&reason, ": ", exit.said);
  } else if (st != nullptr && st->pid() == exit.pid && !st->last_error().empty()) {
    absl::StrAppend(&reason, ": ", st->last_error());
  }
  // Healthy (restart_policy.h): the worker published its status record,
  // which it does once its session is up and it enters its event loop.
  const bool healthy =
      st != nullptr && st->pid() == exit.pid && st->phase() != WorkerStatus::PHASE_UNSPECIFIED;
  if (ExitReasonIsResourceExhausted(exit.said)) {
    // A full tmpfs (or memory): neither a crash loop (the device must go on
    // by itself once space is freed) nor a reason to restart at once (the
    // successor would fail the same way, in a tight loop). Retry at a pace.
    StoreFullLocked(d, reason);
    return;
  }
  supervisor_->ClearStoreFull(d.rec.name());
  WorkerFailedLocked(d, reason, healthy);
  // Restart due now (a worker killed after a healthy run): spawn it here
  // rather than one loop round later - the guest is waiting.
  std::optional<absl::Time> at = supervisor_->restart_at(d.rec.name());
  if (at.has_value() && *at <= absl::Now() && !d.rec.failed()) {
    StartWorkerLocked(d, /*count_restart=*/true);
  }
}

absl::Status DeviceManager::StopWorkerLocked(Dev& d, absl::Time deadline) {
  return supervisor_->Stop(d.rec.name(), deadline, mu_);
}

StatusWatcher::Refresh DeviceManager::RefreshLocked(Dev& d) {
  return watcher_->Read(d.rec.name(), supervisor_->pid(d.rec.name()));
}

const WorkerStatus* DeviceManager::CurrentStatusLocked(const Dev& d) const {
  pid_t pid = supervisor_->pid(d.rec.name());
  const WorkerStatus* st = watcher_->status(d.rec.name());
  if (pid == 0 || st == nullptr || st->pid() != pid) return nullptr;
  return st;
}

v1::Phase DeviceManager::PhaseLocked(const Dev& d) const {
  if (d.rec.failed()) return v1::PHASE_FAILED;
  if (supervisor_->pid(d.rec.name()) == 0) return v1::PHASE_CREATED;
  // A record published by a previous worker says nothing about this one.
  const WorkerStatus* st = CurrentStatusLocked(d);
  if (st == nullptr) return v1::PHASE_CREATED;
  return FromWorkerPhase(st->phase());
}

v1::Device DeviceManager::BuildLocked(const Dev& d) const {
  const std::string& name = d.rec.name();
  const pid_t pid = supervisor_->pid(name);
  const WorkerStatus* status = watcher_->status(name);
  v1::Device out;
  out.set_name(name);
  out.set_type(d.rec.type());
  *out.mutable_spec() = d.rec.spec();
  v1::DeviceStatus* st = out.mutable_status();
  st->set_phase(d.phase == v1::PHASE_UNSPECIFIED ? PhaseLocked(d) : d.phase);
  st->set_worker_pid(pid);
  st->set_restart_count(d.rec.restart_count());
  st->set_consecutive_failures(static_cast<uint32_t>(supervisor_->consecutive_failures(name)));
  if (status != nullptr && status->virtchnl_major() != 0) {
    st->mutable_virtchnl_version()->set_major(status->virtchnl_major());
    st->mutable_virtchnl_version()->set_minor(status->virtchnl_minor());
  }
  // The running worker's own report (e.g. a quarantined poison input) is
  // newer than emud's record of how its predecessor ended.
  std::string err = d.rec.last_error();
  const WorkerStatus* current = CurrentStatusLocked(d);
  if (!d.rec.failed() && current != nullptr && !current->last_error().empty()) {
    err = current->last_error();
  }
  st->set_last_error(err);
  *st->mutable_create_time() = TimeUtil::NanosecondsToTimestamp(d.rec.create_unix_nanos());
  *st->mutable_phase_time() = Ts(d.phase_time);
  const absl::Time started = supervisor_->started(name);
  if (pid != 0 && started != absl::Time()) *st->mutable_worker_start_time() = Ts(started);
  return out;
}

void DeviceManager::NotifyLocked(Dev& d) {
  v1::Phase p = PhaseLocked(d);
  bool first = d.last_emitted.empty();
  std::vector<WorkerStatus::Phase> missed = watcher_->TakeMissedPhases(d.rec.name());
  if (!first && p != v1::PHASE_FAILED) {
    for (WorkerStatus::Phase wp : missed) {
      v1::Phase m = FromWorkerPhase(wp);
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
  }
  v1::Device dev = BuildLocked(d);
  std::string bytes = dev.SerializeAsString();
  if (bytes == d.last_emitted) return;
  d.last_emitted = std::move(bytes);
  UpdatePhaseGaugesLocked();  // the phase or the worker (pid) changed
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
  std::vector<DeviceMetricState> states;
  for (const auto& [name, d] : devs_) {
    ++counts[d->phase];
    DeviceMetricState st;
    st.name = name;
    st.phase = d->phase;
    st.type = d->rec.type() == v1::DEVICE_TYPE_AVF ? "avf" : "unspecified";
    st.backend = d->rec.spec().backend();
    st.doorbell = d->rec.spec().doorbell() == v1::DOORBELL_MODE_MMAP ? "mmap" : "trap";
    st.queue_pairs = d->rec.spec().queue_pairs();
    st.worker_pid = supervisor_->pid(name);
    states.push_back(std::move(st));
  }
  metrics_->SetDeviceCounts(counts);
  metrics_->SetDeviceStates(states);
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
  log::DeviceInfo(d.rec.name(), absl::StrCat("created (", d.rec.spec().backend(), ", ",
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
  absl::StatusOr<Dev*> found = FindForChangeLocked(name);
  if (!found.ok()) return found.status();
  Dev* d = *found;
  v1::Phase phase = PhaseLocked(*d);
  if (GuestAttached(phase) && !force) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", name, "' has a connected guest (phase ", v1::Phase_Name(phase),
        "); detach it from the VM first, or delete with force to pull it from under the guest"));
  }
  BusyGuard busy(*d);
  d->deleting = true;
  supervisor_->CancelRestart(name);
  supervisor_->DiscardStandby(name);
  absl::Status s = StopWorkerLocked(*d, deadline);
  if (!s.ok()) {
    d->deleting = false;
    supervisor_->DiscardStandby(name, absl::Now());  // a standby again
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
    d->deleting = false;
    StartWorkerLocked(*d, /*count_restart=*/false);
    return absl::Status(s.code(), absl::StrCat("could not record the deletion of device '", name,
                                               "': ", s.message(),
                                               "; the device was restarted unchanged - retry "
                                               "the delete once there is room"));
  }
  fd_host_->DropDevice(name);
  watcher_->Unwatch(name);
  absl::Status rm = state_store::RemoveDeviceState(options_.state_dir, name);
  if (!rm.ok()) log::DeviceError(name, rm.ToString());
  EnsureReserve();  // the device's state just freed room for it
  RemoveSocketFile(d->rec.spec().socket_path());
  if (InDeviceSocketDir(d->rec, options_.socket_dir)) {
    ::rmdir(DeviceSocketDir(d->rec, options_.socket_dir).c_str());  // only if empty
  }
  metrics_->RemoveDevice(name);
  v1::Device last = BuildLocked(*d);
  busy.Release();
  supervisor_->Remove(name);
  devs_.erase(name);
  EmitLocked(v1::DeviceEvent::KIND_DELETED, last);
  UpdatePhaseGaugesLocked();
  log::DeviceInfo(name, "deleted");
  return absl::OkStatus();
}

absl::StatusOr<v1::Device> DeviceManager::ResetDevice(const std::string& name,
                                                      absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Dev*> found = FindForChangeLocked(name);
  if (!found.ok()) return found.status();
  Dev* d = *found;
  {
    BusyGuard busy(*d);
    supervisor_->CancelRestart(name);
    // A fresh worker, and a fresh standby after it.
    supervisor_->DiscardStandby(name);
    absl::Status s = StopWorkerLocked(*d, deadline);
    if (!s.ok()) {
      supervisor_->DiscardStandby(name, absl::Now());
      return s;
    }
  }
  supervisor_->ResetPolicy(name);
  d->rec.set_failed(false);
  d->rec.set_last_error("");
  log::DeviceInfo(name, "reset");
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
  if (const WorkerStatus* status = watcher_->status(name); status != nullptr) {
    const WorkerStatus& st = *status;
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
  absl::StatusOr<Dev*> found = FindForChangeLocked(name);
  if (!found.ok()) return found.status();
  Dev* d = *found;
  if (d->rec.failed()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", name, "' is FAILED; run reset to start a fresh worker instead"));
  }
  // The old worker stops (a persisted emud-worker exits at once on SIGTERM,
  // leaving the guest's session to the fd store), then the new one starts
  // with the device's fds and resumes the session: the guest keeps its
  // connection (tests/chaos upgrades under traffic). The gap is one worker
  // start-up.
  {
    BusyGuard busy(*d);
    supervisor_->CancelRestart(name);
    // The standby runs the old binary: it must never be promoted. A new one
    // (of the new binary) follows the new worker's start.
    supervisor_->DiscardStandby(name);
    absl::Status s = StopWorkerLocked(*d, deadline);
    if (!s.ok()) {
      supervisor_->DiscardStandby(name, absl::Now());
      return s;
    }
  }
  if (!binary.empty()) d->rec.set_worker_binary(binary);
  log::DeviceInfo(name, "upgrading worker");
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

void DeviceManager::SyncFdRecordsLocked(Dev& d) {
  std::vector<std::string> keys = fd_host_->HeldKeys(d.rec.name());
  std::set<std::string> now(keys.begin(), keys.end());
  if (now == d.recorded_fds) return;
  emud::internal::FdRecord rec;
  rec.set_worker_pid(supervisor_->pid(d.rec.name()));
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
    log::DeviceError(d.rec.name(), absl::StrCat("recording fd-store keys: ", s.ToString()));
  }
}

size_t DeviceManager::FdsHeldForTest(const std::string& name) {
  absl::MutexLock lock(&mu_);
  return fd_host_->HeldKeys(name).size();
}

pid_t DeviceManager::WorkerPidForTest(const std::string& name) {
  absl::MutexLock lock(&mu_);
  return supervisor_->pid(name);
}

pid_t DeviceManager::StandbyPidForTest(const std::string& name) {
  absl::MutexLock lock(&mu_);
  return supervisor_->standby_pid(name);
}

bool DeviceManager::StandbyReadyForTest(const std::string& name) {
  absl::MutexLock lock(&mu_);
  return supervisor_->StandbyReady(name);
}

// ------------------------------------------------------------- event loop

void DeviceManager::Loop() {
  // The loop is the supervision path: a worker's exit wakes it and it spawns
  // the successor while the guest waits, so it does not queue behind the
  // machine's other work. Real-time, but it only runs on its events (exits,
  // status records, fd-store messages, due timers) and sleeps otherwise. Not
  // SCHED_RESET_ON_FORK: posix_spawn's child must run real-time from its
  // first instruction (measured: a child born SCHED_OTHER waited up to 20 ms
  // under load before it could even raise itself); the worker adds the reset
  // at exec (dataplane/startup_priority.h), and the loop starts no threads.
  if (options_.startup_rt_priority > 0) {
    sched_param sp{};
    sp.sched_priority = options_.startup_rt_priority;
    if (::sched_setscheduler(0, SCHED_FIFO, &sp) != 0) {
      log::Warning(absl::StrCat("supervision loop without real-time priority (SCHED_FIFO ",
                                options_.startup_rt_priority, "): ", std::strerror(errno)));
    }
  }
  while (true) {
    absl::Time wake_at;
    {
      absl::MutexLock lock(&mu_);
      if (stop_loop_) return;
      wake_at = std::min(watcher_->NextPoll(), next_gauge_poll_);
      if (auto r = supervisor_->NextRestart(); r.has_value()) wake_at = std::min(wake_at, *r);
      for (const auto& [name, d] : devs_) {
        if (StandbyWantedLocked(*d)) wake_at = std::min(wake_at, supervisor_->standby_due(name));
      }
      if (auto r = supervisor_->EndStartupPriorities(absl::Now()); r.has_value()) {
        wake_at = std::min(wake_at, *r);
      }
    }
    int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(wake_at - absl::Now()) + 1);
    epoll_event evs[8];
    int n = ::epoll_wait(epoll_.get(), evs, 8, static_cast<int>(std::min<int64_t>(ms, 60000)));
    const int64_t woke_ns = absl::GetCurrentTimeNanos();
    if (n < 0 && errno != EINTR) {
      log::Error(absl::StrCat("epoll_wait: ", std::strerror(errno)));
      absl::SleepFor(absl::Milliseconds(10));
      continue;
    }
    absl::MutexLock lock(&mu_);
    if (stop_loop_) return;
    const int64_t locked_ns = absl::GetCurrentTimeNanos();
    for (int i = 0; i < n; ++i) {
      switch (evs[i].data.u64) {
        case kWakeId: {
          uint64_t v;
          (void)!::read(wake_.get(), &v, sizeof(v));
          break;
        }
        case kSupervisorId:
          for (const Supervisor::Exit& exit : supervisor_->TakeExits()) {
            exit_trace_.emplace();
            exit_trace_->MarkAt("woke", woke_ns);
            exit_trace_->MarkAt("locked", locked_ns);
            exit_trace_->Mark("reaped");
            if (Dev* d = FindLocked(exit.device)) HandleExitLocked(*d, exit);
            exit_trace_.reset();
          }
          break;
        case kWatcherId:
          watcher_->HandleEvents();
          break;
        case kFdHostId:
          for (const std::string& name : fd_host_->HandleEvents()) {
            if (Dev* d = FindLocked(name)) SyncFdRecordsLocked(*d);
          }
          break;
      }
    }
    RunDueLocked(absl::Now());
  }
}

void DeviceManager::RunDueLocked(absl::Time now) {
  watcher_->Poll(now, [&](const std::string& name, StatusWatcher::Reason why) {
    Dev* d = FindLocked(name);
    if (d == nullptr) return;
    if (RefreshLocked(*d) == StatusWatcher::Refresh::kChanged) {
      NotifyLocked(*d);
      // Deposits into a keeper do not pass through emud; a status change
      // (phase, counters) is when its count may have moved.
      if (why == StatusWatcher::Reason::kChanged) fd_host_->RefreshHeldGauge(name);
    }
    if (why == StatusWatcher::Reason::kFallback) fd_host_->RefreshHeldGauge(name);
  });
  if (now >= next_gauge_poll_) {
    for (const auto& [name, d] : devs_) fd_host_->RefreshHeldGauge(name);
    next_gauge_poll_ = now + fd_host_->held_gauge_interval();
  }
  for (const std::string& name : supervisor_->DueRestarts(now)) {
    if (Dev* d = FindLocked(name)) StartWorkerLocked(*d, /*count_restart=*/true);
  }
  // Standbys: once the device's worker serves (so that they never compete
  // with its start for the CPU), unless one died lately (the supervisor's
  // backoff).
  for (const auto& [name, d] : devs_) {
    if (!StandbyWantedLocked(*d) || supervisor_->standby_due(name) > now) continue;
    auto launch = supervisor_->PrepareStandby(name, WorkerArgvLocked(*d));
    if (!launch.ok()) {
      log::DeviceWarning(name, absl::StrCat("standby worker: ", launch.status().message()));
      continue;
    }
    absl::MutexLock lock(&standby_mu_);
    standby_jobs_.push_back(std::move(*launch));
  }
}

void DeviceManager::StandbySpawner() {
  while (true) {
    Supervisor::StandbyLaunch job;
    {
      absl::MutexLock lock(&standby_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(standby_mu_) {
        return standby_stop_ || !standby_jobs_.empty();
      };
      standby_mu_.Await(absl::Condition(&ready));
      if (standby_stop_) return;
      job = std::move(standby_jobs_.front());
      standby_jobs_.pop_front();
    }
    {
      // Deleted (or upgraded, reset) while the job waited in the queue:
      // start nothing (a delete must not leave a fork behind it).
      absl::MutexLock lock(&mu_);
      if (!supervisor_->StandbyLaunchCurrent(job)) continue;
    }
    absl::StatusOr<fdstore::Process> proc = Supervisor::LaunchStandby(job);
    absl::MutexLock lock(&mu_);
    absl::Status s = supervisor_->InstallStandby(job, std::move(proc));
    if (!s.ok() && !absl::IsAborted(s)) {
      log::DeviceWarning(job.device, absl::StrCat("standby worker: ", s.message()));
    }
  }
}

bool DeviceManager::StandbyWantedLocked(const Dev& d) const {
  if (!options_.standby_workers || handing_over_ || shutting_down_) return false;
  if (d.rec.failed() || d.deleting || d.busy) return false;
  const WorkerStatus* st = CurrentStatusLocked(d);
  return st != nullptr && st->phase() != WorkerStatus::PHASE_UNSPECIFIED;
}

}  // namespace emud::server
