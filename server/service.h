// DeviceServiceImpl: the emud.v1.DeviceService gRPC service on top of
// DeviceManager. Maps absl::Status codes one to one onto gRPC codes and
// honours each call's deadline and cancellation.
#ifndef EMUD_SERVER_SERVICE_H_
#define EMUD_SERVER_SERVICE_H_

#include "proto/emud_v1.grpc.pb.h"
#include "server/device_manager.h"

namespace emud::server {

class DeviceServiceImpl final : public emud::v1::DeviceService::Service {
 public:
  explicit DeviceServiceImpl(DeviceManager* manager) : manager_(manager) {}

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

 private:
  DeviceManager* const manager_;
};

// absl::Status -> grpc::Status with the same code and message.
grpc::Status ToGrpc(const absl::Status& s);

}  // namespace emud::server

#endif  // EMUD_SERVER_SERVICE_H_
