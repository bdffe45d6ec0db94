// DeviceManager: emud's registry of its devices and the API over it.
//
// Devices are DeviceRecords in emud's control environment
// (state_store::ControlEnvDir, table "devices"). Each device has one worker
// process (emud-worker) started with the command-line contract of
// worker_api::WorkerArgs. The manager composes three parts and keeps the
// records, the watch events and the API on top of them:
//
//  - Supervisor (server/supervisor.h): spawns, adopts, stops and reaps the
//    workers (pidfds) and applies the restart policy: a worker that exits
//    unexpectedly after it was serving is restarted at once, however often;
//    one that dies before serving is restarted with bounded backoff and a
//    streak of them marks the device FAILED with the reason (RestartPolicy).
//  - FdStoreHost (server/fd_store_host.h): the fd store, in emud or in
//    emud-keeper. Every worker is started with its end of a SOCK_SEQPACKET
//    channel inherited under fdstore::kChannelKey, followed by every fd held
//    for its device under their keys (EMUD_FDS), and with
//    fdstore::kStoreSocketEnv naming where it reconnects and re-deposits
//    after emud (or the keeper) restarts. Keys held in emud are recorded in
//    the control environment (table "fds"); deleting a device releases its
//    fds.
//  - StatusWatcher (server/status_watcher.h): the WorkerStatus record each
//    worker publishes in its device environment; the device's phase,
//    virtchnl version and counters come from that record.
//
// One event loop thread waits on the three parts' event fds and a wake
// eventfd, and runs due restarts and status reads.
//
// Restart of emud: Start() loads every record. A worker whose recorded pid
// is still alive with the recorded start time is adopted (the guest keeps
// its connection); a worker that died meanwhile is restarted and counted.
// On shutdown workers keep running unless stop_workers_on_exit is set.
//
// Thread safety: every public method may be called from any thread
// (gRPC handlers); they serialise on one mutex (the parts are driven under
// it), released while waiting for a worker to stop. An operation that waits
// marks its device busy; a second one on the same device is ABORTED.
#ifndef EMUD_SERVER_DEVICE_MANAGER_H_
#define EMUD_SERVER_DEVICE_MANAGER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/device_record.pb.h"
#include "proto/emud_v1.pb.h"
#include "proto/worker_status.pb.h"
#include "base/unique_fd.h"
#include "server/fd_store_host.h"
#include "server/metrics.h"
#include "server/restart_policy.h"
#include "server/status_watcher.h"
#include "server/supervisor.h"
#include "server/validation.h"
#include "state_store/record.h"
#include "state_store/store.h"
#include "worker_api/restart_trace.h"

namespace emud::server {

struct ManagerOptions {
  std::string state_dir;
  // Where default vfio-user sockets go (<socket_dir>/<name>/vfio-user.sock).
  std::string socket_dir;
  // Group of sockets whose request names none (emud --socket-group).
  std::optional<uint32_t> socket_group;
  // Further directories explicit socket paths may lie under (emud
  // --socket-roots); socket_dir always is one.
  std::vector<std::string> socket_roots;
  // Absolute path of emud-worker.
  std::string worker_binary;
  // Lets UpgradeWorker name another worker binary.
  bool allow_worker_override = false;
  // Data-path threads of every worker (emud --datapath-threads; the worker
  // uses at most one per queue pair). 1: the event loop serves every queue.
  int datapath_threads = 1;
  RestartPolicyOptions restart;
  // SIGTERM to SIGKILL grace period when stopping a worker.
  absl::Duration worker_stop_timeout = absl::Seconds(5);
  // Stop workers when emud shuts down (default: leave them serving, a new
  // emud re-adopts them).
  bool stop_workers_on_exit = false;
  // Minimum interval between two reads of a busy worker's status record.
  absl::Duration status_refresh_interval = absl::Milliseconds(20);
  // emud-keeper's socket: the fd store lives there, outside emud's
  // container (fdstore/keeper.h). Empty: emud hosts the fd store itself.
  std::string fd_keeper;
  // How long Start() waits for the keeper to answer.
  absl::Duration fd_keeper_wait = absl::Seconds(30);
  // > 0: the SCHED_FIFO priority of emud's supervision loop (it wakes for a
  // worker's exit and spawns the successor) and of a starting worker until
  // its first frame, at most 200 ms (SupervisorOptions). 0: neither. Without
  // CAP_SYS_NICE both run without it (logged once).
  int startup_rt_priority = 1;
  // A standby worker per running device (fdstore/standby.h): exec'd and
  // initialised ahead of need, promoted when the device's worker dies
  // instead of spawning its successor (SupervisorOptions).
  bool standby_workers = true;
};

class DeviceManager {
 public:
  // Opens (creating) the control environment under options.state_dir.
  // `metrics` must outlive the manager.
  static absl::StatusOr<std::unique_ptr<DeviceManager>> Open(ManagerOptions options,
                                                             Metrics* metrics);
  ~DeviceManager();

  // Loads every device, adopts or starts its worker and starts the event
  // loop. Call once. With `take_over` (a handover from a running emud,
  // server/handover.h), each device is first released by it through
  // take_over(name), then started here as a live upgrade.
  absl::Status Start(std::function<absl::Status(const std::string&)> take_over = nullptr);

  // Handing over to a successor emud (server/handover.h): refuse API
  // mutations and stop restarting workers; FAILED_PRECONDITION without a
  // keeper (the fds would die with this emud's container).
  absl::Status BeginHandover();
  // Stops the device's worker for the successor and forgets it.
  absl::Status ReleaseForSuccessor(const std::string& name);
  // The successor went away before finishing: supervise what is left again.
  void AbortHandover();
  // Refuses new requests and ends every watch. Idempotent.
  void BeginShutdown();
  // BeginShutdown, stops the event loop and, if configured, the workers.
  void Shutdown();

  absl::StatusOr<emud::v1::Device> CreateDevice(const emud::v1::CreateDeviceRequest& req);
  absl::StatusOr<emud::v1::Device> GetDevice(const std::string& name);
  std::vector<emud::v1::Device> ListDevices();
  // See DeviceService.DeleteDevice. `deadline` bounds the wait for the
  // worker to exit.
  absl::Status DeleteDevice(const std::string& name, bool force, absl::Time deadline);
  absl::StatusOr<emud::v1::Device> ResetDevice(const std::string& name, absl::Time deadline);
  absl::StatusOr<emud::v1::DeviceStats> GetDeviceStats(const std::string& name);
  absl::StatusOr<emud::v1::Device> UpgradeWorker(const std::string& name,
                                                 const std::string& worker_binary,
                                                 absl::Time deadline);

  // Watching. Snapshot returns every device and the cursor of the first
  // event after it; WaitForEvents appends the events at and after *cursor
  // (advancing it), waiting up to `timeout` for one.
  enum class WaitResult { kEvents, kTimeout, kShutdown, kFellBehind };
  std::vector<emud::v1::Device> Snapshot(uint64_t* cursor);
  WaitResult WaitForEvents(uint64_t* cursor, std::vector<emud::v1::DeviceEvent>* out,
                           absl::Duration timeout);

  // Test hook: pid of the device's worker, 0 if none.
  pid_t WorkerPidForTest(const std::string& name);
  // Test hook: pid of the device's standby worker, 0 if none.
  pid_t StandbyPidForTest(const std::string& name);
  // Test hook: the device's standby said it is ready to be promoted.
  bool StandbyReadyForTest(const std::string& name);
  // Test hook: number of fds the store holds for the device.
  size_t FdsHeldForTest(const std::string& name);
  // Path of the fd store's listening socket.
  std::string FdStoreSocket() const { return options_.state_dir + "/fdstore.sock"; }

 private:
  // A device in the registry; its worker, fds and status record are the
  // parts' (keyed by rec.name()).
  struct Dev {
    emud::internal::DeviceRecord rec;
    bool deleting = false;
    bool busy = false;  // an operation waits for the worker with the lock released
    emud::v1::Phase phase = emud::v1::PHASE_UNSPECIFIED;
    absl::Time phase_time;
    std::string last_emitted;  // serialized Device of the last event
    std::set<std::string> recorded_fds;  // keys in the "fds" table
  };
  // Marks a device busy for one operation; clears the mark when destroyed
  // (with mu_ held) unless Release()d (the device was erased).
  class BusyGuard {
   public:
    explicit BusyGuard(Dev& d) : d_(&d) { d.busy = true; }
    ~BusyGuard() {
      if (d_ != nullptr) d_->busy = false;
    }
    BusyGuard(const BusyGuard&) = delete;
    BusyGuard& operator=(const BusyGuard&) = delete;
    void Release() { d_ = nullptr; }

   private:
    Dev* d_;
  };

  DeviceManager(ManagerOptions options, Metrics* metrics)
      : options_(std::move(options)), metrics_(metrics) {}

  // The preamble of every operation that changes a device: emud accepts
  // mutations (CheckAcceptingLocked), the device exists (NOT_FOUND) and no
  // other operation waits on it (ABORTED).
  absl::StatusOr<Dev*> FindForChangeLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Dev* FindLocked(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Start's first step: the event loop's epoll and wake fd, the supervisor,
  // the status watcher and the fd-store host.
  absl::Status OpenParts();
  // Start's step per loaded device: a FAILED device stays down; with
  // `take_over` the running emud releases the device and a worker starts
  // here; a recorded worker still running is adopted; any other is started.
  // Fails only if take_over fails.
  absl::Status ResumeWorkerLocked(Dev& d,
                                  const std::function<absl::Status(const std::string&)>& take_over)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Dev& AddDevLocked(emud::internal::DeviceRecord rec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PersistLocked(const Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartWorkerLocked(Dev& d, bool count_restart) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the device is to have a standby worker now: standbys on, emud
  // neither handing over nor shutting down, the device neither FAILED,
  // deleted nor busy, and its worker serving (its status record published:
  // a standby started earlier would compete with the worker's start).
  bool StandbyWantedLocked(const Dev& d) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The device's worker command line (worker_api::WorkerArgs::ToArgv).
  std::vector<std::string> WorkerArgvLocked(const Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies the restart policy to an unexpected exit (or failed spawn).
  void WorkerFailedLocked(Dev& d, const std::string& reason, bool healthy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleExitLocked(Dev& d, const Supervisor::Exit& exit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // emud's reserve of tmpfs space for deletes on a full tmpfs.
  void EnsureReserve();
  bool ReleaseReserve();
  // A worker that exited because the state tmpfs (or memory) is full.
  void StoreFullLocked(Dev& d, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The fd store holds the device's client connection.
  bool GuestConnectedLocked(const Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stops d's worker (Supervisor::Stop). Releases mu_ while waiting; d must
  // be busy.
  absl::Status StopWorkerLocked(Dev& d, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Re-reads the worker's status record (StatusWatcher::Read).
  StatusWatcher::Refresh RefreshLocked(Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The current worker's status record; null if none or a previous worker's.
  const emud::internal::WorkerStatus* CurrentStatusLocked(const Dev& d) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  emud::v1::Phase PhaseLocked(const Dev& d) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  emud::v1::Device BuildLocked(const Dev& d) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Updates phase bookkeeping and emits an event if the device changed.
  void NotifyLocked(Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EmitLocked(emud::v1::DeviceEvent::Kind kind, const emud::v1::Device& dev)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdatePhaseGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Loop();
  // The standby spawner: spawns the standbys the loop reserved
  // (Supervisor::PrepareStandby) outside mu_ and the loop, then installs
  // them under mu_. posix_spawn can take 5-20 ms in emud; the loop must
  // not wait for it while a worker may die.
  void StandbySpawner();
  // One round of the loop's timed work: status reads, the fds-held gauge,
  // due restarts.
  void RunDueLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records the device's held keys in the "fds" table.
  void SyncFdRecordsLocked(Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Wake();
  absl::Status CheckAcceptingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ManagerOptions options_;
  Metrics* const metrics_;
  std::unique_ptr<state_store::Env> control_;
  const state_store::RecordTable<emud::internal::DeviceRecord> devices_table_{"devices"};
  const state_store::RecordTable<emud::internal::FdRecord> fds_table_{"fds"};

  UniqueFd epoll_, wake_;
  std::thread loop_;
  std::thread standby_spawner_;
  // Lock order: mu_, then standby_mu_ (the spawner never holds both).
  absl::Mutex standby_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::deque<Supervisor::StandbyLaunch> standby_jobs_ ABSL_GUARDED_BY(standby_mu_);
  bool standby_stop_ ABSL_GUARDED_BY(standby_mu_) = false;
  bool started_ = false;

  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Dev>> devs_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Supervisor> supervisor_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<FdStoreHost> fd_host_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<StatusWatcher> watcher_ ABSL_GUARDED_BY(mu_);
  absl::Time next_gauge_poll_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool handing_over_ ABSL_GUARDED_BY(mu_) = false;
  // While the loop handles a worker's exit: when it woke for it and took
  // mu_ (worker_api/restart_trace.h); a restart started from there hands
  // them to the successor.
  std::optional<worker_api::RestartTrace> exit_trace_ ABSL_GUARDED_BY(mu_);
  bool stop_loop_ ABSL_GUARDED_BY(mu_) = false;
  // Watch events: events_[i] has sequence number first_seq_ + i.
  std::deque<emud::v1::DeviceEvent> events_ ABSL_GUARDED_BY(mu_);
  uint64_t first_seq_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace emud::server

#endif  // EMUD_SERVER_DEVICE_MANAGER_H_
