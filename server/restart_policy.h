// RestartPolicy: what to do when one device's worker exits unexpectedly.
//
// The rule (ARCHITECTURE.md, "Supervision"): a worker that became *healthy*
// and then died is replaced at once, however often. Healthy means the
// worker published its status record (WorkerStatus with its own pid and a
// phase), which emud-worker does exactly once it has created or resumed its
// session, holds its listener and is about to enter its event loop. An
// external kill, an OOM kill or a crash while serving is therefore never a
// crash loop: the successor takes the guest's connection over from the fd
// store and every millisecond of delay is a millisecond of stalled guest.
//
// Backoff and FAILED are for workers that die *before* becoming healthy (a
// bad binary, a bad configuration, a crash in resume). Such exits form a
// streak; each waits initial_backoff * multiplier^(n-1), bounded by
// max_backoff, and the exit after max_consecutive_failures gives up (the
// device goes FAILED). While a guest is connected the guest has a request
// outstanding that QEMU gives up on after its 5 s x-msg-timeout (and a late
// reply is as fatal as none), so the delays then start at
// connected_initial_backoff and never exceed connected_max_backoff: with the
// defaults a whole streak waits at most 10+20+40+80+100 = 250 ms plus the
// workers' start times before the verdict, far below 5 s.
#ifndef EMUD_SERVER_RESTART_POLICY_H_
#define EMUD_SERVER_RESTART_POLICY_H_

#include "absl/time/time.h"

namespace emud::server {

struct RestartPolicyOptions {
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(10);
  double multiplier = 2.0;
  // Bounds while a guest is connected (see the file comment).
  absl::Duration connected_initial_backoff = absl::Milliseconds(10);
  absl::Duration connected_max_backoff = absl::Milliseconds(100);
  // Unhealthy exits allowed in one streak; the next one gives up.
  int max_consecutive_failures = 5;
};

class RestartPolicy {
 public:
  struct Decision {
    bool give_up = false;
    absl::Duration delay;  // wait this long before restarting (if !give_up)
  };

  explicit RestartPolicy(RestartPolicyOptions options = {}) : options_(options) {}

  // Records an unexpected exit and says what to do. `healthy`: the worker
  // had become healthy (file comment): restart at once, never give up, and
  // the streak ends. Otherwise the streak grows and the exit is delayed or,
  // past max_consecutive_failures, given up. `guest_connected`: a client
  // connection is held for the device; bounds the delay.
  Decision OnExit(bool healthy, bool guest_connected);
  // Forgets the current streak (ResetDevice).
  void Reset() { failures_ = 0; }
  // Unhealthy exits in the current streak.
  int consecutive_failures() const { return failures_; }
  const RestartPolicyOptions& options() const { return options_; }

 private:
  RestartPolicyOptions options_;
  int failures_ = 0;
};

}  // namespace emud::server

#endif  // EMUD_SERVER_RESTART_POLICY_H_
