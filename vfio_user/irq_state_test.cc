#include "vfio_user/irq_state.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "gtest/gtest.h"
#include "vfio_user/protocol.h"

namespace emud::vfio_user {
namespace {

uint64_t Drain(int fd) {
  uint64_t v = 0;
  return ::read(fd, &v, sizeof(v)) == sizeof(v) ? v : 0;
}

std::vector<UniqueFd> One(int fd) {
  std::vector<UniqueFd> v;
  v.emplace_back(::dup(fd));
  return v;
}

TEST(IrqStateTest, PendingCoalescesAndFiresOnUnmask) {
  IrqState irqs({0, 0, 4});
  UniqueFd efd(::eventfd(0, EFD_NONBLOCK));
  ASSERT_TRUE(irqs.SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kMsixIrq, 1, 1, One(efd.get()), {}).ok());
  ASSERT_TRUE(irqs.SetIrqs(kIrqSetDataNone | kIrqSetActionMask, kMsixIrq, 1, 1, {}, {}).ok());
  for (int i = 0; i < 5; ++i) irqs.TriggerMsix(1);
  EXPECT_TRUE(irqs.MsixPending(1));
  EXPECT_EQ(Drain(efd.get()), 0u);
  ASSERT_TRUE(irqs.SetIrqs(kIrqSetDataNone | kIrqSetActionUnmask, kMsixIrq, 1, 1, {}, {}).ok());
  EXPECT_EQ(Drain(efd.get()), 1u);  // coalesced
  EXPECT_FALSE(irqs.MsixPending(1));
  // Function mask and guest mask.
  irqs.SetMsixControl(true, true);
  irqs.TriggerMsix(1);
  EXPECT_EQ(Drain(efd.get()), 0u);
  irqs.SetMsixControl(true, false);
  EXPECT_EQ(Drain(efd.get()), 1u);
  irqs.SetMsixGuestMask(1, true);
  irqs.TriggerMsix(1);
  EXPECT_EQ(Drain(efd.get()), 0u);
  irqs.SetMsixGuestMask(1, false);
  EXPECT_EQ(Drain(efd.get()), 1u);
  // Out of range vectors are counted, not crashing.
  irqs.TriggerMsix(4);
  irqs.TriggerMsix(0xffffffff);
  EXPECT_EQ(irqs.dropped(), 2u);
  EXPECT_FALSE(irqs.MsixPending(99));
  // Range validation inside SetIrqs too.
  EXPECT_FALSE(irqs.SetIrqs(kIrqSetDataNone | kIrqSetActionMask, kMsixIrq, 3, 2, {}, {}).ok());
}

TEST(IrqStateTest, TriggerFromAnotherThreadWhileReconfiguring) {
  IrqState irqs({0, 0, 2});
  UniqueFd efd(::eventfd(0, EFD_NONBLOCK));
  ASSERT_TRUE(irqs.SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kMsixIrq, 0, 1, One(efd.get()), {}).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> triggers{0};
  std::thread t([&] {
    while (!stop) {
      irqs.TriggerMsix(0);
      ++triggers;
    }
  });
  for (int i = 0; i < 2000 || triggers < 20000; ++i) {
    ASSERT_TRUE(irqs.SetIrqs(kIrqSetDataNone | kIrqSetActionMask, kMsixIrq, 0, 1, {}, {}).ok());
    ASSERT_TRUE(irqs.SetIrqs(kIrqSetDataNone | kIrqSetActionUnmask, kMsixIrq, 0, 1, {}, {}).ok());
    if (i % 100 == 0) {
      ASSERT_TRUE(irqs.SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kMsixIrq, 0, 1, One(efd.get()), {}).ok());
    }
  }
  stop = true;
  t.join();
  EXPECT_GT(Drain(efd.get()), 0u);
  EXPECT_FALSE(irqs.MsixPending(0));  // last action was an unmask with an eventfd
}

}  // namespace
}  // namespace emud::vfio_user
