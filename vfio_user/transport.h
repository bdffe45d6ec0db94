// Message framing over a connected AF_UNIX stream socket, with SCM_RIGHTS.
//
// A vfio-user message is a 16-byte header followed by msg_size - 16 payload
// bytes; file descriptors ride on the sendmsg() that carries the message's
// first byte. Receiving reads the header and the payload with exact-length
// recvmsg() calls so fds are never attributed to the wrong message.
#ifndef EMUD_VFIO_USER_TRANSPORT_H_
#define EMUD_VFIO_USER_TRANSPORT_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/scm_rights.h"
#include "base/unique_fd.h"
#include "vfio_user/protocol.h"

namespace emud::vfio_user {

// Most fds a single recvmsg() accepts (the kernel's SCM_MAX_FD); fds beyond a
// caller's limit are closed and the message flagged.
inline constexpr size_t kMaxRecvFds = kMaxFdsPerMessage;

struct Message {
  Header hdr;
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;
  bool fds_truncated = false;  // MSG_CTRUNC or more than the caller's limit
};

// Sends one message (header.msg_size is set to 16 + payload.size()). Blocks
// (polling up to `timeout` when the socket is non-blocking) until everything
// is written. UNAVAILABLE if the peer is gone, DEADLINE_EXCEEDED on timeout.
absl::Status SendMessage(int sock, Header hdr, absl::Span<const uint8_t> payload,
                         absl::Span<const int> fds, absl::Duration timeout = absl::Seconds(5));

// A message laid out for sendmsg ahead of time (header, iovecs, SCM_RIGHTS),
// so that sending it is a single syscall with nothing computed in between:
// the crash-consistent session marks "replied" in its journal right before
// it, and a SIGKILL landing between the mark and the send loses the reply.
// Not movable once prepared (the msghdr points into it).
struct PreparedMessage {
  PreparedMessage() = default;
  PreparedMessage(const PreparedMessage&) = delete;
  PreparedMessage& operator=(const PreparedMessage&) = delete;
  Header hdr;
  absl::Span<const uint8_t> payload;  // borrowed: must outlive the send
  absl::Span<const int> fds;          // borrowed
  iovec iov[2];
  msghdr mh;
  FdControl control;  // the SCM_RIGHTS message mh points at
};
// Fills `out` (msg_size set). INVALID_ARGUMENT for a too big message or too
// many fds.
absl::Status PrepareMessage(Header hdr, absl::Span<const uint8_t> payload,
                            absl::Span<const int> fds, PreparedMessage* out);
// Sends a prepared message: one sendmsg, then (if the socket took only part
// of it) the rest as SendMessage does. With a `mark`, the mark is stored
// right before each sendmsg that may take the first byte (SendMsgMarked:
// the store and the syscall are adjacent instructions) and its previous
// value put back whenever such a sendmsg took nothing (a full socket: the
// wait for room is not "sending").
absl::Status SendPrepared(int sock, PreparedMessage& m, absl::Duration timeout = absl::Seconds(5),
                          MarkBeforeSend mark = {});

// Incremental, buffered reader for a non-blocking socket: feed it readiness,
// get whole messages. It reads as much as is available in one recvmsg (many
// pipelined messages per syscall) and attributes fds by a kernel rule: an
// AF_UNIX stream recvmsg never continues past the skb that carried fds, so
// the fds of one recvmsg belong to the message containing its last byte.
// A header whose msg_size is < 16 or > max_msg_size is a framing error: the
// stream cannot be resynchronised and must be closed.
class MessageReader {
 public:
  enum class Result { kMessage, kWouldBlock, kClosed, kFramingError };
  MessageReader(size_t max_msg_size, size_t max_fds) : max_msg_size_(max_msg_size), max_fds_(max_fds) {}

  // Returns the next message if one is buffered or can be read without
  // blocking. kWouldBlock may be returned without a syscall when the last
  // read drained the socket (the caller's poller reports new data).
  // kFramingError/kClosed put a description in *error.
  Result Read(int sock, Message* out, std::string* error);
  // True when no byte of an unfinished message is buffered.
  bool idle() const { return buf_end_ == buf_start_; }
  // After kFramingError: the offending header (still at the buffer head), so
  // the caller can answer it before closing. False if none is buffered.
  bool BufferedHeader(Header* out) const {
    if (buf_end_ - buf_start_ < kHeaderSize) return false;
    std::memcpy(out, buf_.data() + buf_start_, kHeaderSize);
    return true;
  }
  // True when Read() would return a message (or a framing error) without
  // reading the socket: such bytes are invisible to epoll, so the caller must
  // come back for them.
  bool HasBufferedMessage() const;
  void set_max_msg_size(size_t n) { max_msg_size_ = n; }
  // Exact mode: never read past the current message, and take a message
  // (up to 64 KiB) from the socket in one recvmsg once it is all queued, so a
  // process that dies holds at most one unprocessed message and never leaves
  // the stream mid-message. Used when the session persists its state.
  void set_exact_reads(bool exact) { exact_ = exact; }

  // Peek mode (the crash-consistent session): a message is read without
  // being consumed, applied, and consumed only once its effect is durable, so
  // a process killed in between leaves it at the socket head for its
  // successor. These work on the socket directly and need idle() (nothing
  // buffered here, so the socket head is the stream head); they share the
  // reader's buffer, so a returned span is valid until the next call.
  //
  // Peeks the whole message at the socket head with its fds (as Read
  // attributes them: over max_fds closed and flagged). kMessage: *out
  // decoded and *raw its bytes, header included. kWouldBlock: nothing queued,
  // or not all of the message yet (after a 1 ms wait for the rest of a split
  // sendmsg). kFramingError: out->hdr is the offending header. kClosed and
  // kFramingError put a description in *error.
  Result Peek(int sock, Message* out, absl::Span<const uint8_t>* raw, std::string* error);
  // Look-ahead: peeks up to `max` bytes queued at the socket head (a run of
  // messages, the last maybe cut short). Empty on EOF, error or nothing
  // queued (the next Peek tells which). *carries_fds: some of those bytes
  // carry fds (closed here, the bytes are returned all the same).
  // *would_block (if given): empty because nothing (more) is queued now,
  // rather than EOF or an error.
  absl::Span<const uint8_t> PeekAhead(int sock, size_t max, bool* carries_fds,
                                      bool* would_block = nullptr);
  // Takes `n` peeked bytes off the socket in one recv (if the socket hands
  // them over at once: a killed process then never leaves its successor
  // mid-message); the fds they carry are dropped. UNAVAILABLE on EOF or error.
  absl::Status Consume(int sock, size_t n);

 private:
  struct FdGroup {
    uint64_t owner_pos;  // stream offset of the last byte of the read that brought them
    std::vector<UniqueFd> fds;
    bool truncated = false;
  };
  // Extracts a complete message at the buffer head, if any.
  bool Extract(Message* out, std::string* error, bool* framing_error);
  // Peeks the header at the socket head (no control buffer: installs no fd).
  // kWouldBlock also for a partial header (after a 1 ms wait).
  Result PeekHeader(int sock, Header* h, std::string* error);
  bool Frameable(uint32_t msg_size) const { return msg_size >= kHeaderSize && msg_size <= max_msg_size_; }
  std::string FramingError(uint32_t msg_size) const;

  size_t max_msg_size_;
  size_t max_fds_;
  std::vector<uint8_t> buf_;
  size_t buf_start_ = 0, buf_end_ = 0;
  uint64_t stream_pos_ = 0;  // stream offset of buf_[buf_start_]
  std::vector<FdGroup> fd_groups_;
  bool drained_ = false;     // the last recvmsg was short and carried no fds
  bool exact_ = false;
  static constexpr uint32_t kExactAtomicMax = 64 * 1024;
};

// Blocking receive of one whole message (for clients). UNAVAILABLE on EOF,
// DATA_LOSS on a framing error, DEADLINE_EXCEEDED after `timeout`.
absl::StatusOr<Message> ReceiveMessage(int sock, size_t max_msg_size, size_t max_fds,
                                       absl::Duration timeout = absl::InfiniteDuration());

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_TRANSPORT_H_
