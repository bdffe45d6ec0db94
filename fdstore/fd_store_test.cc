#include "fdstore/fd_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/scm_rights.h"
#include "gtest/gtest.h"

namespace emud::fdstore {
namespace {

int OpenFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

UniqueFd MemfdWith(const std::string& content) {
  UniqueFd fd(memfd_create("t", MFD_CLOEXEC));
  EXPECT_EQ(write(fd.get(), content.data(), content.size()), ssize_t(content.size()));
  return fd;
}

std::string ReadAll(int fd) {
  char buf[256];
  ssize_t n = pread(fd, buf, sizeof buf, 0);
  return n > 0 ? std::string(buf, n) : "";
}

std::pair<UniqueFd, UniqueFd> Pair() {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// Runs the store side of a channel on a thread until the channel closes.
std::thread Serve(FdStore* store, int channel, std::string* device) {
  return std::thread([=] {
    while (store->ServeOne(channel, device).ok()) {
    }
  });
}

TEST(FdStoreTest, DepositedFdIsTheSameKernelObject) {
  int before = OpenFds();
  {
    FdStore store;
    auto [worker_end, store_end] = Pair();
    std::string device;
    std::thread t = Serve(&store, store_end.get(), &device);
    auto client = FdStoreClient::Adopt(std::move(worker_end), "dev0");
    ASSERT_TRUE(client.ok()) << client.status();
    UniqueFd mem = MemfdWith("guest-ram");
    ASSERT_TRUE((*client)->Deposit("dma/0x1000", mem.get()).ok());
    UniqueFd other = MemfdWith("eventfd-stand-in");
    ASSERT_TRUE((*client)->Deposit("irq/msix/0", other.get()).ok());
    ASSERT_TRUE((*client)->Deposit("irq/msix/1", other.get()).ok());
    // The store's copy sees writes made through the worker's fd after the deposit.
    ASSERT_EQ(pwrite(mem.get(), "GUEST", 5, 0), 5);
    client->reset();  // worker goes away: channel closes, fds stay
    t.join();
    EXPECT_EQ(device, "dev0");
    auto fds = store.Fds("dev0");
    ASSERT_EQ(fds.size(), 3u);
    EXPECT_EQ(fds[0].first, "dma/0x1000");
    EXPECT_EQ(ReadAll(fds[0].second), "GUEST-ram");
    store.ReleasePrefix("dev0", "irq/");
    EXPECT_EQ(store.Keys("dev0"), std::vector<std::string>{"dma/0x1000"});
    store.ReleaseDevice("dev0");
    EXPECT_EQ(store.size(), 0u);
  }
  EXPECT_EQ(OpenFds(), before) << "fd leak";
}

TEST(FdStoreTest, ReleaseAndRefusals) {
  FdStore store;
  auto [worker_end, store_end] = Pair();
  std::string device;
  // Before HELLO nothing is accepted.
  UniqueFd mem = MemfdWith("x");
  ASSERT_TRUE(SendMessage(worker_end.get(), Message{Op::kDeposit, 0, "k"}, mem.get()).ok());
  ASSERT_TRUE(store.ServeOne(store_end.get(), &device).ok());
  UniqueFd none;
  auto ack = ReceiveMessage(worker_end.get(), &none);
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->arg, EPERM);
  EXPECT_EQ(store.size(), 0u);

  std::thread t = Serve(&store, store_end.get(), &device);
  auto client = FdStoreClient::Adopt(std::move(worker_end), "dev1");
  ASSERT_TRUE(client.ok());
  EXPECT_FALSE((*client)->Deposit("bad key!", mem.get()).ok());
  EXPECT_FALSE((*client)->Deposit("", mem.get()).ok());
  ASSERT_TRUE((*client)->Deposit("a", mem.get()).ok());
  ASSERT_TRUE((*client)->Deposit("b", mem.get()).ok());
  ASSERT_TRUE((*client)->Release("a").ok());
  EXPECT_EQ((*client)->deposited(), 1u);
  client->reset();
  t.join();
  EXPECT_EQ(store.Keys("dev1"), std::vector<std::string>{"b"});
}

TEST(FdStoreTest, MalformedMessagesAreRefusedWithoutLeaking) {
  auto [a, b] = Pair();
  int before = OpenFds();
  {
    // Two fds in one message.
    UniqueFd f1 = MemfdWith("1"), f2 = MemfdWith("2");
    int both[2] = {f1.get(), f2.get()};
    uint8_t payload[24] = {};
    ASSERT_GT(SendWithFds(a.get(), payload, both).bytes, 0u);
  }
  UniqueFd got;
  auto m = ReceiveMessage(b.get(), &got);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(got.valid());
  // Garbage and a lying size.
  ASSERT_EQ(send(a.get(), "garbage", 7, 0), 7);
  EXPECT_EQ(ReceiveMessage(b.get(), &got).status().code(), absl::StatusCode::kInvalidArgument);
  char lie[24] = {};
  uint32_t magic = 0x31444645, len = 150;
  std::memcpy(lie, &magic, 4);
  lie[4] = 2;
  std::memcpy(lie + 16, &len, 4);
  ASSERT_EQ(send(a.get(), lie, sizeof lie, 0), ssize_t(sizeof lie));
  EXPECT_EQ(ReceiveMessage(b.get(), &got).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenFds(), before) << "a refused message leaked its fds";
  a.reset();
  EXPECT_EQ(ReceiveMessage(b.get(), &got).status().code(), absl::StatusCode::kUnavailable);
}

TEST(FdStoreTest, ClientRedepositsEverythingAfterTheStoreRestarts) {
  std::string path = absl::StrCat("/dev/shm/emud-fdstore-test-", getpid(), ".sock");
  auto listener = ListenSeqpacket(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  fcntl(listener->get(), F_SETFL, 0);  // blocking accept in this test
  FdStore first;
  std::string dev1;
  std::thread t1([&] {
    UniqueFd ch(accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
    while (first.ServeOne(ch.get(), &dev1).ok()) {
    }
  });
  auto client = FdStoreClient::Connect(path, "dev2");
  ASSERT_TRUE(client.ok()) << client.status();
  UniqueFd m1 = MemfdWith("one"), m2 = MemfdWith("two");
  ASSERT_TRUE((*client)->Deposit("dma/1", m1.get()).ok());
  ASSERT_TRUE((*client)->Deposit("dma/2", m2.get()).ok());
  m1.reset();  // the worker's own object is gone; its kept duplicate is not
  ASSERT_TRUE((*client)->Release("dma/2").ok());

  // "emud" dies: its store and channel vanish.
  shutdown((*client)->channel_fd(), SHUT_RDWR);
  t1.join();
  first.ReleaseDevice("dev2");

  FdStore second;
  std::string dev2;
  std::thread t2([&] {
    UniqueFd ch(accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
    while (second.ServeOne(ch.get(), &dev2).ok()) {
    }
  });
  ASSERT_TRUE((*client)->Reconnect(path).ok());
  client->reset();
  t2.join();
  auto fds = second.Fds("dev2");
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_EQ(fds[0].first, "dma/1");
  EXPECT_EQ(ReadAll(fds[0].second), "one");
  unlink(path.c_str());
}

TEST(FdStoreTest, KeptFdsAreHandedOverOnlyAtReconnect) {
  std::string path = absl::StrCat("/dev/shm/emud-fdstore-keep-", getpid(), ".sock");
  auto listener = ListenSeqpacket(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  fcntl(listener->get(), F_SETFL, 0);
  auto [mine, theirs] = Pair();
  FdStore first;
  std::string dev1;
  std::thread t1 = Serve(&first, mine.get(), &dev1);
  auto client = FdStoreClient::Adopt(std::move(theirs), "dev3");
  ASSERT_TRUE(client.ok()) << client.status();
  UniqueFd m1 = MemfdWith("inherited");
  EXPECT_FALSE((*client)->Keep("bad key!", m1.get()).ok());
  ASSERT_TRUE((*client)->Keep("doorbell", m1.get()).ok());
  EXPECT_EQ(first.Fds("dev3").size(), 0u);  // Keep does not talk to the store
  EXPECT_EQ((*client)->deposited(), 1u);
  m1.reset();
  shutdown((*client)->channel_fd(), SHUT_RDWR);
  t1.join();
  mine.reset();

  FdStore second;
  std::string dev2;
  std::thread t2([&] {
    UniqueFd ch(accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
    while (second.ServeOne(ch.get(), &dev2).ok()) {
    }
  });
  ASSERT_TRUE((*client)->Reconnect(path).ok());
  client->reset();
  t2.join();
  auto fds = second.Fds("dev3");
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_EQ(fds[0].first, "doorbell");
  EXPECT_EQ(ReadAll(fds[0].second), "inherited");
  unlink(path.c_str());
}

TEST(SpawnTest, TakeInheritedFdsParsesAndValidates) {
  UniqueFd m = MemfdWith("inherited");
  int fd = m.release();
  setenv("EMUD_FDS", absl::StrCat("vfio/conn=", fd).c_str(), 1);
  auto fds = TakeInheritedFds();
  ASSERT_TRUE(fds.ok()) << fds.status();
  EXPECT_EQ(getenv("EMUD_FDS"), nullptr);
  ASSERT_EQ(fds->count("vfio/conn"), 1u);
  EXPECT_EQ(ReadAll(fds->at("vfio/conn").get()), "inherited");
  setenv("EMUD_FDS", "x=999", 1);
  EXPECT_FALSE(TakeInheritedFds().ok());
  setenv("EMUD_FDS", "x=abc", 1);
  EXPECT_FALSE(TakeInheritedFds().ok());
  unsetenv("EMUD_FDS");
  EXPECT_TRUE(TakeInheritedFds()->empty());
}

}  // namespace
}  // namespace emud::fdstore
