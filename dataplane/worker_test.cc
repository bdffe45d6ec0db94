// A worker resumed inside one process: a Worker serves a vfio-user client
// through an fd store, is dropped as a killed process would be (Abandon),
// and a second Worker built over the same state directory and the store's
// descriptors takes the very same connection over.
#include "dataplane/worker.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "avf/regs.h"
#include "fdstore/fd_store.h"
#include "gtest/gtest.h"
#include "vfio_user/client.h"
#include "vfio_user/device.h"
#include "worker_api/fd_keys.h"

namespace emud::dataplane {
namespace {

// emud's part: an fd store serving worker channels on a thread of its own.
class FakeStoreHost {
 public:
  FakeStoreHost() : thread_([this] { Serve(); }) {}
  ~FakeStoreHost() {
    stop_ = true;
    thread_.join();
  }

  // A new channel: the store's end is served, the worker's end returned.
  UniqueFd NewChannel() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    std::lock_guard<std::mutex> lock(mu_);
    channels_.push_back({UniqueFd(sv[0]), ""});
    return UniqueFd(sv[1]);
  }

  std::vector<std::string> Keys(const std::string& device) {
    std::lock_guard<std::mutex> lock(mu_);
    return store_.Keys(device);
  }
  bool Has(const std::string& device, const std::string& key) {
    for (const auto& k : Keys(device)) {
      if (k == key) return true;
    }
    return false;
  }

  // What emud starts a successor with: a new channel and a duplicate of
  // every fd held for `device`.
  std::map<std::string, UniqueFd> InheritedFor(const std::string& device) {
    std::map<std::string, UniqueFd> fds;
    fds[worker_api::kChannelFdKey] = NewChannel();
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, fd] : store_.Fds(device)) {
      fds[key] = UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
    }
    return fds;
  }

 private:
  struct Channel {
    UniqueFd fd;
    std::string device;
  };

  void Serve() {
    while (!stop_) {
      std::vector<pollfd> pfds;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& c : channels_) pfds.push_back({c.fd.get(), POLLIN, 0});
      }
      if (pfds.empty()) {
        usleep(1000);
        continue;
      }
      if (::poll(pfds.data(), pfds.size(), 10) <= 0) continue;
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& p : pfds) {
        if (p.revents == 0) continue;
        for (auto it = channels_.begin(); it != channels_.end(); ++it) {
          if (it->fd.get() != p.fd) continue;
          // A closed channel (the worker is gone) is dropped; its fds stay.
          if (absl::IsUnavailable(store_.ServeOne(it->fd.get(), &it->device))) channels_.erase(it);
          break;
        }
      }
    }
  }

  std::mutex mu_;
  fdstore::FdStore store_;
  std::vector<Channel> channels_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Runs a Worker's loop on a thread until Stop().
class Running {
 public:
  explicit Running(Worker* w) : w_(w), thread_([w, this] { result_ = w->Run(); }) {}
  absl::Status Stop() {
    w_->Stop();
    thread_.join();
    return result_;
  }

 private:
  Worker* w_;
  absl::Status result_;
  std::thread thread_;
};

constexpr char kDevice[] = "w0";
constexpr uint64_t kIova = 0x10000000;

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // tmpfs, as in production; a short path (sockets), unique across
    // sandboxes that share /dev/shm but not a pid namespace.
    char tmpl[] = "/dev/shm/emud-worker-unit-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  WorkerOptions Options() {
    WorkerOptions o;
    o.args.device = kDevice;
    o.args.state_dir = dir_;
    o.args.socket_path = absl::StrCat(dir_, "/w0.sock");
    o.args.mac = "02:00:00:00:00:07";
    o.args.queues = 2;
    o.args.backend = "loopback";
    return o;
  }

  std::string dir_;
};

TEST_F(WorkerTest, ResumesTheSessionOfADroppedWorker) {
  FakeStoreHost host;
  WorkerOptions first = Options();
  first.inherited_fds[worker_api::kChannelFdKey] = host.NewChannel();
  auto w1 = std::make_unique<Worker>(std::move(first));
  ASSERT_TRUE(w1->ResumeOrCreate().ok());
  EXPECT_FALSE(w1->resumed());
  EXPECT_TRUE(w1->resumable());
  auto run1 = std::make_unique<Running>(w1.get());

  // A guest: VERSION, guest RAM, one MSI-X eventfd, memory decoding on,
  // admin queue base addresses in BAR0 (AVF state committed per request).
  auto client = vfio_user::Client::Connect(Options().args.socket_path);
  ASSERT_TRUE(client.ok()) << client.status();
  vfio_user::Client& c = **client;
  ASSERT_TRUE(c.Version().ok());
  UniqueFd ram(::memfd_create("guest-ram", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(ram.get(), 1 << 20), 0);
  ASSERT_TRUE(c.DmaMap(ram.get(), 0, kIova, 1 << 20).ok());
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
  int efd_raw = efd.get();
  ASSERT_TRUE(c.SetIrqEventfds(vfio_user::kMsixIrq, 0, absl::MakeConstSpan(&efd_raw, 1)).ok());
  uint16_t cmd = 0x6;
  ASSERT_TRUE(c.RegionWrite(vfio_user::kConfigRegion, 4,
                            absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&cmd), 2))
                  .ok());
  ASSERT_TRUE(c.Write32(vfio_user::kBar0, avf::kVfAtqbal1, 0x12345000).ok());
  ASSERT_TRUE(c.Write32(vfio_user::kBar0, avf::kVfArqbal1, 0x23456000).ok());
  auto atqbal = c.Read32(vfio_user::kBar0, avf::kVfAtqbal1);
  ASSERT_TRUE(atqbal.ok());
  EXPECT_EQ(*atqbal, 0x12345000u);

  // Everything the successor needs is in the store before it was used.
  for (const std::string& key :
       {std::string(worker_api::kListenFdKey), std::string(worker_api::kConnFdKey),
        std::string(worker_api::kDoorbellFdKey), worker_api::DmaFdKey(kIova),
        worker_api::IrqFdKey(vfio_user::kMsixIrq, 0)}) {
    EXPECT_TRUE(host.Has(kDevice, key)) << key;
  }

  ASSERT_TRUE(run1->Stop().ok());
  EXPECT_EQ(w1->status().phase(), internal::WorkerStatus::CONNECTED);
  EXPECT_EQ(w1->status().reattaches(), 0u);
  w1->Abandon();  // as SIGKILL would: nothing committed, released or closed
  w1.reset();
  run1.reset();

  WorkerOptions second = Options();
  second.inherited_fds = host.InheritedFor(kDevice);
  auto w2 = std::make_unique<Worker>(std::move(second));
  ASSERT_TRUE(w2->ResumeOrCreate().ok());
  EXPECT_TRUE(w2->resumed());
  EXPECT_TRUE(w2->session().connected());
  EXPECT_EQ(w2->device().num_queue_pairs(), 2u);
  auto run2 = std::make_unique<Running>(w2.get());

  // The same connection goes on, with the state the first worker committed.
  atqbal = c.Read32(vfio_user::kBar0, avf::kVfAtqbal1);
  ASSERT_TRUE(atqbal.ok()) << atqbal.status();
  EXPECT_EQ(*atqbal, 0x12345000u);
  auto arqbal = c.Read32(vfio_user::kBar0, avf::kVfArqbal1);
  ASSERT_TRUE(arqbal.ok());
  EXPECT_EQ(*arqbal, 0x23456000u);
  ASSERT_TRUE(c.DmaUnmap(kIova, 1 << 20).ok());  // the resumed window is known
  EXPECT_TRUE(host.Has(kDevice, worker_api::IrqFdKey(vfio_user::kMsixIrq, 0)));

  // The client leaving ends the session: its fds leave the store.
  client->reset();
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (host.Has(kDevice, worker_api::kConnFdKey) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_FALSE(host.Has(kDevice, worker_api::kConnFdKey));
  EXPECT_FALSE(host.Has(kDevice, worker_api::DmaFdKey(kIova)));
  EXPECT_TRUE(host.Has(kDevice, worker_api::kListenFdKey));

  ASSERT_TRUE(run2->Stop().ok());
  EXPECT_EQ(w2->status().reattaches(), 1u);
  EXPECT_GT(w2->status().last_reattach_seconds(), 0.0);
  EXPECT_EQ(w2->status().phase(), internal::WorkerStatus::LISTENING);
  EXPECT_EQ(w2->status().pid(), static_cast<uint32_t>(getpid()));
}

TEST_F(WorkerTest, FreshWorkerWithoutStoreStopsBeforeRun) {
  Worker w(Options());
  w.Stop();  // e.g. SIGTERM during start-up
  ASSERT_TRUE(w.ResumeOrCreate().ok());
  EXPECT_FALSE(w.resumed());
  EXPECT_FALSE(w.resumable());
  EXPECT_TRUE(w.Run().ok());  // returns at once, after publishing
  EXPECT_EQ(w.status().phase(), internal::WorkerStatus::LISTENING);
  EXPECT_TRUE(std::filesystem::exists(Options().args.socket_path));
}

TEST_F(WorkerTest, ReportsTheFailingStep) {
  WorkerOptions o = Options();
  o.args.backend = "nonsense";
  Worker w(std::move(o));
  absl::Status s = w.ResumeOrCreate();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("backend"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace emud::dataplane
