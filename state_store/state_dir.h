// Layout of emud's state directory (default /dev/shm/emud):
//
//   DIR/emud/            LMDB environment with emud's own records (devices,
//                        fd-store keys)
//   DIR/devices/NAME/    one LMDB environment per device (vfio-user session,
//                        AVF model); one device's commits never wait on
//                        another's writer lock
//   DIR/shm/NAME/        tmpfs files of device NAME that are not LMDB: hot
//                        queue indices (queues), the session journal
//                        (journal), the TAP receive stage (tap-rx), inbound
//                        peer rings (peer.PEER, peer.PEER.wake). A directory
//                        per device, so that no device's files are a prefix
//                        match of another's (names may contain '.').
#ifndef EMUD_STATE_STORE_STATE_DIR_H_
#define EMUD_STATE_STORE_STATE_DIR_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace emud::state_store {

inline constexpr char kDefaultStateDir[] = "/dev/shm/emud";

// A device name is 1..63 characters of [A-Za-z0-9._-], not starting with '.'
// or '-': it is used as a directory name, a metric label and a socket name.
absl::Status ValidateDeviceName(absl::string_view name);

std::string ControlEnvDir(absl::string_view state_dir);
std::string DeviceEnvDir(absl::string_view state_dir, absl::string_view device);
std::string ShmDir(absl::string_view state_dir);
std::string DeviceShmDir(absl::string_view state_dir, absl::string_view device);

// Moves the tmpfs files an older emud-worker kept as DIR/shm/NAME.queues,
// .journal and .tap-rx into DeviceShmDir (creating it), unless a file of that
// kind is already there: a worker upgraded in place under a running guest
// finds its predecessor's state. Missing legacy files are not an error.
absl::Status MigrateLegacyShmFiles(absl::string_view state_dir, absl::string_view device);

// Removes a device's environment and tmpfs files (after DeleteDevice); never
// another device's, whatever the names.
absl::Status RemoveDeviceState(absl::string_view state_dir, absl::string_view device);

}  // namespace emud::state_store

#endif  // EMUD_STATE_STORE_STATE_DIR_H_
