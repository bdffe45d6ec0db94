// The test guest against the AVF device over a real vfio-user socket.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "avf/device.h"
#include "base/event_loop.h"
#include "gtest/gtest.h"
#include "state_store/store.h"
#include "tests/guest/iavf_driver.h"
#include "tests/guest/vfio_user_bus.h"
#include "vfio_user/session.h"
#include "vfio_user/session_store.h"

namespace emud::guest {
namespace {

std::string TempDir() {
  const char* d = std::getenv("EMUD_TEST_TMPDIR");
  return d && *d ? d : "/tmp";
}

std::string UniquePath(absl::string_view tag) {
  static std::atomic<int> n{0};
  return absl::StrCat(TempDir(), "/avfg-", tag, "-", getpid(), "-", n++);
}

// An avf::Device served by a vfio-user Server on its own event-loop thread.
class AvfServer {
 public:
  explicit AvfServer(avf::DeviceOptions o = {}, state_store::Env* store = nullptr) {
    path_ = UniquePath("sock") + ".sock";
    auto dev = avf::Device::Create(o);
    EXPECT_TRUE(dev.ok()) << dev.status();
    dev_ = std::move(*dev);
    auto loop = emud::EventLoop::Create();
    EXPECT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    vfio_user::SessionOptions so;
    so.store = store;
    auto server = vfio_user::Server::Listen(path_, dev_.get(), loop_.get(), so);
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this] { (void)loop_->Run(); });
  }
  ~AvfServer() { Stop(); }
  // After Stop() the device may be inspected from the test thread.
  void Stop() {
    if (thread_.joinable()) {
      loop_->Stop();
      thread_.join();
    }
  }
  const std::string& path() const { return path_; }
  avf::Device& device() { return *dev_; }

 private:
  std::string path_;
  std::unique_ptr<avf::Device> dev_;
  std::unique_ptr<emud::EventLoop> loop_;
  std::unique_ptr<vfio_user::Server> server_;
  std::thread thread_;
};

class GuestOverSocket : public ::testing::TestWithParam<bool> {};

TEST_P(GuestOverSocket, PowerOnToLinkUpResetAndUpAgain) {
  AvfServer srv(avf::DeviceOptions{.mapped_doorbells = GetParam()});
  uint64_t tx_ring0 = 0;
  {
    auto bus = VfioUserBus::Connect(srv.path());
    ASSERT_TRUE(bus.ok()) << bus.status();
    EXPECT_EQ((*bus)->msix_vectors_supported(), avf::DeviceMsixVectors(4));
    IavfDriver drv(bus->get());
    ASSERT_TRUE(drv.Probe().ok());
    ASSERT_TRUE(drv.Init().ok());
    ASSERT_TRUE(drv.Open().ok());
    EXPECT_TRUE(drv.link_up());
    EXPECT_EQ(drv.num_active_queues(), 4u);
    EXPECT_GT((*bus)->total_fired(0), 0u) << "admin replies signalled on MSI-X vector 0 (eventfd)";

    ASSERT_TRUE(drv.Reset().ok());
    EXPECT_TRUE(drv.link_up());
    auto st = drv.RequestStats();
    ASSERT_TRUE(st.ok()) << st.status();
    tx_ring0 = drv.tx_ring(0).desc.iova;
  }  // driver, then bus (DMA_UNMAP, disconnect) go away; the device keeps its state
  srv.Stop();
  avf::Device& dev = srv.device();
  EXPECT_EQ(dev.counters().vf_resets, 1u);
  EXPECT_EQ(dev.counters().vc_errors, 0u);
  EXPECT_EQ(dev.aq_counters().atq_dma_errors, 0u);
  EXPECT_TRUE(dev.tx_queue(0).enabled);
  EXPECT_EQ(dev.tx_queue(0).ring_addr, tx_ring0);
  EXPECT_EQ(dev.RxTail(3), 511u);
}

TEST_P(GuestOverSocket, DeviceResetThenFreshDriver) {
  AvfServer srv(avf::DeviceOptions{.max_queue_pairs = 2, .mapped_doorbells = GetParam()});
  auto bus = VfioUserBus::Connect(srv.path());
  ASSERT_TRUE(bus.ok()) << bus.status();
  {
    IavfDriver drv(bus->get());
    ASSERT_TRUE(drv.Probe().ok());
    ASSERT_TRUE(drv.Init().ok());
    ASSERT_TRUE(drv.Open().ok());
    ASSERT_TRUE((*bus)->DisableMsix().ok());
  }
  ASSERT_TRUE((*bus)->DeviceReset().ok());
  IavfDriver drv(bus->get());
  ASSERT_TRUE(drv.Probe().ok());
  ASSERT_TRUE(drv.Init().ok());
  ASSERT_TRUE(drv.Open().ok());
  EXPECT_TRUE(drv.link_up());
  ASSERT_TRUE(drv.Remove().ok());
}

INSTANTIATE_TEST_SUITE_P(Doorbells, GuestOverSocket, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Mapped" : "Trapped"; });

TEST(GuestOverSocketPersistence, SessionCommitsDeviceRecordsThatRebuildIt) {
  const std::string dir = UniquePath("env");
  std::vector<std::string> tables = vfio_user::SessionTables();
  tables.push_back(avf::Device::kStateTable);
  auto env = state_store::Env::Open(dir, {.tables = tables});
  ASSERT_TRUE(env.ok()) << env.status();
  {
    AvfServer srv({}, env->get());
    {
      auto bus = VfioUserBus::Connect(srv.path());
      ASSERT_TRUE(bus.ok()) << bus.status();
      IavfDriver drv(bus->get());
      ASSERT_TRUE(drv.Probe().ok());
      ASSERT_TRUE(drv.Init().ok());
      ASSERT_TRUE(drv.Open().ok());
    }
    srv.Stop();
    // A successor model built from the committed records alone.
    auto fresh = avf::Device::Create({});
    ASSERT_TRUE(fresh.ok());
    ASSERT_TRUE(vfio_user::session_store::RestoreDevice(**env, **fresh).ok());
    avf::Device& a = srv.device();
    avf::Device& b = **fresh;
    for (uint32_t q = 0; q < 4; ++q) {
      EXPECT_TRUE(b.tx_queue(q).enabled);
      EXPECT_EQ(b.tx_queue(q).enabled, a.tx_queue(q).enabled);
      EXPECT_EQ(b.rx_queue(q).ring_addr, a.rx_queue(q).ring_addr);
      EXPECT_EQ(b.RxTail(q), a.RxTail(q));
    }
    for (uint32_t off : {avf::kVfAtqbal1, avf::kVfAtqh1, avf::kVfArqh1, avf::kVfArqt1, avf::kVfintDynCtl01}) {
      EXPECT_EQ(b.ReadReg(off), a.ReadReg(off)) << std::hex << off;
    }
    EXPECT_EQ(b.mac_filters().size(), 1u);
  }
  env->reset();
  std::string cmd = "rm -rf " + dir;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
}

// The two tools as separate processes: avf-server serving, emu-guest driving.
std::string Runfile(absl::string_view rel) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  return absl::StrCat(srcdir ? srcdir : ".", "/", ws ? ws : "emud", "/", rel);
}

TEST(GuestTools, EmuGuestAgainstAvfServerProcess) {
  const std::string sock = UniquePath("tool") + ".sock";
  const std::string server = Runfile("tests/guest/avf-server");
  pid_t srv = fork();
  ASSERT_GE(srv, 0);
  if (srv == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 2);
    execl(server.c_str(), server.c_str(), "--socket", sock.c_str(), "--queues", "4", (char*)nullptr);
    _exit(127);
  }
  // The server listens once started (TSan and a loaded machine: seconds).
  for (absl::Time until = absl::Now() + absl::Seconds(30);
       access(sock.c_str(), F_OK) != 0 && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (access(sock.c_str(), F_OK) != 0) {
    kill(srv, SIGKILL);
    waitpid(srv, nullptr, 0);
    FAIL() << "the server never created " << sock;
  }
  const std::string out = UniquePath("out") + ".json";
  const std::string cmd = absl::StrCat(Runfile("tests/guest/emu-guest"), " --socket ", sock,
                                       " --resets 2 --json > ", out);
  int rc = std::system(cmd.c_str());
  kill(srv, SIGTERM);
  int status = 0;
  waitpid(srv, &status, 0);
  EXPECT_EQ(rc, 0);
  FILE* f = fopen(out.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  fclose(f);
  unlink(out.c_str());
  EXPECT_NE(text.find("\"ok\": true"), std::string::npos) << text;
  EXPECT_NE(text.find("\"bringups\": 3"), std::string::npos) << text;
  EXPECT_NE(text.find("\"link_up\": true"), std::string::npos) << text;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace emud::guest
