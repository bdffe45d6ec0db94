// emud with the real emud-worker (//dataplane:emud-worker), attached by the
// test guest (//tests/guest:emu-guest, an iavf-style driver over vfio-user):
// create -> LISTENING -> the guest attaches -> LINK_UP -> counters move ->
// a killed worker is restarted -> delete.
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "tests/integration/emud_harness.h"

namespace emud::testing {
namespace {

namespace v1 = emud::v1;

TEST(EmudRealWorkerTest, GuestBringsLinkUpAndCountersMove) {
  TempStateDir dir("real");
  EmudProcess::Options o;
  o.state_dir = dir.path() + "/state";
  o.worker_binary = Runfile("dataplane/emud-worker");
  o.extra_flags = {"--stop-workers-on-exit"};  // supervision on its defaults
  auto started = EmudProcess::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  EmudProcess& e = **started;

  CommandResult c = e.Emuctl({"create-device", "--type", "avf", "--name", "nic0", "--queues",
                              "4", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err << e.Log();
  auto dev = GetDevice(e.stub(), "nic0");
  ASSERT_TRUE(dev.ok());
  ASSERT_EQ(dev->status().phase(), v1::PHASE_LISTENING);
  // The VMM may run as another user of the socket's group.
  struct stat sst {};
  ASSERT_EQ(::stat(dev->spec().socket_path().c_str(), &sst), 0);
  EXPECT_TRUE(S_ISSOCK(sst.st_mode));
  EXPECT_EQ(sst.st_mode & 0777, 0660u);

  // Record every phase the device goes through while the guest runs.
  absl::Mutex mu;
  std::vector<v1::Phase> phases;
  grpc::ClientContext wctx;
  v1::WatchDevicesRequest wreq;
  wreq.add_names("nic0");
  wreq.set_skip_initial(true);
  auto reader = e.stub()->WatchDevices(&wctx, wreq);
  std::thread watcher([&] {
    v1::DeviceEvent ev;
    while (reader->Read(&ev)) {
      absl::MutexLock l(&mu);
      phases.push_back(ev.device().status().phase());
    }
  });

  CommandResult g = RunCommand({Runfile("tests/guest/emu-guest"), "--socket",
                                dev->spec().socket_path(), "--queues", "4", "--resets", "1",
                                "--json"});
  EXPECT_EQ(g.exit_code, 0) << g.out << g.err;
  EXPECT_NE(g.out.find("\"link_up\": true"), std::string::npos) << g.out;
  bool saw_link_up = WaitFor(
      [&] {
        absl::MutexLock l(&mu);
        return std::find(phases.begin(), phases.end(), v1::PHASE_LINK_UP) != phases.end();
      },
      absl::Seconds(10));
  EXPECT_TRUE(saw_link_up);
  ASSERT_TRUE(WaitPhase(e.stub(), "nic0", v1::PHASE_LISTENING));  // guest detached
  wctx.TryCancel();
  watcher.join();
  reader->Finish();

  // Counters moved, over the API and in the metrics.
  c = e.Emuctl({"stats", "nic0", "-o", "json"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("\"vfioUserMessages\""), std::string::npos) << c.out;
  double msgs = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto body = HttpGet(e.metrics_url());
        if (!body.ok()) return false;
        auto m = ParsePrometheus(*body);
        if (!m.ok()) return false;
        msgs = 0;
        double region_writes = 0, resources_ok = 0, enable_ok = 0;
        for (const auto& [k, v] : *m) {
          if (k.find("device=\"nic0\"") == std::string::npos) continue;
          if (k.rfind("emud_vfio_user_messages_total{", 0) == 0) {
            msgs += v;
            if (k.find("command=\"REGION_WRITE\"") != std::string::npos) region_writes += v;
          }
          if (k.rfind("emud_virtchnl_ops_total{", 0) == 0 &&
              k.find("status=\"SUCCESS\"") != std::string::npos) {
            if (k.find("op=\"GET_VF_RESOURCES\"") != std::string::npos) resources_ok += v;
            if (k.find("op=\"ENABLE_QUEUES\"") != std::string::npos) enable_ok += v;
          }
        }
        // VERSION, DMA_MAP, region accesses, ... of two bring-ups (one
        // reset), with the virtchnl ops labelled by op and status.
        return msgs > 50 && region_writes > 10 && resources_ok >= 2 && enable_ok >= 2;
      },
      absl::Seconds(10)))
      << msgs;

  // A killed worker is restarted and counted.
  pid_t pid = GetDevice(e.stub(), "nic0")->status().worker_pid();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto d = GetDevice(e.stub(), "nic0");
        return d.ok() && d->status().worker_pid() != pid &&
               d->status().phase() == v1::PHASE_LISTENING;
      },
      absl::Seconds(10)));
  EXPECT_EQ(GetDevice(e.stub(), "nic0")->status().restart_count(), 1u);

  c = e.Emuctl({"delete", "nic0"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(e.Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace emud::testing
