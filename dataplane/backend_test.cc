#include "dataplane/backend.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/mac_filter.h"
#include "dataplane/shm_ring.h"
#include "gtest/gtest.h"

namespace emud::dataplane {
namespace {

struct CollectSink : FrameSink {
  std::vector<std::pair<uint16_t, std::vector<uint8_t>>> got;
  size_t capacity = SIZE_MAX;
  bool Deliver(uint16_t q, FrameView f) override {
    if (got.size() >= capacity) return false;
    got.emplace_back(q, std::vector<uint8_t>(f.begin(), f.end()));
    return true;
  }
};

std::vector<uint8_t> RandomFrame(std::mt19937& rng, size_t len) {
  std::vector<uint8_t> f(len);
  for (auto& b : f) b = uint8_t(rng());
  return f;
}

std::string TestDir() {
  const char* base = std::getenv("EMUD_TEST_TMPDIR");
  std::string d = absl::StrCat(base ? base : "/dev/shm", "/dp-backend-test-", getpid());
  std::filesystem::create_directories(d);
  return d;
}

TEST(Loopback, DeliversOnSameQueueAndCountsRefusals) {
  auto b = MakeLoopbackBackend();
  CollectSink sink;
  sink.capacity = 2;
  b->set_sink(&sink);
  std::mt19937 rng(1);
  auto f1 = RandomFrame(rng, 60), f2 = RandomFrame(rng, 1514), f3 = RandomFrame(rng, 61);
  FrameView v[] = {f1, f2, f3};
  EXPECT_EQ(b->Send(3, v), 3u);
  ASSERT_EQ(sink.got.size(), 2u);
  EXPECT_EQ(sink.got[0].first, 3);
  EXPECT_EQ(sink.got[0].second, f1);
  EXPECT_EQ(sink.got[1].second, f2);
  EXPECT_EQ(b->counters().tx_dropped, 1u);
  EXPECT_EQ(b->event_fd(), -1);
}

TEST(OpenBackend, ParsesSpecs) {
  BackendOptions o;
  o.device = "a";
  o.shm_dir = TestDir();
  EXPECT_TRUE(OpenBackend("loopback", o).ok());
  EXPECT_FALSE(OpenBackend("bogus", o).ok());
  EXPECT_FALSE(OpenBackend("peer:../x", o).ok());
  EXPECT_FALSE(OpenBackend("peer:a", o).ok());
  EXPECT_FALSE(OpenBackend("tap:", o).ok());
  EXPECT_FALSE(OpenBackend("tap:waytoolonginterfacename", o).ok());
  std::filesystem::remove_all(o.shm_dir);
}

TEST(Peer, BothDirectionsWithWakeups) {
  signal(SIGPIPE, SIG_IGN);
  std::string dir = TestDir();
  BackendOptions oa{"devA", dir, 9728}, ob{"devB", dir, 9728};
  auto a = OpenBackend("peer:devB", oa);
  ASSERT_TRUE(a.ok()) << a.status();
  std::mt19937 rng(2);
  auto f0 = RandomFrame(rng, 60);
  FrameView v0[] = {f0};
  // B not there yet: the cable is unplugged, frames are dropped.
  EXPECT_EQ((*a)->Send(0, v0), 0u);
  auto b = OpenBackend("peer:devA", ob);
  ASSERT_TRUE(b.ok()) << b.status();
  CollectSink sa, sb;
  (*a)->set_sink(&sa);
  (*b)->set_sink(&sb);

  // B goes to sleep; A's send must wake it.
  EXPECT_FALSE((*b)->ArmNotify());
  std::vector<std::vector<uint8_t>> sent;
  std::vector<FrameView> views;
  for (size_t len : {60, 61, 1514, 9000, 14}) sent.push_back(RandomFrame(rng, len));
  for (auto& f : sent) views.push_back(f);
  EXPECT_EQ((*a)->Send(0, views), sent.size());
  pollfd p{(*b)->event_fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "no wake-up";
  sb.capacity = 2;  // refuse the third: it must stay queued
  EXPECT_EQ((*b)->Poll(64), 2u);
  EXPECT_TRUE((*b)->HasPending());
  sb.capacity = SIZE_MAX;
  EXPECT_EQ((*b)->Poll(64), 3u);
  ASSERT_EQ(sb.got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_EQ(sb.got[i].second, sent[i]) << i;

  // And back.
  auto back = RandomFrame(rng, 128);
  FrameView vb[] = {back};
  EXPECT_EQ((*b)->Send(0, vb), 1u);
  EXPECT_EQ((*a)->Poll(64), 1u);
  ASSERT_EQ(sa.got.size(), 1u);
  EXPECT_EQ(sa.got[0].second, back);

  // Full ring: the producer refuses instead of overwriting.
  size_t accepted = 0;
  for (int i = 0; i < 2000; ++i) accepted += (*a)->Send(0, vb);
  EXPECT_EQ(accepted, 1024u);
  EXPECT_GT((*a)->counters().tx_dropped, 0u);
  // Oversized frame does not fit a slot.
  std::vector<uint8_t> huge(9729 + 64);
  FrameView vh[] = {huge};
  EXPECT_EQ((*b)->Send(0, vh), 0u);
  std::filesystem::remove_all(dir);
}

TEST(ShmRing, SurvivesCorruptIndicesAndLengths) {
  std::string dir = TestDir();
  std::string path = dir + "/r";
  auto c = ShmRing::OpenConsumer(path, 8, 128);
  ASSERT_TRUE(c.ok());
  auto p = ShmRing::OpenProducer(path);
  ASSERT_TRUE(p.ok());
  uint8_t f[20] = {1, 2, 3};
  ASSERT_TRUE((*p)->Push(f));
  // Corrupt the slot length through a second mapping of the file.
  {
    FILE* fp = fopen(path.c_str(), "r+");
    ASSERT_NE(fp, nullptr);
    fseek(fp, 4096, SEEK_SET);
    uint32_t bad = 100000;
    fwrite(&bad, 4, 1, fp);
    fclose(fp);
  }
  EXPECT_TRUE((*c)->Front().empty());
  EXPECT_EQ((*c)->errors(), 1u);
  // Corrupt head far beyond tail.
  {
    FILE* fp = fopen(path.c_str(), "r+");
    fseek(fp, 64, SEEK_SET);
    uint64_t bad = 1ull << 40;
    fwrite(&bad, 8, 1, fp);
    fclose(fp);
  }
  EXPECT_TRUE((*c)->Front().empty());
  EXPECT_EQ((*c)->errors(), 2u);
  // Reopening as consumer keeps the indices (a successor continues).
  ASSERT_TRUE((*p)->Push(f));
  auto c2 = ShmRing::OpenConsumer(path, 8, 128);
  ASSERT_TRUE(c2.ok());
  auto fr = (*c2)->Front();
  ASSERT_EQ(fr.size(), 20u);
  EXPECT_EQ(fr[2], 3);
  std::filesystem::remove_all(dir);
}

TEST(MacFilter, UnicastMulticastBroadcastPromisc) {
  MacFilter m;
  MacAddr me = {0x02, 0, 0, 0, 0, 1}, other = {0x02, 0, 0, 0, 0, 2};
  MacAddr mc = {0x01, 0x00, 0x5e, 0, 0, 1}, mc2 = {0x33, 0x33, 0, 0, 0, 1};
  MacAddr bc = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  auto frame = [](const MacAddr& d) {
    std::vector<uint8_t> f(60, 0);
    std::copy(d.begin(), d.end(), f.begin());
    return f;
  };
  ASSERT_TRUE(m.Add(me));
  ASSERT_TRUE(m.Add(mc));
  EXPECT_TRUE(m.Accept(frame(me)));
  EXPECT_FALSE(m.Accept(frame(other)));
  EXPECT_TRUE(m.Accept(frame(mc)));
  EXPECT_FALSE(m.Accept(frame(mc2)));
  EXPECT_TRUE(m.Accept(frame(bc)));
  m.SetPromisc(false, true);
  EXPECT_TRUE(m.Accept(frame(mc2)));
  EXPECT_FALSE(m.Accept(frame(other)));
  m.SetPromisc(true, false);
  EXPECT_TRUE(m.Accept(frame(other)));
  m.SetPromisc(false, false);
  m.Remove(me);
  EXPECT_FALSE(m.Accept(frame(me)));
  EXPECT_FALSE(m.Accept(std::vector<uint8_t>(3, 0)));
  ASSERT_EQ(m.addrs().size(), 1u);
  for (int i = 0; i < 255; ++i) {
    EXPECT_TRUE(m.Add(MacAddr{0x02, 1, 0, 0, uint8_t(i >> 8), uint8_t(i)}));
  }
  EXPECT_FALSE(m.Add(MacAddr{0x02, 9, 9, 9, 9, 9}));
}

}  // namespace
}  // namespace emud::dataplane
