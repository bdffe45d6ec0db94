// DeviceManager: emud's model of its devices and the supervisor of their
// workers.
//
// Devices are DeviceRecords in emud's control environment
// (state_store::ControlEnvDir, table "devices"). Each device has one worker
// process (emud-worker) started with the command-line contract
//
//   WORKER --device NAME --state-dir DIR --socket PATH --mac MAC --queues N
//          --backend SPEC --doorbell trap|mmap
//
// An event loop thread watches every worker's pidfd (its exit is noticed at
// once) and, through inotify, the worker's device environment, where the
// worker publishes its WorkerStatus record; the device's phase, virtchnl
// version and counters come from that record. A worker that exits
// unexpectedly after it was serving is restarted at once, however often; one
// that dies before serving is restarted with bounded backoff and a streak of
// them marks the device FAILED with the reason (RestartPolicy).
//
// Restart of emud: Start() loads every record. A worker whose recorded pid
// is still alive with the recorded start time is adopted (the guest keeps
// its connection); a worker that died meanwhile is restarted and counted.
// On shutdown workers keep running unless stop_workers_on_exit is set.
//
// The fd store (fdstore/): emud holds duplicates of the descriptors each
// worker deposits (vfio-user sockets, guest memory, eventfds, ...), so that a
// successor gets the very same kernel objects. Every worker is started with
// its end of a SOCK_SEQPACKET channel inherited under fdstore::kChannelKey,
// followed by every fd held for its device under their keys (EMUD_FDS), and
// with fdstore::kStoreSocketEnv naming the store's listening socket
// (<state-dir>/fdstore.sock) so that, after emud restarts, it can reconnect
// and re-deposit. A reconnecting channel must come from the device's current
// worker (SO_PEERCRED). The held keys are recorded in the control
// environment (table "fds"); deleting a device releases its fds.
//
// Thread safety: every public method may be called from any thread
// (gRPC handlers); they serialise on one mutex, released while waiting for a
// worker to stop.
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
#include "server/metrics.h"
#include "fdstore/process.h"
#include "server/restart_policy.h"
#include "base/unique_fd.h"
#include "fdstore/fd_store.h"
#include "fdstore/keeper.h"
#include "server/validation.h"
#include "server/worker_status_reader.h"
#include "state_store/record.h"
#include "state_store/store.h"

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
  // Test hook: number of fds the store holds for the device.
  size_t FdsHeldForTest(const std::string& name);
  // Path of the fd store's listening socket.
  std::string FdStoreSocket() const { return options_.state_dir + "/fdstore.sock"; }

 private:
  struct Dev {
    uint64_t id = 0;
    emud::internal::DeviceRecord rec;
    fdstore::Process proc;  // pid 0 = no worker
    absl::Time started;
    bool stopping = false;  // we asked the worker to exit: not a crash
    bool deleting = false;
    bool busy = false;  // an operation waits for the worker with the lock released
    std::optional<absl::Time> restart_at;
    RestartPolicy policy;
    std::unique_ptr<WorkerStatusReader> reader;
    int watch = -1;  // inotify watch descriptor
    bool dirty = false;
    std::optional<emud::internal::WorkerStatus> status;
    emud::v1::Phase phase = emud::v1::PHASE_UNSPECIFIED;
    absl::Time phase_time;
    std::string last_emitted;  // serialized Device of the last event
    // Worker phases published since the last notification that the current
    // phase hides (short-lived ones); NotifyLocked reports them in order.
    std::vector<emud::v1::Phase> missed_phases;
    uint64_t seen_phase_seq = 0;
    uint64_t channel_id = 0;   // fd-store channel of the worker we spawned
    std::set<std::string> recorded_fds;  // keys in the "fds" table
    UniqueFd exit_reason;  // the spawned worker's last words (base/exit_reason.h)
    bool store_full_logged = false;  // one log line per full-tmpfs episode
  };
  struct Channel {
    UniqueFd fd;         // emud's end, non-blocking
    std::string device;  // preset for spawned channels; set by HELLO otherwise
  };

  DeviceManager(ManagerOptions options, Metrics* metrics)
      : options_(std::move(options)), metrics_(metrics) {}

  Dev* FindLocked(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Dev& AddDevLocked(emud::internal::DeviceRecord rec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PersistLocked(const Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartWorkerLocked(Dev& d, bool count_restart) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies the restart policy to an unexpected exit (or failed spawn).
  void WorkerFailedLocked(Dev& d, const std::string& reason, bool healthy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleExitLocked(Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // emud's reserve of tmpfs space for deletes on a full tmpfs.
  void EnsureReserve();
  bool ReleaseReserve();
  // A worker that exited because the state tmpfs (or memory) is full.
  void StoreFullLocked(Dev& d, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stops d's worker (SIGTERM, SIGKILL after the stop timeout or deadline).
  // Releases mu_ while waiting; d.busy must be set by the caller.
  absl::Status StopWorkerLocked(Dev& d, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Re-reads the worker's status record. kChanged: anything but its
  // timestamp changed (metrics are updated; the caller notifies watchers).
  enum class Refresh { kNothingNew, kTimestampOnly, kChanged };
  Refresh RefreshLocked(Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  emud::v1::Phase PhaseLocked(const Dev& d) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  emud::v1::Device BuildLocked(const Dev& d) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Updates phase bookkeeping and emits an event if the device changed.
  void NotifyLocked(Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EmitLocked(emud::v1::DeviceEvent::Kind kind, const emud::v1::Device& dev)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdatePhaseGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Loop();
  void AcceptChannelsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleChannelLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseChannelLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SyncFdRecordsLocked(Dev& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keys held for the device, wherever the store lives.
  std::vector<std::string> HeldKeysLocked(const std::string& device)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After the keeper restarted: tell it the running workers' tokens.
  void ReadoptTokensLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Wake();
  absl::Status CheckAcceptingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ManagerOptions options_;
  Metrics* const metrics_;
  std::unique_ptr<state_store::Env> control_;
  const state_store::RecordTable<emud::internal::DeviceRecord> devices_table_{"devices"};
  const state_store::RecordTable<emud::internal::FdRecord> fds_table_{"fds"};

  UniqueFd epoll_, wake_, inotify_, store_listen_;
  std::thread loop_;
  bool started_ = false;

  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Dev>> devs_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Dev*> by_id_ ABSL_GUARDED_BY(mu_);
  std::map<int, Dev*> by_watch_ ABSL_GUARDED_BY(mu_);
  fdstore::FdStore store_ ABSL_GUARDED_BY(mu_);  // unused with a keeper
  std::unique_ptr<fdstore::KeeperClient> keeper_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::unique_ptr<Channel>> channels_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 16;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool handing_over_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_loop_ ABSL_GUARDED_BY(mu_) = false;
  // Watch events: events_[i] has sequence number first_seq_ + i.
  std::deque<emud::v1::DeviceEvent> events_ ABSL_GUARDED_BY(mu_);
  uint64_t first_seq_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace emud::server

#endif  // EMUD_SERVER_DEVICE_MANAGER_H_
