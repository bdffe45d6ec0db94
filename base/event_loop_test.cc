#include "base/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <thread>

#include "gtest/gtest.h"

namespace emud {
namespace {

TEST(EventLoopTest, DispatchRemoveInsideHandlerAndStop) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  UniqueFd a(::eventfd(1, EFD_NONBLOCK)), b(::eventfd(1, EFD_NONBLOCK));
  int a_calls = 0, b_calls = 0;
  ASSERT_TRUE((*loop)->Add(a.get(), EPOLLIN, [&](uint32_t) {
    ++a_calls;
    (*loop)->Remove(a.get());
    (*loop)->Remove(b.get());  // b must not run after removal
  }).ok());
  ASSERT_TRUE((*loop)->Add(b.get(), EPOLLIN, [&](uint32_t) {
    ++b_calls;
    (*loop)->Remove(b.get());
    (*loop)->Remove(a.get());
  }).ok());
  EXPECT_EQ((*loop)->Add(a.get(), EPOLLIN, [](uint32_t) {}).code(), absl::StatusCode::kAlreadyExists);
  auto n = (*loop)->RunOnce(absl::Seconds(1));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(a_calls + b_calls, 1);  // whichever ran first removed the other
  EXPECT_FALSE((*loop)->Watching(a.get()));
  std::thread t([&] { (*loop)->Stop(); });
  EXPECT_TRUE((*loop)->Run().ok());
  t.join();
}

TEST(EventLoopTest, IdleLoopBlocks) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  (*loop)->set_busy_poll(absl::Microseconds(100));
  auto n = (*loop)->RunOnce(absl::Milliseconds(20));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0);
}

}  // namespace
}  // namespace emud
