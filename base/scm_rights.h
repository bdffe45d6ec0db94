// Bytes plus file descriptors over an AF_UNIX socket (SCM_RIGHTS): the one
// place that lays out and parses the control messages.
//
// Thin wrappers of one sendmsg/recvmsg each: EINTR is retried, every other
// failure comes back as the call's errno in the result, because callers on
// non-blocking sockets decide on it (EAGAIN: wait for readiness; EPIPE: the
// peer is gone). Received descriptors are always close-on-exec
// (MSG_CMSG_CLOEXEC) and owned by UniqueFd from the moment they arrive, so
// none leaks whatever the caller decides; truncation by the kernel or by
// the caller's limit is reported, never silent.
#ifndef EMUD_BASE_SCM_RIGHTS_H_
#define EMUD_BASE_SCM_RIGHTS_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"

namespace emud {

// Most descriptors one message carries (the kernel's SCM_MAX_FD).
inline constexpr size_t kMaxFdsPerMessage = 253;

// Control-message space for up to kMaxFdsPerMessage descriptors. For a
// message laid out ahead of its send (one syscall, nothing computed in
// between); SendWithFds uses one internally.
class FdControl {
 public:
  // Makes `mh` carry `fds` as one SCM_RIGHTS control message held in this
  // buffer (`fds` empty: no control message at all). `mh` then points into
  // this object: keep it alive and in place until the message is sent.
  // INVALID_ARGUMENT (and `mh` untouched) for more than kMaxFdsPerMessage.
  absl::Status Attach(msghdr* mh, absl::Span<const int> fds);

 private:
  alignas(cmsghdr) char buf_[CMSG_SPACE(kMaxFdsPerMessage * sizeof(int))];
};

// The outcome of one sendmsg.
struct SendResult {
  size_t bytes = 0;  // bytes the socket took (a stream socket may take part)
  int error = 0;     // errno of a failed sendmsg (never EINTR); 0 on success
  bool ok() const { return error == 0; }
  // UNAVAILABLE "`what`: strerror" for a failure, OK otherwise.
  absl::Status status(absl::string_view what) const;
};

// sendmsg(sock, mh, flags | MSG_NOSIGNAL), retried on EINTR. The
// descriptors (if any) travel with the first byte the socket takes.
SendResult SendMsg(int sock, const msghdr& mh, int flags = 0);

// A word to store right before a sendmsg (a crash-consistent server's "reply
// sent" mark; ARCHITECTURE.md, "Control path").
struct MarkBeforeSend {
  volatile uint64_t* word = nullptr;  // nullptr: no mark
  uint64_t value = 0;
};

// As SendMsg(sock, mh, flags), with `mark.value` stored into `*mark.word`
// first, the store and the sendmsg being adjacent instructions (x86-64: one
// asm block, `mov` then `syscall`; no libc wrapper or sanitizer interceptor
// between them). A SIGKILL is acted on only at a return to user mode, so a
// process killed after the store and before the syscall must have been
// interrupted at exactly that instruction boundary. Elsewhere, and under
// ThreadSanitizer (which must see the send): a plain store, then SendMsg. The mark is stored once even if EINTR makes the sendmsg
// repeat; the caller restores it if nothing was sent (EAGAIN).
SendResult SendMsgMarked(int sock, const msghdr& mh, int flags, MarkBeforeSend mark);

// One sendmsg of `iov` (at most 8 entries) with `fds` attached; otherwise as
// SendMsg. More than kMaxFdsPerMessage fds, or more than 8 iovecs: EINVAL,
// nothing sent.
SendResult SendWithFds(int sock, absl::Span<const iovec> iov, absl::Span<const int> fds,
                       int flags = 0);
SendResult SendWithFds(int sock, absl::Span<const uint8_t> bytes, absl::Span<const int> fds,
                       int flags = 0);

// The outcome of one recvmsg.
struct RecvResult {
  size_t bytes = 0;  // bytes read; 0 with error 0 is end of stream (or an empty datagram)
  int error = 0;     // errno of a failed recvmsg (never EINTR); 0 on success
  // MSG_TRUNC: a datagram/seqpacket record was longer than the buffer (the
  // rest is discarded by the kernel).
  bool data_truncated = false;
  // MSG_CTRUNC (the kernel dropped descriptors), or more than the caller's
  // `max_fds` arrived (those beyond it were closed here).
  bool fds_truncated = false;
  bool ok() const { return error == 0; }
  // UNAVAILABLE "`what`: strerror" for a failure, OK otherwise.
  absl::Status status(absl::string_view what) const;
};

// One recvmsg(sock, buf, flags | MSG_CMSG_CLOEXEC), retried on EINTR.
// Received descriptors are appended to `*fds` (owned, close-on-exec) until
// `*fds` holds `max_fds`; further ones are closed and flagged. Control
// space is always room for kMaxFdsPerMessage, so MSG_CTRUNC only means the
// kernel itself dropped some (e.g. RLIMIT_NOFILE).
RecvResult RecvWithFds(int sock, absl::Span<uint8_t> buf, std::vector<UniqueFd>* fds,
                       size_t max_fds = kMaxFdsPerMessage, int flags = 0);

}  // namespace emud

#endif  // EMUD_BASE_SCM_RIGHTS_H_
