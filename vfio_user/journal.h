// The crash-consistent session's request journal: a two-page file on tmpfs
// (SessionOptions::journal_path), mapped shared and written with plain stores
// (ARCHITECTURE.md, "Control path" and "Doorbells: self-durable writes").
//
//   page 0, word 0  the reply mark: "replying N", the seq of the last request
//                   whose reply is about to be sent
//   page 0, byte 64 the uncommitted request: a request answered without a
//                   commit (a read without side effects), its bytes and
//                   whether its reply is about to be sent (RecordPure)
//   page 1, word 0  run progress: how much of a run of self-durable posted
//                   writes at the socket head is applied (RunProgress)
//
// Stores, not pwrite: a SIGKILL pending while a process is in a syscall is
// delivered at that syscall's exit, so a pwrite mark made "mark done, reply not
// sent" the likely outcome of a kill landing during the mark (tests/chaos saw
// lost replies). Only user-mode instructions now separate the mark from
// sendmsg. A killed process cannot tear an aligned 8-byte store, and tmpfs
// keeps what it stored for the successor that opens the same file.
#ifndef EMUD_VFIO_USER_JOURNAL_H_
#define EMUD_VFIO_USER_JOURNAL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mapped_file.h"
#include "base/scm_rights.h"

namespace emud::vfio_user {

// FNV-1a 64 of `bytes`, continuing from `h` (the digest of a request, and of
// a run's prefix, that a successor compares with the socket head).
inline uint64_t Fnv1a(absl::Span<const uint8_t> bytes, uint64_t h = 0xcbf29ce484222325ull) {
  for (uint8_t b : bytes) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
}

class RequestJournal {
 public:
  static constexpr size_t kPage = 4096;

  // Opens (creating, mode 0600) `path`, grows it to two pages if shorter and
  // maps both. Marks already there are kept: they are the predecessor's.
  static absl::StatusOr<RequestJournal> Open(const std::string& path);
  RequestJournal(RequestJournal&&) noexcept = default;
  RequestJournal& operator=(RequestJournal&&) noexcept = default;

  // "Replying `seq`": the last store before the reply's sendmsg. A reply
  // is marked by SendPrepared(..., ReplyingMark(seq)), which makes the store
  // and the sendmsg adjacent instructions; MarkReplying is for what sends
  // nothing (a posted request, a settled one that needs no reply).
  void MarkReplying(uint64_t seq) { __atomic_store_n(reply_mark(), seq, __ATOMIC_SEQ_CST); }
  MarkBeforeSend ReplyingMark(uint64_t seq) const { return {reply_mark(), seq}; }
  uint64_t replying() const { return __atomic_load_n(reply_mark(), __ATOMIC_SEQ_CST); }

  // The run-progress word for the first `bytes` bytes of a run, given their
  // FNV-1a digest: digest (low 32 bits, shifted up) | length (low 32 bits);
  // 0 = no run in progress.
  static uint64_t RunProgress(uint64_t digest, size_t bytes) {
    return (digest << 32) | static_cast<uint32_t>(bytes);
  }
  // The length a run-progress word names.
  static uint32_t RunBytes(uint64_t progress) { return static_cast<uint32_t>(progress); }
  void RecordRun(uint64_t digest, size_t bytes) { *run_progress() = RunProgress(digest, bytes); }
  void ClearRun() { *run_progress() = 0; }
  uint64_t run() const { return *run_progress(); }

  // The uncommitted request (ARCHITECTURE.md, "Reads without side effects"):
  // a request applied without a commit because it changes no state. Its
  // bytes are recorded before it is consumed, so a successor that no longer
  // finds it at the socket head answers it again unless the reply mark says
  // its reply went out. Stores only: the tag is cleared first and set last,
  // so a record is either whole or absent.
  static constexpr size_t kPureMax = 1024;
  void RecordPure(absl::Span<const uint8_t> request) {
    volatile uint64_t* w = pure_words();
    w[0] = 0;
    std::atomic_signal_fence(std::memory_order_seq_cst);  // the bytes are not volatile
    std::memcpy(pages_.data() + kPureBytes, request.data(), request.size());
    std::atomic_signal_fence(std::memory_order_seq_cst);
    w[1] = 0;
    w[0] = RunProgress(Fnv1a(request), request.size());
  }
  // The last store before the uncommitted request's reply is sent (with
  // SendPrepared, as ReplyingMark).
  MarkBeforeSend PureReplyingMark() const { return {pure_words() + 1, 1}; }
  void ClearPure() { pure_words()[0] = 0; }
  // The recorded uncommitted request (empty: none), and whether its reply
  // was about to be sent.
  absl::Span<const uint8_t> pure(bool* replying) const {
    const uint64_t tag = pure_words()[0];
    const uint32_t n = RunBytes(tag);
    *replying = pure_words()[1] != 0;
    if (tag == 0 || n == 0 || n > kPureMax) return {};
    absl::Span<const uint8_t> bytes(pages_.data() + kPureBytes, n);
    if (RunProgress(Fnv1a(bytes), n) != tag) return {};
    return bytes;
  }

 private:
  explicit RequestJournal(MappedFile pages) : pages_(std::move(pages)) {}
  volatile uint64_t* reply_mark() const { return reinterpret_cast<volatile uint64_t*>(pages_.data()); }
  static constexpr size_t kPureWords = 64, kPureBytes = 128;
  volatile uint64_t* pure_words() const {
    return reinterpret_cast<volatile uint64_t*>(pages_.data() + kPureWords);
  }
  volatile uint64_t* run_progress() const {
    return reinterpret_cast<volatile uint64_t*>(pages_.data() + kPage);
  }

  MappedFile pages_;  // both pages, MAP_SHARED, allocated
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_JOURNAL_H_
