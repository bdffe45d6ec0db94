#include "avf/admin_queue.h"

#include <vector>

#include "avf/avf_state.pb.h"
#include "avf/testing.h"
#include "gtest/gtest.h"

namespace emud::avf {
namespace {

constexpr uint64_t kBase = 0x100000;
constexpr uint32_t kLen = 8;
constexpr uint64_t kAtq = kBase;
constexpr uint64_t kArq = kBase + 0x1000;
constexpr uint64_t kBufs = kBase + 0x2000;  // 4 KiB per slot, ATQ then ARQ

// Guest memory reachable only by copies, as a DMA window without an fd is
// (Translate: UNAVAILABLE): the admin queue then reads and writes each
// descriptor through Read/Write instead of translating the ring once.
class CopyOnlyDma : public vfio_user::DmaMemory {
 public:
  explicit CopyOnlyDma(testing::FakeDma* mem) : mem_(mem) {}
  absl::StatusOr<uint8_t*> Translate(uint64_t, uint64_t, Access) override {
    return absl::UnavailableError("window without fd");
  }
  absl::Status Read(uint64_t iova, absl::Span<uint8_t> dst) override { return mem_->Read(iova, dst); }
  absl::Status Write(uint64_t iova, absl::Span<const uint8_t> src) override { return mem_->Write(iova, src); }

 private:
  testing::FakeDma* mem_;
};

// Every test runs twice: with the ring translated (GetParam() true) and
// with every access copied.
class AdminQueueTest : public ::testing::TestWithParam<bool> {
 protected:
  AdminQueueTest() : dma_(kBase, 0x40000), copy_only_(&dma_) {
    aq_.WriteReg(kVfAtqh1, 0);
    aq_.WriteReg(kVfAtqt1, 0);
    aq_.WriteReg(kVfAtqlen1, kLen | kAqLenEnable);  // ENABLE before the base
    aq_.WriteReg(kVfAtqbal1, static_cast<uint32_t>(kAtq));
    aq_.WriteReg(kVfAtqbah1, 0);
    for (uint32_t i = 0; i < kLen; ++i) ArmArq(i);
    aq_.WriteReg(kVfArqlen1, kLen | kAqLenEnable);
    aq_.WriteReg(kVfArqbal1, static_cast<uint32_t>(kArq));
    aq_.WriteReg(kVfArqt1, kLen - 1);
  }
  void ArmArq(uint32_t i) {
    AqDesc d;
    d.flags = kAqFlagBuf | kAqFlagLb;
    d.datalen = 4096;
    d.addr_low = static_cast<uint32_t>(kBufs + (kLen + i) * 4096);
    d.Encode(dma_.At(kArq + i * 32));
  }
  void PutAtq(uint32_t slot, uint32_t v_op, std::vector<uint8_t> msg, uint16_t opcode = kAqOpcSendMsgToPf) {
    AqDesc d;
    d.flags = kAqFlagSi;
    d.opcode = opcode;
    d.cookie_high = v_op;
    if (!msg.empty()) {
      d.flags |= kAqFlagBuf | kAqFlagRd;
      d.datalen = static_cast<uint16_t>(msg.size());
      d.addr_low = static_cast<uint32_t>(kBufs + slot * 4096);
      std::memcpy(dma_.At(kBufs + slot * 4096), msg.data(), msg.size());
    }
    d.Encode(dma_.At(kAtq + slot * 32));
  }
  struct Seen {
    uint32_t op;
    std::vector<uint8_t> msg;
    bool dma_error;
  };
  std::vector<Seen> Process() {
    std::vector<Seen> seen;
    aq_.ProcessAtq(dma(), [&](uint32_t op, int32_t, absl::Span<const uint8_t> m, bool err) {
      seen.push_back({op, std::vector<uint8_t>(m.begin(), m.end()), err});
      return AdminQueue::Next::kContinue;
    });
    return seen;
  }

  vfio_user::DmaMemory* dma() { return GetParam() ? static_cast<vfio_user::DmaMemory*>(&dma_) : &copy_only_; }

  testing::FakeDma dma_;
  CopyOnlyDma copy_only_;
  AdminQueue aq_;
};

TEST_P(AdminQueueTest, BaseReadsBackExactly) {
  EXPECT_EQ(aq_.ReadReg(kVfAtqbal1), static_cast<uint32_t>(kAtq));
  EXPECT_EQ(aq_.ReadReg(kVfArqbal1), static_cast<uint32_t>(kArq));
  EXPECT_EQ(aq_.ReadReg(kVfArqlen1), kLen | kAqLenEnable);
}

TEST_P(AdminQueueTest, ConsumesDescriptorsAndWritesThemBack) {
  PutAtq(0, 1, {1, 0, 0, 0, 1, 0, 0, 0});
  PutAtq(1, 3, {});
  aq_.WriteReg(kVfAtqt1, 2);
  auto seen = Process();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].op, 1u);
  EXPECT_EQ(seen[0].msg.size(), 8u);
  EXPECT_EQ(seen[1].op, 3u);
  EXPECT_TRUE(seen[1].msg.empty());
  EXPECT_EQ(aq_.ReadReg(kVfAtqh1), 2u);
  AqDesc d = AqDesc::Decode(dma_.At(kAtq));
  EXPECT_EQ(d.flags & (kAqFlagDd | kAqFlagCmp), kAqFlagDd | kAqFlagCmp);
  EXPECT_EQ(d.flags & kAqFlagErr, 0);
  EXPECT_EQ(d.cookie_high, 1u);
}

TEST_P(AdminQueueTest, WrapsAroundTheRing) {
  aq_.WriteReg(kVfAtqh1, kLen - 1);
  PutAtq(kLen - 1, 15, {});
  PutAtq(0, 15, {});
  aq_.WriteReg(kVfAtqt1, 1);
  EXPECT_EQ(Process().size(), 2u);
  EXPECT_EQ(aq_.ReadReg(kVfAtqh1), 1u);
}

TEST_P(AdminQueueTest, QueueShutdownCompletesAndUnknownOpcodeGetsErr) {
  PutAtq(0, 0, {}, kAqOpcQueueShutdown);
  PutAtq(1, 0, {}, 0x0123);
  aq_.WriteReg(kVfAtqt1, 2);
  EXPECT_TRUE(Process().empty());
  EXPECT_EQ(AqDesc::Decode(dma_.At(kAtq)).flags & (kAqFlagDd | kAqFlagErr), kAqFlagDd);
  AqDesc bad = AqDesc::Decode(dma_.At(kAtq + 32));
  EXPECT_EQ(bad.flags & kAqFlagErr, kAqFlagErr);
  EXPECT_EQ(bad.retval, kAqRcEnosys);
  EXPECT_EQ(aq_.counters().atq_bad_opcode, 1u);
}

TEST_P(AdminQueueTest, TailBeyondRingIsIgnored) {
  aq_.WriteReg(kVfAtqt1, kLen + 3);  // the SPDK-style infinite loop trigger
  EXPECT_TRUE(Process().empty());
  EXPECT_EQ(aq_.counters().atq_bad_tail, 1u);
  EXPECT_EQ(aq_.ReadReg(kVfAtqh1), 0u);
}

TEST_P(AdminQueueTest, RingOutsideDmaMapIsCountedAndFlagged) {
  aq_.WriteReg(kVfAtqbal1, 0xdead0000);
  aq_.WriteReg(kVfAtqt1, 1);
  EXPECT_TRUE(Process().empty());
  EXPECT_EQ(aq_.counters().atq_dma_errors, 1u);
  EXPECT_NE(aq_.ReadReg(kVfAtqlen1) & kAqLenCrit, 0u);
}

TEST_P(AdminQueueTest, AbsurdDatalenAndBadBufferAreReportedAsErrors) {
  AqDesc d;
  d.flags = kAqFlagSi | kAqFlagBuf;
  d.opcode = kAqOpcSendMsgToPf;
  d.cookie_high = 6;
  d.datalen = 0xFFFF;
  d.addr_low = static_cast<uint32_t>(kBufs);
  d.Encode(dma_.At(kAtq));
  d.datalen = 64;
  d.addr_high = 0x7777;  // outside the map
  d.Encode(dma_.At(kAtq + 32));
  aq_.WriteReg(kVfAtqt1, 2);
  auto seen = Process();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[0].dma_error);
  EXPECT_TRUE(seen[1].dma_error);
  EXPECT_EQ(aq_.counters().atq_bad_datalen, 1u);
  EXPECT_EQ(aq_.counters().atq_dma_errors, 1u);
}

TEST_P(AdminQueueTest, PostFillsArqSlotLikeThePf) {
  std::vector<uint8_t> payload = {1, 0, 0, 0, 1, 0, 0, 0};
  ASSERT_TRUE(aq_.Post(dma(), 1, 0, payload));
  EXPECT_EQ(aq_.ReadReg(kVfArqh1), 1u);
  AqDesc d = AqDesc::Decode(dma_.At(kArq));
  EXPECT_EQ(d.opcode, kAqOpcSendMsgToVf);
  EXPECT_EQ(d.flags & kAqFlagErr, 0);
  EXPECT_EQ(d.flags & (kAqFlagDd | kAqFlagCmp | kAqFlagBuf), kAqFlagDd | kAqFlagCmp | kAqFlagBuf);
  EXPECT_EQ(d.datalen, 8);
  EXPECT_EQ(d.cookie_high, 1u);
  EXPECT_EQ(d.cookie_low, 0u);
  EXPECT_EQ(d.addr(), kBufs + kLen * 4096) << "buffer address preserved";
  EXPECT_EQ(std::memcmp(dma_.At(d.addr()), payload.data(), 8), 0);
  ASSERT_TRUE(aq_.Post(dma(), 6, -5, {}));
  AqDesc e = AqDesc::Decode(dma_.At(kArq + 32));
  EXPECT_EQ(static_cast<int32_t>(e.cookie_low), -5);
  EXPECT_EQ(e.flags & kAqFlagBuf, 0);
}

TEST_P(AdminQueueTest, FullRingBacklogsThenDrainsAndOverflowSetsOvfl) {
  // ARQT = 7: slots 0..6 usable.
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(aq_.Post(dma(), 15, 0, {}));
  EXPECT_FALSE(aq_.Post(dma(), 15, 0, {}));
  EXPECT_EQ(aq_.backlog_size(), 1u);
  aq_.WriteReg(kVfArqt1, 0);  // driver consumed slot 7's predecessor... frees slot 7
  EXPECT_EQ(aq_.DrainBacklog(dma()), 1);
  EXPECT_EQ(aq_.backlog_size(), 0u);
  for (size_t i = 0; i < AdminQueue::kMaxBacklog; ++i) aq_.Post(dma(), 15, 0, {});
  EXPECT_EQ(aq_.ReadReg(kVfArqlen1) & kAqLenOvfl, 0u);
  EXPECT_FALSE(aq_.Post(dma(), 15, 0, {}));
  EXPECT_NE(aq_.ReadReg(kVfArqlen1) & kAqLenOvfl, 0u);
  EXPECT_EQ(aq_.counters().arq_dropped, 1u);
}

TEST_P(AdminQueueTest, DisabledArqDropsAndResetClearsEverything) {
  aq_.Reset();
  EXPECT_EQ(aq_.ReadReg(kVfArqlen1), 0u);
  EXPECT_EQ(aq_.ReadReg(kVfAtqbal1), 0u);
  EXPECT_FALSE(aq_.Post(dma(), 1, 0, {}));
  EXPECT_EQ(aq_.backlog_size(), 0u);
  EXPECT_EQ(aq_.counters().arq_dropped, 1u);
}

TEST_P(AdminQueueTest, ArqShutdownDropsTheBacklog) {
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(aq_.Post(dma(), 15, 0, {}));
  EXPECT_FALSE(aq_.Post(dma(), 1, 0, {}));
  EXPECT_FALSE(aq_.Post(dma(), 3, 0, {}));
  ASSERT_EQ(aq_.backlog_size(), 2u);
  // Clearing only error bits (iavf_adminq_task) keeps ENABLE: nothing lost.
  aq_.WriteReg(kVfArqlen1, aq_.ReadReg(kVfArqlen1) & ~kAqLenOvfl);
  EXPECT_EQ(aq_.backlog_size(), 2u);
  // iavf_shutdown_arq: H, T, LEN = 0, BAL, BAH.
  aq_.WriteReg(kVfArqh1, 0);
  aq_.WriteReg(kVfArqt1, 0);
  aq_.WriteReg(kVfArqlen1, 0);
  EXPECT_EQ(aq_.backlog_size(), 0u);
  EXPECT_EQ(aq_.counters().arq_dropped, 2u);
  // Re-initialised: the fresh ring gets nothing stale.
  aq_.WriteReg(kVfArqlen1, 8 | kAqLenEnable);
  aq_.WriteReg(kVfArqt1, 7);
  EXPECT_EQ(aq_.DrainBacklog(dma()), 0);
  EXPECT_EQ(aq_.ReadReg(kVfArqh1), 0u);
}

TEST_P(AdminQueueTest, StopEndsTheLoop) {
  PutAtq(0, 2, {});
  PutAtq(1, 1, {});
  aq_.WriteReg(kVfAtqt1, 2);
  int calls = 0;
  aq_.ProcessAtq(dma(), [&](uint32_t, int32_t, absl::Span<const uint8_t>, bool) {
    ++calls;
    aq_.Reset();
    return AdminQueue::Next::kStop;
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(aq_.ReadReg(kVfAtqh1), 0u);
}

TEST_P(AdminQueueTest, SaveRestoreKeepsPositionsAndBacklog) {
  for (int i = 0; i < 8; ++i) aq_.Post(dma(), 15, 0, {static_cast<uint8_t>(i)});
  AvfAdminQueueState st;
  aq_.SaveTo(&st);
  AdminQueue other;
  other.RestoreFrom(st);
  EXPECT_EQ(other.ReadReg(kVfArqh1), aq_.ReadReg(kVfArqh1));
  EXPECT_EQ(other.ReadReg(kVfAtqbal1), aq_.ReadReg(kVfAtqbal1));
  EXPECT_EQ(other.backlog_size(), 1u);
  other.WriteReg(kVfArqt1, 3);
  EXPECT_EQ(other.DrainBacklog(dma()), 1);
  AqDesc d = AqDesc::Decode(dma_.At(kArq + 7 * 32));
  EXPECT_EQ(*dma_.At(d.addr()), 7);
}

INSTANTIATE_TEST_SUITE_P(RingAccess, AdminQueueTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "Translated" : "Copied"; });

}  // namespace
}  // namespace emud::avf
