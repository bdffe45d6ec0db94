#include "server/fd_store_host.h"

#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "fdstore/fd_store.h"
#include "fdstore/keeper.h"
#include "fdstore/running_keeper.h"
#include "gtest/gtest.h"
#include "worker_api/fd_keys.h"

namespace emud::server {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/fd-host-XXXXXX";
  return ::mkdtemp(tmpl);
}

UniqueFd Memfd() { return UniqueFd(::memfd_create("test", MFD_CLOEXEC)); }

bool HasEnv(const FdStoreHost::Launch& l, const std::string& prefix) {
  for (const auto& e : l.env) {
    if (absl::StartsWith(e, prefix)) return true;
  }
  return false;
}

// Serves the in-process host (as emud's loop does) until `done`.
void ServeUntil(FdStoreHost& host, const std::function<bool()>& done) {
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!done() && absl::Now() < give_up) {
    struct pollfd pfd = {host.event_fd(), POLLIN, 0};
    ::poll(&pfd, 1, 10);
    host.HandleEvents();
  }
}

TEST(FdStoreHostTest, InEmudChannelsDepositsReconnectsAndDrop) {
  const std::string dir = TempDir();
  Metrics metrics;
  WorkerDirectory workers;
  workers.current_pid = [](const std::string& d) { return d == "ghost" ? 0 : ::getpid(); };
  workers.running_tokens = [] { return std::vector<std::pair<std::string, int64_t>>{}; };
  auto host = OpenFdStoreHost({dir}, &metrics, workers);
  ASSERT_TRUE(host.ok()) << host.status();
  FdStoreHost& h = **host;
  EXPECT_FALSE(h.outlives_emud());
  EXPECT_GE(h.event_fd(), 0);

  auto launch = h.PrepareWorker("dev");
  ASSERT_TRUE(launch.ok()) << launch.status();
  ASSERT_EQ(launch->inherit.size(), 1u);
  EXPECT_EQ(launch->inherit[0].key, std::string(fdstore::kChannelKey));
  EXPECT_EQ(launch->token, 0);
  EXPECT_TRUE(HasEnv(*launch, absl::StrCat(fdstore::kStoreSocketEnv, "=", dir, "/fdstore.sock")));
  UniqueFd worker_end(::dup(launch->inherit[0].fd));
  h.WorkerStarted("dev", *launch);

  // The worker deposits over its inherited channel.
  std::atomic<bool> deposited{false};
  std::thread worker([&] {
    auto c = fdstore::FdStoreClient::Adopt(std::move(worker_end), "dev");
    ASSERT_TRUE(c.ok()) << c.status();
    UniqueFd m = Memfd();
    EXPECT_TRUE((*c)->Deposit(worker_api::kDoorbellFdKey, m.get()).ok());
    deposited = true;
  });
  ServeUntil(h, [&] {
    return deposited.load() && h.HeldKeys("dev") == std::vector<std::string>{worker_api::kDoorbellFdKey};
  });
  worker.join();
  EXPECT_EQ(h.HeldKeys("dev"), std::vector<std::string>{worker_api::kDoorbellFdKey});
  // The next worker inherits it.
  launch = h.PrepareWorker("dev");
  ASSERT_TRUE(launch.ok());
  ASSERT_EQ(launch->inherit.size(), 2u);
  EXPECT_EQ(launch->inherit[1].key, std::string(worker_api::kDoorbellFdKey));

  // Reconnecting (after an emud restart) is for the device's current worker
  // only (SO_PEERCRED): "ghost" has none.
  std::atomic<int> finished{0};
  std::thread reconnects([&] {
    for (const char* device : {"dev2", "ghost"}) {
      auto c = fdstore::FdStoreClient::Connect(dir + "/fdstore.sock", device);
      if (c.ok()) {
        UniqueFd m = Memfd();
        (void)(*c)->Deposit(worker_api::kDoorbellFdKey, m.get());
      }
      ++finished;
    }
  });
  ServeUntil(h, [&] { return finished.load() == 2; });
  reconnects.join();
  EXPECT_EQ(h.HeldKeys("dev2").size(), 1u);
  EXPECT_TRUE(h.HeldKeys("ghost").empty());

  h.DropDevice("dev");
  EXPECT_TRUE(h.HeldKeys("dev").empty());
  std::filesystem::remove_all(dir);
}

TEST(FdStoreHostTest, KeeperBindsListsReadoptsAndDrops) {
  const std::string dir = TempDir();
  const std::string path = dir + "/keeper.sock";
  auto keeper = std::make_unique<fdstore::RunningKeeper>(path);
  Metrics metrics;
  int readopts = 0;
  WorkerDirectory workers;
  workers.current_pid = [](const std::string&) { return ::getpid(); };
  workers.running_tokens = [&] {
    ++readopts;
    return std::vector<std::pair<std::string, int64_t>>{{"dev", 1}};
  };
  FdStoreHostOptions o;
  o.state_dir = dir;
  o.fd_keeper = path;
  auto host = OpenFdStoreHost(o, &metrics, workers);
  ASSERT_TRUE(host.ok()) << host.status();
  FdStoreHost& h = **host;
  EXPECT_TRUE(h.outlives_emud());
  EXPECT_EQ(h.event_fd(), -1);
  EXPECT_NE(h.held_gauge_interval(), absl::InfiniteDuration());

  auto launch = h.PrepareWorker("dev");
  ASSERT_TRUE(launch.ok()) << launch.status();
  EXPECT_GT(launch->token, 0);
  ASSERT_EQ(launch->inherit.size(), 1u);
  EXPECT_EQ(launch->inherit[0].key, std::string(fdstore::kChannelKey));
  EXPECT_TRUE(HasEnv(*launch, absl::StrCat(fdstore::kStoreSocketEnv, "=", path)));
  EXPECT_TRUE(HasEnv(*launch, absl::StrCat(fdstore::kTokenEnv, "=", launch->token)));
  {
    // Deposits go to the keeper, not through emud.
    auto c = fdstore::FdStoreClient::Adopt(UniqueFd(::dup(launch->inherit[0].fd)), "dev");
    ASSERT_TRUE(c.ok()) << c.status();
    UniqueFd m = Memfd();
    ASSERT_TRUE((*c)->Deposit(worker_api::kDoorbellFdKey, m.get()).ok());
  }
  h.WorkerStarted("dev", *launch);
  EXPECT_EQ(h.HeldKeys("dev"), std::vector<std::string>{worker_api::kDoorbellFdKey});
  EXPECT_EQ(readopts, 0);

  // A restarted keeper hears the running workers' tokens on the next call.
  keeper.reset();
  keeper = std::make_unique<fdstore::RunningKeeper>(path);
  EXPECT_TRUE(h.HeldKeys("dev").empty());  // a fresh keeper holds nothing
  EXPECT_EQ(readopts, 1);

  h.DropDevice("dev");
  EXPECT_TRUE(h.HeldKeys("dev").empty());
  keeper.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace emud::server
