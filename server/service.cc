#include "server/service.h"

#include <algorithm>
#include <unistd.h>

#include <set>

#include <grpcpp/grpcpp.h>
#include "google/protobuf/stubs/common.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "base/version.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/validation.h"
#include "state_store/state_dir.h"

namespace emud::server {
namespace {

namespace v1 = emud::v1;

absl::Time Deadline(const grpc::ServerContext* ctx) {
  auto d = ctx->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

// Names in requests are checked before lookups so that a malformed name
// gets INVALID_ARGUMENT rather than NOT_FOUND.
absl::Status CheckName(const std::string& name, const std::string& field = "name") {
  absl::Status s = state_store::ValidateDeviceName(name);
  if (!s.ok()) {
    return WithField(absl::InvalidArgumentError(absl::StrCat(field, ": ", s.message())), field);
  }
  return absl::OkStatus();
}

grpc::Status DeadlinePassed(const grpc::ServerContext* ctx) {
  if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled");
  if (absl::Now() > Deadline(ctx)) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed before processing");
  }
  return grpc::Status::OK;
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(s.code());
  const std::string field = FieldOf(s);
  if (field.empty()) return grpc::Status(code, std::string(s.message()));
  google::rpc::Status details;
  details.set_code(static_cast<int>(s.code()));
  details.set_message(std::string(s.message()));
  if (s.code() == absl::StatusCode::kInvalidArgument) {
    google::rpc::BadRequest bad;
    auto* v = bad.add_field_violations();
    v->set_field(field);
    v->set_description(std::string(s.message()));
    details.add_details()->PackFrom(bad);
  }
  google::rpc::ErrorInfo info;
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument: info.set_reason(kReasonInvalidField); break;
    case absl::StatusCode::kAlreadyExists: info.set_reason(kReasonFieldValueInUse); break;
    default: info.set_reason(kReasonFieldConflict); break;
  }
  info.set_domain(kErrorDomain);
  (*info.mutable_metadata())["field"] = field;
  details.add_details()->PackFrom(info);
  return grpc::Status(code, std::string(s.message()), details.SerializeAsString());
}

grpc::Status DeviceServiceImpl::CreateDevice(grpc::ServerContext* ctx,
                                             const v1::CreateDeviceRequest* req,
                                             v1::Device* resp) {
  if (auto g = DeadlinePassed(ctx); !g.ok()) return g;
  auto d = manager_->CreateDevice(*req);
  if (!d.ok()) return ToGrpc(d.status());
  *resp = std::move(*d);
  return grpc::Status::OK;
}

grpc::Status DeviceServiceImpl::GetDevice(grpc::ServerContext*, const v1::GetDeviceRequest* req,
                                          v1::Device* resp) {
  if (auto s = CheckName(req->name()); !s.ok()) return ToGrpc(s);
  auto d = manager_->GetDevice(req->name());
  if (!d.ok()) return ToGrpc(d.status());
  *resp = std::move(*d);
  return grpc::Status::OK;
}

grpc::Status DeviceServiceImpl::ListDevices(grpc::ServerContext*, const v1::ListDevicesRequest*,
                                            v1::ListDevicesResponse* resp) {
  for (auto& d : manager_->ListDevices()) *resp->add_devices() = std::move(d);
  return grpc::Status::OK;
}

grpc::Status DeviceServiceImpl::DeleteDevice(grpc::ServerContext* ctx,
                                             const v1::DeleteDeviceRequest* req,
                                             v1::DeleteDeviceResponse*) {
  if (auto s = CheckName(req->name()); !s.ok()) return ToGrpc(s);
  if (auto g = DeadlinePassed(ctx); !g.ok()) return g;
  return ToGrpc(manager_->DeleteDevice(req->name(), req->force(), Deadline(ctx)));
}

grpc::Status DeviceServiceImpl::ResetDevice(grpc::ServerContext* ctx,
                                            const v1::ResetDeviceRequest* req, v1::Device* resp) {
  if (auto s = CheckName(req->name()); !s.ok()) return ToGrpc(s);
  if (auto g = DeadlinePassed(ctx); !g.ok()) return g;
  auto d = manager_->ResetDevice(req->name(), Deadline(ctx));
  if (!d.ok()) return ToGrpc(d.status());
  *resp = std::move(*d);
  return grpc::Status::OK;
}

grpc::Status DeviceServiceImpl::GetDeviceStats(grpc::ServerContext*,
                                               const v1::GetDeviceStatsRequest* req,
                                               v1::DeviceStats* resp) {
  if (auto s = CheckName(req->name()); !s.ok()) return ToGrpc(s);
  auto st = manager_->GetDeviceStats(req->name());
  if (!st.ok()) return ToGrpc(st.status());
  *resp = std::move(*st);
  return grpc::Status::OK;
}

grpc::Status DeviceServiceImpl::UpgradeWorker(grpc::ServerContext* ctx,
                                              const v1::UpgradeWorkerRequest* req,
                                              v1::Device* resp) {
  if (auto s = CheckName(req->name()); !s.ok()) return ToGrpc(s);
  if (auto g = DeadlinePassed(ctx); !g.ok()) return g;
  auto d = manager_->UpgradeWorker(req->name(), req->worker_binary(), Deadline(ctx));
  if (!d.ok()) return ToGrpc(d.status());
  *resp = std::move(*d);
  return grpc::Status::OK;
}

grpc::Status DeviceServiceImpl::WatchDevices(grpc::ServerContext* ctx,
                                             const v1::WatchDevicesRequest* req,
                                             grpc::ServerWriter<v1::DeviceEvent>* writer) {
  std::set<std::string> names;
  for (const auto& n : req->names()) {
    if (auto s = CheckName(n, "names"); !s.ok()) return ToGrpc(s);
    names.insert(n);
  }
  auto wanted = [&](const v1::Device& d) { return names.empty() || names.count(d.name()) > 0; };
  uint64_t cursor = 0;
  std::vector<v1::Device> snapshot = manager_->Snapshot(&cursor);
  // Watching a name that does not exist would wait forever for nothing.
  for (const std::string& n : names) {
    bool found = std::any_of(snapshot.begin(), snapshot.end(),
                             [&](const v1::Device& d) { return d.name() == n; });
    if (!found) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("device ", n, " not found; emuctl list shows the devices"));
    }
  }
  if (!req->skip_initial()) {
    for (auto& d : snapshot) {
      if (!wanted(d)) continue;
      v1::DeviceEvent ev;
      ev.set_kind(v1::DeviceEvent::KIND_ADDED);
      *ev.mutable_device() = std::move(d);
      *ev.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
      if (!writer->Write(ev)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
  }
  while (true) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled");
    absl::Duration wait = std::min(absl::Milliseconds(500), Deadline(ctx) - absl::Now());
    if (wait <= absl::ZeroDuration()) return grpc::Status::OK;  // the deadline ends a watch
    std::vector<v1::DeviceEvent> events;
    switch (manager_->WaitForEvents(&cursor, &events, wait)) {
      case DeviceManager::WaitResult::kShutdown:
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "emud is shutting down");
      case DeviceManager::WaitResult::kFellBehind:
        return grpc::Status(grpc::StatusCode::ABORTED,
                            "watch fell behind the event history; start a new watch");
      case DeviceManager::WaitResult::kTimeout:
        continue;
      case DeviceManager::WaitResult::kEvents:
        break;
    }
    for (const auto& ev : events) {
      if (!wanted(ev.device())) continue;
      if (!writer->Write(ev)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
  }
}

grpc::Status DeviceServiceImpl::GetServerInfo(grpc::ServerContext*,
                                              const v1::GetServerInfoRequest*,
                                              v1::ServerInfo* resp) {
  resp->set_version(kVersion);
#ifdef NDEBUG
  resp->set_build_type("release");
#else
  resp->set_build_type("debug");
#endif
  resp->set_grpc_version(grpc::Version());
  resp->set_protobuf_version(google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION));
  *resp->mutable_start_time() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(identity_.start_time));
  resp->set_state_dir(identity_.state_dir);
  resp->set_socket_dir(identity_.socket_dir);
  resp->set_device_count(static_cast<uint32_t>(manager_->ListDevices().size()));
  resp->set_pid(::getpid());
  return grpc::Status::OK;
}

}  // namespace emud::server
