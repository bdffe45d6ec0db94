#include "vfio_user/transport.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "base/scm_rights.h"
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
  const SendResult r = SendWithFds(sock, bytes, fds);
  ASSERT_TRUE(r.ok()) << r.status("send");
  ASSERT_EQ(r.bytes, bytes.size());
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

// A reply mark (the crash-consistent journal's "replying") is stored with
// the sendmsg that takes the message; while the socket is full nothing was
// sent, so the mark keeps its previous value during the wait and after a
// timeout.
TEST(PreparedMessageTest, MarkGoesWithTheSendAndNotWithAWait) {
  Pair p;
  ::fcntl(p.a.get(), F_SETFL, O_NONBLOCK);
  volatile uint64_t word = 5;
  std::vector<uint8_t> body(24, 3);
  PreparedMessage pm;
  ASSERT_TRUE(PrepareMessage(H(11), body, {}, &pm).ok());
  ASSERT_TRUE(SendPrepared(p.a.get(), pm, absl::Seconds(1), MarkBeforeSend{&word, 9}).ok());
  EXPECT_EQ(word, 9u);
  MessageReader r(4096, 16);
  Message m;
  std::string err;
  ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 11);
  EXPECT_EQ(m.payload, body);

  // Fill the socket until it takes not even one byte.
  const uint8_t chunk[4096] = {};
  while (::send(p.a.get(), chunk, sizeof(chunk), MSG_DONTWAIT) > 0) {
  }
  while (::send(p.a.get(), chunk, 1, MSG_DONTWAIT) > 0) {
  }
  ASSERT_EQ(errno, EAGAIN);
  word = 5;
  PreparedMessage full;
  ASSERT_TRUE(PrepareMessage(H(12), body, {}, &full).ok());
  const absl::Status st = SendPrepared(p.a.get(), full, absl::Milliseconds(50), MarkBeforeSend{&word, 10});
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
  EXPECT_EQ(word, 5u) << "marked although nothing was sent";

  // Room appears while it waits: sent whole, and marked.
  std::thread drain([&] {
    absl::SleepFor(absl::Milliseconds(20));
    uint8_t sink[65536];
    ssize_t n;
    while ((n = ::recv(p.b.get(), sink, sizeof(sink), MSG_DONTWAIT)) > 0) {
    }
  });
  PreparedMessage later;
  ASSERT_TRUE(PrepareMessage(H(13), body, {}, &later).ok());
  EXPECT_TRUE(SendPrepared(p.a.get(), later, absl::Seconds(10), MarkBeforeSend{&word, 11}).ok());
  drain.join();
  EXPECT_EQ(word, 11u);
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

// ---- Peek mode (the crash-consistent session) ----

size_t OpenFds() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
  }
  return n;
}

int Queued(int sock) {
  int queued = -1;
  EXPECT_EQ(::ioctl(sock, FIONREAD, &queued), 0);
  return queued;
}

TEST(PeekTest, PeekLeavesTheMessageAndItsFdsUntilConsume) {
  Pair p;
  UniqueFd e1(::eventfd(0, EFD_NONBLOCK)), e2(::eventfd(0, EFD_NONBLOCK));
  std::vector<uint8_t> body(40, 7);
  int two[2] = {e1.get(), e2.get()};
  ASSERT_TRUE(SendMessage(p.a.get(), H(1), body, two).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(2), {}, {}).ok());
  const size_t fds_before = OpenFds();
  MessageReader r(4096, 16);
  for (int round = 0; round < 2; ++round) {  // peeking twice sees the same message
    Message m;
    absl::Span<const uint8_t> raw;
    std::string err;
    ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
    EXPECT_EQ(m.hdr.msg_id, 1);
    EXPECT_EQ(m.payload, body);
    ASSERT_EQ(raw.size(), kHeaderSize + body.size());
    EXPECT_EQ(std::memcmp(raw.data(), &m.hdr, kHeaderSize), 0);
    ASSERT_EQ(m.fds.size(), 2u);
    EXPECT_FALSE(m.fds_truncated);
    // The peeked fds are the sender's eventfds.
    uint64_t one = 1, got = 0;
    ASSERT_EQ(::write(m.fds[1].get(), &one, sizeof(one)), 8);
    ASSERT_EQ(::read(e2.get(), &got, sizeof(got)), 8);
    EXPECT_EQ(got, 1u);
    EXPECT_EQ(Queued(p.b.get()), static_cast<int>(raw.size() + kHeaderSize));
    EXPECT_TRUE(r.idle());
  }
  EXPECT_EQ(OpenFds(), fds_before) << "peeked fds are closed with their message";
  ASSERT_TRUE(r.Consume(p.b.get(), kHeaderSize + body.size()).ok());
  EXPECT_EQ(OpenFds(), fds_before) << "consuming installs no fd";
  Message m;
  absl::Span<const uint8_t> raw;
  std::string err;
  ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 2);
  EXPECT_TRUE(m.fds.empty());
  ASSERT_TRUE(r.Consume(p.b.get(), raw.size()).ok());
  EXPECT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kWouldBlock);
  p.a.reset();
  EXPECT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kClosed);
  EXPECT_EQ(err, "peer closed");
  EXPECT_EQ(r.Consume(p.b.get(), 1).code(), absl::StatusCode::kUnavailable);
}

// A MSG_PEEK on a unix stream socket also reports the fds of the skb after
// the peeked bytes: a message without fds (a posted doorbell write) queued
// before one with fds (DMA_MAP) must not be handed the next one's fds
// (tests/hostile: posted writes followed by DMA_MAPs were refused EINVAL).
TEST(PeekTest, TheNextMessagesFdsAreNotThisOnes) {
  Pair p;
  UniqueFd e1(::eventfd(0, EFD_NONBLOCK));
  int one_fd[1] = {e1.get()};
  std::vector<uint8_t> body(20, 3);
  ASSERT_TRUE(SendMessage(p.a.get(), H(1), body, {}).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(2), body, one_fd).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(3), {}, {}).ok());
  const size_t fds_before = OpenFds();
  MessageReader r(4096, 16);
  Message m;
  absl::Span<const uint8_t> raw;
  std::string err;
  ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 1);
  EXPECT_TRUE(m.fds.empty());
  EXPECT_FALSE(m.fds_truncated);
  ASSERT_TRUE(r.Consume(p.b.get(), raw.size()).ok());
  ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 2);
  EXPECT_EQ(m.fds.size(), 1u);
  ASSERT_TRUE(r.Consume(p.b.get(), raw.size()).ok());
  ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 3);
  EXPECT_TRUE(m.fds.empty());
  m = Message();
  EXPECT_EQ(OpenFds(), fds_before) << "peeked fds are closed with their message";
}

// A message cut after its fds (header + fd in one sendmsg, payload in the
// next): af_unix never peeks past an skb with fds, so the rest is peeked from
// behind it. Before, Peek returned kWouldBlock forever and the session hung
// (tests/hostile: split-message-with-fd).
TEST(PeekTest, MessageSplitAfterItsFds) {
  Pair p;
  UniqueFd e1(::eventfd(0, EFD_NONBLOCK));
  Header h = H(5);
  std::vector<uint8_t> body(32, 9);
  h.msg_size = static_cast<uint32_t>(kHeaderSize + body.size());
  std::vector<uint8_t> head(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + kHeaderSize);
  SendRawWithFds(p.a.get(), head, {e1.get()});
  SendRawWithFds(p.a.get(), body, {});
  ASSERT_TRUE(SendMessage(p.a.get(), H(6), {}, {}).ok());
  MessageReader r(4096, 16);
  for (int round = 0; round < 2; ++round) {  // the peek offset is off again: same message
    Message m;
    absl::Span<const uint8_t> raw;
    std::string err;
    ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
    EXPECT_EQ(m.hdr.msg_id, 5);
    EXPECT_EQ(m.payload, body);
    EXPECT_EQ(m.fds.size(), 1u);
  }
  ASSERT_TRUE(r.Consume(p.b.get(), kHeaderSize + body.size()).ok());
  Message m;
  absl::Span<const uint8_t> raw;
  std::string err;
  ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 6);
}

// Half a message and the peer is gone: the rest never comes. A peek never
// reads the EOF, so Peek itself says so (before: kWouldBlock forever, the
// session kept a dead client and the device served no one else).
TEST(PeekTest, PeerClosedMidMessage) {
  for (size_t part : {size_t{8}, kHeaderSize + 4}) {
    Pair p;
    Header h = H(7);
    h.msg_size = static_cast<uint32_t>(kHeaderSize + 32);
    std::vector<uint8_t> bytes(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + kHeaderSize);
    bytes.resize(kHeaderSize + 32, 1);
    bytes.resize(part);
    SendRawWithFds(p.a.get(), bytes, {});
    MessageReader r(4096, 16);
    Message m;
    absl::Span<const uint8_t> raw;
    std::string err;
    EXPECT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kWouldBlock) << part;
    p.a.reset();
    EXPECT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kClosed) << part;
    EXPECT_EQ(err, "peer closed mid-message");
  }
}

TEST(PeekTest, TooManyFdsFlaggedAndClosed) {
  Pair p;
  std::vector<UniqueFd> efds;
  std::vector<int> raw_fds;
  for (int i = 0; i < 6; ++i) {
    efds.emplace_back(::eventfd(0, 0));
    raw_fds.push_back(efds.back().get());
  }
  ASSERT_TRUE(SendMessage(p.a.get(), H(1), {}, raw_fds).ok());
  const size_t fds_before = OpenFds();
  MessageReader r(4096, 4);
  {
    Message m;
    absl::Span<const uint8_t> raw;
    std::string err;
    ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
    EXPECT_LE(m.fds.size(), 4u);
    EXPECT_TRUE(m.fds_truncated);
  }
  EXPECT_EQ(OpenFds(), fds_before);
}

TEST(PeekTest, PartialMessageWouldBlockUntilAllOfItIsQueued) {
  Pair p;
  UniqueFd e1(::eventfd(0, 0));
  Header h = H(9);
  h.msg_size = kHeaderSize + 8;
  std::vector<uint8_t> hdr(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + kHeaderSize);
  MessageReader r(4096, 16);
  Message m;
  absl::Span<const uint8_t> raw;
  std::string err;
  SendRawWithFds(p.a.get(), std::vector<uint8_t>(hdr.begin(), hdr.begin() + 5), {});
  EXPECT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kWouldBlock);  // part of a header
  SendRawWithFds(p.a.get(), std::vector<uint8_t>(hdr.begin() + 5, hdr.end()), {});
  EXPECT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kWouldBlock);  // no payload yet
  EXPECT_EQ(Queued(p.b.get()), 16);
  SendRawWithFds(p.a.get(), std::vector<uint8_t>(8, 1), {e1.get()});
  ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kMessage) << err;
  EXPECT_EQ(m.hdr.msg_id, 9);
  EXPECT_EQ(m.payload, std::vector<uint8_t>(8, 1));
  EXPECT_EQ(m.fds.size(), 1u) << "fds riding on the body belong to the message";
  ASSERT_TRUE(r.Consume(p.b.get(), raw.size()).ok());
  EXPECT_EQ(Queued(p.b.get()), 0);
}

TEST(PeekTest, FramingErrorReportsTheHeader) {
  for (uint32_t bad : {0u, 15u, 4097u}) {
    Pair p;
    Header h = H(0x77);
    h.msg_size = bad;
    std::vector<uint8_t> bytes(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + kHeaderSize);
    SendRawWithFds(p.a.get(), bytes, {});
    MessageReader r(4096, 4);
    Message m;
    absl::Span<const uint8_t> raw;
    std::string err;
    ASSERT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kFramingError) << bad;
    EXPECT_EQ(m.hdr.msg_id, 0x77);
    EXPECT_EQ(m.hdr.msg_size, bad);
    EXPECT_NE(err.find("framing error"), std::string::npos) << err;
  }
}

TEST(PeekTest, PeekNeedsAnIdleReader) {
  Pair p;
  Header h = H(1);
  h.msg_size = kHeaderSize + 8;
  std::vector<uint8_t> hdr(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + kHeaderSize);
  SendRawWithFds(p.a.get(), hdr, {});
  MessageReader r(4096, 4);
  Message m;
  std::string err;
  ASSERT_EQ(r.Read(p.b.get(), &m, &err), MessageReader::Result::kWouldBlock);
  ASSERT_FALSE(r.idle());  // the header is buffered here, not at the socket head
  absl::Span<const uint8_t> raw;
  EXPECT_EQ(r.Peek(p.b.get(), &m, &raw, &err), MessageReader::Result::kClosed);
  bool fds = true;
  EXPECT_TRUE(r.PeekAhead(p.b.get(), 64, &fds).empty());
}

TEST(PeekTest, PeekAheadSeesARunAndFlagsFds) {
  Pair p;
  UniqueFd e1(::eventfd(0, 0));
  int one[1] = {e1.get()};
  std::vector<uint8_t> body(24, 5);
  const size_t size = kHeaderSize + body.size();
  ASSERT_TRUE(SendMessage(p.a.get(), H(1), body, {}).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(2), body, {}).ok());
  MessageReader r(4096, 16);
  bool fds = true;
  auto run = r.PeekAhead(p.b.get(), 8192, &fds);
  EXPECT_FALSE(fds);
  ASSERT_EQ(run.size(), 2 * size);
  Header h;
  std::memcpy(&h, run.data() + size, kHeaderSize);
  EXPECT_EQ(h.msg_id, 2);
  EXPECT_EQ(r.PeekAhead(p.b.get(), size + 3, &fds).size(), size + 3) << "at most `max` bytes";
  EXPECT_EQ(Queued(p.b.get()), static_cast<int>(2 * size)) << "nothing consumed";
  // An fd anywhere in the look-ahead is reported (and closed here).
  ASSERT_TRUE(SendMessage(p.a.get(), H(3), body, one).ok());
  ASSERT_TRUE(SendMessage(p.a.get(), H(4), body, {}).ok());
  const size_t fds_before = OpenFds();
  run = r.PeekAhead(p.b.get(), 8192, &fds);
  EXPECT_TRUE(fds);
  EXPECT_GE(run.size(), 3 * size);
  EXPECT_EQ(OpenFds(), fds_before);
  // Consuming a prefix leaves the rest.
  ASSERT_TRUE(r.Consume(p.b.get(), 3 * size).ok());
  run = r.PeekAhead(p.b.get(), 8192, &fds);
  EXPECT_FALSE(fds);
  ASSERT_EQ(run.size(), size);
  std::memcpy(&h, run.data(), kHeaderSize);
  EXPECT_EQ(h.msg_id, 4);
  ASSERT_TRUE(r.Consume(p.b.get(), size).ok());
  EXPECT_TRUE(r.PeekAhead(p.b.get(), 8192, &fds).empty()) << "nothing queued";
  EXPECT_TRUE(r.PeekAhead(p.b.get(), 0, &fds).empty());
}

}  // namespace
}  // namespace emud::vfio_user
