// Handover: a new emud (a surge rollout's new pod, or a new binary on a host)
// takes every device over from the running one, each as a live upgrade of its
// worker, without any guest noticing more than a worker restart.
//
// It needs emud-keeper: the devices' fds must live outside the old emud's
// container, which the rollout deletes afterwards.
//
// On `<state-dir>/handover.sock` (SOCK_SEQPACKET, mode 0600) the running emud
// serves one successor at a time. The exchange, one message per line:
//   new -> old  TAKEOVER            old: refuses API mutations, stops
//                                   restarting workers, releases the state
//                                   directory's lock      -> OK | ERR why
//   new -> old  RELEASE <device>    old: stops that device's worker (a
//                                   persisted worker exits at once, its
//                                   session stays in the keeper) and forgets
//                                   it; the new emud then starts its own
//                                   worker, which resumes the session
//                                                         -> OK | ERR why
//   new -> old  DONE                old: stops serving gRPC and metrics,
//                                   removes its API socket -> OK, then
//                                   exits with kExitHandedOver
// The new emud binds the API and metrics only after DONE. If the new emud
// dies before DONE, the old one resumes supervision (its devices that were
// released are started again by whichever emud holds the lock next: their
// records say no worker runs).
#ifndef EMUD_SERVER_HANDOVER_H_
#define EMUD_SERVER_HANDOVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace emud::server {

// emud's exit status after it handed everything over (emud-init does not
// restart it; systemd units list it in SuccessExitStatus).
inline constexpr int kExitHandedOver = 75;

std::string HandoverSocket(const std::string& state_dir);

// The running emud's side.
class HandoverServer {
 public:
  struct Hooks {
    // TAKEOVER: stop supervising, refuse API mutations, release the lock.
    std::function<absl::Status()> begin;
    // RELEASE: stop and forget the device's worker.
    std::function<absl::Status(const std::string& device)> release;
    // The successor went away before DONE: supervise again.
    std::function<void()> abort;
    // DONE: stop serving the API (called on the handover thread); then the
    // server's done() turns true and main exits with kExitHandedOver.
    std::function<void()> finish;
  };
  static absl::StatusOr<std::unique_ptr<HandoverServer>> Listen(const std::string& path,
                                                                Hooks hooks);
  ~HandoverServer();
  // Set once a successor finished; `on_done` (e.g. raising a signal that main
  // waits for) runs right after.
  bool done() const { return done_.load(); }
  void set_on_done(std::function<void()> f) { on_done_ = std::move(f); }

 private:
  HandoverServer() = default;
  void Serve();
  void Session(int fd);

  std::string path_;
  Hooks hooks_;
  UniqueFd listen_, wake_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, done_{false};
  std::function<void()> on_done_;
};

// The successor's side.
class HandoverClient {
 public:
  // Connects to the running emud's handover socket.
  static absl::StatusOr<std::unique_ptr<HandoverClient>> Connect(const std::string& path);
  absl::Status Begin();
  absl::Status Release(const std::string& device);
  absl::Status Finish();

 private:
  explicit HandoverClient(UniqueFd fd) : fd_(std::move(fd)) {}
  absl::Status Call(const std::string& request);
  UniqueFd fd_;
};

}  // namespace emud::server

#endif  // EMUD_SERVER_HANDOVER_H_
