#include "tests/guest/iavf_driver.h"

#include <memory>
#include <string>
#include <vector>

#include "avf/device.h"
#include "gtest/gtest.h"
#include "tests/guest/guest_memory.h"
#include "tests/guest/inprocess_bus.h"

namespace emud::guest {
namespace {

namespace vc = avf::vc;

struct StatsHooks : avf::DataPathHooks {
  void GetStats(vc::EthStats* s) override { s->rx_unicast = 42; }
};

class GuestTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(avf::DeviceOptions{}); }
  void Make(avf::DeviceOptions o, DriverOptions d = {}) {
    drv_.reset();
    bus_.reset();
    auto dev = avf::Device::Create(o);
    ASSERT_TRUE(dev.ok()) << dev.status();
    dev_ = std::move(*dev);
    dev_->set_hooks(&hooks_);
    if (!mem_) {
      auto m = GuestMemory::Create(64 << 20);
      ASSERT_TRUE(m.ok()) << m.status();
      mem_ = std::move(*m);
    }
    bus_ = std::make_unique<InProcessBus>(dev_.get(), mem_.get());
    drv_ = std::make_unique<IavfDriver>(bus_.get(), d);
  }

  StatsHooks hooks_;
  std::unique_ptr<GuestMemory> mem_;
  std::unique_ptr<avf::Device> dev_;
  std::unique_ptr<InProcessBus> bus_;
  std::unique_ptr<IavfDriver> drv_;
};

TEST_F(GuestTest, LinuxBringUpSequenceReachesLinkUp) {
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  EXPECT_FALSE(drv_->link_up());
  ASSERT_TRUE(drv_->Open().ok());
  EXPECT_TRUE(drv_->link_up());
  EXPECT_EQ(drv_->link_speed(), 25000u);
  // iavf_process_aq_command priority order; no HENA ops (iavf_init_rss).
  // VLAN_V2 (granted instead of VLAN): its caps right after the resources
  // (__IAVF_INIT_GET_OFFLOAD_VLAN_V2_CAPS), then the netdev's initial
  // CTAG_RX/TX features.
  const std::vector<std::string> want = {
      "VERSION",        "GET_VF_RESOURCES", "GET_OFFLOAD_VLAN_V2_CAPS", "GET_SUPPORTED_RXDIDS",
      "CONFIG_IRQ_MAP", "CONFIG_RSS_KEY",   "CONFIG_RSS_LUT",   "ENABLE_VLAN_STRIPPING_V2",
      "ENABLE_VLAN_INSERTION_V2", "ADD_ETH_ADDR",   "CONFIG_VSI_QUEUES", "ENABLE_QUEUES"};
  EXPECT_EQ(drv_->trace(), want);
  EXPECT_EQ(dev_->rss().hena, avf::kRssHenaDefault) << "RSS hashes on the PF's default types";
  EXPECT_EQ(drv_->num_active_queues(), 4u);
  EXPECT_EQ(drv_->num_msix_vectors(), 5u);
  EXPECT_EQ(drv_->caps() & (vc::kCapL2 | vc::kCapRssPf | vc::kCapWbOnItr),
            vc::kCapL2 | vc::kCapRssPf | vc::kCapWbOnItr);
  EXPECT_EQ(drv_->caps() & (vc::kCapEncap | vc::kCapEncapCsum), vc::kCapEncap | vc::kCapEncapCsum)
      << "Linux iavf asks for the tunnel offloads; ice grants them";
  EXPECT_GT(drv_->admin_interrupts(), 0u) << "replies arrive through MSI-X vector 0";
  EXPECT_EQ(dev_->counters().vc_errors, 0u);
  for (uint32_t q = 0; q < 4; ++q) {
    EXPECT_TRUE(dev_->rx_queue(q).enabled);
    EXPECT_EQ(dev_->rx_queue(q).ring_addr, drv_->rx_ring(q).desc.iova);
    EXPECT_EQ(dev_->tx_queue(q).ring_addr, drv_->tx_ring(q).desc.iova);
    EXPECT_EQ(dev_->RxTail(q), 511u) << "RX buffers posted before CONFIG_VSI_QUEUES";
    EXPECT_EQ(dev_->rx_queue(q).msix_vector, q + 1);
    EXPECT_TRUE(dev_->vector_state(q + 1).armed);
  }
  ASSERT_EQ(dev_->mac_filters().size(), 1u);
  EXPECT_EQ(dev_->mac_filters()[0].addr, drv_->mac());
  EXPECT_EQ(dev_->mac_filters()[0].addr[0] & 0x03, 0x02) << "random locally administered MAC";
  EXPECT_EQ(dev_->rss().lut[5], 1);
  auto st = drv_->RequestStats();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->rx_unicast, 42u);
}

TEST_F(GuestTest, ResetAndReinitialiseBringsLinkBack) {
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  const size_t before = drv_->trace().size();
  ASSERT_TRUE(drv_->Reset().ok());
  EXPECT_TRUE(drv_->link_up());
  std::vector<std::string> after(drv_->trace().begin() + before, drv_->trace().end());
  const std::vector<std::string> want = {
      "RESET_VF",       "GET_VF_RESOURCES", "GET_OFFLOAD_VLAN_V2_CAPS", "GET_SUPPORTED_RXDIDS",
      "CONFIG_IRQ_MAP", "ADD_ETH_ADDR",   "CONFIG_VSI_QUEUES", "ENABLE_QUEUES",           "CONFIG_RSS_KEY",
      "CONFIG_RSS_LUT", "ENABLE_VLAN_STRIPPING_V2", "ENABLE_VLAN_INSERTION_V2"};
  EXPECT_EQ(after, want);
  EXPECT_EQ(dev_->counters().vf_resets, 1u);
  EXPECT_GT(dev_->aq_counters().atq_processed, 0u);
  EXPECT_EQ(dev_->aq_counters().atq_bad_opcode, 0u) << "the AQ queue_shutdown command is understood";
  EXPECT_EQ(dev_->counters().vc_errors, 0u);
  for (uint32_t q = 0; q < 4; ++q) EXPECT_TRUE(dev_->tx_queue(q).enabled);
  ASSERT_TRUE(drv_->RequestStats().ok());
  // And again, from the down state.
  ASSERT_TRUE(drv_->Close().ok());
  EXPECT_FALSE(dev_->tx_queue(0).enabled);
  ASSERT_TRUE(drv_->Reset().ok());
  EXPECT_FALSE(drv_->link_up());
  ASSERT_TRUE(drv_->Open().ok());
  EXPECT_TRUE(drv_->link_up());
}

TEST_F(GuestTest, DriverReloadAndFlr) {
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  const uint64_t resets = dev_->counters().vf_resets;
  ASSERT_TRUE(drv_->Remove().ok());
  EXPECT_EQ(dev_->counters().vf_resets, resets + 1) << "iavf_remove resets the VF";
  EXPECT_EQ(dev_->aq_counters().atq_bad_opcode, 0u);
  EXPECT_FALSE(dev_->rx_queue(0).enabled);
  const size_t used_after_remove = mem_->bytes_in_use();
  EXPECT_EQ(used_after_remove, 0u) << "rings and AQ memory returned";
  // A new driver instance binds again (modprobe -r; modprobe).
  drv_ = std::make_unique<IavfDriver>(bus_.get());
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  // Whole-device reset (vfio-user DEVICE_RESET / FLR), then a fresh driver.
  ASSERT_TRUE(bus_->DeviceReset().ok());
  EXPECT_FALSE(dev_->rx_queue(0).enabled);
  drv_ = std::make_unique<IavfDriver>(bus_.get());
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  EXPECT_TRUE(drv_->link_up());
}

TEST_F(GuestTest, RequestedQueuesChangeAfterReset) {
  Make(avf::DeviceOptions{.max_queue_pairs = 8}, DriverOptions{.max_queues = 8});
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  EXPECT_EQ(drv_->num_active_queues(), 8u);
  // ethtool -L combined 2: REQUEST_QUEUES, the PF resets the VF.
  ASSERT_TRUE(drv_->Exec(vc::kOpRequestQueues, {2, 0}).status().code() ==
              absl::StatusCode::kDeadlineExceeded);  // granted: no reply, a reset
  EXPECT_TRUE(drv_->reset_impending());
  // The watchdog sees the PF's reset and re-initialises without RESET_VF.
  const size_t sent = drv_->trace().size();
  auto handled = drv_->Watchdog();
  ASSERT_TRUE(handled.ok()) << handled.status();
  EXPECT_TRUE(*handled);
  EXPECT_EQ(drv_->trace()[sent], "GET_VF_RESOURCES");
  EXPECT_EQ(drv_->vf_queue_pairs(), 2u);
  EXPECT_EQ(drv_->num_active_queues(), 2u);
  EXPECT_EQ(drv_->num_msix_vectors(), 3u);
  EXPECT_TRUE(drv_->link_up());
}

TEST_F(GuestTest, PfInitiatedResetIsDetectedByTheWatchdog) {
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  auto idle = drv_->Watchdog();
  ASSERT_TRUE(idle.ok());
  EXPECT_FALSE(*idle);
  dev_->ResetVfFromPf();
  EXPECT_EQ(dev_->ReadReg(avf::kVfArqlen1) & avf::kAqLenEnable, 0u);
  const size_t sent = drv_->trace().size();
  auto handled = drv_->Watchdog();
  ASSERT_TRUE(handled.ok()) << handled.status();
  EXPECT_TRUE(*handled);
  EXPECT_TRUE(drv_->link_up());
  EXPECT_NE(drv_->trace()[sent], "RESET_VF") << "PF-initiated: the driver does not ask again";
  EXPECT_EQ(dev_->counters().vf_resets, 1u);
  // Link flap from the PF side.
  dev_->SetLink(false, 25000);
  ASSERT_TRUE(drv_->PollArq().ok());
  EXPECT_FALSE(drv_->link_up());
  dev_->SetLink(true, 10000);
  ASSERT_TRUE(drv_->PollArq().ok());
  EXPECT_TRUE(drv_->link_up());
  EXPECT_EQ(drv_->link_speed(), 10000u);
}

TEST_F(GuestTest, DpdkBringUpOrderAlsoReachesLinkUp) {
  Make(avf::DeviceOptions{}, DriverOptions{.flavor = Flavor::kDpdk});
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  EXPECT_TRUE(drv_->link_up());
  // iavf_init_vf asks for the VLAN_V2 caps; dev_configure's
  // iavf_dev_init_vlan turns stripping and insertion off (testpmd's
  // default offloads) before RSS.
  const std::vector<std::string> want = {
      "VERSION",           "GET_VF_RESOURCES", "GET_SUPPORTED_RXDIDS", "GET_OFFLOAD_VLAN_V2_CAPS",
      "SET_RSS_HENA",
      "GET_STATS",         "DISABLE_VLAN_STRIPPING_V2", "DISABLE_VLAN_INSERTION_V2",
      "CONFIG_RSS_LUT",
      "CONFIG_RSS_KEY",    "GET_RSS_HENA_CAPS", "SET_RSS_HENA", "CONFIG_VSI_QUEUES", "CONFIG_IRQ_MAP",
      "ADD_ETH_ADDR",      "ENABLE_QUEUES",    "ENABLE_QUEUES", "ENABLE_QUEUES", "ENABLE_QUEUES",
      "ENABLE_QUEUES",     "ENABLE_QUEUES",    "ENABLE_QUEUES", "ENABLE_QUEUES"};
  EXPECT_EQ(drv_->trace(), want);
  EXPECT_EQ(dev_->counters().vc_errors, 0u);
  EXPECT_EQ(drv_->caps() & vc::kCapWbOnItr, vc::kCapWbOnItr);
  EXPECT_EQ(drv_->caps() & (vc::kCapEncap | vc::kCapEncapCsum), 0u)
      << "DPDK's iavf_get_vf_resource does not ask (it sets the tunnel fields regardless)";
  for (uint32_t q = 0; q < 4; ++q) {
    EXPECT_TRUE(dev_->rx_queue(q).enabled);
    EXPECT_TRUE(dev_->tx_queue(q).enabled);
    EXPECT_EQ(dev_->rx_queue(q).msix_vector, 1u) << "all RX queues on vector 1";
    EXPECT_EQ(dev_->tx_queue(q).msix_vector, 0u) << "DPDK maps no TX queue";
  }
  EXPECT_TRUE(dev_->vector_state(1).wb_on_itr);
  EXPECT_EQ(dev_->vector_state(1).itr[0], 2u);
  EXPECT_EQ(dev_->ReadReg(avf::VfintItrn1(0, 0)), 2u) << "DPDK's own check: ITRN1(0,0) reads 2";
  for (uint32_t q = 0; q < 4; ++q) {
    EXPECT_EQ(dev_->rx_queue(q).buffer_size, 2048u) << "default mbuf data room - headroom";
    EXPECT_EQ(dev_->rx_queue(q).max_frame, 1526u) << "MTU 1500 + IAVF_ETH_OVERHEAD";
  }
  EXPECT_EQ(dev_->counters().link_events, 1u) << "one LINK_CHANGE for 8 ENABLE_QUEUES";
  // Vector 0 served as iavf_dev_interrupt_handler does (no ICR01 read,
  // re-enable with CLEARPBA): once idle it stays quiet. (An event posted
  // right after a reply's interrupt and drained with it fires once more
  // after the re-enable: at most one empty handler run here.)
  EXPECT_GT(drv_->admin_interrupts(), 0u);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(drv_->RequestStats().ok());
  auto pending = bus_->WaitVector(0, absl::ZeroDuration());
  ASSERT_TRUE(pending.ok());
  EXPECT_EQ(*pending, 0u) << "no vector-0 interrupt without a new message";
  EXPECT_LE(drv_->empty_irq0_runs(), 1u);
  EXPECT_LE(drv_->admin_interrupts(), drv_->arq_messages() + drv_->empty_irq0_runs());
  ASSERT_TRUE(drv_->Reset().ok());
  EXPECT_TRUE(drv_->link_up());
}

// iavf_dev_close: stop (one DISABLE_QUEUES, no DEL_ETH_ADDR), promiscuous
// off only because it was on, RESET_VF without waiting for a reply, AQ
// shutdown, irq0 disabled.
// RX_FLEX_DESC: both flavours ask for it and for the RXDIDs; DPDK
// configures its default COMMS_OVS_1, Linux (no PTP) the legacy format, and
// either falls back to it for an RXDID the PF does not list.
TEST_F(GuestTest, FlexRxdidPerFlavour) {
  for (Flavor fl : {Flavor::kLinux, Flavor::kDpdk}) {
    SCOPED_TRACE(fl == Flavor::kDpdk ? "dpdk" : "linux");
    Make(avf::DeviceOptions{}, DriverOptions{.flavor = fl});
    ASSERT_TRUE(drv_->Probe().ok());
    ASSERT_TRUE(drv_->Init().ok());
    ASSERT_TRUE(drv_->Open().ok());
    EXPECT_NE(drv_->caps() & vc::kCapRxFlexDesc, 0u);
    EXPECT_EQ(drv_->supported_rxdids(), avf::kSupportedRxdids);
    const uint8_t want = fl == Flavor::kDpdk ? vc::kRxdidCommsOvs1 : vc::kRxdidLegacy1;
    EXPECT_EQ(drv_->rxdid(), want);
    for (uint32_t q = 0; q < drv_->num_active_queues(); ++q) EXPECT_EQ(dev_->rx_queue(q).rxdid, want);
    // Kept across a VF reset (asked again, configured again).
    ASSERT_TRUE(drv_->Reset().ok());
    EXPECT_EQ(dev_->rx_queue(0).rxdid, want);
    EXPECT_EQ(dev_->counters().vc_errors, 0u);
  }
  // FLEX_NIC on request; an RXDID not listed (16) falls back to 1.
  Make(avf::DeviceOptions{}, DriverOptions{.flavor = Flavor::kDpdk, .rxdid = vc::kRxdidFlexNic});
  ASSERT_TRUE(drv_->Probe().ok() && drv_->Init().ok() && drv_->Open().ok());
  EXPECT_EQ(dev_->rx_queue(0).rxdid, vc::kRxdidFlexNic);
  Make(avf::DeviceOptions{}, DriverOptions{.flavor = Flavor::kDpdk, .rxdid = 16});
  ASSERT_TRUE(drv_->Probe().ok() && drv_->Init().ok() && drv_->Open().ok());
  EXPECT_EQ(drv_->rxdid(), vc::kRxdidLegacy1);
  EXPECT_EQ(dev_->rx_queue(0).rxdid, vc::kRxdidLegacy1);
  // A device without RX_FLEX_DESC: not granted, not asked, legacy.
  avf::DeviceOptions plain;
  plain.supported_caps &= ~vc::kCapRxFlexDesc;
  Make(plain, DriverOptions{.flavor = Flavor::kDpdk});
  ASSERT_TRUE(drv_->Probe().ok() && drv_->Init().ok() && drv_->Open().ok());
  EXPECT_EQ(drv_->supported_rxdids(), 0u);
  EXPECT_EQ(dev_->rx_queue(0).rxdid, vc::kRxdidLegacy1);
  for (const auto& op : drv_->trace()) EXPECT_NE(op, "GET_SUPPORTED_RXDIDS");
}

TEST_F(GuestTest, DpdkCloseSequence) {
  Make(avf::DeviceOptions{}, DriverOptions{.flavor = Flavor::kDpdk});
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  ASSERT_TRUE(drv_->ConfigPromisc(true, false).ok());
  EXPECT_EQ(dev_->promisc_flags(), vc::kPromiscUnicast);
  const size_t before = drv_->trace().size();
  const absl::Status st = drv_->Remove();
  ASSERT_TRUE(st.ok()) << st;
  const std::vector<std::string> tail(drv_->trace().begin() + before, drv_->trace().end());
  const std::vector<std::string> want = {"DISABLE_QUEUES", "CONFIG_PROMISCUOUS_MODE", "RESET_VF"};
  EXPECT_EQ(tail, want);
  EXPECT_EQ(dev_->counters().vf_resets, 1u);
  EXPECT_EQ(dev_->ReadReg(avf::kVfintIcr0Ena1), 0u);
  EXPECT_EQ(dev_->ReadReg(avf::kVfintDynCtl01) & avf::kDynCtlIntena, 0u) << "irq0 disabled";
  EXPECT_LE(drv_->empty_irq0_runs(), 1u);
  EXPECT_EQ(dev_->counters().vc_errors, 0u);
}

TEST_F(GuestTest, DpdkCloseWithoutPromiscSendsNoPromisc) {
  Make(avf::DeviceOptions{}, DriverOptions{.flavor = Flavor::kDpdk});
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  ASSERT_TRUE(drv_->Open().ok());
  const size_t before = drv_->trace().size();
  ASSERT_TRUE(drv_->Remove().ok());
  const std::vector<std::string> tail(drv_->trace().begin() + before, drv_->trace().end());
  EXPECT_EQ(tail, (std::vector<std::string>{"DISABLE_QUEUES", "RESET_VF"}));
}

TEST_F(GuestTest, RegisterRssPathWritesOnePastTheEnd) {
  Make(avf::DeviceOptions{.supported_caps = vc::kCapL2 | vc::kCapRssReg});
  ASSERT_TRUE(drv_->Probe().ok());
  ASSERT_TRUE(drv_->Init().ok());
  EXPECT_EQ(drv_->caps(), vc::kCapL2 | vc::kCapRssReg);
  EXPECT_NE(dev_->ReadReg(avf::VfqfHkey(0)), 0u);
  EXPECT_EQ(dev_->ReadReg(avf::VfqfHlut(0)), 0x03020100u);
  EXPECT_NE(dev_->ReadReg(avf::VfqfHena(0)), 0u);
  ASSERT_TRUE(drv_->Open().ok());
  EXPECT_TRUE(drv_->link_up());
}

TEST(GuestMemoryTest, AllocatesAlignedZeroedAndCoalesces) {
  auto m = GuestMemory::Create(1 << 20, 0x7000);
  ASSERT_TRUE(m.ok());
  auto a = (*m)->Allocate(100, 4096);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->iova % 4096, 0u);
  auto b = (*m)->Allocate(5000, 128);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->iova % 128, 0u);
  EXPECT_EQ((*m)->Host(b->iova, 5000), b->host);
  std::memset(b->host, 0xab, 5000);
  (*m)->Free(*b);
  auto c = (*m)->Allocate(5000, 128);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->host[4999], 0);
  (*m)->Free(*a);
  (*m)->Free(*c);
  EXPECT_EQ((*m)->bytes_in_use(), 0u);
  auto all = (*m)->Allocate(1 << 20, 4096);
  EXPECT_TRUE(all.ok()) << "free ranges coalesced";
  EXPECT_FALSE((*m)->Allocate(1, 1).ok());
  EXPECT_EQ((*m)->Host(0x7000 + (1 << 20), 1), nullptr);
  EXPECT_EQ((*m)->Host(0x6fff, 1), nullptr);
}

}  // namespace
}  // namespace emud::guest
