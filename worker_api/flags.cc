#include "worker_api/flags.h"

#include <cstdint>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "base/socket_access.h"
#include "state_store/state_dir.h"

ABSL_FLAG(std::string, device, "", "device name");
ABSL_FLAG(std::string, state_dir, emud::state_store::kDefaultStateDir, "emud state directory");
ABSL_FLAG(std::string, socket, "", "vfio-user listening socket path");
ABSL_FLAG(int64_t, socket_uid, -1, "owner of the socket (-1: this process's uid)");
ABSL_FLAG(int64_t, socket_gid, -1, "group of the socket (-1: this process's or the directory's)");
ABSL_FLAG(std::string, socket_mode, "0660", "octal mode of the socket (a subset of 0666 with 0600)");
ABSL_FLAG(std::string, mac, "", "permanent MAC (aa:bb:cc:dd:ee:ff); empty = driver picks");
ABSL_FLAG(int, queues, 4, "queue pairs offered (1..16)");
ABSL_FLAG(std::string, backend, "loopback", "tap:IFNAME | loopback | peer:DEVICE");
ABSL_FLAG(std::string, doorbell, "trap", "trap (posted region writes) | mmap (polled tail page)");
ABSL_FLAG(bool, persist_session, true,
          "commit vfio-user/AVF state to LMDB per request, crash-consistently (what lets a "
          "successor take over after SIGKILL); false only for benchmarks measuring its cost");

ABSL_FLAG(int, datapath_threads, 1,
          "data-path threads (1..16): queue pair q is served by thread q % N, thread 0 being "
          "the event loop that also serves the vfio-user session");

ABSL_FLAG(int, standby_fd, -1,
          "run as a standby worker (emud --standby-workers, fdstore/standby.h): start up, "
          "then wait on this fd until emud promotes this process to the device's worker");

namespace emud::worker_api {

int StandbyFdFromFlags() { return absl::GetFlag(FLAGS_standby_fd); }

absl::StatusOr<WorkerArgs> WorkerArgsFromFlags() {
  WorkerArgs a;
  a.device = absl::GetFlag(FLAGS_device);
  if (absl::Status s = state_store::ValidateDeviceName(a.device); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--device: ", s.message()));
  }
  a.state_dir = absl::GetFlag(FLAGS_state_dir);
  a.socket_path = absl::GetFlag(FLAGS_socket);
  a.mac = absl::GetFlag(FLAGS_mac);
  a.queues = absl::GetFlag(FLAGS_queues);
  a.backend = absl::GetFlag(FLAGS_backend);
  auto doorbell = ParseDoorbellMode(absl::GetFlag(FLAGS_doorbell));
  if (!doorbell.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--doorbell: ", doorbell.status().message()));
  }
  a.doorbell = *doorbell;
  if (absl::GetFlag(FLAGS_socket_uid) != -1) a.socket_uid = absl::GetFlag(FLAGS_socket_uid);
  if (absl::GetFlag(FLAGS_socket_gid) != -1) a.socket_gid = absl::GetFlag(FLAGS_socket_gid);
  auto mode = ParseSocketMode(absl::GetFlag(FLAGS_socket_mode), "--socket-mode");
  if (!mode.ok()) return mode.status();
  a.socket_mode = *mode;
  a.persist_session = absl::GetFlag(FLAGS_persist_session);
  a.datapath_threads = absl::GetFlag(FLAGS_datapath_threads);
  if (absl::Status s = a.Validate(); !s.ok()) return s;
  return a;
}

}  // namespace emud::worker_api
