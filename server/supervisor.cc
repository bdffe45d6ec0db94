#include "server/supervisor.h"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "base/exit_reason.h"
#include "fdstore/standby.h"

namespace emud::server {
namespace {

constexpr absl::Duration kKillGrace = absl::Seconds(3);

// What identifies the binary a standby was started from: a file replaced on
// disk (a package upgrade) is another file, and its successor must exec it.
std::string BinaryIdentity(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "";
  return absl::StrCat(st.st_dev, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec);
}

// SIGKILL and reap (a standby blocks in recvmsg: it dies at once).
void KillAndReap(fdstore::Process& p) {
  if (p.pid <= 0) return;
  (void)fdstore::SignalProcess(p, SIGKILL);
  struct pollfd pfd = {p.pidfd.get(), POLLIN, 0};
  ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(kKillGrace)));
  (void)fdstore::ReapAndDescribe(p);
  p = fdstore::Process{};
}

}  // namespace

Supervisor::Standby::~Standby() { KillAndReap(proc); }

absl::StatusOr<std::unique_ptr<Supervisor>> Supervisor::Create(SupervisorOptions options) {
  std::unique_ptr<Supervisor> s(new Supervisor(std::move(options)));
  s->epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!s->epoll_.valid()) {
    return absl::InternalError(absl::StrCat("supervisor epoll: ", std::strerror(errno)));
  }
  return s;
}

Supervisor::~Supervisor() = default;

Supervisor::Slot* Supervisor::Find(const std::string& device) {
  auto it = slots_.find(device);
  return it == slots_.end() ? nullptr : it->second.get();
}

const Supervisor::Slot* Supervisor::Find(const std::string& device) const {
  auto it = slots_.find(device);
  return it == slots_.end() ? nullptr : it->second.get();
}

void Supervisor::Add(const std::string& device) {
  if (slots_.count(device) > 0) return;
  auto s = std::make_unique<Slot>();
  s->id = next_id_++;
  s->policy = RestartPolicy(options_.restart);
  slots_[device] = std::move(s);
}

void Supervisor::Remove(const std::string& device) {
  Slot* s = Find(device);
  if (s == nullptr) return;
  if (s->proc.pidfd.valid()) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s->proc.pidfd.get(), nullptr);
  DiscardStandby(device);
  slots_.erase(device);
}

void Supervisor::Watch(Slot& s) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = s.id;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, s.proc.pidfd.get(), &ev);
}

absl::Status Supervisor::Spawn(const std::string& device, const std::vector<std::string>& argv,
                               std::vector<fdstore::InheritedFd> inherit,
                               const std::vector<std::string>& env, bool use_standby) {
  Slot* s = Find(device);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("no slot for device ", device));
  s->restart_at.reset();
  s->promoted = false;
  // Where the worker writes why it gave up (read back in TakeExits).
  s->exit_reason.reset();
  if (auto r = CreateExitReasonFile(); r.ok()) {
    s->exit_reason = std::move(*r);
    inherit.push_back({"exit-reason", s->exit_reason.get(), kExitReasonEnv});
  }
  if (use_standby && s->standby != nullptr && s->standby->proc.pid != 0 &&
      PromoteLocked(device, *s, argv, inherit, env)) {
    return absl::OkStatus();
  }
  const absl::Time t0 = absl::Now();
  auto p = fdstore::SpawnWithFds(argv, inherit, env, rt_priority_);
  if (absl::IsPermissionDenied(p.status()) && rt_priority_ > 0) {
    log::Warning(absl::StrCat(p.status().message(), "; workers start without real-time priority"));
    rt_priority_ = 0;
    p = fdstore::SpawnWithFds(argv, inherit, env);
  }
  if (!p.ok()) return p.status();
  s->proc = std::move(*p);
  const absl::Duration took = absl::Now() - t0;
  s->started = Now();
  // posix_spawn returns once the child has exec'd. Under load it sometimes
  // takes 5-20 ms although the child is real-time, most likely waiting for
  // emud's mmap_lock (the child shares emud's memory map until its exec,
  // which copies argv and environment out of it, and emud's other threads
  // are not real-time): ARCHITECTURE.md, known limits. Logged, as the one
  // part of a reattach emud's log can show.
  if (took >= absl::Milliseconds(5)) {
    log::DeviceWarning(device, absl::StrCat("spawning worker pid ", s->proc.pid, " took ",
                                            absl::FormatDuration(took)));
  }
  s->stopping = false;
  s->rt_until.reset();
  if (rt_priority_ > 0) s->rt_until = s->started + options_.startup_rt_max;
  Watch(*s);
  if (options_.standby_workers) s->standby_due = s->started + options_.standby_delay;
  return absl::OkStatus();
}

bool Supervisor::PromoteLocked(const std::string& device, Slot& s,
                               const std::vector<std::string>& argv,
                               const std::vector<fdstore::InheritedFd>& inherit,
                               const std::vector<std::string>& env) {
  Standby& sb = *s.standby;
  if (sb.argv != argv || sb.binary_identity != BinaryIdentity(argv[0])) {
    // Another command line or another binary file: never promoted.
    log::DeviceInfo(device, absl::StrCat("standby worker pid ", sb.proc.pid,
                                         " was started for another worker binary or command "
                                         "line; discarding it"));
    DiscardStandby(device, Now() + options_.standby_delay);
    return false;
  }
  if (!CheckReady(sb)) return false;  // still starting: spawn; it stays the standby
  // Real-time from its wake-up, as a spawned successor is from its first
  // instruction (dataplane/startup_priority.h adopts it; the standby is one
  // thread until promoted). Refused: it starts without.
  bool rt = false;
  if (rt_priority_ > 0) {
    sched_param sp{};
    sp.sched_priority = rt_priority_;
    rt = ::sched_setscheduler(sb.proc.pid, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) == 0;
  }
  const absl::Time t0 = Now();
  if (absl::Status st = fdstore::SendPromotion(sb.go.get(), inherit, env); !st.ok()) {
    log::DeviceWarning(device, absl::StrCat("standby worker pid ", sb.proc.pid,
                                            " could not be promoted (", st.message(),
                                            "); spawning the worker"));
    DiscardStandby(device, Now() + options_.standby_retry_initial);
    return false;
  }
  // It is the device's worker now: its pidfd reports to the slot.
  s.proc = std::move(sb.proc);
  sb.proc = fdstore::Process{};
  s.standby.reset();  // closes the go channel: the message is queued before it
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = s.id;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, s.proc.pidfd.get(), &ev);
  s.started = t0;
  s.stopping = false;
  s.promoted = true;
  s.rt_until.reset();
  if (rt) s.rt_until = s.started + options_.startup_rt_max;
  s.standby_due = s.started + options_.standby_delay;
  return true;
}

bool Supervisor::promoted(const std::string& device) const {
  const Slot* s = Find(device);
  return s != nullptr && s->promoted;
}

absl::Status Supervisor::SpawnStandby(const std::string& device,
                                      const std::vector<std::string>& argv) {
  auto launch = PrepareStandby(device, argv);
  if (!launch.ok()) return launch.status();
  return InstallStandby(*launch, LaunchStandby(*launch));
}

absl::StatusOr<Supervisor::StandbyLaunch> Supervisor::PrepareStandby(
    const std::string& device, const std::vector<std::string>& argv) {
  Slot* s = Find(device);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("no slot for device ", device));
  if (s->standby != nullptr) return absl::FailedPreconditionError("the device has a standby");
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::InternalError(absl::StrCat("standby socketpair: ", std::strerror(errno)));
  }
  auto sb = std::make_unique<Standby>();
  sb->reservation = next_id_++;
  sb->go.reset(sv[0]);
  sb->argv = argv;
  sb->binary_identity = BinaryIdentity(argv[0]);
  StandbyLaunch launch;
  launch.device = device;
  launch.reservation = sb->reservation;
  launch.argv = argv;
  // Its only inherited fd, hence 3 (fdstore::SpawnWithFds).
  launch.argv.push_back("--standby-fd=3");
  launch.theirs.reset(sv[1]);
  s->standby = std::move(sb);
  return launch;
}

absl::StatusOr<fdstore::Process> Supervisor::LaunchStandby(const StandbyLaunch& launch) {
  // SCHED_OTHER whatever the calling thread runs (emud's loop is real-time).
  const absl::Time t0 = absl::Now();
  auto p = fdstore::SpawnWithFds(launch.argv, {{"standby", launch.theirs.get(), "EMUD_STANDBY_FD"}},
                                 {}, -1);
  if (const absl::Duration took = absl::Now() - t0; p.ok() && took >= absl::Milliseconds(5)) {
    log::DeviceInfo(launch.device, absl::StrCat("spawning standby worker pid ", p->pid, " took ",
                                                absl::FormatDuration(took)));
  }
  return p;
}

bool Supervisor::StandbyLaunchCurrent(const StandbyLaunch& launch) {
  Slot* s = Find(launch.device);
  return s != nullptr && s->standby != nullptr && s->standby->reservation == launch.reservation &&
         s->standby->proc.pid == 0;
}

absl::Status Supervisor::InstallStandby(const StandbyLaunch& launch,
                                        absl::StatusOr<fdstore::Process> proc) {
  Slot* s = Find(launch.device);
  const bool current = StandbyLaunchCurrent(launch);
  if (!proc.ok()) {
    if (current) {
      s->standby.reset();
      s->standby_failures++;
      s->standby_not_before = Now() + options_.standby_retry_max;
    }
    return proc.status();
  }
  if (!current) {
    // Discarded while it was being spawned: it must never be promoted.
    KillAndReap(*proc);
    return absl::AbortedError("the standby was discarded while it started");
  }
  Standby& sb = *s->standby;
  sb.proc = std::move(*proc);
  sb.id = next_id_++;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = sb.id;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, sb.proc.pidfd.get(), &ev);
  return absl::OkStatus();
}

void Supervisor::DiscardStandby(const std::string& device, absl::Time next) {
  Slot* s = Find(device);
  if (s == nullptr) return;
  s->standby_due = next;
  if (s->standby == nullptr) return;
  if (s->standby->proc.pidfd.valid()) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s->standby->proc.pidfd.get(), nullptr);
  }
  s->standby.reset();  // SIGKILL, reap
}

void Supervisor::DiscardAllStandbys() {
  for (auto& [name, s] : slots_) DiscardStandby(name);
}

bool Supervisor::CheckReady(Standby& sb) {
  if (!sb.ready) {
    char b = 0;
    sb.ready = ::recv(sb.go.get(), &b, 1, MSG_DONTWAIT) == 1 && b == fdstore::kStandbyReady;
  }
  return sb.ready;
}

bool Supervisor::StandbyReady(const std::string& device) {
  Slot* s = Find(device);
  return s != nullptr && s->standby != nullptr && CheckReady(*s->standby);
}

pid_t Supervisor::standby_pid(const std::string& device) const {
  const Slot* s = Find(device);
  return s == nullptr || s->standby == nullptr ? 0 : s->standby->proc.pid;
}

std::vector<std::string> Supervisor::DueStandbys(absl::Time now) const {
  std::vector<std::string> due;
  if (!options_.standby_workers) return due;
  for (const auto& [name, s] : slots_) {
    if (s->proc.pid != 0 && s->standby == nullptr &&
        std::max(s->standby_due, s->standby_not_before) <= now) {
      due.push_back(name);
    }
  }
  return due;
}

absl::Time Supervisor::standby_due(const std::string& device) const {
  const Slot* s = Find(device);
  if (!options_.standby_workers || s == nullptr || s->proc.pid == 0 || s->standby != nullptr) {
    return absl::InfiniteFuture();
  }
  return std::max(s->standby_due, s->standby_not_before);
}

std::optional<absl::Time> Supervisor::NextStandby() const {
  std::optional<absl::Time> next;
  if (!options_.standby_workers) return next;
  for (const auto& [name, s] : slots_) {
    if (s->proc.pid == 0 || s->standby != nullptr || s->standby_due == absl::InfiniteFuture()) {
      continue;
    }
    const absl::Time at = std::max(s->standby_due, s->standby_not_before);
    if (!next.has_value() || at < *next) next = at;
  }
  return next;
}

void Supervisor::StandbyExited(const std::string& device, Slot& s) {
  Standby& sb = *s.standby;
  CheckReady(sb);
  const pid_t pid = sb.proc.pid;
  const std::string how = fdstore::ReapAndDescribe(sb.proc);
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, sb.proc.pidfd.get(), nullptr);
  sb.proc = fdstore::Process{};
  // One that was ready was killed from outside: start another soon. One
  // that never got ready (a binary that does not know --standby-fd, a
  // broken start) is retried ever more slowly, never in a tight loop.
  s.standby_failures = sb.ready ? 0 : s.standby_failures + 1;
  const bool was_ready = sb.ready;
  s.standby.reset();
  absl::Duration delay = options_.standby_retry_initial;
  for (int i = 1; i < s.standby_failures && delay < options_.standby_retry_max; ++i) delay *= 2;
  delay = std::min(delay, options_.standby_retry_max);
  s.standby_due = Now() + delay;
  s.standby_not_before = s.standby_due;  // a worker restart does not cut it short
  log::DeviceWarning(device, absl::StrCat("standby worker pid ", pid, " ", how,
                                          was_ready ? "" : " before it was ready",
                                          "; a new standby in ", absl::FormatDuration(delay)));
}

absl::Status Supervisor::Adopt(const std::string& device, pid_t pid, uint64_t start_ticks) {
  Slot* s = Find(device);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("no slot for device ", device));
  auto p = fdstore::AdoptProcess(pid, start_ticks);
  if (!p.ok()) return p.status();
  s->proc = std::move(*p);
  s->started = Now();
  s->stopping = false;
  s->exit_reason.reset();
  s->promoted = false;
  Watch(*s);
  if (options_.standby_workers) s->standby_due = s->started + options_.standby_delay;
  return absl::OkStatus();
}

pid_t Supervisor::pid(const std::string& device) const {
  const Slot* s = Find(device);
  return s == nullptr ? 0 : s->proc.pid;
}

uint64_t Supervisor::start_ticks(const std::string& device) const {
  const Slot* s = Find(device);
  return s == nullptr ? 0 : s->proc.start_ticks;
}

absl::Time Supervisor::started(const std::string& device) const {
  const Slot* s = Find(device);
  return s == nullptr ? absl::Time() : s->started;
}

std::vector<Supervisor::Exit> Supervisor::TakeExits() {
  std::vector<Exit> out;
  epoll_event evs[64];
  int n = ::epoll_wait(epoll_.get(), evs, 64, 0);
  for (int i = 0; i < n; ++i) {
    auto sb = std::find_if(slots_.begin(), slots_.end(), [&](const auto& kv) {
      return kv.second->standby != nullptr && kv.second->standby->id != 0 &&
             kv.second->standby->id == evs[i].data.u64;
    });
    if (sb != slots_.end()) {
      // A standby is not the device's worker: its end is no worker exit.
      if (fdstore::HasExited(sb->second->standby->proc)) StandbyExited(sb->first, *sb->second);
      continue;
    }
    auto it = std::find_if(slots_.begin(), slots_.end(),
                           [&](const auto& kv) { return kv.second->id == evs[i].data.u64; });
    if (it == slots_.end()) continue;
    Slot& s = *it->second;
    if (s.proc.pid == 0 || !fdstore::HasExited(s.proc)) continue;
    Exit e;
    e.device = it->first;
    e.pid = s.proc.pid;
    e.how = fdstore::ReapAndDescribe(s.proc);
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s.proc.pidfd.get(), nullptr);
    s.proc = fdstore::Process{};
    // Its own words (base/exit_reason.h): "TUNSETIFF lo: Invalid argument"
    // says what to fix, "exited with status 1" does not.
    e.said = ReadExitReason(s.exit_reason.get());
    s.exit_reason.reset();
    e.requested = s.stopping;
    s.stopping = false;
    out.push_back(std::move(e));
  }
  return out;
}

absl::Status Supervisor::Stop(const std::string& device, absl::Time deadline, absl::Mutex& mu) {
  Slot* s = Find(device);
  if (s == nullptr || s->proc.pid == 0) return absl::OkStatus();
  s->stopping = true;
  (void)fdstore::SignalProcess(s->proc, SIGTERM);
  auto gone = [](Slot* slot) { return slot->proc.pid == 0; };
  absl::Condition cond(+gone, s);
  absl::Time term_deadline = std::min(deadline, absl::Now() + options_.stop_timeout);
  if (mu.AwaitWithDeadline(cond, term_deadline)) return absl::OkStatus();
  log::DeviceWarning(device, absl::StrCat("worker pid ", s->proc.pid,
                                          " ignored SIGTERM; sending SIGKILL"));
  (void)fdstore::SignalProcess(s->proc, SIGKILL);
  if (mu.AwaitWithTimeout(cond, kKillGrace)) return absl::OkStatus();
  s->stopping = false;
  return absl::UnavailableError(absl::StrCat("worker pid ", s->proc.pid, " of device ", device,
                                             " did not exit after SIGKILL; retry"));
}

std::vector<std::string> Supervisor::StopAll() {
  std::vector<std::string> stopped;
  for (auto& [name, s] : slots_) {
    if (s->proc.pid > 0) (void)fdstore::SignalProcess(s->proc, SIGTERM);
  }
  absl::Time deadline = absl::Now() + options_.stop_timeout;
  for (auto& [name, s] : slots_) {
    if (s->proc.pid == 0) continue;
    while (!fdstore::HasExited(s->proc) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (!fdstore::HasExited(s->proc)) {
      (void)fdstore::SignalProcess(s->proc, SIGKILL);
      struct pollfd pfd = {s->proc.pidfd.get(), POLLIN, 0};
      ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(kKillGrace)));
    }
    fdstore::ReapAndDescribe(s->proc);
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s->proc.pidfd.get(), nullptr);
    s->proc = fdstore::Process{};
    stopped.push_back(name);
  }
  return stopped;
}

RestartPolicy::Decision Supervisor::WorkerFailed(const std::string& device, bool healthy,
                                                 bool guest_connected) {
  Slot* s = Find(device);
  if (s == nullptr) return RestartPolicy::Decision{true, absl::ZeroDuration()};
  RestartPolicy::Decision dec = s->policy.OnExit(healthy, guest_connected);
  if (!dec.give_up) s->restart_at = Now() + dec.delay;
  s->started = absl::Time();
  return dec;
}

Supervisor::Retry Supervisor::StoreFull(const std::string& device, bool guest_connected) {
  Retry r;
  // With a guest connected its request waits (QEMU gives up after 5 s): retry
  // often. Otherwise once a second is plenty.
  r.delay = guest_connected ? options_.restart.connected_max_backoff : absl::Seconds(1);
  Slot* s = Find(device);
  if (s == nullptr) return r;
  s->restart_at = Now() + r.delay;
  s->started = absl::Time();
  r.first = !s->store_full;
  s->store_full = true;
  return r;
}

void Supervisor::ClearStoreFull(const std::string& device) {
  if (Slot* s = Find(device)) s->store_full = false;
}

void Supervisor::ResetPolicy(const std::string& device) {
  if (Slot* s = Find(device)) s->policy.Reset();
}

int Supervisor::consecutive_failures(const std::string& device) const {
  const Slot* s = Find(device);
  return s == nullptr ? 0 : s->policy.consecutive_failures();
}

void Supervisor::CancelRestart(const std::string& device) {
  if (Slot* s = Find(device)) s->restart_at.reset();
}

void Supervisor::CancelAllRestarts() {
  for (auto& [name, s] : slots_) s->restart_at.reset();
}

std::optional<absl::Time> Supervisor::restart_at(const std::string& device) const {
  const Slot* s = Find(device);
  return s == nullptr ? std::nullopt : s->restart_at;
}

std::optional<absl::Time> Supervisor::NextRestart() const {
  std::optional<absl::Time> next;
  for (const auto& [name, s] : slots_) {
    if (s->restart_at.has_value() && (!next.has_value() || *s->restart_at < *next)) {
      next = s->restart_at;
    }
  }
  return next;
}

std::optional<absl::Time> Supervisor::EndStartupPriorities(absl::Time now) {
  std::optional<absl::Time> next;
  for (auto& [name, s] : slots_) {
    if (!s->rt_until.has_value()) continue;
    if (s->proc.pid == 0) {
      s->rt_until.reset();
    } else if (*s->rt_until <= now) {
      s->rt_until.reset();
      if (absl::Status st = fdstore::EndRealtime(s->proc); !st.ok()) {
        log::DeviceWarning(name, st.message());
      }
    } else if (!next.has_value() || *s->rt_until < *next) {
      next = s->rt_until;
    }
  }
  return next;
}

std::vector<std::string> Supervisor::DueRestarts(absl::Time now) const {
  std::vector<std::string> due;
  for (const auto& [name, s] : slots_) {
    if (s->restart_at.has_value() && *s->restart_at <= now && s->proc.pid == 0) due.push_back(name);
  }
  return due;
}

}  // namespace emud::server
