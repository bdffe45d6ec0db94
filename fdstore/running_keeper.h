// Test helper: an emud-keeper (fdstore::Keeper) serving on `path` in a thread
// of the test process, stopped and joined on destruction.
#ifndef EMUD_FDSTORE_RUNNING_KEEPER_H_
#define EMUD_FDSTORE_RUNNING_KEEPER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "fdstore/keeper.h"
#include "gtest/gtest.h"

namespace emud::fdstore {

struct RunningKeeper {
  std::unique_ptr<Keeper> keeper;
  std::atomic<bool> stop{false};
  std::thread thread;
  // keeper->fds_held() once started (what it took over), read before its
  // thread runs: the Keeper is single-threaded, and its state may only be
  // read from another thread once `thread` has been joined.
  size_t fds_at_start = 0;
  // Starts (or takes over from the keeper already serving `path`).
  explicit RunningKeeper(const std::string& path) {
    auto k = Keeper::Start(path);
    EXPECT_TRUE(k.ok()) << k.status();
    if (!k.ok()) return;
    keeper = std::move(*k);
    fds_at_start = keeper->fds_held();
    thread = std::thread([this] { EXPECT_TRUE(keeper->Run(&stop).ok()); });
  }
  ~RunningKeeper() {
    stop = true;
    if (thread.joinable()) thread.join();
  }
};

}  // namespace emud::fdstore

#endif  // EMUD_FDSTORE_RUNNING_KEEPER_H_
