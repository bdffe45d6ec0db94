#include "server/restart_policy.h"

#include <algorithm>

namespace emud::server {

RestartPolicy::Decision RestartPolicy::OnExit(absl::Time started, absl::Time now) {
  const bool healthy = now - started >= options_.stable_after;
  if (healthy) failures_ = 0;
  ++failures_;
  Decision d;
  if (failures_ > options_.max_consecutive_failures) {
    d.give_up = true;
    return d;
  }
  // A worker killed after a healthy run: its successor takes over the
  // guest's connection from the fd store, and every millisecond of delay is
  // a millisecond of stalled traffic. Backoff is for crash loops only.
  if (healthy) return d;
  absl::Duration delay = options_.initial_backoff;
  for (int i = 1; i < failures_ && delay < options_.max_backoff; ++i) {
    delay = delay * options_.multiplier;
  }
  d.delay = std::min(delay, options_.max_backoff);
  return d;
}

}  // namespace emud::server
