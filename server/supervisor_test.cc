#include "server/supervisor.h"

#include <poll.h>

#include <thread>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace emud::server {
namespace {

// Waits until the supervisor reports an exit, then takes it.
std::vector<Supervisor::Exit> WaitExits(Supervisor& s) {
  struct pollfd pfd = {s.event_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 10000), 1);
  return s.TakeExits();
}

std::unique_ptr<Supervisor> Make(SupervisorOptions o = {}) {
  auto s = Supervisor::Create(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

TEST(SupervisorTest, ExitIsSeenWithHowAndWhy) {
  auto s = Make();
  s->Add("d");
  // The worker's last words go to the memfd named by EMUD_EXIT_REASON_FD.
  ASSERT_TRUE(s->Spawn("d", {"/bin/sh", "-c", "printf 'INTERNAL: no luck' >&$EMUD_EXIT_REASON_FD; exit 3"},
                       {}, {})
                  .ok());
  pid_t pid = s->pid("d");
  EXPECT_GT(pid, 0);
  EXPECT_GT(s->start_ticks("d"), 0u);
  EXPECT_NE(s->started("d"), absl::Time());
  auto exits = WaitExits(*s);
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_EQ(exits[0].device, "d");
  EXPECT_EQ(exits[0].pid, pid);
  EXPECT_EQ(exits[0].how, "exited with status 3");
  EXPECT_EQ(exits[0].said, "INTERNAL: no luck");
  EXPECT_FALSE(exits[0].requested);
  EXPECT_EQ(s->pid("d"), 0);
  EXPECT_TRUE(s->TakeExits().empty());
}

TEST(SupervisorTest, SpawnFailureLeavesNoWorker) {
  auto s = Make();
  s->Add("d");
  EXPECT_FALSE(s->Spawn("d", {"/nonexistent/emud-worker"}, {}, {}).ok());
  EXPECT_EQ(s->pid("d"), 0);
  EXPECT_EQ(s->Spawn("nodev", {"/bin/true"}, {}, {}).code(), absl::StatusCode::kNotFound);
}

TEST(SupervisorTest, StopIsARequestedExitSeenByTheLoop) {
  auto s = Make();
  s->Add("d");
  ASSERT_TRUE(s->Spawn("d", {"/bin/sleep", "30"}, {}, {}).ok());
  absl::Mutex mu;
  std::atomic<bool> done{false};
  std::vector<Supervisor::Exit> seen;
  // The caller's event loop: takes exits under the same mutex.
  std::thread loop([&] {
    while (!done) {
      struct pollfd pfd = {s->event_fd(), POLLIN, 0};
      ::poll(&pfd, 1, 10);
      absl::MutexLock lock(&mu);
      for (auto& e : s->TakeExits()) seen.push_back(std::move(e));
    }
  });
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(s->Stop("d", absl::Now() + absl::Seconds(5), mu).ok());
    EXPECT_EQ(s->pid("d"), 0);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_TRUE(seen[0].requested);
    EXPECT_NE(seen[0].how.find("signal 15"), std::string::npos);
    // Nothing to stop: OK at once.
    EXPECT_TRUE(s->Stop("d", absl::Now(), mu).ok());
  }
  done = true;
  loop.join();
}

TEST(SupervisorTest, AdoptWatchesARunningProcess) {
  auto p = fdstore::SpawnWithFds({"/bin/sleep", "30"});
  ASSERT_TRUE(p.ok());
  auto s = Make();
  s->Add("d");
  EXPECT_EQ(s->Adopt("d", p->pid, p->start_ticks + 1).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(s->Adopt("d", p->pid, p->start_ticks).ok());
  EXPECT_EQ(s->pid("d"), p->pid);
  ASSERT_TRUE(fdstore::SignalProcess(*p, SIGKILL).ok());
  auto exits = WaitExits(*s);
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_NE(exits[0].how.find("signal 9"), std::string::npos);
}

TEST(SupervisorTest, RestartPolicyAndDueRestarts) {
  SupervisorOptions o;
  o.restart.initial_backoff = absl::Milliseconds(100);
  o.restart.max_consecutive_failures = 2;
  auto s = Make(o);
  s->Add("a");
  s->Add("b");
  EXPECT_FALSE(s->NextRestart().has_value());
  // Healthy: at once, never gives up.
  absl::Time before = absl::Now();
  auto dec = s->WorkerFailed("a", /*healthy=*/true, /*guest_connected=*/false);
  EXPECT_FALSE(dec.give_up);
  EXPECT_EQ(dec.delay, absl::ZeroDuration());
  EXPECT_EQ(s->DueRestarts(absl::Now()), std::vector<std::string>{"a"});
  EXPECT_GE(*s->NextRestart(), before);
  s->CancelRestart("a");
  EXPECT_TRUE(s->DueRestarts(absl::Now()).empty());
  // Unhealthy: a streak with backoff, then the verdict.
  dec = s->WorkerFailed("b", false, false);
  EXPECT_EQ(dec.delay, absl::Milliseconds(100));
  EXPECT_TRUE(s->DueRestarts(absl::Now()).empty());
  EXPECT_EQ(s->DueRestarts(absl::Now() + absl::Milliseconds(200)), std::vector<std::string>{"b"});
  EXPECT_FALSE(s->WorkerFailed("b", false, false).give_up);
  EXPECT_TRUE(s->WorkerFailed("b", false, false).give_up);
  EXPECT_EQ(s->consecutive_failures("b"), 3);
  s->ResetPolicy("b");
  EXPECT_EQ(s->consecutive_failures("b"), 0);
  // A full tmpfs: paced, logged once per episode.
  auto r = s->StoreFull("a", /*guest_connected=*/true);
  EXPECT_TRUE(r.first);
  EXPECT_EQ(r.delay, o.restart.connected_max_backoff);
  r = s->StoreFull("a", false);
  EXPECT_FALSE(r.first);
  EXPECT_EQ(r.delay, absl::Seconds(1));
  s->ClearStoreFull("a");
  EXPECT_TRUE(s->StoreFull("a", false).first);
  s->CancelAllRestarts();
  EXPECT_FALSE(s->NextRestart().has_value());
}

}  // namespace
}  // namespace emud::server
