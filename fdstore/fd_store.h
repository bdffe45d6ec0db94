// The fd store: keeps duplicates of every file descriptor a device needs
// (vfio-user sockets, guest-memory fds, interrupt eventfds, doorbell memfd,
// backend fds) outside the worker process, so that a worker killed at any
// instant can be replaced by a successor holding the very same kernel
// objects - in particular the connected vfio-user socket, whose closing the
// guest would see as a device reset.
//
// Roles:
//  - emud owns an FdStore and one channel (a SOCK_SEQPACKET socket) per
//    worker. A worker deposits each fd before acting on it (Deposit waits for
//    the store's acknowledgement) and releases it when the object goes away.
//  - emud hands a device's whole set to its successor worker at spawn time as
//    inherited descriptors (SpawnWithFds in fdstore/process.h /
//    TakeInheritedFds).
//  - If emud itself dies, workers keep their fds; each reconnects to the
//    store's listening socket and re-deposits everything (FdStoreClient keeps
//    its own duplicates for exactly this).
//
// Keys are 1..200 characters of [A-Za-z0-9._:/=-]; device names follow
// state_store::ValidateDeviceName. Every message carries at most one fd.
#ifndef EMUD_FDSTORE_FD_STORE_H_
#define EMUD_FDSTORE_FD_STORE_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/unique_fd.h"
#include "worker_api/fd_keys.h"

namespace emud::fdstore {

absl::Status ValidateKey(absl::string_view key);

// Conventions between emud and emud-worker (worker_api/fd_keys.h): emud
// starts every worker with its end of a connected channel inherited under
// kChannelKey (next to the device's stored fds), and names the store's
// listening socket, for FdStoreClient::Reconnect after emud restarts, in the
// environment variable kStoreSocketEnv.
inline constexpr const auto& kChannelKey = worker_api::kChannelFdKey;
inline constexpr const auto& kStoreSocketEnv = worker_api::kFdStoreSocketEnv;

// ------------------------------------------------------------ wire format

enum class Op : uint8_t {
  kHello = 1,          // worker -> store: device name, pid (or keeper token) in `arg`
  kDeposit = 2,        // worker -> store: key + 1 fd
  kRelease = 3,        // worker -> store: key
  kReleasePrefix = 4,  // worker -> store: key prefix
  kAck = 5,            // store -> worker: `arg` = 0 or an errno
  // emud <-> emud-keeper (fdstore/keeper.h). Replies are zero or more kFd
  // messages, then a kAck.
  kControl = 6,   // emud -> keeper: this channel is emud's control channel
  kBind = 7,      // emud: device; keeper answers its new worker channel end
                  // (key kChannelKey) and held fds as kFd, then kAck(token)
  kFd = 8,        // keeper -> emud/successor: key (or "device/key"), fd if any
  kDrop = 9,      // emud: device; every fd and channel of it is released
  kList = 10,     // emud: device; keys as kFd without fds, then kAck(count)
  kAdopt = 11,    // emud: device, token in `arg`: a running worker's token
  kHandoff = 12,  // successor keeper -> keeper: send me everything, then exit
  kChannel = 13,  // keeper -> successor: a worker channel ("device", token in arg)
  kListener = 14, // keeper -> successor: the listening socket
};

// A worker started through emud-keeper finds its channel token here (its
// HELLO after a keeper restart carries it instead of its pid).
inline constexpr const auto& kTokenEnv = worker_api::kFdStoreTokenEnv;

struct Message {
  Op op = Op::kAck;
  int64_t arg = 0;
  std::string name;  // device (kHello) or key
};

// Sends `msg` (with `fd` attached if >= 0) on a SOCK_SEQPACKET socket.
absl::Status SendMessage(int sock, const Message& msg, int fd = -1);
// Receives one message; `fd` receives an attached descriptor (closed-on-exec).
// Returns UNAVAILABLE when the peer closed the channel. Malformed messages
// (bad magic, sizes, more than one fd, truncation) are INVALID_ARGUMENT and
// any fd that came with them is closed.
absl::StatusOr<Message> ReceiveMessage(int sock, UniqueFd* fd);

// ------------------------------------------------------------------ store

// emud's side: fds by (device, key). Not thread-safe; emud drives it from its
// event loop.
class FdStore {
 public:
  // Takes ownership of `fd` under (device, key), replacing (and closing) any
  // fd already held there.
  absl::Status Put(absl::string_view device, absl::string_view key, UniqueFd fd);
  void Release(absl::string_view device, absl::string_view key);
  void ReleasePrefix(absl::string_view device, absl::string_view prefix);
  void ReleaseDevice(absl::string_view device);

  // The fds held for `device`, borrowed (valid until released), key order.
  std::vector<std::pair<std::string, int>> Fds(absl::string_view device) const;
  std::vector<std::string> Keys(absl::string_view device) const;
  // Devices holding at least one fd.
  std::vector<std::string> Devices() const;
  size_t size() const;

  // Handles one message arriving on a worker's channel and acknowledges it.
  // `device` starts empty and is set by the worker's HELLO; messages before
  // HELLO, for another device, or with bad keys are refused with an errno
  // ack. Returns UNAVAILABLE when the channel closed (the worker died or
  // exited) - the held fds stay: they are what its successor needs.
  absl::Status ServeOne(int channel, std::string* device);
  // The store's part of ServeOne for one received worker message (HELLO's
  // identity check is the caller's): returns the errno to acknowledge with.
  int Apply(const Message& msg, UniqueFd fd, std::string* device);

 private:
  std::map<std::string, std::map<std::string, UniqueFd, std::less<>>, std::less<>> fds_;
};

// ----------------------------------------------------------------- client

// The worker's side of a channel.
class FdStoreClient {
 public:
  // Uses an already-connected channel (inherited from emud at spawn).
  static absl::StatusOr<std::unique_ptr<FdStoreClient>> Adopt(UniqueFd channel,
                                                              std::string device);
  // Connects to the store's listening socket (SOCK_SEQPACKET at `path`).
  static absl::StatusOr<std::unique_ptr<FdStoreClient>> Connect(const std::string& path,
                                                                std::string device);

  // Deposits a duplicate of `fd` under `key` and waits for the store's ack:
  // when this returns OK the store holds the kernel object.
  absl::Status Deposit(absl::string_view key, int fd);
  absl::Status Release(absl::string_view key);
  absl::Status ReleasePrefix(absl::string_view prefix);
  // Keeps a duplicate of `fd` under `key` for Reconnect without telling the
  // store: for fds the store already holds (inherited from emud at spawn), or
  // deposited while the store is away (emud restarting; Reconnect hands them
  // over). Fails only if the key is invalid or dup fails.
  absl::Status Keep(absl::string_view key, int fd);

  // After the store went away (channel HUP): connect to `path` and deposit
  // every fd deposited so far and not released.
  absl::Status Reconnect(const std::string& path);

  // The channel, for an event loop: readable/HUP means the store went away.
  int channel_fd() const { return channel_.get(); }
  bool connected() const { return channel_.valid(); }
  size_t deposited() const { return kept_.size(); }

 private:
  FdStoreClient(UniqueFd channel, std::string device)
      : channel_(std::move(channel)), device_(std::move(device)) {}
  absl::Status Hello();
  absl::Status Call(const Message& msg, int fd);

  UniqueFd channel_;
  std::string device_;
  // Our own duplicates, for re-depositing after the store restarts.
  std::map<std::string, UniqueFd, std::less<>> kept_;
};

// Listening SOCK_SEQPACKET socket at `path` (replacing a stale one), mode 0600.
absl::StatusOr<UniqueFd> ListenSeqpacket(const std::string& path);

// ------------------------------------------------- inherited descriptors

// The parent's side, spawning with inherited fds: SpawnWithFds
// (fdstore/process.h).

// In the child: takes the descriptors described by EMUD_FDS (marking them
// close-on-exec) and clears the variable. Empty map if it is absent.
absl::StatusOr<std::map<std::string, UniqueFd>> TakeInheritedFds();

}  // namespace emud::fdstore

#endif  // EMUD_FDSTORE_FD_STORE_H_
