#include "base/poison_guard.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace emud {
namespace {

std::string TempPath(const char* name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string p = std::string(tmp != nullptr ? tmp : "/tmp") + "/" + name;
  std::filesystem::remove(p);
  return p;
}

// Runs `body` in a child process that dies by SIGKILL when body returns.
template <typename F>
void DieIn(F body) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    body();
    ::kill(::getpid(), SIGKILL);
    ::_exit(0);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(st));
}

TEST(PoisonGuardTest, DeathsInsideTheSameInputAccumulate) {
  const std::string path = TempPath("guard1");
  for (uint32_t i = 0; i < PoisonGuard::kQuarantineAfter; ++i) {
    DieIn([&] {
      auto g = PoisonGuard::Open(path);
      if (!g.ok()) ::_exit(1);
      // Each successor sees the deaths of its predecessors on this key.
      if ((*g)->Enter(PoisonGuard::kVfioRequest, 42) != i) ::_exit(2);
    });
  }
  auto g = PoisonGuard::Open(path);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)->DeathsAtOpen(PoisonGuard::kVfioRequest), PoisonGuard::kQuarantineAfter);
  EXPECT_EQ((*g)->Enter(PoisonGuard::kVfioRequest, 42), PoisonGuard::kQuarantineAfter);
  (*g)->Leave(PoisonGuard::kVfioRequest);
  // Handled (quarantined): forgotten.
  EXPECT_EQ((*g)->Enter(PoisonGuard::kVfioRequest, 42), 0u);
}

TEST(PoisonGuardTest, KillOutsideTheHandlingIsNotADeath) {
  const std::string path = TempPath("guard2");
  for (int i = 0; i < 5; ++i) {
    DieIn([&] {
      auto g = PoisonGuard::Open(path);
      if (!g.ok()) ::_exit(1);
      (*g)->Enter(PoisonGuard::kTxQueue, 7);
      (*g)->Leave(PoisonGuard::kTxQueue);  // killed after the burst
    });
  }
  // A successor killed before it entered anything adds nothing either.
  DieIn([&] { (void)PoisonGuard::Open(path); });
  auto g = PoisonGuard::Open(path);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->Enter(PoisonGuard::kTxQueue, 7), 0u);
}

TEST(PoisonGuardTest, SuccessorDyingBeforeReEnteringDoesNotChargeAgain) {
  const std::string path = TempPath("guard3");
  DieIn([&] {
    auto g = PoisonGuard::Open(path);
    (*g)->Enter(PoisonGuard::kVfioRequest, 9);
  });
  DieIn([&] { (void)PoisonGuard::Open(path); });  // e.g. rapid kill right after start
  auto g = PoisonGuard::Open(path);
  EXPECT_EQ((*g)->Enter(PoisonGuard::kVfioRequest, 9), 1u);
}

TEST(PoisonGuardTest, TheDeepestActiveLevelTakesTheBlame) {
  const std::string path = TempPath("guard4");
  for (int i = 0; i < 2; ++i) {
    DieIn([&] {
      auto g = PoisonGuard::Open(path);
      (*g)->Enter(PoisonGuard::kVfioRequest, 100);  // the ATQT write...
      (*g)->Enter(PoisonGuard::kVirtchnl, 200);     // ...ran this message
    });
  }
  auto g = PoisonGuard::Open(path);
  EXPECT_EQ((*g)->Enter(PoisonGuard::kVfioRequest, 100), 0u);
  EXPECT_EQ((*g)->Enter(PoisonGuard::kVirtchnl, 200), 2u);
}

TEST(PoisonGuardTest, AnotherKeyStartsFromZero) {
  auto g = PoisonGuard::InMemory();
  EXPECT_EQ(g->Enter(PoisonGuard::kVirtchnl, 1), 0u);
  EXPECT_EQ(g->Enter(PoisonGuard::kVirtchnl, 2), 0u);
  g->Leave(PoisonGuard::kVirtchnl);
}

}  // namespace
}  // namespace emud
