#include "fdstore/keeper.h"
#include "fdstore/running_keeper.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "fdstore/fd_store.h"
#include "gtest/gtest.h"

namespace emud::fdstore {
namespace {

// UNIX socket paths are short: a private directory under /tmp (TEST_TMPDIR
// can be longer than sun_path), removed when the test binary exits.
std::string SocketPath(const char* name) {
  static const std::string* dir = [] {
    char tmpl[] = "/tmp/keeper-test-XXXXXX";
    auto* d = new std::string(::mkdtemp(tmpl));
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(*dir, ec);
    });
    return d;
  }();
  return *dir + "/" + name;
}

ino_t Inode(int fd) {
  struct stat st {};
  ::fstat(fd, &st);
  return st.st_ino;
}

TEST(KeeperTest, BindHandsTheWorkerChannelAndTheHeldFds) {
  const std::string path = SocketPath("bind.sock");
  RunningKeeper k(path);
  auto emud = KeeperClient::Connect(path);
  ASSERT_TRUE(emud.ok()) << emud.status();
  auto b = (*emud)->Bind("dev0");
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->fds.size(), 1u);  // only the channel: nothing held yet
  EXPECT_GT(b->token, 0);
  // The worker deposits through its channel.
  auto worker = FdStoreClient::Adopt(std::move(b->fds[0].second), "dev0");
  ASSERT_TRUE(worker.ok()) << worker.status();
  UniqueFd conn(::memfd_create("conn", MFD_CLOEXEC));
  ASSERT_TRUE((*worker)->Deposit("vfio/conn", conn.get()).ok());
  auto keys = (*emud)->List("dev0");
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(*keys, std::vector<std::string>{"vfio/conn"});
  // The successor's set: a new channel and the very same object.
  worker->reset();
  auto b2 = (*emud)->Bind("dev0");
  ASSERT_TRUE(b2.ok()) << b2.status();
  ASSERT_EQ(b2->fds.size(), 2u);
  EXPECT_EQ(b2->fds[1].first, "vfio/conn");
  EXPECT_EQ(Inode(b2->fds[1].second.get()), Inode(conn.get()));
  EXPECT_NE(b2->token, b->token);
  // Bad names are refused with a clear status.
  EXPECT_FALSE((*emud)->Bind("a/b").ok());
  ASSERT_TRUE((*emud)->Drop("dev0").ok());
  EXPECT_TRUE((*emud)->List("dev0")->empty());
}

TEST(KeeperTest, ReconnectingWorkerMustHoldTheCurrentToken) {
  const std::string path = SocketPath("token.sock");
  RunningKeeper k(path);
  auto emud = KeeperClient::Connect(path);
  ASSERT_TRUE(emud.ok());
  auto b = (*emud)->Bind("dev1");
  ASSERT_TRUE(b.ok());
  // A process without the token (e.g. a stale worker) cannot speak for dev1.
  ::unsetenv(kTokenEnv);
  auto stranger = FdStoreClient::Connect(path, "dev1");
  EXPECT_FALSE(stranger.ok());
  ::setenv(kTokenEnv, std::to_string(b->token).c_str(), 1);
  auto current = FdStoreClient::Connect(path, "dev1");
  EXPECT_TRUE(current.ok()) << current.status();
  ::unsetenv(kTokenEnv);
}

TEST(KeeperTest, SuccessorKeeperTakesEverythingOverWithoutAGap) {
  const std::string path = SocketPath("handoff.sock");
  auto old_keeper = std::make_unique<RunningKeeper>(path);
  auto emud = KeeperClient::Connect(path);
  ASSERT_TRUE(emud.ok());
  auto b = (*emud)->Bind("dev2");
  ASSERT_TRUE(b.ok());
  auto worker = FdStoreClient::Adopt(std::move(b->fds[0].second), "dev2");
  ASSERT_TRUE(worker.ok());
  UniqueFd conn(::memfd_create("conn", MFD_CLOEXEC)), mem(::memfd_create("mem", MFD_CLOEXEC));
  ASSERT_TRUE((*worker)->Deposit("vfio/conn", conn.get()).ok());

  RunningKeeper successor(path);  // takes over from the running keeper
  EXPECT_TRUE(successor.keeper->took_over());
  // Read before the successor's thread serves (TSan found this read racing
  // the worker's first deposit to the successor, in the keeper's thread).
  EXPECT_EQ(successor.fds_at_start, 1u);
  old_keeper->thread.join();  // the old one stopped serving by itself
  EXPECT_TRUE(old_keeper->keeper->handed_over());
  old_keeper->stop = true;
  old_keeper->thread = std::thread([] {});
  old_keeper.reset();  // its copies close; the successor holds the objects

  // The worker's channel now reaches the successor: deposits go on.
  ASSERT_TRUE((*worker)->Deposit("dma/1000", mem.get()).ok());
  auto keys = (*emud)->List("dev2");  // emud's control channel reconnects
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 2u);
  EXPECT_TRUE((*emud)->TakeReconnected());
  auto b2 = (*emud)->Bind("dev2");
  ASSERT_TRUE(b2.ok());
  ASSERT_EQ(b2->fds.size(), 3u);
  EXPECT_EQ(Inode(b2->fds[2].second.get()), Inode(conn.get()));
}

}  // namespace
}  // namespace emud::fdstore
