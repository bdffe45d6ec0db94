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

}  // namespace
}  // namespace emud::dataplane
