// Layout of emud's state directory (default /dev/shm/emud):
//
//   DIR/emud/            LMDB environment with emud's own records (devices,
//                        fd-store keys)
//   DIR/devices/NAME/    one LMDB environment per device (vfio-user session,
//                        AVF model); one device's commits never wait on
//                        another's writer lock
//   DIR/shm/NAME.*       tmpfs files for hot per-queue indices (data path)
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

// Removes a device's environment and tmpfs files (after DeleteDevice).
absl::Status RemoveDeviceState(absl::string_view state_dir, absl::string_view device);

}  // namespace emud::state_store

#endif  // EMUD_STATE_STORE_STATE_DIR_H_
