// FdStoreHost: where emud keeps the duplicates of its devices' descriptors
// (fdstore/fd_store.h), seen from the device manager. Two implementations:
//
//  - in emud (OpenFdStoreHost without a keeper): an fdstore::FdStore, a
//    SOCK_SEQPACKET channel per spawned worker and the listening socket
//    <state-dir>/fdstore.sock that workers reconnect to after emud restarts.
//    Deposits pass through emud's event loop (event_fd/HandleEvents). A
//    reconnecting channel must come from the device's current worker
//    (SO_PEERCRED).
//  - in emud-keeper (fdstore/keeper.h, `fd_keeper` set): emud holds only a
//    control channel; Bind makes each worker's channel and hands over the
//    held fds, a token lets the worker reconnect. Deposits never pass
//    through emud. When the keeper restarted (or was upgraded), the host
//    tells it the running workers' tokens again on its next call.
//
// Thread safety: not thread-safe; DeviceManager calls it with its mutex
// held. The WorkerDirectory callbacks are called from within host calls,
// with that mutex still held.
#ifndef EMUD_SERVER_FD_STORE_HOST_H_
#define EMUD_SERVER_FD_STORE_HOST_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "fdstore/process.h"
#include "server/metrics.h"

namespace emud::server {

struct FdStoreHostOptions {
  // The in-process store listens at <state_dir>/fdstore.sock.
  std::string state_dir;
  // emud-keeper's socket; empty: the store lives in emud.
  std::string fd_keeper;
  // How long OpenFdStoreHost waits for the keeper to answer.
  absl::Duration fd_keeper_wait = absl::Seconds(30);
};

// What the host needs to know of the devices' workers.
struct WorkerDirectory {
  // The pid of the device's current worker; 0 if none or no such device.
  std::function<pid_t(const std::string& device)> current_pid;
  // (device, keeper token) of every device whose worker runs and has a token.
  std::function<std::vector<std::pair<std::string, int64_t>>()> running_tokens;
};

class FdStoreHost {
 public:
  virtual ~FdStoreHost() = default;

  // True when the fds live outside emud (emud-keeper): they survive emud's
  // container, so a successor emud can take the devices over.
  virtual bool outlives_emud() const = 0;

  // What a worker about to start inherits from the store.
  struct Launch {
    // Its channel (fdstore::kChannelKey) first, then every fd held for the
    // device; borrowed from `owned` or the store, valid until the host's
    // next call.
    std::vector<fdstore::InheritedFd> inherit;
    // How it finds the store again (fdstore::kStoreSocketEnv, kTokenEnv).
    std::vector<std::string> env;
    // Its keeper token; 0 with the in-process store.
    int64_t token = 0;
    // Owned descriptors behind `inherit`; emud's end of an in-process
    // channel.
    std::vector<UniqueFd> owned;
    UniqueFd emud_end;
  };
  // Makes the device's next worker channel and collects its fds. Errors
  // (the keeper refuses, no socketpair) mean the worker cannot start.
  virtual absl::StatusOr<Launch> PrepareWorker(const std::string& device) = 0;
  // The worker of `launch` runs: serve its channel (replacing the device's
  // previous one) and count its fds.
  virtual void WorkerStarted(const std::string& device, Launch& launch) = 0;
  // A running worker of a previous emud was adopted: a keeper that
  // restarted meanwhile learns who may reconnect. `token` 0: nothing to do.
  virtual void WorkerAdopted(const std::string& device, int64_t token) = 0;

  // The keys held for the device (empty on a keeper error, logged).
  virtual std::vector<std::string> HeldKeys(const std::string& device) = 0;
  // Sets the device's fds-held gauge where deposits do not pass through
  // emud (the keeper: one List call); the in-process store's gauge moves
  // with each deposit instead, so this is a no-op there.
  virtual void RefreshHeldGauge(const std::string& device) = 0;
  // How often RefreshHeldGauge should run for every device;
  // InfiniteDuration if never.
  virtual absl::Duration held_gauge_interval() const = 0;

  // Releases every fd and closes every channel of the device (deleted).
  virtual void DropDevice(const std::string& device) = 0;

  // For the caller's event loop: readable while a channel or the listening
  // socket has something (level-triggered); -1 if nothing ever needs
  // serving (keeper).
  virtual int event_fd() const = 0;
  // Serves what is pending. Returns the devices whose held keys may have
  // changed (at most once each, first served first).
  virtual std::vector<std::string> HandleEvents() = 0;
};

// Opens the host `options` name: connects to the keeper (waiting up to
// fd_keeper_wait for it: UNAVAILABLE with what to do if none answers), or
// listens at <state_dir>/fdstore.sock. `metrics` (for the fds-held gauge)
// must outlive the host.
absl::StatusOr<std::unique_ptr<FdStoreHost>> OpenFdStoreHost(const FdStoreHostOptions& options,
                                                            Metrics* metrics,
                                                            WorkerDirectory workers);

}  // namespace emud::server

#endif  // EMUD_SERVER_FD_STORE_HOST_H_
