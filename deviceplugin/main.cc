// emud-device-plugin: the kubelet device plugin for emud devices. See
// deviceplugin/plugin.h and README.md (Kubernetes).
#include <signal.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>
#include <thread>

#include "absl/flags/flag.h"
#include "base/command_line.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "base/socket_access.h"
#include "deviceplugin/plugin.h"

ABSL_FLAG(std::string, emud, "unix:///var/run/emud/emud.sock",
          "emud's gRPC address: unix:///abs/path or host:port");
ABSL_FLAG(std::string, kubelet_dir, "/var/lib/kubelet/device-plugins",
          "kubelet's device-plugins directory (kubelet.sock and our socket live there)");
ABSL_FLAG(std::string, kubelet_socket, "kubelet.sock", "kubelet's socket in --kubelet-dir");
ABSL_FLAG(std::string, resource, "emud.io/avf", "extended resource advertised to kubelet");
ABSL_FLAG(std::string, endpoint, "",
          "our socket's file name in --kubelet-dir (default: <resource with / as ->.sock)");
ABSL_FLAG(int, pool_size, 4, "number of devices in the pool: <prefix>0 .. <prefix>N-1");
ABSL_FLAG(std::string, device_prefix, "avf-", "name prefix of the pool's devices");
ABSL_FLAG(int, queues, 1, "device template: queue pairs (1..16)");
ABSL_FLAG(std::string, backend, "loopback",
          "device template: loopback or tap:IFNAME ({i} becomes the device's index, e.g. "
          "tap:vmtap{i})");
ABSL_FLAG(std::string, doorbell, "trap", "device template: trap or mmap");
ABSL_FLAG(std::string, socket_owner, "",
          "device template: numeric UID[:GID] (or :GID) owning each socket and its directory, "
          "e.g. 107:107 for KubeVirt's qemu (default: emud's user and --socket-group)");
ABSL_FLAG(std::string, socket_mode, "", "device template: octal socket mode (default 0660)");
ABSL_FLAG(std::string, container_dir, "",
          "where a device's socket directory appears in the VMM container (<dir>/<device>); "
          "default: the same path as on the host");
ABSL_FLAG(std::string, cdi_dir, "",
          "write a CDI spec there (e.g. /var/run/cdi) and answer Allocate with CDI device names "
          "instead of mounts and env (needs a CDI-enabled runtime and kubelet)");
ABSL_FLAG(absl::Duration, prestart_timeout, absl::Seconds(10),
          "how long PreStartContainer waits for a device to serve");

namespace {

void Fail(absl::string_view msg) {
  std::cerr << "emud-device-plugin: " << msg << std::endl;
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Advertises a pool of emud devices to kubelet (device plugin API v1beta1).\n"
      "  emud-device-plugin --pool-size 8 --socket-owner 107:107");
  // Flags are documented with dashes (--pool-size); both spellings work.
  emud::ParseDashedCommandLine(argc, argv);
  emud::deviceplugin::PluginOptions o;
  o.emud_address = absl::GetFlag(FLAGS_emud);
  if (o.emud_address.rfind("/", 0) == 0) o.emud_address = "unix://" + o.emud_address;
  o.kubelet_dir = absl::GetFlag(FLAGS_kubelet_dir);
  o.kubelet_socket = absl::GetFlag(FLAGS_kubelet_socket);
  o.resource = absl::GetFlag(FLAGS_resource);
  o.endpoint = absl::GetFlag(FLAGS_endpoint);
  if (o.endpoint.empty()) o.endpoint = emud::deviceplugin::DefaultEndpoint(o.resource);
  o.pool_size = absl::GetFlag(FLAGS_pool_size);
  o.device_prefix = absl::GetFlag(FLAGS_device_prefix);
  int queues = absl::GetFlag(FLAGS_queues);
  if (queues < 1 || queues > 16) Fail(absl::StrCat("--queues ", queues, " is out of range; use 1 to 16"));
  o.queue_pairs = static_cast<uint32_t>(queues);
  o.backend = absl::GetFlag(FLAGS_backend);
  const std::string doorbell = absl::GetFlag(FLAGS_doorbell);
  if (doorbell == "trap") {
    o.doorbell = emud::v1::DOORBELL_MODE_TRAP;
  } else if (doorbell == "mmap") {
    o.doorbell = emud::v1::DOORBELL_MODE_MMAP;
  } else {
    Fail(absl::StrCat("--doorbell '", doorbell, "' is not trap or mmap"));
  }
  if (!absl::GetFlag(FLAGS_socket_owner).empty()) {
    auto owner = emud::ParseSocketOwner(absl::GetFlag(FLAGS_socket_owner), "--socket-owner");
    if (!owner.ok()) Fail(owner.status().message());
    o.socket_uid = owner->uid;
    o.socket_gid = owner->gid;
  }
  if (!absl::GetFlag(FLAGS_socket_mode).empty()) {
    auto mode = emud::ParseSocketMode(absl::GetFlag(FLAGS_socket_mode), "--socket-mode");
    if (!mode.ok()) Fail(mode.status().message());
    o.socket_mode = *mode;
  }
  o.container_dir = absl::GetFlag(FLAGS_container_dir);
  o.cdi_dir = absl::GetFlag(FLAGS_cdi_dir);
  o.prestart_timeout = absl::GetFlag(FLAGS_prestart_timeout);
  if (absl::Status s = emud::deviceplugin::ValidateOptions(o); !s.ok()) Fail(s.message());

  // SIGTERM/SIGINT end the plugin; handled on a thread (Stop takes a lock).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  emud::deviceplugin::Plugin plugin(o);
  std::thread sig([&] {
    int s = 0;
    sigwait(&set, &s);
    std::cerr << "emud-device-plugin: signal " << s << ": stopping" << std::endl;
    plugin.Stop();
  });
  sig.detach();
  std::cerr << "emud-device-plugin: " << o.resource << " pool of " << o.pool_size << " ("
            << o.device_prefix << "0..), emud " << o.emud_address << ", kubelet "
            << o.kubelet_dir << "/" << o.kubelet_socket << std::endl;
  plugin.Run();
  return 0;
}
