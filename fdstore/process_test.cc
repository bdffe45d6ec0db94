#include "fdstore/process.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace emud::fdstore {
namespace {

void WaitExit(const Process& p) {
  struct pollfd pfd = {p.pidfd.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10000), 1);
}

TEST(ProcessTest, ExitStatusIsReported) {
  auto p = SpawnWithFds({"/bin/sh", "-c", "exit 3"});
  ASSERT_TRUE(p.ok()) << p.status();
  WaitExit(*p);
  EXPECT_TRUE(HasExited(*p));
  EXPECT_EQ(ReapAndDescribe(*p), "exited with status 3");
}

TEST(ProcessTest, SignalThroughPidfdAndNewSession) {
  auto p = SpawnWithFds({"/bin/sleep", "30"});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(HasExited(*p));
  EXPECT_EQ(::getsid(p->pid), p->pid);  // its own session
  EXPECT_GT(p->start_ticks, 0u);
  ASSERT_TRUE(SignalProcess(*p, SIGKILL).ok());
  WaitExit(*p);
  EXPECT_NE(ReapAndDescribe(*p).find("killed by signal 9"), std::string::npos);
  // Signalling a reaped process through its pidfd is harmless.
  EXPECT_TRUE(SignalProcess(*p, SIGTERM).ok());
}

// A real-time start (emud --startup-rt-priority) and its end from outside.
TEST(ProcessTest, RealtimeStartAndItsEnd) {
  auto p = SpawnWithFds({"/bin/sleep", "30"}, {}, {}, /*rt_priority=*/1);
  if (absl::IsPermissionDenied(p.status())) GTEST_SKIP() << "no CAP_SYS_NICE: " << p.status();
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(::sched_getscheduler(p->pid) & ~SCHED_RESET_ON_FORK, SCHED_FIFO);
  sched_param sp{};
  ASSERT_EQ(::sched_getparam(p->pid, &sp), 0);
  EXPECT_EQ(sp.sched_priority, 1);
  ASSERT_TRUE(EndRealtime(*p).ok());
  EXPECT_EQ(::sched_getscheduler(p->pid), SCHED_OTHER);
  ASSERT_TRUE(SignalProcess(*p, SIGKILL).ok());
  WaitExit(*p);
  ReapAndDescribe(*p);
  EXPECT_TRUE(EndRealtime(*p).ok());  // gone: nothing to do
}

TEST(ProcessTest, DescriptorsAreNotInheritedAndSignalsAreReset) {
  int fd = ::open("/dev/null", O_RDONLY);  // no O_CLOEXEC on purpose
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::dup2(fd, 47), 47);
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  auto p = SpawnWithFds({"/bin/sh", "-c", "test -e /proc/self/fd/47 && exit 1; sleep 30"});
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::close(47);
  ::close(fd);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(SignalProcess(*p, SIGTERM).ok());  // would hang if SIGTERM stayed blocked
  WaitExit(*p);
  EXPECT_NE(ReapAndDescribe(*p).find("signal 15"), std::string::npos);
}

TEST(ProcessTest, InheritedFdsAndEnvironment) {
  int pipefd[2];
  ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
  int extra = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  // The child writes EMUD_FDS and EXTRA to the inherited pipe (fd 3) and
  // checks that fd 4 is /dev/null and nothing else is open above it.
  auto p = SpawnWithFds(
      {"/bin/sh", "-c",
       "echo \"$EMUD_FDS $EXTRA\" >&3; test -e /proc/self/fd/4 || exit 4; "
       "test -e /proc/self/fd/6 && exit 6; exit 0"},
      {{"pipe", pipefd[1]}, {"null", extra}}, {"EXTRA=yes"});
  ::close(pipefd[1]);
  ::close(extra);
  ASSERT_TRUE(p.ok()) << p.status();
  WaitExit(*p);
  EXPECT_EQ(ReapAndDescribe(*p), "exited with status 0");
  char buf[128] = {0};
  ASSERT_GT(::read(pipefd[0], buf, sizeof(buf) - 1), 0);
  ::close(pipefd[0]);
  EXPECT_EQ(std::string(buf), "pipe=3,null=4 yes\n");
}

TEST(ProcessTest, MissingBinaryFails) {
  auto p = SpawnWithFds({"/nonexistent/emud-worker"});
  EXPECT_FALSE(p.ok());
  EXPECT_FALSE(SpawnWithFds({"relative"}).ok());
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_EQ(SpawnWithFds({"/bin/true"}, {{"a,b", fd}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ::close(fd);
}

TEST(ProcessTest, AdoptChecksStartTime) {
  auto p = SpawnWithFds({"/bin/sleep", "30"});
  ASSERT_TRUE(p.ok());
  auto wrong = AdoptProcess(p->pid, p->start_ticks + 1);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kNotFound);
  auto right = AdoptProcess(p->pid, p->start_ticks);
  ASSERT_TRUE(right.ok()) << right.status();
  EXPECT_TRUE(right->is_child);
  ASSERT_TRUE(SignalProcess(*right, SIGKILL).ok());
  WaitExit(*right);
  EXPECT_TRUE(HasExited(*p));
  ReapAndDescribe(*p);
  EXPECT_EQ(AdoptProcess(p->pid, p->start_ticks).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace emud::fdstore
