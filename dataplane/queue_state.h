// Hot per-queue state of a device's data path in a tmpfs file
// (state_store::DeviceShmDir(state_dir, NAME)/queues), so that a worker killed at any
// instant leaves its successor the exact ring positions (the idea of
// vhost-user's inflight region). No LMDB commit per packet: a plain store to
// shared memory, which a process crash cannot lose (the page cache keeps it).
//
// Protocol per queue:
//   TX: head = next descriptor to process. Per burst: frames go to the
//       backend; the burst's RS descriptors (index + original qw1) and the
//       head they belong to (rs_head) are recorded, then head is stored, then
//       DTYPE 0xF is written on the RS descriptors, then rs_count is cleared.
//       A kill before the head store re-sends the burst (bounded duplicates,
//       no completion was visible yet); a kill after it leaves completions
//       unwritten, which RecoverTx writes on the recorded descriptors that
//       still hold their recorded qw1 (ARCHITECTURE.md, "Data path").
//   RX: before writing descriptors [head, head + n) the engine stores
//       intent = head + n; after writing them it stores head = intent.
//       Recovery (RecoverRx) with head != intent inspects the DD bits of
//       [head, intent) in the ring and advances head past the written prefix,
//       so no posted buffer is written twice or skipped.
// Counters are cumulative and live here too (cheap, crash-safe).
#ifndef EMUD_DATAPLANE_QUEUE_STATE_H_
#define EMUD_DATAPLANE_QUEUE_STATE_H_

#include <atomic>
#include <cstring>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "base/mapped_file.h"
#include "worker_api/counters.h"

namespace emud::dataplane {

// Queue pairs a state file holds: at least 16 (the layout predecessors of
// up to 16 queues share, so their files stay valid), more for a device
// offering more (up to avf::kMaxQueuePairs = 64).
inline constexpr uint32_t kMinStateQueues = 16;
inline constexpr uint32_t kMaxQueues = 64;
constexpr uint32_t StateQueuesFor(uint32_t queue_pairs) {
  return queue_pairs < kMinStateQueues ? kMinStateQueues
         : queue_pairs > kMaxQueues    ? kMaxQueues
                                       : queue_pairs;
}
inline constexpr uint32_t kMaxPendingRs = 128;  // RS completions per TX burst

struct alignas(64) HotQueue {
  std::atomic<uint32_t> head;
  std::atomic<uint32_t> intent;  // RX only
  std::atomic<uint32_t> enabled;
  uint32_t ring_len;
  uint64_t ring_addr;
  // Cumulative counters (single writer: the worker).
#define EMUD_HOT_QUEUE_FIELD(name, help) std::atomic<uint64_t> name;
  EMUD_QUEUE_COUNTERS(EMUD_HOT_QUEUE_FIELD)
#undef EMUD_HOT_QUEUE_FIELD
  // TX: completions of the last burst not yet known to be written.
  std::atomic<uint32_t> rs_count;
  uint32_t rs_head;
  uint32_t rs_idx[kMaxPendingRs];
  uint64_t rs_qw1[kMaxPendingRs];
};

// Device-wide counters GET_STATS reports that no queue owns (single writer:
// the worker). They live in the file header's spare bytes, so files written
// before they existed read them as zero.
struct DataPathCounters {
#define EMUD_DATAPATH_FIELD(name, help) std::atomic<uint64_t> name;
  EMUD_DATAPATH_COUNTERS(EMUD_DATAPATH_FIELD)
#undef EMUD_DATAPATH_FIELD
};
static_assert(sizeof(DataPathCounters) <= 48,
              "DataPathCounters live in the queue-state file header's 48 spare bytes");

// File layout: a 64-byte Header, then HotQueue tx[n], then HotQueue rx[n]
// (n = num_queues, StateQueuesFor(the device's queue pairs)). With n = 16
// this is the layout of the 16-queue workers before it, byte for byte.
class QueueStateFile {
 public:
  // Opens or creates `path` for `queue_pairs` queue pairs. An existing file
  // with a matching header (same queue count) is kept as is (a successor
  // continues); otherwise it is initialised to zero.
  static absl::StatusOr<std::unique_ptr<QueueStateFile>> Open(const std::string& path,
                                                              uint32_t queue_pairs = 1);
  // Anonymous (not persisted) state, for tests and the benchmark's
  // "persistence off" switch.
  static std::unique_ptr<QueueStateFile> Anonymous(uint32_t queue_pairs = 1);

  // Queues held: q < num_queues() for tx() and rx().
  uint32_t num_queues() const { return n_; }
  HotQueue* tx(uint32_t q) { return &queues_[q]; }
  HotQueue* rx(uint32_t q) { return &queues_[n_ + q]; }
  DataPathCounters* device() { return &header_->device; }
  bool reused() const { return reused_; }
  static size_t FileSize(uint32_t n) { return 64 + 2 * size_t{n} * sizeof(HotQueue); }

 private:
  struct Header {
    uint64_t magic;
    uint32_t version;
    uint32_t num_queues;
    DataPathCounters device;  // bytes 16..47: header padding before
  };
  QueueStateFile() = default;
  void Bind(void* base, uint32_t n);
  static void CheckLayout() {
    static_assert(offsetof(Header, device) == 16 && sizeof(Header) <= 64,
                  "the queue state layout is shared with running predecessors");
    static_assert(sizeof(HotQueue) % 64 == 0);
  }
  MappedFile map_;                  // Open: the file
  std::unique_ptr<HotQueue[]> anon_;  // Anonymous: the heap (header in anon_[0])
  Header* header_ = nullptr;
  HotQueue* queues_ = nullptr;      // at byte 64
  uint32_t n_ = 0;
  bool reused_ = false;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_QUEUE_STATE_H_
