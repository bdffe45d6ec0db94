// Processes that hold a device's fds: spawning a successor with the fds it
// inherits (the one spawner of the project), adopting a running process by
// pid, signalling and reaping through a pidfd. The child's side of the
// inheritance is TakeInheritedFds (fdstore/fd_store.h).
#ifndef EMUD_FDSTORE_PROCESS_H_
#define EMUD_FDSTORE_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace emud::fdstore {

struct Process {
  pid_t pid = 0;
  UniqueFd pidfd;            // readable once the process has exited
  uint64_t start_ticks = 0;  // /proc/PID/stat field 22, guards against pid reuse
  bool is_child = false;     // only children can be reaped (exit status known)
};

// A descriptor handed to a child: `fd` (borrowed) appears in the child as
// the next free number from 3 up, described by EMUD_FDS="key=3,key=4,..."
// (worker_api::kInheritedFdsEnv; the child takes them with TakeInheritedFds).
// With `env` set, the fd is not listed in EMUD_FDS; the child finds its
// number in the environment variable `env` instead.
struct InheritedFd {
  std::string key;
  int fd = -1;
  std::string env;
};

// Starts `argv[0]` (an absolute path) with `argv` in a new session (so a
// terminal's ^C or emud's own death does not reach it), with only
// `inherit` open above descriptor 2 (EMUD_FDS set if any), default signal
// dispositions, an empty signal mask and emud's environment plus `env`
// (NAME=VALUE). Uses posix_spawn, so it is safe in a multi-threaded parent.
// Returns the child with a pidfd. INVALID_ARGUMENT for a relative path or a
// key fdstore::ValidateKey refuses; FAILED_PRECONDITION if the binary cannot
// be run.
//
// With `rt_priority` > 0 the child runs SCHED_FIFO at that priority from
// before its exec (POSIX_SPAWN_SETSCHEDULER): a successor worker's start is
// then not queued behind the machine's other work. The child must drop it
// itself (dataplane/startup_priority.h), and the caller bounds it
// (EndRealtime). Spawning fails with PERMISSION_DENIED if the caller may not
// grant it (no CAP_SYS_NICE, RLIMIT_RTPRIO).
// With `rt_priority` < 0 the child runs SCHED_OTHER whatever the calling
// thread runs (a standby worker spawned from emud's real-time loop); 0
// leaves the calling thread's policy to the child.
absl::StatusOr<Process> SpawnWithFds(const std::vector<std::string>& argv,
                                     const std::vector<InheritedFd>& inherit = {},
                                     const std::vector<std::string>& env = {},
                                     int rt_priority = 0);

// Puts every thread of the live child `p` that runs a real-time policy back
// to SCHED_OTHER (its nice value is kept). For a child spawned with
// rt_priority that did not drop it in time (an older binary, a start that
// hangs). OK if the process is gone.
absl::Status EndRealtime(const Process& p);

// Takes a running process (not necessarily a child) whose start time must be
// `start_ticks`. NOT_FOUND if the pid is gone or now names another process.
absl::StatusOr<Process> AdoptProcess(pid_t pid, uint64_t start_ticks);

// Start time of `pid` in clock ticks since boot.
absl::StatusOr<uint64_t> ProcStartTicks(pid_t pid);

// Whether `pid` is gone: no such process, or a zombie (exited, not yet
// reaped), which holds no fds any more.
bool ProcessGone(pid_t pid);

// Sends `sig` through the pidfd (never hits a recycled pid). Sending to a
// process that has already exited is not an error.
absl::Status SignalProcess(const Process& p, int sig);

// True if the pidfd is readable (the process has exited).
bool HasExited(const Process& p);

// Reaps an exited child and describes how it ended ("exited with status 3",
// "killed by signal 9 (Killed)"); for an adopted process, whose status only
// its real parent can read, says so.
std::string ReapAndDescribe(const Process& p);

}  // namespace emud::fdstore

#endif  // EMUD_FDSTORE_PROCESS_H_
