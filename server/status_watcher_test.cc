#include "server/status_watcher.h"

#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>

#include "gtest/gtest.h"
#include "state_store/record.h"
#include "state_store/state_dir.h"
#include "state_store/store.h"
#include "worker_api/status_record.h"

namespace emud::server {
namespace {

using emud::internal::WorkerStatus;

// A worker's side: publishes its status record in the device environment.
class Publisher {
 public:
  Publisher(const std::string& state_dir, const std::string& device) {
    state_store::EnvOptions eo;
    eo.tables = {worker_api::kStatusTable};
    auto env = state_store::Env::Open(state_store::DeviceEnvDir(state_dir, device), eo);
    EXPECT_TRUE(env.ok()) << env.status();
    env_ = std::move(*env);
  }
  void Publish(const WorkerStatus& st) {
    const state_store::RecordTable<WorkerStatus> table{worker_api::kStatusTable};
    ASSERT_TRUE(env_->Update([&](state_store::WriteTxn& txn) {
                      return table.Put(txn, worker_api::kStatusKey, st);
                    }).ok());
  }

 private:
  std::unique_ptr<state_store::Env> env_;
};

std::string TempDir() {
  char tmpl[] = "/tmp/status-watcher-XXXXXX";
  return ::mkdtemp(tmpl);
}

WorkerStatus Status(pid_t pid, WorkerStatus::Phase phase, int64_t stamp) {
  WorkerStatus st;
  st.set_pid(pid);
  st.set_phase(phase);
  st.set_updated_unix_nanos(stamp);
  return st;
}

TEST(StatusWatcherTest, ReadSeesChangesTimestampsAndMissedPhases) {
  const std::string dir = TempDir();
  int records = 0;
  auto w = StatusWatcher::Create({dir}, [&](const std::string& d, const WorkerStatus&) {
    EXPECT_EQ(d, "dev");
    ++records;
  });
  ASSERT_TRUE(w.ok()) << w.status();
  (*w)->Watch("dev");
  EXPECT_EQ((*w)->Read("dev", 42), StatusWatcher::Refresh::kNothingNew);  // nothing published
  EXPECT_EQ((*w)->status("dev"), nullptr);
  Publisher pub(dir, "dev");
  WorkerStatus st = Status(42, WorkerStatus::LISTENING, 1);
  pub.Publish(st);
  EXPECT_EQ((*w)->Read("dev", 42), StatusWatcher::Refresh::kChanged);
  ASSERT_NE((*w)->status("dev"), nullptr);
  EXPECT_EQ((*w)->status("dev")->phase(), WorkerStatus::LISTENING);
  EXPECT_EQ((*w)->Read("dev", 42), StatusWatcher::Refresh::kNothingNew);
  st.set_updated_unix_nanos(2);
  pub.Publish(st);
  EXPECT_EQ((*w)->Read("dev", 42), StatusWatcher::Refresh::kTimestampOnly);
  EXPECT_EQ(records, 1);
  // CONNECTED and LINK_UP came and went between two reads.
  st = Status(42, WorkerStatus::LISTENING, 3);
  int seq = 0;
  for (auto p : {WorkerStatus::CONNECTED, WorkerStatus::LINK_UP, WorkerStatus::LISTENING}) {
    auto* c = st.add_recent_phases();
    c->set_seq(++seq);
    c->set_phase(p);
  }
  st.set_phase_seq(seq);
  pub.Publish(st);
  EXPECT_EQ((*w)->Read("dev", 42), StatusWatcher::Refresh::kChanged);
  EXPECT_EQ((*w)->TakeMissedPhases("dev"),
            (std::vector<WorkerStatus::Phase>{WorkerStatus::CONNECTED, WorkerStatus::LINK_UP}));
  EXPECT_TRUE((*w)->TakeMissedPhases("dev").empty());
  (*w)->Unwatch("dev");
  EXPECT_EQ((*w)->status("dev"), nullptr);
  std::filesystem::remove_all(dir);
}

// The watcher's clock in the test that checks its schedule: time moves only
// when the test says so, so a loaded machine cannot make the fallback due
// while the test waits for the commit's event.
absl::Time FakeNow() { return absl::FromUnixSeconds(1'000'000); }

TEST(StatusWatcherTest, ACommitWakesTheLoopAndPollReadsIt) {
  const std::string dir = TempDir();
  StatusWatcherOptions o{dir};
  o.now = &FakeNow;
  auto w = StatusWatcher::Create(o, nullptr);
  ASSERT_TRUE(w.ok());
  (*w)->Watch("dev");
  Publisher pub(dir, "dev");
  pub.Publish(Status(7, WorkerStatus::LISTENING, 1));
  struct pollfd pfd = {(*w)->event_fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 5000), 1);
  (*w)->HandleEvents();
  std::vector<std::pair<std::string, StatusWatcher::Reason>> reads;
  auto read = [&](const std::string& d, StatusWatcher::Reason why) {
    reads.emplace_back(d, why);
    (*w)->Read(d, 7);
  };
  const absl::Time now = FakeNow();
  (*w)->Poll(now, read);
  ASSERT_EQ(reads.size(), 1u);
  EXPECT_EQ(reads[0].second, StatusWatcher::Reason::kChanged);
  ASSERT_NE((*w)->status("dev"), nullptr);
  // Read once more shortly after (a commit LMDB had not published yet).
  EXPECT_EQ((*w)->NextPoll(), now + absl::Milliseconds(10));
  (*w)->Poll(now + absl::Milliseconds(10), read);
  ASSERT_EQ(reads.size(), 2u);
  EXPECT_EQ(reads[1].second, StatusWatcher::Reason::kSettle);
  // The safety net reads every device, `fallback` after the start.
  EXPECT_EQ((*w)->NextPoll(), now + absl::Seconds(2));
  (*w)->Poll(now + absl::Seconds(2) - absl::Nanoseconds(1), read);
  EXPECT_EQ(reads.size(), 2u);
  (*w)->Poll(now + absl::Seconds(2), read);
  ASSERT_EQ(reads.size(), 3u);
  EXPECT_EQ(reads[2].second, StatusWatcher::Reason::kFallback);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace emud::server
