// PoisonGuard: notices an input that deterministically kills the process
// handling it, so that successors stop applying it (quarantine) instead of
// dying on it forever (ARCHITECTURE.md, "Poison-input quarantine").
//
// A handler brackets the work on one input with Enter(level, key) and
// Leave(level). The guard keeps, per level, the key being handled and an
// "active" flag in a small shared mapping of a tmpfs file, written with plain
// stores (a process kill cannot lose a store already made). When a successor
// opens the same file, every level still active was being handled when its
// predecessor died: that key's death count goes up by one, unless a deeper
// level was active too (then the deeper one gets the blame: a vfio-user
// REGION_WRITE that ran an admin-queue message that died is the message's
// fault, not the write's). Enter returns the deaths recorded for its key;
// the caller quarantines the input when that reaches kQuarantineAfter.
//
// A death needs the kill to land while the input is being handled, so an
// external SIGKILL only counts if it hits that window: kQuarantineAfter
// consecutive workers dying inside the same input's handling is, in practice,
// only ever the input's doing.
//
// Not thread-safe: one thread (the worker's loop) per guard.
#ifndef EMUD_BASE_POISON_GUARD_H_
#define EMUD_BASE_POISON_GUARD_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "base/mapped_file.h"

namespace emud {

class PoisonGuard {
 public:
  enum Level : uint32_t {
    kVfioRequest = 0,  // a vfio-user request being applied
    kVirtchnl = 1,     // an admin-queue (virtchnl) message being handled
    kTxQueue = 2,      // a TX burst from one ring position
    kLevels = 3,
  };
  // Successive deaths on one input before it is quarantined.
  static constexpr uint32_t kQuarantineAfter = 3;

  // Maps (creating, zero-filled, space allocated up front) `path`, then
  // charges every level its dead predecessor left active.
  static absl::StatusOr<std::unique_ptr<PoisonGuard>> Open(const std::string& path);
  // Process-private memory (tests; workers without persistence).
  static std::unique_ptr<PoisonGuard> InMemory();
  PoisonGuard(const PoisonGuard&) = delete;
  PoisonGuard& operator=(const PoisonGuard&) = delete;

  // Marks `key` as being handled at `level` and returns how many processes
  // died handling this same key there (0 for a key not seen dying).
  uint32_t Enter(Level level, uint64_t key);
  // `level`'s input was handled (or quarantined): forget its deaths.
  void Leave(Level level);
  // Deaths charged at Open, per level (for logs and tests).
  uint32_t DeathsAtOpen(Level level) const { return deaths_at_open_[level]; }

 private:
  struct Slot {
    uint64_t key;
    uint32_t deaths;
    uint32_t active;  // 1 while handling `key`
  };
  PoisonGuard(MappedFile map, std::unique_ptr<Slot[]> heap);
  void Settle();
  MappedFile map_;                // Open: the file
  std::unique_ptr<Slot[]> heap_;  // InMemory
  Slot* slots_;                   // one of the two
  uint32_t deaths_at_open_[kLevels] = {};
  uint32_t depth_ = 0;  // bit l: level l active in this process
};

}  // namespace emud

#endif  // EMUD_BASE_POISON_GUARD_H_
