// DeviceServiceImpl: the emud.v1.DeviceService gRPC service on top of
// DeviceManager. Maps absl::Status codes one to one onto gRPC codes and
// honours each call's deadline and cancellation.
#ifndef EMUD_SERVER_SERVICE_H_
#define EMUD_SERVER_SERVICE_H_

#include <string>

#include "absl/time/time.h"
#include "proto/emud_v1.grpc.pb.h"
#include "server/device_manager.h"

namespace emud::server {

// What GetServerInfo reports besides the device count.
struct ServerIdentity {
  std::string state_dir;
  std::string socket_dir;
  absl::Time start_time = absl::UnixEpoch();
};

class DeviceServiceImpl final : public emud::v1::DeviceService::Service {
 public:
  explicit DeviceServiceImpl(DeviceManager* manager, ServerIdentity identity = {})
      : manager_(manager), identity_(std::move(identity)) {}

  grpc::Status CreateDevice(grpc::ServerContext* ctx, const emud::v1::CreateDeviceRequest* req,
                            emud::v1::Device* resp) override;
  grpc::Status GetDevice(grpc::ServerContext* ctx, const emud::v1::GetDeviceRequest* req,
                         emud::v1::Device* resp) override;
  grpc::Status ListDevices(grpc::ServerContext* ctx, const emud::v1::ListDevicesRequest* req,
                           emud::v1::ListDevicesResponse* resp) override;
  grpc::Status DeleteDevice(grpc::ServerContext* ctx, const emud::v1::DeleteDeviceRequest* req,
                            emud::v1::DeleteDeviceResponse* resp) override;
  grpc::Status ResetDevice(grpc::ServerContext* ctx, const emud::v1::ResetDeviceRequest* req,
                           emud::v1::Device* resp) override;
  grpc::Status GetDeviceStats(grpc::ServerContext* ctx,
                              const emud::v1::GetDeviceStatsRequest* req,
                              emud::v1::DeviceStats* resp) override;
  grpc::Status WatchDevices(grpc::ServerContext* ctx, const emud::v1::WatchDevicesRequest* req,
                            grpc::ServerWriter<emud::v1::DeviceEvent>* writer) override;
  grpc::Status UpgradeWorker(grpc::ServerContext* ctx, const emud::v1::UpgradeWorkerRequest* req,
                             emud::v1::Device* resp) override;
  grpc::Status GetServerInfo(grpc::ServerContext* ctx, const emud::v1::GetServerInfoRequest* req,
                             emud::v1::ServerInfo* resp) override;

 private:
  DeviceManager* const manager_;
  const ServerIdentity identity_;
};

// ErrorInfo of an error about a request field: the domain and reasons.
inline constexpr char kErrorDomain[] = "emud.dev";
inline constexpr char kReasonInvalidField[] = "INVALID_FIELD";  // INVALID_ARGUMENT
// ALREADY_EXISTS: another device uses the value (name, MAC, socket, TAP).
inline constexpr char kReasonFieldValueInUse[] = "FIELD_VALUE_IN_USE";
// FAILED_PRECONDITION: the value conflicts with emud's state (e.g. a peer
// paired elsewhere, a socket path whose directory is a file).
inline constexpr char kReasonFieldConflict[] = "FIELD_CONFLICT";

// absl::Status -> grpc::Status with the same code and message. An error
// about a request field (validation.h WithField) also carries, in the
// status details (grpc-status-details-bin, a google.rpc.Status), a
// google.rpc.BadRequest (INVALID_ARGUMENT only: the field path and the
// message) and a google.rpc.ErrorInfo (reason above, domain "emud.dev",
// metadata {"field": path}).
grpc::Status ToGrpc(const absl::Status& s);

}  // namespace emud::server

#endif  // EMUD_SERVER_SERVICE_H_
