#include "base/scm_rights.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace emud {
namespace {

struct Pair {
  explicit Pair(int type) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
    a.reset(sv[0]);
    b.reset(sv[1]);
  }
  UniqueFd a, b;
};

int OpenFds() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) {
    if (::fcntl(fd, F_GETFD) >= 0) ++n;
  }
  return n;
}

absl::Span<const uint8_t> Bytes(const char* s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s), std::strlen(s));
}

TEST(ScmRightsTest, BytesAndFdsArriveTogetherCloseOnExec) {
  Pair p(SOCK_STREAM);
  UniqueFd e1(::eventfd(7, 0)), e2(::eventfd(9, 0));
  int fds[2] = {e1.get(), e2.get()};
  SendResult s = SendWithFds(p.a.get(), Bytes("hello"), fds);
  ASSERT_TRUE(s.ok()) << s.status("send");
  EXPECT_EQ(s.bytes, 5u);

  uint8_t buf[16];
  std::vector<UniqueFd> got;
  RecvResult r = RecvWithFds(p.b.get(), buf, &got);
  ASSERT_TRUE(r.ok()) << r.status("recv");
  EXPECT_EQ(r.bytes, 5u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), 5), "hello");
  EXPECT_FALSE(r.fds_truncated);
  EXPECT_FALSE(r.data_truncated);
  ASSERT_EQ(got.size(), 2u);
  uint64_t v = 0;
  ASSERT_EQ(::read(got[1].get(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
  EXPECT_EQ(v, 9u);  // the second fd is e2's eventfd
  EXPECT_EQ(::fcntl(got[0].get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
}

TEST(ScmRightsTest, FdsBeyondTheCallersLimitAreClosedAndReported) {
  Pair p(SOCK_SEQPACKET);
  UniqueFd e1(::eventfd(0, 0)), e2(::eventfd(0, 0)), e3(::eventfd(0, 0));
  int fds[3] = {e1.get(), e2.get(), e3.get()};
  ASSERT_TRUE(SendWithFds(p.a.get(), Bytes("x"), fds).ok());
  const int before = OpenFds();
  uint8_t buf[4];
  std::vector<UniqueFd> got;
  RecvResult r = RecvWithFds(p.b.get(), buf, &got, /*max_fds=*/1);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.fds_truncated);
  EXPECT_EQ(got.size(), 1u);
  EXPECT_EQ(OpenFds(), before + 1);  // only the one kept
}

TEST(ScmRightsTest, AnOversizedRecordIsReportedTruncated) {
  Pair p(SOCK_SEQPACKET);
  ASSERT_TRUE(SendWithFds(p.a.get(), Bytes("a long record"), {}).ok());
  uint8_t buf[4];
  std::vector<UniqueFd> got;
  RecvResult r = RecvWithFds(p.b.get(), buf, &got);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.data_truncated);
  EXPECT_EQ(r.bytes, 4u);
}

TEST(ScmRightsTest, ControlTruncatedByTheKernelIsReported) {
  // A receiver without room for control data (a plain recvmsg) sees
  // MSG_CTRUNC; RecvWithFds always has room for SCM_MAX_FD, so provoke the
  // kernel's drop with a limit on open files instead.
  Pair p(SOCK_SEQPACKET);
  UniqueFd e(::eventfd(0, 0));
  int fds[1] = {e.get()};
  ASSERT_TRUE(SendWithFds(p.a.get(), Bytes("y"), fds).ok());
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  const int lowest_free = ::dup(0);
  ASSERT_GE(lowest_free, 0);
  ::close(lowest_free);
  low.rlim_cur = static_cast<rlim_t>(lowest_free);  // no room for one more fd
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  uint8_t buf[4];
  std::vector<UniqueFd> got;
  RecvResult r = RecvWithFds(p.b.get(), buf, &got);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.bytes, 1u);
  EXPECT_TRUE(r.fds_truncated);
  EXPECT_TRUE(got.empty());
}

TEST(ScmRightsTest, ErrorsCarryTheErrno) {
  Pair p(SOCK_STREAM);
  uint8_t buf[4];
  std::vector<UniqueFd> got;
  RecvResult r = RecvWithFds(p.b.get(), buf, &got, kMaxFdsPerMessage, MSG_DONTWAIT);
  EXPECT_EQ(r.error, EAGAIN);
  EXPECT_TRUE(absl::IsUnavailable(r.status("recv")));
  p.b.reset();
  SendResult s = SendWithFds(p.a.get(), Bytes("z"), {});
  EXPECT_EQ(s.error, EPIPE);  // and no SIGPIPE: MSG_NOSIGNAL
  std::vector<int> many(kMaxFdsPerMessage + 1, 0);
  EXPECT_EQ(SendWithFds(p.a.get(), Bytes("z"), many).error, EINVAL);
}

TEST(ScmRightsTest, EndOfStreamIsZeroBytesWithoutError) {
  Pair p(SOCK_STREAM);
  p.a.reset();
  uint8_t buf[4];
  std::vector<UniqueFd> got;
  RecvResult r = RecvWithFds(p.b.get(), buf, &got);
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.bytes, 0u);
}

TEST(ScmRightsTest, FdControlLaysOutAMessageAheadOfItsSend) {
  Pair p(SOCK_STREAM);
  UniqueFd e(::eventfd(3, 0));
  int fds[1] = {e.get()};
  char data[] = "pre";
  iovec iov{data, 3};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  FdControl control;
  ASSERT_TRUE(control.Attach(&mh, fds).ok());
  ASSERT_EQ(SendMsg(p.a.get(), mh).bytes, 3u);
  uint8_t buf[8];
  std::vector<UniqueFd> got;
  RecvResult r = RecvWithFds(p.b.get(), buf, &got);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.bytes, 3u);
  EXPECT_EQ(got.size(), 1u);
  std::vector<int> many(kMaxFdsPerMessage + 1, 0);
  EXPECT_TRUE(absl::IsInvalidArgument(control.Attach(&mh, many)));
}

}  // namespace
}  // namespace emud
