#include "dataplane/worker.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/exit_reason.h"
#include "base/log.h"
#include "base/socket_access.h"
#include "base/unix_listener.h"
#include "dataplane/adaptive_poll.h"
#include "dataplane/startup_priority.h"
#include "state_store/state_dir.h"
#include "vfio_user/session_store.h"
#include "worker_api/fd_keys.h"
#include "worker_api/status_record.h"

namespace emud::dataplane {
namespace {

// `s` with `what` in front of its message (same code).
absl::Status Annotate(const absl::Status& s, absl::string_view what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

}  // namespace

#define WORKER_RETURN_IF_ERROR(expr)                     \
  do {                                                   \
    if (absl::Status _s = (expr); !_s.ok()) return _s;   \
  } while (0)

// The worker's side of the fd store as the session's FdDepositor. While the
// store is away (emud restarting) fds are kept for FdStoreClient::Reconnect
// instead: the worker never stalls or fails a guest request on emud.
class Worker::StoreDepositor : public vfio_user::FdDepositor {
 public:
  explicit StoreDepositor(fdstore::FdStoreClient* store) : store_(store) {}
  absl::Status Deposit(absl::string_view key, int fd) override {
    if (store_ == nullptr) return absl::OkStatus();
    if (store_->connected()) {
      absl::Status s = store_->Deposit(key, fd);
      if (s.ok()) return s;
      if (s.code() == absl::StatusCode::kPermissionDenied ||
          s.code() == absl::StatusCode::kInvalidArgument) {
        return s;  // refused by the store
      }
      lost_ = true;  // the channel broke: the store died
    }
    return store_->Keep(key, fd);
  }
  void Release(absl::string_view key) override {
    if (store_ == nullptr) return;
    if (!store_->Release(key).ok() && store_->connected()) lost_ = true;
  }
  bool TakeLost() { return std::exchange(lost_, false); }

 private:
  fdstore::FdStoreClient* store_;
  bool lost_ = false;
};

Worker::Worker(WorkerOptions options)
    : options_(std::move(options)), persist_(options_.args.persist_session.value_or(true)) {}

Worker::~Worker() {
  loop_for_stop_.store(nullptr);
  publisher_.reset();
  server_.reset();  // the session disconnects its client (unless abandoned)
  session_.reset();
}

bool Worker::resumable() const { return store_ != nullptr && persist_; }

void Worker::Stop() {
  stop_.store(true);
  if (emud::EventLoop* loop = loop_for_stop_.load()) loop->Stop();
}

UniqueFd Worker::TakeInherited(absl::string_view key) {
  UniqueFd f;
  if (auto it = options_.inherited_fds.find(std::string(key)); it != options_.inherited_fds.end()) {
    f = std::move(it->second);
    options_.inherited_fds.erase(it);
  }
  return f;
}

absl::Status Worker::ResumeOrCreate() {
  const absl::Time start = absl::Now();
  worker_api::RestartTrace& trace = options_.trace;  // one mark per step
  WORKER_RETURN_IF_ERROR(AdoptFdStore());
  trace.Mark("fdstore");
  WORKER_RETURN_IF_ERROR(OpenState());
  trace.Mark("lmdb");
  WORKER_RETURN_IF_ERROR(OpenPoisonGuard());
  WORKER_RETURN_IF_ERROR(CreateDevice());
  WORKER_RETURN_IF_ERROR(CreateEventLoop());
  WORKER_RETURN_IF_ERROR(OpenBackendAndQueues());
  trace.Mark("device");
  // A successor holding the guest's connection takes the session over:
  // device model from LMDB, session (DMA windows, eventfds, the pending
  // request) from LMDB + inherited fds, queues from the tmpfs queue state.
  conn_ = TakeInherited(worker_api::kConnFdKey);
  if (conn_.valid() && persist_) WORKER_RETURN_IF_ERROR(ResumeSession());
  if (!resumed_) WORKER_RETURN_IF_ERROR(CreateSession());
  trace.Mark("session");
  WORKER_RETURN_IF_ERROR(Listen());
  ReleaseUnclaimedFds();
  WORKER_RETURN_IF_ERROR(WatchFds());
  trace.Mark("listen");
  publisher_ = std::make_unique<StatusPublisher>(env_.get(), device_.get(), datapath_.get(),
                                                 &server_->session());
  // The predecessor's figure is not ours: a worker that resumed nothing
  // reports no reattach.
  if (resumed_) resume_time_ = absl::Now() - start;
  publisher_->SetReattachTime(resumed_ ? resume_time_ : absl::ZeroDuration());
  // The first status record is what tells emud this worker serves: one that
  // cannot be written (a full tmpfs) is a failed start, not a worker that
  // serves while emud shows the device CREATED.
  if (absl::Status s = publisher_->Publish(true); !s.ok()) return Annotate(s, "status");
  trace.Mark("status");
  return absl::OkStatus();
}

// The fd store (when started by emud): our channel and, for a successor,
// every fd the predecessor deposited. They are kept for Reconnect (the store
// already holds them), then consumed by key.
absl::Status Worker::AdoptFdStore() {
  UniqueFd channel = TakeInherited(worker_api::kChannelFdKey);
  if (channel.valid()) {
    auto c = fdstore::FdStoreClient::Adopt(std::move(channel), options_.args.device);
    if (!c.ok()) return Annotate(c.status(), "fd store");
    store_ = std::move(*c);
    for (const auto& [key, fd] : options_.inherited_fds) {
      if (absl::Status s = store_->Keep(key, fd.get()); !s.ok()) return Annotate(s, "fd store");
    }
  }
  depositor_ = std::make_unique<StoreDepositor>(store_.get());
  return absl::OkStatus();
}

absl::Status Worker::OpenState() {
  const std::string& state_dir = options_.args.state_dir;
  const std::string& name = options_.args.device;
  std::error_code ec;
  const std::string env_dir = state_store::DeviceEnvDir(state_dir, name);
  std::filesystem::create_directories(env_dir, ec);
  std::filesystem::create_directories(state_store::ShmDir(state_dir), ec);
  // DIR/shm/NAME/ (files of an older worker's DIR/shm/NAME.* layout move in).
  if (absl::Status s = state_store::MigrateLegacyShmFiles(state_dir, name); !s.ok()) {
    return Annotate(s, "state dir");
  }
  state_store::EnvOptions eopt;
  eopt.tables = vfio_user::SessionTables();
  eopt.tables.push_back(avf::Device::kStateTable);
  eopt.tables.push_back(worker_api::kStatusTable);
  auto env = state_store::Env::Open(env_dir, eopt);
  if (!env.ok()) return Annotate(env.status(), "state store");
  env_ = std::move(*env);
  return absl::OkStatus();
}

// Poison-input quarantine: what this worker handles when it dies is charged
// to that input; the third death on one input quarantines it.
absl::Status Worker::OpenPoisonGuard() {
  const std::string dev_shm_dir =
      state_store::DeviceShmDir(options_.args.state_dir, options_.args.device);
  auto guard = PoisonGuard::Open(absl::StrCat(dev_shm_dir, "/poison"));
  if (!guard.ok()) return Annotate(guard.status(), "poison guard");
  guard_ = std::move(*guard);
  for (auto level : {PoisonGuard::kVfioRequest, PoisonGuard::kVirtchnl, PoisonGuard::kTxQueue}) {
    if (guard_->DeathsAtOpen(level) > 0) {
      static const char* const kNames[] = {"a vfio-user request", "a virtchnl message",
                                           "a TX burst"};
      log::Warning(absl::StrCat("a predecessor died handling ", kNames[level], " (",
                                guard_->DeathsAtOpen(level), " deaths on it)"));
    }
  }
  return absl::OkStatus();
}

// The doorbell memfd (tails + ITRN) backs BAR0 [0, 0x3000) in both modes: in
// trap mode it makes tail writes self-durable (no LMDB commit per doorbell;
// vfio_user::PciDevice::WriteIsSelfDurable), so a successor must adopt it
// whatever the mode.
absl::Status Worker::CreateDevice() {
  const worker_api::WorkerArgs& args = options_.args;
  avf::DeviceOptions dopt;
  dopt.max_queue_pairs = static_cast<uint32_t>(args.queues);
  dopt.mapped_doorbells = args.doorbell == worker_api::DoorbellMode::kMmap;
  if (!args.mac.empty()) {
    auto mac = worker_api::ParseMac(args.mac);
    if (!mac.ok()) return Annotate(mac.status(), "--mac");
    dopt.mac = *mac;
  }
  if (persist_) dopt.poison_guard = guard_.get();
  UniqueFd doorbell = TakeInherited(worker_api::kDoorbellFdKey);
  const bool inherited = doorbell.valid();
  dopt.doorbell_fd = doorbell.release();
  auto device = avf::Device::Create(dopt);
  if (!device.ok()) return Annotate(device.status(), "device");
  device_ = std::move(*device);
  if (!inherited) {
    // Before any client can mmap it / any tail write relies on it.
    absl::Status s = depositor_->Deposit(worker_api::kDoorbellFdKey, device_->doorbell_fd());
    if (!s.ok()) return Annotate(s, "deposit doorbell");
  }
  return absl::OkStatus();
}

absl::Status Worker::CreateEventLoop() {
  auto loop = emud::EventLoop::Create();
  if (!loop.ok()) return Annotate(loop.status(), "event loop");
  loop_ = std::move(*loop);
  loop_for_stop_.store(loop_.get());
  if (stop_.load()) loop_->Stop();  // stopped before the loop existed
  return absl::OkStatus();
}

absl::Status Worker::OpenBackendAndQueues() {
  const worker_api::WorkerArgs& args = options_.args;
  BackendOptions bopt;
  bopt.device = args.device;
  bopt.shm_dir = state_store::ShmDir(args.state_dir);
  bopt.max_frame = avf::kMaxFrameSize;
  const bool tap = absl::StartsWith(args.backend, "tap:");
  // One TAP queue per queue pair (IFF_MULTI_QUEUE), at most 32 (backend
  // queue sets are 32-bit masks; RSS still spreads over every RX queue):
  // the predecessor's, by key, else opened and deposited.
  uint32_t tap_inherited = 0;  // bit k: TAP queue k inherited
  if (tap) {
    bopt.tap_queues = std::min<uint32_t>(static_cast<uint32_t>(args.queues), 32);
    for (uint32_t k = 0; k < bopt.tap_queues; ++k) {
      UniqueFd fd = TakeInherited(worker_api::TapFdKey(k));
      if (fd.valid()) tap_inherited |= 1u << k;
      bopt.tap_fds.push_back(fd.release());
    }
  }
  auto backend = OpenBackend(args.backend, bopt);
  if (!backend.ok()) return Annotate(backend.status(), "backend");
  backend_ = std::move(*backend);
  for (uint32_t k = 0; tap && k < backend_->num_queues(); ++k) {
    if (tap_inherited & (1u << k)) continue;
    const std::string key = worker_api::TapFdKey(k);
    absl::Status s = depositor_->Deposit(key, backend_->event_fd(k));
    if (!s.ok()) return Annotate(s, "deposit " + key);
  }
  const std::string dev_shm_dir = state_store::DeviceShmDir(args.state_dir, args.device);
  auto qstate = QueueStateFile::Open(absl::StrCat(dev_shm_dir, "/queues"),
                                     static_cast<uint32_t>(args.queues));
  if (!qstate.ok()) return Annotate(qstate.status(), "queue state");
  qstate_ = std::move(*qstate);
  DataPathOptions dpopt;
  dpopt.threads = static_cast<uint32_t>(std::min(args.datapath_threads, args.queues));
  if (persist_) {
    dpopt.poison_guard = guard_.get();
    // Each further data-path thread brackets its TX bursts in a guard page
    // of its own (DIR/shm/NAME/poison.lane<t>).
    for (uint32_t t = 1; t < dpopt.threads; ++t) {
      auto g = PoisonGuard::Open(absl::StrCat(dev_shm_dir, "/poison.lane", t));
      if (!g.ok()) return Annotate(g.status(), "poison guard");
      lane_guards_.push_back(std::move(*g));
      dpopt.lane_poison_guards.push_back(lane_guards_.back().get());
    }
  }
  datapath_ = std::make_unique<DataPath>(device_.get(), backend_.get(), qstate_.get(), dpopt);
  return absl::OkStatus();
}

vfio_user::SessionOptions Worker::SessionOptionsFor() const {
  vfio_user::SessionOptions sopt;
  if (persist_) {
    sopt.store = env_.get();
    sopt.crash_consistent = true;
    sopt.journal_path = absl::StrCat(
        state_store::DeviceShmDir(options_.args.state_dir, options_.args.device), "/journal");
    sopt.poison_guard = guard_.get();
  }
  if (store_ != nullptr) sopt.fd_depositor = depositor_.get();
  if (persist_ && store_ != nullptr) {
    // A full tmpfs: leave the request in the socket and the state as last
    // committed, and let emud start a successor at a pace until there is
    // room (never a disconnect, which QEMU takes as a device reset).
    sopt.on_store_full = [](const absl::Status& s) {
      log::Error(absl::StrCat("commit: ", s.ToString()));
      RecordExitReason("commit", s);
      _exit(1);
    };
  }
  return sopt;
}

// Takes the predecessor's session over (sets resumed_), or leaves resumed_
// false when there is none to take (NOT_FOUND: a fresh session follows).
absl::Status Worker::ResumeSession() {
  absl::Status r = vfio_user::session_store::RestoreDevice(*env_, *device_);
  if (absl::IsNotFound(r)) return absl::OkStatus();
  if (!r.ok()) return Annotate(r, "restore");
  datapath_->OnFiltersChanged();
  UniqueFd copy(::fcntl(conn_.get(), F_DUPFD_CLOEXEC, 3));
  vfio_user::FdLookup lookup = [this](absl::string_view key) -> absl::StatusOr<UniqueFd> {
    UniqueFd f = TakeInherited(key);
    if (!f.valid()) return absl::NotFoundError(key);
    return f;
  };
  auto s = vfio_user::Session::Resume(device_.get(), loop_.get(), SessionOptionsFor(),
                                      std::move(copy), lookup);
  if (absl::IsNotFound(s.status())) return absl::OkStatus();
  if (!s.ok()) return Annotate(s.status(), "resume");
  conn_.reset();  // the session holds its own copy
  session_ = std::move(*s);
  resumed_ = true;
  datapath_->Recover();
  ReleaseStaleSessionFds();
  return absl::OkStatus();
}

// Inherited session fds that the restored state no longer names: the
// predecessor was killed after committing an unmap (or before committing a
// map) and before releasing the key. Released now, before any request can
// deposit the same key again.
void Worker::ReleaseStaleSessionFds() {
  auto& fds = options_.inherited_fds;
  for (auto it = fds.begin(); it != fds.end();) {
    if (worker_api::IsSessionFdKey(it->first)) {
      if (store_ != nullptr) depositor_->Release(it->first);
      it = fds.erase(it);
    } else {
      ++it;
    }
  }
}

// A fresh session; a connection that never finished VERSION is served from
// its first request (crash-consistent mode left it in the socket).
absl::Status Worker::CreateSession() {
  auto s = vfio_user::Session::Create(device_.get(), loop_.get(), SessionOptionsFor());
  if (!s.ok()) return Annotate(s.status(), "session");
  session_ = std::move(*s);
  if (conn_.valid()) {
    if (absl::Status a = session_->AttachClient(std::move(conn_)); !a.ok()) {
      return Annotate(a, "attach");
    }
  }
  return absl::OkStatus();
}

// The listener: inherited with the session, or bound with its final owner,
// group and mode before listen() (base/unix_listener.h) and deposited.
absl::Status Worker::Listen() {
  const worker_api::WorkerArgs& args = options_.args;
  UniqueFd listen_fd = TakeInherited(worker_api::kListenFdKey);
  if (!listen_fd.valid()) {
    auto l = ListenUnix(args.socket_path,
                        {.uid = static_cast<uid_t>(args.socket_uid.value_or(-1)),
                         .gid = static_cast<gid_t>(args.socket_gid.value_or(-1)),
                         .mode = args.socket_mode.value_or(kDefaultSocketMode)});
    if (!l.ok()) return Annotate(l.status(), "listen");
    listen_fd = std::move(*l);
    absl::Status s = depositor_->Deposit(worker_api::kListenFdKey, listen_fd.get());
    if (!s.ok()) return Annotate(s, "deposit vfio/listen");
  }
  auto server =
      vfio_user::Server::FromListener(std::move(listen_fd), std::move(session_), loop_.get());
  if (!server.ok()) return Annotate(server.status(), "listen");
  server_ = std::move(*server);
  return absl::OkStatus();
}

// Inherited but not claimed (e.g. windows unmapped in a commit the
// predecessor did not live to release): the store drops them.
void Worker::ReleaseUnclaimedFds() {
  for (const auto& [key, fd] : options_.inherited_fds) depositor_->Release(key);
  options_.inherited_fds.clear();
}

// With one data-path thread the backend's fds wake the event loop; with
// more, Run() waits on its own epoll (RunThreaded).
absl::Status Worker::WatchFds() {
  WatchStore();
  if (datapath_->threads() > 1) return absl::OkStatus();
  for (uint32_t k = 0; k < backend_->num_queues(); ++k) {
    if (backend_->event_fd(k) < 0) continue;
    absl::Status s = loop_->Add(backend_->event_fd(k), EPOLLIN, [](uint32_t) {});
    if (!s.ok()) return Annotate(s, "backend fd");
  }
  return absl::OkStatus();
}

// The store going away (emud or emud-keeper restarting): keep serving and
// reconnect to its listening socket.
void Worker::WatchStore() {
  if (store_ != nullptr && store_->connected() && !store_watched_) {
    store_watched_ = loop_->Add(store_->channel_fd(), EPOLLIN, [this](uint32_t) {
      // The store never speaks first: readable or HUP means it died.
      loop_->Remove(store_->channel_fd());
      store_watched_ = false;
      (void)store_->Reconnect("");  // drops the dead channel
    }).ok();
  }
}

void Worker::MaintainStore() {
  if (store_ == nullptr) return;
  if (depositor_->TakeLost() && store_->connected()) {
    if (store_watched_) loop_->Remove(store_->channel_fd());
    store_watched_ = false;
    (void)store_->Reconnect("");
  }
  if (store_->connected() || options_.store_socket.empty()) return;
  absl::Time now = absl::Now();
  if (now < next_reconnect_) return;
  next_reconnect_ = now + absl::Milliseconds(10);
  if (store_->Reconnect(options_.store_socket).ok()) {
    log::Info(absl::StrCat("reconnected to the fd store (", store_->deposited(), " fds)"));
    WatchStore();
  }
}

absl::Status Worker::Run() {
  const worker_api::WorkerArgs& args = options_.args;
  options_.trace.Mark("run");
  if (resumed_) {
    log::Info(absl::StrFormat("resumed the guest's session in %.2f ms",
                              absl::ToDoubleMilliseconds(resume_time_)));
  }
  log::Info(absl::StrCat("serving on ", args.socket_path, " (backend ", backend_->spec(),
                         ", doorbell ", worker_api::DoorbellModeName(args.doorbell), ", ",
                         args.queues, " queues, ", datapath_->threads(),
                         " data-path threads, ", backend_->num_queues(), " backend queues)"));
  // The startup trace is logged once the data path has run: after the
  // first round that found no work, or the 64th.
  uint32_t round = 0;
  bool logged = false;
  auto log_start = [&] {
    logged = true;
    log::Info(absl::StrCat(worker_api::kRestartTraceLogTag, ::getpid(), ": ", options_.trace.Format()));
  };

  // Short sleeps need a tight timer (adaptive_poll.h); threads this one
  // creates inherit it.
  (void)prctl(PR_SET_TIMERSLACK, AdaptivePoller::kTimerSlackNs, 0, 0, 0);
  if (datapath_->threads() > 1) {
    absl::Status s = RunThreaded([&](bool work) {
      ++round;
      if (!logged && ((round >= 2 && !work) || round >= 64)) log_start();
    });
    if (!logged) log_start();
    return s;
  }
  absl::Status result;
  AdaptivePoller poller;
  const uint32_t nbq = backend_->num_queues();
  uint32_t backend_watched = 0;
  for (uint32_t k = 0; k < nbq; ++k) {
    if (backend_->event_fd(k) >= 0) backend_watched |= 1u << k;
  }
  // Control messages (and any other fd event) count as activity: the loop
  // keeps polling for the poller's busy window after one, so a VMM's next
  // request right after a reply finds the worker on-CPU (libvfio-user's
  // example server spins ~100 us the same way). An idle device sees no
  // event and still blocks.
  bool fd_activity = false;
  while (!stop_.load()) {
    const bool moved = datapath_->PollOnce();
    if (round == 0) options_.trace.Mark("polled");
    EndStartupPriority(moved);  // a real-time start ends with the first frame
    bool work = moved || fd_activity;
    // A backend holding a frame the guest has no buffer for (tap) would keep
    // its fd readable and spin the loop: stop watching it until the frame is
    // taken (the RX doorbell or the poll timeout brings us back).
    for (uint32_t k = 0; k < nbq; ++k) {
      const int fd = backend_->event_fd(k);
      const bool watched = backend_watched & (1u << k);
      if (fd >= 0 && watched == backend_->HasPending(k)) {
        backend_watched ^= 1u << k;
        (void)loop_->Modify(fd, watched ? 0u : uint32_t{EPOLLIN});
      }
    }
    int64_t t = poller.Next(work, datapath_->NeedsPolling());
    for (uint32_t k = 0; t < 0 && k < nbq; ++k) {
      if (backend_->ArmNotify(k)) t = 0;
    }
    int64_t irq_due = datapath_->NextInterruptDeadlineNs(AdaptivePoller::NowNs());
    if (irq_due >= 0 && (t < 0 || irq_due < t)) t = irq_due;  // ITR-deferred interrupt
    absl::Duration timeout = t < 0 ? absl::Seconds(1) : absl::Nanoseconds(t);
    if (store_ != nullptr && !store_->connected()) timeout = std::min(timeout, absl::Milliseconds(10));
    auto r = loop_->RunOnce(timeout);
    if (!r.ok()) {
      publisher_->SetLastError(std::string(r.status().message()));
      result = r.status();
      break;
    }
    // An fd event (a trapped register access or any vfio-user message, a
    // backend frame) says the guest is active: mapped doorbells go back to
    // the short end of the sleep ramp (adaptive_poll.h).
    if (*r > 0) poller.NoteActivity();
    fd_activity = *r > 0;
    MaintainStore();
    (void)publisher_->Publish(false);
    ++round;
    if (!logged && ((round >= 2 && !work) || round >= 64)) log_start();
  }
  if (!logged) log_start();
  (void)publisher_->Publish(true);
  log::Info("stopping");
  return result;
}

// More than one data-path thread: lanes 1.. run on their own threads; this
// thread runs lane 0 and the control path. It waits on an epoll of its own
// (the event loop's fd, the lanes' interrupt wake-up, lane 0's backend
// queues), and dispatches the event loop - vfio-user requests, the fd
// store - only with every other lane parked (DataPath::PauseGuard), so no
// request's effect (DMA map/unmap, queue contexts, RSS, interrupt state)
// races a lane's round.
absl::Status Worker::RunThreaded(absl::FunctionRef<void(bool work)> after_round) {
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep.valid()) return absl::InternalError("epoll_create1");
  constexpr uint32_t kLoopId = 1u << 30, kWakeId = (1u << 30) + 1;
  auto add = [&](int fd, uint32_t id) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = id;
    return ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
  };
  if (!add(loop_->fd(), kLoopId) || !add(datapath_->wake_fd(), kWakeId)) {
    return absl::InternalError("epoll_ctl");
  }
  const uint32_t nbq = backend_->num_queues();
  uint32_t watched = 0;
  for (uint32_t k = 0; k < nbq; k += datapath_->threads()) {  // lane 0's queues
    if (backend_->event_fd(k) >= 0 && add(backend_->event_fd(k), k)) watched |= 1u << k;
  }
  if (absl::Status s = datapath_->StartThreads(); !s.ok()) return s;
  absl::Status result;
  AdaptivePoller poller;
  epoll_event evs[16];
  bool polled = false;
  bool fd_activity = false;  // as in Run: a control message keeps the loop polling a while
  while (!stop_.load()) {
    const bool moved = datapath_->PollOnce();
    if (!polled) options_.trace.Mark("polled");
    polled = true;
    EndStartupPriority(moved);  // lanes 1.. never had it (SCHED_RESET_ON_FORK)
    bool work = moved || fd_activity;
    for (uint32_t k = 0; k < nbq; k += datapath_->threads()) {
      const int fd = backend_->event_fd(k);
      const bool on = watched & (1u << k);
      if (fd >= 0 && on == backend_->HasPending(k)) {
        watched ^= 1u << k;
        epoll_event ev{};
        ev.events = on ? 0u : uint32_t{EPOLLIN};
        ev.data.u32 = k;
        (void)::epoll_ctl(ep.get(), EPOLL_CTL_MOD, fd, &ev);
      }
    }
    int64_t t = poller.Next(work, datapath_->NeedsPolling());
    for (uint32_t k = 0; t < 0 && k < nbq; k += datapath_->threads()) {
      if (backend_->ArmNotify(k)) t = 0;
    }
    int64_t irq_due = datapath_->NextInterruptDeadlineNs(AdaptivePoller::NowNs());
    if (irq_due >= 0 && (t < 0 || irq_due < t)) t = irq_due;
    if (t < 0) t = 1'000'000'000;
    if (store_ != nullptr && !store_->connected()) t = std::min<int64_t>(t, 10'000'000);
    const int n = EpollWaitNs(ep.get(), evs, 16, t);
    if (n > 0) poller.NoteActivity();
    bool control = false;
    fd_activity = false;
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.u32 == kLoopId) control = fd_activity = true;
      if (evs[i].data.u32 == kWakeId) {
        uint64_t v;
        (void)!::read(datapath_->wake_fd(), &v, sizeof(v));
      }
    }
    if (control) {
      DataPath::PauseGuard pause(datapath_.get());
      auto r = loop_->RunOnce(absl::ZeroDuration());
      if (!r.ok()) {
        publisher_->SetLastError(std::string(r.status().message()));
        result = r.status();
        break;
      }
      MaintainStore();
    } else if (store_ != nullptr && !store_->connected()) {
      DataPath::PauseGuard pause(datapath_.get());
      MaintainStore();
    }
    (void)publisher_->Publish(false);
    after_round(work);
  }
  datapath_->StopThreads();
  (void)publisher_->Publish(true);
  log::Info("stopping");
  return result;
}

void Worker::Abandon() {
  if (server_ != nullptr) server_->session().Abandon();
}

#undef WORKER_RETURN_IF_ERROR

}  // namespace emud::dataplane
