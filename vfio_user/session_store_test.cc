#include "vfio_user/session_store.h"

#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "state_store/store.h"
#include "vfio_user/dma_table.h"
#include "vfio_user/irq_state.h"
#include "vfio_user/session.h"
#include "worker_api/fd_keys.h"

namespace emud::vfio_user {
namespace {

class SessionStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // mkdtemp: parallel runs in sandboxes may share a pid.
    std::string tmpl = absl::StrCat(testing::TempDir(), "/vfu-store-XXXXXX");
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    state_store::EnvOptions o;
    o.tables = SessionTables();
    auto env = state_store::Env::Open(dir_, o);
    ASSERT_TRUE(env.ok()) << env.status();
    env_ = std::move(*env);
  }
  void TearDown() override {
    env_.reset();
    if (std::system(absl::StrCat("rm -rf ", dir_).c_str()) != 0) ADD_FAILURE() << "cleanup";
  }
  absl::Status Write(const std::function<absl::Status(state_store::WriteTxn&)>& fn) {
    return env_->Update([&](state_store::WriteTxn& txn) { return fn(txn); });
  }
  // An fd store holding duplicates of `fds`, recording the keys asked for.
  std::function<absl::StatusOr<UniqueFd>(absl::string_view)> Lookup() {
    return [this](absl::string_view key) -> absl::StatusOr<UniqueFd> {
      asked_.emplace_back(key);
      auto it = fds_.find(std::string(key));
      if (it == fds_.end()) return absl::NotFoundError(key);
      return UniqueFd(::dup(it->second));
    };
  }

  std::string dir_;
  std::unique_ptr<state_store::Env> env_;
  std::map<std::string, int> fds_;
  std::vector<std::string> asked_;
};

std::vector<uint32_t> IrqCounts() { return {1, 0, 4, 1, 1}; }

TEST_F(SessionStoreTest, LiveSessionRoundTripsAndNamesItsFds) {
  UniqueFd ram(::memfd_create("ram", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(ram.get(), 1 << 16), 0);
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
  DmaTable dma(16, true);
  ASSERT_TRUE(dma.Map(0x10000, 0x4000, kDmaFlagRead | kDmaFlagWrite, UniqueFd(::dup(ram.get())), 0x1000).ok());
  ASSERT_TRUE(dma.Map(0x100000, 0x1000, kDmaFlagRead, UniqueFd(), 0).ok());  // message-based
  IrqState irqs(IrqCounts());
  irqs.set_control(true, false);
  irqs.RestoreVector(kMsixIrq, 2, {true, false, true, true}, UniqueFd(::dup(efd.get())));
  session_store::Negotiated n;
  n.live = true;
  n.client_caps.max_msg_fds = 16;
  n.client_caps.max_data_xfer_size = 1 << 16;
  n.client_caps.max_dma_maps = 100;
  n.client_caps.write_multiple = true;
  n.seq = 42;
  n.next_server_msg_id = 7;
  n.dma_layout = DmaRwLayout::kQemu;
  ASSERT_TRUE(Write([&](state_store::WriteTxn& txn) -> absl::Status {
                if (auto s = session_store::PutNegotiated(txn, n); !s.ok()) return s;
                for (uint64_t iova : {0x10000, 0x100000, 0x200000}) {  // the last one: gone, deleted
                  if (auto s = session_store::PutDmaWindow(txn, dma, iova); !s.ok()) return s;
                }
                return session_store::PutIrqs(txn, irqs);
              }).ok());

  // The fd-store keys are the emud<->worker contract.
  EXPECT_EQ(worker_api::DmaFdKey(0x10000), "dma/10000");
  EXPECT_EQ(worker_api::IrqFdKey(kMsixIrq, 2), "irq/2/2");
  fds_["dma/10000"] = ram.get();
  fds_["irq/2/2"] = efd.get();
  DmaTable dma2(16, true);
  IrqState irqs2(IrqCounts());
  auto got = session_store::Restore(*env_, Lookup(), dma2, irqs2);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->live);
  EXPECT_EQ(got->client_caps.max_msg_fds, 16u);
  EXPECT_EQ(got->client_caps.max_data_xfer_size, 1u << 16);
  EXPECT_EQ(got->client_caps.max_dma_maps, 100u);
  EXPECT_TRUE(got->client_caps.write_multiple);
  EXPECT_EQ(got->seq, 42u);
  EXPECT_EQ(got->next_server_msg_id, 7);
  EXPECT_EQ(got->dma_layout, DmaRwLayout::kQemu);
  EXPECT_EQ(asked_, (std::vector<std::string>{"dma/10000", "irq/2/2"}));
  ASSERT_EQ(dma2.windows().size(), 2u);
  const DmaWindow& w = dma2.windows().at(0x10000);
  EXPECT_EQ(w.size, 0x4000u);
  EXPECT_EQ(w.prot, kDmaFlagRead | kDmaFlagWrite);
  EXPECT_EQ(w.fd_offset, 0x1000u);
  EXPECT_TRUE(w.has_fd);
  EXPECT_FALSE(dma2.windows().at(0x100000).has_fd);
  EXPECT_TRUE(irqs2.msix_enabled());
  EXPECT_FALSE(irqs2.function_masked());
  auto v = irqs2.Snapshot(kMsixIrq);
  ASSERT_EQ(v.size(), 4u);
  EXPECT_TRUE(v[2].has_fd);
  EXPECT_TRUE(v[2].guest_masked);
  EXPECT_TRUE(v[2].pending);
  EXPECT_FALSE(v[1].has_fd);

  // An unmapped window's record goes with it.
  dma.UnmapAll(nullptr);
  ASSERT_TRUE(Write([&](state_store::WriteTxn& txn) { return session_store::PutDmaWindow(txn, dma, 0x10000); }).ok());
  DmaTable dma3(16, true);
  IrqState irqs3(IrqCounts());
  ASSERT_TRUE(session_store::Restore(*env_, Lookup(), dma3, irqs3).ok());
  EXPECT_EQ(dma3.windows().size(), 1u);
}

TEST_F(SessionStoreTest, NothingLiveIsNotFoundAndAMissingFdIsDataLoss) {
  DmaTable dma(16, true);
  IrqState irqs(IrqCounts());
  EXPECT_EQ(session_store::Restore(*env_, Lookup(), dma, irqs).status().code(), absl::StatusCode::kNotFound);
  session_store::Negotiated n;  // not live: the client went away
  ASSERT_TRUE(Write([&](state_store::WriteTxn& txn) { return session_store::PutNegotiated(txn, n); }).ok());
  EXPECT_EQ(session_store::Restore(*env_, Lookup(), dma, irqs).status().code(), absl::StatusCode::kNotFound);

  n.live = true;
  UniqueFd ram(::memfd_create("ram", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(ram.get(), 1 << 16), 0);
  DmaTable with_window(16, true);
  ASSERT_TRUE(with_window.Map(0x10000, 0x1000, kDmaFlagRead, UniqueFd(::dup(ram.get())), 0).ok());
  ASSERT_TRUE(Write([&](state_store::WriteTxn& txn) -> absl::Status {
                if (auto s = session_store::PutNegotiated(txn, n); !s.ok()) return s;
                return session_store::PutDmaWindow(txn, with_window, 0x10000);
              }).ok());
  auto got = session_store::Restore(*env_, Lookup(), dma, irqs);  // the fd store lacks dma/10000
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
}

TEST_F(SessionStoreTest, LastRequestRoundTrip) {
  auto none = session_store::GetLastRequest(*env_);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());

  std::vector<uint8_t> request(40, 0x5a);
  Header h;
  h.msg_id = 0x4242;
  h.command = kCmdRegionWrite;
  h.msg_size = static_cast<uint32_t>(request.size());
  std::memcpy(request.data(), &h, kHeaderSize);
  Header rh;
  rh.msg_id = 0x4242;
  rh.command = kCmdRegionWrite;
  rh.flags = kFlagTypeReply;
  const std::vector<uint8_t> reply(16, 0x11);
  ASSERT_TRUE(Write([&](state_store::WriteTxn& txn) {
                return session_store::PutLastRequest(txn, 9, request, 0xfeedull, true, rh, reply);
              }).ok());
  auto last = session_store::GetLastRequest(*env_);
  ASSERT_TRUE(last.ok() && last->has_value());
  const LastRequestRecord& r = **last;
  EXPECT_EQ(r.seq(), 9u);
  EXPECT_EQ(r.msg_size(), 40u);
  EXPECT_EQ(r.header(), std::string(reinterpret_cast<const char*>(request.data()), kHeaderSize));
  EXPECT_EQ(r.digest(), 0xfeedull);
  EXPECT_EQ(r.request().size(), 40u);
  EXPECT_TRUE(r.wants_reply());
  EXPECT_EQ(r.reply_header(), std::string(reinterpret_cast<const char*>(&rh), sizeof(rh)));
  EXPECT_EQ(r.reply_payload(), std::string(16, 0x11));

  // A large request keeps only its header (and size and digest).
  std::vector<uint8_t> big(300, 1);
  std::memcpy(big.data(), &h, kHeaderSize);
  ASSERT_TRUE(Write([&](state_store::WriteTxn& txn) {
                return session_store::PutLastRequest(txn, 10, big, 1, false, rh, {});
              }).ok());
  last = session_store::GetLastRequest(*env_);
  ASSERT_TRUE(last.ok() && last->has_value());
  EXPECT_EQ((*last)->msg_size(), 300u);
  EXPECT_TRUE((*last)->request().empty());
  EXPECT_EQ((*last)->header().size(), kHeaderSize);
  EXPECT_TRUE((*last)->reply_payload().empty());
}

}  // namespace
}  // namespace emud::vfio_user
