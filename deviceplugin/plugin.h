// emud-device-plugin: advertises a pool of emud devices to kubelet as an
// extended resource (default emud.io/avf) through the device plugin API
// v1beta1 (deviceplugin/v1beta1/api.proto).
//
// It is a client of emud like emuctl: it creates the pool's devices from a
// template (CreateDevice), follows their phase (WatchDevices) for
// ListAndWatch's health, and answers Allocate with the mount of each device's
// socket directory and env naming the sockets. It registers with kubelet and
// registers again whenever kubelet's socket is re-created (a kubelet
// restart wipes the device-plugins directory, our socket included).
#ifndef EMUD_DEVICEPLUGIN_PLUGIN_H_
#define EMUD_DEVICEPLUGIN_PLUGIN_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "deviceplugin/v1beta1/api.grpc.pb.h"
#include "proto/emud_v1.grpc.pb.h"

namespace emud::deviceplugin {

inline constexpr char kApiVersion[] = "v1beta1";
inline constexpr char kHealthy[] = "Healthy";
inline constexpr char kUnhealthy[] = "Unhealthy";

struct PluginOptions {
  // emud's gRPC address (unix:///path or host:port).
  std::string emud_address = "unix:///var/run/emud/emud.sock";
  // kubelet's device-plugins directory and socket name in it.
  std::string kubelet_dir = "/var/lib/kubelet/device-plugins";
  std::string kubelet_socket = "kubelet.sock";
  // Extended resource name: <domain>/<name>.
  std::string resource = "emud.io/avf";
  // Our socket's file name in kubelet_dir. Empty: derived from resource.
  std::string endpoint;
  // The pool: devices <prefix>0 .. <prefix><pool_size-1>.
  int pool_size = 4;
  std::string device_prefix = "avf-";
  // Device template. "{i}" in backend is replaced by the device's index
  // (tap:vmtap{i}).
  uint32_t queue_pairs = 1;
  std::string backend = "loopback";
  emud::v1::DoorbellMode doorbell = emud::v1::DOORBELL_MODE_TRAP;
  std::optional<uint32_t> socket_uid, socket_gid;
  uint32_t socket_mode = 0;  // 0: emud's default (0660)
  // Where a device's socket directory appears in the VMM container. Empty:
  // the host path (the same path as in emud's container).
  std::string container_dir;
  // If set, write a CDI spec there (<cdi_dir>/<domain>-<name>.json) and
  // answer Allocate with CDI device names instead of mounts and env.
  std::string cdi_dir;
  // How long PreStartContainer waits for a device to serve.
  absl::Duration prestart_timeout = absl::Seconds(10);
};

// Checks the options; the message names the flag and what to fix.
absl::Status ValidateOptions(const PluginOptions& o);
// Endpoint file name for a resource: "emud.io/avf" -> "emud.io-avf.sock".
std::string DefaultEndpoint(const std::string& resource);
// Env var suffix for a resource: "emud.io/avf" -> "EMUD_IO_AVF".
std::string EnvSuffix(const std::string& resource);

class Plugin : public v1beta1::DevicePlugin::Service {
 public:
  explicit Plugin(PluginOptions o);
  ~Plugin() override;

  // Runs until Stop(): follows emud, serves the plugin socket, registers
  // with kubelet and re-registers after a kubelet restart.
  void Run();
  // Thread-safe; Run() returns soon after.
  void Stop();

  // DevicePlugin.
  grpc::Status GetDevicePluginOptions(grpc::ServerContext*, const v1beta1::Empty*,
                                      v1beta1::DevicePluginOptions* out) override;
  grpc::Status ListAndWatch(grpc::ServerContext* ctx, const v1beta1::Empty*,
                            grpc::ServerWriter<v1beta1::ListAndWatchResponse>* w) override;
  grpc::Status GetPreferredAllocation(grpc::ServerContext*,
                                      const v1beta1::PreferredAllocationRequest* req,
                                      v1beta1::PreferredAllocationResponse* out) override;
  grpc::Status Allocate(grpc::ServerContext*, const v1beta1::AllocateRequest* req,
                        v1beta1::AllocateResponse* out) override;
  grpc::Status PreStartContainer(grpc::ServerContext*, const v1beta1::PreStartContainerRequest* req,
                                 v1beta1::PreStartContainerResponse* out) override;

 private:
  struct State {
    bool known = false;  // emud reported it
    emud::v1::Device device;
  };
  std::string DeviceName(int i) const;
  emud::v1::CreateDeviceRequest CreateRequest(int i) const;
  // emud follower (own thread): reconcile the pool, then WatchDevices.
  void FollowEmud();
  void EnsurePool(emud::v1::DeviceService::Stub* stub);
  void SetDevice(const emud::v1::Device& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetEmudUp(bool up) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HealthyLocked(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1beta1::ListAndWatchResponse ListLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteCdiSpecLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Kubelet side.
  absl::Status StartServer();
  void StopServer();
  // Registers; UNAVAILABLE (kubelet not up) is retried until `until`.
  absl::Status Register();
  std::string EndpointPath() const { return options_.kubelet_dir + "/" + options_.endpoint; }

  PluginOptions options_;
  std::atomic<bool> stopping_{false};
  int wake_fd_ = -1;  // eventfd: Stop()
  std::unique_ptr<grpc::Server> server_;
  std::thread emud_thread_;

  mutable absl::Mutex mu_;
  std::map<std::string, State> pool_ ABSL_GUARDED_BY(mu_);
  bool emud_up_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 1;  // bumped on every change
  uint64_t server_generation_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::ClientContext* watch_ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::string cdi_written_ ABSL_GUARDED_BY(mu_);
};

}  // namespace emud::deviceplugin

#endif  // EMUD_DEVICEPLUGIN_PLUGIN_H_
