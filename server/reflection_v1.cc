#include "server/reflection_v1.h"

#include <memory>
#include <string>
#include <vector>

namespace emud::server {
namespace {

namespace rv1 = grpc::reflection::v1;

constexpr char kV1AlphaMethod[] =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

grpc::ByteBuffer ToBuffer(const google::protobuf::Message& m) {
  grpc::Slice slice(m.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

bool FromBuffer(const grpc::ByteBuffer& b, google::protobuf::Message* m) {
  std::vector<grpc::Slice> slices;
  if (!b.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return m->ParseFromString(bytes);
}

}  // namespace

grpc::Status ReflectionV1Service::ServerReflectionInfo(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<rv1::ServerReflectionResponse, rv1::ServerReflectionRequest>*
        stream) {
  grpc::Server* server = server_.load();
  if (server == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server reflection is not ready yet");
  }
  std::shared_ptr<grpc::Channel> channel = server->InProcessChannel(grpc::ChannelArguments());
  // The inner call ends with this one (deadline and cancellation).
  std::unique_ptr<grpc::ClientContext> inner = grpc::ClientContext::FromServerContext(*ctx);
  // The generated sync stubs' own factory, over raw bytes: no v1alpha
  // message types are needed (libgrpc++_reflection already registers them).
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> call(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(),
          grpc::internal::RpcMethod(kV1AlphaMethod, grpc::internal::RpcMethod::BIDI_STREAMING,
                                    channel),
          inner.get()));
  rv1::ServerReflectionRequest req;
  while (stream->Read(&req)) {
    grpc::ByteBuffer answer;
    if (!call->Write(ToBuffer(req)) || !call->Read(&answer)) break;
    rv1::ServerReflectionResponse resp;
    if (!FromBuffer(answer, &resp)) {
      call->WritesDone();
      inner->TryCancel();
      call->Finish();
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          "the v1alpha reflection service sent an answer that is not a "
                          "ServerReflectionResponse");
    }
    if (!stream->Write(resp)) break;
  }
  call->WritesDone();
  grpc::Status s = call->Finish();
  if (s.error_code() == grpc::StatusCode::CANCELLED && ctx->IsCancelled()) return grpc::Status::OK;
  return s;
}

}  // namespace emud::server
