#include "vfio_user/transport.h"

#include <errno.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/scm_rights.h"

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

// Writes `bytes` (no fds), polling up to `timeout` while the socket is full.
absl::Status SendRawBytes(int sock, absl::Span<const uint8_t> bytes, absl::Duration timeout) {
  absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = ::send(sock, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        int r = PollFor(sock, POLLOUT, deadline);
        if (r == 0) return absl::DeadlineExceededError("send timed out");
        if (r < 0) return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
        continue;
      }
      return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    }
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// recvmsg of up to `len` bytes (base/scm_rights.h), appending received fds
// to *fds (beyond max_fds closed) and setting *truncated for MSG_CTRUNC or
// closed ones. Returns bytes read, 0 on EOF, -1 with errno.
ssize_t RecvWithFds(int sock, uint8_t* buf, size_t len, size_t max_fds, std::vector<UniqueFd>* fds,
                    bool* truncated, int flags) {
  RecvResult r = emud::RecvWithFds(sock, absl::MakeSpan(buf, len), fds, max_fds, flags);
  if (!r.ok()) {
    errno = r.error;
    return -1;
  }
  if (r.fds_truncated) *truncated = true;
  return static_cast<ssize_t>(r.bytes);
}

// Lets the rest of a message arrive (a split sendmsg completes shortly)
// instead of spinning on a partial one.
void WaitBriefly(int sock) {
  pollfd pf{sock, POLLIN, 0};
  ::poll(&pf, 1, 1);
}

// The peer shut its side down: what is queued now is all that will ever
// come. A partial message at the head then never completes, and peeking it
// (which never consumes, so never reads the EOF) must not be retried forever.
bool PeerGone(int sock) {
  pollfd pf{sock, POLLRDHUP, 0};
  return ::poll(&pf, 1, 0) == 1 && (pf.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

// Bytes queued on a stream socket (all skbs), or -1.
int Queued(int sock) {
  int queued = 0;
  return ::ioctl(sock, FIONREAD, &queued) == 0 ? queued : -1;
}

}  // namespace

absl::Status PrepareMessage(Header hdr, absl::Span<const uint8_t> payload,
                            absl::Span<const int> fds, PreparedMessage* out) {
  if (payload.size() > 0xffffffffu - kHeaderSize) return absl::InvalidArgumentError("message too big");
  if (fds.size() > kMaxRecvFds) return absl::InvalidArgumentError("too many fds");
  out->hdr = hdr;
  out->hdr.msg_size = static_cast<uint32_t>(kHeaderSize + payload.size());
  out->payload = payload;
  out->fds = fds;
  int niov = 0;
  out->iov[niov++] = {&out->hdr, kHeaderSize};
  if (!payload.empty()) out->iov[niov++] = {const_cast<uint8_t*>(payload.data()), payload.size()};
  out->mh = msghdr{};
  out->mh.msg_iov = out->iov;
  out->mh.msg_iovlen = niov;
  return out->control.Attach(&out->mh, fds);
}

absl::Status SendPrepared(int sock, PreparedMessage& m, absl::Duration timeout, MarkBeforeSend mark) {
  const size_t total = m.hdr.msg_size;
  const uint64_t unmarked = mark.word != nullptr ? *mark.word : 0;
  std::optional<absl::Time> deadline;  // from the first wait (the common send has none)
  SendResult r;
  for (;;) {
    r = SendMsgMarked(sock, m.mh, MSG_DONTWAIT, mark);
    if (r.ok() || (r.error != EAGAIN && r.error != EWOULDBLOCK)) break;
    // The socket took nothing: not sent, so not marked while waiting.
    if (mark.word != nullptr) *mark.word = unmarked;
    if (!deadline) deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
    const int p = PollFor(sock, POLLOUT, *deadline);
    if (p == 0) return absl::DeadlineExceededError("send timed out");
    if (p < 0) return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
  }
  if (!r.ok()) return r.status("sendmsg");
  if (r.bytes == total) return absl::OkStatus();
  // Part went out (the fds with it): send the rest without them.
  size_t sent = r.bytes;
  std::vector<uint8_t> rest;
  rest.reserve(total - sent);
  const uint8_t* h = reinterpret_cast<const uint8_t*>(&m.hdr);
  for (size_t i = sent; i < kHeaderSize; ++i) rest.push_back(h[i]);
  size_t from = sent > kHeaderSize ? sent - kHeaderSize : 0;
  rest.insert(rest.end(), m.payload.begin() + from, m.payload.end());
  return SendRawBytes(sock, rest, timeout);
}

absl::Status SendMessage(int sock, Header hdr, absl::Span<const uint8_t> payload,
                         absl::Span<const int> fds, absl::Duration timeout) {
  if (payload.size() > 0xffffffffu - kHeaderSize) return absl::InvalidArgumentError("message too big");
  if (fds.size() > kMaxRecvFds) return absl::InvalidArgumentError("too many fds");
  hdr.msg_size = static_cast<uint32_t>(kHeaderSize + payload.size());
  absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
  size_t total = kHeaderSize + payload.size();
  size_t sent = 0;
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
    // The fds ride on the first sendmsg that takes any byte.
    const SendResult s = SendWithFds(sock, absl::MakeConstSpan(iov, niov),
                                     sent == 0 ? fds : absl::Span<const int>(), 0);
    if (!s.ok()) {
      if (s.error == EAGAIN || s.error == EWOULDBLOCK) {
        int r = PollFor(sock, POLLOUT, deadline);
        if (r == 0) return absl::DeadlineExceededError("send timed out");
        if (r < 0) return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
        continue;
      }
      return s.status("sendmsg");
    }
    sent += s.bytes;
  }
  return absl::OkStatus();
}

bool MessageReader::HasBufferedMessage() const {
  size_t avail = buf_end_ - buf_start_;
  if (avail < kHeaderSize) return false;
  uint32_t sz;
  std::memcpy(&sz, buf_.data() + buf_start_ + offsetof(Header, msg_size), 4);
  return sz < kHeaderSize || sz > max_msg_size_ || avail >= sz;
}

bool MessageReader::Extract(Message* out, std::string* error, bool* framing_error) {
  *framing_error = false;
  size_t avail = buf_end_ - buf_start_;
  if (avail < kHeaderSize) return false;
  Header h;
  std::memcpy(&h, buf_.data() + buf_start_, kHeaderSize);
  if (!Frameable(h.msg_size)) {
    *error = FramingError(h.msg_size);
    *framing_error = true;
    return false;
  }
  if (avail < h.msg_size) return false;
  Message m;
  m.hdr = h;
  m.payload.assign(buf_.begin() + buf_start_ + kHeaderSize, buf_.begin() + buf_start_ + h.msg_size);
  const uint64_t begin = stream_pos_, end = stream_pos_ + h.msg_size;
  size_t keep = 0;
  for (size_t gi = 0; gi < fd_groups_.size(); ++gi) {
    FdGroup& g = fd_groups_[gi];
    if (g.owner_pos < end) {
      // Groups before `begin` cannot exist (they were given to earlier messages).
      (void)begin;
      if (g.truncated) m.fds_truncated = true;
      for (auto& fd : g.fds) {
        if (m.fds.size() < max_fds_) {
          m.fds.push_back(std::move(fd));
        } else {
          m.fds_truncated = true;  // closed by going out of scope
        }
      }
    } else {
      if (keep != gi) fd_groups_[keep] = std::move(g);  // never self-move (it would empty g)
      ++keep;
    }
  }
  fd_groups_.resize(keep);
  buf_start_ += h.msg_size;
  stream_pos_ = end;
  if (buf_start_ == buf_end_) buf_start_ = buf_end_ = 0;
  *out = std::move(m);
  return true;
}

MessageReader::Result MessageReader::Read(int sock, Message* out, std::string* error) {
  for (;;) {
    bool framing = false;
    if (Extract(out, error, &framing)) return Result::kMessage;
    if (framing) return Result::kFramingError;
    if (drained_) {
      drained_ = false;
      return Result::kWouldBlock;
    }
    // Room for at least the rest of the current message, 64 KiB otherwise.
    size_t need = kHeaderSize;
    if (buf_end_ - buf_start_ >= kHeaderSize) {
      uint32_t sz;
      std::memcpy(&sz, buf_.data() + buf_start_ + offsetof(Header, msg_size), 4);
      need = sz;
    }
    if (buf_start_ > 0 && (buf_.size() - buf_start_ < std::max<size_t>(need, 65536))) {
      std::memmove(buf_.data(), buf_.data() + buf_start_, buf_end_ - buf_start_);
      buf_end_ -= buf_start_;
      buf_start_ = 0;
    }
    size_t want = std::max<size_t>(need, 65536);
    if (buf_.size() < want) buf_.resize(want);
    if (exact_ && idle()) {
      // Consume whole messages only: peek the header, then take the message
      // in one recvmsg once all of it is queued. A process killed between
      // two reads thus never leaves its successor mid-message. (Messages
      // above kExactAtomicMax may not fit the socket buffer at once; they
      // are read in parts as usual.)
      Header h;
      if (Result r = PeekHeader(sock, &h, error); r != Result::kMessage) return r;
      if (Frameable(h.msg_size) && h.msg_size <= kExactAtomicMax) {
        int queued = 0;
        if (::ioctl(sock, FIONREAD, &queued) == 0 && static_cast<uint32_t>(queued) < h.msg_size) {
          if (PeerGone(sock) && Queued(sock) < static_cast<int>(h.msg_size)) {
            *error = "peer closed mid-message";
            return Result::kClosed;
          }
          // The sender's single sendmsg is normally queued whole; a split
          // one completes shortly. Wait a little instead of spinning.
          WaitBriefly(sock);
          return Result::kWouldBlock;
        }
        need = h.msg_size;
        if (buf_.size() < need) buf_.resize(need);
      }
      // else: framing error (found by Extract after the read) or a large
      // message read in parts.
    }
    std::vector<UniqueFd> fds;
    bool truncated = false;
    uint8_t* dst = buf_.data() + buf_end_;
    size_t room = buf_.size() - buf_end_;
    if (exact_) room = std::min(room, need - (buf_end_ - buf_start_));
    ssize_t n = RecvWithFds(sock, dst, room, kMaxRecvFds, &fds, &truncated, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Result::kWouldBlock;
      *error = absl::StrCat("recvmsg: ", std::strerror(errno));
      return Result::kClosed;
    }
    if (n == 0) {
      *error = idle() ? "peer closed" : "peer closed mid-message";
      return Result::kClosed;
    }
    buf_end_ += static_cast<size_t>(n);
    if (!fds.empty() || truncated) {
      FdGroup g;
      g.owner_pos = stream_pos_ + (buf_end_ - buf_start_) - 1;
      g.fds = std::move(fds);
      g.truncated = truncated;
      fd_groups_.push_back(std::move(g));
    } else if (static_cast<size_t>(n) < room) {
      drained_ = true;  // nothing more queued right now
    }
  }
}

std::string MessageReader::FramingError(uint32_t msg_size) const {
  return absl::StrCat("framing error: msg_size ", msg_size, " (limit ", max_msg_size_, ")");
}

MessageReader::Result MessageReader::PeekHeader(int sock, Header* h, std::string* error) {
  ssize_t p = ::recv(sock, h, sizeof(*h), MSG_PEEK | MSG_DONTWAIT);
  if (p < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return Result::kWouldBlock;
    *error = absl::StrCat("recv: ", std::strerror(errno));
    return Result::kClosed;
  }
  if (p == 0) {
    *error = "peer closed";
    return Result::kClosed;
  }
  if (static_cast<size_t>(p) < sizeof(*h)) {
    if (PeerGone(sock) && Queued(sock) < static_cast<int>(sizeof(*h))) {
      *error = "peer closed mid-message";
      return Result::kClosed;
    }
    WaitBriefly(sock);
    return Result::kWouldBlock;
  }
  return Result::kMessage;
}

MessageReader::Result MessageReader::Peek(int sock, Message* out, absl::Span<const uint8_t>* raw,
                                          std::string* error) {
  if (!idle()) {
    *error = "peek behind buffered bytes";
    return Result::kClosed;
  }
  Header h;
  if (Result r = PeekHeader(sock, &h, error); r != Result::kMessage) return r;
  if (!Frameable(h.msg_size)) {
    out->hdr = h;
    *error = FramingError(h.msg_size);
    return Result::kFramingError;
  }
  // One byte more than the message: a MSG_PEEK on a stream socket reports
  // the fds of the skb *after* the peeked bytes too (af_unix's peek loop
  // moves on to the next skb once the size is used up, copies nothing from
  // it and still takes its fds), so a message without fds followed by one
  // with fds (a posted doorbell write, then a DMA_MAP) would be handed the
  // next message's fds and refused. The peek stops right after an skb that
  // carries fds: fds whose skb ends inside this message come back with at
  // most msg_size bytes; with msg_size + 1 bytes they ride on bytes beyond
  // the message and are not its own (dropped here; the next Peek takes
  // them again).
  if (buf_.size() < size_t{h.msg_size} + 1) buf_.resize(size_t{h.msg_size} + 1);
  Message m;
  ssize_t got = RecvWithFds(sock, buf_.data(), size_t{h.msg_size} + 1, max_fds_, &m.fds,
                            &m.fds_truncated, MSG_PEEK | MSG_DONTWAIT);
  if (got > static_cast<ssize_t>(h.msg_size)) {
    m.fds.clear();
    m.fds_truncated = false;
  }
  if (got < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Result::kWouldBlock;
    *error = absl::StrCat("recvmsg: ", std::strerror(errno));
    return Result::kClosed;
  }
  if (got == 0) {
    *error = "peer closed";
    return Result::kClosed;
  }
  if (static_cast<size_t>(got) < h.msg_size && (!m.fds.empty() || m.fds_truncated) &&
      Queued(sock) >= static_cast<int>(h.msg_size)) {
    // All of it is queued, but the peek stopped after the skb carrying the
    // fds (af_unix never peeks past one): the sender split the message
    // after its fds (a stream may be cut anywhere; a partial sendmsg does
    // it). The rest is peeked from behind that skb through the socket's
    // peek offset (off again afterwards: the session sets its own only
    // around deferred runs, never while it peeks a message).
    int off = static_cast<int>(got);
    if (::setsockopt(sock, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) != 0) {
      *error = absl::StrCat("message split after its fds; SO_PEEK_OFF: ", std::strerror(errno));
      return Result::kClosed;
    }
    while (static_cast<size_t>(got) < h.msg_size) {
      // Each peek moves the offset on; fds of later parts are not kept.
      ssize_t n = ::recv(sock, buf_.data() + got, h.msg_size - static_cast<size_t>(got),
                         MSG_PEEK | MSG_DONTWAIT);
      if (n <= 0) break;
      got += n;
    }
    int none = -1;
    (void)::setsockopt(sock, SOL_SOCKET, SO_PEEK_OFF, &none, sizeof(none));
  }
  if (static_cast<size_t>(got) < h.msg_size) {
    if (PeerGone(sock) && Queued(sock) < static_cast<int>(h.msg_size)) {
      *error = "peer closed mid-message";
      return Result::kClosed;  // the peeked fds close with `m`
    }
    WaitBriefly(sock);
    return Result::kWouldBlock;  // the peeked fds close with `m`
  }
  std::memcpy(&m.hdr, buf_.data(), kHeaderSize);
  m.payload.assign(buf_.data() + kHeaderSize, buf_.data() + h.msg_size);
  *out = std::move(m);
  *raw = absl::MakeConstSpan(buf_.data(), h.msg_size);
  return Result::kMessage;
}

absl::Span<const uint8_t> MessageReader::PeekAhead(int sock, size_t max, bool* carries_fds,
                                                   bool* would_block) {
  *carries_fds = false;
  if (would_block != nullptr) *would_block = false;
  if (!idle() || max == 0) return {};
  if (buf_.size() < max) buf_.resize(max);
  std::vector<UniqueFd> fds;  // whatever rides on the peeked bytes, closed on return
  bool truncated = false;
  ssize_t n = RecvWithFds(sock, buf_.data(), max, kMaxRecvFds, &fds, &truncated, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && would_block != nullptr) {
    *would_block = errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }
  if (n <= 0) return {};
  *carries_fds = !fds.empty() || truncated;
  return absl::MakeConstSpan(buf_.data(), static_cast<size_t>(n));
}

absl::Status MessageReader::Consume(int sock, size_t n) {
  if (buf_.size() < n) buf_.resize(n);
  size_t consumed = 0;
  while (consumed < n) {
    // No control buffer: the kernel drops the fds of what is read here.
    ssize_t c = ::recv(sock, buf_.data(), n - consumed, MSG_DONTWAIT);
    if (c < 0 && errno == EINTR) continue;
    if (c < 0) return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    if (c == 0) return absl::UnavailableError("peer closed");
    consumed += static_cast<size_t>(c);
  }
  return absl::OkStatus();
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
