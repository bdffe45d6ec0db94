// emud-keeper: the fd store in a process of its own, outside emud's container,
// so that the guests' connections outlive emud, emud-init and every worker
// dying together (a container restart, an OOM kill, a rollout).
//
// The keeper has no gRPC, no LMDB and no device logic: it holds descriptors
// under (device, key) exactly as emud's in-process store does, with the same
// channel protocol and the same deposit-before-use rule (fd_store.h), and it
// almost never needs to change. Roles on its listening socket (a
// SOCK_SEQPACKET UNIX socket on a host path, mode 0600):
//  - workers: a channel per worker. emud obtains it with kBind (below) and
//    hands it to the worker at spawn; after a keeper restart a worker
//    reconnects and re-deposits (HELLO carries the token kBind issued; a
//    HELLO with another device's or a stale token is refused).
//  - emud: one control channel (kControl). kBind(device) issues a new token,
//    closes the device's older channels and answers a fresh worker channel
//    end plus every fd held for the device (what its next worker inherits);
//    kList, kDrop (device deleted), kAdopt (a running worker's token, after
//    the keeper or emud restarted).
//  - a successor keeper (upgrade): kHandoff. The keeper sends every fd, every
//    worker channel (with its token) and its listening socket itself over
//    SCM_RIGHTS, then stops serving (Envoy's hot restart, for descriptors):
//    the socket path never goes unserved and no message is lost, because
//    whatever a worker sent after the snapshot waits in the channel the
//    successor now owns.
// Peers must run as the keeper's uid or root (SO_PEERCRED).
#ifndef EMUD_FDSTORE_KEEPER_H_
#define EMUD_FDSTORE_KEEPER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "fdstore/fd_store.h"

namespace emud::fdstore {

class Keeper {
 public:
  // Serves `path`. If a live keeper already serves it, takes everything over
  // from that keeper (kHandoff) instead of starting empty.
  static absl::StatusOr<std::unique_ptr<Keeper>> Start(const std::string& path);
  ~Keeper();

  // Serves until *stop is set (checked at least every 100 ms) or a successor
  // took over. Returns OK in both cases; `handed_over()` tells which.
  absl::Status Run(const std::atomic<bool>* stop);
  bool handed_over() const { return handed_over_; }
  bool took_over() const { return took_over_; }
  size_t fds_held() const { return store_.size(); }
  size_t devices() const;

 private:
  struct Channel {
    UniqueFd fd;
    std::string device;  // worker channels, once known
    bool control = false;
  };
  explicit Keeper(std::string path) : path_(std::move(path)) {}
  absl::Status TakeOver(int old_keeper);
  uint64_t AddChannel(UniqueFd fd, std::string device);
  void CloseChannel(uint64_t id);
  void HandleMessage(uint64_t id);
  void HandleControl(Channel& ch, const Message& msg);
  absl::Status HandOff(int successor);
  bool PeerAllowed(int fd) const;

  std::string path_;
  UniqueFd epoll_, listen_;
  FdStore store_;
  std::map<uint64_t, std::unique_ptr<Channel>> channels_;
  std::map<std::string, int64_t, std::less<>> tokens_;  // device -> current worker token
  uint64_t next_id_ = 16;
  bool handed_over_ = false;
  bool took_over_ = false;
};

// emud's side of the keeper: a control channel. Calls block (bounded by
// `timeout`); after the keeper went away the next call reconnects, and
// reconnected() reports it once so that emud re-adopts its workers' tokens.
class KeeperClient {
 public:
  static absl::StatusOr<std::unique_ptr<KeeperClient>> Connect(
      const std::string& path, absl::Duration timeout = absl::Seconds(2));

  struct Bound {
    int64_t token = 0;
    // The worker channel end (key kChannelKey) first, then the held fds.
    std::vector<std::pair<std::string, UniqueFd>> fds;
  };
  absl::StatusOr<Bound> Bind(const std::string& device);
  absl::StatusOr<std::vector<std::string>> List(const std::string& device);
  absl::Status Drop(const std::string& device);
  absl::Status Adopt(const std::string& device, int64_t token);
  // True once after a call had to reconnect (the keeper restarted).
  bool TakeReconnected() { return std::exchange(reconnected_, false); }
  const std::string& path() const { return path_; }

 private:
  KeeperClient(std::string path, absl::Duration timeout)
      : path_(std::move(path)), timeout_(timeout) {}
  absl::Status EnsureConnected();
  // Sends `msg`, collects kFd replies until the kAck, which it returns.
  absl::StatusOr<Message> Call(const Message& msg,
                               std::vector<std::pair<std::string, UniqueFd>>* fds);

  std::string path_;
  absl::Duration timeout_;
  UniqueFd channel_;
  bool reconnected_ = false;
  bool ever_connected_ = false;
};

}  // namespace emud::fdstore

#endif  // EMUD_FDSTORE_KEEPER_H_
