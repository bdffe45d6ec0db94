// Poison-input quarantine (issue 11), end to end: emud on its default flags
// supervising emud-worker-fault-injection (emud-worker plus the test-only
// hook of base/fault_point.h), which crashes on a chosen input. The test
// guest sends that input once; each successor resumes, applies it again and
// dies, until the third death quarantines it. Checked for each kind - a
// vfio-user request, a virtchnl message, a TX descriptor's packet:
//  - the guest gets an error for that input (EIO reply; ADMIN_QUEUE_ERROR
//    in the ARQ descriptor; the TX queue stops), never a hang or a reset;
//  - exactly kQuarantineAfter workers died, the device never went FAILED and
//    keeps serving the guest's next requests on the same connection;
//  - it is counted (emud_quarantined_total) and explained (last_error).
// And the production emud-worker ignores the hook's environment variable.
#include <signal.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "avf/regs.h"
#include "avf/virtchnl.h"
#include "base/poison_guard.h"
#include "gtest/gtest.h"
#include "tests/guest/guest_datapath.h"
#include "tests/guest/iavf_driver.h"
#include "tests/guest/vfio_user_bus.h"
#include "tests/integration/emud_harness.h"
#include "vfio_user/device.h"
#include "vfio_user/protocol.h"

namespace emud::testing {
namespace {

namespace v1 = emud::v1;

// Three distinct 8-byte markers: the hook crashes on the input holding one.
constexpr std::array<uint8_t, 8> kVfioMarker = {0xde, 0xad, 0xbe, 0xef, 0x01, 0x23, 0x45, 0x67};
constexpr std::array<uint8_t, 8> kVcMarker = {0xde, 0xad, 0xbe, 0xef, 0x89, 0xab, 0xcd, 0xef};
constexpr std::array<uint8_t, 8> kTxMarker = {0xde, 0xad, 0xbe, 0xef, 0x76, 0x54, 0x32, 0x10};

std::string Hex(const std::array<uint8_t, 8>& b) {
  std::string s;
  for (uint8_t x : b) absl::StrAppend(&s, absl::Hex(x, absl::kZeroPad2));
  return s;
}

class QuarantineTest : public ::testing::Test {
 protected:
  void StartEmud(const std::string& worker) {
    dir_ = std::make_unique<TempStateDir>(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    EmudProcess::Options o;
    o.state_dir = dir_->path() + "/state";
    o.worker_binary = Runfile(worker);
    o.extra_flags = {"--stop-workers-on-exit"};  // supervision on its defaults
    o.extra_env = {absl::StrCat("EMUD_TEST_CRASH_ON=vfio:", Hex(kVfioMarker),
                                ",virtchnl:", Hex(kVcMarker), ",tx:", Hex(kTxMarker))};
    auto e = EmudProcess::Start(o);
    ASSERT_TRUE(e.ok()) << e.status();
    emud_ = std::move(*e);
    CommandResult c = emud_->Emuctl({"create-device", "--type", "avf", "--name", "q", "--queues",
                                     "1", "--backend", "loopback", "--wait"});
    ASSERT_EQ(c.exit_code, 0) << c.err << emud_->Log();
    auto d = GetDevice(emud_->stub(), "q");
    ASSERT_TRUE(d.ok());
    guest::VfioUserBusOptions bopt;
    bopt.timeout = absl::Seconds(5);  // QEMU's x-msg-timeout
    auto bus = guest::VfioUserBus::Connect(d->spec().socket_path(), bopt);
    ASSERT_TRUE(bus.ok()) << bus.status();
    bus_ = std::move(*bus);
    guest::DriverOptions dopt;
    dopt.ring_size = 64;
    dopt.max_queues = 1;
    drv_ = std::make_unique<guest::IavfDriver>(bus_.get(), dopt);
    ASSERT_TRUE(drv_->Probe().ok());
    ASSERT_TRUE(drv_->Init().ok());
    ASSERT_TRUE(drv_->Open().ok());
    ASSERT_TRUE(drv_->link_up());
    ASSERT_TRUE(WaitPhase(emud_->stub(), "q", v1::PHASE_LINK_UP));
  }
  void TearDown() override {
    drv_.reset();
    bus_.reset();
    if (emud_ != nullptr) emud_->Stop(SIGTERM);
  }
  v1::Device Get() {
    auto d = GetDevice(emud_->stub(), "q");
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : v1::Device();
  }
  double Quarantined(const std::string& kind) {
    auto body = HttpGet(emud_->metrics_url());
    if (!body.ok()) return -1;
    auto m = ParsePrometheus(*body);
    if (!m.ok()) return -1;
    auto it = m->find(absl::StrCat("emud_quarantined_total{device=\"q\",kind=\"", kind, "\"}"));
    return it == m->end() ? 0 : it->second;
  }
  // After the quarantine: the device serves the same guest, was restarted
  // exactly kQuarantineAfter times, never FAILED, and says what happened.
  void ExpectQuarantined(const std::string& kind) {
    ASSERT_TRUE(WaitFor([&] { return Quarantined(kind) == 1; }, absl::Seconds(10)))
        << kind << ": " << Quarantined(kind) << "\n" << emud_->Log();
    v1::Device d = Get();
    EXPECT_EQ(d.status().restart_count(), PoisonGuard::kQuarantineAfter) << emud_->Log();
    EXPECT_EQ(d.status().phase(), v1::PHASE_LINK_UP) << d.status().last_error();
    EXPECT_NE(d.status().last_error().find("quarantined"), std::string::npos)
        << d.status().last_error();
    EXPECT_NE(d.status().last_error().find(kind), std::string::npos) << d.status().last_error();
    EXPECT_NE(emud_->Log().find("quarantined"), std::string::npos);
    // The same connection, still served; no reset seen by the guest.
    auto stats = drv_->RequestStats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    auto rstat = bus_->Read32(avf::kVfgenRstat);
    ASSERT_TRUE(rstat.ok());
    EXPECT_EQ(*rstat & 3, avf::kVfrVfActive);
    std::printf("quarantine %s: %u worker deaths, then answered with an error; device %s\n",
                kind.c_str(), d.status().restart_count(), v1::Phase_Name(d.status().phase()).c_str());
  }

  std::unique_ptr<TempStateDir> dir_;
  std::unique_ptr<EmudProcess> emud_;
  std::unique_ptr<guest::VfioUserBus> bus_;
  std::unique_ptr<guest::IavfDriver> drv_;
};

// A config-space write carrying the marker (a request like any other: the
// quarantine decision comes before the device sees it).
absl::Status PoisonConfigWrite(guest::VfioUserBus& bus) {
  return bus.client().RegionWrite(vfio_user::kConfigRegion, 0x40,
                                  absl::MakeConstSpan(kVfioMarker.data(), kVfioMarker.size()));
}

TEST_F(QuarantineTest, PoisonVfioUserRequestIsAnsweredEioAndTheDeviceLives) {
  ASSERT_NO_FATAL_FAILURE(StartEmud("dataplane/emud-worker-fault-injection"));
  absl::Status s = PoisonConfigWrite(*bus_);
  ASSERT_FALSE(s.ok()) << "the poison request must get an error reply";
  EXPECT_NE(std::string(s.message()).find("errno 5"), std::string::npos) << s;
  ExpectQuarantined("vfio-user/REGION_WRITE");
  // The worker's line has a time, a level and the device (base/log.h).
  EXPECT_TRUE(std::regex_search(
      emud_->Log(),
      std::regex("\\d{4}-\\d\\d-\\d\\dT[0-9:.]+Z ERROR emud-worker: q: vfio-user: quarantined "
                 "poison request REGION_WRITE \\(msg_id \\d+, \\d+ bytes, digest [0-9a-f]{16}\\): 3 "
                 "workers died applying it; answered EIO without applying it\n")))
      << emud_->Log();
}

TEST_F(QuarantineTest, PoisonVirtchnlMessageGetsAnErrorStatusInItsArqDescriptor) {
  ASSERT_NO_FATAL_FAILURE(StartEmud("dataplane/emud-worker-fault-injection"));
  // CONFIG_RSS_KEY with the marker in its key.
  std::vector<uint8_t> msg(4 + 52, 0x11);
  uint16_t vsi = drv_->vsi_id(), len = 52;
  std::memcpy(msg.data(), &vsi, 2);
  std::memcpy(msg.data() + 2, &len, 2);
  std::memcpy(msg.data() + 8, kVcMarker.data(), kVcMarker.size());
  auto reply = drv_->Exec(avf::vc::kOpConfigRssKey, msg);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->v_retval, avf::vc::kErrAdminQueueError);
  ExpectQuarantined("virtchnl");
}

TEST_F(QuarantineTest, PoisonTxDescriptorStopsOnlyItsQueue) {
  ASSERT_NO_FATAL_FAILURE(StartEmud("dataplane/emud-worker-fault-injection"));
  guest::GuestDataPath gdp(drv_.get());
  std::vector<uint8_t> frame(128, 0x22);
  std::memcpy(frame.data(), drv_->mac().data(), 6);  // loopback: back to us
  std::memcpy(frame.data() + 64, kTxMarker.data(), kTxMarker.size());
  ASSERT_TRUE(gdp.Transmit(0, frame).ok());
  ExpectQuarantined("tx");
  grpc::ClientContext ctx;
  v1::GetDeviceStatsRequest req;
  req.set_name("q");
  v1::DeviceStats st;
  ASSERT_TRUE(emud_->stub()->GetDeviceStats(&ctx, req, &st).ok());
  uint64_t tx_errors = 0;
  for (const auto& q : st.tx()) tx_errors += q.errors();
  EXPECT_GE(tx_errors, 1u);
  EXPECT_EQ(st.quarantined().at("tx"), 1u);
  // The guest's reset (or next ENABLE_QUEUES) brings the queue back.
  ASSERT_TRUE(drv_->Reset().ok());
  ASSERT_TRUE(WaitPhase(emud_->stub(), "q", v1::PHASE_LINK_UP));
  frame[64] = 0;  // no marker
  guest::GuestDataPath gdp2(drv_.get());  // the reset gave the driver new rings
  ASSERT_TRUE(gdp2.Transmit(0, frame).ok());
  bool back = WaitFor(
      [&] {
        auto r = gdp2.Receive(0);
        return r.ok() && !r->empty();
      },
      absl::Seconds(30));
  EXPECT_TRUE(back) << "traffic after the queue was enabled again\n" << emud_->Log();
}

TEST_F(QuarantineTest, ProductionWorkerHasNoFaultHook) {
  ASSERT_NO_FATAL_FAILURE(StartEmud("dataplane/emud-worker"));
  EXPECT_TRUE(PoisonConfigWrite(*bus_).ok());
  EXPECT_EQ(Get().status().restart_count(), 0u) << emud_->Log();
}

}  // namespace
}  // namespace emud::testing
