#include "server/supervisor.h"

#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "fdstore/process.h"
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

// The schedules' clock (SupervisorOptions::now) in the tests that check
// them: time moves only when the test says so, so a loaded machine cannot let
// a backoff elapse between two steps.
absl::Time g_now = absl::FromUnixSeconds(1'000'000);
absl::Time FakeNow() { return g_now; }

TEST(SupervisorTest, RestartPolicyAndDueRestarts) {
  SupervisorOptions o;
  o.restart.initial_backoff = absl::Milliseconds(100);
  o.restart.max_consecutive_failures = 2;
  o.now = &FakeNow;
  auto s = Make(o);
  s->Add("a");
  s->Add("b");
  EXPECT_FALSE(s->NextRestart().has_value());
  // Healthy: at once, never gives up.
  const absl::Time t0 = FakeNow();
  auto dec = s->WorkerFailed("a", /*healthy=*/true, /*guest_connected=*/false);
  EXPECT_FALSE(dec.give_up);
  EXPECT_EQ(dec.delay, absl::ZeroDuration());
  EXPECT_EQ(s->DueRestarts(t0), std::vector<std::string>{"a"});
  EXPECT_EQ(*s->NextRestart(), t0);
  s->CancelRestart("a");
  EXPECT_TRUE(s->DueRestarts(t0).empty());
  // Unhealthy: a streak with backoff, then the verdict.
  g_now += absl::Seconds(7);
  const absl::Time t1 = FakeNow();
  dec = s->WorkerFailed("b", false, false);
  EXPECT_EQ(dec.delay, absl::Milliseconds(100));
  EXPECT_EQ(*s->NextRestart(), t1 + absl::Milliseconds(100));
  EXPECT_TRUE(s->DueRestarts(t1).empty());
  g_now += absl::Milliseconds(100) - absl::Nanoseconds(1);
  EXPECT_TRUE(s->DueRestarts(FakeNow()).empty()) << "1 ns before the backoff ends";
  g_now += absl::Nanoseconds(1);
  EXPECT_EQ(s->DueRestarts(FakeNow()), std::vector<std::string>{"b"});
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

// ------------------------------------------------------------ standbys

std::string Shim() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  std::string p = absl::StrCat(srcdir != nullptr ? srcdir : ".", "/emud/server/standby_shim");
  EXPECT_EQ(::access(p.c_str(), X_OK), 0) << p;
  return p;
}

std::string TempDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  return t != nullptr ? t : "/tmp";
}

SupervisorOptions StandbyOptions() {
  SupervisorOptions o;
  o.standby_workers = true;
  o.standby_delay = absl::ZeroDuration();
  return o;
}

// Polls until the standby said it is ready.
bool WaitReady(Supervisor& s, const std::string& dev) {
  for (int i = 0; i < 1000; ++i) {
    if (s.StandbyReady(dev)) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

bool Gone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

std::string ReadWhenThere(const std::string& path) {
  for (int i = 0; i < 1000; ++i) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!ss.str().empty() && ss.str().back() == '\n') return ss.str();
    absl::SleepFor(absl::Milliseconds(10));
  }
  return "";
}

// What a worker does in these tests: spawned (no OUT), it sleeps; promoted
// with OUT, it reports the fd it inherited under "k" and its MARK, and ends
// with its last words in the exit-reason memfd.
constexpr char kWorkerScript[] =
    "if [ -n \"$OUT\" ]; then n=${EMUD_FDS#k=}; n=${n%%,*}; read line <&$n; "
    "echo \"$MARK $line\" > \"$OUT\"; printf 'INTERNAL: promoted' >&$EMUD_EXIT_REASON_FD; "
    "exit 3; fi; exec sleep 30";

TEST(SupervisorStandbyTest, ARestartPromotesTheReadyStandby) {
  auto s = Make(StandbyOptions());
  s->Add("d");
  const std::vector<std::string> argv = {Shim(), kWorkerScript};
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}).ok());
  const pid_t first = s->pid("d");
  // Due once the worker runs (standby_delay 0 here).
  EXPECT_EQ(s->DueStandbys(absl::Now()), std::vector<std::string>{"d"});
  ASSERT_TRUE(s->SpawnStandby("d", argv).ok());
  const pid_t standby = s->standby_pid("d");
  EXPECT_GT(standby, 0);
  EXPECT_NE(standby, first);
  EXPECT_TRUE(s->DueStandbys(absl::Now()).empty());
  ASSERT_TRUE(WaitReady(*s, "d"));

  // The worker dies; its restart is the standby's promotion.
  ASSERT_EQ(::kill(first, SIGKILL), 0);
  auto exits = WaitExits(*s);
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_EQ(exits[0].pid, first);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ASSERT_EQ(::write(p[1], "hello\n", 6), 6);
  const std::string out = TempDir() + "/promoted.out";
  ::unlink(out.c_str());
  ASSERT_TRUE(s->Spawn("d", argv, {{"k", p[0], ""}}, {"OUT=" + out, "MARK=m1"},
                       /*use_standby=*/true)
                  .ok());
  ::close(p[0]);
  ::close(p[1]);
  EXPECT_TRUE(s->promoted("d"));
  EXPECT_EQ(s->pid("d"), standby);
  EXPECT_EQ(s->standby_pid("d"), 0);
  // It got the fd under its key and the environment.
  EXPECT_EQ(ReadWhenThere(out), "m1 hello\n");
  // Its exit is the device's worker's, with its own words.
  exits = WaitExits(*s);
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_EQ(exits[0].pid, standby);
  EXPECT_EQ(exits[0].how, "exited with status 3");
  EXPECT_EQ(exits[0].said, "INTERNAL: promoted");
  EXPECT_EQ(s->pid("d"), 0);
  // No worker: no standby is due.
  EXPECT_TRUE(s->DueStandbys(absl::Now() + absl::Hours(1)).empty());
}

TEST(SupervisorStandbyTest, AStandbyDeathIsNoWorkerExit) {
  auto s = Make(StandbyOptions());
  s->Add("d");
  const std::vector<std::string> argv = {Shim(), kWorkerScript};
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}).ok());
  const pid_t worker = s->pid("d");
  ASSERT_TRUE(s->SpawnStandby("d", argv).ok());
  const pid_t standby = s->standby_pid("d");
  ASSERT_TRUE(WaitReady(*s, "d"));
  ASSERT_EQ(::kill(standby, SIGKILL), 0);
  struct pollfd pfd = {s->event_fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10000), 1);
  EXPECT_TRUE(s->TakeExits().empty());
  EXPECT_EQ(s->pid("d"), worker);
  EXPECT_EQ(s->standby_pid("d"), 0);
  EXPECT_EQ(s->consecutive_failures("d"), 0);
  EXPECT_FALSE(s->restart_at("d").has_value());
  // Started again, later (standby_retry_initial).
  ASSERT_TRUE(s->NextStandby().has_value());
  EXPECT_EQ(s->DueStandbys(*s->NextStandby()), std::vector<std::string>{"d"});
  ::kill(worker, SIGKILL);
  EXPECT_EQ(WaitExits(*s).size(), 1u);
}

TEST(SupervisorStandbyTest, AStandbyThatNeverGetsReadyIsRetriedEverMoreSlowly) {
  // A worker binary that does not know --standby-fd: it refuses to start.
  SupervisorOptions o = StandbyOptions();
  o.now = &FakeNow;
  auto s = Make(o);
  s->Add("d");
  ASSERT_TRUE(s->Spawn("d", {"/bin/sleep", "30"}, {}, {}).ok());
  const pid_t worker = s->pid("d");
  absl::Duration last = absl::ZeroDuration();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(s->SpawnStandby("d", {"/bin/false"}).ok());
    struct pollfd pfd = {s->event_fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&pfd, 1, 10000), 1);
    g_now += absl::Minutes(5);  // however long the exit took to be seen
    const absl::Time now = FakeNow();
    EXPECT_TRUE(s->TakeExits().empty());  // the standby's exit is handled here
    EXPECT_EQ(s->standby_pid("d"), 0);
    ASSERT_TRUE(s->NextStandby().has_value());
    const absl::Duration delay = *s->NextStandby() - now;
    EXPECT_EQ(delay, absl::Seconds(1 << i));  // 1 s, 2 s, 4 s
    EXPECT_GT(delay, last);
    EXPECT_TRUE(s->DueStandbys(*s->NextStandby() - absl::Nanoseconds(1)).empty());
    EXPECT_EQ(s->DueStandbys(*s->NextStandby()), std::vector<std::string>{"d"});
    last = delay;
  }
  EXPECT_EQ(s->pid("d"), worker);
  // A worker restart does not cut the backoff short.
  const absl::Time due = *s->NextStandby();
  ::kill(worker, SIGKILL);
  ASSERT_EQ(WaitExits(*s).size(), 1u);
  ASSERT_TRUE(s->Spawn("d", {"/bin/sleep", "30"}, {}, {}).ok());
  ASSERT_TRUE(s->NextStandby().has_value());
  EXPECT_GE(*s->NextStandby(), due);
  const pid_t worker2 = s->pid("d");
  EXPECT_EQ(s->consecutive_failures("d"), 0);
  ::kill(worker2, SIGKILL);
  EXPECT_EQ(WaitExits(*s).size(), 1u);
}

TEST(SupervisorStandbyTest, AnotherArgvOrBinaryIsNeverPromoted) {
  // A copy of the shim, to be replaced on disk (a package upgrade).
  const std::string bin = TempDir() + "/shim-copy";
  std::filesystem::copy_file(Shim(), bin, std::filesystem::copy_options::overwrite_existing);
  ::chmod(bin.c_str(), 0755);
  auto s = Make(StandbyOptions());
  s->Add("d");
  const std::vector<std::string> argv = {bin, kWorkerScript};
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}).ok());
  ASSERT_TRUE(s->SpawnStandby("d", argv).ok());
  pid_t standby = s->standby_pid("d");
  ASSERT_TRUE(WaitReady(*s, "d"));

  // Another command line (a changed spec): the standby is discarded.
  ::kill(s->pid("d"), SIGKILL);
  ASSERT_EQ(WaitExits(*s).size(), 1u);
  const std::vector<std::string> other = {bin, std::string(kWorkerScript) + " "};
  ASSERT_TRUE(s->Spawn("d", other, {}, {}, /*use_standby=*/true).ok());
  EXPECT_FALSE(s->promoted("d"));
  EXPECT_NE(s->pid("d"), standby);
  EXPECT_EQ(s->standby_pid("d"), 0);
  EXPECT_TRUE(Gone(standby));

  // The binary replaced on disk since the standby started: discarded too.
  ASSERT_TRUE(s->SpawnStandby("d", other).ok());
  standby = s->standby_pid("d");
  ASSERT_TRUE(WaitReady(*s, "d"));
  const std::string fresh = bin + ".new";
  std::filesystem::copy_file(Shim(), fresh, std::filesystem::copy_options::overwrite_existing);
  ASSERT_EQ(::rename(fresh.c_str(), bin.c_str()), 0);
  ::kill(s->pid("d"), SIGKILL);
  ASSERT_EQ(WaitExits(*s).size(), 1u);
  ASSERT_TRUE(s->Spawn("d", other, {}, {}, /*use_standby=*/true).ok());
  EXPECT_FALSE(s->promoted("d"));
  EXPECT_NE(s->pid("d"), standby);
  EXPECT_TRUE(Gone(standby));
  ::kill(s->pid("d"), SIGKILL);
  EXPECT_EQ(WaitExits(*s).size(), 1u);
}

TEST(SupervisorStandbyTest, NoReadyStandbyFallsBackToSpawn) {
  auto s = Make(StandbyOptions());
  s->Add("d");
  const std::vector<std::string> argv = {Shim(), kWorkerScript};
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}).ok());
  // No standby at all: spawned.
  ::kill(s->pid("d"), SIGKILL);
  ASSERT_EQ(WaitExits(*s).size(), 1u);
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}, /*use_standby=*/true).ok());
  EXPECT_FALSE(s->promoted("d"));
  EXPECT_GT(s->pid("d"), 0);
  // A standby still starting: spawned, and it stays the standby.
  ::setenv("SHIM_NO_READY", "1", 1);
  ASSERT_TRUE(s->SpawnStandby("d", argv).ok());
  ::unsetenv("SHIM_NO_READY");
  const pid_t standby = s->standby_pid("d");
  ::kill(s->pid("d"), SIGKILL);
  ASSERT_EQ(WaitExits(*s).size(), 1u);
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}, /*use_standby=*/true).ok());
  EXPECT_FALSE(s->promoted("d"));
  EXPECT_NE(s->pid("d"), standby);
  EXPECT_EQ(s->standby_pid("d"), standby);
  // Without use_standby (create, reset, upgrade) a ready standby is not
  // promoted either.
  ::kill(s->pid("d"), SIGKILL);
  ASSERT_EQ(WaitExits(*s).size(), 1u);
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}).ok());
  EXPECT_FALSE(s->promoted("d"));
  ::kill(s->pid("d"), SIGKILL);
  EXPECT_EQ(WaitExits(*s).size(), 1u);
}

TEST(SupervisorStandbyTest, DiscardKillsTheStandbyAndRemoveToo) {
  auto s = Make(StandbyOptions());
  s->Add("d");
  const std::vector<std::string> argv = {Shim(), kWorkerScript};
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}).ok());
  ASSERT_TRUE(s->SpawnStandby("d", argv).ok());
  pid_t standby = s->standby_pid("d");
  // An upgrade: gone at once, none until the worker starts again.
  s->DiscardStandby("d");
  EXPECT_TRUE(Gone(standby));
  EXPECT_EQ(s->standby_pid("d"), 0);
  EXPECT_TRUE(s->DueStandbys(absl::Now() + absl::Hours(1)).empty());
  absl::Mutex mu;
  {
    // (Stop waits for TakeExits, which this test's loop runs.)
    std::atomic<bool> done{false};
    std::thread loop([&] {
      while (!done) {
        struct pollfd pfd = {s->event_fd(), POLLIN, 0};
        ::poll(&pfd, 1, 10);
        absl::MutexLock lock(&mu);
        s->TakeExits();
      }
    });
    {
      absl::MutexLock lock(&mu);
      ASSERT_TRUE(s->Stop("d", absl::Now() + absl::Seconds(5), mu).ok());
      ASSERT_TRUE(s->Spawn("d", argv, {}, {}).ok());
      EXPECT_EQ(s->DueStandbys(absl::Now()), std::vector<std::string>{"d"});
      ASSERT_TRUE(s->SpawnStandby("d", argv).ok());
      standby = s->standby_pid("d");
      ASSERT_TRUE(s->Stop("d", absl::Now() + absl::Seconds(5), mu).ok());
    }
    done = true;
    loop.join();
  }
  // A deleted device's standby goes with its slot.
  s->Remove("d");
  EXPECT_TRUE(Gone(standby));
}

TEST(SupervisorStandbyTest, AStandbyDiscardedWhileItStartsIsKilled) {
  auto s = Make(StandbyOptions());
  s->Add("d");
  const std::vector<std::string> argv = {Shim(), kWorkerScript};
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}).ok());
  // Reserved: no other is due; not promotable before it is installed.
  auto launch = s->PrepareStandby("d", argv);
  ASSERT_TRUE(launch.ok()) << launch.status();
  EXPECT_TRUE(s->DueStandbys(absl::Now() + absl::Hours(1)).empty());
  EXPECT_EQ(s->standby_pid("d"), 0);
  // An upgrade meanwhile: the one being spawned must never be promoted.
  s->DiscardStandby("d");
  auto proc = Supervisor::LaunchStandby(*launch);
  ASSERT_TRUE(proc.ok()) << proc.status();
  const pid_t pid = proc->pid;
  EXPECT_TRUE(absl::IsAborted(s->InstallStandby(*launch, std::move(proc))));
  EXPECT_TRUE(Gone(pid));
  EXPECT_EQ(s->standby_pid("d"), 0);
  // Not discarded: installed, and promoted like any other.
  auto again = s->PrepareStandby("d", argv);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(s->InstallStandby(*again, Supervisor::LaunchStandby(*again)).ok());
  const pid_t standby = s->standby_pid("d");
  EXPECT_GT(standby, 0);
  ASSERT_TRUE(WaitReady(*s, "d"));
  ::kill(s->pid("d"), SIGKILL);
  ASSERT_EQ(WaitExits(*s).size(), 1u);
  ASSERT_TRUE(s->Spawn("d", argv, {}, {}, /*use_standby=*/true).ok());
  EXPECT_TRUE(s->promoted("d"));
  EXPECT_EQ(s->pid("d"), standby);
  ::kill(standby, SIGKILL);
  EXPECT_EQ(WaitExits(*s).size(), 1u);
}

TEST(SupervisorStandbyTest, OffByDefault) {
  auto s = Make();
  s->Add("d");
  ASSERT_TRUE(s->Spawn("d", {"/bin/sleep", "30"}, {}, {}).ok());
  EXPECT_TRUE(s->DueStandbys(absl::Now() + absl::Hours(1)).empty());
  EXPECT_FALSE(s->NextStandby().has_value());
  ::kill(s->pid("d"), SIGKILL);
  EXPECT_EQ(WaitExits(*s).size(), 1u);
}

}  // namespace
}  // namespace emud::server
