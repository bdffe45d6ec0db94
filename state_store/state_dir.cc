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

std::string DeviceShmDir(absl::string_view state_dir, absl::string_view device) {
  return absl::StrCat(ShmDir(state_dir), "/", device);
}

namespace {
// Files an older worker kept directly in DIR/shm, named NAME.<kind>.
constexpr const char* kLegacyShmKinds[] = {"queues", "journal", "tap-rx"};
}  // namespace

absl::Status MigrateLegacyShmFiles(absl::string_view state_dir, absl::string_view device) {
  absl::Status v = ValidateDeviceName(device);
  if (!v.ok()) return v;
  std::error_code ec;
  const std::filesystem::path dir(DeviceShmDir(state_dir, device));
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("creating ", dir.string(), ": ", ec.message()));
  for (const char* kind : kLegacyShmKinds) {
    const std::filesystem::path legacy(absl::StrCat(ShmDir(state_dir), "/", device, ".", kind));
    const std::filesystem::path now = dir / kind;
    if (!std::filesystem::exists(legacy, ec) || std::filesystem::exists(now, ec)) continue;
    std::filesystem::rename(legacy, now, ec);
    if (ec) return absl::InternalError(absl::StrCat("moving ", legacy.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::Status RemoveDeviceState(absl::string_view state_dir, absl::string_view device) {
  absl::Status v = ValidateDeviceName(device);
  if (!v.ok()) return v;
  std::error_code ec;
  std::filesystem::remove_all(DeviceEnvDir(state_dir, device), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("removing state of device ", device, ": ", ec.message()));
  }
  std::filesystem::remove_all(DeviceShmDir(state_dir, device), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("removing tmpfs files of device ", device, ": ", ec.message()));
  }
  for (const char* kind : kLegacyShmKinds) {
    std::filesystem::remove(absl::StrCat(ShmDir(state_dir), "/", device, ".", kind), ec);
  }
  return absl::OkStatus();
}

}  // namespace emud::state_store
