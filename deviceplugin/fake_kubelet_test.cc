// emud-device-plugin against a fake kubelet: a gRPC Registration server
// that, like kubelet's device manager, then connects to the plugin's socket,
// asks for its options, follows ListAndWatch, and calls
// GetPreferredAllocation, Allocate and PreStartContainer. emud and its
// workers are real; a VMM-like client (the test guest, which drives the
// device as Linux iavf does) connects as uid 107 through the allocated
// directory, and another unprivileged uid cannot. kubelet restarts (its
// socket re-created, the directory wiped), emud dies and comes back, a
// device goes FAILED and is deleted: the plugin follows each.
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "deviceplugin/v1beta1/api.grpc.pb.h"
#include "gtest/gtest.h"
#include "proto/emud_v1.grpc.pb.h"
#include "tests/integration/emud_harness.h"

namespace emud::deviceplugin {
namespace {

using emud::testing::EmudProcess;
using emud::testing::Runfile;
using emud::testing::TempStateDir;
using emud::testing::WaitFor;
namespace v1 = emud::v1;

constexpr uid_t kQemuUid = 107;  // KubeVirt's qemu user
constexpr uid_t kOtherUid = 2001;

// kubelet's Registration service: records every Register request.
class FakeKubelet final : public v1beta1::Registration::Service {
 public:
  explicit FakeKubelet(std::string dir) : dir_(std::move(dir)) {}
  ~FakeKubelet() override { Stop(); }

  // Like a starting kubelet: wipes the directory's sockets, then serves
  // kubelet.sock.
  void Start() {
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      if (e.is_socket()) std::filesystem::remove(e.path());
    }
    grpc::ServerBuilder b;
    b.AddListeningPort("unix:" + dir_ + "/kubelet.sock", grpc::InsecureServerCredentials());
    b.RegisterService(this);
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void Stop() {
    if (server_ == nullptr) return;
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
    server_.reset();
    std::filesystem::remove(dir_ + "/kubelet.sock");
  }

  grpc::Status Register(grpc::ServerContext*, const v1beta1::RegisterRequest* req,
                        v1beta1::Empty*) override {
    // kubelet checks the version and the resource name.
    if (req->version() != "v1beta1") {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unsupported version");
    }
    std::lock_guard<std::mutex> l(mu_);
    requests_.push_back(*req);
    cv_.notify_all();
    return grpc::Status::OK;
  }

  bool WaitRegister(v1beta1::RegisterRequest* out, absl::Duration timeout) {
    std::unique_lock<std::mutex> l(mu_);
    if (!cv_.wait_for(l, absl::ToChronoMilliseconds(timeout), [&] { return !requests_.empty(); })) {
      return false;
    }
    *out = requests_.front();
    requests_.pop_front();
    return true;
  }

 private:
  std::string dir_;
  std::unique_ptr<grpc::Server> server_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1beta1::RegisterRequest> requests_;
};

// kubelet's side of one plugin connection: ListAndWatch on a thread, the
// latest list kept.
class PluginConnection {
 public:
  explicit PluginConnection(const std::string& socket) {
    channel_ = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
    stub_ = v1beta1::DevicePlugin::NewStub(channel_);
  }
  ~PluginConnection() { Close(); }
  v1beta1::DevicePlugin::Stub* stub() { return stub_.get(); }

  void Watch() {
    reader_ = stub_->ListAndWatch(&ctx_, v1beta1::Empty());
    thread_ = std::thread([this] {
      v1beta1::ListAndWatchResponse r;
      while (reader_->Read(&r)) {
        std::lock_guard<std::mutex> l(mu_);
        health_.clear();
        for (const auto& d : r.devices()) health_[d.id()] = d.health();
        ++updates_;
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> l(mu_);
      ended_ = true;
      cv_.notify_all();
    });
  }
  void Close() {
    if (!thread_.joinable()) return;
    ctx_.TryCancel();
    thread_.join();
  }
  // Waits until the latest list equals `want` (id -> health).
  bool WaitList(const std::map<std::string, std::string>& want, absl::Duration timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, absl::ToChronoMilliseconds(timeout), [&] { return health_ == want; });
  }
  bool WaitEnded(absl::Duration timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, absl::ToChronoMilliseconds(timeout), [&] { return ended_; });
  }
  std::string Describe() {
    std::lock_guard<std::mutex> l(mu_);
    std::string s = absl::StrCat(updates_, " updates, last:");
    for (const auto& [id, h] : health_) absl::StrAppend(&s, " ", id, "=", h);
    return s;
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1beta1::DevicePlugin::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1beta1::ListAndWatchResponse>> reader_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> health_;
  int updates_ = 0;
  bool ended_ = false;
};

// The plugin as a child process, its output in a log file.
class PluginProcess {
 public:
  PluginProcess(const std::vector<std::string>& args, const std::string& log) : log_(log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      static std::string bin = Runfile("deviceplugin/emud-device-plugin");
      argv.push_back(bin.data());
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
  }
  ~PluginProcess() { Stop(); }
  int Stop() {
    if (pid_ <= 0) return status_;
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, &status_, 0);
    pid_ = 0;
    return status_;
  }
  std::string Log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

 private:
  std::string log_;
  pid_t pid_ = 0;
  int status_ = -1;
};

// Runs argv as uid:gid with no supplementary groups (like QEMU started by
// KubeVirt's virt-launcher as qemu:qemu); returns exit code and output.
std::pair<int, std::string> RunAs(uid_t uid, gid_t gid, const std::vector<std::string>& args) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return {-1, "pipe"};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    ::dup2(pipefd[1], 2);
    ::close(pipefd[0]);
    if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) ::_exit(126);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(pipefd[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(FakeKubeletTest, RegisterListAllocateRestart) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (socket owners, dropping to uid 107)";
  TempStateDir dir("dp");
  // The VMM user must be able to traverse to its socket directory (emud's
  // state directory is 0700 when made by mkdtemp).
  ::chmod(dir.path().c_str(), 0711);
  const std::string kubelet_dir = dir.path() + "/kubelet";
  std::filesystem::create_directories(kubelet_dir);

  EmudProcess::Options eo;
  eo.state_dir = dir.path();
  eo.worker_binary = Runfile("dataplane/emud-worker");
  eo.metrics = false;
  // Supervision on the defaults a user gets (the crash loop below reaches
  // FAILED after 5 restarts, 0.1 + 0.2 + ... + 1.6 s of backoff);
  // --allow-worker-override lets the test upgrade a worker to /bin/false.
  eo.extra_flags = {"--allow-worker-override"};
  auto emud = EmudProcess::Start(eo);
  ASSERT_TRUE(emud.ok()) << emud.status();

  FakeKubelet kubelet(kubelet_dir);
  kubelet.Start();
  PluginProcess plugin({"--emud=" + (*emud)->grpc_address(), "--kubelet-dir=" + kubelet_dir,
                        "--pool-size=2", "--queues=2", "--socket-owner=107:107",
                        "--socket-mode=0660", "--prestart-timeout=2s"},
                       dir.path() + "/plugin.log");

  // 1. Register.
  v1beta1::RegisterRequest reg;
  ASSERT_TRUE(kubelet.WaitRegister(&reg, absl::Seconds(20))) << plugin.Log();
  EXPECT_EQ(reg.version(), "v1beta1");
  EXPECT_EQ(reg.resource_name(), "emud.io/avf");
  EXPECT_EQ(reg.endpoint(), "emud.io-avf.sock");
  EXPECT_TRUE(reg.options().pre_start_required());
  EXPECT_TRUE(reg.options().get_preferred_allocation_available());

  // 2. As kubelet: options, then ListAndWatch until the pool is healthy.
  auto conn = std::make_unique<PluginConnection>(kubelet_dir + "/" + reg.endpoint());
  {
    grpc::ClientContext ctx;
    v1beta1::DevicePluginOptions opts;
    ASSERT_TRUE(conn->stub()->GetDevicePluginOptions(&ctx, v1beta1::Empty(), &opts).ok());
    EXPECT_TRUE(opts.pre_start_required());
  }
  conn->Watch();
  const std::map<std::string, std::string> healthy = {{"avf-0", "Healthy"}, {"avf-1", "Healthy"}};
  ASSERT_TRUE(conn->WaitList(healthy, absl::Seconds(20))) << conn->Describe() << plugin.Log();

  // The pool was created from the template.
  auto dev0 = emud::testing::GetDevice((*emud)->stub(), "avf-0");
  ASSERT_TRUE(dev0.ok()) << dev0.status();
  EXPECT_EQ(dev0->spec().queue_pairs(), 2u);
  EXPECT_EQ(dev0->spec().socket_uid(), kQemuUid);
  EXPECT_EQ(dev0->spec().socket_gid(), kQemuUid);

  // 3. GetPreferredAllocation, then Allocate, as kubelet at pod admission.
  {
    grpc::ClientContext ctx;
    v1beta1::PreferredAllocationRequest req;
    auto* cr = req.add_container_requests();
    cr->add_available_deviceids("avf-1");
    cr->add_available_deviceids("avf-0");
    cr->set_allocation_size(1);
    v1beta1::PreferredAllocationResponse resp;
    ASSERT_TRUE(conn->stub()->GetPreferredAllocation(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.container_responses_size(), 1);
    EXPECT_EQ(resp.container_responses(0).deviceids_size(), 1);
  }
  v1beta1::AllocateResponse alloc;
  {
    grpc::ClientContext ctx;
    v1beta1::AllocateRequest req;
    req.add_container_requests()->add_devices_ids("avf-0");
    grpc::Status s = conn->stub()->Allocate(&ctx, req, &alloc);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_EQ(alloc.container_responses_size(), 1);
  const auto& car = alloc.container_responses(0);
  ASSERT_EQ(car.mounts_size(), 1);
  const std::string sock = dev0->spec().socket_path();
  const std::string devdir = std::filesystem::path(sock).parent_path();
  EXPECT_EQ(devdir, dir.path() + "/sockets/avf-0");
  EXPECT_EQ(car.mounts(0).host_path(), devdir);
  EXPECT_EQ(car.mounts(0).container_path(), devdir);
  EXPECT_TRUE(car.mounts(0).read_only());
  EXPECT_EQ(car.envs().at("EMUD_DEVICES_EMUD_IO_AVF"), "avf-0");
  EXPECT_EQ(car.envs().at("EMUD_SOCKETS_EMUD_IO_AVF"), sock);
  // The mounted directory holds exactly the device's socket, for qemu only.
  struct stat st {};
  ASSERT_EQ(::stat(devdir.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kQemuUid);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_uid, kQemuUid);
  EXPECT_EQ(st.st_gid, kQemuUid);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  {
    grpc::ClientContext ctx;
    v1beta1::PreStartContainerRequest req;
    req.add_devices_ids("avf-0");
    v1beta1::PreStartContainerResponse resp;
    grpc::Status s = conn->stub()->PreStartContainer(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  // Unknown devices are refused with a message.
  {
    grpc::ClientContext ctx;
    v1beta1::AllocateRequest req;
    req.add_container_requests()->add_devices_ids("gpu-7");
    v1beta1::AllocateResponse resp;
    grpc::Status s = conn->stub()->Allocate(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "gpu-7")) << s.error_message();
  }

  // 4. The VMM, not root: the test guest (a vfio-user client that drives the
  // NIC like Linux iavf) as uid 107 connects and brings the link up; uid 2001
  // cannot even reach the socket. The binary is copied where both can run it.
  const std::string guest = dir.path() + "/emu-guest";
  std::filesystem::copy_file(Runfile("tests/guest/emu-guest"), guest);
  ::chmod(guest.c_str(), 0755);
  auto [rc, out] = RunAs(kQemuUid, kQemuUid, {guest, "--socket", sock, "--queues", "2"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_TRUE(emud::testing::WaitPhase((*emud)->stub(), "avf-0", v1::PHASE_LISTENING,
                                       absl::Seconds(10)))
      << "the guest's link came up and went away with it";
  auto [rc2, out2] = RunAs(kOtherUid, kOtherUid, {guest, "--socket", sock, "--queues", "1"});
  EXPECT_NE(rc2, 0) << out2;
  EXPECT_TRUE(absl::StrContains(out2, "ermission denied")) << out2;

  // emuctl takes the same settings for a device made by hand: owner only.
  auto made = (*emud)->Emuctl({"create-device", "--type", "avf", "--name", "own0",
                               "--socket-owner", "107", "--socket-mode", "0600", "--wait"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  auto own0 = emud::testing::GetDevice((*emud)->stub(), "own0");
  ASSERT_TRUE(own0.ok());
  ASSERT_EQ(::stat(own0->spec().socket_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kQemuUid);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  auto [rc3, out3] = RunAs(kQemuUid, kQemuUid, {guest, "--socket", own0->spec().socket_path()});
  EXPECT_EQ(rc3, 0) << out3;
  auto bad = (*emud)->Emuctl({"create-device", "--type", "avf", "--name", "own1",
                              "--socket-mode", "0777"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(bad.err, "--socket-mode 0777")) << bad.err;
  ASSERT_TRUE(emud::testing::DeleteDevice((*emud)->stub(), "own0", true).ok());
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/sockets/own0")) << "its directory goes too";

  // 5. Health: avf-1's worker crash-loops (a binary that exits at once) until
  // emud marks it FAILED: Unhealthy in ListAndWatch, and PreStartContainer
  // refuses it after trying a reset.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::UpgradeWorkerRequest req;
    req.set_name("avf-1");
    req.set_worker_binary("/bin/false");
    v1::Device out;
    grpc::Status s = (*emud)->stub()->UpgradeWorker(&ctx, req, &out);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  const std::map<std::string, std::string> one_failed = {{"avf-0", "Healthy"},
                                                         {"avf-1", "Unhealthy"}};
  ASSERT_TRUE(conn->WaitList(one_failed, absl::Seconds(60))) << conn->Describe() << plugin.Log();
  {
    grpc::ClientContext ctx;
    v1beta1::PreStartContainerRequest req;
    req.add_devices_ids("avf-1");
    v1beta1::PreStartContainerResponse resp;
    grpc::Status s = conn->stub()->PreStartContainer(&ctx, req, &resp);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.error_message(), "avf-1")) << s.error_message();
  }
  // Deleted, the plugin creates it again from the template: Healthy.
  ASSERT_TRUE(emud::testing::DeleteDevice((*emud)->stub(), "avf-1", true).ok());
  ASSERT_TRUE(conn->WaitList(healthy, absl::Seconds(20))) << conn->Describe() << plugin.Log();

  // 6. kubelet restarts: its connections drop, the directory is wiped
  // (the plugin's socket too) and kubelet.sock comes back. The plugin
  // registers again and serves a fresh socket.
  conn->Close();
  conn.reset();
  kubelet.Stop();
  absl::SleepFor(absl::Milliseconds(300));
  // (Not asserted: the old socket's absence between Stop and Start. The
  // plugin may already serve a fresh one by then - it did under ASan - which
  // is what kubelet expects of it; the registration below is the check.)
  kubelet.Start();
  v1beta1::RegisterRequest again;
  ASSERT_TRUE(kubelet.WaitRegister(&again, absl::Seconds(20))) << plugin.Log();
  EXPECT_EQ(again.resource_name(), "emud.io/avf");
  ASSERT_TRUE(std::filesystem::exists(kubelet_dir + "/" + again.endpoint()));
  conn = std::make_unique<PluginConnection>(kubelet_dir + "/" + again.endpoint());
  conn->Watch();
  ASSERT_TRUE(conn->WaitList(healthy, absl::Seconds(20))) << conn->Describe() << plugin.Log();
  {
    grpc::ClientContext ctx;
    v1beta1::AllocateRequest req;
    req.add_container_requests()->add_devices_ids("avf-1");
    v1beta1::AllocateResponse resp;
    grpc::Status s = conn->stub()->Allocate(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(absl::StrContains(resp.container_responses(0).envs().at("EMUD_SOCKETS_EMUD_IO_AVF"),
                                  "/avf-1/vfio-user.sock"));
  }

  // 7. emud dies: every device Unhealthy; a new emud adopts the workers:
  // Healthy again, with no new registration needed.
  (*emud)->Stop(SIGKILL);
  const std::map<std::string, std::string> all_down = {{"avf-0", "Unhealthy"},
                                                       {"avf-1", "Unhealthy"}};
  ASSERT_TRUE(conn->WaitList(all_down, absl::Seconds(20))) << conn->Describe() << plugin.Log();
  emud->reset();
  emud = EmudProcess::Start(eo);
  ASSERT_TRUE(emud.ok()) << emud.status();
  ASSERT_TRUE(conn->WaitList(healthy, absl::Seconds(20))) << conn->Describe() << plugin.Log();

  // SIGTERM: the plugin removes its socket and exits 0.
  conn->Close();
  int status = plugin.Stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << plugin.Log();
  EXPECT_FALSE(std::filesystem::exists(kubelet_dir + "/" + again.endpoint()));
  (*emud)->Stop(SIGTERM);
  std::cerr << "--- emud-device-plugin log\n" << plugin.Log();
}

}  // namespace
}  // namespace emud::deviceplugin
