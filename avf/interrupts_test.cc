#include "avf/interrupts.h"

#include <vector>

#include "avf/avf_state.pb.h"
#include "avf/testing.h"
#include "gtest/gtest.h"

namespace emud::avf {
namespace {

class InterruptsTest : public ::testing::Test {
 protected:
  InterruptsTest() : itrn_(48, 0), irq_(itrn_.data()) { irq_.set_sink(&sink_); }
  std::vector<uint32_t> itrn_;
  testing::FakeIrqs sink_;
  InterruptController irq_;
};

constexpr uint32_t kLinuxMiscEnable = kDynCtlIntena | kDynCtlItrIndxMask;  // 0x19

TEST_F(InterruptsTest, AdminCauseLatchesEvenWhileMaskedAndFiresWhenEnabled) {
  irq_.RaiseAdminQueue();
  EXPECT_TRUE(sink_.fired.empty());
  EXPECT_EQ(irq_.PeekIcr01() & kIcr0AdminQ, kIcr0AdminQ);
  irq_.WriteDynCtl01(kLinuxMiscEnable);
  EXPECT_TRUE(sink_.fired.empty()) << "cause not enabled in ICR0_ENA1 yet";
  irq_.WriteIcr0Ena1(kIcr0AdminQ);
  ASSERT_EQ(sink_.fired.size(), 1u);
  EXPECT_EQ(sink_.fired[0], 0u);
  // Read-to-clear.
  EXPECT_EQ(irq_.ReadIcr01(), kIcr0AdminQ);
  EXPECT_EQ(irq_.ReadIcr01(), 0u);
}

TEST_F(InterruptsTest, MiscVectorAutomasksUntilRearmed) {
  irq_.WriteDynCtl01(kLinuxMiscEnable);
  irq_.WriteIcr0Ena1(kIcr0AdminQ);
  irq_.RaiseAdminQueue();
  EXPECT_EQ(sink_.Count(0), 1);
  EXPECT_EQ(irq_.dyn_ctl01() & kDynCtlIntena, 0u) << "fired vector is disarmed";
  irq_.RaiseAdminQueue();
  EXPECT_EQ(sink_.Count(0), 1) << "no second interrupt while disarmed";
  // The handler reads ICR01 (clearing it) before re-arming: no refire.
  irq_.ReadIcr01();
  irq_.WriteDynCtl01(kLinuxMiscEnable);
  EXPECT_EQ(sink_.Count(0), 1);
  // A cause latched while disarmed fires on re-arm (no lost wakeup).
  irq_.WriteDynCtl01(0);
  irq_.RaiseAdminQueue();
  irq_.WriteDynCtl01(kLinuxMiscEnable);
  EXPECT_EQ(sink_.Count(0), 2);
}

// DPDK's vector-0 service with WB_ON_ITR granted (drivers/net/intel/iavf/
// iavf_ethdev.c:iavf_dev_interrupt_handler): iavf_disable_irq0 (ICR0_ENA1 =
// 0, DYN_CTL01 = ITR_INDX = 0x18), drain the ARQ, iavf_enable_irq0
// (ICR0_ENA1 = ADMINQ, DYN_CTL01 = INTENA | CLEARPBA | ITR_INDX = 0x1B). It
// never reads VFINT_ICR01, so a latched ICR01 must not re-fire the vector.
constexpr uint32_t kDpdkIrq0Disable = kDynCtlItrIndxMask;                                  // 0x18
constexpr uint32_t kDpdkIrq0Enable = kDynCtlIntena | kDynCtlClearPba | kDynCtlItrIndxMask;  // 0x1B

TEST_F(InterruptsTest, DpdkVector0HandlerGetsOneInterruptPerMessageAndNoStorm) {
  ASSERT_EQ(kDpdkIrq0Disable, 0x18u);
  ASSERT_EQ(kDpdkIrq0Enable, 0x1Bu);
  auto disable = [&] {
    irq_.WriteIcr0Ena1(0);
    irq_.WriteDynCtl01(kDpdkIrq0Disable);
  };
  auto enable = [&] {
    irq_.WriteIcr0Ena1(kIcr0AdminQ);
    irq_.WriteDynCtl01(kDpdkIrq0Enable);
  };
  enable();  // iavf_dev_init
  EXPECT_EQ(sink_.Count(0), 0);
  for (int msg = 1; msg <= 3; ++msg) {
    irq_.RaiseAdminQueue();
    EXPECT_EQ(sink_.Count(0), msg) << "one interrupt per posted message";
    disable();
    enable();  // nothing new since the fire
    EXPECT_EQ(sink_.Count(0), msg) << "re-enable with nothing new must not fire";
    disable();
    enable();
    EXPECT_EQ(sink_.Count(0), msg);
  }
  // A reply posted while the handler runs (vector disabled) fires after its
  // re-enable although that write carries CLEARPBA.
  irq_.RaiseAdminQueue();
  EXPECT_EQ(sink_.Count(0), 4);
  disable();
  irq_.RaiseAdminQueue();
  EXPECT_EQ(sink_.Count(0), 4);
  enable();
  EXPECT_EQ(sink_.Count(0), 5);
  disable();
  enable();
  EXPECT_EQ(sink_.Count(0), 5);
  // ICR01 still latches for the no-WB_ON_ITR alarm (iavf_dev_alarm_handler)
  // and for Linux, which read it.
  EXPECT_EQ(irq_.PeekIcr01() & kIcr0AdminQ, kIcr0AdminQ);
}

// DPDK without WB_ON_ITR (iavf_dev_alarm_handler, every 50 ms): disable,
// read ICR01, drain if ADMINQ, enable. Messages are seen by the read.
TEST_F(InterruptsTest, DpdkAlarmPathSeesLatchedAdminq) {
  irq_.WriteIcr0Ena1(kIcr0AdminQ);
  irq_.WriteDynCtl01(kDpdkIrq0Enable);
  irq_.RaiseAdminQueue();
  irq_.WriteIcr0Ena1(0);
  irq_.WriteDynCtl01(kDpdkIrq0Disable);
  EXPECT_EQ(irq_.ReadIcr01() & kIcr0AdminQ, kIcr0AdminQ);
  irq_.WriteIcr0Ena1(kIcr0AdminQ);
  irq_.WriteDynCtl01(kDpdkIrq0Enable);
  EXPECT_EQ(irq_.ReadIcr01(), 0u);
  EXPECT_EQ(sink_.Count(0), 1);
}

// Linux (iavf_main.c): iavf_msix_aq reads ICR01 and ICR0_ENA1 and queues
// the admin task, which drains the ARQ and re-arms with iavf_misc_irq_enable
// (DYN_CTL01 = 0x19, no CLEARPBA; ICR0_ENA1 = ADMINQ). Exactly one interrupt
// per message that the drain could not have seen, none lost.
TEST_F(InterruptsTest, LinuxMiscVectorOneInterruptPerMessageNoneLost) {
  auto misc_enable = [&] {
    irq_.WriteDynCtl01(kLinuxMiscEnable);
    irq_.WriteIcr0Ena1(kIcr0AdminQ);
  };
  auto isr = [&] {
    irq_.ReadIcr01();
    (void)irq_.icr0_ena1();
  };
  misc_enable();
  for (int i = 1; i <= 3; ++i) {
    irq_.RaiseAdminQueue();
    EXPECT_EQ(sink_.Count(0), i);
    isr();
    misc_enable();  // the task drained it
    EXPECT_EQ(sink_.Count(0), i) << "no refire without a new message";
  }
  // Posted after the ISR's read but before the re-arm (the drain may have
  // missed it): fires on the re-arm.
  irq_.RaiseAdminQueue();
  EXPECT_EQ(sink_.Count(0), 4);
  isr();
  irq_.RaiseAdminQueue();
  misc_enable();
  EXPECT_EQ(sink_.Count(0), 5);
  isr();
  misc_enable();
  EXPECT_EQ(sink_.Count(0), 5);
}

TEST_F(InterruptsTest, AdminEventFlagSurvivesSaveRestoreAndOldRecords) {
  irq_.WriteIcr0Ena1(kIcr0AdminQ);
  irq_.WriteDynCtl01(kDpdkIrq0Enable);
  irq_.RaiseAdminQueue();
  EXPECT_EQ(sink_.Count(0), 1);
  AvfInterruptState fired;
  irq_.SaveTo(&fired);  // ICR01 latched, nothing new since the fire
  irq_.WriteDynCtl01(kDpdkIrq0Disable);
  irq_.RaiseAdminQueue();
  AvfInterruptState posted;
  irq_.SaveTo(&posted);  // a message posted while disabled

  std::vector<uint32_t> itrn2(48, 0);
  InterruptController other(itrn2.data());
  testing::FakeIrqs sink2;
  other.set_sink(&sink2);
  other.RestoreFrom(fired);
  other.WriteDynCtl01(kDpdkIrq0Enable);
  EXPECT_EQ(sink2.Count(0), 0) << "restored: nothing new, no fire";
  other.RestoreFrom(posted);
  other.WriteDynCtl01(kDpdkIrq0Enable);
  EXPECT_EQ(sink2.Count(0), 1) << "restored: the message posted while disabled fires";
  // A record written before the flag existed: a latched ADMINQ counts as new.
  AvfInterruptState old = fired;
  old.clear_misc_event_pending();
  other.RestoreFrom(old);
  other.WriteDynCtl01(kDpdkIrq0Enable);
  EXPECT_EQ(sink2.Count(0), 2);
}

TEST_F(InterruptsTest, QueueVectorPendingFiresOnRearmAndClearPbaDropsIt) {
  EXPECT_FALSE(irq_.RaiseQueueVector(1));
  EXPECT_TRUE(irq_.state(1).pending);
  irq_.WriteDynCtln(0, kDynCtlIntena | kDynCtlItrIndxMask);
  EXPECT_EQ(sink_.Count(1), 1);
  EXPECT_FALSE(irq_.state(1).armed);
  EXPECT_FALSE(irq_.state(1).pending);

  EXPECT_FALSE(irq_.RaiseQueueVector(1));  // disarmed: pending
  irq_.WriteDynCtln(0, kDynCtlClearPba);   // dropped
  irq_.WriteDynCtln(0, kDynCtlIntena | kDynCtlItrIndxMask);
  EXPECT_EQ(sink_.Count(1), 1);
  EXPECT_TRUE(irq_.RaiseQueueVector(1));
  EXPECT_EQ(sink_.Count(1), 2);
}

// DPDK rx-interrupt mode (iavf_ethdev.c:iavf_dev_rx_queue_intr_enable)
// re-arms a queue vector with INTENA | CLEARPBA | ITR_INDX (0x1B). A packet
// written back between the application's last empty poll and that re-arm
// must still wake it: an arming write keeps a pending data-path cause
// (costs at most one empty poll). CLEARPBA without INTENA still drops it.
TEST_F(InterruptsTest, DpdkRxInterruptRearmWithClearPbaKeepsPendingCause) {
  constexpr uint32_t kDpdkRxIntrEnable = kDynCtlIntena | kDynCtlClearPba | kDynCtlItrIndxMask;
  irq_.WriteDynCtln(0, kDpdkRxIntrEnable);
  EXPECT_TRUE(irq_.RaiseQueueVector(1));  // wakes the lcore; vector auto-masks
  EXPECT_EQ(sink_.Count(1), 1);
  EXPECT_FALSE(irq_.RaiseQueueVector(1));  // a packet after its last empty poll
  irq_.WriteDynCtln(0, kDpdkRxIntrEnable);  // rte_eth_dev_rx_intr_enable
  EXPECT_EQ(sink_.Count(1), 2) << "the packet wakes the application";
  irq_.WriteDynCtln(0, kDpdkRxIntrEnable);
  EXPECT_EQ(sink_.Count(1), 2) << "nothing pending: no fire";
  EXPECT_TRUE(irq_.state(1).armed);
  // Linux's re-arm (no CLEARPBA) behaves as before.
  irq_.WriteDynCtln(0, kDynCtlItrIndxMask);  // disarm
  EXPECT_FALSE(irq_.RaiseQueueVector(1));
  irq_.WriteDynCtln(0, kDynCtlIntena | kDynCtlItrIndxMask);
  EXPECT_EQ(sink_.Count(1), 3);
}

TEST_F(InterruptsTest, SwintTrigFiresWithIntena) {
  // Linux's "force write-back" kick: INTENA | ITR_INDX=3 | SWINT_TRIG | SW_ITR_INDX_ENA.
  irq_.WriteDynCtln(2, kDynCtlIntena | kDynCtlItrIndxMask | kDynCtlSwintTrig | kDynCtlSwItrIndxEna);
  EXPECT_EQ(sink_.Count(3), 1);
  EXPECT_EQ(irq_.dyn_ctln(2) & kDynCtlSwintTrig, 0u) << "self-clearing";
}

TEST_F(InterruptsTest, IntenaMskKeepsArmStateWhileUpdatingItr) {
  irq_.WriteDynCtln(0, kDynCtlIntena | kDynCtlItrIndxMask);
  ASSERT_TRUE(irq_.state(1).armed);
  irq_.WriteDynCtln(0, kDynCtlIntenaMsk | (1u << kDynCtlItrIndxShift) | (25u << kDynCtlIntervalShift));
  EXPECT_TRUE(irq_.state(1).armed);
  EXPECT_EQ(irq_.itrn(1, 0), 25u);
  EXPECT_EQ(itrn_[16 * 1 + 0], 25u) << "stored in the ITRN register page";
  // Without INTENA_MSK, INTENA=0 disarms.
  irq_.WriteDynCtln(0, kDynCtlWbOnItr | kDynCtlItrIndxMask);
  EXPECT_FALSE(irq_.state(1).armed);
  EXPECT_TRUE(irq_.state(1).wb_on_itr);
}

// The register values of iavf_txrx.c's NAPI cycle on a queue vector with
// WB_ON_ITR granted: the interrupt auto-masks, NAPI still polling arms
// write-back-on-ITR with INTENA clear (iavf_enable_wb_on_itr), completions
// during that time stay pending, and iavf_update_enable_itr's re-arm with an
// ITR update (iavf_buildreg_itr: INTENA | idx << 3 | usecs << 4) delivers
// exactly one interrupt and stores the interval in 2 us units.
TEST_F(InterruptsTest, LinuxNapiCycleWithWbOnItrAndItrUpdate) {
  auto buildreg_itr = [](uint32_t type, uint32_t usecs) {
    return kDynCtlIntena | (type << kDynCtlItrIndxShift) | ((usecs & 0x1FFE) << (kDynCtlIntervalShift - 1));
  };
  irq_.WriteDynCtln(0, kDynCtlIntena | kDynCtlItrIndxMask);  // iavf_irq_enable_queues
  EXPECT_TRUE(irq_.RaiseQueueVector(1));                      // RX completion -> napi_schedule
  EXPECT_FALSE(irq_.state(1).armed);
  irq_.WriteDynCtln(0, kDynCtlWbOnItr | kDynCtlItrIndxMask);  // iavf_enable_wb_on_itr
  EXPECT_FALSE(irq_.RaiseQueueVector(1));                     // more work while polling
  EXPECT_FALSE(irq_.RaiseQueueVector(1));
  EXPECT_EQ(sink_.Count(1), 1);
  irq_.WriteDynCtln(0, buildreg_itr(0, 50));  // napi_complete_done -> iavf_update_enable_itr
  EXPECT_EQ(sink_.Count(1), 2) << "the pending completion is not lost, and fires once";
  EXPECT_EQ(irq_.itrn(0, 0), 25u) << "50 us in 2 us units";
  EXPECT_FALSE(irq_.state(1).wb_on_itr);
  // Hung-queue recovery from the watchdog (iavf_force_wb) with nothing pending.
  irq_.WriteDynCtln(0, buildreg_itr(3, 0));
  irq_.WriteDynCtln(0, kDynCtlIntena | kDynCtlItrIndxMask | kDynCtlSwintTrig | kDynCtlSwItrIndxEna);
  EXPECT_EQ(sink_.Count(1), 3);
}

TEST_F(InterruptsTest, ItrIndexThreeDoesNotUpdate) {
  irq_.WriteItrn(0, 4, 50);
  irq_.WriteDynCtln(4, kDynCtlIntena | kDynCtlItrIndxMask | (7u << kDynCtlIntervalShift));
  EXPECT_EQ(irq_.itrn(0, 4), 50u);
  irq_.WriteDynCtln(4, kDynCtlIntena | (0u << kDynCtlItrIndxShift) | (7u << kDynCtlIntervalShift));
  EXPECT_EQ(irq_.itrn(0, 4), 7u);
  irq_.WriteDynCtl01(kDynCtlIntena | (2u << kDynCtlItrIndxShift) | (9u << kDynCtlIntervalShift));
  EXPECT_EQ(irq_.itr01(2), 9u);
}

TEST_F(InterruptsTest, OutOfRangeVectorsAreCountedNotTouched) {
  EXPECT_FALSE(irq_.RaiseQueueVector(0));
  EXPECT_FALSE(irq_.RaiseQueueVector(17));
  EXPECT_FALSE(irq_.RaiseQueueVector(0xFFFFFFFF));
  irq_.WriteDynCtln(16, kDynCtlIntena | kDynCtlSwintTrig);
  EXPECT_EQ(irq_.bad_vector(), 4u);
  EXPECT_TRUE(sink_.fired.empty());
}

TEST_F(InterruptsTest, DetachedCausesWaitForSink) {
  irq_.set_sink(nullptr);
  irq_.WriteDynCtln(0, kDynCtlIntena);
  EXPECT_FALSE(irq_.RaiseQueueVector(1));
  irq_.set_sink(&sink_);
  irq_.WriteDynCtln(0, kDynCtlIntena);
  EXPECT_EQ(sink_.Count(1), 1);
}

TEST_F(InterruptsTest, ResetDisablesEverything) {
  irq_.WriteDynCtl01(kLinuxMiscEnable);
  irq_.WriteIcr0Ena1(kIcr0AdminQ);
  irq_.WriteDynCtln(0, kDynCtlIntena);
  irq_.WriteItrn(1, 0, 30);
  irq_.Reset();
  irq_.RaiseAdminQueue();
  irq_.RaiseQueueVector(1);
  EXPECT_TRUE(sink_.fired.empty());
  EXPECT_EQ(irq_.icr0_ena1(), 0u);
  EXPECT_EQ(irq_.itrn(1, 0), 0u);
}

TEST_F(InterruptsTest, SaveRestoreReproducesBehaviour) {
  irq_.WriteDynCtl01(kLinuxMiscEnable);
  irq_.WriteIcr0Ena1(kIcr0AdminQ);
  irq_.WriteDynCtln(3, kDynCtlIntena | (1u << kDynCtlItrIndxShift) | (12u << kDynCtlIntervalShift));
  irq_.RaiseQueueVector(2);  // pending, vector 2 not armed
  AvfInterruptState st;
  irq_.SaveTo(&st);

  std::vector<uint32_t> itrn2(48, 0);
  InterruptController other(itrn2.data());
  testing::FakeIrqs sink2;
  other.set_sink(&sink2);
  other.RestoreFrom(st);
  EXPECT_EQ(other.dyn_ctl01(), irq_.dyn_ctl01());
  EXPECT_EQ(other.itrn(1, 3), 12u);
  EXPECT_TRUE(other.state(2).pending);
  other.RaiseAdminQueue();
  EXPECT_EQ(sink2.Count(0), 1);
  EXPECT_TRUE(other.RaiseQueueVector(4));
  other.WriteDynCtln(1, kDynCtlIntena);
  EXPECT_EQ(sink2.Count(2), 1) << "restored pending bit fires on re-arm";
}

}  // namespace
}  // namespace emud::avf
