// grpc.reflection.v1.ServerReflection for emud. Debian 12's gRPC 1.51
// implements only grpc.reflection.v1alpha (libgrpc++_reflection, enabled by
// grpc::reflection::InitProtoReflectionServerBuilderPlugin). The two
// versions have the same messages and field numbers, so this service answers
// each v1 request by passing its bytes to the v1alpha service of the same
// server (over the server's in-process channel) and returning the answer's
// bytes as a v1 response: both versions give the same answers, and v1 lists
// itself among the services.
#ifndef EMUD_SERVER_REFLECTION_V1_H_
#define EMUD_SERVER_REFLECTION_V1_H_

#include <grpcpp/grpcpp.h>

#include <atomic>

#include "proto/reflection_v1.grpc.pb.h"

namespace emud::server {

class ReflectionV1Service final : public grpc::reflection::v1::ServerReflection::Service {
 public:
  // The server whose v1alpha service answers. Until it is set (right after
  // BuildAndStart), calls fail with UNAVAILABLE.
  void SetServer(grpc::Server* server) { server_.store(server); }

  grpc::Status ServerReflectionInfo(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<grpc::reflection::v1::ServerReflectionResponse,
                               grpc::reflection::v1::ServerReflectionRequest>* stream) override;

 private:
  std::atomic<grpc::Server*> server_{nullptr};
};

}  // namespace emud::server

#endif  // EMUD_SERVER_REFLECTION_V1_H_
