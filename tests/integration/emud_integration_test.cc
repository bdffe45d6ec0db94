// Cross-process tests of emud: a real emud (//server:emud) supervising fake
// workers (//tests/fakes:fake_worker), driven through emuctl and the gRPC
// API, with metrics scraped over HTTP.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "proto/grpc_health_v1.grpc.pb.h"
#include "fdstore/fd_store.h"
#include "tests/integration/emud_harness.h"
#include "tests/integration/reflection_v1alpha.grpc.pb.h"

namespace emud::testing {
namespace {

namespace v1 = emud::v1;

// A test guest: connects to the device's vfio-user socket and drives the
// fake worker with text commands.
class FakeGuest {
 public:
  explicit FakeGuest(const std::string& socket_path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~FakeGuest() { Close(); }
  bool connected() const { return connected_; }
  // Sends a command and waits for the worker's "ok".
  bool Send(const std::string& cmd) {
    std::string line = cmd + "\n";
    if (::send(fd_, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) return false;
    char buf[3];
    size_t got = 0;
    while (got < 3) {
      ssize_t n = ::read(fd_, buf + got, 3 - got);
      if (n <= 0) return false;
      got += n;
    }
    return std::string(buf, 3) == "ok\n";
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

class EmudTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempStateDir>(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    StartEmud();
  }
  void TearDown() override {
    if (emud_ != nullptr) {
      // --stop-workers-on-exit; a clean exit also means no sanitizer report.
      int status = emud_->Stop(SIGTERM);
      EXPECT_TRUE(status == -1 || (WIFEXITED(status) && WEXITSTATUS(status) == 0))
          << "emud exit status " << status << "\n" << emud_->Log();
    }
    // Anything a failed test left behind, by pid.
    for (pid_t pid : stray_) ::kill(pid, SIGKILL);
  }
  void StartEmud(std::vector<std::string> extra_env = {}) {
    EmudProcess::Options o;
    o.state_dir = dir_->path() + "/state";
    // Supervision on the flags a user gets; only the crash-loop test shortens
    // the backoff and the verdict (its twin, DefaultSupervisionCrashLoop-
    // BeforeServingGoesFailed, runs the same situation on defaults). Workers
    // are stopped with emud so that nothing outlives a test.
    o.extra_flags = {"--worker-stop-timeout=2s", "--stop-workers-on-exit"};
    const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    if (test == "CrashLoopMarksFailedAndResetRecovers") {
      o.extra_flags.insert(o.extra_flags.end(), {"--restart-backoff-initial=20ms",
                                                 "--restart-backoff-max=80ms", "--crash-loop-restarts=3"});
    }
    o.extra_env = std::move(extra_env);
    // Only tests that scrape pay for the metrics endpoint's slow stop.
    static const std::set<std::string> kScrapers = {
        "MetricsAreScrapedAndCountersNeverGoBackwards", "CrashLoopMarksFailedAndResetRecovers",
        "KilledWorkerKeepsTheGuestConnection", "WorkersRedepositAfterEmudRestart",
        "FdStoreRefusesStrangers"};
    o.metrics = kScrapers.count(::testing::UnitTest::GetInstance()->current_test_info()->name()) > 0;
    auto p = EmudProcess::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    emud_ = std::move(*p);
  }
  std::string State() const { return dir_->path() + "/state"; }
  v1::Device MustGet(const std::string& name) {
    auto d = GetDevice(emud_->stub(), name);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : v1::Device();
  }
  std::map<std::string, double> Scrape() {
    auto body = HttpGet(emud_->metrics_url());
    EXPECT_TRUE(body.ok()) << body.status();
    auto m = ParsePrometheus(body.ok() ? *body : "");
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : std::map<std::string, double>();
  }

  std::unique_ptr<TempStateDir> dir_;
  std::unique_ptr<EmudProcess> emud_;
  std::vector<pid_t> stray_;
};

TEST_F(EmudTest, LifecycleThroughEmuctlAndGrpc) {
  // create -> LISTENING (emuctl waits for it)
  CommandResult c = emud_->Emuctl(
      {"-o", "json", "create-device", "--type", "avf", "--name", "dev0", "--queues", "2",
       "--mac", "02:00:00:00:00:10", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  nlohmann::json j = nlohmann::json::parse(c.out);
  EXPECT_EQ(j["name"], "dev0");
  EXPECT_EQ(j["status"]["phase"], "PHASE_LISTENING");
  EXPECT_EQ(j["spec"]["queuePairs"], 2);
  EXPECT_EQ(j["spec"]["mac"], "02:00:00:00:00:10");
  const std::string socket = j["spec"]["socketPath"];
  struct stat st;
  ASSERT_EQ(::stat(socket.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));

  // list (table and yaml)
  c = emud_->Emuctl({"list"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("dev0"), std::string::npos);
  EXPECT_NE(c.out.find("LISTENING"), std::string::npos);
  c = emud_->Emuctl({"list", "-o", "yaml"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("name: \"dev0\""), std::string::npos) << c.out;

  // The test guest attaches: CONNECTED -> DRIVER_READY -> LINK_UP.
  FakeGuest guest(socket);
  ASSERT_TRUE(guest.connected());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "dev0", v1::PHASE_CONNECTED));
  ASSERT_TRUE(guest.Send("ready"));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "dev0", v1::PHASE_DRIVER_READY));
  EXPECT_EQ(MustGet("dev0").status().virtchnl_version().major(), 1u);
  EXPECT_EQ(MustGet("dev0").status().virtchnl_version().minor(), 1u);
  ASSERT_TRUE(guest.Send("linkup"));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "dev0", v1::PHASE_LINK_UP));

  // stats move
  c = emud_->Emuctl({"stats", "dev0", "-o", "json"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  uint64_t before = std::stoull(nlohmann::json::parse(c.out)["tx"][0]["packets"].get<std::string>());
  ASSERT_TRUE(guest.Send("tx 25"));
  c = emud_->Emuctl({"stats", "dev0", "-o", "json"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  nlohmann::json stats = nlohmann::json::parse(c.out);
  EXPECT_EQ(std::stoull(stats["tx"][0]["packets"].get<std::string>()), before + 25);
  EXPECT_EQ(stats["virtchnlOps"]["ENABLE_QUEUES/SUCCESS"], "1");
  c = emud_->Emuctl({"stats", "dev0"});
  EXPECT_NE(c.out.find("QUEUE"), std::string::npos);

  // A connected guest blocks delete unless --force.
  c = emud_->Emuctl({"delete", "dev0"});
  EXPECT_EQ(c.exit_code, 6) << c.out << c.err;
  EXPECT_NE(c.err.find("connected guest"), std::string::npos) << c.err;
  EXPECT_EQ(std::count(c.err.begin(), c.err.end(), '\n'), 1) << c.err;
  guest.Close();
  ASSERT_TRUE(WaitPhase(emud_->stub(), "dev0", v1::PHASE_LISTENING));

  // delete -> gone, with its socket and state
  c = emud_->Emuctl({"delete", "dev0"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(::stat(socket.c_str(), &st), 0);
  EXPECT_FALSE(std::filesystem::exists(State() + "/devices/dev0"));
  c = emud_->Emuctl({"get", "dev0"});
  EXPECT_EQ(c.exit_code, 3);
  EXPECT_NE(c.err.find("no device named 'dev0'"), std::string::npos);
}

TEST_F(EmudTest, ForcedDeleteOfAConnectedDevice) {
  v1::Device d;
  ASSERT_TRUE(CreateDevice(emud_->stub(), "busy", &d).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "busy", v1::PHASE_LISTENING));
  FakeGuest guest(d.spec().socket_path());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "busy", v1::PHASE_CONNECTED));
  grpc::Status s = DeleteDevice(emud_->stub(), "busy");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  CommandResult c = emud_->Emuctl({"delete", "busy", "--force"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(GetDevice(emud_->stub(), "busy").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(EmudTest, HealthAndReflection) {
  CommandResult c = emud_->Emuctl({"health"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "SERVING\n");
  auto stub = grpc::health::v1::Health::NewStub(emud_->channel());
  for (const char* service : {"", "emud.v1.DeviceService"}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(stub->Check(&ctx, req, &resp).ok()) << service;
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
  // Server reflection lists the API.
  {
    auto refl = grpc::reflection::v1alpha::ServerReflection::NewStub(emud_->channel());
    grpc::ClientContext ctx;
    auto stream = refl->ServerReflectionInfo(&ctx);
    grpc::reflection::v1alpha::ServerReflectionRequest req;
    req.set_list_services("*");
    ASSERT_TRUE(stream->Write(req));
    stream->WritesDone();
    grpc::reflection::v1alpha::ServerReflectionResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    std::set<std::string> names;
    for (const auto& s : resp.list_services_response().service()) names.insert(s.name());
    EXPECT_TRUE(names.count("emud.v1.DeviceService")) << resp.DebugString();
    EXPECT_TRUE(names.count("grpc.health.v1.Health")) << resp.DebugString();
    while (stream->Read(&resp)) {
    }
    EXPECT_TRUE(stream->Finish().ok());
  }
  struct stat st;
  std::string sock = emud_->grpc_address().substr(strlen("unix://"));
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(EmudTest, MetricsAreScrapedAndCountersNeverGoBackwards) {
  v1::Device d;
  ASSERT_TRUE(CreateDevice(emud_->stub(), "m0", &d).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "m0", v1::PHASE_LISTENING));
  {
    FakeGuest guest(d.spec().socket_path());
    ASSERT_TRUE(guest.Send("ready"));
    ASSERT_TRUE(guest.Send("tx 40"));
  }
  const std::string pk = "emud_dataplane_packets_total{device=\"m0\",direction=\"tx\",queue=\"0\"}";
  ASSERT_TRUE(WaitFor([&] { return Scrape()[pk] == 40; }, absl::Seconds(10)));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "m0", v1::PHASE_LISTENING));  // guest gone
  auto m = Scrape();
  EXPECT_EQ(m["emud_devices{phase=\"listening\"}"], 1);
  EXPECT_EQ(m["emud_devices{phase=\"failed\"}"], 0);
  EXPECT_EQ(m["emud_virtchnl_ops_total{device=\"m0\",op=\"VERSION\",status=\"SUCCESS\"}"], 1);
  EXPECT_EQ(m["emud_vfio_user_messages_total{command=\"REGION_WRITE\",device=\"m0\"}"], 40);
  EXPECT_EQ(m["emud_worker_restarts_total{device=\"m0\"}"], 0);
  EXPECT_GE(m["emud_state_store_commit_duration_seconds_count{env=\"control\"}"], 2);
  bool build_info = false;
  for (const auto& [k, v] : m) build_info = build_info || (k.rfind("emud_build_info{", 0) == 0 && v == 1);
  EXPECT_TRUE(build_info);

  // Kill the worker: it is restarted and counted; its successor continues
  // the counters (reattaches + 1), which must not go backwards.
  pid_t old_pid = MustGet("m0").status().worker_pid();
  ASSERT_GT(old_pid, 0);
  ASSERT_EQ(::kill(old_pid, SIGKILL), 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        v1::Device now = MustGet("m0");
        return now.status().worker_pid() != 0 && now.status().worker_pid() != old_pid &&
               now.status().phase() == v1::PHASE_LISTENING;
      },
      absl::Seconds(10)));
  v1::Device after = MustGet("m0");
  EXPECT_EQ(after.status().restart_count(), 1u);
  EXPECT_NE(after.status().last_error().find("killed by signal 9"), std::string::npos)
      << after.status().last_error();
  ASSERT_TRUE(WaitFor([&] { return Scrape()["emud_worker_restarts_total{device=\"m0\"}"] == 1; },
                      absl::Seconds(10)));
  m = Scrape();
  EXPECT_EQ(m[pk], 40);
  EXPECT_EQ(m["emud_worker_reattach_duration_seconds_count{device=\"m0\"}"], 1);
  {
    FakeGuest guest(after.spec().socket_path());
    ASSERT_TRUE(guest.Send("tx 2"));
  }
  ASSERT_TRUE(WaitFor([&] { return Scrape()[pk] == 42; }, absl::Seconds(10)));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "m0", v1::PHASE_LISTENING));  // guest gone

  // Deleting the device drops its series.
  grpc::Status del = DeleteDevice(emud_->stub(), "m0");
  ASSERT_TRUE(del.ok()) << del.error_message();
  for (const auto& [k, v] : Scrape()) EXPECT_EQ(k.find("device=\"m0\""), std::string::npos) << k;
}

TEST_F(EmudTest, CrashLoopMarksFailedAndResetRecovers) {
  std::filesystem::create_directories(State() + "/fake");
  std::ofstream(State() + "/fake/loop.crash") << "1";
  v1::Device d;
  ASSERT_TRUE(CreateDevice(emud_->stub(), "loop", &d).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "loop", v1::PHASE_FAILED));
  v1::Device failed = MustGet("loop");
  EXPECT_EQ(failed.status().worker_pid(), 0);
  EXPECT_EQ(failed.status().restart_count(), 3u);  // --crash-loop-restarts=3
  EXPECT_NE(failed.status().last_error().find("crash loop"), std::string::npos);
  EXPECT_NE(failed.status().last_error().find("exited with status 3: fake crash requested"),
            std::string::npos)
      << failed.status().last_error();
  EXPECT_EQ(Scrape()["emud_devices{phase=\"failed\"}"], 1);
  // UpgradeWorker is refused on a FAILED device; reset (after fixing the
  // cause) brings it back.
  CommandResult c = emud_->Emuctl({"upgrade-worker", "loop"});
  EXPECT_EQ(c.exit_code, 6) << c.err;
  std::filesystem::remove(State() + "/fake/loop.crash");
  c = emud_->Emuctl({"reset", "loop"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  ASSERT_TRUE(WaitPhase(emud_->stub(), "loop", v1::PHASE_LISTENING));
  EXPECT_EQ(MustGet("loop").status().last_error(), "");
}

// Issue 11: on default flags, a worker that was serving is replaced at once
// however often it dies (external kills, OOM kills): never backoff, never
// FAILED, and the guest's connection is carried over every time.
TEST_F(EmudTest, DefaultSupervisionReplacesAServingWorkerAtOnceEveryTime) {
  v1::Device d;
  ASSERT_TRUE(CreateDevice(emud_->stub(), "k", &d).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "k", v1::PHASE_LISTENING));
  FakeGuest guest(d.spec().socket_path());
  ASSERT_TRUE(guest.connected());
  ASSERT_TRUE(guest.Send("ready"));
  ASSERT_TRUE(guest.Send("linkup"));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "k", v1::PHASE_LINK_UP));
  constexpr int kKills = 30;
  absl::Duration longest;
  for (int i = 0; i < kKills; ++i) {
    // Kill each successor as soon as it is serving (its status is published).
    v1::Device cur = MustGet("k");
    ASSERT_NE(cur.status().phase(), v1::PHASE_FAILED) << cur.status().last_error();
    const pid_t pid = cur.status().worker_pid();
    ASSERT_GT(pid, 0);
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    absl::Time t0 = absl::Now();
    v1::Device next;
    ASSERT_TRUE(WaitFor(
        [&] {
          next = MustGet("k");
          return next.status().worker_pid() != 0 && next.status().worker_pid() != pid &&
                 next.status().phase() == v1::PHASE_LINK_UP;
        },
        absl::Seconds(10)))
        << "kill " << i << ": " << next.DebugString() << emud_->Log();
    longest = std::max(longest, absl::Now() - t0);
  }
  v1::Device after = MustGet("k");
  EXPECT_EQ(after.status().restart_count(), static_cast<uint32_t>(kKills));
  EXPECT_EQ(after.status().consecutive_failures(), 0u);
  // The same connection, still served.
  EXPECT_TRUE(guest.Send("tx 1"));
  std::printf("supervision: %d kills of a serving worker on default flags, longest "
              "kill-to-serving %s\n", kKills, absl::FormatDuration(longest).c_str());
}

// A worker that dies before it is serving (here: the fake worker exits during
// start-up) backs off and, on default flags, goes FAILED after 5 restarts.
TEST_F(EmudTest, DefaultSupervisionCrashLoopBeforeServingGoesFailed) {
  std::filesystem::create_directories(State() + "/fake");
  std::ofstream(State() + "/fake/loop.crash") << "1";
  ASSERT_TRUE(CreateDevice(emud_->stub(), "loop", nullptr).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "loop", v1::PHASE_FAILED, absl::Seconds(30)));
  v1::Device failed = MustGet("loop");
  EXPECT_EQ(failed.status().restart_count(), 5u);  // --crash-loop-restarts default
  EXPECT_NE(failed.status().last_error().find("before it was serving"), std::string::npos)
      << failed.status().last_error();
}

TEST_F(EmudTest, RestartedEmudKeepsDevicesAndAdoptsWorkers) {
  ASSERT_TRUE(CreateDevice(emud_->stub(), "a", nullptr).ok());
  ASSERT_TRUE(CreateDevice(emud_->stub(), "b", nullptr, "peer:c").ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "a", v1::PHASE_LISTENING));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "b", v1::PHASE_LISTENING));
  pid_t pa = MustGet("a").status().worker_pid(), pb = MustGet("b").status().worker_pid();
  stray_ = {pa, pb};
  // A crash of emud (SIGKILL) leaves the workers running...
  emud_->Stop(SIGKILL);
  EXPECT_EQ(::kill(pa, 0), 0);
  EXPECT_EQ(::kill(pb, 0), 0);
  // ...and a new emud adopts them: same pids, no restart counted.
  StartEmud();
  ASSERT_TRUE(WaitPhase(emud_->stub(), "a", v1::PHASE_LISTENING));
  v1::Device a = MustGet("a"), b = MustGet("b");
  EXPECT_EQ(a.status().worker_pid(), pa);
  EXPECT_EQ(b.status().worker_pid(), pb);
  EXPECT_EQ(a.status().restart_count(), 0u);
  EXPECT_EQ(b.spec().backend(), "peer:c");
  EXPECT_NE(emud_->Log().find("adopted running worker pid"), std::string::npos);
  // An adopted worker's death is still noticed and the worker restarted.
  ASSERT_EQ(::kill(pa, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] {
    v1::Device now = MustGet("a");
    return now.status().worker_pid() != pa && now.status().phase() == v1::PHASE_LISTENING;
  }, absl::Seconds(10)));
  EXPECT_EQ(MustGet("a").status().restart_count(), 1u);
  // A worker that died while no emud ran is restarted and counted.
  pb = MustGet("b").status().worker_pid();
  emud_->Stop(SIGKILL);
  ASSERT_EQ(::kill(pb, SIGKILL), 0);
  StartEmud();
  ASSERT_TRUE(WaitPhase(emud_->stub(), "b", v1::PHASE_LISTENING));
  b = MustGet("b");
  EXPECT_NE(b.status().worker_pid(), pb);
  EXPECT_EQ(b.status().restart_count(), 1u);
  EXPECT_NE(b.status().last_error().find("exited while emud was not running"), std::string::npos);
  // Graceful stop (SIGTERM) with --stop-workers-on-exit stops the workers.
  pid_t last_a = MustGet("a").status().worker_pid(), last_b = b.status().worker_pid();
  int status = emud_->Stop(SIGTERM);
  emud_.reset();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_NE(::kill(last_a, 0), 0);
  EXPECT_NE(::kill(last_b, 0), 0);
}

TEST_F(EmudTest, InvalidRequestsGetPreciseErrors) {
  auto create = [&](std::function<void(v1::CreateDeviceRequest&)> f) {
    v1::CreateDeviceRequest req;
    req.set_name("ok");
    req.set_type(v1::DEVICE_TYPE_AVF);
    f(req);
    grpc::ClientContext ctx;
    v1::Device d;
    return emud_->stub()->CreateDevice(&ctx, req, &d);
  };
  EXPECT_EQ(create([](auto& r) { r.set_name("a b"); }).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(create([](auto& r) { r.set_type(v1::DEVICE_TYPE_UNSPECIFIED); }).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(create([](auto& r) { r.mutable_spec()->set_queue_pairs(99); }).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(create([](auto& r) { r.mutable_spec()->set_backend("tap:"); }).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(create([](auto& r) { r.mutable_spec()->set_socket_path("relative"); }).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // emud's own API socket: outside the socket directory, so refused before
  // anything is probed or created (tests/integration/operability_test.cc
  // covers the confinement itself).
  grpc::Status s = create([&](auto& r) {
    r.mutable_spec()->set_socket_path(emud_->grpc_address().substr(strlen("unix://")));
  });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("outside the directories"), std::string::npos);
  ASSERT_TRUE(create([](auto&) {}).ok());
  s = create([](auto&) {});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(DeleteDevice(emud_->stub(), "nope").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(DeleteDevice(emud_->stub(), "../etc").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A deadline that has already passed is honoured.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
  v1::Device d;
  v1::CreateDeviceRequest req;
  req.set_name("late");
  req.set_type(v1::DEVICE_TYPE_AVF);
  EXPECT_EQ(emud_->stub()->CreateDevice(&ctx, req, &d).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(GetDevice(emud_->stub(), "late").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(EmudTest, DuplicateMacIsRefused) {
  v1::Device a;
  ASSERT_TRUE(CreateDevice(emud_->stub(), "a", &a).ok());
  v1::CreateDeviceRequest req;
  req.set_name("b");
  req.set_type(v1::DEVICE_TYPE_AVF);
  req.mutable_spec()->set_mac(a.spec().mac());
  grpc::ClientContext ctx;
  v1::Device d;
  grpc::Status s = emud_->stub()->CreateDevice(&ctx, req, &d);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(s.error_message().find("already used by device 'a'"), std::string::npos);
}

TEST_F(EmudTest, WatchStreamsChanges) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::WatchDevicesRequest req;
  auto reader = emud_->stub()->WatchDevices(&ctx, req);
  ASSERT_TRUE(CreateDevice(emud_->stub(), "w", nullptr).ok());
  std::vector<std::string> seen;
  v1::DeviceEvent ev;
  while (reader->Read(&ev)) {
    seen.push_back(absl::StrCat(v1::DeviceEvent::Kind_Name(ev.kind()), ":",
                                v1::Phase_Name(ev.device().status().phase())));
    if (ev.device().status().phase() == v1::PHASE_LISTENING &&
        ev.kind() == v1::DeviceEvent::KIND_MODIFIED) {
      ASSERT_TRUE(DeleteDevice(emud_->stub(), "w").ok());
    }
    if (ev.kind() == v1::DeviceEvent::KIND_DELETED) break;
  }
  ctx.TryCancel();
  reader->Finish();
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen.front(), "KIND_ADDED:PHASE_CREATED");
  EXPECT_NE(std::find(seen.begin(), seen.end(), "KIND_MODIFIED:PHASE_LISTENING"), seen.end());
  EXPECT_EQ(seen.back().rfind("KIND_DELETED:", 0), 0u);
  // emuctl watch with a timeout ends cleanly.
  CommandResult c = emud_->Emuctl({"watch", "--timeout", "0.3", "-o", "json"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
}

TEST_F(EmudTest, SigkillEscalationForAWorkerIgnoringSigterm) {
  emud_->Stop(SIGTERM);
  StartEmud({"FAKE_WORKER_IGNORE_SIGTERM=1"});
  ASSERT_TRUE(CreateDevice(emud_->stub(), "stubborn", nullptr).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "stubborn", v1::PHASE_LISTENING));
  pid_t pid = MustGet("stubborn").status().worker_pid();
  stray_ = {pid};
  ASSERT_TRUE(DeleteDevice(emud_->stub(), "stubborn").ok());
  EXPECT_NE(::kill(pid, 0), 0);
  EXPECT_NE(emud_->Log().find("ignored SIGTERM; sending SIGKILL"), std::string::npos);
}

TEST_F(EmudTest, EmuctlUsageAndExitCodes) {
  std::string emuctl = Runfile("ctl/emuctl");
  CommandResult c = RunCommand({emuctl, "--help"});
  EXPECT_EQ(c.exit_code, 0);
  EXPECT_NE(c.out.find("Exit codes"), std::string::npos);
  for (const char* sub : {"create-device", "list", "get", "delete", "reset", "stats", "watch",
                          "upgrade-worker", "health"}) {
    c = RunCommand({emuctl, sub, "--help"});
    EXPECT_EQ(c.exit_code, 0) << sub;
    EXPECT_NE(c.out.find(sub), std::string::npos) << sub;
  }
  EXPECT_EQ(RunCommand({emuctl, "get"}).exit_code, 1);
  EXPECT_EQ(RunCommand({emuctl, "frobnicate"}).exit_code, 1);
  EXPECT_EQ(RunCommand({emuctl, "create-device", "--type", "virtio", "--name", "x"}).exit_code, 1);
  c = RunCommand({emuctl, "--server", "unix://" + dir_->path() + "/nothing.sock", "list"});
  EXPECT_EQ(c.exit_code, 2);
  EXPECT_NE(c.err.find("cannot reach emud"), std::string::npos);
  // EMUCTL_SERVER is honoured.
  c = RunCommand({emuctl, "list"}, {"EMUCTL_SERVER=" + emud_->grpc_address()});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  c = emud_->Emuctl({"create-device", "--type", "avf", "--name", "x", "--mac", "ff:ff:ff:ff:ff:ff"});
  EXPECT_EQ(c.exit_code, 5);
  EXPECT_NE(c.err.find("spec.mac"), std::string::npos);
}

// The fd store: emud keeps the worker's listening and connected sockets, so
// a killed worker's successor serves the guest's very connection.
TEST_F(EmudTest, KilledWorkerKeepsTheGuestConnection) {
  v1::Device d;
  ASSERT_TRUE(CreateDevice(emud_->stub(), "fs", &d).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "fs", v1::PHASE_LISTENING));
  FakeGuest guest(d.spec().socket_path());
  ASSERT_TRUE(guest.Send("ready"));
  ASSERT_TRUE(guest.Send("linkup"));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "fs", v1::PHASE_LINK_UP));
  const std::string fds = "emud_fdstore_fds{device=\"fs\"}";
  ASSERT_TRUE(WaitFor([&] { return Scrape()[fds] == 2; }, absl::Seconds(10)));  // listen + conn
  for (int kill = 1; kill <= 3; ++kill) {
    pid_t pid = MustGet("fs").status().worker_pid();
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    ASSERT_TRUE(WaitFor(
        [&] {
          v1::Device now = MustGet("fs");
          return now.status().worker_pid() != pid && now.status().phase() == v1::PHASE_LINK_UP;
        },
        absl::Seconds(10)))
        << "kill " << kill;
    // The same connection, served by the successor.
    ASSERT_TRUE(guest.Send("tx 3")) << "kill " << kill;
  }
  EXPECT_EQ(MustGet("fs").status().restart_count(), 3u);
  CommandResult c = emud_->Emuctl({"stats", "fs", "-o", "json"});
  ASSERT_EQ(c.exit_code, 0);
  nlohmann::json j = nlohmann::json::parse(c.out);
  EXPECT_EQ(std::stoull(j["tx"][0]["packets"].get<std::string>()), 9u);
  EXPECT_EQ(std::stoull(j["reattaches"].get<std::string>()), 3u);
  // Deleting the device releases what the store held for it.
  guest.Close();
  ASSERT_TRUE(WaitPhase(emud_->stub(), "fs", v1::PHASE_LISTENING));
  ASSERT_TRUE(WaitFor([&] { return Scrape()[fds] == 1; }, absl::Seconds(10)));
  ASSERT_TRUE(DeleteDevice(emud_->stub(), "fs").ok());
  EXPECT_EQ(Scrape().count(fds), 0u);
}

TEST_F(EmudTest, UpgradeWorkerKeepsTheGuestConnection) {
  emud_->Stop(SIGTERM);
  emud_.reset();
  // --allow-worker-override lets the request name another binary (here a
  // copy of the fake worker).
  std::string copy = dir_->path() + "/fake_worker_v2";
  std::filesystem::copy_file(Runfile("tests/fakes/fake_worker"), copy);
  ::chmod(copy.c_str(), 0755);
  EmudProcess::Options o;
  o.state_dir = State();
  o.extra_flags = {"--stop-workers-on-exit", "--allow-worker-override"};
  auto p = EmudProcess::Start(o);
  ASSERT_TRUE(p.ok()) << p.status();
  emud_ = std::move(*p);
  v1::Device d;
  ASSERT_TRUE(CreateDevice(emud_->stub(), "up", &d).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "up", v1::PHASE_LISTENING));
  FakeGuest guest(d.spec().socket_path());
  ASSERT_TRUE(guest.Send("ready"));
  ASSERT_TRUE(guest.Send("linkup"));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "up", v1::PHASE_LINK_UP));
  pid_t old_pid = MustGet("up").status().worker_pid();
  CommandResult c = emud_->Emuctl({"upgrade-worker", "up", "--worker-binary", copy});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  ASSERT_TRUE(WaitFor(
      [&] {
        v1::Device now = MustGet("up");
        return now.status().worker_pid() != old_pid && now.status().phase() == v1::PHASE_LINK_UP;
      },
      absl::Seconds(10)));
  EXPECT_TRUE(guest.Send("tx 1"));  // the guest's connection was handed over
  EXPECT_EQ(MustGet("up").status().restart_count(), 0u);  // an upgrade is not a crash
  char exe[4096] = {0};
  ASSERT_GT(::readlink(("/proc/" + std::to_string(MustGet("up").status().worker_pid()) + "/exe").c_str(),
                       exe, sizeof(exe) - 1), 0);
  EXPECT_EQ(std::string(exe), copy);
  // Without --allow-worker-override another binary is refused.
  emud_->Stop(SIGTERM);
  StartEmud();
  c = emud_->Emuctl({"upgrade-worker", "up", "--worker-binary", copy});
  EXPECT_EQ(c.exit_code, 6) << c.err;
  EXPECT_NE(c.err.find("--allow-worker-override"), std::string::npos);
}

TEST_F(EmudTest, WorkersRedepositAfterEmudRestart) {
  v1::Device d;
  ASSERT_TRUE(CreateDevice(emud_->stub(), "rd", &d).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "rd", v1::PHASE_LISTENING));
  FakeGuest guest(d.spec().socket_path());
  ASSERT_TRUE(guest.Send("ready"));
  ASSERT_TRUE(WaitPhase(emud_->stub(), "rd", v1::PHASE_DRIVER_READY));
  pid_t pid = MustGet("rd").status().worker_pid();
  stray_ = {pid};
  emud_->Stop(SIGKILL);  // the store's descriptors die with emud...
  ASSERT_TRUE(guest.Send("tx 1"));  // ...the worker keeps serving...
  StartEmud();
  // ...and re-deposits its fds with the new emud.
  const std::string fds = "emud_fdstore_fds{device=\"rd\"}";
  ASSERT_TRUE(WaitFor([&] { return Scrape()[fds] == 2; }, absl::Seconds(10))) << emud_->Log();
  EXPECT_NE(emud_->Log().find("reconnected to the fd store"), std::string::npos);
  EXPECT_NE(emud_->Log().find("2 fds were held by the previous emud"), std::string::npos)
      << emud_->Log();
  EXPECT_EQ(MustGet("rd").status().worker_pid(), pid);
  // So a worker killed now still hands the guest's connection on.
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        v1::Device now = MustGet("rd");
        return now.status().worker_pid() != pid &&
               now.status().phase() == v1::PHASE_DRIVER_READY;
      },
      absl::Seconds(10)));
  EXPECT_TRUE(guest.Send("tx 1"));
}

TEST_F(EmudTest, FdStoreRefusesStrangers) {
  ASSERT_TRUE(CreateDevice(emud_->stub(), "s", nullptr).ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "s", v1::PHASE_LISTENING));
  // This process is not the device's worker: its channel is dropped after
  // HELLO and nothing it sends is stored.
  auto client = emud::fdstore::FdStoreClient::Connect(State() + "/fdstore.sock", "s");
  if (client.ok()) {
    int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    EXPECT_FALSE((*client)->Deposit("backend/tap", fd).ok());
    ::close(fd);
  }
  ASSERT_TRUE(WaitFor([&] { return emud_->Log().find("refusing a channel") != std::string::npos; },
                      absl::Seconds(30)));
  EXPECT_EQ(Scrape()["emud_fdstore_fds{device=\"s\"}"], 1);  // only the worker's listener
}

TEST_F(EmudTest, CreateDeleteCyclesLeakNothing) {
  // Warm up (gRPC, allocator and metric families reach steady state).
  auto cycle = [&](int i) {
    std::string name = absl::StrCat("c", i % 7);
    v1::Device d;
    grpc::Status s = CreateDevice(emud_->stub(), name, &d);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_TRUE(WaitPhase(emud_->stub(), name, v1::PHASE_LISTENING));
    s = DeleteDevice(emud_->stub(), name);
    ASSERT_TRUE(s.ok()) << s.error_message();
  };
  for (int i = 0; i < 20; ++i) cycle(i);
  // Measured in the state `after` waits for below: no child. A device deleted
  // while its standby was being spawned has that process, and its go
  // channel's two sockets, until the spawn completes and it is reaped; a
  // loaded machine let that show in `before` (fds 24 -> 22, sockets 6 -> 4).
  ProcResources before;
  ASSERT_TRUE(WaitFor(
      [&] {
        ProcResources first = Measure(emud_->pid());
        absl::SleepFor(absl::Milliseconds(20));
        before = Measure(emud_->pid());
        return before.children == 0 && first.children == 0 && first.fds == before.fds;
      },
      absl::Seconds(30)))
      << "emud's children never went: " << before.children;
  int files_before = CountFiles(State());
  const int kCycles = std::getenv("EMUD_CYCLES") ? std::atoi(std::getenv("EMUD_CYCLES")) : 150;
  for (int i = 0; i < kCycles; ++i) {
    cycle(i);
    if (HasFatalFailure()) return;
  }
  // A standby spawn that had passed its check when the device was deleted
  // is killed and reaped as it completes: wait for that (bounded), never
  // for a leak.
  ProcResources after;
  WaitFor(
      [&] {
        after = Measure(emud_->pid());
        return after.children == 0 && after.fds == before.fds;
      },
      absl::Seconds(30));
  EXPECT_EQ(after.fds, before.fds);
  EXPECT_EQ(after.sockets, before.sockets);
  EXPECT_EQ(after.children, 0) << [&] {
    std::string log = emud_->Log();
    std::string kids;
    for (const auto& e : std::filesystem::directory_iterator("/proc")) {
      std::string stat = ReadFile(e.path().string() + "/stat");
      size_t c = stat.rfind(')');
      if (c == std::string::npos) continue;
      std::vector<std::string> f = absl::StrSplit(stat.substr(c + 2), ' ');
      if (f.size() > 1 && f[1] == std::to_string(emud_->pid())) {
        std::string cmd = ReadFile(e.path().string() + "/cmdline");
        std::replace(cmd.begin(), cmd.end(), '\0', ' ');
        kids += e.path().filename().string() + ": " + cmd + "\n";
      }
    }
    log += "\nchildren:\n" + kids;
    return log.substr(log.size() > 4000 ? log.size() - 4000 : 0);  // the last cycles
  }();
  EXPECT_EQ(CountFiles(State()), files_before);
  // Memory: no growth proportional to the cycles (allow allocator noise;
  // AddressSanitizer's quarantine keeps freed memory, so not under ASan).
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_LT(after.rss_kb - before.rss_kb, 2048) << before.rss_kb << " -> " << after.rss_kb;
#endif
  std::printf("%d create/delete cycles: fds %d -> %d, sockets %d -> %d, rss %ld -> %ld kB, "
              "state entries %d -> %d, children %d\n",
              kCycles, before.fds, after.fds, before.sockets, after.sockets, before.rss_kb,
              after.rss_kb, files_before, CountFiles(State()), after.children);
}

}  // namespace
}  // namespace emud::testing
