#include "vfio_user/transport.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace emud::vfio_user {
namespace {

struct Pair {
  Pair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    a.reset(sv[0]);
    b.reset(sv[1]);
    ::fcntl(b.get(), F_SETFL, O_NONBLOCK);
  }
  UniqueFd a, b;
};

Header H(uint16_t id) {
  Header h;
  h.msg_id = id;
  h.command = kCmdRegionRead;
  return h;
}

void SendRawWithFds(int sock, const std::vector<uint8_t>& bytes, const std::vector<int>& fds) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(16 * sizeof(int))];
  if (!fds.empty()) {
    mh.msg_control = cbuf;
    mh.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
  }
  ASSERT_EQ(::sendmsg(sock, &mh, 0), static_cast<ssize_t>(bytes.size()));
}

TEST(MessageReaderTest, PipelinedMessagesKeepTheirFds) {
  Pair p;
  UniqueFd e1(::eventfd(0, 0)), e2(::eventfd(0, 0));
  std::vector<uint8_t> body(40, 7);
  int one[1] = {e1.get()};
  int two[2] = {e1.get(), e2.get()};
  ASSERT_TRUE(SendMessage(p.a.get(), H(1), body, {}).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(2), body, one).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(3), {}, two).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(4), body, {}).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(5), body, one).ok());
  MessageReader r(4096, 16);
  std::vector<size_t> expect = {0, 1, 2, 0, 1};
  for (uint16_t id = 1; id <= 5; ++id) {
    Message m;
    std::string err;
    ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage) << err;
    EXPECT_EQ(m.hdr.msg_id, id);
    EXPECT_EQ(m.fds.size(), expect[id - 1]) << "message " << id << " truncated=" << m.fds_truncated;
    EXPECT_FALSE(m.fds_truncated);
  }
  Message m;
  std::string err;
  EXPECT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kWouldBlock);
  EXPECT_TRUE(r.idle());
}

// A prepared message goes out whole, fds included, also when the socket
// takes only part of it at first (the rest follows without the fds).
TEST(PreparedMessageTest, SendsLikeSendMessage) {
  Pair p;
  UniqueFd e1(::eventfd(0, 0));
  std::vector<uint8_t> body(40, 9);
  int one[1] = {e1.get()};
  PreparedMessage pm;
  ASSERT_TRUE(PrepareMessage(H(7), body, one, &pm).ok());
  EXPECT_EQ(pm.hdr.msg_size, 16u + 40u);
  ASSERT_TRUE(SendPrepared(p.a.get(), pm).ok());
  PreparedMessage empty;
  ASSERT_TRUE(PrepareMessage(H(8), {}, {}, &empty).ok());
  ASSERT_TRUE(SendPrepared(p.a.get(), empty).ok());
  MessageReader r(4096, 16);
  Message m;
  std::string err;
  ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 7);
  EXPECT_EQ(m.payload, body);
  EXPECT_EQ(m.fds.size(), 1u);
  ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 8);
  EXPECT_TRUE(m.payload.empty());
  std::vector<int> too_many(kMaxRecvFds + 1, e1.get());
  PreparedMessage bad;
  EXPECT_FALSE(PrepareMessage(H(9), {}, too_many, &bad).ok());

  // Partial first send: a 1 MiB body into a socket buffer far smaller; a
  // reader drains it concurrently.
  std::vector<uint8_t> big(1 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t(i * 7);
  PreparedMessage large;
  ASSERT_TRUE(PrepareMessage(H(10), big, one, &large).ok());
  ::fcntl(p.a.get(), F_SETFL, O_NONBLOCK);
  std::thread reader([&] {
    MessageReader rr(2 << 20, 16);
    Message got;
    std::string e;
    MessageReader::Result res;
    while ((res = rr.Read(p.b.get(), &got, &e)) == MessageReader::Result::kWouldBlock) {
      pollfd pf{p.b.get(), POLLIN, 0};
      ::poll(&pf, 1, 1000);
    }
    EXPECT_EQ(res, MessageReader::Result::kMessage) << e;
    EXPECT_EQ(got.hdr.msg_id, 10);
    EXPECT_EQ(got.payload, big);
    EXPECT_EQ(got.fds.size(), 1u);
  });
  EXPECT_TRUE(SendPrepared(p.a.get(), large, absl::Seconds(10)).ok());
  reader.join();
}

TEST(MessageReaderTest, ExactModeNeverReadsAhead) {
  Pair p;
  UniqueFd e1(::eventfd(0, 0));
  int one[1] = {e1.get()};
  std::vector<uint8_t> body(40, 7);
  ASSERT_TRUE(SendMessage(p.a.get(), H(1), body, {}).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(2), body, one).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(3), {}, {}).ok());
  MessageReader r(4096, 16);
  r.set_exact_reads(true);
  const int sizes_left[3] = {56 + 16, 16, 0};
  for (uint16_t id = 1; id <= 3; ++id) {
    Message m;
    std::string err;
    ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage) << err;
    EXPECT_EQ(m.hdr.msg_id, id);
    EXPECT_EQ(m.fds.size(), id == 2 ? 1u : 0u);
    int queued = -1;
    ASSERT_EQ(::ioctl(p.b.get(), FIONREAD, &queued), 0);
    EXPECT_EQ(queued, sizes_left[id - 1]);  // the rest is still in the socket
  }
}

TEST(MessageReaderTest, ExactModeConsumesOnlyWholeMessages) {
  Pair p;
  Header h = H(3);
  h.msg_size = kHeaderSize + 8;
  std::vector<uint8_t> hdr(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + kHeaderSize);
  SendRawWithFds(p.a.get(), hdr, {});
  MessageReader r(4096, 16);
  r.set_exact_reads(true);
  Message m;
  std::string err;
  EXPECT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kWouldBlock);
  int queued = -1;
  ASSERT_EQ(::ioctl(p.b.get(), FIONREAD, &queued), 0);
  EXPECT_EQ(queued, 16);  // the header is still in the socket, not in our buffer
  EXPECT_TRUE(r.idle());
  SendRawWithFds(p.a.get(), std::vector<uint8_t>(8, 1), {});
  ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage);
  EXPECT_EQ(m.payload.size(), 8u);
  ASSERT_EQ(::ioctl(p.b.get(), FIONREAD, &queued), 0);
  EXPECT_EQ(queued, 0);
}

TEST(MessageReaderTest, SplitMessageWithFdsOnTheBody) {
  Pair p;
  UniqueFd e1(::eventfd(0, 0));
  Header h = H(9);
  h.msg_size = kHeaderSize + 8;
  std::vector<uint8_t> hdr(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + kHeaderSize);
  SendRawWithFds(p.a.get(), hdr, {});
  MessageReader r(4096, 16);
  Message m;
  std::string err;
  EXPECT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kWouldBlock);
  EXPECT_FALSE(r.idle());
  EXPECT_FALSE(r.HasBufferedMessage());
  SendRawWithFds(p.a.get(), std::vector<uint8_t>(8, 1), {e1.get()});
  ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage);
  EXPECT_EQ(m.fds.size(), 1u);
  EXPECT_EQ(m.payload.size(), 8u);
}

TEST(MessageReaderTest, TooManyFdsFlaggedAndClosed) {
  Pair p;
  std::vector<UniqueFd> efds;
  std::vector<int> raw;
  for (int i = 0; i < 6; ++i) {
    efds.emplace_back(::eventfd(0, 0));
    raw.push_back(efds.back().get());
  }
  ASSERT_TRUE(SendMessage(p.a.get(), H(1), {}, raw).ok());
  MessageReader r(4096, 4);
  Message m;
  std::string err;
  ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage);
  EXPECT_EQ(m.fds.size(), 4u);
  EXPECT_TRUE(m.fds_truncated);
}

TEST(MessageReaderTest, FramingErrorsAndBufferedMessages) {
  for (uint32_t bad : {0u, 15u, 4097u, 0x80000000u}) {
    Pair p;
    ASSERT_TRUE(SendMessage(p.a.get(), H(1), {}, {}).ok());
    Header h = H(2);
    h.msg_size = bad;
    std::vector<uint8_t> raw(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + kHeaderSize);
    SendRawWithFds(p.a.get(), raw, {});
    MessageReader r(4096, 4);
    Message m;
    std::string err;
    ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage);
    EXPECT_TRUE(r.HasBufferedMessage());  // the bad header is already buffered
    EXPECT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kFramingError) << bad;
  }
}

TEST(MessageReaderTest, LargeMessageAndEof) {
  Pair p;
  std::vector<uint8_t> big(200000, 3);
  std::thread t([&] { ASSERT_TRUE(SendMessage(p.a.get(), H(1), big, {}).ok()); });
  MessageReader r(1 << 20, 4);
  Message m;
  std::string err;
  MessageReader::Result res;
  while ((res = r.Read(p.b.get(), &m, &err)) == MessageReader::Result::kWouldBlock) {
    pollfd pf{p.b.get(), POLLIN, 0};
    ::poll(&pf, 1, 1000);
  }
  t.join();
  ASSERT_EQ(res, MessageReader::Result::kMessage);
  EXPECT_EQ(m.payload, big);
  p.a.reset();
  while ((res = r.Read(p.b.get(), &m, &err)) == MessageReader::Result::kWouldBlock) {
  }
  EXPECT_EQ(res, MessageReader::Result::kClosed);
}

}  // namespace
}  // namespace emud::vfio_user
