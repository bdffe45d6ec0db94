#include "server/restart_policy.h"

#include <vector>

#include "gtest/gtest.h"

namespace emud::server {
namespace {

RestartPolicyOptions Opts() {
  RestartPolicyOptions o;
  o.initial_backoff = absl::Milliseconds(100);
  o.max_backoff = absl::Milliseconds(700);
  o.multiplier = 2;
  o.max_consecutive_failures = 5;
  return o;
}

TEST(RestartPolicyTest, HealthyWorkerIsReplacedAtOnceHoweverOften) {
  // External kills, OOM kills, crashes while serving: never a crash loop.
  for (bool connected : {false, true}) {
    RestartPolicy p(Opts());
    for (int i = 0; i < 10000; ++i) {
      auto d = p.OnExit(/*healthy=*/true, connected);
      ASSERT_FALSE(d.give_up) << "exit " << i;
      ASSERT_EQ(d.delay, absl::ZeroDuration()) << "exit " << i;
    }
    EXPECT_EQ(p.consecutive_failures(), 0);
  }
}

TEST(RestartPolicyTest, UnhealthyBackoffDoublesAndIsBounded) {
  RestartPolicy p(Opts());
  std::vector<absl::Duration> delays;
  for (int i = 0; i < 5; ++i) {
    auto d = p.OnExit(/*healthy=*/false, /*guest_connected=*/false);
    ASSERT_FALSE(d.give_up) << "exit " << i;
    delays.push_back(d.delay);
  }
  EXPECT_EQ(delays[0], absl::Milliseconds(100));
  EXPECT_EQ(delays[1], absl::Milliseconds(200));
  EXPECT_EQ(delays[2], absl::Milliseconds(400));
  EXPECT_EQ(delays[3], absl::Milliseconds(700));  // capped
  EXPECT_EQ(delays[4], absl::Milliseconds(700));
  EXPECT_EQ(p.consecutive_failures(), 5);
}

TEST(RestartPolicyTest, UnhealthyStreakGivesUpAfterMaxFailures) {
  RestartPolicy p(Opts());
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(p.OnExit(false, false).give_up);
  EXPECT_TRUE(p.OnExit(false, false).give_up);
}

TEST(RestartPolicyTest, ConnectedGuestBoundsTheWholeStreakFarBelowQemuTimeout) {
  // With the defaults: the longest a guest's request can wait on delays
  // before the verdict, summed over a streak (start times come on top).
  RestartPolicy p;
  absl::Duration total;
  std::vector<absl::Duration> delays;
  for (;;) {
    auto d = p.OnExit(/*healthy=*/false, /*guest_connected=*/true);
    if (d.give_up) break;
    EXPECT_LE(d.delay, absl::Milliseconds(100));
    delays.push_back(d.delay);
    total += d.delay;
  }
  ASSERT_EQ(delays.size(), 5u);
  EXPECT_EQ(delays[0], absl::Milliseconds(10));
  EXPECT_EQ(delays[3], absl::Milliseconds(80));
  EXPECT_EQ(delays[4], absl::Milliseconds(100));
  EXPECT_EQ(total, absl::Milliseconds(250));
}

TEST(RestartPolicyTest, HealthyRunEndsTheStreak) {
  RestartPolicy p(Opts());
  for (int i = 0; i < 4; ++i) p.OnExit(false, false);
  EXPECT_EQ(p.consecutive_failures(), 4);
  auto d = p.OnExit(/*healthy=*/true, false);
  EXPECT_FALSE(d.give_up);
  EXPECT_EQ(d.delay, absl::ZeroDuration());
  EXPECT_EQ(p.consecutive_failures(), 0);
  d = p.OnExit(/*healthy=*/false, false);  // then died before serving: backoff again
  EXPECT_EQ(d.delay, absl::Milliseconds(100));
  EXPECT_EQ(p.consecutive_failures(), 1);
}

TEST(RestartPolicyTest, ResetForgetsTheStreak) {
  RestartPolicy p(Opts());
  for (int i = 0; i < 6; ++i) p.OnExit(false, false);
  p.Reset();
  auto d = p.OnExit(false, false);
  EXPECT_FALSE(d.give_up);
  EXPECT_EQ(d.delay, absl::Milliseconds(100));
}

TEST(RestartPolicyTest, HugeFailureCountsDoNotOverflowTheDelay) {
  RestartPolicyOptions o = Opts();
  o.max_consecutive_failures = 1000;
  RestartPolicy p(o);
  absl::Duration last;
  for (int i = 0; i < 1000; ++i) last = p.OnExit(false, false).delay;
  EXPECT_EQ(last, absl::Milliseconds(700));
}

}  // namespace
}  // namespace emud::server
