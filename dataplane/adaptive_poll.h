// Adaptive polling policy for a data-path loop: a busy loop never sleeps, a
// recently active one sleeps briefly (so a mapped doorbell rung after a short
// pause is seen within tens of microseconds), and a long idle one backs off to
// long sleeps so that it costs about 0 CPU.
//
// Contract of Next(did_work, must_poll) -> timeout (0 = poll again at once,
// -1 = block until an fd event, else nanoseconds to block at most):
//
//   did_work:                          0
//   less than busy_window since the
//   last work:                         0
//   !must_poll (every source of work
//   raises an fd event):              -1
//   less than activity_window since
//   the last NoteActivity():           min_sleep
//   otherwise:                         clamp(idle / idle_divisor,
//                                            min_sleep, max_sleep)
//
// where idle = now - the last work. So a sleep never exceeds
// max(min_sleep, idle / idle_divisor): the latency a mapped doorbell can be
// charged is a fixed fraction (1/256 by default) of the time the device had
// been quiet, never more than max_sleep. The number of wake-ups spent on an
// idle stretch T is about idle_divisor * (1 + ln(T / (idle_divisor *
// min_sleep))) until the cap reaches max_sleep, then T / max_sleep:
// logarithmic in T, so a device that went quiet pays a bounded CPU cost for
// staying responsive, and a long idle one wakes max_sleep apart.
//
// An fd event (NoteActivity: a trapped register access, any vfio-user
// message, a backend frame) is a hint that traffic may follow: it buys
// activity_window of min_sleep polling but does not restart the long ramp,
// because a Linux iavf guest reads a trapped register from its watchdog every
// 2 s; restarting the ramp each time would keep an idle device at ~1% of a
// core.
//
// Sleeps are short, so the thread should run with kTimerSlackNs of timer
// slack (PR_SET_TIMERSLACK): with the default 50 us a 50 us sleep lasts
// ~100 us.
//
// The policy is a pure function of the reported outcomes and the clock; every
// method has an overload taking `now_ns` (CLOCK_MONOTONIC) so it can be tested
// without time passing. One AdaptivePoller per polling thread.
#ifndef EMUD_DATAPLANE_ADAPTIVE_POLL_H_
#define EMUD_DATAPLANE_ADAPTIVE_POLL_H_

#include <time.h>

#include <algorithm>
#include <cstdint>

namespace emud::dataplane {

class AdaptivePoller {
 public:
  struct Options {
    // Keep polling this long after the last work (a burst's next doorbell).
    int64_t busy_window_ns = 200'000;
    // Shortest sleep: the added latency of a doorbell rung shortly after
    // activity is about half of it (plus the timer's wake-up latency).
    int64_t min_sleep_ns = 50'000;
    // Sleep at most idle / idle_divisor (but at least min_sleep).
    int64_t idle_divisor = 256;
    // Longest sleep: worst added latency of a doorbell after a long idle
    // stretch, and 1 / max_sleep wake-ups per second when idle.
    int64_t max_sleep_ns = 20'000'000;
    // Sleep only min_sleep this long after a NoteActivity() (the flat part of
    // the ramp that work gets: idle_divisor * min_sleep).
    int64_t activity_window_ns = 12'800'000;
  };
  static constexpr int64_t kTimerSlackNs = 1'000;
  // A new poller counts its creation as work (`start_ns`, default now): it
  // polls through the busy window and then ramps up from min_sleep. A worker
  // starts when a device is created or, more often, when a successor takes
  // over a device mid-traffic; a poller that counted the device idle since
  // boot put a lane whose first round found its queues empty to sleep for
  // max_sleep with the guest's frames waiting behind mapped doorbells (the
  // chaos suite's 20-queue, two-lane reattach: p50 6 ms, p99 11 ms).
  AdaptivePoller() : AdaptivePoller(Options()) {}
  explicit AdaptivePoller(Options o) : AdaptivePoller(o, NowNs()) {}
  AdaptivePoller(Options o, int64_t start_ns) : o_(o), last_work_(start_ns) {
    o_.idle_divisor = std::max<int64_t>(1, o_.idle_divisor);
    o_.min_sleep_ns = std::max<int64_t>(1, o_.min_sleep_ns);
    o_.max_sleep_ns = std::max(o_.max_sleep_ns, o_.min_sleep_ns);
  }

  static int64_t NowNs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  }

  // Reports the outcome of one round; returns how long the caller may block
  // waiting for fd events: 0 = poll, -1 = indefinitely, else nanoseconds.
  // `must_poll`: work could appear without an fd event (mapped doorbells).
  int64_t Next(bool did_work, bool must_poll) { return Next(did_work, must_poll, NowNs()); }
  int64_t Next(bool did_work, bool must_poll, int64_t now_ns) {
    if (did_work) {
      last_work_ = now_ns;
      return 0;
    }
    if (now_ns - last_work_ < o_.busy_window_ns) return 0;
    if (!must_poll) return -1;
    if (now_ns - last_activity_ < o_.activity_window_ns) return o_.min_sleep_ns;
    int64_t idle = std::max<int64_t>(0, now_ns - last_work_);
    return std::clamp(idle / o_.idle_divisor, o_.min_sleep_ns, o_.max_sleep_ns);
  }

  // An fd event that hints at traffic (a trapped register access or any
  // vfio-user message, a frame from the backend): min_sleep for
  // activity_window, without the busy window that work starts.
  void NoteActivity() { NoteActivity(NowNs()); }
  void NoteActivity(int64_t now_ns) { last_activity_ = std::max(last_activity_, now_ns); }

  const Options& options() const { return o_; }

 private:
  Options o_;
  int64_t last_work_;
  int64_t last_activity_ = INT64_MIN / 2;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_ADAPTIVE_POLL_H_
