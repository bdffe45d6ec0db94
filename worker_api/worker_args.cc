#include "worker_api/worker_args.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/socket_access.h"

namespace emud::worker_api {

absl::string_view DoorbellModeName(DoorbellMode mode) {
  return mode == DoorbellMode::kMmap ? "mmap" : "trap";
}

absl::StatusOr<DoorbellMode> ParseDoorbellMode(absl::string_view text) {
  if (text == "trap") return DoorbellMode::kTrap;
  if (text == "mmap") return DoorbellMode::kMmap;
  return absl::InvalidArgumentError("trap or mmap");
}

absl::StatusOr<MacAddress> ParseMac(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  MacAddress mac{};
  if (parts.size() != mac.size()) return absl::InvalidArgumentError(text);
  for (size_t i = 0; i < mac.size(); ++i) {
    uint32_t v = 0;
    if (parts[i].size() != 2 || !absl::SimpleHexAtoi(parts[i], &v)) {
      return absl::InvalidArgumentError(text);
    }
    mac[i] = static_cast<uint8_t>(v);
  }
  return mac;
}

std::vector<std::string> WorkerArgs::ToArgv(absl::string_view binary) const {
  std::vector<std::string> argv = {
      std::string(binary),
      "--device", device,
      "--state-dir", state_dir,
      "--socket", socket_path,
      "--mac", mac,
      "--queues", absl::StrCat(queues),
      "--backend", backend,
      "--doorbell", std::string(DoorbellModeName(doorbell)),
  };
  if (socket_uid.has_value()) argv.insert(argv.end(), {"--socket-uid", absl::StrCat(*socket_uid)});
  if (socket_gid.has_value()) argv.insert(argv.end(), {"--socket-gid", absl::StrCat(*socket_gid)});
  if (socket_mode.has_value() && *socket_mode != kDefaultSocketMode) {
    argv.insert(argv.end(), {"--socket-mode", absl::StrFormat("%04o", *socket_mode)});
  }
  if (persist_session.has_value()) {
    argv.push_back(absl::StrCat("--persist-session=", *persist_session ? "true" : "false"));
  }
  if (datapath_threads != 1) {
    argv.insert(argv.end(), {"--datapath-threads", absl::StrCat(datapath_threads)});
  }
  return argv;
}

absl::Status WorkerArgs::Validate() const {
  if (socket_path.empty()) return absl::InvalidArgumentError("--socket: required");
  if (queues < 1 || queues > kMaxQueuePairs) {
    return absl::InvalidArgumentError(absl::StrCat("--queues: must be 1..", kMaxQueuePairs));
  }
  if (datapath_threads < 1 || datapath_threads > kMaxQueuePairs) {
    return absl::InvalidArgumentError(
        absl::StrCat("--datapath-threads: must be 1..", kMaxQueuePairs));
  }
  if (!mac.empty() && !ParseMac(mac).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--mac: ", mac));
  }
  if (socket_mode.has_value()) {
    if (absl::Status s = ValidateSocketMode(*socket_mode, "--socket-mode"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace emud::worker_api
