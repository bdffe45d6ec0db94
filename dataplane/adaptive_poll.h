// Adaptive polling policy for a data-path loop: a busy loop never sleeps; an
// idle one backs off to sleeping so that it costs about 0 CPU.
//
//   after work:                 poll again at once (timeout 0)
//   idle for < busy_window:     poll again at once
//   idle longer:                sleep, doubling from min_sleep to max_sleep
//   nothing to poll at all:     block until an fd event (timeout -1)
//
// The caller passes the returned timeout to epoll_wait / EventLoop::RunOnce.
#ifndef EMUD_DATAPLANE_ADAPTIVE_POLL_H_
#define EMUD_DATAPLANE_ADAPTIVE_POLL_H_

#include <time.h>

#include <algorithm>
#include <cstdint>

namespace emud::dataplane {

class AdaptivePoller {
 public:
  struct Options {
    int64_t busy_window_ns = 200'000;  // keep spinning this long after the last work
    int64_t min_sleep_ns = 50'000;
    int64_t max_sleep_ns = 20'000'000;  // mapped doorbells: worst added latency when idle
  };
  AdaptivePoller() : AdaptivePoller(Options()) {}
  explicit AdaptivePoller(Options o) : o_(o) {}

  static int64_t NowNs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  }

  // Reports the outcome of one round; returns how long the caller may block
  // waiting for fd events: 0 = poll, -1 = indefinitely, else nanoseconds.
  // `must_poll`: work could appear without an fd event (mapped doorbells).
  int64_t Next(bool did_work, bool must_poll) {
    int64_t now = NowNs();
    if (did_work) {
      last_work_ = now;
      sleep_ = o_.min_sleep_ns;
      return 0;
    }
    if (now - last_work_ < o_.busy_window_ns) return 0;
    if (!must_poll) return -1;
    int64_t s = sleep_;
    sleep_ = std::min(sleep_ * 2, o_.max_sleep_ns);
    return s;
  }

 private:
  Options o_;
  int64_t last_work_ = 0;
  int64_t sleep_ = 50'000;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_ADAPTIVE_POLL_H_
