// The emud-worker command line: the arguments emud starts a worker with
// (server/device_manager.cc), which the worker (dataplane/worker_main.cc,
// through worker_api/flags.h) and tests/fakes/fake_worker read back.
//
//   emud-worker --device NAME --state-dir DIR --socket PATH --mac MAC
//               --queues N --backend tap:IF|loopback|peer:DEV --doorbell trap|mmap
//               [--socket-uid UID] [--socket-gid GID] [--socket-mode 0OOO]
//               [--persist-session=true|false] [--datapath-threads N]
//
// Compatibility: a live upgrade runs an older worker binary under a newer
// emud and a newer one under an older emud (handover, upgrade-worker), so a
// flag is never renamed or given a new meaning, and a flag an older worker
// lacks is only passed when its value differs from the default.
#ifndef EMUD_WORKER_API_WORKER_ARGS_H_
#define EMUD_WORKER_API_WORKER_ARGS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace emud::worker_api {

// How the guest's queue tail writes reach the worker.
enum class DoorbellMode {
  kTrap,  // "trap": posted REGION_WRITE messages on the vfio-user socket
  kMmap,  // "mmap": stores into an mmappable page the worker polls
};

// "trap" / "mmap".
absl::string_view DoorbellModeName(DoorbellMode mode);
// The inverse of DoorbellModeName; INVALID_ARGUMENT for any other text.
absl::StatusOr<DoorbellMode> ParseDoorbellMode(absl::string_view text);

// Queue pairs a worker offers: 1..kMaxQueuePairs (avf::kMaxQueuePairs; more
// than 16 only for a guest driver negotiating LARGE_NUM_QPAIRS).
inline constexpr int kMaxQueuePairs = 64;

using MacAddress = std::array<uint8_t, 6>;
// "aa:bb:cc:dd:ee:ff" (two hex digits per byte, either case); INVALID_ARGUMENT
// for anything else.
absl::StatusOr<MacAddress> ParseMac(absl::string_view text);

struct WorkerArgs {
  std::string device;       // --device: state_store::ValidateDeviceName
  std::string state_dir;    // --state-dir: emud's state directory
  std::string socket_path;  // --socket: the vfio-user listening socket
  std::string mac;          // --mac: ParseMac syntax; empty: the guest driver picks
  int queues = 4;           // --queues: 1..kMaxQueuePairs
  std::string backend = "loopback";             // --backend: tap:IFNAME | loopback | peer:DEVICE
  DoorbellMode doorbell = DoorbellMode::kTrap;  // --doorbell
  // Access to the socket (base/socket_access.h). Unset: the worker's uid,
  // its gid (or a setgid directory's), mode kDefaultSocketMode.
  std::optional<int64_t> socket_uid;    // --socket-uid
  std::optional<int64_t> socket_gid;    // --socket-gid
  std::optional<uint32_t> socket_mode;  // --socket-mode, written in octal
  // Crash-consistent persistence of the session (--persist-session). Unset:
  // on. Off only for benchmarks that measure its cost.
  std::optional<bool> persist_session;
  // Data-path threads (--datapath-threads, 1..kMaxQueuePairs; the worker
  // uses at most one per queue pair): queue pair q is served by thread
  // q % N, thread 0 being the event loop that also carries the session
  // (dataplane/datapath.h). Default 1: every queue on the event loop.
  int datapath_threads = 1;

  // The argv to start `binary` with: the binary, then "--name" "value"
  // pairs (dashed names, the value a separate argument) in the order of the
  // usage line above. The required flags are always present (an empty mac
  // too); socket_uid, socket_gid and persist_session only when set, and
  // socket_mode only when set to something other than kDefaultSocketMode,
  // datapath_threads only when not 1.
  // Does not validate: Validate() is the worker's check.
  std::vector<std::string> ToArgv(absl::string_view binary) const;

  // OK if a worker can start with these arguments as far as they can be
  // checked without the file system: socket path non-empty, queues in range,
  // mac empty or well-formed, socket_mode a valid socket mode,
  // datapath_threads in 1..kMaxQueuePairs. The device
  // name is checked by the worker (state_store::ValidateDeviceName), not
  // here. INVALID_ARGUMENT naming the flag otherwise.
  absl::Status Validate() const;
};

}  // namespace emud::worker_api

#endif  // EMUD_WORKER_API_WORKER_ARGS_H_
