// tap: backend against the host kernel, inside a network namespace the test
// creates (needs root and /dev/net/tun; skipped otherwise).
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/backend.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"

namespace emud::dataplane {
namespace {

constexpr uint16_t kTestEthertype = 0x88b5;  // IEEE local experimental

struct CollectSink : FrameSink {
  std::vector<std::vector<uint8_t>> got;
  bool Deliver(uint16_t, FrameView f) override {
    got.emplace_back(f.begin(), f.end());
    return true;
  }
};

class NetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0) {
      GTEST_SKIP() << "needs root and /dev/net/tun";
    }
    ns_ = absl::StrCat("emudtap", getpid());
    ASSERT_EQ(std::system(absl::StrCat("ip netns add ", ns_).c_str()), 0);
    created_ = true;
    orig_.reset(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
    UniqueFd nsfd(open(absl::StrCat("/var/run/netns/", ns_).c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(nsfd.valid());
    ASSERT_EQ(setns(nsfd.get(), CLONE_NEWNET), 0) << strerror(errno);
    entered_ = true;
  }
  void TearDown() override {
    if (entered_) setns(orig_.get(), CLONE_NEWNET);
    if (created_ && std::system(absl::StrCat("ip netns del ", ns_).c_str()) != 0) {
      ADD_FAILURE() << "ip netns del " << ns_;
    }
  }
  std::string ns_;
  UniqueFd orig_;
  bool created_ = false, entered_ = false;
};

TEST_F(NetnsTest, FramesCrossByteForByteBothWays) {
  std::string ifname = "emudtap0";
  BackendOptions opt;
  opt.device = "d";
  auto tap = OpenBackend(absl::StrCat("tap:", ifname), opt);
  ASSERT_TRUE(tap.ok()) << tap.status();
  CollectSink sink;
  (*tap)->set_sink(&sink);
  ASSERT_EQ(std::system(absl::StrCat("ip -n ", ns_, " link set ", ifname, " up").c_str()), 0);
  int ifindex = if_nametoindex(ifname.c_str());
  ASSERT_GT(ifindex, 0);
  UniqueFd ps(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(kTestEthertype)));
  ASSERT_TRUE(ps.valid()) << strerror(errno);
  sockaddr_ll sll{};
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(kTestEthertype);
  sll.sll_ifindex = ifindex;
  ASSERT_EQ(bind(ps.get(), reinterpret_cast<sockaddr*>(&sll), sizeof(sll)), 0);

  std::mt19937 rng(5);
  auto make = [&](size_t len) {
    std::vector<uint8_t> f(len);
    for (auto& b : f) b = uint8_t(rng());
    f[0] = 0x02;  // unicast, locally administered
    f[6] = 0x02;
    f[12] = kTestEthertype >> 8;
    f[13] = kTestEthertype & 0xff;
    return f;
  };
  // Device -> host: what the device sends appears on the TAP side.
  for (size_t len : {60, 61, 1514}) {
    auto f = make(len);
    FrameView v[] = {f};
    ASSERT_EQ((*tap)->Send(0, v), 1u);
    pollfd p{ps.get(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 5000), 1);
    std::vector<uint8_t> buf(2048);
    ssize_t n = recv(ps.get(), buf.data(), buf.size(), 0);
    ASSERT_EQ(n, static_cast<ssize_t>(len));
    buf.resize(n);
    EXPECT_EQ(buf, f) << len;
  }
  // Host -> device: a frame written into the TAP reaches the sink.
  for (size_t len : {60, 1514}) {
    auto f = make(len);
    ASSERT_EQ(sendto(ps.get(), f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&sll),
                     sizeof(sll)),
              static_cast<ssize_t>(len));
    bool found = false;
    for (int tries = 0; tries < 50 && !found; ++tries) {
      pollfd p{(*tap)->event_fd(), POLLIN, 0};
      poll(&p, 1, 100);
      (*tap)->Poll(64);
      for (auto& g : sink.got) found |= g == f;  // the kernel may add its own frames
    }
    EXPECT_TRUE(found) << len;
  }
}

// IFF_MULTI_QUEUE: one TAP queue per queue pair; a successor adopts every
// queue fd (detached ones re-attached), and a host frame reaches the
// device on one of them.
TEST_F(NetnsTest, MultiQueueTapIsAdoptedQueueByQueue) {
  std::string ifname = "emudmq0";
  BackendOptions opt;
  opt.device = "d";
  opt.tap_queues = 3;
  auto tap = OpenBackend(absl::StrCat("tap:", ifname), opt);
  ASSERT_TRUE(tap.ok()) << tap.status();
  ASSERT_EQ((*tap)->num_queues(), 3u);
  // What the fd store keeps: a duplicate of each queue fd.
  std::vector<int> dups;
  for (uint32_t k = 0; k < 3; ++k) dups.push_back(fcntl((*tap)->event_fd(k), F_DUPFD_CLOEXEC, 3));
  (*tap)->SetActiveQueues(0x1);  // the guest runs one RX queue: 1 and 2 detached
  tap->reset();                  // the worker dies; the interface lives on the dups
  BackendOptions succ = opt;
  succ.tap_fds = dups;
  auto adopted = OpenBackend(absl::StrCat("tap:", ifname), succ);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  ASSERT_EQ((*adopted)->num_queues(), 3u);
  for (uint32_t k = 0; k < 3; ++k) EXPECT_EQ((*adopted)->event_fd(k), dups[k]);
  CollectSink sink;
  (*adopted)->set_sink(&sink);
  (*adopted)->SetActiveQueues(0x7);
  ASSERT_EQ(std::system(absl::StrCat("ip -n ", ns_, " link set ", ifname, " up").c_str()), 0);
  int ifindex = if_nametoindex(ifname.c_str());
  UniqueFd ps(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(kTestEthertype)));
  ASSERT_TRUE(ps.valid());
  sockaddr_ll sll{};
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(kTestEthertype);
  sll.sll_ifindex = ifindex;
  ASSERT_EQ(bind(ps.get(), reinterpret_cast<sockaddr*>(&sll), sizeof(sll)), 0);
  // Every TX queue's frames leave through the TAP (queue q -> TAP queue q).
  std::vector<uint8_t> f(60, 0);
  f[0] = 0x02;
  f[6] = 0x02;
  f[12] = kTestEthertype >> 8;
  f[13] = kTestEthertype & 0xff;
  for (uint16_t q = 0; q < 3; ++q) {
    f[20] = uint8_t(q);
    FrameView v[] = {f};
    ASSERT_EQ((*adopted)->Send(q, v), 1u) << q;
    pollfd p{ps.get(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 5000), 1);
    std::vector<uint8_t> buf(2048);
    ASSERT_EQ(recv(ps.get(), buf.data(), buf.size(), 0), 60);
    EXPECT_EQ(buf[20], q);
  }
  // Host -> device: the frame arrives on one of the three queues.
  f[20] = 0x77;
  ASSERT_EQ(sendto(ps.get(), f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&sll), sizeof(sll)),
            60);
  bool found = false;
  for (int tries = 0; tries < 50 && !found; ++tries) {
    std::vector<pollfd> p;
    for (uint32_t k = 0; k < 3; ++k) p.push_back({(*adopted)->event_fd(k), POLLIN, 0});
    poll(p.data(), p.size(), 100);
    for (uint32_t k = 0; k < 3; ++k) (*adopted)->Poll(64, k);
    for (auto& g : sink.got) found |= g == f;
  }
  EXPECT_TRUE(found);
}

// A single-queue TAP stays single-queue when the successor wants more.
TEST_F(NetnsTest, SingleQueueTapIsKept) {
  std::string ifname = "emudsq0";
  BackendOptions opt;
  opt.device = "d";
  auto tap = OpenBackend(absl::StrCat("tap:", ifname), opt);
  ASSERT_TRUE(tap.ok()) << tap.status();
  int dup = fcntl((*tap)->event_fd(), F_DUPFD_CLOEXEC, 3);
  tap->reset();
  BackendOptions succ = opt;
  succ.tap_queues = 4;
  succ.tap_fds = {dup};
  auto adopted = OpenBackend(absl::StrCat("tap:", ifname), succ);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_EQ((*adopted)->num_queues(), 1u);
}

}  // namespace
}  // namespace emud::dataplane
