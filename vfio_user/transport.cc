#include "vfio_user/transport.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace emud::vfio_user {
namespace {

int PollFor(int fd, short events, absl::Time deadline) {
  for (;;) {
    int ms = -1;
    if (deadline != absl::InfiniteFuture()) {
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return 0;
      ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
    }
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

// recvmsg of up to `len` bytes, appending received fds. Returns bytes read,
// 0 on EOF, -1 with errno.
ssize_t RecvWithFds(int sock, uint8_t* buf, size_t len, size_t max_fds, Message* msg, int flags) {
  alignas(cmsghdr) char cbuf[CMSG_SPACE(kMaxRecvFds * sizeof(int))];
  iovec iov{buf, len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof(cbuf);
  ssize_t n;
  do {
    n = ::recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return n;
  if (mh.msg_flags & MSG_CTRUNC) msg->fds_truncated = true;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < nfd; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (msg->fds.size() < max_fds) {
        msg->fds.emplace_back(fd);
      } else {
        ::close(fd);
        msg->fds_truncated = true;
      }
    }
  }
  return n;
}

}  // namespace

absl::Status SendMessage(int sock, Header hdr, absl::Span<const uint8_t> payload,
                         absl::Span<const int> fds, absl::Duration timeout) {
  if (payload.size() > 0xffffffffu - kHeaderSize) return absl::InvalidArgumentError("message too big");
  if (fds.size() > kMaxRecvFds) return absl::InvalidArgumentError("too many fds");
  hdr.msg_size = static_cast<uint32_t>(kHeaderSize + payload.size());
  absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
  size_t total = kHeaderSize + payload.size();
  size_t sent = 0;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(kMaxRecvFds * sizeof(int))];
  while (sent < total) {
    iovec iov[2];
    int niov = 0;
    if (sent < kHeaderSize) {
      iov[niov++] = {reinterpret_cast<uint8_t*>(&hdr) + sent, kHeaderSize - sent};
      if (!payload.empty()) iov[niov++] = {const_cast<uint8_t*>(payload.data()), payload.size()};
    } else {
      size_t off = sent - kHeaderSize;
      iov[niov++] = {const_cast<uint8_t*>(payload.data()) + off, payload.size() - off};
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = niov;
    if (sent == 0 && !fds.empty()) {
      mh.msg_control = cbuf;
      mh.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
      std::memset(cbuf, 0, mh.msg_controllen);
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
      std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
    }
    ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        int r = PollFor(sock, POLLOUT, deadline);
        if (r == 0) return absl::DeadlineExceededError("send timed out");
        if (r < 0) return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
        continue;
      }
      return absl::UnavailableError(absl::StrCat("sendmsg: ", std::strerror(errno)));
    }
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

MessageReader::Result MessageReader::Read(int sock, Message* out, std::string* error) {
  for (;;) {
    uint8_t* buf;
    size_t want;
    if (got_ < kHeaderSize) {
      buf = hdr_bytes_ + got_;
      want = kHeaderSize - got_;
    } else {
      size_t body = cur_.hdr.msg_size - kHeaderSize;
      if (got_ - kHeaderSize == body) {
        *out = std::move(cur_);
        cur_ = Message();
        got_ = 0;
        return Result::kMessage;
      }
      buf = cur_.payload.data() + (got_ - kHeaderSize);
      want = body - (got_ - kHeaderSize);
    }
    ssize_t n = RecvWithFds(sock, buf, want, max_fds_, &cur_, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Result::kWouldBlock;
      *error = absl::StrCat("recvmsg: ", std::strerror(errno));
      return Result::kClosed;
    }
    if (n == 0) {
      *error = got_ ? "peer closed mid-message" : "peer closed";
      return Result::kClosed;
    }
    got_ += static_cast<size_t>(n);
    if (got_ == kHeaderSize) {
      std::memcpy(&cur_.hdr, hdr_bytes_, kHeaderSize);
      if (cur_.hdr.msg_size < kHeaderSize || cur_.hdr.msg_size > max_msg_size_) {
        *error = absl::StrCat("framing error: msg_size ", cur_.hdr.msg_size, " (limit ", max_msg_size_, ")");
        return Result::kFramingError;
      }
      cur_.payload.resize(cur_.hdr.msg_size - kHeaderSize);
    }
  }
}

absl::StatusOr<Message> ReceiveMessage(int sock, size_t max_msg_size, size_t max_fds,
                                       absl::Duration timeout) {
  absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
  MessageReader reader(max_msg_size, max_fds);
  Message msg;
  std::string err;
  for (;;) {
    switch (reader.Read(sock, &msg, &err)) {
      case MessageReader::Result::kMessage:
        return msg;
      case MessageReader::Result::kClosed:
        return absl::UnavailableError(err);
      case MessageReader::Result::kFramingError:
        return absl::DataLossError(err);
      case MessageReader::Result::kWouldBlock: {
        int r = PollFor(sock, POLLIN, deadline);
        if (r == 0) return absl::DeadlineExceededError("receive timed out");
        if (r < 0) return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
        break;
      }
    }
  }
}

}  // namespace emud::vfio_user
