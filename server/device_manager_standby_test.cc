// DeviceManager with standby workers (--standby-workers) over the real
// emud-worker: a killed worker's successor is its standby, promoted; an
// upgrade and a delete never leave an old standby behind.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/device_manager.h"
#include "server/metrics.h"

namespace emud::server {
namespace {

namespace v1 = emud::v1;

std::string Runfile(const std::string& rel) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/emud/", rel);
}

bool Gone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

// Polls `cond` for up to 20 s (the loop's reactions are milliseconds).
template <typename F>
bool Eventually(F cond) {
  for (int i = 0; i < 2000; ++i) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

class StandbyManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short (unix socket paths are limited to 107 bytes) and unique (the
    // sandbox's pid namespace gives every run the same pid).
    char tmpl[] = "/tmp/emud-sbdm-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ManagerOptions o;
    o.state_dir = dir_ + "/state";
    o.socket_dir = dir_ + "/sockets";
    o.worker_binary = Runfile("dataplane/emud-worker");
    o.startup_rt_priority = 0;  // no CAP_SYS_NICE needed
    o.stop_workers_on_exit = true;
    auto m = DeviceManager::Open(o, &metrics_);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
    absl::Status s = manager_->Start();
    ASSERT_TRUE(s.ok()) << s;
  }
  void TearDown() override {
    manager_.reset();
    std::filesystem::remove_all(dir_);
  }

  v1::Phase Phase(const std::string& name) {
    auto d = manager_->GetDevice(name);
    return d.ok() ? d->status().phase() : v1::PHASE_UNSPECIFIED;
  }
  void Create(const std::string& name) {
    v1::CreateDeviceRequest req;
    req.set_name(name);
    req.set_type(v1::DEVICE_TYPE_AVF);
    req.mutable_spec()->set_queue_pairs(1);
    req.mutable_spec()->set_backend("loopback");
    auto d = manager_->CreateDevice(req);
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_TRUE(Eventually([&] { return Phase(name) == v1::PHASE_LISTENING; }));
  }
  // Waits for the device's standby (started once its worker serves).
  pid_t WaitStandby(const std::string& name) {
    pid_t pid = 0;
    EXPECT_TRUE(Eventually([&] { return (pid = manager_->StandbyPidForTest(name)) != 0; }));
    return pid;
  }

  Metrics metrics_;
  std::string dir_;
  std::unique_ptr<DeviceManager> manager_;
};

TEST_F(StandbyManagerTest, AKilledWorkerIsReplacedByItsStandby) {
  Create("sb0");
  const pid_t worker = manager_->WorkerPidForTest("sb0");
  const pid_t standby = WaitStandby("sb0");
  ASSERT_NE(standby, worker);
  // The restart only promotes a standby that said it is ready (it has
  // exec'd and parsed its arguments).
  ASSERT_TRUE(Eventually([&] { return manager_->StandbyReadyForTest("sb0"); }));
  ASSERT_EQ(::kill(worker, SIGKILL), 0);
  ASSERT_TRUE(Eventually([&] { return manager_->WorkerPidForTest("sb0") == standby; }))
      << "the successor is not the standby: worker " << manager_->WorkerPidForTest("sb0");
  ASSERT_TRUE(Eventually([&] { return Phase("sb0") == v1::PHASE_LISTENING; }));
  auto d = manager_->GetDevice("sb0");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->status().restart_count(), 1u);
  EXPECT_EQ(d->status().worker_pid(), standby);
  // And a new standby once the promoted worker serves.
  const pid_t next = WaitStandby("sb0");
  EXPECT_NE(next, standby);
  // A standby's death is no worker crash.
  ASSERT_EQ(::kill(next, SIGKILL), 0);
  ASSERT_TRUE(Eventually([&] { return manager_->StandbyPidForTest("sb0") != next; }));
  d = manager_->GetDevice("sb0");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->status().restart_count(), 1u);
  EXPECT_EQ(d->status().worker_pid(), standby);
  EXPECT_EQ(d->status().consecutive_failures(), 0u);
}

TEST_F(StandbyManagerTest, UpgradeAndDeleteNeverLeaveAnOldStandby) {
  Create("sb1");
  const pid_t old_standby = WaitStandby("sb1");
  auto up = manager_->UpgradeWorker("sb1", "", absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(up.ok()) << up.status();
  // The old binary's standby is gone at once; the new worker is spawned,
  // not promoted; a new standby follows.
  EXPECT_TRUE(Gone(old_standby));
  EXPECT_NE(manager_->WorkerPidForTest("sb1"), old_standby);
  ASSERT_TRUE(Eventually([&] { return Phase("sb1") == v1::PHASE_LISTENING; }));
  const pid_t fresh = WaitStandby("sb1");
  EXPECT_NE(fresh, old_standby);
  ASSERT_TRUE(manager_->DeleteDevice("sb1", false, absl::Now() + absl::Seconds(10)).ok());
  EXPECT_TRUE(Gone(fresh));
}

}  // namespace
}  // namespace emud::server
