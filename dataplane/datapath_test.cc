// DataPath's data-path threads: lanes start and stop, the control thread's
// pause handshake parks them (nested brackets count), and queue pairs and
// backend queues are placed q -> lane q % N.
#include "dataplane/datapath.h"

#include <chrono>
#include <thread>

#include "avf/device.h"
#include "gtest/gtest.h"

namespace emud::dataplane {
namespace {

std::unique_ptr<avf::Device> MakeDevice() {
  avf::DeviceOptions o;
  o.max_queue_pairs = 4;
  auto d = avf::Device::Create(o);
  EXPECT_TRUE(d.ok()) << d.status();
  return std::move(*d);
}

// Rounds of lane t while `for_ms` pass.
uint64_t RoundsDuring(DataPath& dp, uint32_t t, int for_ms) {
  const uint64_t r0 = dp.lane_rounds(t);
  std::this_thread::sleep_for(std::chrono::milliseconds(for_ms));
  return dp.lane_rounds(t) - r0;
}

// Waits (up to 30 s: TSan and a loaded 2-core machine) until lane t ran at
// least one more round.
bool LaneRuns(DataPath& dp, uint32_t t) {
  const uint64_t r0 = dp.lane_rounds(t);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < until) {
    if (dp.lane_rounds(t) > r0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return dp.lane_rounds(t) > r0;
}

TEST(DataPathThreads, PlacementIsQueueModuloThreads) {
  auto dev = MakeDevice();
  auto backend = MakeLoopbackBackend();
  auto state = QueueStateFile::Anonymous();
  DataPathOptions o;
  o.threads = 3;
  DataPath dp(dev.get(), backend.get(), state.get(), o);
  EXPECT_EQ(dp.threads(), 3u);
  for (uint32_t q = 0; q < kMaxQueues; ++q) EXPECT_EQ(dp.LaneOf(q), q % 3);
  // The same queue pair moves when the thread count changes (a worker
  // restarted with another --datapath-threads): its state is in the queue
  // file, not in the lane, so the new owner simply continues it.
  o.threads = 2;
  DataPath dp2(dev.get(), backend.get(), state.get(), o);
  EXPECT_EQ(dp2.LaneOf(3), 1u);
  EXPECT_NE(dp.LaneOf(3), dp2.LaneOf(3));
}

TEST(DataPathThreads, OneThreadStartsNothing) {
  auto dev = MakeDevice();
  auto backend = MakeLoopbackBackend();
  auto state = QueueStateFile::Anonymous();
  DataPath dp(dev.get(), backend.get(), state.get());
  EXPECT_EQ(dp.threads(), 1u);
  EXPECT_EQ(dp.wake_fd(), -1);
  ASSERT_TRUE(dp.StartThreads().ok());
  EXPECT_FALSE(dp.threads_running());
  DataPath::PauseGuard pause(&dp);  // a no-op without lanes
}

TEST(DataPathThreads, PauseParksEveryLaneUntilTheLastBracketCloses) {
  auto dev = MakeDevice();
  auto backend = MakeLoopbackBackend();
  auto state = QueueStateFile::Anonymous();
  DataPathOptions o;
  o.threads = 3;
  DataPath dp(dev.get(), backend.get(), state.get(), o);
  ASSERT_TRUE(dp.StartThreads().ok());
  ASSERT_TRUE(dp.threads_running());
  // A trapped doorbell of queue 1 / 2 wakes lane 1 / 2 (and keeps it
  // polling: no guest memory is attached, so the kick stays pending).
  dp.OnTxDoorbell(1);
  dp.OnTxDoorbell(2);
  ASSERT_TRUE(LaneRuns(dp, 1));
  ASSERT_TRUE(LaneRuns(dp, 2));
  {
    DataPath::PauseGuard outer(&dp);
    // Parked: once the bracket is held, no lane starts a round.
    EXPECT_EQ(RoundsDuring(dp, 1, 30), 0u);
    EXPECT_EQ(RoundsDuring(dp, 2, 0), 0u);
    {
      DataPath::PauseGuard inner(&dp);  // a hook inside a dispatch
    }
    dp.OnTxDoorbell(1);  // a doorbell while parked wakes nobody into a round
    EXPECT_EQ(RoundsDuring(dp, 1, 30), 0u);
  }
  EXPECT_TRUE(LaneRuns(dp, 1));
  EXPECT_TRUE(LaneRuns(dp, 2));
  dp.StopThreads();
  EXPECT_FALSE(dp.threads_running());
  const uint64_t stopped = dp.lane_rounds(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(dp.lane_rounds(1), stopped);
  // And again (a worker's Run may be entered once, but StopThreads is
  // idempotent and threads restart cleanly).
  ASSERT_TRUE(dp.StartThreads().ok());
  EXPECT_TRUE(LaneRuns(dp, 1));
}

TEST(DataPathThreads, HooksQuiesceFromTheControlThread) {
  auto dev = MakeDevice();
  auto backend = MakeLoopbackBackend();
  auto state = QueueStateFile::Anonymous();
  DataPathOptions o;
  o.threads = 2;
  DataPath dp(dev.get(), backend.get(), state.get(), o);
  ASSERT_TRUE(dp.StartThreads().ok());
  dp.OnTxDoorbell(1);
  ASSERT_TRUE(LaneRuns(dp, 1));
  // Each hook brackets itself; many in a row while lane 1 spins never
  // deadlock and leave the lane running.
  for (int i = 0; i < 1000; ++i) {
    dp.OnFiltersChanged();
    dp.OnDmaUnmap(0x1000, 0x1000);
    dp.OnQueuesDisabled(0x3, 0x3);
    avf::vc::EthStats s;
    dp.GetStats(&s);
  }
  EXPECT_TRUE(LaneRuns(dp, 1));
}

}  // namespace
}  // namespace emud::dataplane
