// Persistence and resume: a session persisted through state_store is rebuilt
// by a "successor" (a new Session + device restored from the records, the
// same connected socket and the fds the fd store kept), and the client goes on
// without noticing. Crash-consistent mode: a session abandoned at each point
// of the peek/commit/consume/journal/reply sequence neither loses nor repeats
// the request in flight.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>

#include <atomic>
#include <cstring>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "state_store/store.h"
#include "vfio_user/client.h"
#include "vfio_user/examples/example_device.h"
#include "vfio_user/session.h"
#include "vfio_user/session_store.h"
#include "vfio_user/test_harness.h"

namespace emud::vfio_user {
namespace {

using testing::DrainEventfd;
using testing::MakeEventfd;
using testing::MakeMemfd;

class FakeFdStore : public FdDepositor {
 public:
  absl::Status Deposit(absl::string_view key, int fd) override {
    fds_[std::string(key)] = UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    ++deposits;
    return absl::OkStatus();
  }
  void Release(absl::string_view key) override { fds_.erase(std::string(key)); }
  FdLookup Lookup() {
    return [this](absl::string_view key) -> absl::StatusOr<UniqueFd> {
      auto it = fds_.find(std::string(key));
      if (it == fds_.end()) return absl::NotFoundError(std::string(key));
      return UniqueFd(::fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0));
    };
  }
  bool Has(const std::string& k) const { return fds_.count(k) != 0; }
  std::map<std::string, UniqueFd> fds_;
  int deposits = 0;
};

// State outside the store that survives a worker's death (as a memfd
// would): the self-durable scratch register of DurableScratchDevice.
struct DurableCell {
  std::atomic<uint32_t> value{0};
  std::atomic<uint32_t> applies{0};  // self-durable writes applied
  std::atomic<uint32_t> saves{0};    // PciDevice::Save calls
  std::atomic<uint32_t> acc_reads{0};  // reads of ExampleDevice::kAcc
  // DurableScratchDevice::StateGeneration: moved by every change of saved
  // state (a test moves it to stand for a data path's change).
  std::atomic<uint64_t> generation{0};
};

// ExampleDevice whose BAR0 scratch register lives in a DurableCell and is
// declared self-durable (a plain store: idempotent, durable at once).
class DurableScratchDevice : public PciDevice {
 public:
  DurableScratchDevice(std::unique_ptr<ExampleDevice> inner, DurableCell* cell)
      : inner_(std::move(inner)), cell_(cell) {}
  std::vector<RegionDesc> Regions() const override { return inner_->Regions(); }
  std::vector<IrqDesc> Irqs() const override { return inner_->Irqs(); }
  absl::Status RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out) override {
    if (IsCell(region, offset, out.size())) {
      uint32_t v = cell_->value;
      std::memcpy(out.data(), &v, 4);
      return absl::OkStatus();
    }
    if (region == kBar0 && offset == ExampleDevice::kAcc) ++cell_->acc_reads;
    return inner_->RegionRead(region, offset, out);
  }
  absl::Status RegionWrite(uint32_t region, uint64_t offset, absl::Span<const uint8_t> data) override {
    if (IsCell(region, offset, data.size())) {
      uint32_t v;
      std::memcpy(&v, data.data(), 4);
      cell_->value = v;
      ++cell_->applies;
      return absl::OkStatus();
    }
    ++cell_->generation;
    return inner_->RegionWrite(region, offset, data);
  }
  void Attach(const DeviceContext& ctx) override {
    ++cell_->generation;
    inner_->Attach(ctx);
  }
  void Detach() override { inner_->Detach(); }
  absl::Status Reset() override {
    ++cell_->generation;
    return inner_->Reset();
  }
  void OnDmaUnmap(uint64_t iova, uint64_t size) override { inner_->OnDmaUnmap(iova, size); }
  absl::string_view RecordNamespace() const override { return inner_->RecordNamespace(); }
  absl::Status Save(DeviceRecordWriter& records) override {
    ++cell_->saves;
    return inner_->Save(records);
  }
  absl::Status Restore(const DeviceRecordReader& records) override {
    ++cell_->generation;
    return inner_->Restore(records);
  }
  bool WriteIsSelfDurable(uint32_t region, uint64_t offset, uint64_t size) const override {
    return IsCell(region, offset, size);
  }
  // ADD only changes the accumulator: deferrable (group-committed); the
  // doorbell runs DMA and is not.
  bool WriteIsDeferrable(uint32_t region, uint64_t offset, uint64_t size) const override {
    return region == kBar0 && offset == ExampleDevice::kAdd && size == 4;
  }
  // Reads change nothing in ExampleDevice; STATUS is declared to have side
  // effects (as a read-to-clear register would) so that its reads take the
  // committed path.
  bool ReadHasSideEffects(uint32_t region, uint64_t offset, uint64_t size) const override {
    return region == kBar0 && offset <= ExampleDevice::kStatus && offset + size > ExampleDevice::kStatus;
  }
  uint64_t StateGeneration() const override { return cell_->generation; }

 private:
  static bool IsCell(uint32_t region, uint64_t offset, uint64_t size) {
    return region == kBar0 && offset == ExampleDevice::kScratch && size == 4;
  }
  std::unique_ptr<ExampleDevice> inner_;
  DurableCell* cell_;
};

// A worker: event loop thread + device + session.
class Worker {
 public:
  Worker(state_store::Env* env, SessionOptions opts, FakeFdStore* store, UniqueFd conn, bool resume,
         DurableCell* cell = nullptr) {
    auto loop = EventLoop::Create();
    EXPECT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    auto dev = ExampleDevice::Create();
    EXPECT_TRUE(dev.ok());
    if (cell != nullptr) {
      device_ = std::make_unique<DurableScratchDevice>(std::move(*dev), cell);
    } else {
      device_ = std::move(*dev);
    }
    opts.store = env;
    opts.fd_depositor = store;
    if (resume) {
      EXPECT_TRUE(session_store::RestoreDevice(*env, *device_).ok());
      auto s = Session::Resume(device_.get(), loop_.get(), opts, std::move(conn), store->Lookup());
      EXPECT_TRUE(s.ok()) << s.status();
      if (s.ok()) session_ = std::move(*s);
    } else {
      auto s = Session::Create(device_.get(), loop_.get(), opts);
      EXPECT_TRUE(s.ok()) << s.status();
      session_ = std::move(*s);
      EXPECT_TRUE(session_->AttachClient(std::move(conn)).ok());
    }
    thread_ = std::thread([this] { (void)loop_->Run(); });
  }
  // Simulates SIGKILL: the loop stops, nothing is cleaned up protocol-wise.
  void Die() {
    if (thread_.joinable()) {
      loop_->Stop();
      thread_.join();
    }
    if (session_) session_->Abandon();
    session_.reset();
  }
  ~Worker() { Die(); }
  Session* session() { return session_.get(); }
  // Session::connected(), read while the loop thread (which owns the
  // session) is stopped, then the loop runs again. Reading it while the loop
  // runs is a data race (TSan found it).
  bool Connected() {
    if (thread_.joinable()) {
      loop_->Stop();
      thread_.join();
    }
    bool c = session_ != nullptr && session_->connected();
    thread_ = std::thread([this] { (void)loop_->Run(); });
    return c;
  }
  EventLoop* loop() { return loop_.get(); }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<PciDevice> device_;
  std::unique_ptr<Session> session_;
  std::thread thread_;
};

class ResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(testing::TempDir(), "/vfu-resume-", ::getpid(), "-", counter_++);
    state_store::EnvOptions o;
    o.tables = SessionTables();
    o.tables.push_back(ExampleDevice::kTable);
    auto env = state_store::Env::Open(dir_, o);
    ASSERT_TRUE(env.ok()) << env.status();
    env_ = std::move(*env);
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server_end_.reset(sv[0]);
    auto c = Client::FromFd(UniqueFd(sv[1]));
    ASSERT_TRUE(c.ok());
    client_ = std::move(*c);
    client_->set_timeout(absl::Seconds(10));
  }
  void TearDown() override {
    env_.reset();
    if (std::system(absl::StrCat("rm -rf ", dir_).c_str()) != 0) ADD_FAILURE() << "cleanup";
  }
  // Crash-consistent session options whose worker "dies" (its crash point
  // returns true) the `nth` time stage `stage` is reached once armed_ is
  // set; died_ then says it happened.
  SessionOptions KillAt(int stage, int nth) {
    SessionOptions o;
    o.crash_consistent = true;
    o.journal_path = dir_ + "/journal";
    o.crash_point = [this, stage, nth](int s) {
      if (armed_ && s == stage && ++kill_hits_ == nth) {
        armed_ = false;
        died_ = true;
        return true;
      }
      return false;
    };
    return o;
  }
  UniqueFd ConnFromStore() {
    auto fd = store_.Lookup()("vfio/conn");
    EXPECT_TRUE(fd.ok());
    return fd.ok() ? std::move(*fd) : UniqueFd();
  }

  static inline int counter_ = 0;
  std::string dir_;
  std::unique_ptr<state_store::Env> env_;
  FakeFdStore store_;
  UniqueFd server_end_;
  std::unique_ptr<Client> client_;
  std::atomic<bool> armed_{false}, died_{false};
  std::atomic<int> kill_hits_{0};
};

TEST_F(ResumeTest, SuccessorResumesSessionFromRecordsAndFdStore) {
  UniqueFd ram = MakeMemfd(1 << 20);
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  uint8_t* guest = static_cast<uint8_t*>(::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, ram.get(), 0));
  ASSERT_NE(guest, MAP_FAILED);
  for (int i = 0; i < 256; ++i) guest[0x800 + i] = 1;
  {
    Worker w(env_.get(), {}, &store_, std::move(server_end_), false);
    ASSERT_TRUE(client_->Version().ok());
    ASSERT_TRUE(client_->DmaMap(ram.get(), 0, 0x10000000, 1 << 20).ok());
    ASSERT_TRUE(client_->SetIrqEventfds(kMsixIrq, 0, absl::MakeConstSpan(&fd, 1)).ok());
    uint16_t cmd = 0x6;
    ASSERT_TRUE(client_->RegionWrite(kConfigRegion, 4, absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&cmd), 2)).ok());
    ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kScratch, 42).ok());
    ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 5).ok());
    ASSERT_TRUE(client_->MaskIrq(kMsixIrq, 0, 1, true).ok());
    ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDoorbell, 1).ok());  // pending
    EXPECT_EQ(DrainEventfd(fd), 0u);
    EXPECT_TRUE(store_.Has("vfio/conn"));
    EXPECT_TRUE(store_.Has("dma/10000000"));
    EXPECT_TRUE(store_.Has("irq/2/0"));
    w.Die();
  }
  Worker successor(env_.get(), {}, &store_, ConnFromStore(), true);
  ASSERT_NE(successor.session(), nullptr);
  // Same connection, no new VERSION; every piece of state is back.
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 42u);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 5u);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kMsixPbaOffset) & 1, 1u);  // still pending
  ASSERT_TRUE(client_->MaskIrq(kMsixIrq, 0, 1, false).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);  // the resumed eventfd fires
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDmaAddr, 0x10000800).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDmaLen, 256).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDmaCmd, 3).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kDmaResult), 256u);  // the resumed DMA window
  EXPECT_EQ(DrainEventfd(fd), 1u);
  EXPECT_EQ(StatusToErrno(client_->DmaMap(ram.get(), 0, 0x10000000, 4096)), EEXIST);
  ::munmap(guest, 1 << 20);
}

// Polls `done` for up to 30 s (the worker reacts in microseconds; TSan and a
// loaded 2-core machine stretch that).
bool WaitFor(const std::function<bool()>& done) {
  for (absl::Time until = absl::Now() + absl::Seconds(30); absl::Now() < until;) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return done();
}

TEST_F(ResumeTest, DisconnectIsPersistedAndReleasesFds) {
  UniqueFd ram = MakeMemfd(1 << 16);
  {
    Worker w(env_.get(), {}, &store_, std::move(server_end_), false);
    ASSERT_TRUE(client_->Version().ok());
    ASSERT_TRUE(client_->DmaMap(ram.get(), 0, 0x1000, 1 << 16).ok());
    ASSERT_TRUE(client_->DmaUnmap(0x1000, 1 << 16).ok());
    EXPECT_FALSE(store_.Has("dma/1000"));
    ASSERT_TRUE(client_->DmaMap(ram.get(), 0, 0x1000, 1 << 16).ok());
    client_.reset();  // client goes away
    ASSERT_TRUE(WaitFor([&] { return !w.Connected(); })) << "the worker saw the client go";
    w.Die();
  }
  EXPECT_FALSE(store_.Has("vfio/conn"));
  EXPECT_FALSE(store_.Has("dma/1000"));
  // Nothing to resume: the persisted session is not live.
  auto loop = EventLoop::Create();
  auto dev = ExampleDevice::Create();
  SessionOptions o;
  o.store = env_.get();
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ::close(sv[1]);
  auto s = Session::Resume(dev->get(), loop->get(), o, UniqueFd(sv[0]), store_.Lookup());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
}

// Crash-consistent mode: die at stage S while handling "ADD 7" (a write that
// wants a reply), resume, and check the client gets exactly one reply and the
// device applied the write exactly once.
class CrashConsistentTest : public ResumeTest, public ::testing::WithParamInterface<int> {};

TEST_P(CrashConsistentTest, RequestAppliedOnceAndAnsweredOnce) {
  const int stage = GetParam();
  std::atomic<bool>& armed = armed_;
  std::atomic<bool>& died = died_;
  SessionOptions o = KillAt(stage, 1);
  auto w = std::make_unique<Worker>(env_.get(), o, &store_, std::move(server_end_), false);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 100).ok());
  // Send ADD 7 without waiting; the worker dies at `stage`.
  armed = true;
  Header h;
  h.msg_id = 0x4242;
  h.command = kCmdRegionWrite;
  RegionAccess a{ExampleDevice::kAdd, kBar0, 4};
  uint32_t seven = 7;
  std::vector<uint8_t> raw;
  h.msg_size = kHeaderSize + sizeof(a) + 4;
  AppendStruct(&raw, h);
  AppendStruct(&raw, a);
  AppendStruct(&raw, seven);
  ASSERT_TRUE(client_->SendRaw(raw).ok());
  ASSERT_TRUE(WaitFor([&] { return died.load(); }));
  w->Die();
  w.reset();
  SessionOptions o2 = o;
  o2.crash_point = nullptr;
  Worker successor(env_.get(), o2, &store_, ConnFromStore(), true);
  ASSERT_NE(successor.session(), nullptr);
  auto reply = client_->ReceiveReply(0x4242, kCmdRegionWrite);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->hdr.flags & kFlagError, 0u);
  // Exactly once: 100 + 7. A duplicate reply would break the next exchange.
  auto acc = client_->Read32(kBar0, ExampleDevice::kAcc);
  ASSERT_TRUE(acc.ok()) << acc.status();
  EXPECT_EQ(*acc, 107u);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 107u);
}

// Stage 3 is the instant before the journal mark and the reply's sendmsg,
// which are one event (SendMsgMarked): the successor must send the stored
// reply.
INSTANTIATE_TEST_SUITE_P(Stages, CrashConsistentTest, ::testing::Values(1, 2, 3, 4));

TEST_F(ResumeTest, CrashConsistentModeServesNormally) {
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  Worker w(env_.get(), o, &store_, std::move(server_end_), false);
  ASSERT_TRUE(client_->Version().ok());
  uint32_t sum = 0;
  for (uint32_t i = 0; i < 50; ++i) {
    ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, i, i % 2 == 0).ok());
    sum += i;
  }
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), sum);
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  ASSERT_TRUE(client_->SetIrqEventfds(kMsixIrq, 0, absl::MakeConstSpan(&fd, 1)).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  auto r = client_->GetRegionInfo(kBar0);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->fd.valid());
  // Message-based DMA is refused in this mode: the device reports an error
  // and the session goes on.
  uint16_t cmd = 0x6;
  ASSERT_TRUE(client_->RegionWrite(kConfigRegion, 4, absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&cmd), 2)).ok());
  ASSERT_TRUE(client_->DmaMap(-1, 0, 0x100000, 0x1000).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDmaAddr, 0x100000).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDmaLen, 16).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDmaCmd, 3).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kStatus), static_cast<uint32_t>(EFAULT));
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), sum);
}

// Self-durable posted writes are applied without a commit (no Save, no
// "last request" record): a burst of them costs no transaction, and what
// they wrote is read back (by a committed read).
TEST_F(ResumeTest, SelfDurablePostedWritesAreNotCommitted) {
  DurableCell cell;
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  Worker w(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 3).ok());
  const uint32_t saves = cell.saves;
  const uint64_t commits = w.session()->stats().commits;
  for (uint32_t i = 1; i <= 20; ++i) {
    ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kScratch, i, /*posted=*/true).ok());
  }
  // A non-posted write of the cell still commits (its reply is state the
  // recovery rule must be able to re-send).
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kScratch, 21).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 21u);
  EXPECT_EQ(cell.applies, 21u);
  EXPECT_EQ(cell.saves, saves + 1) << "only the non-posted write commits (the read has no side effect)";
  EXPECT_EQ(w.session()->stats().commits, commits + 1);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 3u);
}

// Kill around a run of self-durable posted writes (4 scratch writes sent in
// one piece) that follows a committed request wanting a reply, at the 3rd
// write: stage 1 (applied, progress not recorded) - the successor consumes
// the 2 recorded ones unapplied and applies the 3rd again (harmless) and the
// 4th; stage 3 (progress recorded) - it applies only the 4th; stage 2 (run
// consumed when the next message ended its deferral, progress word not yet
// cleared) - nothing is applied again. The
// stale stored reply of the committed request is never re-sent and that
// request is not re-applied.
class SelfDurableCrashTest : public ResumeTest, public ::testing::WithParamInterface<int> {};

TEST_P(SelfDurableCrashTest, ResumeReappliesAtMostTheWriteInFlight) {
  const int stage = GetParam();
  DurableCell cell;
  std::atomic<bool>& armed = armed_;
  std::atomic<bool>& died = died_;
  SessionOptions o = KillAt(stage, stage == 2 ? 1 : 3);
  auto w = std::make_unique<Worker>(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 100).ok());  // committed, replied
  std::vector<uint8_t> raw;
  for (uint32_t i = 0; i < 4; ++i) {
    Header h;
    h.msg_id = static_cast<uint16_t>(0x500 + i);
    h.command = kCmdRegionWrite;
    h.flags = kFlagNoReply;
    RegionAccess a{ExampleDevice::kScratch, kBar0, 4};
    uint32_t v = 74 + i;
    h.msg_size = kHeaderSize + sizeof(a) + 4;
    AppendStruct(&raw, h);
    AppendStruct(&raw, a);
    AppendStruct(&raw, v);
  }
  armed = true;
  ASSERT_TRUE(client_->SendRaw(raw).ok());
  // The run is consumed when something else arrives (it is deferred until
  // then): a posted ADD 0, which the successor applies.
  if (stage == 2) {
    ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 0, /*posted=*/true).ok());
  }
  ASSERT_TRUE(WaitFor([&] { return died.load(); }));
  w->Die();
  w.reset();
  const uint32_t before = cell.applies;
  EXPECT_EQ(before, stage == 2 ? 4u : 3u);
  SessionOptions o2 = o;
  o2.crash_point = nullptr;
  Worker successor(env_.get(), o2, &store_, ConnFromStore(), true, &cell);
  ASSERT_NE(successor.session(), nullptr);
  // The next exchange gets its own reply (a re-sent stale one would be
  // taken first and mismatch).
  auto acc = client_->Read32(kBar0, ExampleDevice::kAcc);
  ASSERT_TRUE(acc.ok()) << acc.status();
  EXPECT_EQ(*acc, 100u);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 77u);
  EXPECT_EQ(cell.applies, stage == 1 ? 5u : 4u);
  EXPECT_EQ(successor.session()->stats().replayed_replies, 0u);
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 1).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 101u);
}

INSTANTIATE_TEST_SUITE_P(Stages, SelfDurableCrashTest, ::testing::Values(1, 2, 3));

// Posted writes of one run, queued together: `adds` ADD writes (values 1, 2,
// 4, ...), and optionally a self-durable scratch write in the middle.
std::vector<uint8_t> PostedRun(int adds, int scratch_at = -1) {
  std::vector<uint8_t> raw;
  for (int i = 0; i < adds; ++i) {
    if (i == scratch_at) {
      Header h;
      h.msg_id = static_cast<uint16_t>(0x700 + i);
      h.command = kCmdRegionWrite;
      h.flags = kFlagNoReply;
      RegionAccess a{ExampleDevice::kScratch, kBar0, 4};
      uint32_t v = 55;
      h.msg_size = kHeaderSize + sizeof(a) + 4;
      AppendStruct(&raw, h);
      AppendStruct(&raw, a);
      AppendStruct(&raw, v);
    }
    Header h;
    h.msg_id = static_cast<uint16_t>(0x600 + i);
    h.command = kCmdRegionWrite;
    h.flags = kFlagNoReply;
    RegionAccess a{ExampleDevice::kAdd, kBar0, 4};
    uint32_t v = 1u << i;
    h.msg_size = kHeaderSize + sizeof(a) + 4;
    AppendStruct(&raw, h);
    AppendStruct(&raw, a);
    AppendStruct(&raw, v);
  }
  return raw;
}

// A run of deferrable posted writes costs one commit, and a self-durable
// write inside it splits it (it is never part of a committed run).
TEST_F(ResumeTest, PostedWritesAreGroupCommitted) {
  DurableCell cell;
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  Worker w(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  const uint64_t commits = w.session()->stats().commits;
  ASSERT_TRUE(client_->SendRaw(PostedRun(12)).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 4095u);
  const uint64_t runs = w.session()->stats().grouped_runs;
  EXPECT_EQ(w.session()->stats().grouped_writes, 12u);
  EXPECT_GE(runs, 1u);
  EXPECT_EQ(w.session()->stats().commits, commits + runs) << "one per run, none for the read";
  EXPECT_EQ(w.session()->stats().uncommitted_replies, 1u);
  ASSERT_TRUE(client_->SendRaw(PostedRun(4, /*scratch_at=*/2)).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 4095u + 15u);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 55u);
  EXPECT_EQ(w.session()->stats().grouped_writes, 16u);
  EXPECT_GE(w.session()->stats().grouped_runs, runs + 2) << "split by the self-durable write";
}

// Kill inside a group-committed run of 4 posted ADDs (after a committed,
// replied ADD 100): stage 5 (the 3rd applied, nothing committed) - the
// successor applies the whole run again from the state before it; stages 1
// (committed), 2 (consumed), 3 (journal marked) - it consumes or finds it
// gone and applies nothing again. Either way every ADD counts exactly once
// and no reply is re-sent.
class GroupCommitCrashTest : public ResumeTest, public ::testing::WithParamInterface<int> {};

TEST_P(GroupCommitCrashTest, RunAppliedExactlyOnce) {
  const int stage = GetParam();
  DurableCell cell;
  std::atomic<bool>& armed = armed_;
  std::atomic<bool>& died = died_;
  SessionOptions o = KillAt(stage, stage == 5 ? 3 : 1);
  auto w = std::make_unique<Worker>(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 100).ok());
  armed = true;
  ASSERT_TRUE(client_->SendRaw(PostedRun(4)).ok());
  ASSERT_TRUE(WaitFor([&] { return died.load(); }));
  w->Die();
  w.reset();
  SessionOptions o2 = o;
  o2.crash_point = nullptr;
  Worker successor(env_.get(), o2, &store_, ConnFromStore(), true, &cell);
  ASSERT_NE(successor.session(), nullptr);
  auto acc = client_->Read32(kBar0, ExampleDevice::kAcc);
  ASSERT_TRUE(acc.ok()) << acc.status();
  EXPECT_EQ(*acc, 115u);
  EXPECT_EQ(successor.session()->stats().replayed_replies, 0u);
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 1).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 116u);
}

INSTANTIATE_TEST_SUITE_P(Stages, GroupCommitCrashTest, ::testing::Values(5, 1, 2, 3));

// A self-durable-looking posted write carrying an fd is refused like any
// write with fds (the look-ahead sees the fd and leaves it to the regular
// path); the writes around it are applied.
TEST_F(ResumeTest, SelfDurableWriteWithFdsIsRefused) {
  DurableCell cell;
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  Worker w(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kScratch, 5, /*posted=*/true).ok());
  // Settled before the fd message is sent: a MSG_PEEK on a unix stream
  // socket walks on past the bytes asked for and returns the fds of the next
  // fd-carrying skb, so the crash-consistent path would also refuse a write
  // peeked while an fd message was queued behind it (a known limitation).
  ASSERT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 5u);
  std::vector<uint8_t> raw;
  Header h;
  h.msg_id = 0x600;
  h.command = kCmdRegionWrite;
  h.flags = kFlagNoReply;
  RegionAccess a{ExampleDevice::kScratch, kBar0, 4};
  uint32_t v = 99;
  h.msg_size = kHeaderSize + sizeof(a) + 4;
  AppendStruct(&raw, h);
  AppendStruct(&raw, a);
  AppendStruct(&raw, v);
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  ASSERT_TRUE(client_->SendRaw(raw, absl::MakeConstSpan(&fd, 1)).ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kScratch, 6, /*posted=*/true).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 6u);
  EXPECT_EQ(cell.applies, 2u);
  EXPECT_EQ(w.session()->stats().posted_errors, 1u);
}

// Plain persistence (not crash-consistent) skips the commit the same way.
TEST_F(ResumeTest, SelfDurablePostedWritesSkipThePlainCommitToo) {
  DurableCell cell;
  Worker w(env_.get(), SessionOptions{}, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 3).ok());
  const uint32_t saves = cell.saves;
  for (uint32_t i = 1; i <= 10; ++i) {
    ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kScratch, i, /*posted=*/true).ok());
  }
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 10u);
  EXPECT_EQ(cell.saves, saves) << "neither the writes nor the read (no side effect) commit";
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kStatus), 0u);
  EXPECT_EQ(cell.saves, saves + 1) << "a read with side effects commits";
}

// A REGION_READ the device reports without side effects, and the
// information requests, are answered without a commit while nothing waits for
// one; a read with side effects, or any read while the device's saved state
// moved since the last commit, is committed as before.
TEST_F(ResumeTest, ReadsWithoutSideEffectsAreNotCommitted) {
  DurableCell cell;
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  Worker w(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 100).ok());
  const SessionStats& st = w.session()->stats();
  const uint64_t commits = st.commits;
  ASSERT_EQ(st.uncommitted_replies, 0u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 100u);
  uint8_t cfg[4];
  ASSERT_TRUE(client_->RegionRead(kConfigRegion, 0, absl::MakeSpan(cfg)).ok());
  EXPECT_EQ(st.uncommitted_replies, 6u);
  ASSERT_TRUE(client_->GetRegionInfo(kBar0).ok());  // one or two requests (argsz probe)
  EXPECT_EQ(st.commits, commits);
  const uint64_t pure = st.uncommitted_replies;
  EXPECT_GE(pure, 7u);
  // Side effects: committed.
  ASSERT_TRUE(client_->Read32(kBar0, ExampleDevice::kStatus).ok());
  EXPECT_EQ(st.commits, commits + 1);
  // A posted write (group-committed before the next reply) and a
  // self-durable one: the read after them needs no commit.
  ASSERT_TRUE(client_->SendRaw(PostedRun(2, /*scratch_at=*/1)).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 103u);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 55u);
  const uint64_t after_run = st.commits;
  EXPECT_EQ(st.uncommitted_replies, pure + 2);
  // Saved state changed outside a request (as a data path's change would):
  // the next read commits it before answering, the one after does not.
  ++cell.generation;
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 103u);
  EXPECT_EQ(st.commits, after_run + 1);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 103u);
  EXPECT_EQ(st.commits, after_run + 1);
  EXPECT_EQ(st.uncommitted_replies, pure + 3);
}

// Kill while answering an uncommitted REGION_READ (after a committed,
// replied ADD 100): 6 = recorded in the journal, not consumed (the successor
// finds it at the socket head and answers it as any request); 2 = consumed
// (the successor answers it from the journal record); 4 = replied (nothing
// left to do). The client gets exactly one reply, with the durable value,
// and the stream stays in step. Stage 3 (marked, not sent) is the
// documented window where a reply is lost.
class PureReadCrashTest : public ResumeTest, public ::testing::WithParamInterface<int> {};

TEST_P(PureReadCrashTest, AnsweredExactlyOnce) {
  const int stage = GetParam();
  DurableCell cell;
  std::atomic<bool> died{false};
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  // Dies while handling the second read of ACC (the stages of the first may
  // still run after its reply reached the client).
  o.crash_point = [&](int s) {
    if (!died && s == stage && cell.acc_reads == 2) {
      died = true;
      return true;
    }
    return false;
  };
  auto w = std::make_unique<Worker>(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 100).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 100u);
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kScratch, 1, /*posted=*/true).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 1u);  // the first read's stages are over
  const uint64_t uncommitted = w->session()->stats().uncommitted_replies;
  Header h;
  h.msg_id = 0x5151;
  h.command = kCmdRegionRead;
  RegionAccess a{ExampleDevice::kAcc, kBar0, 4};
  h.msg_size = kHeaderSize + sizeof(a);
  std::vector<uint8_t> raw;
  AppendStruct(&raw, h);
  AppendStruct(&raw, a);
  ASSERT_TRUE(client_->SendRaw(raw).ok());
  ASSERT_TRUE(WaitFor([&] { return died.load(); }));
  EXPECT_EQ(w->session()->stats().uncommitted_replies, uncommitted + 1) << "took the uncommitted path";
  w->Die();
  w.reset();
  SessionOptions o2 = o;
  o2.crash_point = nullptr;
  Worker successor(env_.get(), o2, &store_, ConnFromStore(), true, &cell);
  ASSERT_NE(successor.session(), nullptr);
  auto reply = client_->ReceiveReply(0x5151, kCmdRegionRead);
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_EQ(reply->hdr.flags & kFlagError, 0u);
  ASSERT_EQ(reply->payload.size(), sizeof(a) + 4);
  uint32_t v;
  std::memcpy(&v, reply->payload.data() + sizeof(a), 4);
  EXPECT_EQ(v, 100u);
  // Consumed but not replied (2, and 3: the instant before mark and send):
  // answered again. Recorded only (6): answered from the socket head.
  EXPECT_EQ(successor.session()->stats().replayed_replies, (stage == 2 || stage == 3) ? 1u : 0u);
  // In step: a duplicate reply would be taken for the next one.
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 1).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 101u);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 101u);
}

INSTANTIATE_TEST_SUITE_P(Stages, PureReadCrashTest, ::testing::Values(6, 2, 3, 4));

// ---- Deferred runs of self-durable writes (SO_PEEK_OFF) ----

// A posted REGION_WRITE of the self-durable scratch cell (36 bytes).
std::vector<uint8_t> ScratchWrite(uint32_t v, uint16_t msg_id) {
  std::vector<uint8_t> raw;
  Header h;
  h.msg_id = msg_id;
  h.command = kCmdRegionWrite;
  h.flags = kFlagNoReply;
  RegionAccess a{ExampleDevice::kScratch, kBar0, 4};
  h.msg_size = kHeaderSize + sizeof(a) + 4;
  AppendStruct(&raw, h);
  AppendStruct(&raw, a);
  AppendStruct(&raw, v);
  return raw;
}
constexpr size_t kScratchWriteSize = kHeaderSize + sizeof(RegionAccess) + 4;

// Bytes queued at the server end (SIOCINQ: no peek, so the socket's peek
// offset is left alone).
int Queued(int server_fd) {
  int n = -1;
  EXPECT_EQ(::ioctl(server_fd, SIOCINQ, &n), 0);
  return n;
}

// Writes arriving one per wake-up extend one run left in the socket (one
// peek per wake-up, no recv); a read ends it, consumed once; a long stream
// is consumed every kDeferMax bytes.
TEST_F(ResumeTest, SelfDurableRunIsDeferredAcrossWakeUps) {
  DurableCell cell;
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  Worker w(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  UniqueFd server = ConnFromStore();
  ASSERT_TRUE(client_->Version().ok());
  for (uint32_t i = 1; i <= 10; ++i) {
    ASSERT_TRUE(client_->SendRaw(ScratchWrite(i, static_cast<uint16_t>(0x100 + i))).ok());
    ASSERT_TRUE(WaitFor([&] { return cell.applies == i; }));
  }
  ASSERT_TRUE(WaitFor([&] { return Queued(server.get()) == static_cast<int>(10 * kScratchWriteSize); }))
      << Queued(server.get());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 10u);
  EXPECT_EQ(Queued(server.get()), 0);
  EXPECT_EQ(cell.applies, 10u);
  EXPECT_GE(w.session()->stats().deferred_consumes, 1u);
  for (uint32_t i = 11; i <= 200; ++i) {
    ASSERT_TRUE(client_->SendRaw(ScratchWrite(i, static_cast<uint16_t>(0x100 + i))).ok());
  }
  ASSERT_TRUE(WaitFor([&] { return cell.applies == 200; }));
  EXPECT_LT(Queued(server.get()), 2048 + 8192) << "bounded";
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 200u);
  EXPECT_EQ(cell.applies, 200u);
}

// Kill inside a deferred run (writes 1..5 each in its own wake-up, after a
// committed ADD): 1 = the 5th applied, not recorded (the successor consumes
// 4 and applies the 5th again); 3 = the 5th recorded (consumes 5, applies
// none again); 2 = the run consumed when a read ended it (nothing left; the
// read is answered by the successor). The successor resets the socket's peek
// offset, so the cell ends at the last value with every write applied once
// (the in-flight one at most twice) and the stream in step.
class DeferredRunCrashTest : public ResumeTest, public ::testing::WithParamInterface<int> {};

TEST_P(DeferredRunCrashTest, EveryWriteAppliedOnce) {
  const int stage = GetParam();
  DurableCell cell;
  std::atomic<bool>& armed = armed_;
  std::atomic<bool>& died = died_;
  SessionOptions o = KillAt(stage, stage == 2 ? 1 : 5);
  auto w = std::make_unique<Worker>(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kAdd, 3).ok());
  armed = true;  // the ADD's stages all ran before its reply
  for (uint32_t i = 1; i <= 5; ++i) {
    ASSERT_TRUE(client_->SendRaw(ScratchWrite(i, static_cast<uint16_t>(0x100 + i))).ok());
    ASSERT_TRUE(WaitFor([&] { return cell.applies == i || died; }));
  }
  Header rh;
  rh.msg_id = 0x7777;
  rh.command = kCmdRegionRead;
  RegionAccess ra{ExampleDevice::kScratch, kBar0, 4};
  rh.msg_size = kHeaderSize + sizeof(ra);
  std::vector<uint8_t> read;
  AppendStruct(&read, rh);
  AppendStruct(&read, ra);
  if (stage == 2) {
    ASSERT_TRUE(client_->SendRaw(read).ok());
  }
  ASSERT_TRUE(WaitFor([&] { return died.load(); }));
  w->Die();
  w.reset();
  SessionOptions o2 = o;
  o2.crash_point = nullptr;
  Worker successor(env_.get(), o2, &store_, ConnFromStore(), true, &cell);
  ASSERT_NE(successor.session(), nullptr);
  if (stage != 2) {
    for (uint32_t i = 6; i <= 8; ++i) {
      ASSERT_TRUE(client_->SendRaw(ScratchWrite(i, static_cast<uint16_t>(0x100 + i))).ok());
    }
    ASSERT_TRUE(client_->SendRaw(read).ok());
  }
  auto reply = client_->ReceiveReply(0x7777, kCmdRegionRead);
  ASSERT_TRUE(reply.ok()) << reply.status();
  uint32_t v;
  ASSERT_EQ(reply->payload.size(), sizeof(ra) + 4);
  std::memcpy(&v, reply->payload.data() + sizeof(ra), 4);
  EXPECT_EQ(v, stage == 2 ? 5u : 8u);
  EXPECT_EQ(cell.applies, stage == 2 ? 5u : (stage == 1 ? 9u : 8u));
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kAcc), 3u);
  ASSERT_TRUE(client_->Write32(kBar0, ExampleDevice::kScratch, 42, /*posted=*/true).ok());
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 42u);
}

INSTANTIATE_TEST_SUITE_P(Stages, DeferredRunCrashTest, ::testing::Values(1, 3, 2));

// A message split across two sends, and a write carrying an fd, arriving
// while a run is deferred: the run is consumed and the rest handled from the
// socket head (the split message whole, the fd-carrying write refused as
// ever, the writes around them applied once).
TEST_F(ResumeTest, DeferredRunMeetsPartialMessagesAndFds) {
  DurableCell cell;
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  Worker w(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  UniqueFd server = ConnFromStore();
  ASSERT_TRUE(client_->Version().ok());
  auto send_one = [&](uint32_t v, uint32_t applies) {
    ASSERT_TRUE(client_->SendRaw(ScratchWrite(v, static_cast<uint16_t>(0x200 + v))).ok());
    ASSERT_TRUE(WaitFor([&] { return cell.applies == applies; }));
  };
  send_one(1, 1);
  send_one(2, 2);
  ASSERT_TRUE(WaitFor([&] { return Queued(server.get()) == static_cast<int>(2 * kScratchWriteSize); }));
  // Split: 20 bytes, then (a little later) the rest.
  const std::vector<uint8_t> split = ScratchWrite(3, 0x203);
  ASSERT_TRUE(client_->SendRaw(absl::MakeConstSpan(split).first(20)).ok());
  absl::SleepFor(absl::Milliseconds(5));
  ASSERT_TRUE(client_->SendRaw(absl::MakeConstSpan(split).subspan(20)).ok());
  ASSERT_TRUE(WaitFor([&] { return cell.applies == 3; }));
  send_one(4, 4);
  // An fd-carrying write in the middle of a deferred run.
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  ASSERT_TRUE(client_->SendRaw(ScratchWrite(99, 0x299), absl::MakeConstSpan(&fd, 1)).ok());
  send_one(5, 5);
  EXPECT_EQ(*client_->Read32(kBar0, ExampleDevice::kScratch), 5u);
  EXPECT_EQ(cell.applies, 5u);
  EXPECT_EQ(w.session()->stats().posted_errors, 1u);
  EXPECT_EQ(Queued(server.get()), 0);
}

// The client closes while a run is deferred: the session sees the EOF (the
// edge-triggered watch still reports it), consumes the run and disconnects.
TEST_F(ResumeTest, ClientClosingDuringADeferredRunDisconnects) {
  DurableCell cell;
  SessionOptions o;
  o.crash_consistent = true;
  o.journal_path = dir_ + "/journal";
  Worker w(env_.get(), o, &store_, std::move(server_end_), false, &cell);
  ASSERT_TRUE(client_->Version().ok());
  for (uint32_t i = 1; i <= 3; ++i) {
    ASSERT_TRUE(client_->SendRaw(ScratchWrite(i, static_cast<uint16_t>(0x300 + i))).ok());
    ASSERT_TRUE(WaitFor([&] { return cell.applies == i; }));
  }
  client_.reset();  // closes the socket
  EXPECT_TRUE(WaitFor([&] { return !w.Connected(); }));
  EXPECT_EQ(cell.applies, 3u);
}

}  // namespace
}  // namespace emud::vfio_user
