#include "dataplane/startup_priority.h"

#include <sched.h>

#include "absl/time/clock.h"

namespace emud::dataplane {
namespace startup_priority_internal {

bool g_held = false;
namespace {
absl::Time g_until;
}  // namespace

void End(bool moved) {
  if (!moved && absl::Now() < g_until) return;
  sched_param sp{};
  // Only this thread ever held it (SCHED_RESET_ON_FORK); failure leaves
  // emud's timer to take it back.
  (void)::sched_setscheduler(0, SCHED_OTHER, &sp);
  g_held = false;
}

}  // namespace startup_priority_internal

void AdoptStartupPriority() {
  int policy = ::sched_getscheduler(0);
  if (policy < 0) return;
  policy &= ~SCHED_RESET_ON_FORK;
  if (policy != SCHED_FIFO && policy != SCHED_RR) return;
  sched_param sp{};
  if (::sched_getparam(0, &sp) != 0) return;
  // Same policy and priority: allowed without privilege; adds the reset.
  (void)::sched_setscheduler(0, policy | SCHED_RESET_ON_FORK, &sp);
  startup_priority_internal::g_until = absl::Now() + kStartupPriorityMax;
  startup_priority_internal::g_held = true;
}

}  // namespace emud::dataplane
