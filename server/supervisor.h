// Supervisor: the worker processes of emud's devices and when to restart
// them.
//
// One slot per device (Add/Remove) holds its current worker, spawned here
// (Spawn: fdstore::SpawnWithFds plus a memfd for the worker's exit reason,
// base/exit_reason.h) or adopted from a previous emud (Adopt: pid plus /proc
// start time), the device's RestartPolicy streak and its pending restart
// time. A worker's exit is noticed through its pidfd: event_fd() becomes
// readable and TakeExits() reaps every exited worker and says how and why
// each ended. What an exit means (expected, healthy, a full tmpfs) is the
// caller's to decide; it then asks for a restart time (WorkerFailed,
// StoreFull, ScheduleRestart) and starts the worker again when it is due
// (DueRestarts).
//
// The supervisor knows no records, no fd store and no status record: argv,
// inherited fds and environment come from the caller.
//
// Thread safety: not thread-safe. DeviceManager calls it with its mutex
// held; Stop() releases that mutex while it waits for the exit, which the
// caller's event loop (TakeExits) must observe.
#ifndef EMUD_SERVER_SUPERVISOR_H_
#define EMUD_SERVER_SUPERVISOR_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "fdstore/process.h"
#include "server/restart_policy.h"

namespace emud::server {

struct SupervisorOptions {
  RestartPolicyOptions restart;
  // SIGTERM to SIGKILL grace period when stopping a worker.
  absl::Duration stop_timeout = absl::Seconds(5);
  // > 0: a worker starts SCHED_FIFO at this priority (fdstore::SpawnWithFds)
  // and drops it after its first frame (dataplane/startup_priority.h); the
  // supervisor takes it back after startup_rt_max whatever the worker did.
  // A spawn the kernel refuses it to (no CAP_SYS_NICE) runs without it, and
  // so do all later ones.
  int startup_rt_priority = 0;
  absl::Duration startup_rt_max = absl::Milliseconds(200);
  // Standby workers (fdstore/standby.h): one per running device, due
  // standby_delay after its worker started (DeviceManager also waits until
  // the worker serves, so that a standby never competes with a starting
  // worker for the CPU); Spawn(..., use_standby) promotes it. A standby
  // that dies is started again after standby_retry_initial, doubling up to
  // standby_retry_max while they die before becoming ready.
  bool standby_workers = false;
  absl::Duration standby_delay = absl::ZeroDuration();
  absl::Duration standby_retry_initial = absl::Seconds(1);
  absl::Duration standby_retry_max = absl::Seconds(60);
  // The clock of the schedules (a worker's start, its restart and standby
  // due times, the end of its start-up priority); nullptr: absl::Now. A seam
  // so tests decide when a backoff has elapsed instead of racing the
  // machine's load. Stop's SIGTERM/SIGKILL waits are always real time.
  absl::Time (*now)() = nullptr;
};

class Supervisor {
 public:
  // Creates the epoll set that watches the workers' pidfds.
  static absl::StatusOr<std::unique_ptr<Supervisor>> Create(SupervisorOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Readable while a watched worker has exited and was not taken yet
  // (TakeExits). For the caller's event loop (epoll, level-triggered).
  int event_fd() const { return epoll_.get(); }

  // A slot for `device`, with no worker and a fresh restart policy. Adding an
  // existing device is a no-op.
  void Add(const std::string& device);
  // Forgets the device. Its worker, if any, must have exited and been taken.
  void Remove(const std::string& device);

  // Starts `argv` (absolute binary) as the device's worker with `inherit`
  // (plus its exit-reason memfd under base/exit_reason.h's variable) and
  // `env`, and watches it. Cancels a pending restart. Requires a slot
  // without a running worker. Errors are the spawner's; the slot then has
  // no worker.
  //
  // With `use_standby` (a restart after a crash) and a ready standby of the
  // same argv whose binary file is unchanged since it was started, the
  // standby is promoted instead (fdstore::SendPromotion of `inherit`, the
  // exit-reason memfd and `env`): no fork, no exec. A standby of another
  // argv or binary is discarded first; one not ready yet is kept and the
  // worker is spawned. Either way the result is the device's worker, the
  // same to everything else (pid, pidfd, exits, restart policy).
  absl::Status Spawn(const std::string& device, const std::vector<std::string>& argv,
                     std::vector<fdstore::InheritedFd> inherit,
                     const std::vector<std::string>& env, bool use_standby = false);
  // Whether the device's last Spawn promoted its standby.
  bool promoted(const std::string& device) const;

  // Standby workers (SupervisorOptions::standby_workers). A standby is
  // `argv` plus --standby-fd=3, spawned SCHED_OTHER with nothing but its go
  // channel: it holds none of the device's fds, its state or its socket.
  // Its exit is handled here (logged, started again later), never reported
  // by TakeExits or counted by the restart policy. Requires a slot with a
  // running worker and no standby.
  absl::Status SpawnStandby(const std::string& device, const std::vector<std::string>& argv);
  // SpawnStandby in three steps, so that the spawn itself (posix_spawn, which
  // can take 5-20 ms in a big multi-threaded process) runs outside the
  // caller's lock and event loop: Prepare reserves the device's standby
  // (none is due meanwhile) and makes the go channel; Launch spawns (no
  // supervisor state: any thread, no lock); Install makes the result the
  // device's standby, unless the reservation was discarded meanwhile (an
  // upgrade, a delete, a promotion's fallback...): then it is killed.
  struct StandbyLaunch {
    std::string device;
    uint64_t reservation = 0;
    std::vector<std::string> argv;  // with the standby flag
    UniqueFd theirs;                // the standby's end of the go channel
  };
  absl::StatusOr<StandbyLaunch> PrepareStandby(const std::string& device,
                                               const std::vector<std::string>& argv);
  static absl::StatusOr<fdstore::Process> LaunchStandby(const StandbyLaunch& launch);
  absl::Status InstallStandby(const StandbyLaunch& launch, absl::StatusOr<fdstore::Process> proc);
  // Whether `launch` is still its device's reservation (false once the
  // device was deleted, upgraded or reset after PrepareStandby): a spawner
  // checks it before forking, so no process is started for a device that is
  // already gone.
  bool StandbyLaunchCurrent(const StandbyLaunch& launch);
  // Kills and reaps the device's standby, if any (an upgrade, a reset, a
  // delete, a handover: nothing may promote what was started before), and
  // starts the next one no earlier than `next` (InfiniteFuture: not until
  // the device's worker is started again).
  void DiscardStandby(const std::string& device, absl::Time next = absl::InfiniteFuture());
  void DiscardAllStandbys();
  // The device's standby's pid, 0 if none.
  pid_t standby_pid(const std::string& device) const;
  // Whether the device's standby said it is ready (reads its go channel).
  bool StandbyReady(const std::string& device);
  // Devices with a running worker, no standby and a standby due at `now`.
  std::vector<std::string> DueStandbys(absl::Time now) const;
  // The earliest due standby, if any.
  std::optional<absl::Time> NextStandby() const;
  // When the device's next standby is due (InfiniteFuture: none is: off, no
  // running worker, or it has one).
  absl::Time standby_due(const std::string& device) const;
  // Takes over the running `pid` whose /proc start time is `start_ticks`
  // (a worker of a previous emud) and watches it. NOT_FOUND if it is gone.
  absl::Status Adopt(const std::string& device, pid_t pid, uint64_t start_ticks);

  // The device's worker: pid (0 if none or no such device), /proc start
  // time, and when it was started or adopted (absl::Time() after an
  // unexpected exit).
  pid_t pid(const std::string& device) const;
  uint64_t start_ticks(const std::string& device) const;
  absl::Time started(const std::string& device) const;

  struct Exit {
    std::string device;
    pid_t pid = 0;
    // "exited with status 1", "killed by signal 9 (Killed)", ...
    std::string how;
    // What the worker wrote before it gave up (base/exit_reason.h); empty if
    // nothing (or for an adopted worker).
    std::string said;
    // Stop() asked for this exit.
    bool requested = false;
  };
  // Reaps every watched worker that has exited (as epoll reports them);
  // their slots have no worker afterwards.
  std::vector<Exit> TakeExits();

  // Stops the device's worker: SIGTERM, SIGKILL after stop_timeout (or at
  // `deadline`, if earlier), then waits up to 3 s more. Releases `mu` while
  // waiting; the exit counts once TakeExits (run under `mu` by the caller's
  // event loop) took it. OK at once if there is no worker; UNAVAILABLE if
  // it survived SIGKILL. The device's slot must not be removed meanwhile.
  absl::Status Stop(const std::string& device, absl::Time deadline, absl::Mutex& mu)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Stops every worker at once (emud's shutdown): SIGTERM to all, SIGKILL to
  // those still running after stop_timeout, reaping each. Returns the
  // devices whose worker was stopped.
  std::vector<std::string> StopAll();

  // Applies the restart policy to an unexpected exit (or failed start) of
  // the device's worker (restart_policy.h). Unless it gives up, the restart
  // is due after the decision's delay (DueRestarts).
  RestartPolicy::Decision WorkerFailed(const std::string& device, bool healthy,
                                       bool guest_connected);
  // The worker exited because the state tmpfs (or memory) is full: not a
  // crash loop, retried at a pace (100 ms-ish with a guest connected, 1 s
  // otherwise). Returns the delay and whether this is the first such exit
  // since the last other exit (log it once per episode).
  struct Retry {
    absl::Duration delay;
    bool first = false;
  };
  Retry StoreFull(const std::string& device, bool guest_connected);
  // Restarts from here on are not for a full tmpfs (a new episode logs again).
  void ClearStoreFull(const std::string& device);
  // Forgets the device's streak of unhealthy exits (a reset).
  void ResetPolicy(const std::string& device);
  int consecutive_failures(const std::string& device) const;

  // Pending restarts: cancel one, or all (a handover stops restarting).
  void CancelRestart(const std::string& device);
  void CancelAllRestarts();
  // When the device's worker is to be restarted, if it is.
  std::optional<absl::Time> restart_at(const std::string& device) const;
  // The earliest pending restart, if any.
  std::optional<absl::Time> NextRestart() const;
  // Ends the real-time start of workers spawned startup_rt_max ago or more
  // (fdstore::EndRealtime), and says when the next one is due.
  std::optional<absl::Time> EndStartupPriorities(absl::Time now);
  // Whether workers still start with a real-time priority.
  int startup_rt_priority() const { return rt_priority_; }
  // Devices with no worker whose restart is due at `now`, in device order.
  std::vector<std::string> DueRestarts(absl::Time now) const;

 private:
  // A standby worker: killed and reaped when destroyed (unless promoted,
  // which moves proc out). Reserved (PrepareStandby) but not installed yet:
  // no proc.
  struct Standby {
    uint64_t reservation = 0;
    uint64_t id = 0;  // epoll data of its pidfd (0 until installed)
    fdstore::Process proc;
    UniqueFd go;  // emud's end of the go channel
    std::vector<std::string> argv;  // without the standby flag
    std::string binary_identity;    // of argv[0] when it was spawned
    bool ready = false;
    Standby() = default;
    Standby(const Standby&) = delete;
    Standby& operator=(const Standby&) = delete;
    ~Standby();
  };
  struct Slot {
    uint64_t id = 0;  // epoll data of its pidfd
    fdstore::Process proc;
    absl::Time started;
    bool stopping = false;
    std::optional<absl::Time> restart_at;
    RestartPolicy policy;
    UniqueFd exit_reason;
    bool store_full = false;
    std::optional<absl::Time> rt_until;  // started real-time; taken back then
    std::unique_ptr<Standby> standby;
    // When to start the next standby (with a running worker).
    absl::Time standby_due = absl::InfiniteFuture();
    int standby_failures = 0;  // standbys in a row that died before ready
    // No standby before this (the backoff after one died), whatever
    // standby_due says.
    absl::Time standby_not_before = absl::InfinitePast();
    bool promoted = false;
  };
  explicit Supervisor(SupervisorOptions options)
      : options_(std::move(options)), rt_priority_(options_.startup_rt_priority) {}
  absl::Time Now() const { return options_.now != nullptr ? options_.now() : absl::Now(); }
  Slot* Find(const std::string& device);
  const Slot* Find(const std::string& device) const;
  void Watch(Slot& s);
  // Tries to promote the slot's standby; false (the standby kept or
  // discarded) if it cannot be.
  bool PromoteLocked(const std::string& device, Slot& s, const std::vector<std::string>& argv,
                     const std::vector<fdstore::InheritedFd>& inherit,
                     const std::vector<std::string>& env);
  void StandbyExited(const std::string& device, Slot& s);
  static bool CheckReady(Standby& sb);

  const SupervisorOptions options_;
  UniqueFd epoll_;
  std::map<std::string, std::unique_ptr<Slot>> slots_;
  uint64_t next_id_ = 1;
  int rt_priority_ = 0;
};

}  // namespace emud::server

#endif  // EMUD_SERVER_SUPERVISOR_H_
