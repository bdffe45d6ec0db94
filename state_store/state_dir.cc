#include "state_store/state_dir.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace emud::state_store {

absl::Status ValidateDeviceName(absl::string_view name) {
  if (name.empty() || name.size() > 63) {
    return absl::InvalidArgumentError(
        absl::StrCat("device name '", name, "' must be 1 to 63 characters long"));
  }
  if (name[0] == '.' || name[0] == '-') {
    return absl::InvalidArgumentError(
        absl::StrCat("device name '", name, "' must not start with '.' or '-'"));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "device name '", name, "' may only contain letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

std::string ControlEnvDir(absl::string_view state_dir) { return absl::StrCat(state_dir, "/emud"); }

std::string DeviceEnvDir(absl::string_view state_dir, absl::string_view device) {
  return absl::StrCat(state_dir, "/devices/", device);
}

std::string ShmDir(absl::string_view state_dir) { return absl::StrCat(state_dir, "/shm"); }

absl::Status RemoveDeviceState(absl::string_view state_dir, absl::string_view device) {
  absl::Status v = ValidateDeviceName(device);
  if (!v.ok()) return v;
  std::error_code ec;
  std::filesystem::remove_all(DeviceEnvDir(state_dir, device), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("removing state of device ", device, ": ", ec.message()));
  }
  std::filesystem::path shm(ShmDir(state_dir));
  if (std::filesystem::exists(shm, ec)) {
    for (const auto& entry : std::filesystem::directory_iterator(shm, ec)) {
      std::string fn = entry.path().filename().string();
      if (fn.rfind(absl::StrCat(device, "."), 0) == 0) std::filesystem::remove(entry.path(), ec);
    }
  }
  return absl::OkStatus();
}

}  // namespace emud::state_store
