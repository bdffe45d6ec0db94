// emud under emud-init (the container's PID 1 in deploy/k8s): emud killed
// is restarted by emud-init and adopts the running worker; the worker,
// orphaned, becomes emud-init's child, is restarted by the new emud when it
// dies and reaped by emud-init (no zombie); SIGTERM stops everything cleanly.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/integration/emud_harness.h"

namespace emud::testing {
namespace {

namespace v1 = emud::v1;

// /proc/PID/stat fields: state and parent pid; {0, 0} if gone.
struct Stat {
  char state = 0;
  pid_t ppid = 0;
};
Stat ReadStat(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(f, line)) return {};
  size_t close = line.rfind(')');
  if (close == std::string::npos || close + 4 >= line.size()) return {};
  std::vector<std::string> rest = absl::StrSplit(line.substr(close + 2), ' ');
  if (rest.size() < 2) return {};
  return {rest[0][0], pid_t(std::atoi(rest[1].c_str()))};
}

// The child of `parent` running `exe_name` (by /proc/PID/comm), or 0.
pid_t ChildNamed(pid_t parent, const std::string& comm) {
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    pid_t pid = std::atoi(e.path().filename().c_str());
    if (pid <= 0) continue;
    std::ifstream c(e.path() / "comm");
    std::string name;
    std::getline(c, name);
    if (name == comm && ReadStat(pid).ppid == parent) return pid;
  }
  return 0;
}

TEST(EmudInitTest, EmudCrashKeepsWorkersAndOrphansAreReaped) {
  TempStateDir dir("init");
  EmudProcess::Options o;
  o.state_dir = dir.path() + "/state";
  o.worker_binary = Runfile("dataplane/emud-worker");
  o.metrics = false;
  o.wrapper = {Runfile("server/emud-init"), "--backoff-initial-ms", "20", "--"};
  o.extra_flags = {"--stop-workers-on-exit"};
  auto started = EmudProcess::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<EmudProcess> e = std::move(*started);
  const pid_t init = e->pid();

  CommandResult c = e->Emuctl({"create-device", "--type", "avf", "--name", "n0", "--backend",
                               "loopback", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err << e->Log();
  auto dev = GetDevice(e->stub(), "n0");
  ASSERT_TRUE(dev.ok());
  const pid_t worker = dev->status().worker_pid();
  ASSERT_GT(worker, 0);
  const pid_t emud1 = ChildNamed(init, "emud");
  ASSERT_GT(emud1, 0) << "emud runs as emud-init's child";
  EXPECT_EQ(ReadStat(worker).ppid, emud1);

  // emud dies: emud-init restarts it, the worker keeps running and is adopted.
  ASSERT_EQ(::kill(emud1, SIGKILL), 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto d = GetDevice(e->stub(), "n0");
        return d.ok() && d->status().phase() == v1::PHASE_LISTENING;
      },
      absl::Seconds(10)))
      << e->Log();
  // The new emud is the one answering (not any child of emud-init named
  // "emud": a worker the dead emud was spawning is one until its exec).
  pid_t emud2 = 0;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ServerInfo info;
    ASSERT_TRUE(e->stub()->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info).ok());
    emud2 = info.pid();
  }
  ASSERT_GT(emud2, 0);
  EXPECT_NE(emud2, emud1);
  EXPECT_EQ(ReadStat(emud2).ppid, init) << "emud-init restarted emud";
  dev = GetDevice(e->stub(), "n0");
  ASSERT_TRUE(dev.ok());
  EXPECT_EQ(dev->status().worker_pid(), worker) << "the running worker was adopted, not replaced";
  EXPECT_EQ(ReadStat(worker).ppid, init) << "the orphaned worker is emud-init's child";
  EXPECT_NE(e->Log().find("adopted running worker pid " + std::to_string(worker)), std::string::npos);

  // The adopted worker dies: the new emud restarts it, emud-init reaps it.
  ASSERT_EQ(::kill(worker, SIGKILL), 0);
  pid_t worker2 = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto d = GetDevice(e->stub(), "n0");
        worker2 = d.ok() ? d->status().worker_pid() : 0;
        return worker2 > 0 && worker2 != worker && d->status().phase() == v1::PHASE_LISTENING;
      },
      absl::Seconds(10)))
      << e->Log();
  EXPECT_TRUE(WaitFor([&] { return ReadStat(worker).state == 0; }, absl::Seconds(30)))
      << "the dead worker is reaped, not left a zombie (state " << ReadStat(worker).state << ")";
  EXPECT_EQ(ReadStat(worker2).ppid, emud2) << e->Log();

  // SIGTERM: emud stops its workers and exits 0; emud-init exits with it.
  int status = e->Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_TRUE(WaitFor([&] { return ReadStat(worker2).state == 0 || ReadStat(worker2).state == 'Z'; },
                      absl::Seconds(30)));
  EXPECT_EQ(ReadStat(emud2).state, 0);
}

// Starts emud-init with `cmd` as its "emud"; returns emud-init's pid.
pid_t StartInit(const std::vector<std::string>& cmd) {
  std::vector<std::string> argv = {Runfile("server/emud-init"), "--"};
  argv.insert(argv.end(), cmd.begin(), cmd.end());
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    ::execv(a[0], a.data());
    ::_exit(127);
  }
  return pid;
}

// A surge rollout deletes the old pod once the new one is ready, which can be
// before the old emud finished its handover: SIGTERM reaches emud-init while
// emud is about to exit 75. The pod still ends cleanly (0), as it does when
// the SIGTERM comes after the handover.
TEST(EmudInitTest, AHandoverIsACleanExitEvenWhenSigtermCrossesIt) {
  const std::string ready = absl::StrCat(::testing::TempDir(), "/init-ready-", ::getpid());
  std::filesystem::remove(ready);
  // SIGTERM arrives mid-handover: emud finishes it, then exits 75.
  pid_t init = StartInit({"/bin/sh", "-c",
                          "trap 'sleep 0.1; exit 75' TERM; touch \"$0\"; while :; do sleep 0.02; done",
                          ready});
  ASSERT_GT(init, 0);
  ASSERT_TRUE(WaitFor([&] { return std::filesystem::exists(ready); }, absl::Seconds(10)));
  ::kill(init, SIGTERM);
  int st = 0;
  ASSERT_EQ(::waitpid(init, &st, 0), init);
  ASSERT_TRUE(WIFEXITED(st)) << st;
  EXPECT_EQ(WEXITSTATUS(st), 0);

  // The handover ends first: emud-init does not restart emud and exits 0 on
  // the SIGTERM that follows. Anything else emud exits with is reported.
  std::filesystem::remove(ready);
  init = StartInit({"/bin/sh", "-c", "touch \"$0\"; exit 75", ready});
  ASSERT_TRUE(WaitFor([&] { return std::filesystem::exists(ready); }, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(300));  // emud-init saw the exit; no restart follows
  std::filesystem::remove(ready);
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(std::filesystem::exists(ready)) << "emud-init restarted an emud that handed over";
  ::kill(init, SIGTERM);
  ASSERT_EQ(::waitpid(init, &st, 0), init);
  ASSERT_TRUE(WIFEXITED(st)) << st;
  EXPECT_EQ(WEXITSTATUS(st), 0);

  init = StartInit({"/bin/sh", "-c", "trap 'exit 3' TERM; touch \"$0\"; while :; do sleep 0.02; done",
                    ready});
  ASSERT_TRUE(WaitFor([&] { return std::filesystem::exists(ready); }, absl::Seconds(10)));
  ::kill(init, SIGTERM);
  ASSERT_EQ(::waitpid(init, &st, 0), init);
  ASSERT_TRUE(WIFEXITED(st)) << st;
  EXPECT_EQ(WEXITSTATUS(st), 3);
  std::filesystem::remove(ready);
}

TEST(EmudInitTest, RefusesAMissingCommand) {
  CommandResult r = RunCommand({Runfile("server/emud-init")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no command after '--'"), std::string::npos) << r.err;
  r = RunCommand({Runfile("server/emud-init"), "--backoff-max-ms", "0", "--", "/bin/true"});
  EXPECT_EQ(r.exit_code, 2);
}

}  // namespace
}  // namespace emud::testing
