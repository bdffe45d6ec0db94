#include "deviceplugin/plugin.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "base/socket_access.h"

namespace emud::deviceplugin {
namespace {

namespace v1 = emud::v1;

void Log(const std::string& msg) { std::cerr << "emud-device-plugin: " << msg << std::endl; }

bool Serving(v1::Phase p) {
  return p == v1::PHASE_LISTENING || p == v1::PHASE_CONNECTED || p == v1::PHASE_DRIVER_READY ||
         p == v1::PHASE_LINK_UP;
}

std::string Dirname(const std::string& p) {
  size_t slash = p.rfind('/');
  return slash == 0 ? "/" : p.substr(0, slash);
}

bool ValidDeviceNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

}  // namespace

std::string DefaultEndpoint(const std::string& resource) {
  return absl::StrReplaceAll(resource, {{"/", "-"}}) + ".sock";
}

std::string EnvSuffix(const std::string& resource) {
  std::string out;
  for (char c : resource) {
    out.push_back(absl::ascii_isalnum(static_cast<unsigned char>(c))
                      ? absl::ascii_toupper(static_cast<unsigned char>(c))
                      : '_');
  }
  return out;
}

absl::Status ValidateOptions(const PluginOptions& o) {
  size_t slash = o.resource.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == o.resource.size() ||
      o.resource.find('/', slash + 1) != std::string::npos ||
      o.resource.find('.') > slash) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--resource '", o.resource,
        "' must be <domain>/<name> with a dotted domain, like emud.io/avf (kubelet refuses "
        "other extended resource names)"));
  }
  if (o.pool_size < 1 || o.pool_size > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("--pool-size ", o.pool_size, " is out of range; use 1 to 256"));
  }
  if (o.device_prefix.empty() || o.device_prefix.size() > 56 ||
      !std::all_of(o.device_prefix.begin(), o.device_prefix.end(), ValidDeviceNameChar) ||
      o.device_prefix[0] == '.' || o.device_prefix[0] == '-') {
    return absl::InvalidArgumentError(absl::StrCat(
        "--device-prefix '", o.device_prefix,
        "' must be 1-56 characters of [A-Za-z0-9._-], not starting with '.' or '-' (device "
        "names are <prefix><index>)"));
  }
  if (o.kubelet_dir.empty() || o.kubelet_dir[0] != '/') {
    return absl::InvalidArgumentError("--kubelet-dir must be an absolute path");
  }
  if (o.endpoint.empty() || o.endpoint.find('/') != std::string::npos ||
      o.endpoint == o.kubelet_socket) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--endpoint '", o.endpoint, "' must be a file name (no '/') other than kubelet's socket"));
  }
  if (!o.container_dir.empty() && o.container_dir[0] != '/') {
    return absl::InvalidArgumentError("--container-dir must be an absolute path (or empty)");
  }
  if (!o.cdi_dir.empty() && o.cdi_dir[0] != '/') {
    return absl::InvalidArgumentError("--cdi-dir must be an absolute path (or empty)");
  }
  if (o.queue_pairs < 1 || o.queue_pairs > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("--queues ", o.queue_pairs, " is out of range; use 1 to 16"));
  }
  if (o.socket_mode != 0) {
    absl::Status s = ValidateSocketMode(o.socket_mode, "--socket-mode");
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

Plugin::Plugin(PluginOptions o) : options_(std::move(o)) {
  if (options_.endpoint.empty()) options_.endpoint = DefaultEndpoint(options_.resource);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  absl::MutexLock l(&mu_);
  for (int i = 0; i < options_.pool_size; ++i) pool_[DeviceName(i)];
}

Plugin::~Plugin() {
  Stop();
  if (emud_thread_.joinable()) emud_thread_.join();
  StopServer();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

std::string Plugin::DeviceName(int i) const { return absl::StrCat(options_.device_prefix, i); }

v1::CreateDeviceRequest Plugin::CreateRequest(int i) const {
  v1::CreateDeviceRequest req;
  req.set_name(DeviceName(i));
  req.set_type(v1::DEVICE_TYPE_AVF);
  v1::DeviceSpec* spec = req.mutable_spec();
  spec->set_queue_pairs(options_.queue_pairs);
  spec->set_backend(absl::StrReplaceAll(options_.backend, {{"{i}", absl::StrCat(i)}}));
  spec->set_doorbell(options_.doorbell);
  if (options_.socket_uid) spec->set_socket_uid(*options_.socket_uid);
  if (options_.socket_gid) spec->set_socket_gid(*options_.socket_gid);
  spec->set_socket_mode(options_.socket_mode);
  return req;
}

void Plugin::Stop() {
  stopping_ = true;
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof(one));
  absl::MutexLock l(&mu_);
  if (watch_ctx_ != nullptr) watch_ctx_->TryCancel();
  ++version_;
}

// ------------------------------------------------------------ emud side

void Plugin::EnsurePool(v1::DeviceService::Stub* stub) {
  for (int i = 0; i < options_.pool_size && !stopping_; ++i) {
    {
      absl::MutexLock l(&mu_);
      if (pool_[DeviceName(i)].known) continue;
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::Device d;
    grpc::Status s = stub->CreateDevice(&ctx, CreateRequest(i), &d);
    if (s.ok()) {
      Log(absl::StrCat("created device ", d.name(), " (", d.spec().socket_path(), ")"));
      absl::MutexLock l(&mu_);
      SetDevice(d);
    } else if (s.error_code() != grpc::StatusCode::ALREADY_EXISTS) {
      Log(absl::StrCat("cannot create pool device ", DeviceName(i), ": ", s.error_message(),
                       " (it stays Unhealthy; fix the device template flags)"));
    }
  }
}

void Plugin::SetDevice(const v1::Device& d) {
  auto it = pool_.find(d.name());
  if (it == pool_.end()) return;
  State& st = it->second;
  const bool was = HealthyLocked(d.name());
  const std::string old_path = st.device.spec().socket_path();
  st.known = true;
  st.device = d;
  if (was != HealthyLocked(d.name()) || old_path != d.spec().socket_path()) {
    ++version_;
    Log(absl::StrCat("device ", d.name(), " ", HealthyLocked(d.name()) ? kHealthy : kUnhealthy,
                     " (", v1::Phase_Name(d.status().phase()), ")"));
  }
  WriteCdiSpecLocked();
}

void Plugin::SetEmudUp(bool up) {
  if (emud_up_ == up) return;
  emud_up_ = up;
  ++version_;
  Log(up ? "emud reachable" : "emud unreachable: every device is Unhealthy until it is back");
}

bool Plugin::HealthyLocked(const std::string& name) const {
  auto it = pool_.find(name);
  return emud_up_ && it != pool_.end() && it->second.known &&
         Serving(it->second.device.status().phase());
}

void Plugin::FollowEmud() {
  while (!stopping_) {
    auto channel = grpc::CreateChannel(options_.emud_address, grpc::InsecureChannelCredentials());
    auto stub = v1::DeviceService::NewStub(channel);
    v1::ListDevicesResponse list;
    grpc::ClientContext lctx;
    lctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status s = stub->ListDevices(&lctx, v1::ListDevicesRequest(), &list);
    if (s.ok()) {
      {
        absl::MutexLock l(&mu_);
        for (auto& [name, st] : pool_) st.known = false;
        for (const auto& d : list.devices()) SetDevice(d);
        SetEmudUp(true);
        ++version_;
      }
      EnsurePool(stub.get());
      grpc::ClientContext wctx;
      {
        absl::MutexLock l(&mu_);
        watch_ctx_ = &wctx;
      }
      v1::WatchDevicesRequest wreq;
      for (int i = 0; i < options_.pool_size; ++i) wreq.add_names(DeviceName(i));
      auto reader = stub->WatchDevices(&wctx, wreq);
      v1::DeviceEvent ev;
      while (!stopping_ && reader->Read(&ev)) {
        bool recreate = false;
        {
          absl::MutexLock l(&mu_);
          if (ev.kind() == v1::DeviceEvent::KIND_DELETED) {
            auto it = pool_.find(ev.device().name());
            if (it != pool_.end()) {
              it->second.known = false;
              ++version_;
              Log(absl::StrCat("device ", ev.device().name(),
                               " was deleted: Unhealthy, creating it again"));
              recreate = true;
            }
          } else {
            SetDevice(ev.device());
          }
        }
        if (recreate) EnsurePool(stub.get());
      }
      wctx.TryCancel();
      s = reader->Finish();
      absl::MutexLock l(&mu_);
      watch_ctx_ = nullptr;
    }
    if (stopping_) break;
    {
      absl::MutexLock l(&mu_);
      if (emud_up_ || version_ == 1) {
        Log(absl::StrCat("lost emud at ", options_.emud_address, ": ", s.error_message()));
      }
      SetEmudUp(false);
    }
    // Retry once a second (a restarted emud serves within ~100 ms).
    struct pollfd p = {wake_fd_, POLLIN, 0};
    ::poll(&p, 1, 1000);
  }
}

v1beta1::ListAndWatchResponse Plugin::ListLocked() const {
  v1beta1::ListAndWatchResponse r;
  for (const auto& [name, st] : pool_) {
    v1beta1::Device* d = r.add_devices();
    d->set_id(name);
    d->set_health(HealthyLocked(name) ? kHealthy : kUnhealthy);
  }
  return r;
}

void Plugin::WriteCdiSpecLocked() {
  if (options_.cdi_dir.empty()) return;
  // CDI 0.5.0: kind "<domain>/<class>", one device per pool device, each
  // with the same edits Allocate would return.
  nlohmann::json devices = nlohmann::json::array();
  const std::string suffix = EnvSuffix(options_.resource);
  for (const auto& [name, st] : pool_) {
    if (!st.known) continue;
    const std::string sock = st.device.spec().socket_path();
    const std::string host_dir = Dirname(sock);
    const std::string cdir =
        options_.container_dir.empty() ? host_dir : options_.container_dir + "/" + name;
    const std::string csock = options_.container_dir.empty()
                                  ? sock
                                  : cdir + sock.substr(host_dir.size());
    devices.push_back({{"name", name},
                       {"containerEdits",
                        {{"env", {absl::StrCat("EMUD_DEVICES_", suffix, "=", name),
                                  absl::StrCat("EMUD_SOCKETS_", suffix, "=", csock)}},
                         {"mounts",
                          {{{"hostPath", host_dir},
                            {"containerPath", cdir},
                            {"options", {"ro", "rbind"}}}}}}}});
  }
  nlohmann::json spec = {{"cdiVersion", "0.5.0"}, {"kind", options_.resource}, {"devices", devices}};
  std::string text = spec.dump(2) + "\n";
  if (text == cdi_written_) return;
  ::mkdir(options_.cdi_dir.c_str(), 0755);
  const std::string path =
      options_.cdi_dir + "/" + absl::StrReplaceAll(options_.resource, {{"/", "-"}}) + ".json";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << text;
    if (!f) {
      Log(absl::StrCat("cannot write CDI spec ", tmp, ": ", std::strerror(errno)));
      return;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    Log(absl::StrCat("cannot write CDI spec ", path, ": ", std::strerror(errno)));
    return;
  }
  cdi_written_ = text;
}

// ----------------------------------------------------------- kubelet side

grpc::Status Plugin::GetDevicePluginOptions(grpc::ServerContext*, const v1beta1::Empty*,
                                            v1beta1::DevicePluginOptions* out) {
  out->set_pre_start_required(true);
  out->set_get_preferred_allocation_available(true);
  return grpc::Status::OK;
}

grpc::Status Plugin::ListAndWatch(grpc::ServerContext* ctx, const v1beta1::Empty*,
                                  grpc::ServerWriter<v1beta1::ListAndWatchResponse>* w) {
  uint64_t sent = 0, generation = 0;
  {
    absl::MutexLock l(&mu_);
    generation = server_generation_;
  }
  while (!stopping_ && !ctx->IsCancelled()) {
    v1beta1::ListAndWatchResponse resp;
    {
      absl::MutexLock l(&mu_);
      auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return version_ != sent || server_generation_ != generation || stopping_;
      };
      mu_.AwaitWithTimeout(absl::Condition(&changed), absl::Seconds(1));
      if (server_generation_ != generation || stopping_) break;
      if (version_ == sent) continue;
      sent = version_;
      resp = ListLocked();
    }
    if (!w->Write(resp)) break;
  }
  return grpc::Status::OK;
}

grpc::Status Plugin::GetPreferredAllocation(grpc::ServerContext*,
                                            const v1beta1::PreferredAllocationRequest* req,
                                            v1beta1::PreferredAllocationResponse* out) {
  absl::MutexLock l(&mu_);
  for (const auto& cr : req->container_requests()) {
    auto* resp = out->add_container_responses();
    std::set<std::string> chosen;
    for (const auto& id : cr.must_include_deviceids()) {
      if (chosen.insert(id).second) resp->add_deviceids(id);
    }
    // Healthy devices without a guest first, then in pool order (names
    // sort by index only for equal lengths: order by the pool's map, which
    // is what ListAndWatch shows).
    std::vector<std::pair<int, std::string>> ranked;
    for (const auto& id : cr.available_deviceids()) {
      auto it = pool_.find(id);
      int rank = 2;
      if (it != pool_.end() && HealthyLocked(id)) {
        rank = it->second.device.status().phase() == v1::PHASE_LISTENING ? 0 : 1;
      }
      ranked.push_back({rank, id});
    }
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [rank, id] : ranked) {
      if (static_cast<int>(chosen.size()) >= cr.allocation_size()) break;
      if (chosen.insert(id).second) resp->add_deviceids(id);
    }
  }
  return grpc::Status::OK;
}

grpc::Status Plugin::Allocate(grpc::ServerContext*, const v1beta1::AllocateRequest* req,
                              v1beta1::AllocateResponse* out) {
  absl::MutexLock l(&mu_);
  const std::string suffix = EnvSuffix(options_.resource);
  for (const auto& cr : req->container_requests()) {
    auto* resp = out->add_container_responses();
    std::vector<std::string> names, sockets;
    for (const auto& id : cr.devices_ids()) {
      auto it = pool_.find(id);
      if (it == pool_.end()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("device '", id, "' is not in the ", options_.resource,
                                         " pool of this node"));
      }
      if (!it->second.known) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            absl::StrCat("device '", id, "' is not known to emud (",
                                         emud_up_ ? "being created" : "emud unreachable", ")"));
      }
      const std::string sock = it->second.device.spec().socket_path();
      const std::string host_dir = Dirname(sock);
      const std::string cdir =
          options_.container_dir.empty() ? host_dir : options_.container_dir + "/" + id;
      names.push_back(id);
      sockets.push_back(options_.container_dir.empty() ? sock : cdir + sock.substr(host_dir.size()));
      if (!options_.cdi_dir.empty()) {
        resp->add_cdi_devices()->set_name(absl::StrCat(options_.resource, "=", id));
        continue;
      }
      // The device's own directory, read-only: connect() needs write
      // permission on the socket inode, which a read-only bind mount keeps;
      // the VMM cannot unlink or replace the socket.
      v1beta1::Mount* m = resp->add_mounts();
      m->set_host_path(host_dir);
      m->set_container_path(cdir);
      m->set_read_only(true);
    }
    if (options_.cdi_dir.empty()) {
      (*resp->mutable_envs())["EMUD_DEVICES_" + suffix] = absl::StrJoin(names, ",");
      (*resp->mutable_envs())["EMUD_SOCKETS_" + suffix] = absl::StrJoin(sockets, ",");
    }
    Log(absl::StrCat("allocated ", absl::StrJoin(names, ",")));
  }
  return grpc::Status::OK;
}

grpc::Status Plugin::PreStartContainer(grpc::ServerContext*,
                                       const v1beta1::PreStartContainerRequest* req,
                                       v1beta1::PreStartContainerResponse*) {
  // Each device must serve before the VMM starts: a FAILED one gets a fresh
  // worker (ResetDevice), then we wait for a serving phase.
  auto channel = grpc::CreateChannel(options_.emud_address, grpc::InsecureChannelCredentials());
  auto stub = v1::DeviceService::NewStub(channel);
  const absl::Time deadline = absl::Now() + options_.prestart_timeout;
  for (const auto& id : req->devices_ids()) {
    {
      absl::MutexLock l(&mu_);
      if (pool_.find(id) == pool_.end()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("device '", id, "' is not in this plugin's pool"));
      }
    }
    bool reset = false;
    std::string last;
    while (true) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::GetDeviceRequest g;
      g.set_name(id);
      v1::Device d;
      grpc::Status s = stub->GetDevice(&ctx, g, &d);
      if (s.ok() && Serving(d.status().phase())) break;
      last = s.ok() ? absl::StrCat(v1::Phase_Name(d.status().phase()),
                                   d.status().last_error().empty()
                                       ? ""
                                       : absl::StrCat(": ", d.status().last_error()))
                    : s.error_message();
      if (s.ok() && d.status().phase() == v1::PHASE_FAILED && !reset) {
        reset = true;
        grpc::ClientContext rctx;
        rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        v1::ResetDeviceRequest r;
        r.set_name(id);
        v1::Device out;
        grpc::Status rs = stub->ResetDevice(&rctx, r, &out);
        Log(absl::StrCat("device ", id, " was FAILED before a container start: reset: ",
                         rs.ok() ? "ok" : rs.error_message()));
      }
      if (absl::Now() > deadline) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            absl::StrCat("device '", id, "' does not serve its socket (", last,
                                         "); see emuctl get ", id));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  return grpc::Status::OK;
}

absl::Status Plugin::StartServer() {
  StopServer();
  grpc::ServerBuilder b;
  const std::string path = EndpointPath();
  ::unlink(path.c_str());
  b.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
  b.RegisterService(this);
  server_ = b.BuildAndStart();
  if (server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve on ", path,
                                               " (is the device-plugins directory writable?)"));
  }
  ::chmod(path.c_str(), 0600);  // kubelet runs as root
  return absl::OkStatus();
}

void Plugin::StopServer() {
  if (server_ == nullptr) return;
  {
    absl::MutexLock l(&mu_);
    ++server_generation_;  // ends this server's ListAndWatch streams
  }
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server_->Wait();
  server_.reset();
}

absl::Status Plugin::Register() {
  const std::string kubelet = options_.kubelet_dir + "/" + options_.kubelet_socket;
  auto channel = grpc::CreateChannel("unix:" + kubelet, grpc::InsecureChannelCredentials());
  auto stub = v1beta1::Registration::NewStub(channel);
  v1beta1::RegisterRequest req;
  req.set_version(kApiVersion);
  req.set_endpoint(options_.endpoint);
  req.set_resource_name(options_.resource);
  GetDevicePluginOptions(nullptr, nullptr, req.mutable_options());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1beta1::Empty e;
  grpc::Status s = stub->Register(&ctx, req, &e);
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat("Register with ", kubelet, ": ", s.error_message()));
}

void Plugin::Run() {
  emud_thread_ = std::thread([this] { FollowEmud(); });
  int in = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  ::mkdir(options_.kubelet_dir.c_str(), 0755);
  ::inotify_add_watch(in, options_.kubelet_dir.c_str(), IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM);
  const std::string kubelet = options_.kubelet_dir + "/" + options_.kubelet_socket;
  bool need_register = true;
  bool need_serve = true;  // no server yet, or kubelet removed its socket
  absl::Time next_try = absl::InfinitePast();
  ino_t kubelet_ino = 0;
  // inotify first, then stat: a kubelet socket created while we slept is
  // then seen once (by its event) instead of twice (stat now, the event
  // on the next turn) - which would register twice.
  auto drain_inotify = [&] {
    alignas(struct inotify_event) char buf[4096];
    ssize_t n;
    while ((n = ::read(in, buf, sizeof(buf))) > 0) {
      for (ssize_t off = 0; off < n;) {
        const auto* ev = reinterpret_cast<const struct inotify_event*>(buf + off);
        if (ev->len > 0 && (ev->mask & (IN_CREATE | IN_MOVED_TO)) &&
            options_.kubelet_socket == ev->name) {
          kubelet_ino = 0;  // a new kubelet socket, whatever its inode number
          Log("kubelet's socket was (re)created: registering again");
          need_register = true;
        }
        off += sizeof(struct inotify_event) + ev->len;
      }
    }
  };
  while (!stopping_) {
    drain_inotify();
    struct stat st {};
    const bool kubelet_up = ::stat(kubelet.c_str(), &st) == 0;
    const bool ours_present = ::access(EndpointPath().c_str(), F_OK) == 0;
    if (kubelet_up && st.st_ino != kubelet_ino) {
      // kubelet (re)created its socket: it forgot every plugin (inotify
      // above catches a re-creation that reuses the inode number).
      if (kubelet_ino != 0) Log("kubelet's socket changed: registering again");
      kubelet_ino = st.st_ino;
      need_register = true;
    }
    if (server_ != nullptr && !ours_present && !need_serve) {
      Log(absl::StrCat("our socket ", EndpointPath(), " was removed: serving and registering again"));
      need_serve = true;
      need_register = true;
    }
    if (need_register && kubelet_up && absl::Now() >= next_try) {
      // Serve anew only when our socket is gone: a server that still serves
      // keeps its ListAndWatch streams (kubelet may already have dialled it
      // after an earlier registration; it replaces its old connection itself
      // when a registration repeats).
      absl::Status s = need_serve ? StartServer() : absl::OkStatus();
      if (s.ok()) need_serve = false;
      if (s.ok()) s = Register();
      if (s.ok()) {
        Log(absl::StrCat("registered ", options_.resource, " (", options_.pool_size,
                         " devices) with kubelet at ", kubelet, " as ", options_.endpoint));
        need_register = false;
      } else {
        Log(absl::StrCat(s.message(), "; retrying in 1s"));
        next_try = absl::Now() + absl::Seconds(1);
      }
    }
    struct pollfd p[2] = {{in, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    ::poll(p, 2, 500);
  }
  ::close(in);
  StopServer();
  ::unlink(EndpointPath().c_str());
  if (emud_thread_.joinable()) emud_thread_.join();
}

}  // namespace emud::deviceplugin
