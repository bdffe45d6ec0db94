// RestartPolicy: bounded exponential backoff and crash-loop detection for one
// device's worker.
//
// A worker that exits unexpectedly is restarted after a delay that starts at
// initial_backoff and doubles (multiplier) with every consecutive failure, up
// to max_backoff. A worker that stayed up for at least stable_after ends the
// streak: its exit counts as the first failure of a new one. When a streak
// reaches more than max_consecutive_failures exits, the policy gives up and
// the device is marked FAILED.
#ifndef EMUD_SERVER_RESTART_POLICY_H_
#define EMUD_SERVER_RESTART_POLICY_H_

#include "absl/time/time.h"

namespace emud::server {

struct RestartPolicyOptions {
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(10);
  double multiplier = 2.0;
  absl::Duration stable_after = absl::Seconds(10);
  // Restarts allowed in one streak; the next exit gives up.
  int max_consecutive_failures = 5;
};

class RestartPolicy {
 public:
  struct Decision {
    bool give_up = false;
    absl::Duration delay;  // wait this long before restarting (if !give_up)
  };

  explicit RestartPolicy(RestartPolicyOptions options = {}) : options_(options) {}

  // Records that a worker started at `started` exited unexpectedly at `now`
  // and says what to do: a worker that ran at least stable_after starts a new
  // streak and is restarted at once (delay zero); each further exit of a
  // streak waits initial_backoff * multiplier^(n-1), bounded by max_backoff.
  Decision OnExit(absl::Time started, absl::Time now);
  // Forgets the current streak (ResetDevice).
  void Reset() { failures_ = 0; }
  // Exits in the current streak.
  int consecutive_failures() const { return failures_; }
  const RestartPolicyOptions& options() const { return options_; }

 private:
  RestartPolicyOptions options_;
  int failures_ = 0;
};

}  // namespace emud::server

#endif  // EMUD_SERVER_RESTART_POLICY_H_
