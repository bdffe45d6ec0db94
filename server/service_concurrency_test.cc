// emud's gRPC service under concurrency, in one process: DeviceServiceImpl's
// handlers called from many threads at once, as gRPC's sync-server thread
// pool calls them in emud, on a real DeviceManager whose supervision loop,
// status watcher, fd store and standby spawner run the real emud-worker.
// Clients create, read, reset, upgrade and delete devices while workers are
// killed under them and two watches follow the events; then emud's shutdown
// order (BeginShutdown, manager Shutdown) ends the watches. A second test
// begins a handover to a successor emud (with emud-keeper), releases a device
// and aborts while handlers run. Under --config=tsan this puts the service's
// handlers and DeviceManager's locking under ThreadSanitizer
// (tools/sanitizers/BUILD.bazel).
//
// The handlers are called directly, each with a grpc::ServerContext of its
// own (no deadline, never cancelled), without gRPC's transport: Debian's
// gRPC is not built with TSan, and a grpc::Server in the process makes TSan
// report every object gRPC hands between its threads through its
// uninstrumented queues (tools/sanitizers/README.md). The watches run
// WatchDevices' own loop (DeviceManager::Snapshot, then WaitForEvents until
// shutdown); the handler's grpc::ServerWriter needs a live call, so the
// handler itself runs only up to its snapshot (a watch of a name that does not
// exist).
// emud_integration_test serves the same handlers through gRPC (plain and
// ASan).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/server_context.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "fdstore/running_keeper.h"
#include "gtest/gtest.h"
#include "proto/emud_v1.pb.h"
#include "server/device_manager.h"
#include "server/metrics.h"
#include "server/service.h"

namespace emud::server {
namespace {

namespace v1 = emud::v1;

std::string Runfile(const std::string& rel) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/emud/", rel);
}

// Polls `cond` for up to 60 s (the loop reacts in milliseconds; TSan and a
// loaded 2-core machine stretch that).
template <typename F>
bool Eventually(F cond) {
  for (int i = 0; i < 6000; ++i) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

// What one WatchDevices stream received.
struct WatchLog {
  absl::Mutex mu;
  std::vector<v1::DeviceEvent> events ABSL_GUARDED_BY(mu);
  DeviceManager::WaitResult end ABSL_GUARDED_BY(mu) = DeviceManager::WaitResult::kTimeout;
  bool ended ABSL_GUARDED_BY(mu) = false;

  size_t Count(v1::DeviceEvent::Kind kind, const std::string& prefix) {
    absl::MutexLock lock(&mu);
    size_t n = 0;
    for (const auto& ev : events) {
      if (ev.kind() == kind && ev.device().name().rfind(prefix, 0) == 0) ++n;
    }
    return n;
  }
};

class ServiceConcurrencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short (unix socket paths are limited to 107 bytes) and unique.
    char tmpl[] = "/tmp/emud-svc-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }

  // emud's defaults, except what a test cannot have (real-time priority)
  // or needs (workers stopped at the end, an upgrade naming a binary). With
  // `keeper`, the fd store lives in an emud-keeper (a thread here), which a
  // handover needs.
  void StartManager(bool keeper = false) {
    ManagerOptions o;
    o.state_dir = dir_ + "/state";
    o.socket_dir = dir_ + "/sockets";
    o.worker_binary = Runfile("dataplane/emud-worker");
    o.allow_worker_override = true;
    o.startup_rt_priority = 0;  // no CAP_SYS_NICE needed
    o.stop_workers_on_exit = true;
    if (keeper) {
      o.fd_keeper = dir_ + "/keeper.sock";
      keeper_ = std::make_unique<fdstore::RunningKeeper>(o.fd_keeper);
      ASSERT_NE(keeper_->keeper, nullptr);
    }
    auto m = DeviceManager::Open(o, &metrics_);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
    absl::Status s = manager_->Start();
    ASSERT_TRUE(s.ok()) << s;
    service_ = std::make_unique<DeviceServiceImpl>(
        manager_.get(), ServerIdentity{o.state_dir, o.socket_dir, absl::Now()});
  }

  void TearDown() override {
    if (manager_ != nullptr) StopWatches();
    manager_.reset();
    keeper_.reset();  // after the manager: its workers' fds are there
    std::filesystem::remove_all(dir_);
  }

  // emud's order (server/main.cc): BeginShutdown ends the watches and
  // refuses mutations; the manager's Shutdown follows (TearDown).
  void StopWatches() {
    manager_->BeginShutdown();
    for (auto& t : watch_threads_) t.join();
    watch_threads_.clear();
  }

  // WatchDevices' loop (server/service.cc) without its writer: the
  // snapshot, then every event until emud shuts down (or the watch falls
  // behind). `names` empty: every device.
  void StartWatch(WatchLog* log, std::set<std::string> names) {
    uint64_t cursor = 0;
    std::vector<v1::Device> snapshot = manager_->Snapshot(&cursor);
    {
      absl::MutexLock lock(&log->mu);
      for (auto& d : snapshot) {
        if (!names.empty() && names.count(d.name()) == 0) continue;
        v1::DeviceEvent ev;
        ev.set_kind(v1::DeviceEvent::KIND_ADDED);
        *ev.mutable_device() = std::move(d);
        log->events.push_back(std::move(ev));
      }
    }
    watch_threads_.emplace_back([this, log, names, cursor]() mutable {
      while (true) {
        std::vector<v1::DeviceEvent> events;
        DeviceManager::WaitResult r =
            manager_->WaitForEvents(&cursor, &events, absl::Milliseconds(500));
        absl::MutexLock lock(&log->mu);
        for (auto& ev : events) {
          if (names.empty() || names.count(ev.device().name()) > 0) {
            log->events.push_back(std::move(ev));
          }
        }
        if (r == DeviceManager::WaitResult::kShutdown ||
            r == DeviceManager::WaitResult::kFellBehind) {
          log->end = r;
          log->ended = true;
          return;
        }
      }
    });
  }

  grpc::Status Create(const std::string& name, v1::Device* out) {
    grpc::ServerContext ctx;
    v1::CreateDeviceRequest req;
    req.set_name(name);
    req.set_type(v1::DEVICE_TYPE_AVF);
    req.mutable_spec()->set_queue_pairs(1);
    req.mutable_spec()->set_backend("loopback");
    return service_->CreateDevice(&ctx, &req, out);
  }
  grpc::Status Get(const std::string& name, v1::Device* out) {
    grpc::ServerContext ctx;
    v1::GetDeviceRequest req;
    req.set_name(name);
    return service_->GetDevice(&ctx, &req, out);
  }
  v1::Phase Phase(const std::string& name) {
    v1::Device d;
    return Get(name, &d).ok() ? d.status().phase() : v1::PHASE_UNSPECIFIED;
  }
  grpc::Status Stats(const std::string& name) {
    grpc::ServerContext ctx;
    v1::GetDeviceStatsRequest req;
    req.set_name(name);
    v1::DeviceStats out;
    return service_->GetDeviceStats(&ctx, &req, &out);
  }
  grpc::Status Reset(const std::string& name) {
    grpc::ServerContext ctx;
    v1::ResetDeviceRequest req;
    req.set_name(name);
    v1::Device out;
    return service_->ResetDevice(&ctx, &req, &out);
  }
  grpc::Status Upgrade(const std::string& name) {
    grpc::ServerContext ctx;
    v1::UpgradeWorkerRequest req;
    req.set_name(name);
    req.set_worker_binary(Runfile("dataplane/emud-worker"));
    v1::Device out;
    return service_->UpgradeWorker(&ctx, &req, &out);
  }
  grpc::Status Delete(const std::string& name, bool force) {
    grpc::ServerContext ctx;
    v1::DeleteDeviceRequest req;
    req.set_name(name);
    req.set_force(force);
    v1::DeleteDeviceResponse out;
    return service_->DeleteDevice(&ctx, &req, &out);
  }
  grpc::Status List(std::vector<v1::Device>* out) {
    grpc::ServerContext ctx;
    v1::ListDevicesRequest req;
    v1::ListDevicesResponse resp;
    grpc::Status s = service_->ListDevices(&ctx, &req, &resp);
    out->assign(resp.devices().begin(), resp.devices().end());
    return s;
  }
  // WatchDevices up to its snapshot: a watch of a name that does not exist
  // ends there (NOT_FOUND) and never reaches its writer.
  grpc::Status WatchAbsent() {
    grpc::ServerContext ctx;
    v1::WatchDevicesRequest req;
    req.add_names("absent");
    return service_->WatchDevices(&ctx, &req, /*writer=*/nullptr);
  }
  grpc::Status Info(v1::ServerInfo* out) {
    grpc::ServerContext ctx;
    v1::GetServerInfoRequest req;
    return service_->GetServerInfo(&ctx, &req, out);
  }

  Metrics metrics_;
  std::string dir_;
  std::unique_ptr<fdstore::RunningKeeper> keeper_;
  std::unique_ptr<DeviceManager> manager_;
  std::unique_ptr<DeviceServiceImpl> service_;
  std::vector<std::thread> watch_threads_;
};

// Records an unexpected status; EXPECT_* from many threads is safe, but a
// message naming the call is more useful.
#define EXPECT_CODE_IN(status, ...)                                                 \
  do {                                                                              \
    const grpc::Status& s_ = (status);                                              \
    const std::set<grpc::StatusCode> ok_{__VA_ARGS__};                              \
    EXPECT_TRUE(ok_.count(s_.error_code()) > 0)                                     \
        << #status << ": code " << s_.error_code() << " " << s_.error_message();    \
  } while (0)

TEST_F(ServiceConcurrencyTest, ClientsWatchersAndWorkerKillsAtOnce) {
  constexpr int kOwners = 3;
  constexpr int kRounds = 5;
  StartManager();

  // A device every thread shares, and two watches: one of every device,
  // one of the shared device only.
  v1::Device created;
  ASSERT_TRUE(Create("shared", &created).ok());
  ASSERT_TRUE(Eventually([&] { return Phase("shared") == v1::PHASE_LISTENING; }));
  WatchLog all, shared_only;
  StartWatch(&all, {});
  StartWatch(&shared_only, {"shared"});

  std::atomic<bool> done{false};
  std::atomic<int> kills{0};
  std::atomic<int> contended_ok{0};
  std::vector<std::thread> threads;

  // Owners: each creates its own devices, reads them, kills the worker and
  // waits for its successor, resets and deletes them; every call must
  // succeed (nobody else changes these devices; the killer's kills are
  // restarts the calls wait out).
  std::atomic<int> owners_left{kOwners};
  for (int t = 0; t < kOwners; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        const std::string name = absl::StrCat("own", t, "-", r);
        v1::Device d;
        grpc::Status s = Create(name, &d);
        EXPECT_TRUE(s.ok()) << name << ": " << s.error_message();
        if (!s.ok()) continue;
        EXPECT_EQ(d.name(), name);
        EXPECT_TRUE(Eventually([&] { return Phase(name) == v1::PHASE_LISTENING; })) << name;
        ASSERT_TRUE(Get(name, &d).ok()) << name;
        const pid_t first = d.status().worker_pid();
        ASSERT_NE(first, 0) << name;
        ASSERT_EQ(::kill(first, SIGKILL), 0) << name;
        EXPECT_TRUE(Eventually([&] {
          return Get(name, &d).ok() && d.status().worker_pid() != first &&
                 d.status().phase() == v1::PHASE_LISTENING;
        })) << name;
        EXPECT_GE(d.status().restart_count(), 1u) << name;
        EXPECT_TRUE(Stats(name).ok()) << name;
        s = Reset(name);
        EXPECT_TRUE(s.ok()) << name << " reset: " << s.error_message();
        s = Delete(name, /*force=*/true);
        EXPECT_TRUE(s.ok()) << name << " delete: " << s.error_message();
        EXPECT_EQ(Get(name, &d).error_code(), grpc::StatusCode::NOT_FOUND) << name;
      }
      owners_left.fetch_sub(1);
    });
  }
  // Two threads fight over the shared device while the owners work: each
  // reset or upgrade either wins (OK) or finds the other's in progress
  // (ABORTED).
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds || owners_left.load() > 0; ++r) {
        grpc::Status s = t == 0 ? Reset("shared") : Upgrade("shared");
        EXPECT_CODE_IN(s, grpc::StatusCode::OK, grpc::StatusCode::ABORTED);
        if (s.ok()) contended_ok.fetch_add(1);
        EXPECT_CODE_IN(Stats("shared"), grpc::StatusCode::OK);
      }
    });
  }
  // A reader: the shared device is always listed and found; a watch of a
  // device that does not exist is refused.
  threads.emplace_back([&] {
    while (!done.load()) {
      std::vector<v1::Device> list;
      EXPECT_TRUE(List(&list).ok());
      bool found = false;
      for (const auto& d : list) found |= d.name() == "shared";
      EXPECT_TRUE(found);
      v1::ServerInfo info;
      EXPECT_TRUE(Info(&info).ok());
      EXPECT_EQ(info.pid(), ::getpid());
      v1::Device d;
      EXPECT_TRUE(Get("shared", &d).ok());
      EXPECT_EQ(WatchAbsent().error_code(), grpc::StatusCode::NOT_FOUND);
    }
  });
  // The killer: SIGKILLs a serving worker, another device's each time (the
  // supervisor restarts it at once: a serving worker's death is never a
  // crash loop).
  threads.emplace_back([&] {
    size_t next = 0;
    while (!done.load()) {
      std::vector<v1::Device> list;
      if (List(&list).ok() && !list.empty()) {
        const v1::Device& d = list[next++ % list.size()];
        if (d.status().phase() == v1::PHASE_LISTENING && d.status().worker_pid() != 0 &&
            ::kill(d.status().worker_pid(), SIGKILL) == 0) {
          kills.fetch_add(1);
        }
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });

  for (int i = 0; i < kOwners + 2; ++i) threads[i].join();
  done.store(true);
  for (size_t i = kOwners + 2; i < threads.size(); ++i) threads[i].join();

  // An ABORTED means the other thread's call held the device, and that one
  // got through: whatever the interleaving, at least one did.
  std::printf("killer: %d workers killed; contended calls through: %d\n", kills.load(),
              contended_ok.load());
  EXPECT_GT(contended_ok.load(), 0);
  // Nothing is left but the shared device.
  std::vector<v1::Device> list;
  ASSERT_TRUE(List(&list).ok());
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name(), "shared");
  // The shared device serves again after all of it.
  EXPECT_TRUE(Eventually([&] { return Phase("shared") == v1::PHASE_LISTENING; }));

  // The full watch saw every owner's device added and deleted.
  ASSERT_TRUE(Eventually(
      [&] { return all.Count(v1::DeviceEvent::KIND_DELETED, "own") == kOwners * kRounds; }));
  StopWatches();
  // Shutting down: mutations are refused, reads still answered.
  v1::Device late;
  EXPECT_EQ(Create("late", &late).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Get("shared", &late).ok());
  {
    absl::MutexLock lock(&all.mu);
    ASSERT_TRUE(all.ended);
    EXPECT_EQ(all.end, DeviceManager::WaitResult::kShutdown);
    // Per device: added first, deleted last, nothing of it after.
    std::map<std::string, std::vector<v1::DeviceEvent::Kind>> by_name;
    for (const auto& ev : all.events) by_name[ev.device().name()].push_back(ev.kind());
    for (int t = 0; t < kOwners; ++t) {
      for (int r = 0; r < kRounds; ++r) {
        const std::string name = absl::StrCat("own", t, "-", r);
        const auto& kinds = by_name[name];
        ASSERT_GE(kinds.size(), 2u) << name;
        EXPECT_EQ(kinds.front(), v1::DeviceEvent::KIND_ADDED) << name;
        EXPECT_EQ(kinds.back(), v1::DeviceEvent::KIND_DELETED) << name;
        for (size_t i = 1; i + 1 < kinds.size(); ++i) {
          EXPECT_EQ(kinds[i], v1::DeviceEvent::KIND_MODIFIED) << name << " event " << i;
        }
      }
    }
    // "shared" existed before the watch: its snapshot came as ADDED.
    ASSERT_FALSE(by_name["shared"].empty());
    EXPECT_EQ(by_name["shared"].front(), v1::DeviceEvent::KIND_ADDED);
  }
  {
    absl::MutexLock lock(&shared_only.mu);
    ASSERT_TRUE(shared_only.ended);
    EXPECT_EQ(shared_only.end, DeviceManager::WaitResult::kShutdown);
    ASSERT_FALSE(shared_only.events.empty());
    for (const auto& ev : shared_only.events) EXPECT_EQ(ev.device().name(), "shared");
    // Its resets and upgrades took the worker down and up again: seen.
    size_t modified = 0;
    for (const auto& ev : shared_only.events) {
      modified += ev.kind() == v1::DeviceEvent::KIND_MODIFIED;
    }
    EXPECT_GT(modified, 0u);
  }
}

// A handover to a successor emud begun, one device released and the
// handover aborted while handlers run on every device: mutations are
// refused (UNAVAILABLE) or find the device busy (ABORTED) during it, reads
// never fail, watches end; afterwards emud accepts mutations again and
// supervises what it still holds.
TEST_F(ServiceConcurrencyTest, HandoverWhileHandlersRun) {
  StartManager(/*keeper=*/true);
  for (const char* name : {"ho-a", "ho-b"}) {
    v1::Device d;
    grpc::Status s = Create(name, &d);
    ASSERT_TRUE(s.ok()) << name << ": " << s.error_message();
  }
  for (const char* name : {"ho-a", "ho-b"}) {
    ASSERT_TRUE(Eventually([&] { return Phase(name) == v1::PHASE_LISTENING; })) << name;
  }
  WatchLog all;
  StartWatch(&all, {});

  std::atomic<bool> done{false};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  // Mutators on both devices, through the whole handover.
  for (const char* name : {"ho-a", "ho-b"}) {
    threads.emplace_back([&, name] {
      while (!done.load()) {
        grpc::Status s = Reset(name);
        EXPECT_CODE_IN(s, grpc::StatusCode::OK, grpc::StatusCode::ABORTED,
                       grpc::StatusCode::UNAVAILABLE);
        if (s.error_code() == grpc::StatusCode::UNAVAILABLE) refused.fetch_add(1);
      }
    });
  }
  // Readers: always answered.
  threads.emplace_back([&] {
    while (!done.load()) {
      std::vector<v1::Device> list;
      EXPECT_TRUE(List(&list).ok());
      EXPECT_EQ(list.size(), 2u);
      EXPECT_TRUE(Stats("ho-a").ok());
      v1::Device d;
      EXPECT_TRUE(Get("ho-b", &d).ok());
    }
  });

  ASSERT_TRUE(manager_->BeginHandover().ok());
  // A second handover is refused while this one runs.
  EXPECT_EQ(manager_->BeginHandover().code(), absl::StatusCode::kFailedPrecondition);
  // A reset that began before the handover may still hold the device.
  absl::Status released;
  ASSERT_TRUE(Eventually([&] {
    released = manager_->ReleaseForSuccessor("ho-a");
    return !absl::IsAborted(released);
  }));
  ASSERT_TRUE(released.ok()) << released;
  EXPECT_EQ(manager_->WorkerPidForTest("ho-a"), 0);
  // Mutations are refused while the handover runs (the mutators see it),
  // and watches end as at a shutdown: their clients reconnect, to the
  // successor or, if the handover fails, to this emud again.
  ASSERT_TRUE(Eventually([&] { return refused.load() > 0; }));
  v1::Device d;
  EXPECT_EQ(Create("ho-c", &d).error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(Eventually([&] {
    absl::MutexLock lock(&all.mu);
    return all.ended;
  }));
  {
    absl::MutexLock lock(&all.mu);
    EXPECT_EQ(all.end, DeviceManager::WaitResult::kShutdown);
  }
  done.store(true);
  for (auto& t : threads) t.join();
  manager_->AbortHandover();
  WatchLog again;
  StartWatch(&again, {});

  // emud is itself again: mutations accepted, ho-b supervised (its worker
  // restarted when killed), ho-a left as released (a successor may serve it).
  grpc::Status s = Create("ho-c", &d);
  EXPECT_TRUE(s.ok()) << s.error_message();
  ASSERT_TRUE(Eventually([&] { return Phase("ho-b") == v1::PHASE_LISTENING; }));
  ASSERT_TRUE(Get("ho-b", &d).ok());
  const pid_t b = d.status().worker_pid();
  ASSERT_NE(b, 0);
  ASSERT_EQ(::kill(b, SIGKILL), 0);
  EXPECT_TRUE(Eventually([&] {
    return Get("ho-b", &d).ok() && d.status().worker_pid() != b &&
           d.status().phase() == v1::PHASE_LISTENING;
  }));
  EXPECT_EQ(manager_->WorkerPidForTest("ho-a"), 0);
  s = Reset("ho-a");
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(Eventually([&] { return Phase("ho-a") == v1::PHASE_LISTENING; }));

  StopWatches();
  absl::MutexLock lock(&again.mu);
  EXPECT_EQ(again.end, DeviceManager::WaitResult::kShutdown);
  // The watch begun after the abort: its snapshot, then ho-c's creation.
  EXPECT_EQ(std::count_if(again.events.begin(), again.events.end(),
                          [](const v1::DeviceEvent& ev) {
                            return ev.kind() == v1::DeviceEvent::KIND_ADDED &&
                                   ev.device().name() == "ho-c";
                          }),
            1);
}

}  // namespace
}  // namespace emud::server
