// StatusWatcher: follows the WorkerStatus record each device's worker
// publishes in its device environment (worker_api/status_record.h), read
// read-only through WorkerStatusReader.
//
// When to read: inotify on each device environment's data.mdb marks the
// device dirty; Poll() then reads dirty devices at once, but at most
// `burst` times back to back and then once per `refresh_interval` (a busy
// worker commits continuously). LMDB publishes a commit after its last
// write event, so a device read on an event is read once more `settle`
// later; and every device is read every `fallback` as a safety net.
//
// What is kept per device: the last record read, and the phases the worker
// went through between two reads other than its current one (a worker
// numbers its phase changes and keeps the last eight, so even a phase
// shorter than the read interval is seen: TakeMissedPhases).
//
// Thread safety: not thread-safe; DeviceManager calls it with its mutex held.
#ifndef EMUD_SERVER_STATUS_WATCHER_H_
#define EMUD_SERVER_STATUS_WATCHER_H_

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "proto/worker_status.pb.h"
#include "server/worker_status_reader.h"

namespace emud::server {

struct StatusWatcherOptions {
  // Root of the device environments (state_store::DeviceEnvDir).
  std::string state_dir;
  // Minimum interval between read rounds once `burst` rounds ran back to back.
  absl::Duration refresh_interval = absl::Milliseconds(20);
  int burst = 8;
  absl::Duration settle = absl::Milliseconds(10);
  absl::Duration fallback = absl::Seconds(2);
  // The clock of the first fallback's due time (Create); nullptr: absl::Now.
  // Poll and NextPoll use the caller's `now`. A seam so tests decide when the
  // fallback is due instead of racing the machine's load.
  absl::Time (*now)() = nullptr;
};

class StatusWatcher {
 public:
  // Creates the inotify instance. `on_record` (may be null) is called with
  // every record that changed in more than its timestamp (metrics).
  using RecordCallback =
      std::function<void(const std::string& device, const emud::internal::WorkerStatus&)>;
  static absl::StatusOr<std::unique_ptr<StatusWatcher>> Create(StatusWatcherOptions options,
                                                               RecordCallback on_record);
  ~StatusWatcher();
  StatusWatcher(const StatusWatcher&) = delete;
  StatusWatcher& operator=(const StatusWatcher&) = delete;

  // Readable when a watched environment changed (and reading is not paused
  // by the rate limit). For the caller's event loop (level-triggered).
  int event_fd() const { return epoll_.get(); }
  // Takes the pending change notifications (marks their devices dirty).
  void HandleEvents();

  // Starts following `device`: creates its environment directory if needed
  // and watches it. If inotify refuses, the device is read by Poll's
  // fallback only (logged).
  void Watch(const std::string& device);
  // Stops following `device` and closes its environment (before its
  // directory is removed).
  void Unwatch(const std::string& device);

  // Re-reads the device's record. `worker_pid` is its current worker (0 if
  // none): only that worker's phase history feeds TakeMissedPhases.
  enum class Refresh { kNothingNew, kTimestampOnly, kChanged };
  Refresh Read(const std::string& device, pid_t worker_pid);
  // The last record read, if any (it may be a previous worker's).
  const emud::internal::WorkerStatus* status(const std::string& device) const;
  // Phases published since the last call, other than the current one.
  std::vector<emud::internal::WorkerStatus::Phase> TakeMissedPhases(const std::string& device);

  // Why Poll asks for a read.
  enum class Reason { kChanged, kSettle, kFallback };
  // Calls `read(device, reason)` for every device due at `now`: changed ones
  // (if the rate limit allows), then those settling, then every device if
  // the fallback is due. `read` is expected to call Read().
  void Poll(absl::Time now, const std::function<void(const std::string&, Reason)>& read);
  // When Poll next has something to do, without a change notification.
  absl::Time NextPoll() const;

 private:
  struct Dev {
    std::unique_ptr<WorkerStatusReader> reader;
    int watch = -1;
    bool dirty = false;
    std::optional<emud::internal::WorkerStatus> status;
    std::vector<emud::internal::WorkerStatus::Phase> missed_phases;
    uint64_t seen_phase_seq = 0;
  };
  StatusWatcher(StatusWatcherOptions options, RecordCallback on_record)
      : options_(std::move(options)), on_record_(std::move(on_record)) {}
  void Arm();

  const StatusWatcherOptions options_;
  const RecordCallback on_record_;
  UniqueFd epoll_, inotify_;
  std::map<std::string, Dev> devs_;
  std::map<int, std::string> by_watch_;
  bool armed_ = true;
  std::deque<absl::Time> recent_reads_;
  absl::Time next_read_allowed_ = absl::InfinitePast();
  std::set<std::string> settle_;
  absl::Time settle_at_ = absl::InfiniteFuture();
  absl::Time next_fallback_;
};

}  // namespace emud::server

#endif  // EMUD_SERVER_STATUS_WATCHER_H_
