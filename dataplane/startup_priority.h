// The real-time start of a worker (emud --startup-rt-priority, default 1).
//
// emud spawns a worker SCHED_FIFO (fdstore::SpawnWithFds with rt_priority) so
// that a successor's exec, resume and first frame do not wait behind the
// machine's other work while the guest waits. The worker keeps it only that
// long: AdoptStartupPriority (at exec) marks it SCHED_RESET_ON_FORK, so no
// thread or process the worker creates inherits it, and EndStartupPriority
// drops the main thread to SCHED_OTHER (nice kept) once the data path moved
// a frame, or kStartupPriorityMax after exec, whichever comes first. emud
// takes it back itself 200 ms after the spawn (an older worker binary that
// knows none of this, a start that hangs): a busy-polling data path never
// runs real-time for long.
#ifndef EMUD_DATAPLANE_STARTUP_PRIORITY_H_
#define EMUD_DATAPLANE_STARTUP_PRIORITY_H_

#include <cstdint>

#include "absl/time/time.h"

namespace emud::dataplane {

inline constexpr absl::Duration kStartupPriorityMax = absl::Milliseconds(100);

namespace startup_priority_internal {
extern bool g_held;
void End(bool moved);
}  // namespace startup_priority_internal

// Call first thing in the process (main thread). No-op unless the thread
// runs a real-time policy.
void AdoptStartupPriority();

// Whether this thread still runs with the start priority.
inline bool HoldsStartupPriority() { return startup_priority_internal::g_held; }

// Drops the start priority if `moved` (the data path moved frames) or its
// time is up. A branch when not held; call each round of the serving loop.
inline void EndStartupPriority(bool moved) {
  if (startup_priority_internal::g_held) startup_priority_internal::End(moved);
}

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_STARTUP_PRIORITY_H_
