#include "server/restart_policy.h"

#include <algorithm>

namespace emud::server {

RestartPolicy::Decision RestartPolicy::OnExit(bool healthy, bool guest_connected) {
  Decision d;
  if (healthy) {
    failures_ = 0;
    return d;  // at once
  }
  ++failures_;
  if (failures_ > options_.max_consecutive_failures) {
    d.give_up = true;
    return d;
  }
  const absl::Duration initial =
      guest_connected ? options_.connected_initial_backoff : options_.initial_backoff;
  const absl::Duration cap =
      guest_connected ? std::min(options_.connected_max_backoff, options_.max_backoff)
                      : options_.max_backoff;
  absl::Duration delay = initial;
  for (int i = 1; i < failures_ && delay < cap; ++i) delay = delay * options_.multiplier;
  d.delay = std::min(delay, cap);
  return d;
}

}  // namespace emud::server
