#include "base/scm_rights.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace emud {
namespace {
constexpr size_t kMaxIov = 8;
}  // namespace

absl::Status FdControl::Attach(msghdr* mh, absl::Span<const int> fds) {
  if (fds.size() > kMaxFdsPerMessage) {
    return absl::InvalidArgumentError(
        absl::StrCat("too many fds for one message (", fds.size(), " > ", kMaxFdsPerMessage, ")"));
  }
  if (fds.empty()) {
    mh->msg_control = nullptr;
    mh->msg_controllen = 0;
    return absl::OkStatus();
  }
  const size_t len = fds.size() * sizeof(int);
  mh->msg_control = buf_;
  mh->msg_controllen = CMSG_SPACE(len);
  std::memset(buf_, 0, mh->msg_controllen);
  cmsghdr* c = CMSG_FIRSTHDR(mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(len);
  std::memcpy(CMSG_DATA(c), fds.data(), len);
  return absl::OkStatus();
}

absl::Status SendResult::status(absl::string_view what) const {
  if (error == 0) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(error)));
}

absl::Status RecvResult::status(absl::string_view what) const {
  if (error == 0) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(error)));
}

SendResult SendMsg(int sock, const msghdr& mh, int flags) {
  SendResult r;
  ssize_t n;
  do {
    n = ::sendmsg(sock, &mh, flags | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    r.error = errno;
  } else {
    r.bytes = static_cast<size_t>(n);
  }
  return r;
}

SendResult SendMsgMarked(int sock, const msghdr& mh, int flags, MarkBeforeSend mark) {
  if (mark.word == nullptr) return SendMsg(sock, mh, flags);
  // Under ThreadSanitizer the send must go through its sendmsg interceptor,
  // which is how it learns that the socket orders this thread's writes
  // before the peer's reads (tests run both ends in one process); a TSan
  // build takes the plain store and SendMsg.
#if defined(__x86_64__) && defined(__linux__) && !defined(__SANITIZE_THREAD__)
  // The kernel's syscall ABI: number and return in rax, arguments in rdi,
  // rsi, rdx; rcx and r11 are clobbered. "memory": the kernel reads the
  // message, and the store must not move past the syscall.
  long ret = SYS_sendmsg;
  asm volatile(
      "movq %[value], (%[word])\n\t"
      "syscall"
      : "+a"(ret)
      : [word] "r"(mark.word), [value] "r"(mark.value), "D"(static_cast<long>(sock)), "S"(&mh),
        "d"(static_cast<long>(flags | MSG_NOSIGNAL))
      : "rcx", "r11", "memory");
  if (ret == -EINTR) return SendMsg(sock, mh, flags);  // nothing went out: the mark stands
  SendResult r;
  if (ret < 0) {
    r.error = static_cast<int>(-ret);
  } else {
    r.bytes = static_cast<size_t>(ret);
  }
  return r;
#else
  *mark.word = mark.value;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  return SendMsg(sock, mh, flags);
#endif
}

SendResult SendWithFds(int sock, absl::Span<const iovec> iov, absl::Span<const int> fds,
                       int flags) {
  if (iov.size() > kMaxIov) return SendResult{0, EINVAL};
  iovec v[kMaxIov];
  for (size_t i = 0; i < iov.size(); ++i) v[i] = iov[i];
  msghdr mh{};
  mh.msg_iov = v;
  mh.msg_iovlen = iov.size();
  FdControl control;
  if (!control.Attach(&mh, fds).ok()) return SendResult{0, EINVAL};
  return SendMsg(sock, mh, flags);
}

SendResult SendWithFds(int sock, absl::Span<const uint8_t> bytes, absl::Span<const int> fds,
                       int flags) {
  const iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  return SendWithFds(sock, absl::MakeConstSpan(&iov, 1), fds, flags);
}

RecvResult RecvWithFds(int sock, absl::Span<uint8_t> buf, std::vector<UniqueFd>* fds,
                       size_t max_fds, int flags) {
  alignas(cmsghdr) char cbuf[CMSG_SPACE(kMaxFdsPerMessage * sizeof(int))];
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof(cbuf);
  RecvResult r;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    r.error = errno;
    return r;
  }
  r.bytes = static_cast<size_t>(n);
  r.data_truncated = (mh.msg_flags & MSG_TRUNC) != 0;
  r.fds_truncated = (mh.msg_flags & MSG_CTRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < nfd; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (fds->size() < max_fds) {
        fds->emplace_back(fd);
      } else {
        ::close(fd);
        r.fds_truncated = true;
      }
    }
  }
  return r;
}

}  // namespace emud
