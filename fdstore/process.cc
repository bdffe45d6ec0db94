#include "fdstore/process.h"

#include <fcntl.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "fdstore/fd_store.h"
#include "worker_api/fd_keys.h"

extern char** environ;

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace emud::fdstore {
namespace {

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// The fields of /proc/PID/stat from field 3 (state) on. The command name
// (field 2) may contain spaces and parentheses: they start behind the last
// ')'.
absl::StatusOr<std::vector<std::string>> ProcStatFields(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!in || !std::getline(in, line)) {
    return absl::NotFoundError(absl::StrCat("process ", pid, " does not exist"));
  }
  size_t close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) {
    return absl::InternalError(absl::StrCat("unparsable /proc/", pid, "/stat"));
  }
  return absl::StrSplit(absl::string_view(line).substr(close + 2), ' ', absl::SkipEmpty());
}

}  // namespace

absl::StatusOr<uint64_t> ProcStartTicks(pid_t pid) {
  auto fields = ProcStatFields(pid);
  if (!fields.ok()) return fields.status();
  // (*fields)[0] is field 3 (state); start time is field 22.
  uint64_t ticks = 0;
  if (fields->size() < 20 || !absl::SimpleAtoi((*fields)[19], &ticks)) {
    return absl::InternalError(absl::StrCat("unparsable /proc/", pid, "/stat"));
  }
  return ticks;
}

bool ProcessGone(pid_t pid) {
  auto fields = ProcStatFields(pid);
  if (absl::IsNotFound(fields.status())) return true;
  if (!fields.ok() || fields->empty()) return false;
  return (*fields)[0] == "Z" || (*fields)[0] == "X";
}

absl::StatusOr<Process> SpawnWithFds(const std::vector<std::string>& argv,
                                     const std::vector<InheritedFd>& inherit,
                                     const std::vector<std::string>& env, int rt_priority) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/') {
    return absl::InvalidArgumentError("SpawnWithFds needs an absolute binary path");
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  // Stage every inherited fd above the target range first, so that no dup2
  // clobbers a source still to be copied (and dup2 to a different number
  // clears close-on-exec on the target).
  const int base = 3;
  const int high = base + static_cast<int>(inherit.size()) + 64;
  std::vector<UniqueFd> staged;
  std::string described;
  std::vector<std::string> fd_envs;
  for (size_t i = 0; i < inherit.size(); ++i) {
    if (inherit[i].env.empty()) {
      absl::Status s = ValidateKey(inherit[i].key);  // a ',' or '=' would garble EMUD_FDS
      if (!s.ok()) return s;
    }
    int d = ::fcntl(inherit[i].fd, F_DUPFD_CLOEXEC, high);
    if (d < 0) {
      return absl::InternalError(
          absl::StrCat("dup of inherited fd ", inherit[i].key, ": ", std::strerror(errno)));
    }
    staged.emplace_back(d);
    if (!inherit[i].env.empty()) {
      fd_envs.push_back(absl::StrCat(inherit[i].env, "=", base + static_cast<int>(i)));
      continue;
    }
    absl::StrAppend(&described, described.empty() ? "" : ",", inherit[i].key, "=",
                    base + static_cast<int>(i));
  }
  const std::string prefix = absl::StrCat(worker_api::kInheritedFdsEnv, "=");
  std::vector<std::string> envs;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!absl::StartsWith(*e, prefix)) envs.emplace_back(*e);
  }
  if (!described.empty()) envs.push_back(prefix + described);
  for (const auto& e : fd_envs) envs.push_back(e);
  for (const auto& e : env) envs.push_back(e);
  std::vector<char*> cenv;
  for (auto& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  for (size_t i = 0; i < staged.size(); ++i) {
    posix_spawn_file_actions_adddup2(&fa, staged[i].get(), base + static_cast<int>(i));
  }
  posix_spawn_file_actions_addclosefrom_np(&fa, base + static_cast<int>(inherit.size()));
  posix_spawnattr_init(&attr);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2}) sigaddset(&defaults, s);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  short flags = POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (rt_priority > 0) {
    sched_param sp{};
    sp.sched_priority = rt_priority;
    posix_spawnattr_setschedpolicy(&attr, SCHED_FIFO);
    posix_spawnattr_setschedparam(&attr, &sp);
    flags |= POSIX_SPAWN_SETSCHEDULER;
  } else if (rt_priority < 0) {
    sched_param sp{};
    posix_spawnattr_setschedpolicy(&attr, SCHED_OTHER);
    posix_spawnattr_setschedparam(&attr, &sp);
    flags |= POSIX_SPAWN_SETSCHEDULER;
  }
  posix_spawnattr_setflags(&attr, flags);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, args[0], &fa, &attr, args.data(), cenv.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc == EPERM && rt_priority > 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot start ", argv[0], " with SCHED_FIFO priority ", rt_priority, ": ",
                     std::strerror(rc)));
  }
  if (rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot run ", argv[0], ": ", std::strerror(rc)));
  }
  Process p;
  p.pid = pid;
  p.is_child = true;
  // A child cannot be recycled before we reap it, so pidfd_open is race-free.
  p.pidfd.reset(PidfdOpen(pid));
  if (!p.pidfd.valid()) {
    int err = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return absl::InternalError(absl::StrCat("pidfd_open(", pid, "): ", std::strerror(err)));
  }
  ::fcntl(p.pidfd.get(), F_SETFD, FD_CLOEXEC);
  auto ticks = ProcStartTicks(pid);
  p.start_ticks = ticks.ok() ? *ticks : 0;
  return p;
}

absl::Status EndRealtime(const Process& p) {
  if (!p.is_child || p.pid <= 0 || HasExited(p)) return absl::OkStatus();
  // An unreaped child's pid (and its threads' ids) cannot be reused.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(absl::StrCat("/proc/", p.pid, "/task"), ec)) {
    pid_t tid = 0;
    if (!absl::SimpleAtoi(e.path().filename().string(), &tid)) continue;
    int policy = ::sched_getscheduler(tid);
    if (policy < 0) continue;
    policy &= ~SCHED_RESET_ON_FORK;
    if (policy != SCHED_FIFO && policy != SCHED_RR) continue;
    sched_param sp{};
    if (::sched_setscheduler(tid, SCHED_OTHER, &sp) != 0 && errno != ESRCH) {
      return absl::InternalError(
          absl::StrCat("SCHED_OTHER for thread ", tid, " of pid ", p.pid, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Process> AdoptProcess(pid_t pid, uint64_t start_ticks) {
  if (pid <= 0) return absl::NotFoundError("no pid");
  Process p;
  p.pid = pid;
  p.pidfd.reset(PidfdOpen(pid));
  if (!p.pidfd.valid()) {
    return absl::NotFoundError(absl::StrCat("process ", pid, " is gone: ", std::strerror(errno)));
  }
  ::fcntl(p.pidfd.get(), F_SETFD, FD_CLOEXEC);
  // Checked after opening the pidfd: if the start time still matches, the
  // pidfd names the process we recorded.
  auto ticks = ProcStartTicks(pid);
  if (!ticks.ok() || *ticks != start_ticks || HasExited(p)) {
    return absl::NotFoundError(absl::StrCat("process ", pid, " is gone (pid reused or exited)"));
  }
  p.start_ticks = *ticks;
  // It may still be our child (same emud process re-adopting): then reaping works.
  siginfo_t si{};
  p.is_child = ::waitid(static_cast<idtype_t>(P_PIDFD), p.pidfd.get(), &si,
                        WEXITED | WNOHANG | WNOWAIT) == 0;
  return p;
}

absl::Status SignalProcess(const Process& p, int sig) {
  if (!p.pidfd.valid()) return absl::OkStatus();
  if (::syscall(SYS_pidfd_send_signal, p.pidfd.get(), sig, nullptr, 0) != 0 && errno != ESRCH) {
    return absl::InternalError(
        absl::StrCat("signal ", sig, " to pid ", p.pid, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

bool HasExited(const Process& p) {
  if (!p.pidfd.valid()) return true;
  struct pollfd pfd = {p.pidfd.get(), POLLIN, 0};
  return ::poll(&pfd, 1, 0) == 1;
}

std::string ReapAndDescribe(const Process& p) {
  if (!p.is_child) return "exited (exit status unknown: adopted from a previous emud)";
  siginfo_t si{};
  if (::waitid(static_cast<idtype_t>(P_PIDFD), p.pidfd.get(), &si, WEXITED | WNOHANG) != 0) {
    return absl::StrCat("exited (waitid: ", std::strerror(errno), ")");
  }
  switch (si.si_code) {
    case CLD_EXITED:
      return absl::StrCat("exited with status ", si.si_status);
    case CLD_KILLED:
    case CLD_DUMPED:
      return absl::StrCat("killed by signal ", si.si_status, " (", strsignal(si.si_status), ")",
                          si.si_code == CLD_DUMPED ? ", core dumped" : "");
    default:
      return "exited";
  }
}

}  // namespace emud::fdstore
