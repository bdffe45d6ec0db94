// The crash-consistent session's request journal: a two-page file on tmpfs
// (SessionOptions::journal_path), mapped shared and written with plain stores
// (ARCHITECTURE.md, "Control path" and "Doorbells: self-durable writes").
//
//   page 0, word 0  the reply mark: "replying N", the seq of the last request
//                   whose reply is about to be sent
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

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mapped_file.h"

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

  // "Replying `seq`": the last store before the reply's sendmsg.
  void MarkReplying(uint64_t seq) { __atomic_store_n(reply_mark(), seq, __ATOMIC_SEQ_CST); }
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

 private:
  explicit RequestJournal(MappedFile pages) : pages_(std::move(pages)) {}
  uint64_t* reply_mark() const { return reinterpret_cast<uint64_t*>(pages_.data()); }
  volatile uint64_t* run_progress() const {
    return reinterpret_cast<volatile uint64_t*>(pages_.data() + kPage);
  }

  MappedFile pages_;  // both pages, MAP_SHARED, allocated
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_JOURNAL_H_
