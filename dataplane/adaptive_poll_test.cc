// AdaptivePoller's policy as a pure function of reported outcomes and an
// injected clock (no time passes in these tests).
#include "dataplane/adaptive_poll.h"

#include <cmath>
#include <cstdint>

#include "gtest/gtest.h"

namespace emud::dataplane {
namespace {

constexpr int64_t kUs = 1'000;
constexpr int64_t kMs = 1'000'000;
constexpr int64_t kS = 1'000'000'000;
// An arbitrary monotonic origin far from 0 (CLOCK_MONOTONIC is boot time).
constexpr int64_t kT0 = 1'000 * kS;

TEST(AdaptivePollerTest, WorkPollsAtOnceAndTheBusyWindowKeepsPolling) {
  AdaptivePoller p;
  const int64_t w = p.options().busy_window_ns;
  EXPECT_EQ(p.Next(true, true, kT0), 0);
  EXPECT_EQ(p.Next(false, true, kT0 + 1), 0);
  EXPECT_EQ(p.Next(false, true, kT0 + w - 1), 0);
  EXPECT_EQ(p.Next(false, false, kT0 + w - 1), 0);  // even without mapped doorbells
  EXPECT_GT(p.Next(false, true, kT0 + w), 0);
}

TEST(AdaptivePollerTest, WithoutMappedDoorbellsAnIdleLoopBlocks) {
  AdaptivePoller p;
  EXPECT_EQ(p.Next(true, false, kT0), 0);
  EXPECT_EQ(p.Next(false, false, kT0 + p.options().busy_window_ns), -1);
  EXPECT_EQ(p.Next(false, false, kT0 + 100 * kS), -1);
}

TEST(AdaptivePollerTest, RecentlyActiveSleepsTheMinimum) {
  AdaptivePoller p;
  const AdaptivePoller::Options& o = p.options();
  p.Next(true, true, kT0);
  // Up to idle_divisor * min_sleep after the last work the sleep stays at
  // min_sleep: 12.8 ms with the defaults, so a guest answering within 10 ms
  // waits at most 50 us for its doorbell to be seen.
  for (int64_t idle = o.busy_window_ns; idle <= o.idle_divisor * o.min_sleep_ns; idle += 100 * kUs) {
    EXPECT_EQ(p.Next(false, true, kT0 + idle), o.min_sleep_ns) << idle;
  }
  EXPECT_EQ(p.Next(false, true, kT0 + 10 * kMs), 50 * kUs);
}

TEST(AdaptivePollerTest, SleepIsAFractionOfTheIdleTimeUpToTheMaximum) {
  AdaptivePoller p;
  const AdaptivePoller::Options& o = p.options();
  p.Next(true, true, kT0);
  EXPECT_EQ(p.Next(false, true, kT0 + 100 * kMs), 100 * kMs / o.idle_divisor);
  EXPECT_EQ(p.Next(false, true, kT0 + 1 * kS), 1 * kS / o.idle_divisor);
  EXPECT_LE(p.Next(false, true, kT0 + 1 * kS), 4 * kMs);  // a 1 s ping interval
  EXPECT_EQ(p.Next(false, true, kT0 + 10 * kS), o.max_sleep_ns);
  EXPECT_EQ(p.Next(false, true, kT0 + 1000 * kS), o.max_sleep_ns);
}

TEST(AdaptivePollerTest, ANewPollerCountsItsStartAsWork) {
  // A successor worker's lane whose first rounds find its queues empty (the
  // guest's next doorbells are a few microseconds away) polls through the
  // busy window and then sleeps min_sleep, as after a frame: not max_sleep,
  // as a device idle since boot would.
  const AdaptivePoller::Options o;
  AdaptivePoller p(o, kT0);
  EXPECT_EQ(p.Next(false, true, kT0), 0);
  EXPECT_EQ(p.Next(false, true, kT0 + o.busy_window_ns - 1), 0);
  EXPECT_EQ(p.Next(false, true, kT0 + o.busy_window_ns), o.min_sleep_ns);
  // Then the ramp of an idle stretch that began at the start.
  EXPECT_EQ(p.Next(false, true, kT0 + 1 * kS), 1 * kS / o.idle_divisor);
  EXPECT_EQ(p.Next(false, true, kT0 + 60 * kS), o.max_sleep_ns);
  // Without mapped doorbells a new poller still blocks after the window.
  AdaptivePoller q(o, kT0);
  EXPECT_EQ(q.Next(false, false, kT0 + o.busy_window_ns), -1);
  // The default start is the clock's now (not 0, the boot: max_sleep).
  AdaptivePoller r;
  EXPECT_LT(r.Next(false, true), o.max_sleep_ns);
}

TEST(AdaptivePollerTest, TheSleepNeverExceedsTheBoundOfTheContract) {
  AdaptivePoller p;
  const AdaptivePoller::Options& o = p.options();
  p.Next(true, true, kT0);
  int64_t now = kT0 + o.busy_window_ns;
  for (int i = 0; i < 100'000; ++i) {
    int64_t idle = now - kT0;
    int64_t t = p.Next(false, true, now);
    ASSERT_GE(t, o.min_sleep_ns);
    ASSERT_LE(t, std::max(o.min_sleep_ns, idle / o.idle_divisor));
    ASSERT_LE(t, o.max_sleep_ns);
    now += t;  // the caller slept the whole timeout
  }
}

TEST(AdaptivePollerTest, WakeUpsOfAnIdleStretchGrowLogarithmically) {
  // Sleeping each returned timeout in full from the end of the busy window:
  // the wake-ups spent before the cap reaches max_sleep are about
  // idle_divisor * (1 + ln(max_sleep / min_sleep)), then 1 / max_sleep per
  // second. This is the CPU an idle device pays for staying responsive.
  AdaptivePoller p;
  const AdaptivePoller::Options& o = p.options();
  p.Next(true, true, kT0);
  int64_t now = kT0 + o.busy_window_ns;
  auto wakeups_until = [&](int64_t end) {
    int64_t n = 0;
    while (now < end) {
      now += p.Next(false, true, now);
      ++n;
    }
    return n;
  };
  const int64_t ramp_end = o.idle_divisor * o.max_sleep_ns;  // 5.12 s
  const double model =
      double(o.idle_divisor) * (1 + std::log(double(o.max_sleep_ns) / double(o.min_sleep_ns)));
  const int64_t ramp = wakeups_until(kT0 + ramp_end);
  EXPECT_GT(ramp, 0.9 * model);
  EXPECT_LT(ramp, 1.1 * model);
  EXPECT_LT(ramp, 2'000);
  // The --idle window of worker_bench (0.6 s to 3.6 s after the last frame).
  AdaptivePoller q;
  q.Next(true, true, kT0);
  int64_t t = kT0 + o.busy_window_ns, in_window = 0;
  while (t < kT0 + 3600 * kMs) {
    if (t >= kT0 + 600 * kMs) ++in_window;
    t += q.Next(false, true, t);
  }
  EXPECT_LT(in_window, 600);  // ~ idle_divisor * ln(6) = 459
  // After the ramp: one wake-up per max_sleep.
  const int64_t steady = wakeups_until(now + 10 * kS);
  EXPECT_GE(steady, 10 * kS / o.max_sleep_ns);
  EXPECT_LE(steady, 10 * kS / o.max_sleep_ns + 1);
}

TEST(AdaptivePollerTest, ActivityBuysAShortWindowOfShortSleeps) {
  AdaptivePoller p;
  const AdaptivePoller::Options& o = p.options();
  p.Next(true, true, kT0);
  const int64_t later = kT0 + 60 * kS;
  EXPECT_EQ(p.Next(false, true, later), o.max_sleep_ns);
  // A trapped register access or a backend frame: no work yet, but the
  // guest is active, so the next sleeps are short for activity_window.
  p.NoteActivity(later);
  EXPECT_EQ(p.Next(false, true, later), o.min_sleep_ns);
  EXPECT_EQ(p.Next(false, true, later + o.activity_window_ns - 1), o.min_sleep_ns);
  // It does not poll: only work starts the busy window.
  EXPECT_GT(p.Next(false, true, later + 1), 0);
  // Without mapped doorbells it changes nothing (fd events wake the loop).
  EXPECT_EQ(p.Next(false, false, later + 1), -1);
  // After the window the ramp continues from the last work: a guest whose
  // driver reads a register every 2 s does not keep an idle device awake.
  EXPECT_EQ(p.Next(false, true, later + o.activity_window_ns), o.max_sleep_ns);
  // An older timestamp never moves the activity clock backwards.
  p.NoteActivity(later + 10 * kS);
  p.NoteActivity(later);
  EXPECT_EQ(p.Next(false, true, later + 10 * kS + 1), o.min_sleep_ns);
}

TEST(AdaptivePollerTest, AGuestReadingARegisterEvery2SecondsCostsFewWakeUps) {
  // Idle for 60 s apart from a trapped access every 2 s (Linux iavf's
  // watchdog): the wake-ups are those of the idle ramp plus
  // activity_window / min_sleep per access.
  AdaptivePoller p;
  const AdaptivePoller::Options& o = p.options();
  p.Next(true, true, kT0);
  int64_t now = kT0 + o.busy_window_ns, next_access = kT0 + 2 * kS, wakeups = 0;
  while (now < kT0 + 60 * kS) {
    if (now >= next_access) {
      p.NoteActivity(now);
      next_access += 2 * kS;
    }
    now += p.Next(false, true, now);
    ++wakeups;
  }
  const int64_t per_access = o.activity_window_ns / o.min_sleep_ns;
  EXPECT_LT(wakeups, 2'000 + 30 * (per_access + 1) + 60 * kS / o.max_sleep_ns);
}

TEST(AdaptivePollerTest, WorkAfterALongIdleStretchPollsAgain) {
  AdaptivePoller p;
  p.Next(true, true, kT0);
  EXPECT_EQ(p.Next(false, true, kT0 + 60 * kS), p.options().max_sleep_ns);
  EXPECT_EQ(p.Next(true, true, kT0 + 60 * kS), 0);
  EXPECT_EQ(p.Next(false, true, kT0 + 60 * kS + 1), 0);
  EXPECT_EQ(p.Next(false, true, kT0 + 60 * kS + p.options().busy_window_ns),
            p.options().min_sleep_ns);
}

TEST(AdaptivePollerTest, OptionsAreSanitised) {
  AdaptivePoller::Options o;
  o.idle_divisor = 0;
  o.min_sleep_ns = 2 * kMs;
  o.max_sleep_ns = 1 * kMs;  // below the minimum: the minimum wins
  AdaptivePoller p(o);
  p.Next(true, true, kT0);
  EXPECT_EQ(p.Next(false, true, kT0 + 100 * kS), 2 * kMs);
  o = {};
  o.idle_divisor = 1;
  o.max_sleep_ns = 1 * kS;
  AdaptivePoller q(o);
  q.Next(true, true, kT0);
  EXPECT_EQ(q.Next(false, true, kT0 + 300 * kMs), 300 * kMs);
}

}  // namespace
}  // namespace emud::dataplane
