// Who may connect to a vfio-user socket: the owner, group and mode of the
// socket and of the per-device directory that holds it. Shared by emud
// (validation, preparing the directory), emud-worker (its socket is bound by
// base/unix_listener.h with these ids and mode), emuctl and
// emud-device-plugin (parsing operators' input). No project dependencies.
#ifndef EMUD_BASE_SOCKET_ACCESS_H_
#define EMUD_BASE_SOCKET_ACCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/unique_fd.h"

namespace emud {

inline constexpr uint32_t kDefaultSocketMode = 0660;
// A per-device socket directory: owner rwx, group r-x, others nothing.
inline constexpr uint32_t kSocketDirMode = 0750;
// File name of a device's default socket inside its per-device directory.
inline constexpr char kDefaultSocketFile[] = "vfio-user.sock";

struct SocketOwner {
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;
};

// Parses "UID", "UID:GID" or ":GID" (numeric ids: names would be resolved
// in emud's container, not the VMM's). `what` names the option in errors.
absl::StatusOr<SocketOwner> ParseSocketOwner(absl::string_view text, absl::string_view what);
// Parses a numeric id (e.g. emud --socket-group).
absl::StatusOr<uint32_t> ParseNumericId(absl::string_view text, absl::string_view what);
// Parses an octal mode such as "0660" or "660" and checks it with
// ValidateSocketMode.
absl::StatusOr<uint32_t> ParseSocketMode(absl::string_view text, absl::string_view what);
// A socket mode is a subset of 0666 (execute, setuid, setgid and sticky bits
// mean nothing on a socket) that includes 0600 (the owner connects, which
// needs write permission).
absl::Status ValidateSocketMode(uint32_t mode, absl::string_view what);

// Creates `dir` (one level: its parent must exist) or fixes an existing one:
// owner `uid`, group `gid` (-1: leave as created) and `mode`. Refuses a
// symlink or a non-directory. FAILED_PRECONDITION naming what to fix if the
// ids cannot be set (the process lacks CAP_CHOWN).
absl::Status PrepareOwnedDir(const std::string& dir, uid_t uid, gid_t gid, uint32_t mode);

}  // namespace emud

#endif  // EMUD_BASE_SOCKET_ACCESS_H_
