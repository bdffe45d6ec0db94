#include "server/restart_policy.h"

#include "gtest/gtest.h"

namespace emud::server {
namespace {

RestartPolicyOptions Opts() {
  RestartPolicyOptions o;
  o.initial_backoff = absl::Milliseconds(100);
  o.max_backoff = absl::Milliseconds(700);
  o.multiplier = 2;
  o.stable_after = absl::Seconds(10);
  o.max_consecutive_failures = 5;
  return o;
}

TEST(RestartPolicyTest, BackoffDoublesAndIsBounded) {
  RestartPolicy p(Opts());
  absl::Time t = absl::UnixEpoch();
  std::vector<absl::Duration> delays;
  for (int i = 0; i < 5; ++i) {
    auto d = p.OnExit(t, t + absl::Milliseconds(5));
    ASSERT_FALSE(d.give_up) << "exit " << i;
    delays.push_back(d.delay);
    t += absl::Seconds(1);
  }
  EXPECT_EQ(delays[0], absl::Milliseconds(100));
  EXPECT_EQ(delays[1], absl::Milliseconds(200));
  EXPECT_EQ(delays[2], absl::Milliseconds(400));
  EXPECT_EQ(delays[3], absl::Milliseconds(700));  // capped
  EXPECT_EQ(delays[4], absl::Milliseconds(700));
  EXPECT_EQ(p.consecutive_failures(), 5);
}

TEST(RestartPolicyTest, CrashLoopGivesUpAfterMaxFailures) {
  RestartPolicy p(Opts());
  absl::Time t = absl::UnixEpoch();
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(p.OnExit(t, t + absl::Seconds(1)).give_up);
  EXPECT_TRUE(p.OnExit(t, t + absl::Seconds(1)).give_up);
}

TEST(RestartPolicyTest, StableWorkerStartsANewStreak) {
  RestartPolicy p(Opts());
  absl::Time t = absl::UnixEpoch();
  for (int i = 0; i < 4; ++i) p.OnExit(t, t + absl::Seconds(1));
  EXPECT_EQ(p.consecutive_failures(), 4);
  auto d = p.OnExit(t, t + absl::Seconds(11));  // lived longer than stable_after
  EXPECT_FALSE(d.give_up);
  EXPECT_EQ(d.delay, absl::ZeroDuration());  // killed after a healthy run: at once
  EXPECT_EQ(p.consecutive_failures(), 1);
  d = p.OnExit(t + absl::Seconds(11), t + absl::Seconds(12));  // then died young: backoff
  EXPECT_EQ(d.delay, absl::Milliseconds(200));
}

TEST(RestartPolicyTest, ResetForgetsTheStreak) {
  RestartPolicy p(Opts());
  absl::Time t = absl::UnixEpoch();
  for (int i = 0; i < 6; ++i) p.OnExit(t, t);
  p.Reset();
  auto d = p.OnExit(t, t);
  EXPECT_FALSE(d.give_up);
  EXPECT_EQ(d.delay, absl::Milliseconds(100));
}

TEST(RestartPolicyTest, HugeFailureCountsDoNotOverflowTheDelay) {
  RestartPolicyOptions o = Opts();
  o.max_consecutive_failures = 1000;
  RestartPolicy p(o);
  absl::Time t = absl::UnixEpoch();
  absl::Duration last;
  for (int i = 0; i < 1000; ++i) last = p.OnExit(t, t).delay;
  EXPECT_EQ(last, absl::Milliseconds(700));
}

}  // namespace
}  // namespace emud::server
