#include "dataplane/tap_rx_stage.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace emud::dataplane {
namespace {

uint16_t Checksum(const uint8_t* p, size_t n) {
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i]) << 8 | p[i + 1];
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(~sum);
}

// Ethernet + IPv4 (+ `vlan` tag) carrying `payload` bytes after the IP header.
std::vector<uint8_t> Ipv4Frame(size_t payload, bool vlan = false) {
  std::vector<uint8_t> f(12, 0x02);
  if (vlan) f.insert(f.end(), {0x81, 0x00, 0x00, 0x05});
  f.insert(f.end(), {0x08, 0x00});
  size_t ip = f.size();
  f.resize(ip + 20 + payload, 0xab);
  f[ip] = 0x45;
  f[ip + 1] = 0;
  f[ip + 2] = uint8_t((20 + payload) >> 8);
  f[ip + 3] = uint8_t(20 + payload);
  f[ip + 8] = 64;
  f[ip + 9] = 17;
  f[ip + 10] = f[ip + 11] = 0;
  uint16_t c = Checksum(&f[ip], 20);
  f[ip + 10] = uint8_t(c >> 8);
  f[ip + 11] = uint8_t(c);
  return f;
}

std::vector<uint8_t> Padded(std::vector<uint8_t> f, size_t extra) {
  f.resize(f.size() + extra, 0xee);  // bytes of an older, longer frame
  return f;
}

TEST(SelfDescribedFrameLengthTest, IpArpAndVlan) {
  auto v4 = Ipv4Frame(33);
  EXPECT_EQ(SelfDescribedFrameLength(Padded(v4, 100)), v4.size());
  auto tagged = Ipv4Frame(7, true);
  EXPECT_EQ(SelfDescribedFrameLength(Padded(tagged, 9)), tagged.size());

  std::vector<uint8_t> v6(14 + 40 + 11, 0);
  v6[12] = 0x86;
  v6[13] = 0xdd;
  v6[14] = 0x60;
  v6[14 + 5] = 11;
  EXPECT_EQ(SelfDescribedFrameLength(Padded(v6, 64)), v6.size());

  std::vector<uint8_t> arp(42, 1);
  arp[12] = 0x08;
  arp[13] = 0x06;
  EXPECT_EQ(SelfDescribedFrameLength(Padded(arp, 20)), 42u);
}

TEST(SelfDescribedFrameLengthTest, RefusesWhatItCannotTrust) {
  auto v4 = Ipv4Frame(40);
  auto bad = v4;
  bad[14 + 8] ^= 1;  // header checksum no longer holds
  EXPECT_FALSE(SelfDescribedFrameLength(Padded(bad, 10)).has_value());
  // Stated length beyond the buffer.
  EXPECT_FALSE(SelfDescribedFrameLength(absl::MakeConstSpan(v4.data(), v4.size() - 1)).has_value());
  std::vector<uint8_t> other(60, 0);
  other[12] = 0x88;
  other[13] = 0xb5;
  EXPECT_FALSE(SelfDescribedFrameLength(other).has_value());
  EXPECT_FALSE(SelfDescribedFrameLength(absl::MakeConstSpan(v4.data(), 10)).has_value());
  auto short_ihl = v4;
  short_ihl[14] = 0x44;  // IHL 16 bytes
  EXPECT_FALSE(SelfDescribedFrameLength(short_ihl).has_value());
}

class TapRxStageTest : public ::testing::Test {
 protected:
  std::string path_ = absl::StrCat(
      ::testing::TempDir().empty() ? "/tmp" : ::testing::TempDir(), "/stage-", ::getpid(), "-",
      ::testing::UnitTest::GetInstance()->current_test_info()->name());
  void TearDown() override { std::filesystem::remove(path_); }
};

std::vector<uint8_t> Held(const TapRxStage& s) {
  auto h = s.held();
  return std::vector<uint8_t>(h.begin(), h.end());
}

TEST_F(TapRxStageTest, HeldFrameSurvivesTheProcess) {
  auto frame = Ipv4Frame(100);
  {
    auto s = TapRxStage::Open(path_);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE((*s)->held().empty());
    std::memcpy((*s)->BeginRead(), frame.data(), frame.size());
    (*s)->EndRead(ssize_t(frame.size()));
    EXPECT_EQ(Held(**s), frame);
    // not released: the device never took it
  }
  auto s = TapRxStage::Open(path_);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->recovered(), 1u);
  EXPECT_EQ(Held(**s), frame);
  (*s)->Release();
  EXPECT_TRUE((*s)->held().empty());
  s->reset();
  auto again = TapRxStage::Open(path_);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE((*again)->held().empty());
  EXPECT_EQ((*again)->recovered(), 0u);
}

TEST_F(TapRxStageTest, NothingReadLeavesNothing) {
  {
    auto s = TapRxStage::Open(path_);
    ASSERT_TRUE(s.ok());
    auto old = Ipv4Frame(10);  // an earlier frame, taken
    std::memcpy((*s)->BeginRead(), old.data(), old.size());
    (*s)->EndRead(ssize_t(old.size()));
    (*s)->Release();
    (*s)->BeginRead();  // killed inside a read() that found nothing
  }
  auto s = TapRxStage::Open(path_);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE((*s)->held().empty()) << "the earlier frame must not come back";
  EXPECT_EQ((*s)->recovered(), 0u);
  EXPECT_EQ((*s)->unrecoverable(), 0u);
}

// A worker SIGKILLed after read() copied a frame but before it stored the
// length: the successor recovers the frame from its own headers.
TEST_F(TapRxStageTest, KillAfterTheReadCopiedAFrame) {
  auto longer = Ipv4Frame(900);
  auto frame = Ipv4Frame(61);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto s = TapRxStage::Open(path_);
    if (!s.ok()) _exit(2);
    std::memcpy((*s)->BeginRead(), longer.data(), longer.size());
    (*s)->EndRead(ssize_t(longer.size()));
    (*s)->Release();
    uint8_t* buf = (*s)->BeginRead();
    std::memcpy(buf, frame.data(), frame.size());  // what the kernel's read() did
    ::kill(::getpid(), SIGKILL);
    _exit(3);
  }
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(st));
  auto s = TapRxStage::Open(path_);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->recovered(), 1u);
  EXPECT_EQ(Held(**s), frame);
}

TEST_F(TapRxStageTest, UnrecoverableFrameIsCountedAndDropped) {
  {
    auto s = TapRxStage::Open(path_);
    ASSERT_TRUE(s.ok());
    std::vector<uint8_t> other(80, 7);
    other[12] = 0x88;
    other[13] = 0xb5;
    std::memcpy((*s)->BeginRead(), other.data(), other.size());
  }
  auto s = TapRxStage::Open(path_);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->unrecoverable(), 1u);
  EXPECT_TRUE((*s)->held().empty());
}

TEST_F(TapRxStageTest, GarbageFileIsReinitialised) {
  {
    FILE* f = std::fopen(path_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("not a stage", f);
    std::fclose(f);
  }
  auto s = TapRxStage::Open(path_);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE((*s)->held().empty());
}

TEST(TapRxStageAnonymousTest, PrivateStageWorks) {
  auto s = TapRxStage::Open("");
  ASSERT_TRUE(s.ok()) << s.status();
  auto frame = Ipv4Frame(5);
  std::memcpy((*s)->BeginRead(), frame.data(), frame.size());
  (*s)->EndRead(ssize_t(frame.size()));
  EXPECT_EQ(Held(**s), frame);
}

}  // namespace
}  // namespace emud::dataplane
