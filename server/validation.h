// Validation of DeviceService requests. Every function returns
// INVALID_ARGUMENT with a message that names the field, the bad value and the
// accepted form; conflicts with existing devices are ALREADY_EXISTS or
// FAILED_PRECONDITION. Nothing here touches emud's state: the caller passes
// the existing devices in.
#ifndef EMUD_SERVER_VALIDATION_H_
#define EMUD_SERVER_VALIDATION_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/device_record.pb.h"
#include "proto/emud_v1.pb.h"

namespace emud::server {

// avf::kMaxQueuePairs: more than 16 only reach a guest driver negotiating
// LARGE_NUM_QPAIRS (DPDK's iavf); Linux iavf gets 16 of them.
inline constexpr uint32_t kMaxQueuePairs = 64;
inline constexpr uint32_t kDefaultQueuePairs = 1;
// sizeof(sockaddr_un::sun_path) is 108, including the terminating NUL.
inline constexpr size_t kMaxSocketPathLength = 107;
// IFNAMSIZ - 1.
inline constexpr size_t kMaxIfNameLength = 15;

using Mac = std::array<uint8_t, 6>;

// The request field an error is about ("spec.mac"), carried as a payload of
// the absl::Status: ToGrpc (service.h) turns it into the google.rpc.BadRequest
// and google.rpc.ErrorInfo details of the gRPC status.
inline constexpr char kFieldPayloadUrl[] = "type.emud.dev/emud.internal.Field";
absl::Status WithField(absl::Status s, absl::string_view field);
// The field of `s`, or "" if it names none.
std::string FieldOf(const absl::Status& s);

// Parses "xx:xx:xx:xx:xx:xx" (or '-' separated), hex digits in any case.
// Refuses multicast/broadcast and all-zero addresses.
absl::StatusOr<Mac> ParseUnicastMac(absl::string_view text);
// Lower-case, ':'-separated.
std::string FormatMac(const Mac& mac);
// A locally administered unicast MAC (02:xx:xx:xx:xx:xx) derived from the
// device name by a stable hash; `salt` picks another one on a collision.
Mac DefaultMac(absl::string_view name, uint32_t salt = 0);

struct Backend {
  enum class Kind { kLoopback, kTap, kPeer };
  Kind kind = Kind::kLoopback;
  std::string arg;  // interface name or peer device name
};
// Parses "loopback", "tap:IFNAME" or "peer:DEVICE". `self` is the device's
// own name (a device cannot be its own peer).
absl::StatusOr<Backend> ParseBackend(absl::string_view spec, absl::string_view self);

// Checks a vfio-user socket path: absolute, no NUL, no "." or ".." parts, at
// most kMaxSocketPathLength bytes, and the nearest existing ancestor of its
// parent is a directory (so the parent exists or can be created).
absl::Status ValidateSocketPath(absl::string_view path);

// Validates a CreateDeviceRequest and fills in defaults (queue pairs,
// backend, socket path and access under `socket_dir`, doorbell mode; the MAC is left
// empty if not given: see AssignDefaults). Returns the record to persist.
// The default socket path is <socket_dir>/<name>/vfio-user.sock (a
// directory per device). Socket access: an unset spec.socket_gid becomes
// `default_socket_gid` (emud --socket-group) if given; spec.socket_mode 0
// becomes 0660, any other mode must pass ValidateSocketMode.
// An explicit spec.socket_path must lie under `socket_dir` or one of
// `socket_roots` (emud --socket-roots): an API client must not make emud
// (often root) create directories and sockets anywhere.
absl::StatusOr<emud::internal::DeviceRecord> NormalizeCreateRequest(
    const emud::v1::CreateDeviceRequest& req, absl::string_view socket_dir,
    std::optional<uint32_t> default_socket_gid = std::nullopt,
    const std::vector<std::string>& socket_roots = {});

// <socket_dir>/<name>: the per-device directory of a default socket, which
// emud creates with the socket's owner and group (mode 0750) and removes
// with the device.
std::string DeviceSocketDir(const emud::internal::DeviceRecord& rec, absl::string_view socket_dir);
// True if the device's socket lies directly in DeviceSocketDir (an explicit
// spec.socket_path elsewhere leaves its directory alone).
bool InDeviceSocketDir(const emud::internal::DeviceRecord& rec, absl::string_view socket_dir);

// Checks `candidate` against the existing devices: duplicate name, socket
// path or TAP interface -> ALREADY_EXISTS; duplicate MAC -> ALREADY_EXISTS;
// a peer that is already paired with a third device -> FAILED_PRECONDITION.
// If candidate's MAC is empty, assigns a default one that no existing device
// uses.
absl::Status CheckConflictsAndAssignMac(
    emud::internal::DeviceRecord& candidate,
    const std::vector<const emud::internal::DeviceRecord*>& existing);

}  // namespace emud::server

#endif  // EMUD_SERVER_VALIDATION_H_
