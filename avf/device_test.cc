#include "avf/device.h"

#include <array>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "avf/avf_state.pb.h"
#include "avf/testing.h"
#include "state_store/record_codec.h"
#include "gtest/gtest.h"
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

namespace emud::avf {
namespace {

using testing::ArqMessage;
using testing::FakeDma;
using testing::FakeIrqs;
using testing::MiniDriver;

constexpr uint64_t kRamBase = 0x40000000;
constexpr size_t kRamSize = 2 << 20;
// Linux iavf's requested capabilities (iavf_send_vf_config_msg, ~6.x).
constexpr uint32_t kLinuxCaps = vc::kCapL2 | vc::kCapRssPf | vc::kCapRssAq | vc::kCapRssReg |
                                vc::kCapVlan | vc::kCapWbOnItr | vc::kCapReqQueues |
                                vc::kCapAdvLinkSpeed | vc::kCapVlanV2 | vc::kCapCrc |
                                vc::kCapRxFlexDesc | vc::kCapRssPctypeV2 | vc::kCapEncap |
                                vc::kCapEncapCsum;

class Bytes {
 public:
  template <typename T>
  Bytes& Add(const T& v) {
    size_t at = b_.size();
    b_.resize(at + sizeof(T));
    std::memcpy(b_.data() + at, &v, sizeof(T));
    return *this;
  }
  Bytes& Zero(size_t n) {
    b_.resize(b_.size() + n, 0);
    return *this;
  }
  absl::Span<const uint8_t> span() const { return b_; }
  std::vector<uint8_t>& vec() { return b_; }

 private:
  std::vector<uint8_t> b_;
};

struct RecordingHooks : DataPathHooks {
  void OnTxDoorbell(uint32_t q) override { tx_doorbells.push_back(q); }
  void OnRxDoorbell(uint32_t q) override { rx_doorbells.push_back(q); }
  void OnQueuesEnabled(QueueMask rx, QueueMask tx) override { enabled.push_back({rx, tx}); }
  void OnQueuesDisabled(QueueMask rx, QueueMask tx) override { disabled.push_back({rx, tx}); }
  void GetStats(vc::EthStats* s) override { s->rx_bytes = 1234, s->tx_unicast = 7; }
  void OnFiltersChanged() override { ++filters_changed; }
  std::vector<uint32_t> tx_doorbells, rx_doorbells;
  std::vector<std::pair<QueueMask, QueueMask>> enabled, disabled;
  int filters_changed = 0;
};

class DeviceTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(DeviceOptions{}); }
  void Make(DeviceOptions o) {
    auto d = Device::Create(o);
    ASSERT_TRUE(d.ok()) << d.status();
    dev_ = std::move(*d);
    dev_->Attach({&dma_, &irqs_});
    dev_->set_hooks(&hooks_);
    drv_ = std::make_unique<MiniDriver>(dev_.get(), &dma_);
  }

  ArqMessage Call(uint32_t op, absl::Span<const uint8_t> msg) {
    auto r = drv_->Call(op, msg);
    EXPECT_TRUE(r.has_value()) << "no reply to " << vc::OpName(op);
    return r.value_or(ArqMessage{});
  }
  int32_t Status(uint32_t op, absl::Span<const uint8_t> msg) { return Call(op, msg).v_retval; }

  void Negotiate() {
    drv_->InitAdminQueue();
    vc::VersionInfo v{1, 1};
    ASSERT_EQ(drv_->CallStruct(vc::kOpVersion, v)->v_retval, 0);
    ASSERT_EQ(drv_->CallStruct(vc::kOpGetVfResources, kLinuxCaps)->v_retval, 0);
  }

  uint64_t TxRing(uint32_t q) const { return drv_->scratch_base() + q * 0x10000; }
  uint64_t RxRing(uint32_t q) const { return drv_->scratch_base() + q * 0x10000 + 0x8000; }

  // CONFIG_VSI_QUEUES as Linux builds it (one element more than needed).
  Bytes VsiQueues(uint32_t n, uint32_t ring_len = 512, bool legacy_len = true) {
    Bytes b;
    b.Add(vc::VsiQueueConfigHeader{kVsiId, static_cast<uint16_t>(n), 0});
    for (uint32_t q = 0; q < n; ++q) {
      vc::QueuePairInfo p{};
      p.txq.vsi_id = kVsiId;
      p.txq.queue_id = q;
      p.txq.ring_len = ring_len;
      p.txq.dma_ring_addr = TxRing(q);
      p.rxq.vsi_id = kVsiId;
      p.rxq.queue_id = q;
      p.rxq.ring_len = ring_len;
      p.rxq.dma_ring_addr = RxRing(q);
      p.rxq.databuffer_size = 1536;
      p.rxq.max_pkt_size = kMaxFrameSize;
      p.rxq.rxdid = vc::kRxdidLegacy1;  // Linux granted RX_FLEX_DESC, without PTP
      b.Add(p);
    }
    if (legacy_len) b.Zero(sizeof(vc::QueuePairInfo));
    return b;
  }
  Bytes IrqMap(uint32_t nq) {
    Bytes b;
    b.Add(static_cast<uint16_t>(nq + 1));
    b.Add(vc::VectorMap{kVsiId, 0, 0, 0, 0, 0});
    for (uint32_t q = 0; q < nq; ++q) {
      b.Add(vc::VectorMap{kVsiId, static_cast<uint16_t>(q + 1), static_cast<uint16_t>(1u << q),
                          static_cast<uint16_t>(1u << q), 0, 1});
    }
    b.Zero(sizeof(vc::VectorMap));
    return b;
  }
  Bytes Select(uint32_t rx, uint32_t tx) {
    Bytes b;
    b.Add(vc::QueueSelect{kVsiId, 0, rx, tx});
    return b;
  }

  void BringUp(uint32_t nq = 4) {
    Negotiate();
    ASSERT_EQ(Status(vc::kOpConfigIrqMap, IrqMap(nq).span()), 0);
    ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(nq).span()), 0);
    uint32_t m = (1u << nq) - 1;
    ASSERT_EQ(Status(vc::kOpEnableQueues, Select(m, m).span()), 0);
  }

  FakeDma dma_{kRamBase, kRamSize};
  FakeIrqs irqs_;
  RecordingHooks hooks_;
  std::unique_ptr<Device> dev_;
  std::unique_ptr<MiniDriver> drv_;
};

// ------------------------------------------------------------ PCI identity

uint32_t Cfg32(Device& d, uint32_t off) {
  uint8_t b[4];
  EXPECT_TRUE(d.RegionRead(vfio_user::kConfigRegion, off, absl::MakeSpan(b)).ok());
  uint32_t v;
  std::memcpy(&v, b, 4);
  return v;
}
void CfgWrite32(Device& d, uint32_t off, uint32_t v) {
  EXPECT_TRUE(d.RegionWrite(vfio_user::kConfigRegion, off,
                            absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&v), 4))
                  .ok());
}

TEST_F(DeviceTest, PciIdentityBarsAndCapabilities) {
  EXPECT_EQ(Cfg32(*dev_, 0), 0x18898086u);
  EXPECT_EQ(Cfg32(*dev_, 8) >> 8, kClassEthernet);
  // BAR0: 64-bit memory, 64 KiB.
  EXPECT_EQ(Cfg32(*dev_, 0x10) & 0x6, 0x4u);
  CfgWrite32(*dev_, 0x10, 0xFFFFFFFF);
  EXPECT_EQ(Cfg32(*dev_, 0x10) & ~0xFu, ~uint32_t(kBar0Size - 1));
  // MSI-X: 17 vectors, table in BAR3 at 0, PBA in BAR3 at 0x2000.
  uint8_t msix = dev_->config_space().FindCapability(vfio_user::pci::kCapIdMsix);
  ASSERT_NE(msix, 0);
  uint32_t ctrl = Cfg32(*dev_, msix) >> 16;
  EXPECT_EQ((ctrl & 0x7FF) + 1, 17u);
  EXPECT_EQ(dev_->msix_vectors(), 17u);
  EXPECT_EQ(Cfg32(*dev_, msix + 4), 3u);
  EXPECT_EQ(Cfg32(*dev_, msix + 8), 0x2000u | 3u);
  uint8_t pcie = dev_->config_space().FindCapability(vfio_user::pci::kCapIdPcie);
  ASSERT_NE(pcie, 0);
  EXPECT_NE(Cfg32(*dev_, pcie + vfio_user::pci::kPcieDevCap) & vfio_user::pci::kPcieDevCapFlr, 0u);
  auto regions = dev_->Regions();
  EXPECT_EQ(regions[vfio_user::kBar0].size, kBar0Size);
  EXPECT_TRUE(regions[vfio_user::kBar0].mmap_areas.empty());
  EXPECT_EQ(regions[vfio_user::kBar3].size, kBar3Size);
  EXPECT_EQ(regions[vfio_user::kConfigRegion].size, 4096u);
  EXPECT_EQ(dev_->Irqs()[vfio_user::kMsixIrq].count, 17u);
  EXPECT_EQ(dev_->Irqs()[vfio_user::kIntxIrq].count, 0u);
}

TEST_F(DeviceTest, PowerOnRegisters) {
  EXPECT_EQ(dev_->ReadReg(kVfgenRstat) & kRstatMask, kVfrVfActive);
  for (uint32_t r : {kVfAtqlen1, kVfArqlen1, kVfAtqh1, kVfArqh1, kVfAtqbal1, kVfintDynCtl01,
                     kVfintIcr0Ena1}) {
    EXPECT_EQ(dev_->ReadReg(r), 0u) << std::hex << r;
  }
  EXPECT_EQ(dev_->ReadReg(0xF000), 0u) << "unknown offsets read 0";
  dev_->WriteReg(0xF000, 0x1234);
  EXPECT_EQ(dev_->ReadReg(0xF000), 0u);
}

// ------------------------------------------------------------ bring-up

TEST_F(DeviceTest, VersionAndResources) {
  drv_->InitAdminQueue();
  vc::VersionInfo v{1, 1};
  ArqMessage r = *drv_->CallStruct(vc::kOpVersion, v);
  EXPECT_EQ(r.desc.opcode, kAqOpcSendMsgToVf);
  EXPECT_EQ(r.desc.flags & kAqFlagErr, 0);
  ASSERT_EQ(r.payload.size(), 8u);
  auto pf = vc::Load<vc::VersionInfo>(r.payload, 0);
  EXPECT_EQ(pf.major, 1u);
  EXPECT_EQ(pf.minor, 1u);
  EXPECT_EQ(dev_->ReadReg(kVfAtqh1), 1u) << "ATQH advanced (VERSION_CHECK tests it)";

  r = *drv_->CallStruct(vc::kOpGetVfResources, kLinuxCaps);
  ASSERT_EQ(r.v_retval, 0);
  ASSERT_EQ(r.payload.size(), 36u);
  auto res = vc::Load<vc::VfResource>(r.payload, 0);
  EXPECT_EQ(res.num_vsis, 1);
  EXPECT_EQ(res.num_queue_pairs, 4);
  EXPECT_EQ(res.max_vectors, 5);
  EXPECT_EQ(res.max_mtu, kMaxFrameSize);
  EXPECT_EQ(res.vsi_res[0].vsi_type, int32_t(vc::kVsiTypeSriov));
  EXPECT_EQ(res.rss_key_size, 52u);
  EXPECT_EQ(res.rss_lut_size, 64u);
  const uint32_t must =
      vc::kCapL2 | vc::kCapRssPf | vc::kCapWbOnItr | vc::kCapEncap | vc::kCapEncapCsum;
  EXPECT_EQ(res.vf_cap_flags & must, must);
  EXPECT_EQ(res.vf_cap_flags & (1u << 22), 0u) << "RX_ENCAP_CSUM: ice never grants it";
  EXPECT_EQ(res.vf_cap_flags & ~kLinuxCaps, 0u) << "never more than requested";
  EXPECT_EQ(res.vf_cap_flags & vc::kCapRssAq, 0u);
  // Linux asks for VLAN and VLAN_V2: ice grants VLAN_V2 alone.
  EXPECT_EQ(res.vf_cap_flags & (vc::kCapVlanV2 | vc::kCapVlan), vc::kCapVlanV2);
}

TEST_F(DeviceTest, LegacyVfGetsResourcesWithoutCapabilityWord) {
  drv_->InitAdminQueue();
  vc::VersionInfo v{1, 0};
  auto ver = drv_->CallStruct(vc::kOpVersion, v);
  ASSERT_TRUE(ver.has_value());
  // A 1.0 VF (iavf_verify_api_ver refuses a PF minor above its own) is
  // answered 1.0, as ice_vc_get_ver_msg / i40e_vc_get_version_msg do.
  ASSERT_EQ(ver->payload.size(), sizeof(vc::VersionInfo));
  EXPECT_EQ(vc::Load<vc::VersionInfo>(ver->payload, 0).major, 1u);
  EXPECT_EQ(vc::Load<vc::VersionInfo>(ver->payload, 0).minor, 0u);
  ArqMessage r = Call(vc::kOpGetVfResources, {});
  EXPECT_EQ(r.v_retval, 0);
  // ice_vc_get_vf_res_msg: no RSS_PF -> RSS_REG (the legacy set asks for
  // it), and the legacy VLAN offload.
  EXPECT_EQ(vc::Load<vc::VfResource>(r.payload, 0).vf_cap_flags,
            vc::kCapL2 | vc::kCapRssReg | vc::kCapVlan);
  EXPECT_TRUE(dev_->vlan_strip()) << "ice_vf_init_vlan_stripping: on for a VLAN driver";
  // A 1.1 VF that asks for neither RSS_PF nor RSS_REG still gets RSS_REG.
  uint32_t caps = vc::kCapL2 | vc::kCapRssAq | vc::kCapWbOnItr;
  r = *drv_->CallStruct(vc::kOpGetVfResources, caps);
  EXPECT_EQ(vc::Load<vc::VfResource>(r.payload, 0).vf_cap_flags,
            vc::kCapL2 | vc::kCapRssReg | vc::kCapWbOnItr);
  // And with RSS_PF requested only RSS_PF.
  r = *drv_->CallStruct(vc::kOpGetVfResources, kLinuxCaps);
  EXPECT_EQ(vc::Load<vc::VfResource>(r.payload, 0).vf_cap_flags & (vc::kCapRssPf | vc::kCapRssReg),
            vc::kCapRssPf);
}

TEST_F(DeviceTest, FullBringUpRaisesLinkAndServesStats) {
  drv_->InitAdminQueue();
  dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | kDynCtlItrIndxMask);
  dev_->WriteReg(kVfintIcr0Ena1, kIcr0AdminQ);
  BringUp(4);
  EXPECT_GE(irqs_.Count(0), 1) << "admin interrupt on vector 0";
  EXPECT_EQ(dev_->ReadReg(kVfintIcr01) & kIcr0AdminQ, kIcr0AdminQ);
  EXPECT_EQ(dev_->ReadReg(kVfintIcr01), 0u) << "read-to-clear";
  ASSERT_EQ(hooks_.enabled.size(), 1u);
  EXPECT_EQ(hooks_.enabled[0], std::make_pair(QueueMask{0xF}, QueueMask{0xF}));
  // LINK_CHANGE follows the ENABLE_QUEUES reply.
  auto ev = drv_->Receive();
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->v_op, uint32_t(vc::kOpEvent));
  auto pe = vc::Load<vc::PfEvent>(ev->payload, 0);
  EXPECT_EQ(pe.event, vc::kEventLinkChange);
  EXPECT_EQ(pe.link_status, 1);
  EXPECT_EQ(pe.link_speed, 25000u) << "Mbps with ADV_LINK_SPEED";
  for (uint32_t q = 0; q < 4; ++q) {
    EXPECT_TRUE(dev_->tx_queue(q).enabled);
    EXPECT_EQ(dev_->tx_queue(q).ring_addr, TxRing(q));
    EXPECT_EQ(dev_->rx_queue(q).ring_len, 512u);
    EXPECT_EQ(dev_->rx_queue(q).buffer_size, 1536u);
    EXPECT_EQ(dev_->rx_queue(q).msix_vector, q + 1);
    EXPECT_EQ(dev_->tx_queue(q).itr_index, 1u);
  }
  ArqMessage st = Call(vc::kOpGetStats, Select(0, 0).span());
  ASSERT_EQ(st.payload.size(), sizeof(vc::EthStats));
  EXPECT_EQ(vc::Load<vc::EthStats>(st.payload, 0).rx_bytes, 1234u);
  EXPECT_EQ(vc::Load<vc::EthStats>(st.payload, 0).tx_unicast, 7u);
}

// DPDK (drivers/net/intel/iavf/iavf_ethdev.c:iavf_start_queues) enables
// one queue per ENABLE_QUEUES, TX then RX: one LINK_CHANGE (one LSC
// callback) for the whole start, not 2N. Linux (iavf_main.c:iavf_down sets
// link_up = false; iavf_virtchnl.c:iavf_virtchnl_completion only takes
// link-up while __IAVF_RUNNING) needs one after every ifup: DISABLE_QUEUES
// of everything, then ENABLE_QUEUES, sends it again.
TEST_F(DeviceTest, LinkChangeOnlyWhenTheFirstQueueStartsOrTheLinkChanged) {
  Negotiate();
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(4).span()), 0);
  auto link_events = [&] {  // events seen since the last call
    while (auto m = drv_->Receive()) drv_->events.push_back(*m);
    int n = 0;
    for (const ArqMessage& m : drv_->events) {
      if (m.v_op == uint32_t(vc::kOpEvent) &&
          vc::Load<vc::PfEvent>(m.payload, 0).event == vc::kEventLinkChange) {
        ++n;
      }
    }
    drv_->events.clear();
    return n;
  };
  for (int rx = 0; rx < 2; ++rx) {
    for (uint32_t q = 0; q < 4; ++q) {
      ASSERT_EQ(Status(vc::kOpEnableQueues, Select(rx ? 1u << q : 0, rx ? 0 : 1u << q).span()), 0);
    }
  }
  EXPECT_EQ(link_events(), 1) << "one event for DPDK's 8 ENABLE_QUEUES";
  EXPECT_EQ(dev_->counters().link_events, 1u);
  // Enabling what already runs: no event.
  ASSERT_EQ(Status(vc::kOpEnableQueues, Select(0xF, 0xF).span()), 0);
  EXPECT_EQ(link_events(), 0);
  // Partial stop and restart (DPDK rte_eth_dev_rx_queue_stop/start): no event.
  ASSERT_EQ(Status(vc::kOpDisableQueues, Select(1, 0).span()), 0);
  ASSERT_EQ(Status(vc::kOpEnableQueues, Select(1, 0).span()), 0);
  EXPECT_EQ(link_events(), 0);
  // Linux ifdown / ifup.
  ASSERT_EQ(Status(vc::kOpDisableQueues, Select(0xF, 0xF).span()), 0);
  ASSERT_EQ(Status(vc::kOpEnableQueues, Select(0xF, 0xF).span()), 0);
  EXPECT_EQ(link_events(), 1);
  // A link change while running still reports at once.
  dev_->SetLink(false, 25000);
  EXPECT_EQ(link_events(), 1);
  // Link went down while stopped: the next start reports the new state.
  ASSERT_EQ(Status(vc::kOpDisableQueues, Select(0xF, 0xF).span()), 0);
  dev_->SetLink(true, 25000);
  EXPECT_EQ(link_events(), 0) << "nothing running";
  ASSERT_EQ(Status(vc::kOpEnableQueues, Select(0, 1).span()), 0);
  EXPECT_EQ(link_events(), 1);
  EXPECT_EQ(dev_->counters().link_events, 4u);
}

// Vector 0 through the BAR0 registers with real mailbox traffic: DPDK's
// handler (iavf_ethdev.c:iavf_dev_interrupt_handler: irq0 off, drain, irq0 on
// with CLEARPBA, no ICR01 read) and Linux's (iavf_main.c:iavf_msix_aq reads
// ICR01 and ICR0_ENA1; the admin task drains, iavf_misc_irq_enable re-arms
// with 0x19). Neither sees an interrupt without a new message; each message
// the handler could not have drained fires once.
TEST_F(DeviceTest, Vector0InterruptsPerMessageForDpdkAndLinuxHandlers) {
  Negotiate();
  auto dpdk_handler = [&] {
    dev_->WriteReg(kVfintIcr0Ena1, 0);
    dev_->WriteReg(kVfintDynCtl01, kDynCtlItrIndxMask);
    int n = 0;
    while (drv_->Receive()) ++n;
    dev_->WriteReg(kVfintIcr0Ena1, kIcr0AdminQ);
    dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | kDynCtlClearPba | kDynCtlItrIndxMask);
    return n;
  };
  dev_->WriteReg(kVfintIcr0Ena1, kIcr0AdminQ);
  dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | kDynCtlClearPba | kDynCtlItrIndxMask);
  EXPECT_EQ(irqs_.Count(0), 1) << "VERSION/GET_VF_RESOURCES replies were polled, not yet signalled";
  EXPECT_EQ(dpdk_handler(), 0);
  EXPECT_EQ(irqs_.Count(0), 1) << "and that is the only stale one";
  for (int i = 2; i <= 4; ++i) {
    drv_->Send(vc::kOpGetStats, Select(0, 0).span());
    EXPECT_EQ(irqs_.Count(0), i);
    EXPECT_EQ(dpdk_handler(), 1);
    EXPECT_EQ(irqs_.Count(0), i) << "re-enable after draining: quiet";
  }
  // Linux.
  auto linux_isr_and_task = [&] {
    dev_->ReadReg(kVfintIcr01);
    dev_->ReadReg(kVfintIcr0Ena1);
    int n = 0;
    while (drv_->Receive()) ++n;
    dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | kDynCtlItrIndxMask);
    dev_->WriteReg(kVfintIcr0Ena1, kIcr0AdminQ);
    return n;
  };
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(4).span()), 0);
  ASSERT_EQ(dpdk_handler(), 0);
  const int base = irqs_.Count(0);
  drv_->Send(vc::kOpEnableQueues, Select(0xF, 0xF).span());  // reply + LINK_CHANGE
  EXPECT_EQ(irqs_.Count(0), base + 1);
  EXPECT_EQ(linux_isr_and_task(), 2);
  EXPECT_EQ(irqs_.Count(0), base + 1) << "both drained after the ICR01 read: no refire";
  drv_->Send(vc::kOpGetStats, Select(0, 0).span());
  EXPECT_EQ(irqs_.Count(0), base + 2);
  EXPECT_EQ(linux_isr_and_task(), 1);
  EXPECT_EQ(irqs_.Count(0), base + 2);
}

TEST_F(DeviceTest, LegacyLinkSpeedWithoutAdvCap) {
  drv_->InitAdminQueue();
  vc::VersionInfo v{1, 1};
  drv_->CallStruct(vc::kOpVersion, v);
  drv_->CallStruct(vc::kOpGetVfResources, vc::kCapL2);
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(1).span()), 0);
  ASSERT_EQ(Status(vc::kOpEnableQueues, Select(1, 1).span()), 0);
  auto ev = drv_->Receive();
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(vc::Load<vc::PfEvent>(ev->payload, 0).link_speed, vc::kLinkSpeed25Gb);
}

TEST_F(DeviceTest, FiltersPromiscVlanAndRss) {
  Negotiate();
  Bytes mac;
  mac.Add(uint16_t{kVsiId}).Add(uint16_t{2});
  mac.Add(vc::EtherAddr{{0x02, 1, 2, 3, 4, 5}, 1, 0});
  mac.Add(vc::EtherAddr{{0x33, 0x33, 0, 0, 0, 1}, 2, 0});
  mac.Zero(8);
  EXPECT_EQ(Status(vc::kOpAddEthAddr, mac.span()), 0);
  EXPECT_EQ(Status(vc::kOpAddEthAddr, mac.span()), 0) << "duplicates are fine";
  ASSERT_EQ(dev_->mac_filters().size(), 2u);
  EXPECT_EQ(dev_->mac_filters()[0].type, 1);
  Bytes del;
  del.Add(uint16_t{kVsiId}).Add(uint16_t{1}).Add(vc::EtherAddr{{0x33, 0x33, 0, 0, 0, 1}, 0, 0});
  EXPECT_EQ(Status(vc::kOpDelEthAddr, del.span()), 0);
  EXPECT_EQ(dev_->mac_filters().size(), 1u);
  EXPECT_GE(hooks_.filters_changed, 2);

  EXPECT_EQ(Status(vc::kOpConfigPromiscuousMode,
                   Bytes().Add(vc::PromiscInfo{kVsiId, vc::kPromiscUnicast | vc::kPromiscMulticast}).span()),
            0);
  EXPECT_EQ(dev_->promisc_flags(), 3);

  Bytes vlan;
  vlan.Add(uint16_t{kVsiId}).Add(uint16_t{1}).Add(uint16_t{100}).Zero(2);
  EXPECT_EQ(Status(vc::kOpAddVlan, vlan.span()), 0);
  EXPECT_TRUE(dev_->vlan_filters()[100]);
  EXPECT_EQ(Status(vc::kOpEnableVlanStripping, {}), 0);
  EXPECT_TRUE(dev_->vlan_strip());
  EXPECT_EQ(Status(vc::kOpDisableVlanStripping, {}), 0);
  EXPECT_FALSE(dev_->vlan_strip());

  Bytes key;
  key.Add(uint16_t{kVsiId}).Add(uint16_t{52});
  for (int i = 0; i < 52; ++i) key.Add(static_cast<uint8_t>(i));
  key.Zero(1);  // sizeof-based length, one byte more
  EXPECT_EQ(Status(vc::kOpConfigRssKey, key.span()), 0);
  EXPECT_EQ(dev_->rss().key[51], 51);
  Bytes lut;
  lut.Add(uint16_t{kVsiId}).Add(uint16_t{64});
  for (int i = 0; i < 64; ++i) lut.Add(static_cast<uint8_t>(i % 4));
  EXPECT_EQ(Status(vc::kOpConfigRssLut, lut.span()), 0);
  EXPECT_EQ(dev_->rss().lut[7], 3);
  ArqMessage caps = Call(vc::kOpGetRssHenaCaps, {});
  ASSERT_EQ(caps.payload.size(), 8u);
  uint64_t hena = vc::Load<uint64_t>(caps.payload, 0);
  EXPECT_EQ(hena, kRssHenaCaps);
  EXPECT_EQ(Status(vc::kOpSetRssHena, Bytes().Add(hena).span()), 0);
  EXPECT_EQ(dev_->rss().hena, hena);
  EXPECT_EQ(Status(vc::kOpSetRssHena, Bytes().Add(uint64_t{1}).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpConfigRssHfunc, Bytes().Add(vc::RssHfunc{kVsiId, 1, 0}).span()), 0);
  EXPECT_EQ(dev_->rss().hfunc, 1u);
  // Wrong key size is refused.
  Bytes shortkey;
  shortkey.Add(uint16_t{kVsiId}).Add(uint16_t{40}).Zero(40);
  EXPECT_EQ(Status(vc::kOpConfigRssKey, shortkey.span()), vc::kErrParam);
}

TEST_F(DeviceTest, RssRegistersAcceptTheOnePastTheEndWrites) {
  for (uint32_t i = 0; i <= kNumHkeyRegs; ++i) dev_->WriteReg(VfqfHkey(i), 0x01010101 * i);
  for (uint32_t i = 0; i <= kNumHlutRegs; ++i) dev_->WriteReg(VfqfHlut(i), i);
  dev_->WriteReg(VfqfHena(0), 0xdeadbeef);
  EXPECT_EQ(dev_->ReadReg(VfqfHkey(12)), 0x0c0c0c0cu);
  EXPECT_EQ(dev_->ReadReg(VfqfHkey(13)), 0u);
  EXPECT_EQ(dev_->ReadReg(VfqfHlut(15)), 15u);
  EXPECT_EQ(dev_->ReadReg(VfqfHlut(16)), 0u);
  EXPECT_EQ(dev_->ReadReg(VfqfHena(0)), 0xdeadbeefu);
}

// iavf_main.c:iavf_init_rss with RSS_PF only queues CONFIG_RSS_KEY/LUT; the
// hash types are the PF's default (i40e_virtchnl_pf.c:i40e_alloc_vsi_res
// programs I40E_DEFAULT_RSS_HENA), and they come back after every VF reset.
TEST_F(DeviceTest, RssHashTypesDefaultToThePfDefaultWithoutSetRssHena) {
  Negotiate();
  EXPECT_EQ(dev_->rss().hena, kRssHenaDefault);
  for (int bit : {31, 33, 35, 36, 38, 41, 43, 45, 46, 48, 63}) {
    EXPECT_TRUE(dev_->rss().hena >> bit & 1) << "PCTYPE " << bit;
  }
  EXPECT_EQ(dev_->ReadReg(VfqfHena(0)), static_cast<uint32_t>(kRssHenaDefault));
  EXPECT_EQ(dev_->ReadReg(VfqfHena(1)), static_cast<uint32_t>(kRssHenaDefault >> 32));
  ArqMessage caps = Call(vc::kOpGetRssHenaCaps, {});
  ASSERT_EQ(caps.payload.size(), 8u);
  EXPECT_EQ(vc::Load<uint64_t>(caps.payload, 0) & kRssHenaDefault, kRssHenaDefault)
      << "the default is within the capabilities";
  // DPDK clears it (SET_RSS_HENA(0)); a VF reset brings the default back.
  EXPECT_EQ(Status(vc::kOpSetRssHena, Bytes().Add(uint64_t{0}).span()), 0);
  EXPECT_EQ(dev_->rss().hena, 0u);
  drv_->Send(vc::kOpResetVf, {});
  dev_->ReadReg(kVfArqlen1);  // the driver's reset detector: the reset happens here
  EXPECT_EQ(dev_->rss().hena, kRssHenaDefault);
  EXPECT_EQ(dev_->ReadReg(VfqfHena(1)), static_cast<uint32_t>(kRssHenaDefault >> 32));
}

// The RSS_REG path (iavf_main.c:iavf_init_rss / iavf_config_rss_reg) writes
// the hash configuration through registers; it must reach what the data
// path hashes with, including iavf_config_rss_reg's one-past-the-end loop.
TEST_F(DeviceTest, RssRegisterWritesConfigureTheHash) {
  Negotiate();
  std::array<uint8_t, kRssKeySize> key;
  std::array<uint8_t, kRssLutSize> lut;
  for (uint32_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(0x80 + i);
  for (uint32_t i = 0; i < lut.size(); ++i) lut[i] = static_cast<uint8_t>(i % 3);
  const uint64_t hena = (1ull << 31) | (1ull << 33) | (1ull << 41) | (1ull << 43);
  dev_->WriteReg(VfqfHena(0), static_cast<uint32_t>(hena));
  dev_->WriteReg(VfqfHena(1), static_cast<uint32_t>(hena >> 32));
  for (uint32_t i = 0; i <= kRssKeySize / 4; ++i) {
    uint32_t v = 0xFFFFFFFF;  // Linux reads past its key buffer here
    if (i < kNumHkeyRegs) std::memcpy(&v, key.data() + 4 * i, 4);
    dev_->WriteReg(VfqfHkey(i), v);
  }
  for (uint32_t i = 0; i <= kRssLutSize / 4; ++i) {
    uint32_t v = 0xFFFFFFFF;
    if (i < kNumHlutRegs) std::memcpy(&v, lut.data() + 4 * i, 4);
    dev_->WriteReg(VfqfHlut(i), v);
  }
  EXPECT_EQ(dev_->rss().hena, hena);
  EXPECT_EQ(dev_->rss().key, key);
  EXPECT_EQ(dev_->rss().lut, lut);
  // And virtchnl-programmed values read back through the registers.
  Bytes k;
  k.Add(uint16_t{kVsiId}).Add(uint16_t{52});
  for (int i = 0; i < 52; ++i) k.Add(static_cast<uint8_t>(i));
  ASSERT_EQ(Status(vc::kOpConfigRssKey, k.span()), 0);
  EXPECT_EQ(dev_->ReadReg(VfqfHkey(1)), 0x07060504u);
}

// A stopped TX ring restarts at descriptor 0 (iavf_setup_tx_descriptors):
// the tail it had is dropped when the queue stops, or the device would fetch
// the next ring's descriptors before they are posted. A tail written after
// the stop belongs to the new ring and survives CONFIG_VSI_QUEUES: Linux's
// reset path can transmit between iavf_configure and that message, and a
// dropped tail there left the packet unsent for good (a TX watchdog on every
// later reset). RX tails are kept throughout (buffers are posted first).
TEST_F(DeviceTest, StoppedTxQueuesDropTheirTailAndKeepTailsWrittenAfter) {
  BringUp(2);
  dev_->WriteReg(QtxTail(0), 37);
  dev_->WriteReg(QtxTail(1), 5);
  ASSERT_EQ(Status(vc::kOpDisableQueues, Select(1, 1).span()), 0);
  EXPECT_EQ(dev_->TxTail(0), 0u) << "queue 0 stopped: its old tail goes";
  EXPECT_EQ(dev_->TxTail(1), 5u) << "queue 1 still runs";
  dev_->WriteReg(QrxTail(0), 511);  // iavf_configure posts RX buffers first
  dev_->WriteReg(QtxTail(0), 1);    // a transmit on the new ring, before the queue runs
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(1).span()), 0);
  EXPECT_EQ(dev_->TxTail(0), 1u);
  EXPECT_EQ(dev_->ReadReg(QtxTail(0)), 1u);
  EXPECT_EQ(dev_->RxTail(0), 511u);
  EXPECT_EQ(dev_->TxTail(1), 5u) << "queue 1 was not reconfigured";
  ASSERT_EQ(Status(vc::kOpEnableQueues, Select(1, 1).span()), 0);
  EXPECT_EQ(dev_->TxTail(0), 1u) << "the enabled queue serves the tail posted before it ran";
  // Reconfiguring a running queue stops it first: its tail goes too.
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(2).span()), 0);
  EXPECT_EQ(dev_->TxTail(0), 0u);
  EXPECT_EQ(dev_->TxTail(1), 0u);
}

// ------------------------------------------------------------ lengths and bad input

TEST_F(DeviceTest, LengthRulesAcceptLegacyAndMinimalSizesOnly) {
  Negotiate();
  EXPECT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(2, 512, /*legacy_len=*/true).span()), 0);
  EXPECT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(2, 512, /*legacy_len=*/false).span()), 0);
  Bytes cut = VsiQueues(2, 512, false);
  cut.vec().resize(cut.vec().size() - 1);
  EXPECT_EQ(Status(vc::kOpConfigVsiQueues, cut.span()), vc::kErrParam);
  Bytes zero;
  zero.Add(vc::VsiQueueConfigHeader{kVsiId, 0, 0}).Zero(64);
  EXPECT_EQ(Status(vc::kOpConfigVsiQueues, zero.span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpConfigIrqMap, Bytes().Add(uint16_t{0}).Zero(12).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpEnableQueues, Bytes().Add(uint32_t{0}).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpVersion, Bytes().Add(uint32_t{1}).span()), vc::kErrParam);
  // num_elements claiming more than was sent.
  EXPECT_EQ(Status(vc::kOpAddEthAddr, Bytes().Add(uint16_t{kVsiId}).Add(uint16_t{1000}).Zero(16).span()),
            vc::kErrParam);
  EXPECT_EQ(dev_->counters().vc_bad_length, 6u);
}

TEST_F(DeviceTest, UnknownOpsAreNotSupported) {
  Negotiate();
  // 58/59: ENABLE/DISABLE_VLAN_FILTERING_V2, which ice does not implement.
  for (uint32_t op : {0u, 4u, 5u, 16u, 17u, 20u, 30u, 45u, 58u, 59u, 0xFFFFFFFFu}) {
    ArqMessage r = Call(op, Bytes().Zero(16).span());
    EXPECT_EQ(r.v_retval, vc::kNotSupported) << op;
    EXPECT_EQ(r.desc.flags & kAqFlagErr, 0);
  }
  EXPECT_EQ(dev_->counters().vc_not_supported, 11u);
}

TEST_F(DeviceTest, QueueConfigValidation) {
  Negotiate();
  auto bad = [&](auto mutate) {
    Bytes b = VsiQueues(1);
    auto* p = reinterpret_cast<vc::QueuePairInfo*>(b.vec().data() + 8);
    mutate(*p);
    return Status(vc::kOpConfigVsiQueues, b.span());
  };
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.txq.dma_ring_addr = 0x1000; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.dma_ring_addr = kRamBase + kRamSize - 4096; }),
            vc::kErrParam) << "ring runs past the end of the map";
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.txq.dma_ring_addr += 8; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.txq.queue_id = p.rxq.queue_id = 4; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.txq.queue_id = p.rxq.queue_id = 0xFFFF; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.queue_id = 1; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.txq.ring_len = 100; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.ring_len = 0xFFFFFFFF; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.databuffer_size = 64; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.databuffer_size = 16384; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.max_pkt_size = 20000; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.txq.headwb_enabled = 1; }), vc::kErrParam);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.txq.vsi_id = 9; }), vc::kErrParam);
  EXPECT_FALSE(dev_->tx_queue(0).configured) << "failed messages change nothing";
  // ring_len 0 = that direction unconfigured (DPDK with unequal counts).
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.txq.ring_len = 0; }), 0);
  EXPECT_FALSE(dev_->tx_queue(0).configured);
  EXPECT_TRUE(dev_->rx_queue(0).configured);
  EXPECT_EQ(Status(vc::kOpEnableQueues, Select(0, 1).span()), vc::kErrParam)
      << "enabling an unconfigured queue";
  EXPECT_EQ(Status(vc::kOpEnableQueues, Select(1 << 5, 0).span()), vc::kErrParam)
      << "queue beyond those granted";
  EXPECT_GE(dev_->counters().bad_ring_addr, 3u);
  // crc_disable (keep the FCS): with the CRC capability, granted to a VF
  // asking for it as ice does; refused to one that did not.
  EXPECT_NE(dev_->granted_caps() & vc::kCapCrc, 0u);
  // Not while the VLAN tag is stripped (on by default for a driver asking
  // for VLAN, ice_vf_init_vlan_stripping; ice_vc_cfg_qs_msg refuses both).
  ASSERT_TRUE(dev_->vlan_strip());
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.crc_disable = 1; }), vc::kErrParam);
  ASSERT_EQ(Call(vc::kOpGetOffloadVlanV2Caps, {}).v_retval, 0);
  vc::VlanSetting off{};
  off.inner_ethertype_setting = vc::kVlanEthertype8100;
  off.vport_id = kVsiId;
  ASSERT_EQ(Status(vc::kOpDisableVlanStrippingV2, Bytes().Add(off).span()), 0);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.crc_disable = 1; }), 0);
  EXPECT_TRUE(dev_->rx_queue(0).keep_crc);
  ASSERT_EQ(drv_->CallStruct(vc::kOpGetVfResources, kLinuxCaps & ~vc::kCapCrc)->v_retval, 0);
  EXPECT_EQ(dev_->granted_caps() & vc::kCapCrc, 0u);
  EXPECT_EQ(bad([](vc::QueuePairInfo& p) { p.rxq.crc_disable = 1; }), vc::kErrParam);
}

// RX_FLEX_DESC as ice has it (ice_vc_query_rxdid, ice_vc_cfg_qs_msg).
TEST_F(DeviceTest, RxFlexDescriptorsNegotiatedAndValidatedLikeIce) {
  Negotiate();
  ASSERT_NE(dev_->granted_caps() & vc::kCapRxFlexDesc, 0u) << "granted to a driver asking";
  ArqMessage r = Call(vc::kOpGetSupportedRxdids, {});
  ASSERT_EQ(r.v_retval, 0);
  ASSERT_EQ(r.payload.size(), 8u);
  const uint64_t rxdids = vc::Load<uint64_t>(r.payload, 0);
  EXPECT_EQ(rxdids, (1ull << 1) | (1ull << 2) | (1ull << 22));
  EXPECT_EQ(rxdids & 1, 0u) << "never the 16-byte legacy descriptor";
  auto cfg = [&](uint8_t rxdid) {
    Bytes b = VsiQueues(2);
    reinterpret_cast<vc::QueuePairInfo*>(b.vec().data() + 8)[1].rxq.rxdid = rxdid;
    return Status(vc::kOpConfigVsiQueues, b.span());
  };
  for (uint8_t id : {1, 2, 22}) {
    EXPECT_EQ(cfg(id), 0) << int(id);
    EXPECT_EQ(dev_->rx_queue(1).rxdid, id);
    EXPECT_EQ(dev_->rx_queue(0).rxdid, vc::kRxdidLegacy1);
  }
  // Not supported: the whole message fails and changes nothing.
  const uint64_t before = dev_->counters().vc_bad_rxdid;
  for (uint8_t id : {0, 3, 16, 21, 23, 63, 64, 255}) {
    EXPECT_EQ(cfg(id), vc::kErrParam) << int(id);
    EXPECT_EQ(dev_->rx_queue(1).rxdid, vc::kRxdidCommsOvs1) << int(id);
  }
  EXPECT_EQ(dev_->counters().vc_bad_rxdid, before + 8);
  // A driver not asking for RX_FLEX_DESC: GET_SUPPORTED_RXDIDS refused and
  // every queue gets the legacy descriptor whatever it says.
  ASSERT_EQ(drv_->CallStruct(vc::kOpGetVfResources, kLinuxCaps & ~vc::kCapRxFlexDesc)->v_retval, 0);
  EXPECT_EQ(dev_->granted_caps() & vc::kCapRxFlexDesc, 0u);
  EXPECT_EQ(Call(vc::kOpGetSupportedRxdids, {}).v_retval, vc::kErrParam);
  EXPECT_EQ(cfg(22), 0);
  EXPECT_EQ(dev_->rx_queue(1).rxdid, vc::kRxdidLegacy1);
  EXPECT_EQ(cfg(0), 0);
  EXPECT_EQ(dev_->rx_queue(1).rxdid, vc::kRxdidLegacy1);
}

TEST_F(DeviceTest, RxdidIsSavedRestoredAndClearedByAVfReset) {
  Negotiate();
  Bytes b = VsiQueues(3);
  auto* p = reinterpret_cast<vc::QueuePairInfo*>(b.vec().data() + 8);
  p[1].rxq.rxdid = vc::kRxdidCommsOvs1;
  p[2].rxq.rxdid = vc::kRxdidFlexNic;
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, b.span()), 0);
  vfio_user::MapDeviceRecords records;
  ASSERT_TRUE(dev_->Save(records).ok());
  ASSERT_TRUE(dev_->SaveCacheConsistentForTest());
  auto other = Device::Create(DeviceOptions{});
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE((*other)->Restore(records).ok());
  EXPECT_EQ((*other)->rx_queue(0).rxdid, vc::kRxdidLegacy1);
  EXPECT_EQ((*other)->rx_queue(1).rxdid, vc::kRxdidCommsOvs1);
  EXPECT_EQ((*other)->rx_queue(2).rxdid, vc::kRxdidFlexNic);
  // A record naming an RXDID this device does not write (a damaged or
  // foreign one) restores the legacy format, never an unchecked one.
  auto raw = records.Get("vf");
  ASSERT_TRUE(raw.ok() && raw->has_value());
  auto vf = state_store::DecodeRecord<AvfVfState>(**raw, "vf");
  ASSERT_TRUE(vf.ok()) << vf.status();
  bool found = false;
  for (auto& r : *vf->mutable_rxq()) {
    if (r.id() == 1) {
      EXPECT_EQ(r.rxdid(), vc::kRxdidCommsOvs1);
      r.set_rxdid(16);
      found = true;
    }
    if (r.id() == 2) r.set_rxdid(0x1000002);
  }
  ASSERT_TRUE(found);
  ASSERT_TRUE(records.Put("vf", state_store::EncodeRecord(*vf)).ok());
  auto third = Device::Create(DeviceOptions{});
  ASSERT_TRUE(third.ok());
  ASSERT_TRUE((*third)->Restore(records).ok());
  EXPECT_EQ((*third)->rx_queue(1).rxdid, vc::kRxdidLegacy1);
  EXPECT_EQ((*third)->rx_queue(2).rxdid, vc::kRxdidLegacy1);
  dev_->ResetVfFromPf();
  EXPECT_EQ(dev_->rx_queue(1).rxdid, vc::kRxdidLegacy1);
}

// Linux >= 6.10 sizes RX buffers from the MTU (libeth_rx_hw_len_mtu:
// ALIGN(mtu + 26, 128)); MTU 800 gives 896-byte buffers, which the i40e PF
// accepts (i40e_config_vsi_rx_queue) - ice's 1 KiB floor would keep such an
// interface down.
TEST_F(DeviceTest, SmallMtuRxBuffersAsLibethSizesThemAreAccepted) {
  Negotiate();
  Bytes b = VsiQueues(1);
  auto* p = reinterpret_cast<vc::QueuePairInfo*>(b.vec().data() + 8);
  p->rxq.databuffer_size = 896;
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, b.span()), 0);
  EXPECT_EQ(dev_->rx_queue(0).buffer_size, 896u);
  p->rxq.databuffer_size = 128;
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, b.span()), 0);
  EXPECT_EQ(dev_->rx_queue(0).buffer_size, 128u);
}

TEST_F(DeviceTest, IrqMapValidation) {
  Negotiate();
  auto one = [&](vc::VectorMap m) {
    return Status(vc::kOpConfigIrqMap, Bytes().Add(uint16_t{1}).Add(m).span());
  };
  EXPECT_EQ(one({kVsiId, 0, 1, 0, 0, 0}), 0) << "vector 0 may take queues (i40e LNKLST0)";
  EXPECT_EQ(dev_->rx_queue(0).msix_vector, 0u);
  EXPECT_EQ(one({kVsiId, 5, 1, 0, 0, 0}), vc::kErrParam) << "vector beyond max_vectors";
  EXPECT_EQ(one({kVsiId, 1, 1u << 4, 0, 0, 0}), vc::kErrParam) << "queue not granted";
  EXPECT_EQ(one({kVsiId, 1, 1, 0, 7, 0}), vc::kErrParam) << "ITR index";
  EXPECT_EQ(one({kVsiId, 2, 1, 2, 0, 1}), 0);
  EXPECT_EQ(dev_->rx_queue(0).msix_vector, 2u);
  EXPECT_EQ(dev_->tx_queue(1).msix_vector, 2u);
  EXPECT_EQ(dev_->tx_queue(1).itr_index, 1u);
}

// DPDK without WB_ON_ITR (drivers/net/intel/iavf/iavf_ethdev.c:
// iavf_config_rx_queues_irqs) maps every RX queue to vector 0 for write-back
// and polls; it writes DYN_CTL01 = INTENA | ITR 0 with an interval first.
// The i40e PF accepts that map (i40e_virtchnl_pf.c:i40e_config_irq_link_list
// programs VPINT_LNKLST0); refusing it, as ice does, failed dev_start. The
// queues then have no queue vector: completions raise no interrupt, and
// vector 0 keeps serving the mailbox.
TEST_F(DeviceTest, DpdkWithoutWbOnItrMapsRxQueuesToVectorZero) {
  Make(DeviceOptions{.supported_caps = kDefaultSupportedCaps & ~vc::kCapWbOnItr});
  drv_->InitAdminQueue();
  vc::VersionInfo v{1, 1};
  ASSERT_EQ(drv_->CallStruct(vc::kOpVersion, v)->v_retval, 0);
  ASSERT_EQ(drv_->CallStruct(vc::kOpGetVfResources, kLinuxCaps)->v_retval, 0);
  dev_->WriteReg(kVfintIcr0Ena1, kIcr0AdminQ);
  dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | (0u << kDynCtlItrIndxShift) | (25u << kDynCtlIntervalShift));
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(4, 512, /*legacy_len=*/false).span()), 0);
  Bytes map;
  map.Add(uint16_t{1}).Add(vc::VectorMap{kVsiId, 0, 0xF, 0, 0, 0});
  ASSERT_EQ(Status(vc::kOpConfigIrqMap, map.span()), 0);
  for (uint32_t q = 0; q < 4; ++q) EXPECT_EQ(dev_->rx_queue(q).msix_vector, 0u);
  for (uint32_t q = 0; q < 4; ++q) {
    ASSERT_EQ(Status(vc::kOpEnableQueues, Select(1u << q, 0).span()), 0);
  }
  const size_t fired = irqs_.fired.size();
  EXPECT_FALSE(dev_->RaiseQueueInterrupt(QueueKind::kRx, 0));
  EXPECT_EQ(irqs_.fired.size(), fired) << "a vector-0 queue raises no interrupt";
  EXPECT_EQ(dev_->ReadReg(kVfintIcr01) & kIcr0AdminQ, kIcr0AdminQ) << "the alarm path sees replies";
}

TEST_F(DeviceTest, DoorbellsAndTails) {
  // Linux posts RX buffers and writes QRX_TAIL before CONFIG_VSI_QUEUES.
  Negotiate();
  dev_->WriteReg(QrxTail(0), 511);
  EXPECT_EQ(dev_->RxTail(0), 511u);
  EXPECT_TRUE(hooks_.rx_doorbells.empty());
  ASSERT_EQ(Status(vc::kOpConfigIrqMap, IrqMap(4).span()), 0);
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(4).span()), 0);
  EXPECT_EQ(dev_->RxTail(0), 511u) << "tails survive CONFIG_VSI_QUEUES";
  ASSERT_EQ(Status(vc::kOpEnableQueues, Select(0xF, 0xF).span()), 0);
  dev_->WriteReg(QtxTail(2), 5);
  dev_->WriteReg(QrxTail(1), 100);
  EXPECT_EQ(hooks_.tx_doorbells, std::vector<uint32_t>{2});
  EXPECT_EQ(hooks_.rx_doorbells, std::vector<uint32_t>{1});
  dev_->WriteReg(QtxTail(2), 512);      // beyond the ring
  dev_->WriteReg(QtxTail(2), 0xFFFFFFFF);
  EXPECT_EQ(hooks_.tx_doorbells.size(), 1u);
  EXPECT_EQ(dev_->counters().bad_tail_writes, 2u);
  dev_->WriteReg(QtxTail(9), 3);  // queue not granted
  dev_->WriteReg(QtxTail(255), 3);
  EXPECT_EQ(dev_->counters().ignored_tail_writes, 2u);
  EXPECT_EQ(dev_->TxTail(1000), 0u);
}

TEST_F(DeviceTest, QueueInterruptsFollowIrqMapIntenaAndAutomask) {
  BringUp(2);
  EXPECT_FALSE(dev_->RaiseQueueInterrupt(QueueKind::kRx, 1)) << "vector 2 not armed yet";
  dev_->WriteReg(VfintDynCtln1(1), kDynCtlIntena | kDynCtlItrIndxMask);
  EXPECT_EQ(irqs_.Count(2), 1) << "pending fired on arm";
  EXPECT_FALSE(dev_->RaiseQueueInterrupt(QueueKind::kTx, 1)) << "auto-masked";
  dev_->WriteReg(VfintDynCtln1(1), kDynCtlIntena | (1u << kDynCtlItrIndxShift) | (25u << kDynCtlIntervalShift));
  EXPECT_EQ(irqs_.Count(2), 2);
  EXPECT_EQ(dev_->vector_state(2).itr[1], 25u);
  EXPECT_EQ(dev_->ReadReg(VfintItrn1(1, 1)), 25u);
  EXPECT_FALSE(dev_->RaiseQueueInterrupt(QueueKind::kRx, 7));
  EXPECT_FALSE(dev_->RaiseQueueInterrupt(QueueKind::kRx, 100000));
}

TEST_F(DeviceTest, DisableQueuesStopsDmaBeforeReply) {
  BringUp(2);
  ASSERT_EQ(Status(vc::kOpDisableQueues, Select(3, 3).span()), 0);
  ASSERT_EQ(hooks_.disabled.size(), 1u);
  EXPECT_EQ(hooks_.disabled[0], std::make_pair(QueueMask{3}, QueueMask{3}));
  EXPECT_FALSE(dev_->rx_queue(0).enabled);
  EXPECT_TRUE(dev_->rx_queue(0).configured);
  dev_->WriteReg(QtxTail(0), 1);
  EXPECT_TRUE(hooks_.tx_doorbells.empty()) << "no doorbells for stopped queues";
}

// ------------------------------------------------------------ reset

// ReadHasSideEffects is what a crash-consistent session trusts to answer a
// read without a commit: a read it calls free must leave the saved state's
// generation and the value alone; ICR01, a stepping RSTAT and a read that
// performs a pending VF reset are not free.
TEST_F(DeviceTest, ReadsReportedWithoutSideEffectsChangeNothing) {
  BringUp(4);
  dev_->WriteReg(VfintDynCtln1(0), kDynCtlIntena);
  auto read = [&](uint32_t region, uint64_t off, size_t n) {
    std::vector<uint8_t> b(n);
    EXPECT_TRUE(dev_->RegionRead(region, off, absl::MakeSpan(b)).ok());
    return b;
  };
  for (uint32_t off = 0; off < kBar0Size; off += 4) {
    if (dev_->ReadHasSideEffects(vfio_user::kBar0, off, 4)) {
      EXPECT_TRUE(off == kVfintIcr01) << std::hex << off;
      continue;
    }
    const uint64_t g = dev_->StateGeneration();
    const auto v = read(vfio_user::kBar0, off, 4);
    EXPECT_EQ(dev_->StateGeneration(), g) << std::hex << off;
    EXPECT_EQ(read(vfio_user::kBar0, off, 4), v) << std::hex << off;
  }
  EXPECT_TRUE(dev_->ReadHasSideEffects(vfio_user::kBar0, kVfintIcr01, 4));
  EXPECT_TRUE(dev_->ReadHasSideEffects(vfio_user::kBar0, kVfintIcr01 + 2, 1)) << "odd sizes cover the dword";
  for (uint32_t off = 0; off < 4096; off += 4) {
    ASSERT_FALSE(dev_->ReadHasSideEffects(vfio_user::kConfigRegion, off, 4));
  }
  EXPECT_FALSE(dev_->ReadHasSideEffects(vfio_user::kBar3, 0, 16));
  {
    const uint64_t g = dev_->StateGeneration();
    read(vfio_user::kConfigRegion, 0, 256);
    read(vfio_user::kBar3, 0, 64);
    EXPECT_EQ(dev_->StateGeneration(), g);
  }
  // ICR01 moves the generation when read.
  {
    const uint64_t g = dev_->StateGeneration();
    read(vfio_user::kBar0, kVfintIcr01, 4);
    EXPECT_NE(dev_->StateGeneration(), g);
  }
  // A pending VF reset: only ATQH leaves it pending.
  drv_->Send(vc::kOpResetVf, {});
  EXPECT_FALSE(dev_->ReadHasSideEffects(vfio_user::kBar0, kVfAtqh1, 4));
  EXPECT_TRUE(dev_->ReadHasSideEffects(vfio_user::kBar0, kVfArqlen1, 4));
  EXPECT_TRUE(dev_->ReadHasSideEffects(vfio_user::kBar0, QtxTail(0), 4));
  EXPECT_FALSE(dev_->ReadHasSideEffects(vfio_user::kConfigRegion, 0, 4));
  EXPECT_EQ(dev_->ReadReg(kVfArqlen1) & kAqLenEnable, 0u);  // performs the reset
  // RSTAT steps on each read until VFACTIVE, then is free.
  EXPECT_TRUE(dev_->ReadHasSideEffects(vfio_user::kBar0, kVfgenRstat, 4));
  EXPECT_EQ(dev_->ReadReg(kVfgenRstat), kVfrInProgress);
  EXPECT_TRUE(dev_->ReadHasSideEffects(vfio_user::kBar0, kVfgenRstat, 4));
  EXPECT_EQ(dev_->ReadReg(kVfgenRstat), kVfrCompleted);
  EXPECT_FALSE(dev_->ReadHasSideEffects(vfio_user::kBar0, kVfgenRstat, 4));
  EXPECT_EQ(dev_->ReadReg(kVfgenRstat), kVfrVfActive);
}

TEST_F(DeviceTest, ResetVfHandshakeAndReinitWithoutVersion) {
  BringUp(4);
  Bytes mac;
  mac.Add(uint16_t{kVsiId}).Add(uint16_t{1}).Add(vc::EtherAddr{{2, 0, 0, 0, 0, 1}, 1, 0});
  ASSERT_EQ(Status(vc::kOpAddEthAddr, mac.span()), 0);
  dev_->WriteReg(VfintDynCtln1(0), kDynCtlIntena);
  const uint32_t arq_tail = dev_->ReadReg(kVfArqt1);
  ASSERT_NE(arq_tail, 0u);

  drv_->Send(vc::kOpResetVf, {});
  // The driver first polls ARQLEN.ENABLE for 0 ...
  EXPECT_EQ(dev_->ReadReg(kVfArqlen1) & kAqLenEnable, 0u);
  EXPECT_EQ(dev_->ReadReg(kVfAtqlen1), 0u);
  // ... then RSTAT until VFACTIVE; every state is visible once.
  EXPECT_EQ(dev_->ReadReg(kVfgenRstat), kVfrInProgress);
  EXPECT_EQ(dev_->ReadReg(kVfgenRstat), kVfrCompleted);
  EXPECT_EQ(dev_->ReadReg(kVfgenRstat), kVfrVfActive);
  EXPECT_EQ(dev_->ReadReg(kVfgenRstat), kVfrVfActive);
  // Queues stopped, configuration forgotten, no reply queued.
  ASSERT_FALSE(hooks_.disabled.empty());
  EXPECT_EQ(hooks_.disabled.back(), std::make_pair(QueueMask{0xF}, QueueMask{0xF}));
  EXPECT_FALSE(dev_->tx_queue(0).configured);
  EXPECT_EQ(dev_->tx_queue(0).msix_vector, 0u);
  EXPECT_TRUE(dev_->mac_filters().empty());
  EXPECT_EQ(dev_->ReadReg(VfintDynCtln1(0)), 0u);
  EXPECT_EQ(dev_->ReadReg(kVfArqt1), 0u);
  EXPECT_EQ(dev_->RxTail(0), 0u);

  // Current Linux re-initialises with GET_VF_RESOURCES only (no VERSION).
  drv_->InitAdminQueue();
  ArqMessage r = *drv_->CallStruct(vc::kOpGetVfResources, kLinuxCaps);
  EXPECT_EQ(r.v_retval, 0);
  EXPECT_EQ(vc::Load<vc::VfResource>(r.payload, 0).num_queue_pairs, 4);
  ASSERT_EQ(Status(vc::kOpConfigIrqMap, IrqMap(4).span()), 0);
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(4).span()), 0);
  ASSERT_EQ(Status(vc::kOpEnableQueues, Select(0xF, 0xF).span()), 0);
  auto ev = drv_->Receive();
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(vc::Load<vc::PfEvent>(ev->payload, 0).link_status, 1);
  EXPECT_EQ(dev_->counters().vf_resets, 1u);
}

TEST_F(DeviceTest, DescriptorsAfterResetVfInTheSameDoorbellAreNotProcessed) {
  Negotiate();
  // Two descriptors in one doorbell: RESET_VF then VERSION.
  AqDesc d;
  d.flags = kAqFlagSi;
  d.opcode = kAqOpcSendMsgToPf;
  d.cookie_high = vc::kOpResetVf;
  uint32_t slot = drv_->atq_ntu();
  d.Encode(dma_.At(drv_->atq() + slot * kAqDescSize));
  d.cookie_high = vc::kOpVersion;
  d.Encode(dma_.At(drv_->atq() + ((slot + 1) % 32) * kAqDescSize));
  uint64_t msgs = dev_->counters().vc_messages;
  dev_->WriteReg(kVfAtqt1, (slot + 2) % 32);
  EXPECT_EQ(dev_->counters().vc_messages, msgs + 1);
  // RESET_VF's entry is complete (the driver's wait for it ends), then the
  // VF is reset: the ATQ is gone.
  EXPECT_EQ(dev_->ReadReg(kVfAtqh1), (slot + 1) % 32);
  EXPECT_EQ(dev_->ReadReg(kVfAtqh1), (slot + 1) % 32);  // as often as the driver reads it
  EXPECT_EQ(dev_->ReadReg(kVfAtqlen1), 0u);              // any other access: reset
  EXPECT_EQ(dev_->ReadReg(kVfAtqh1), 0u);
}

TEST_F(DeviceTest, FlrThroughConfigSpaceResetsToPowerOn) {
  BringUp(2);
  uint8_t pcie = dev_->config_space().FindCapability(vfio_user::pci::kCapIdPcie);
  uint32_t ctl = Cfg32(*dev_, pcie + vfio_user::pci::kPcieDevCtl);
  CfgWrite32(*dev_, pcie + vfio_user::pci::kPcieDevCtl, ctl | vfio_user::pci::kPcieDevCtlFlr);
  EXPECT_EQ(dev_->counters().flrs, 1u);
  EXPECT_EQ(dev_->ReadReg(kVfArqlen1), 0u);
  EXPECT_FALSE(dev_->rx_queue(0).enabled);
  uint32_t r = 0;
  for (int i = 0; i < 5 && r != kVfrVfActive; ++i) r = dev_->ReadReg(kVfgenRstat);
  EXPECT_EQ(r, kVfrVfActive);
  Negotiate();  // a fresh driver binds again
}

TEST_F(DeviceTest, RequestQueuesGrantedResetsAndRenegotiates) {
  Make(DeviceOptions{.max_queue_pairs = 8});
  Negotiate();
  vc::VfResRequest too_many{32};
  ArqMessage r = *drv_->CallStruct(vc::kOpRequestQueues, too_many);
  EXPECT_EQ(r.v_retval, 0);
  EXPECT_EQ(vc::Load<vc::VfResRequest>(r.payload, 0).num_queue_pairs, 8);
  vc::VfResRequest two{2};
  drv_->SendStruct(vc::kOpRequestQueues, two);
  auto ev = drv_->Receive();
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(vc::Load<vc::PfEvent>(ev->payload, 0).event, vc::kEventResetImpending);
  EXPECT_EQ(dev_->ReadReg(kVfArqlen1) & kAqLenEnable, 0u) << "reset happened";
  drv_->InitAdminQueue();
  ArqMessage res = *drv_->CallStruct(vc::kOpGetVfResources, kLinuxCaps);
  EXPECT_EQ(vc::Load<vc::VfResource>(res.payload, 0).num_queue_pairs, 2);
  EXPECT_EQ(vc::Load<vc::VfResource>(res.payload, 0).max_vectors, 3);
}

TEST_F(DeviceTest, AqShutdownCommandAndDriverTeardownAreHarmless) {
  Negotiate();
  AqDesc d;
  d.opcode = kAqOpcQueueShutdown;
  drv_->SendRaw(d);
  EXPECT_EQ(dev_->ReadReg(kVfAtqh1), dev_->ReadReg(kVfAtqt1));
  for (uint32_t r : {kVfAtqh1, kVfAtqt1, kVfAtqlen1, kVfAtqbal1, kVfAtqbah1, kVfArqh1, kVfArqt1,
                     kVfArqlen1, kVfArqbal1, kVfArqbah1}) {
    dev_->WriteReg(r, 0);
  }
  EXPECT_EQ(dev_->ReadReg(kVfAtqlen1), 0u);
  Negotiate();
}

TEST_F(DeviceTest, AdminInterruptWaitsForArmAndEnable) {
  drv_->InitAdminQueue();
  vc::VersionInfo v{1, 1};
  drv_->SendStruct(vc::kOpVersion, v);
  EXPECT_EQ(irqs_.Count(0), 0);
  dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | kDynCtlItrIndxMask);
  EXPECT_EQ(irqs_.Count(0), 0);
  dev_->WriteReg(kVfintIcr0Ena1, kIcr0AdminQ);
  EXPECT_EQ(irqs_.Count(0), 1) << "latched cause fires once enabled";
  // Linux's misc handler: read ICR01 and ENA1, later re-enable.
  dev_->ReadReg(kVfintIcr01);
  EXPECT_EQ(dev_->ReadReg(kVfintIcr0Ena1), kIcr0AdminQ);
  drv_->Receive();
  dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | kDynCtlItrIndxMask);
  dev_->WriteReg(kVfintIcr0Ena1, kIcr0AdminQ);
  EXPECT_EQ(irqs_.Count(0), 1);
  drv_->SendStruct(vc::kOpVersion, v);
  EXPECT_EQ(irqs_.Count(0), 2);
}

TEST_F(DeviceTest, ArqFullKeepsRepliesUntilTheDriverFreesSlots) {
  drv_->InitAdminQueue();
  // Never reading the ARQ: 31 slots fill, the rest waits in the backlog.
  vc::VersionInfo v{1, 1};
  for (int i = 0; i < 31; ++i) drv_->SendStruct(vc::kOpVersion, v);
  for (int i = 0; i < 5; ++i) drv_->SendStruct(vc::kOpVersion, v);
  int got = 0;
  while (drv_->Receive()) ++got;
  EXPECT_EQ(got, 36) << "backlogged replies arrive once ARQT moves";
}

// ------------------------------------------------------------ hostile guest

TEST_F(DeviceTest, RandomRegisterAndMailboxGarbageNeverBreaksTheDevice) {
  std::mt19937_64 rng(42);
  drv_->InitAdminQueue();
  for (int i = 0; i < 20000; ++i) {
    uint32_t off = static_cast<uint32_t>(rng() % kBar0Size) & ~3u;
    if (i % 3 == 0) off = kVfAtqt1;
    if (i % 7 == 0) {
      // Random bytes into the ATQ ring and its buffers.
      for (int k = 0; k < 64; ++k) dma_.At(drv_->atq())[rng() % (32 * 32)] = static_cast<uint8_t>(rng());
    }
    if (i % 11 == 0) off = kVfAtqbal1;
    if (i % 13 == 0) off = kVfAtqlen1;
    uint32_t val = static_cast<uint32_t>(rng());
    if (off == kVfAtqbal1 && rng() % 2) val = static_cast<uint32_t>(kRamBase + (rng() % kRamSize));
    dev_->WriteReg(off, val);
    ASSERT_TRUE(dev_->SaveCacheConsistentForTest()) << "write " << std::hex << off;
    uint32_t roff = static_cast<uint32_t>(rng() % kBar0Size) & ~3u;
    if (i % 5 == 0) roff = kVfintIcr01;
    dev_->ReadReg(roff);
    ASSERT_TRUE(dev_->SaveCacheConsistentForTest()) << "read " << std::hex << roff;
    if (i % 17 == 0) {
      dev_->RaiseQueueInterrupt(QueueKind::kRx, static_cast<uint32_t>(rng() % 20));
      dev_->RaiseVector(static_cast<uint32_t>(rng() % 20));
      ASSERT_TRUE(dev_->SaveCacheConsistentForTest());
    }
    if (i % 101 == 0) {
      uint8_t cfg[4];
      std::memcpy(cfg, &val, 4);
      ASSERT_TRUE(dev_->RegionWrite(vfio_user::kConfigRegion, rng() % 256 & ~3u, absl::MakeConstSpan(cfg, 4)).ok());
      ASSERT_TRUE(dev_->RegionWrite(vfio_user::kBar3, rng() % 0x200 & ~3u, absl::MakeConstSpan(cfg, 4)).ok());
      ASSERT_TRUE(dev_->SaveCacheConsistentForTest());
    }
  }
  // Still a working device after a reset.
  ASSERT_TRUE(dev_->Reset().ok());
  while (dev_->ReadReg(kVfgenRstat) != kVfrVfActive) {
  }
  Negotiate();
  EXPECT_GT(dev_->aq_counters().atq_processed, 0u);
}

TEST_F(DeviceTest, OddSizedBarAccessesAreHandled) {
  uint8_t b[3];
  EXPECT_TRUE(dev_->RegionRead(vfio_user::kBar0, kVfgenRstat, absl::MakeSpan(b)).ok());
  EXPECT_EQ(b[0], kVfrVfActive);
  EXPECT_TRUE(dev_->RegionWrite(vfio_user::kBar0, kVfAtqbal1 + 1, absl::MakeConstSpan(b, 2)).ok());
  EXPECT_EQ(dev_->ReadReg(kVfAtqbal1), 0u);
  uint8_t big[8];
  EXPECT_FALSE(dev_->RegionRead(vfio_user::kBar0, kBar0Size - 4, absl::MakeSpan(big)).ok());
  EXPECT_TRUE(dev_->RegionRead(vfio_user::kBar3, 0, absl::MakeSpan(big)).ok());
  EXPECT_GE(dev_->counters().odd_size_accesses, 2u);
}

// ------------------------------------------------------------ persistence

TEST_F(DeviceTest, SaveRestoreRebuildsTheModel) {
  vfio_user::MapDeviceRecords records;
  drv_->InitAdminQueue();
  dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | kDynCtlItrIndxMask);
  dev_->WriteReg(kVfintIcr0Ena1, kIcr0AdminQ);
  BringUp(3);
  drv_->Receive();  // link event
  dev_->WriteReg(QrxTail(1), 77);
  dev_->WriteReg(VfintDynCtln1(0), kDynCtlIntena | (0u << kDynCtlItrIndxShift) | (10u << kDynCtlIntervalShift));
  Bytes mac;
  mac.Add(uint16_t{kVsiId}).Add(uint16_t{1}).Add(vc::EtherAddr{{2, 9, 9, 9, 9, 9}, 1, 0});
  ASSERT_EQ(Status(vc::kOpAddEthAddr, mac.span()), 0);
  // The driver's misc handler: read ICR01, re-arm vector 0.
  dev_->ReadReg(kVfintIcr01);
  dev_->WriteReg(kVfintDynCtl01, kDynCtlIntena | kDynCtlItrIndxMask);
  ASSERT_TRUE(dev_->Save(records).ok());
  ASSERT_TRUE(dev_->SaveCacheConsistentForTest());

  auto other = Device::Create(DeviceOptions{});
  ASSERT_TRUE(other.ok());
  Device& b = **other;
  ASSERT_TRUE(b.Restore(records).ok());
  for (uint32_t off : {kVfAtqbal1, kVfAtqlen1, kVfAtqh1, kVfAtqt1, kVfArqbal1, kVfArqlen1, kVfArqh1,
                       kVfArqt1, kVfintDynCtl01, kVfintIcr0Ena1, VfintDynCtln1(0), VfintItrn1(0, 0),
                       QrxTail(1), kVfgenRstat}) {
    EXPECT_EQ(b.ReadReg(off), dev_->ReadReg(off)) << std::hex << off;
  }
  EXPECT_EQ(Cfg32(b, 0), Cfg32(*dev_, 0));
  for (uint32_t q = 0; q < 3; ++q) {
    EXPECT_TRUE(b.rx_queue(q).enabled);
    EXPECT_EQ(b.rx_queue(q).ring_addr, dev_->rx_queue(q).ring_addr);
    EXPECT_EQ(b.tx_queue(q).msix_vector, dev_->tx_queue(q).msix_vector);
  }
  EXPECT_EQ(b.mac_filters().size(), 1u);
  EXPECT_EQ(b.granted_caps(), dev_->granted_caps());

  // Behaviour continues: the restored device answers the same driver.
  FakeIrqs irqs2;
  b.Attach({&dma_, &irqs2});
  // Re-point the driver at the restored device by swapping ownership.
  dev_->Detach();
  std::unique_ptr<Device> keep = std::move(dev_);
  dev_ = std::move(*other);
  // The MiniDriver holds a Device*: rebuild it keeping ring positions by
  // sending through the restored device's registers directly.
  vc::QueueSelect sel{kVsiId, 0, 0, 0};
  uint32_t ntu = dev_->ReadReg(kVfAtqt1);
  uint64_t buf = drv_->scratch_base() + 0x100000;
  std::memcpy(dma_.At(buf), &sel, sizeof(sel));
  AqDesc d;
  d.flags = kAqFlagSi | kAqFlagBuf | kAqFlagRd;
  d.opcode = kAqOpcSendMsgToPf;
  d.cookie_high = vc::kOpGetStats;
  d.datalen = sizeof(sel);
  d.addr_low = static_cast<uint32_t>(buf);
  d.addr_high = static_cast<uint32_t>(buf >> 32);
  d.Encode(dma_.At(drv_->atq() + ntu * kAqDescSize));
  uint32_t arqh = dev_->ReadReg(kVfArqh1);
  dev_->WriteReg(kVfAtqt1, (ntu + 1) % 32);
  EXPECT_EQ(dev_->ReadReg(kVfArqh1), (arqh + 1) % 32) << "reply posted at the saved ARQ position";
  AqDesc rep = AqDesc::Decode(dma_.At(drv_->arq() + arqh * kAqDescSize));
  EXPECT_EQ(rep.cookie_high, uint32_t(vc::kOpGetStats));
  EXPECT_EQ(rep.datalen, sizeof(vc::EthStats));
  EXPECT_EQ(irqs2.Count(0), 1) << "restored DYN_CTL01/ENA1 still route the admin interrupt";

  // Save writes what differs from the store: into an empty store, every
  // record; the copy rebuilds the same device again.
  auto c = Device::Create(DeviceOptions{});
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Restore(records).ok());
  // A commit that fails midway (a full store) is retried from scratch:
  // Save keeps nothing outside the records, so the retry holds every record.
  class FailingAfter final : public vfio_user::DeviceRecordWriter {
   public:
    explicit FailingAfter(int puts) : left_(puts) {}
    absl::StatusOr<std::optional<absl::string_view>> Get(absl::string_view k) const override {
      return inner_.Get(k);
    }
    absl::Status Put(absl::string_view k, absl::string_view v) override {
      if (left_-- <= 0) return absl::ResourceExhaustedError("store full");
      return inner_.Put(k, v);
    }

   private:
    int left_;
    vfio_user::MapDeviceRecords inner_;
  } failing(2);
  EXPECT_EQ((*c)->Save(failing).code(), absl::StatusCode::kResourceExhausted);
  vfio_user::MapDeviceRecords retry;
  ASSERT_TRUE((*c)->Save(retry).ok());
  EXPECT_EQ(retry.size(), records.size());
  auto d2 = Device::Create(DeviceOptions{});
  ASSERT_TRUE(d2.ok());
  ASSERT_TRUE((*d2)->Restore(retry).ok());
  EXPECT_EQ((*d2)->ReadReg(QrxTail(1)), 77u);
  EXPECT_EQ((*d2)->ReadReg(kVfArqh1), (*c)->ReadReg(kVfArqh1));
  EXPECT_TRUE((*d2)->rx_queue(2).enabled);
}

TEST_F(DeviceTest, RestoreFromEmptyStoreIsNotFoundAndMismatchIsRefused) {
  vfio_user::MapDeviceRecords records;
  auto s = dev_->Restore(records);
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  ASSERT_TRUE(dev_->Save(records).ok());
  auto other = Device::Create(DeviceOptions{.max_queue_pairs = 2});
  ASSERT_TRUE(other.ok());
  s = (*other)->Restore(records);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
}

TEST_F(DeviceTest, MappedDoorbellsShareTheTailPage) {
  Make(DeviceOptions{.mapped_doorbells = true});
  auto regions = dev_->Regions();
  ASSERT_EQ(regions[vfio_user::kBar0].mmap_areas.size(), 1u);
  EXPECT_EQ(regions[vfio_user::kBar0].mmap_areas[0].size, kDoorbellWindowSize);
  int fd = regions[vfio_user::kBar0].mmap_fd;
  ASSERT_GE(fd, 0);
  void* p = mmap(nullptr, kDoorbellWindowSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* page = static_cast<volatile uint32_t*>(p);
  page[QtxTail(3) / 4] = 42;  // a guest store through the mapping
  EXPECT_EQ(dev_->TxTail(3), 42u);
  dev_->WriteReg(QrxTail(2), 9);  // a trapped write lands in the same page
  EXPECT_EQ(page[QrxTail(2) / 4], 9u);
  munmap(p, kDoorbellWindowSize);
  // An fd too small to back the window is refused (ownership taken anyway).
  int small = memfd_create("small", MFD_CLOEXEC);
  ASSERT_GE(small, 0);
  ASSERT_EQ(ftruncate(small, 64), 0);
  EXPECT_FALSE(Device::Create(DeviceOptions{.doorbell_fd = small}).ok());
}

// Trapped doorbells: the tails live in the (not advertised) memfd, so a tail
// write's whole state effect survives the process; a successor adopting the
// memfd sees tails newer than the records it restores, and only tail writes
// are self-durable.
TEST_F(DeviceTest, TrappedTailsLiveInTheAdoptableMemfd) {
  auto regions = dev_->Regions();
  EXPECT_TRUE(regions[vfio_user::kBar0].mmap_areas.empty());
  EXPECT_LT(regions[vfio_user::kBar0].mmap_fd, 0);
  const int fd = dev_->doorbell_fd();
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(dev_->doorbell_adopted());
  auto bar0_write = [&](Device* d, uint32_t off, uint32_t v) {
    uint8_t b[4];
    std::memcpy(b, &v, 4);
    return d->RegionWrite(vfio_user::kBar0, off, absl::MakeConstSpan(b, 4));
  };
  ASSERT_TRUE(bar0_write(dev_.get(), QtxTail(3), 40).ok());
  ASSERT_TRUE(bar0_write(dev_.get(), QrxTail(1), 17).ok());
  uint32_t v = 0;
  ASSERT_EQ(pread(fd, &v, 4, QtxTail(3)), 4);
  EXPECT_EQ(v, 40u);
  ASSERT_EQ(pread(fd, &v, 4, QrxTail(1)), 4);
  EXPECT_EQ(v, 17u);

  // Self-durable: tail writes only (4/8 bytes, aligned, inside the tails).
  EXPECT_TRUE(dev_->WriteIsSelfDurable(vfio_user::kBar0, QtxTail(0), 4));
  EXPECT_TRUE(dev_->WriteIsSelfDurable(vfio_user::kBar0, QtxTail(255), 4));
  EXPECT_TRUE(dev_->WriteIsSelfDurable(vfio_user::kBar0, QrxTail(254), 8));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, QrxTail(255), 8));  // spills past
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, QtxTail(256), 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, QtxTail(1) + 2, 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, QtxTail(1), 2));
  // The interrupt re-arm path: one DYN_CTLN / ITRN dword per write.
  EXPECT_TRUE(dev_->WriteIsSelfDurable(vfio_user::kBar0, VfintItrn1(0, 0), 4));
  EXPECT_TRUE(dev_->WriteIsSelfDurable(vfio_user::kBar0, VfintItrn1(2, 15), 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, VfintItrn1(0, 0), 8));
  EXPECT_TRUE(dev_->WriteIsSelfDurable(vfio_user::kBar0, VfintDynCtln1(0), 4));
  EXPECT_TRUE(dev_->WriteIsSelfDurable(vfio_user::kBar0, VfintDynCtln1(15), 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, VfintDynCtln1(16), 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, VfintDynCtln1(0), 8));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, kVfintDynCtl01, 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, kVfAtqt1, 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar3, 0, 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kConfigRegion, QtxTail(0), 4));
  EXPECT_FALSE(dev_->WriteIsSelfDurable(vfio_user::kBar0, ~uint64_t{0} - 1, 4));

  // Saved now; then more tail writes that are never saved (as the session
  // skips the commit for them).
  vfio_user::MapDeviceRecords records;
  ASSERT_TRUE(dev_->Save(records).ok());
  ASSERT_TRUE(bar0_write(dev_.get(), QtxTail(3), 41).ok());
  ASSERT_TRUE(bar0_write(dev_.get(), QrxTail(1), 18).ok());
  EXPECT_TRUE(dev_->SaveCacheConsistentForTest());

  // A successor adopting a duplicate of the memfd keeps the newest tails.
  int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  ASSERT_GE(dup_fd, 0);
  auto succ = Device::Create(DeviceOptions{.doorbell_fd = dup_fd});
  ASSERT_TRUE(succ.ok()) << succ.status();
  EXPECT_TRUE((*succ)->doorbell_adopted());
  ASSERT_TRUE((*succ)->Restore(records).ok());
  EXPECT_EQ((*succ)->TxTail(3), 41u);
  EXPECT_EQ((*succ)->RxTail(1), 18u);
  EXPECT_TRUE((*succ)->Regions()[vfio_user::kBar0].mmap_areas.empty());
  // Its tail writes land in the shared memfd too.
  ASSERT_TRUE(bar0_write(succ->get(), QtxTail(3), 42).ok());
  EXPECT_EQ(dev_->TxTail(3), 42u);

  // Without the memfd, a successor gets the saved (older) tails.
  auto fresh = Device::Create(DeviceOptions{});
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE((*fresh)->Restore(records).ok());
  EXPECT_EQ((*fresh)->TxTail(3), 40u);
  EXPECT_EQ((*fresh)->RxTail(1), 17u);
  // The successor's next Save carries the tails written since (the regs
  // record moved).
  ASSERT_TRUE((*succ)->Save(records).ok());
  auto fresh2 = Device::Create(DeviceOptions{});
  ASSERT_TRUE(fresh2.ok());
  ASSERT_TRUE((*fresh2)->Restore(records).ok());
  EXPECT_EQ((*fresh2)->TxTail(3), 42u);
  EXPECT_EQ((*fresh2)->RxTail(1), 18u);
}

}  // namespace
}  // namespace emud::avf

namespace emud::avf {
namespace {

// Every opcode the device implements, with random bodies of random (often
// plausible) lengths, interleaved with resets: the device must answer every
// request (except RESET_VF / granted REQUEST_QUEUES), never crash, and keep
// its contexts valid.
TEST_F(DeviceTest, RandomVirtchnlMessagesKeepInvariants) {
  std::mt19937_64 rng(7);
  const uint32_t ops[] = {1, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18, 23, 24, 25, 26, 27, 28, 29, 17, 0, 99};
  for (int round = 0; round < 3000; ++round) {
    if (round % 500 == 0) {
      ASSERT_TRUE(dev_->Reset().ok());
      while (dev_->ReadReg(kVfgenRstat) != kVfrVfActive) {
      }
      Negotiate();
    }
    uint32_t op = ops[rng() % (sizeof(ops) / sizeof(ops[0]))];
    std::vector<uint8_t> msg(rng() % 3 == 0 ? rng() % 4096 : rng() % 200);
    for (auto& b : msg) b = static_cast<uint8_t>(rng());
    // Plausible headers now and then: our VSI and small counts.
    if (msg.size() >= 4 && rng() % 2) {
      msg[0] = kVsiId;
      msg[1] = 0;
      msg[2] = static_cast<uint8_t>(rng() % 5);
      msg[3] = 0;
    }
    if (op == 6 && msg.size() >= 8 + 64 && rng() % 2) {
      // A mostly valid pair pointing into (or just past) guest RAM.
      auto* p = reinterpret_cast<vc::QueuePairInfo*>(msg.data() + 8);
      p->txq.vsi_id = p->rxq.vsi_id = kVsiId;
      p->txq.queue_id = p->rxq.queue_id = rng() % 5;
      p->txq.ring_len = 64 * (1 + rng() % 4);
      p->rxq.ring_len = 64 * (1 + rng() % 4);
      p->txq.headwb_enabled = 0;
      p->txq.dma_ring_addr = kRamBase + (rng() % kRamSize & ~uint64_t{127});
      p->rxq.dma_ring_addr = kRamBase + (rng() % kRamSize & ~uint64_t{127});
      p->rxq.databuffer_size = 2048;
      p->rxq.max_pkt_size = 1518;
      p->rxq.crc_disable = 0;
    }
    if (op == 29 && !msg.empty() && rng() % 4 != 0) continue;  // keep granted resets rare
    drv_->Send(op, msg);
    const bool no_reply = op == vc::kOpResetVf ||
                          (dev_->ReadReg(kVfArqlen1) & kAqLenEnable) == 0;  // a granted REQUEST_QUEUES
    if (no_reply) {
      while (dev_->ReadReg(kVfgenRstat) != kVfrVfActive) {
      }
      Negotiate();
      continue;
    }
    bool replied = false;
    while (auto m = drv_->Receive()) replied |= m->v_op == op;
    ASSERT_TRUE(replied) << "op " << op << " len " << msg.size();
    ASSERT_TRUE(dev_->SaveCacheConsistentForTest()) << "op " << op;
    for (uint32_t q = 0; q < kMaxQueuePairs; ++q) {
      const TxQueueContext& t = dev_->tx_queue(q);
      const RxQueueContext& r = dev_->rx_queue(q);
      if (t.configured) {
        ASSERT_LT(q, dev_->num_queue_pairs());
        ASSERT_TRUE(dma_.Contains(t.ring_addr, uint64_t{t.ring_len} * 16));
      }
      if (r.configured) {
        ASSERT_TRUE(dma_.Contains(r.ring_addr, uint64_t{r.ring_len} * 32));
        ASSERT_GE(r.buffer_size, 1024u);
        ASSERT_LE(r.max_frame, kMaxFrameSize);
      }
      ASSERT_FALSE(t.enabled && !t.configured);
      ASSERT_LE(t.msix_vector, dev_->num_queue_pairs());
    }
    ASSERT_LE(dev_->mac_filters().size(), 256u);
  }
  EXPECT_GT(dev_->counters().vc_errors, 100u);
}

}  // namespace
}  // namespace emud::avf

namespace emud::avf {
namespace {

TEST_F(DeviceTest, EveryOpRefusesAForeignVsiAndBadFields) {
  Negotiate();
  const uint16_t bad_vsi = kVsiId + 7;
  auto st = [&](uint32_t op, Bytes b) { return Status(op, b.span()); };
  EXPECT_EQ(st(vc::kOpConfigVsiQueues, Bytes().Add(vc::VsiQueueConfigHeader{bad_vsi, 1, 0}).Zero(64)),
            vc::kErrParam);
  EXPECT_EQ(st(vc::kOpConfigIrqMap, Bytes().Add(uint16_t{1}).Add(vc::VectorMap{bad_vsi, 1, 1, 1, 0, 0})),
            vc::kErrParam);
  EXPECT_EQ(st(vc::kOpEnableQueues, Bytes().Add(vc::QueueSelect{bad_vsi, 0, 1, 1})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpDisableQueues, Bytes().Add(vc::QueueSelect{bad_vsi, 0, 1, 1})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpDisableQueues, Bytes().Add(vc::QueueSelect{kVsiId, 0, 0, 0})), vc::kErrParam)
      << "empty selection";
  EXPECT_EQ(st(vc::kOpDisableQueues, Bytes().Add(vc::QueueSelect{kVsiId, 0, 1u << 31, 0})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpAddEthAddr, Bytes().Add(bad_vsi).Add(uint16_t{1}).Add(vc::EtherAddr{{2, 1, 1, 1, 1, 1}, 0, 0})),
            vc::kErrParam);
  EXPECT_EQ(st(vc::kOpDelEthAddr, Bytes().Add(bad_vsi).Add(uint16_t{1}).Add(vc::EtherAddr{{2, 1, 1, 1, 1, 1}, 0, 0})),
            vc::kErrParam);
  EXPECT_EQ(st(vc::kOpAddVlan, Bytes().Add(bad_vsi).Add(uint16_t{1}).Add(uint16_t{5})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpAddVlan, Bytes().Add(uint16_t{kVsiId}).Add(uint16_t{1}).Add(uint16_t{4096})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpDelVlan, Bytes().Add(uint16_t{kVsiId}).Add(uint16_t{0})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpConfigPromiscuousMode, Bytes().Add(vc::PromiscInfo{bad_vsi, 1})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpGetStats, Bytes().Add(vc::QueueSelect{bad_vsi, 0, 0, 0})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpConfigRssKey, Bytes().Add(bad_vsi).Add(uint16_t{52}).Zero(52)), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpConfigRssLut, Bytes().Add(uint16_t{kVsiId}).Add(uint16_t{64}).Zero(10)), vc::kErrParam)
      << "LUT shorter than announced";
  EXPECT_EQ(st(vc::kOpConfigRssLut, Bytes().Add(uint16_t{kVsiId}).Add(uint16_t{128}).Zero(128)), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpConfigRssHfunc, Bytes().Add(vc::RssHfunc{kVsiId, 9, 0})), vc::kErrParam);
  EXPECT_EQ(st(vc::kOpSetRssHena, Bytes().Add(uint32_t{0})), vc::kErrParam) << "short";
  EXPECT_EQ(st(vc::kOpRequestQueues, Bytes().Add(uint8_t{1})), vc::kErrParam) << "short";
  ArqMessage zero = Call(vc::kOpRequestQueues, Bytes().Add(uint16_t{0}).span());
  EXPECT_EQ(zero.v_retval, 0);
  EXPECT_EQ(vc::Load<vc::VfResRequest>(zero.payload, 0).num_queue_pairs, 0);
  // Nothing was changed by any of them.
  EXPECT_TRUE(dev_->mac_filters().empty());
  EXPECT_FALSE(dev_->vlan_filters().any());
  EXPECT_EQ(dev_->promisc_flags(), 0);
  EXPECT_EQ(dev_->rss().hfunc, 0u);
  EXPECT_EQ(dev_->counters().vc_errors, 19u);
}

// The interrupt re-arm path is self-durable: Linux iavf writes DYN_CTLN1
// after every NAPI poll, and a commit per write capped it near 15k/s. Each
// queue vector's state is one word of the doorbell memfd, so a successor
// adopting the memfd resumes the exact register state after a kill at any
// step, whatever (older) record it restores.
TEST_F(DeviceTest, InterruptRearmStateSurvivesAKillAtEachStep) {
  BringUp(2);
  vfio_user::MapDeviceRecords records;
  ASSERT_TRUE(dev_->Save(records).ok());  // the last commit: nothing below is saved
  auto bar0_write = [&](Device* d, uint32_t off, uint32_t v) {
    uint8_t b[4];
    std::memcpy(b, &v, 4);
    return d->RegionWrite(vfio_user::kBar0, off, absl::MakeConstSpan(b, 4));
  };
  constexpr uint32_t kArm = kDynCtlIntena | (kItrIndexNone << kDynCtlItrIndxShift);
  constexpr uint32_t kArmItr = kDynCtlIntena | (1u << kDynCtlItrIndxShift) | (25u << kDynCtlIntervalShift);
  constexpr uint32_t kWbOnItr = kDynCtlWbOnItr | (kItrIndexNone << kDynCtlItrIndxShift);
  // What a NAPI guest does, interleaved with the data path's causes.
  const std::vector<std::function<void()>> steps = {
      [&] { ASSERT_TRUE(bar0_write(dev_.get(), VfintDynCtln1(0), kArm).ok()); },
      [&] { dev_->RaiseVector(1); },  // fires, auto-masks
      [&] { dev_->RaiseVector(1); },  // pending
      [&] { ASSERT_TRUE(bar0_write(dev_.get(), VfintDynCtln1(0), kArmItr).ok()); },  // fires the pending cause
      [&] { ASSERT_TRUE(bar0_write(dev_.get(), VfintItrn1(0, 1), 7).ok()); },
      [&] { ASSERT_TRUE(bar0_write(dev_.get(), VfintDynCtln1(1), kWbOnItr).ok()); },
      [&] { dev_->RaiseVector(2); },
      [&] { ASSERT_TRUE(bar0_write(dev_.get(), VfintDynCtln1(1), kArm).ok()); },
  };
  for (size_t i = 0; i < steps.size(); ++i) {
    steps[i]();
    int dup_fd = fcntl(dev_->doorbell_fd(), F_DUPFD_CLOEXEC, 3);
    ASSERT_GE(dup_fd, 0);
    auto succ = Device::Create(DeviceOptions{.doorbell_fd = dup_fd});
    ASSERT_TRUE(succ.ok()) << succ.status();
    ASSERT_TRUE((*succ)->Restore(records).ok());
    for (uint32_t v = 0; v < 2; ++v) {
      SCOPED_TRACE(::testing::Message() << "after step " << i << ", vector " << v);
      EXPECT_EQ((*succ)->ReadReg(VfintDynCtln1(v)), dev_->ReadReg(VfintDynCtln1(v)));
      for (uint32_t x = 0; x < kNumItrIndexes; ++x) {
        EXPECT_EQ((*succ)->ReadReg(VfintItrn1(x, v)), dev_->ReadReg(VfintItrn1(x, v)));
      }
      const VectorState a = (*succ)->vector_state(v + 1), b = dev_->vector_state(v + 1);
      EXPECT_EQ(a.armed, b.armed);
      EXPECT_EQ(a.pending, b.pending);
      EXPECT_EQ(a.wb_on_itr, b.wb_on_itr);
      EXPECT_EQ(a.itr, b.itr);
    }
  }
  EXPECT_EQ(irqs_.Count(1), 2);
  EXPECT_EQ(irqs_.Count(2), 1);
  EXPECT_EQ(dev_->ReadReg(VfintItrn1(1, 0)), 25u);
  EXPECT_EQ(dev_->ReadReg(VfintItrn1(0, 1)), 7u);
  // The saved record still says what the memfd says (the next commit's Save).
  ASSERT_TRUE(dev_->Save(records).ok());
  auto fresh = Device::Create(DeviceOptions{});
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE((*fresh)->Restore(records).ok());
  for (uint32_t v = 0; v < 2; ++v) {
    EXPECT_EQ((*fresh)->ReadReg(VfintDynCtln1(v)), dev_->ReadReg(VfintDynCtln1(v)));
    EXPECT_EQ((*fresh)->vector_state(v + 1).pending, dev_->vector_state(v + 1).pending);
  }
}

// A kill between a fire's eventfd write and the store that disarms the
// vector must not lose the interrupt: at the instant of the fire, the memfd
// still says "armed" (and pending, for a re-arm), so the successor either
// re-applies the DYN_CTLN write still at the socket head or, for a data-path
// cause, fires every armed vector: a duplicate, never a loss.
TEST_F(DeviceTest, AFireIsNeverLostToAKillBeforeTheDisarmingStore) {
  BringUp(1);
  vfio_user::MapDeviceRecords records;
  ASSERT_TRUE(dev_->Save(records).ok());
  constexpr uint32_t kArm = kDynCtlIntena | (kItrIndexNone << kDynCtlItrIndxShift);
  struct SnapshotIrqs : FakeIrqs {
    int fd = -1;
    std::vector<uint8_t> at_fire;
    void TriggerMsix(uint32_t vector) override {
      FakeIrqs::TriggerMsix(vector);
      struct stat st;
      ASSERT_EQ(fstat(fd, &st), 0);
      at_fire.assign(st.st_size, 0);
      ASSERT_EQ(pread(fd, at_fire.data(), at_fire.size(), 0), st.st_size);
    }
  } snap;
  snap.fd = dev_->doorbell_fd();
  dev_->Attach({&dma_, &snap});
  auto successor_at_fire = [&]() {
    int fd = memfd_create("snapshot", MFD_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(pwrite(fd, snap.at_fire.data(), snap.at_fire.size(), 0), ssize_t(snap.at_fire.size()));
    auto succ = Device::Create(DeviceOptions{.doorbell_fd = fd});
    EXPECT_TRUE(succ.ok());
    EXPECT_TRUE((*succ)->Restore(records).ok());
    return std::move(*succ);
  };
  // 1. A data-path cause fires an armed vector.
  uint8_t b[4];
  std::memcpy(b, &kArm, 4);
  ASSERT_TRUE(dev_->RegionWrite(vfio_user::kBar0, VfintDynCtln1(0), absl::MakeConstSpan(b, 4)).ok());
  ASSERT_TRUE(dev_->RaiseVector(1));
  ASSERT_FALSE(snap.at_fire.empty());
  EXPECT_TRUE(successor_at_fire()->vector_state(1).armed) << "the successor's resume fires it again";
  EXPECT_FALSE(dev_->vector_state(1).armed);
  // 2. A re-arm fires the cause that came while disarmed.
  dev_->RaiseVector(1);
  snap.at_fire.clear();
  ASSERT_TRUE(dev_->RegionWrite(vfio_user::kBar0, VfintDynCtln1(0), absl::MakeConstSpan(b, 4)).ok());
  ASSERT_EQ(snap.Count(1), 2);
  ASSERT_FALSE(snap.at_fire.empty());
  auto succ = successor_at_fire();
  EXPECT_TRUE(succ->vector_state(1).pending);
  FakeIrqs again;
  succ->Attach({&dma_, &again});
  ASSERT_TRUE(succ->RegionWrite(vfio_user::kBar0, VfintDynCtln1(0), absl::MakeConstSpan(b, 4)).ok());
  EXPECT_EQ(again.Count(1), 1) << "re-applying the write at the socket head fires again";
}

// ------------------------------------------------------------ VLAN (issue 18)

Bytes VlanV2List(std::initializer_list<vc::VlanFilter> filters, uint16_t vport = kVsiId) {
  Bytes b;
  b.Add(vport).Add(static_cast<uint16_t>(filters.size())).Zero(4);
  for (const auto& f : filters) b.Add(f);
  return b;
}
vc::VlanFilter Inner(uint16_t tci, uint16_t tpid = 0x8100) {
  vc::VlanFilter f{};
  f.inner.tci = tci;
  f.inner.tpid = tpid;
  return f;
}
Bytes Setting(uint32_t outer, uint32_t inner, uint16_t vport = kVsiId) {
  vc::VlanSetting s{};
  s.outer_ethertype_setting = outer;
  s.inner_ethertype_setting = inner;
  s.vport_id = vport;
  return Bytes().Add(s);
}

TEST_F(DeviceTest, VlanV2CapsAreIceSingleVlanModeWithoutPortVlan) {
  Negotiate();  // Linux: VLAN | VLAN_V2 requested, VLAN_V2 granted
  EXPECT_TRUE(dev_->vlan_filtering());
  EXPECT_TRUE(dev_->vlan_strip()) << "ice_vf_init_vlan_stripping: the driver asked for VLAN";
  // Before the caps: ice validates against all-zero caps.
  EXPECT_EQ(Status(vc::kOpAddVlanV2, VlanV2List({Inner(100)}).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpDisableVlanStrippingV2, Setting(0, vc::kVlanEthertype8100).span()),
            vc::kErrParam);
  ArqMessage r = Call(vc::kOpGetOffloadVlanV2Caps, {});
  ASSERT_EQ(r.v_retval, 0);
  ASSERT_EQ(r.payload.size(), sizeof(vc::VlanCaps));
  auto c = vc::Load<vc::VlanCaps>(r.payload, 0);
  EXPECT_EQ(c.filtering.filtering_support.inner, vc::kVlanEthertype8100);
  EXPECT_EQ(c.filtering.filtering_support.outer, 0u);
  EXPECT_EQ(c.filtering.ethertype_init, vc::kVlanEthertype8100);
  EXPECT_EQ(c.filtering.max_filters, 8);
  const uint32_t off = vc::kVlanEthertype8100 | vc::kVlanToggle | vc::kVlanTagLocationL2tag1;
  EXPECT_EQ(c.offloads.stripping_support.inner, off);
  EXPECT_EQ(c.offloads.insertion_support.inner, off);
  EXPECT_EQ(c.offloads.stripping_support.outer, 0u);
  EXPECT_EQ(c.offloads.insertion_support.outer, 0u);
  EXPECT_EQ(c.offloads.ethertype_init, vc::kVlanEthertype8100);
  EXPECT_EQ(c.offloads.ethertype_match, vc::kEthertypeStrippingMatchesInsertion);
  EXPECT_TRUE(dev_->vlan_insert_l2tag1());
  EXPECT_FALSE(dev_->vlan_insert_l2tag2()) << "VLAN_V2 offers the L2TAG1 location only";
}

// The wire layout, byte by byte as include/linux/avf/virtchnl.h lays it out
// (not through vc:: structs): virtchnl_vlan is 8 bytes, a filter 32 with
// the inner tag first; the caps reply's fields at their offsets.
TEST_F(DeviceTest, VlanV2WireLayout) {
  Negotiate();
  ArqMessage r = Call(vc::kOpGetOffloadVlanV2Caps, {});
  ASSERT_EQ(r.payload.size(), 40u);
  auto u32 = [&](size_t at) { return vc::Load<uint32_t>(r.payload, at); };
  EXPECT_EQ(u32(0), 0u);                      // filtering_support.outer
  EXPECT_EQ(u32(4), 0x1u);                    // filtering_support.inner: 8100
  EXPECT_EQ(u32(8), 0x1u);                    // filtering.ethertype_init
  EXPECT_EQ(vc::Load<uint16_t>(r.payload, 12), 8);  // max_filters
  EXPECT_EQ(u32(16), 0u);                     // stripping_support.outer
  EXPECT_EQ(u32(20), 0x80000101u);            // stripping_support.inner: TOGGLE|L2TAG1|8100
  EXPECT_EQ(u32(24), 0u);                     // insertion_support.outer
  EXPECT_EQ(u32(28), 0x80000101u);            // insertion_support.inner
  EXPECT_EQ(u32(32), 0x1u);                   // offloads.ethertype_init
  EXPECT_EQ(r.payload[36], 1);                // ethertype_match
  // ADD_VLAN_V2 of VLAN 100 (inner 0x8100) and, in the second element's
  // outer half, nothing: 8 + 2 * 32 bytes.
  std::vector<uint8_t> m(8 + 64, 0);
  m[0] = kVsiId;
  m[2] = 2;
  m[8] = 100;                       // filters[0].inner.tci
  m[8 + 4] = 0x00, m[8 + 5] = 0x81;  // filters[0].inner.tpid 0x8100 (LE)
  m[40] = 200;                      // filters[1].inner.tci
  m[40 + 5] = 0x81;
  ASSERT_EQ(Status(vc::kOpAddVlanV2, m), 0);
  EXPECT_TRUE(dev_->vlan_filters()[100]);
  EXPECT_TRUE(dev_->vlan_filters()[200]);
  m.pop_back();
  EXPECT_EQ(Status(vc::kOpAddVlanV2, m), vc::kErrParam) << "71 bytes for two filters";
  // An outer tag (bytes 8..15 of the element) is refused in SVM.
  std::vector<uint8_t> o(8 + 32, 0);
  o[0] = kVsiId;
  o[2] = 1;
  o[16] = 5;
  o[16 + 5] = 0x81;
  EXPECT_EQ(Status(vc::kOpAddVlanV2, o), vc::kErrParam);
  EXPECT_FALSE(dev_->vlan_filters()[5]);
}

TEST_F(DeviceTest, VlanV2FiltersValidatedLikeIce) {
  Negotiate();
  ASSERT_EQ(Call(vc::kOpGetOffloadVlanV2Caps, {}).v_retval, 0);
  const int before = hooks_.filters_changed;
  EXPECT_EQ(Status(vc::kOpAddVlanV2, VlanV2List({Inner(100), Inner(0x0fff)}).span()), 0);
  EXPECT_TRUE(dev_->vlan_filters()[100]);
  EXPECT_TRUE(dev_->vlan_filters()[4095]);
  EXPECT_GT(hooks_.filters_changed, before);
  EXPECT_EQ(Status(vc::kOpAddVlanV2, VlanV2List({Inner(100)}).span()), 0) << "duplicate";
  EXPECT_EQ(Status(vc::kOpAddVlanV2, VlanV2List({Inner(0)}).span()), 0) << "TCI 0: skipped";
  EXPECT_EQ(dev_->vlan_filters().count(), 2u);
  EXPECT_EQ(Status(vc::kOpDelVlanV2, VlanV2List({Inner(300)}).span()), 0) << "absent";
  // Refused, nothing applied.
  vc::VlanFilter outer{};
  outer.outer.tci = 5;
  outer.outer.tpid = 0x88a8;
  vc::VlanFilter masked = Inner(5);
  masked.inner.tci_mask = 0x0fff;
  for (const Bytes& bad : {VlanV2List({Inner(5)}, kVsiId + 1), VlanV2List({Inner(6), outer}),
                           VlanV2List({Inner(6), masked}), VlanV2List({Inner(6), Inner(0x2005)}),
                           VlanV2List({Inner(6), Inner(5, 0x88a8)}),
                           VlanV2List({Inner(6), Inner(5, 0x9100)})}) {
    EXPECT_EQ(Status(vc::kOpAddVlanV2, bad.span()), vc::kErrParam);
    EXPECT_EQ(Status(vc::kOpDelVlanV2, bad.span()), vc::kErrParam);
  }
  EXPECT_FALSE(dev_->vlan_filters()[6]);
  EXPECT_FALSE(dev_->vlan_filters()[5]);
  // Lengths: no element, fewer bytes than announced.
  EXPECT_EQ(Status(vc::kOpAddVlanV2, Bytes().Add(uint16_t{kVsiId}).Add(uint16_t{0}).Zero(32).span()),
            vc::kErrParam);
  Bytes cut = VlanV2List({Inner(7), Inner(8)});
  cut.vec().resize(cut.vec().size() - 1);
  EXPECT_EQ(Status(vc::kOpAddVlanV2, cut.span()), vc::kErrParam);
  // max_filters: 2 held + 7 > 8 refused whole; 2 + 6 fits.
  const uint64_t full = dev_->counters().vlan_filters_full;
  EXPECT_EQ(Status(vc::kOpAddVlanV2, VlanV2List({Inner(10), Inner(11), Inner(12), Inner(13),
                                                 Inner(14), Inner(15), Inner(16)}).span()),
            vc::kErrParam);
  EXPECT_EQ(dev_->vlan_filters().count(), 2u);
  EXPECT_EQ(dev_->counters().vlan_filters_full, full + 1);
  EXPECT_EQ(Status(vc::kOpAddVlanV2, VlanV2List({Inner(10), Inner(11), Inner(12), Inner(13),
                                                 Inner(14), Inner(15)}).span()),
            0);
  EXPECT_EQ(dev_->vlan_filters().count(), 8u);
  EXPECT_EQ(Status(vc::kOpDelVlanV2, VlanV2List({Inner(100), Inner(10)}).span()), 0);
  EXPECT_FALSE(dev_->vlan_filters()[100]);
  EXPECT_EQ(dev_->vlan_filters().count(), 6u);
}

TEST_F(DeviceTest, VlanV2StrippingAndInsertionSettings) {
  Negotiate();
  ASSERT_EQ(Call(vc::kOpGetOffloadVlanV2Caps, {}).v_retval, 0);
  const uint32_t q = vc::kVlanEthertype8100;
  EXPECT_EQ(Status(vc::kOpDisableVlanStrippingV2, Setting(0, q).span()), 0);
  EXPECT_FALSE(dev_->vlan_strip());
  EXPECT_EQ(Status(vc::kOpEnableVlanStrippingV2, Setting(0, q).span()), 0);
  EXPECT_TRUE(dev_->vlan_strip());
  EXPECT_EQ(Status(vc::kOpDisableVlanInsertionV2, Setting(0, q).span()), 0);
  EXPECT_FALSE(dev_->vlan_insert_l2tag1());
  EXPECT_EQ(Status(vc::kOpEnableVlanInsertionV2, Setting(0, q).span()), 0);
  EXPECT_TRUE(dev_->vlan_insert_l2tag1());
  for (uint32_t op : {vc::kOpEnableVlanStrippingV2, vc::kOpDisableVlanStrippingV2,
                      vc::kOpEnableVlanInsertionV2, vc::kOpDisableVlanInsertionV2}) {
    EXPECT_EQ(Status(op, Setting(0, 0).span()), vc::kErrParam) << "no setting";
    EXPECT_EQ(Status(op, Setting(q, 0).span()), vc::kErrParam) << "outer: unsupported in SVM";
    EXPECT_EQ(Status(op, Setting(0, q | vc::kVlanEthertype88a8).span()), vc::kErrParam)
        << "two ethertypes without ETHERTYPE_AND";
    EXPECT_EQ(Status(op, Setting(0, vc::kVlanEthertype88a8).span()), vc::kErrParam);
    EXPECT_EQ(Status(op, Setting(0, q, kVsiId + 1).span()), vc::kErrParam) << "foreign vport";
    EXPECT_EQ(Status(op, Bytes().Add(uint32_t{0}).Add(q).span()), vc::kErrParam) << "short";
  }
  // A location bit passes ice's validation; only ENABLE needs a real TPID.
  EXPECT_EQ(Status(vc::kOpEnableVlanStrippingV2, Setting(0, vc::kVlanTagLocationL2tag1).span()),
            vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpDisableVlanStrippingV2, Setting(0, vc::kVlanTagLocationL2tag1).span()), 0);
  EXPECT_FALSE(dev_->vlan_strip());
  EXPECT_TRUE(dev_->vlan_insert_l2tag1());
}

TEST_F(DeviceTest, VlanV2StrippingRefusedWhileAQueueKeepsTheCrc) {
  DeviceOptions o;
  o.supported_caps |= vc::kCapCrc;
  Make(o);
  Negotiate();
  ASSERT_EQ(Call(vc::kOpGetOffloadVlanV2Caps, {}).v_retval, 0);
  // Stripping starts on for a driver that asked for VLAN (Linux's caps):
  // a kept CRC needs it off first (ice_vc_cfg_qs_msg).
  ASSERT_EQ(Status(vc::kOpDisableVlanStrippingV2, Setting(0, vc::kVlanEthertype8100).span()), 0);
  Bytes b = VsiQueues(1);
  reinterpret_cast<vc::QueuePairInfo*>(b.vec().data() + 8)->rxq.crc_disable = 1;
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, b.span()), 0);
  EXPECT_EQ(Status(vc::kOpEnableVlanStrippingV2, Setting(0, vc::kVlanEthertype8100).span()),
            vc::kNotSupported);
  EXPECT_EQ(Status(vc::kOpDisableVlanStrippingV2, Setting(0, vc::kVlanEthertype8100).span()), 0);
}

// Regression: the keep-CRC scan once ran past the device's queues (64
// entries over a vector of max_queue_pairs) and refused stripping after any
// CONFIG_VSI_QUEUES, as Linux and DPDK both send it.
TEST_F(DeviceTest, VlanV2StrippingAfterQueuesAreConfigured) {
  Negotiate();
  ASSERT_EQ(Call(vc::kOpGetOffloadVlanV2Caps, {}).v_retval, 0);
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, VsiQueues(1).span()), 0);
  EXPECT_EQ(Status(vc::kOpEnableVlanStrippingV2, Setting(0, vc::kVlanEthertype8100).span()), 0);
  EXPECT_TRUE(dev_->vlan_strip());
}

// ice_vc_cfg_qs_msg: crc_disable while VLAN stripping is on is ERR_PARAM.
TEST_F(DeviceTest, KeepCrcRefusedWhileVlanStrippingIsOn) {
  DeviceOptions o;
  o.supported_caps |= vc::kCapCrc;
  Make(o);
  Negotiate();
  ASSERT_EQ(Call(vc::kOpGetOffloadVlanV2Caps, {}).v_retval, 0);
  ASSERT_EQ(Status(vc::kOpEnableVlanStrippingV2, Setting(0, vc::kVlanEthertype8100).span()), 0);
  Bytes b = VsiQueues(1);
  reinterpret_cast<vc::QueuePairInfo*>(b.vec().data() + 8)->rxq.crc_disable = 1;
  EXPECT_EQ(Status(vc::kOpConfigVsiQueues, b.span()), vc::kErrParam);
  ASSERT_EQ(Status(vc::kOpDisableVlanStrippingV2, Setting(0, vc::kVlanEthertype8100).span()), 0);
  EXPECT_EQ(Status(vc::kOpConfigVsiQueues, b.span()), 0);
  EXPECT_TRUE(dev_->rx_queue(0).keep_crc);
}

// Capabilities without an opcode that ice grants to a VF asking: DPDK's
// RX_POLLING, Linux's RSS_PCTYPE_V2.
TEST_F(DeviceTest, HintCapabilitiesGrantedWhenAsked) {
  drv_->InitAdminQueue();
  vc::VersionInfo v{1, 1};
  ASSERT_EQ(drv_->CallStruct(vc::kOpVersion, v)->v_retval, 0);
  const uint32_t asked = vc::kCapL2 | vc::kCapRssPf | vc::kCapRxPolling | vc::kCapRssPctypeV2;
  ArqMessage r = *drv_->CallStruct(vc::kOpGetVfResources, asked);
  EXPECT_EQ(vc::Load<vc::VfResource>(r.payload, 0).vf_cap_flags, asked);
  r = *drv_->CallStruct(vc::kOpGetVfResources, uint32_t{vc::kCapL2 | vc::kCapRssPf});
  EXPECT_EQ(vc::Load<vc::VfResource>(r.payload, 0).vf_cap_flags & (vc::kCapRxPolling | vc::kCapRssPctypeV2),
            0u);
}

TEST_F(DeviceTest, LegacyVlanForADriverWithoutVlanV2) {
  drv_->InitAdminQueue();
  vc::VersionInfo v{1, 1};
  ASSERT_EQ(drv_->CallStruct(vc::kOpVersion, v)->v_retval, 0);
  const uint32_t caps = vc::kCapL2 | vc::kCapRssPf | vc::kCapVlan | vc::kCapWbOnItr;
  ArqMessage r = *drv_->CallStruct(vc::kOpGetVfResources, caps);
  EXPECT_EQ(vc::Load<vc::VfResource>(r.payload, 0).vf_cap_flags & (vc::kCapVlan | vc::kCapVlanV2),
            vc::kCapVlan);
  EXPECT_TRUE(dev_->vlan_filtering());
  EXPECT_TRUE(dev_->vlan_strip());
  EXPECT_TRUE(dev_->vlan_insert_l2tag2()) << "no VLAN_V2: both descriptor locations";
  EXPECT_EQ(Status(vc::kOpGetOffloadVlanV2Caps, {}), vc::kErrParam) << "VLAN_V2 not granted";
  EXPECT_EQ(Status(vc::kOpAddVlanV2, VlanV2List({Inner(100)}).span()), vc::kErrParam);
  auto vlans = [](std::initializer_list<uint16_t> ids) {
    Bytes b;
    b.Add(uint16_t{kVsiId}).Add(static_cast<uint16_t>(ids.size()));
    for (uint16_t id : ids) b.Add(id);
    return b;
  };
  EXPECT_EQ(Status(vc::kOpAddVlan, vlans({0, 100, 200}).span()), 0);
  EXPECT_TRUE(dev_->vlan_filters()[100]);
  EXPECT_TRUE(dev_->vlan_filters()[200]);
  EXPECT_FALSE(dev_->vlan_filters()[0]) << "VLAN 0 is implicit";
  EXPECT_EQ(Status(vc::kOpAddVlan, vlans({5, 4096}).span()), vc::kErrParam);
  EXPECT_FALSE(dev_->vlan_filters()[5]) << "nothing applied";
  // ice_vf_has_max_vlans: adding stops at 7 non-zero IDs, answered success.
  EXPECT_EQ(Status(vc::kOpAddVlan, vlans({1, 2, 3, 4, 5, 6, 7}).span()), 0);
  EXPECT_EQ(dev_->vlan_filters().count(), 7u);
  EXPECT_FALSE(dev_->vlan_filters()[6]);
  EXPECT_EQ(dev_->counters().vlan_filters_full, 1u);
  EXPECT_EQ(Status(vc::kOpDelVlan, vlans({100, 999}).span()), 0);
  EXPECT_FALSE(dev_->vlan_filters()[100]);
  EXPECT_EQ(Status(vc::kOpDisableVlanStripping, {}), 0);
  EXPECT_FALSE(dev_->vlan_strip());
  EXPECT_EQ(Status(vc::kOpEnableVlanStripping, {}), 0);
  EXPECT_TRUE(dev_->vlan_strip());
  // The V2 setting ops are refused too (no caps were sent).
  EXPECT_EQ(Status(vc::kOpDisableVlanInsertionV2, Setting(0, vc::kVlanEthertype8100).span()),
            vc::kErrParam);
  EXPECT_TRUE(dev_->vlan_insert_l2tag1());
}

TEST_F(DeviceTest, VlanOpsRefusedToADriverNotAskingForVlan) {
  drv_->InitAdminQueue();
  vc::VersionInfo v{1, 1};
  ASSERT_EQ(drv_->CallStruct(vc::kOpVersion, v)->v_retval, 0);
  ArqMessage r = *drv_->CallStruct(vc::kOpGetVfResources, uint32_t{vc::kCapL2 | vc::kCapRssPf});
  EXPECT_EQ(vc::Load<vc::VfResource>(r.payload, 0).vf_cap_flags & (vc::kCapVlan | vc::kCapVlanV2), 0u);
  EXPECT_FALSE(dev_->vlan_filtering());
  EXPECT_FALSE(dev_->vlan_strip());
  Bytes one;
  one.Add(uint16_t{kVsiId}).Add(uint16_t{1}).Add(uint16_t{100});
  EXPECT_EQ(Status(vc::kOpAddVlan, one.span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpDelVlan, one.span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpEnableVlanStripping, {}), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpDisableVlanStripping, {}), vc::kErrParam);
  EXPECT_FALSE(dev_->vlan_filters().any());
  EXPECT_FALSE(dev_->vlan_strip());
  // And a device configured without VLAN support grants neither.
  DeviceOptions o;
  o.supported_caps &= ~(vc::kCapVlan | vc::kCapVlanV2);
  Make(o);
  Negotiate();
  EXPECT_FALSE(dev_->vlan_filtering());
  EXPECT_FALSE(dev_->vlan_strip());
  EXPECT_EQ(Status(vc::kOpAddVlan, one.span()), vc::kErrParam);
}

TEST_F(DeviceTest, VlanStateIsSavedRestoredAndClearedByAVfReset) {
  Negotiate();
  ASSERT_EQ(Call(vc::kOpGetOffloadVlanV2Caps, {}).v_retval, 0);
  ASSERT_EQ(Status(vc::kOpAddVlanV2, VlanV2List({Inner(100), Inner(7)}).span()), 0);
  ASSERT_EQ(Status(vc::kOpDisableVlanStrippingV2, Setting(0, vc::kVlanEthertype8100).span()), 0);
  ASSERT_EQ(Status(vc::kOpDisableVlanInsertionV2, Setting(0, vc::kVlanEthertype8100).span()), 0);
  vfio_user::MapDeviceRecords records;
  ASSERT_TRUE(dev_->Save(records).ok());
  ASSERT_TRUE(dev_->SaveCacheConsistentForTest());
  auto other = Device::Create(DeviceOptions{});
  ASSERT_TRUE(other.ok());
  Device& b = **other;
  ASSERT_TRUE(b.Restore(records).ok());
  EXPECT_EQ(b.vlan_filters(), dev_->vlan_filters());
  EXPECT_FALSE(b.vlan_strip());
  EXPECT_FALSE(b.vlan_insert_l2tag1());
  EXPECT_TRUE(b.vlan_filtering());
  // The successor keeps answering V2 ops (the caps were sent before).
  dev_->Detach();
  dev_ = std::move(*other);
  FakeIrqs irqs2;
  dev_->Attach({&dma_, &irqs2});
  // A VF reset clears filters, settings and the caps negotiation.
  dev_->ResetVfFromPf();
  EXPECT_FALSE(dev_->vlan_filters().any());
  EXPECT_FALSE(dev_->vlan_strip());
  EXPECT_TRUE(dev_->vlan_insert_l2tag1());
  vfio_user::MapDeviceRecords after;
  ASSERT_TRUE(dev_->Save(after).ok());
  auto c = Device::Create(DeviceOptions{});
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Restore(after).ok());
  EXPECT_FALSE((*c)->vlan_filters().any());
  EXPECT_TRUE((*c)->vlan_insert_l2tag1());
}

}  // namespace
}  // namespace emud::avf

// ------------------------------------------------------------ LARGE_NUM_QPAIRS

namespace emud::avf {
namespace {

// DPDK net/iavf asks for LARGE_NUM_QPAIRS (iavf_get_vf_resource).
constexpr uint32_t kDpdkCaps = vc::kCapL2 | vc::kCapWbOnItr | vc::kCapReqQueues |
                               vc::kCapAdvLinkSpeed | vc::kCapLargeNumQpairs | vc::kCapRssPf;

class LargeVfTest : public DeviceTest {
 protected:
  void NegotiateLarge(uint32_t caps = kDpdkCaps) {
    drv_->InitAdminQueue();
    vc::VersionInfo v{1, 1};
    ASSERT_EQ(drv_->CallStruct(vc::kOpVersion, v)->v_retval, 0);
    res_ = *drv_->CallStruct(vc::kOpGetVfResources, caps);
    ASSERT_EQ(res_.v_retval, 0);
  }
  vc::VfResource Res() const { return vc::Load<vc::VfResource>(res_.payload, 0); }
  // 64-descriptor rings, 4 KiB apart: 64 queue pairs fit the fake RAM.
  uint64_t SmallTx(uint32_t q) const { return drv_->scratch_base() + q * 0x1000; }
  uint64_t SmallRx(uint32_t q) const { return drv_->scratch_base() + q * 0x1000 + 0x800; }
  // CONFIG_VSI_QUEUES for queues [first, first + n), DPDK's batches.
  Bytes Queues(uint32_t first, uint32_t n) {
    Bytes b;
    b.Add(vc::VsiQueueConfigHeader{kVsiId, static_cast<uint16_t>(n), 0});
    for (uint32_t q = first; q < first + n; ++q) {
      vc::QueuePairInfo p{};
      p.txq.vsi_id = p.rxq.vsi_id = kVsiId;
      p.txq.queue_id = p.rxq.queue_id = static_cast<uint16_t>(q);
      p.txq.ring_len = p.rxq.ring_len = 64;
      p.txq.dma_ring_addr = SmallTx(q);
      p.rxq.dma_ring_addr = SmallRx(q);
      p.rxq.databuffer_size = 2048;
      p.rxq.max_pkt_size = 1518;
      p.rxq.rxdid = vc::kRxdidLegacy1;
      b.Add(p);
    }
    return b;
  }
  static Bytes Chunks(std::vector<vc::QueueChunk> chunks, int claimed = -1) {
    Bytes b;
    b.Add(vc::DelEnaDisQueuesHeader{
        kVsiId, 0, static_cast<uint16_t>(claimed < 0 ? chunks.size() : claimed), 0});
    for (const auto& c : chunks) b.Add(c);
    return b;
  }
  static vc::QueueVector Qv(uint16_t q, uint16_t v, int32_t type, int32_t itr = 0) {
    vc::QueueVector m{};
    m.queue_id = q;
    m.vector_id = v;
    m.itr_idx = itr;
    m.queue_type = type;
    return m;
  }
  static Bytes Maps(std::vector<vc::QueueVector> maps, uint16_t vport = kVsiId) {
    Bytes b;
    b.Add(vc::QueueVectorMapsHeader{vport, static_cast<uint16_t>(maps.size()), {}});
    for (const auto& m : maps) b.Add(m);
    return b;
  }
  // Configures, maps (queue q -> vector q + 1, both directions) and starts
  // queues 0..n-1 as DPDK's large-VF path does.
  void BringUpLarge(uint32_t n) {
    for (uint32_t first = 0; first < n; first += 16) {
      ASSERT_EQ(Status(vc::kOpConfigVsiQueues, Queues(first, std::min(16u, n - first)).span()), 0);
    }
    std::vector<vc::QueueVector> maps;
    for (uint32_t q = 0; q < n; ++q) {
      maps.push_back(Qv(q, q + 1, vc::kQueueTypeRx));
      maps.push_back(Qv(q, q + 1, vc::kQueueTypeTx, 1));
    }
    ASSERT_EQ(Status(vc::kOpMapQueueVector, Maps(maps).span()), 0);
    const uint16_t nq = static_cast<uint16_t>(n);
    ASSERT_EQ(Status(vc::kOpEnableQueuesV2,
                     Chunks({{vc::kQueueTypeTx, 0, nq}, {vc::kQueueTypeRx, 0, nq}}).span()),
              0);
  }
  ArqMessage res_;
};

TEST_F(LargeVfTest, GrantedOnlyToADeviceOfMoreThan16PairsAndADriverAskingForIt) {
  Make(DeviceOptions{.max_queue_pairs = 32});
  EXPECT_EQ(dev_->msix_vectors(), 33u);
  EXPECT_EQ(dev_->Irqs()[vfio_user::kMsixIrq].count, 33u);
  NegotiateLarge();
  EXPECT_NE(Res().vf_cap_flags & vc::kCapLargeNumQpairs, 0u);
  EXPECT_EQ(Res().num_queue_pairs, 32);
  EXPECT_EQ(Res().vsi_res[0].num_queue_pairs, 32);
  EXPECT_EQ(Res().max_vectors, 33);
  // A driver without it (Linux iavf) gets ice's default VSI: 16 pairs.
  NegotiateLarge(kLinuxCaps);
  EXPECT_EQ(Res().vf_cap_flags & vc::kCapLargeNumQpairs, 0u);
  EXPECT_EQ(Res().num_queue_pairs, 16);
  EXPECT_EQ(Res().max_vectors, 17);
  EXPECT_EQ(dev_->num_queue_pairs(), 16u);
  for (uint32_t op : {vc::kOpEnableQueuesV2, vc::kOpDisableQueuesV2, vc::kOpMapQueueVector,
                      vc::kOpGetMaxRssQregion}) {
    EXPECT_EQ(Status(op, Chunks({{vc::kQueueTypeRx, 0, 1}}).span()), vc::kNotSupported)
        << vc::OpName(op);
  }
  // A device of 16 pairs or fewer never grants it.
  Make(DeviceOptions{.max_queue_pairs = 16});
  EXPECT_EQ(dev_->msix_vectors(), 17u);
  NegotiateLarge();
  EXPECT_EQ(Res().vf_cap_flags & vc::kCapLargeNumQpairs, 0u);
  EXPECT_EQ(Res().num_queue_pairs, 16);
  // The limits: 64 pairs, 65 vectors.
  Make(DeviceOptions{.max_queue_pairs = 64});
  EXPECT_EQ(dev_->msix_vectors(), 65u);
  EXPECT_FALSE(Device::Create(DeviceOptions{.max_queue_pairs = 65}).ok());
  NegotiateLarge();
  ArqMessage q = Call(vc::kOpGetMaxRssQregion, {});
  ASSERT_EQ(q.v_retval, 0);
  ASSERT_EQ(q.payload.size(), sizeof(vc::MaxRssQregion));
  EXPECT_EQ(vc::Load<vc::MaxRssQregion>(q.payload, 0).qregion_width, 6) << "64-entry LUT";
}

TEST_F(LargeVfTest, ThirtyTwoQueuesMapEnableInterruptAndDisableByChunks) {
  Make(DeviceOptions{.max_queue_pairs = 32});
  NegotiateLarge();
  BringUpLarge(32);
  ASSERT_EQ(hooks_.enabled.size(), 1u);
  EXPECT_EQ(hooks_.enabled[0], std::make_pair(QueueMask{0xFFFFFFFF}, QueueMask{0xFFFFFFFF}));
  auto ev = drv_->Receive();
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(vc::Load<vc::PfEvent>(ev->payload, 0).event, vc::kEventLinkChange);
  for (uint32_t q : {0u, 15u, 16u, 31u}) {
    EXPECT_TRUE(dev_->rx_queue(q).enabled && dev_->tx_queue(q).enabled) << q;
    EXPECT_EQ(dev_->rx_queue(q).msix_vector, q + 1);
    EXPECT_EQ(dev_->tx_queue(q).itr_index, 1u);
  }
  // Vector 32 (DYN_CTLN1(31)): armed by the driver, fired by queue 31.
  dev_->WriteReg(VfintDynCtln1(31), kDynCtlIntena | kDynCtlItrIndxMask);
  EXPECT_EQ(dev_->ReadReg(VfintDynCtln1(31)) & kDynCtlIntena, kDynCtlIntena);
  EXPECT_TRUE(dev_->RaiseQueueInterrupt(QueueKind::kRx, 31));
  EXPECT_EQ(irqs_.Count(32), 1);
  EXPECT_FALSE(dev_->RaiseQueueInterrupt(QueueKind::kRx, 31)) << "auto-masked";
  EXPECT_TRUE(dev_->vector_state(32).pending);
  // Tails of high queues reach the data path.
  dev_->WriteReg(QtxTail(20), 5);
  ASSERT_FALSE(hooks_.tx_doorbells.empty());
  EXPECT_EQ(hooks_.tx_doorbells.back(), 20u);
  // DISABLE_QUEUES_V2 of TX 8..23 and RX 31 only.
  ASSERT_EQ(Status(vc::kOpDisableQueuesV2,
                   Chunks({{vc::kQueueTypeTx, 8, 16}, {vc::kQueueTypeRx, 31, 1}}).span()),
            0);
  ASSERT_EQ(hooks_.disabled.size(), 1u);
  EXPECT_EQ(hooks_.disabled[0], std::make_pair(QueueMask{1} << 31, QueueMask{0xFFFF00}));
  EXPECT_FALSE(dev_->tx_queue(23).enabled);
  EXPECT_TRUE(dev_->tx_queue(24).enabled);
  EXPECT_EQ(dev_->TxTail(20), 0u) << "a stopped TX queue restarts at 0";
  // Enabled again by chunk: only the stopped ones are reported.
  ASSERT_EQ(Status(vc::kOpEnableQueuesV2, Chunks({{vc::kQueueTypeTx, 0, 32}}).span()), 0);
  EXPECT_EQ(hooks_.enabled.back(), std::make_pair(QueueMask{0}, QueueMask{0xFFFF00}));
  // The legacy ops still serve queues 0..15 and refuse the others.
  EXPECT_EQ(Status(vc::kOpDisableQueues, Select(1, 1).span()), 0);
  EXPECT_EQ(Status(vc::kOpDisableQueues, Select(1u << 16, 0).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpEnableQueues, Select(0, 1u << 20).span()), vc::kErrParam);
}

TEST_F(LargeVfTest, ChunksAndMapsOutOfRangeOrLyingAreRefusedWithoutEffect) {
  Make(DeviceOptions{.max_queue_pairs = 24});
  NegotiateLarge();
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, Queues(0, 16).span()), 0);
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, Queues(16, 8).span()), 0);
  const uint64_t bad_chunks = dev_->counters().vc_bad_queue_chunk;
  const uint64_t bad_len = dev_->counters().vc_bad_length;
  struct Case {
    const char* what;
    Bytes msg;
  };
  std::vector<Case> chunk_cases;
  chunk_cases.push_back({"past the granted queues", Chunks({{vc::kQueueTypeRx, 20, 5}})});
  chunk_cases.push_back({"start beyond", Chunks({{vc::kQueueTypeTx, 24, 1}})});
  chunk_cases.push_back({"u16 wrap", Chunks({{vc::kQueueTypeTx, 0xFFFF, 2}})});
  chunk_cases.push_back({"empty chunk", Chunks({{vc::kQueueTypeRx, 0, 0}})});
  chunk_cases.push_back({"unknown type", Chunks({{2, 0, 1}})});
  chunk_cases.push_back({"negative type", Chunks({{-1, 0, 1}})});
  chunk_cases.push_back({"good then bad", Chunks({{vc::kQueueTypeRx, 0, 4}, {vc::kQueueTypeTx, 23, 2}})});
  for (uint32_t op : {vc::kOpEnableQueuesV2, vc::kOpDisableQueuesV2}) {
    for (const Case& c : chunk_cases) {
      EXPECT_EQ(Status(op, c.msg.span()), vc::kErrParam) << vc::OpName(op) << ": " << c.what;
    }
  }
  EXPECT_EQ(dev_->counters().vc_bad_queue_chunk, bad_chunks + 2 * chunk_cases.size());
  EXPECT_TRUE(hooks_.enabled.empty()) << "nothing started";
  // Foreign VSI.
  Bytes foreign;
  foreign.Add(vc::DelEnaDisQueuesHeader{7, 0, 1, 0}).Add(vc::QueueChunk{vc::kQueueTypeRx, 0, 1});
  EXPECT_EQ(Status(vc::kOpEnableQueuesV2, foreign.span()), vc::kErrParam);
  // Lying lengths: more chunks claimed than sent, none, a short header.
  EXPECT_EQ(Status(vc::kOpEnableQueuesV2, Chunks({{vc::kQueueTypeRx, 0, 1}}, 3).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpEnableQueuesV2, Chunks({}, 0).span()), vc::kErrParam);
  const uint8_t short_hdr[6] = {1, 0, 0, 0, 1, 0};
  EXPECT_EQ(Status(vc::kOpDisableQueuesV2, short_hdr), vc::kErrParam);
  Bytes lying_maps = Maps({Qv(0, 1, vc::kQueueTypeRx)});
  lying_maps.vec()[2] = 9;  // num_qv_maps = 9, one sent
  EXPECT_EQ(Status(vc::kOpMapQueueVector, lying_maps.span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpMapQueueVector, Maps({}).span()), vc::kErrParam);
  EXPECT_EQ(dev_->counters().vc_bad_length, bad_len + 5);
  // An unconfigured queue cannot start (none of the chunk does).
  Make(DeviceOptions{.max_queue_pairs = 24});
  NegotiateLarge();
  ASSERT_EQ(Status(vc::kOpConfigVsiQueues, Queues(0, 16).span()), 0);
  EXPECT_EQ(Status(vc::kOpEnableQueuesV2, Chunks({{vc::kQueueTypeRx, 10, 10}}).span()), vc::kErrParam);
  EXPECT_TRUE(hooks_.enabled.empty());
  EXPECT_FALSE(dev_->rx_queue(10).enabled);
  // MAP_QUEUE_VECTOR: vector beyond the VF's 25, queue beyond 24, ITR index,
  // type, foreign VSI; a bad map anywhere maps nothing.
  const uint64_t bad_maps = dev_->counters().vc_bad_queue_chunk;
  EXPECT_EQ(Status(vc::kOpMapQueueVector, Maps({Qv(0, 25, vc::kQueueTypeRx)}).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpMapQueueVector, Maps({Qv(24, 1, vc::kQueueTypeRx)}).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpMapQueueVector, Maps({Qv(0, 1, vc::kQueueTypeRx, 4)}).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpMapQueueVector, Maps({Qv(0, 1, vc::kQueueTypeRx, -1)}).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpMapQueueVector, Maps({Qv(0, 1, 3)}).span()), vc::kErrParam);
  EXPECT_EQ(Status(vc::kOpMapQueueVector,
                   Maps({Qv(5, 6, vc::kQueueTypeTx), Qv(6, 99, vc::kQueueTypeTx)}).span()),
            vc::kErrParam);
  EXPECT_EQ(dev_->counters().vc_bad_queue_chunk, bad_maps + 6);
  EXPECT_EQ(dev_->tx_queue(5).msix_vector, 0u) << "nothing mapped";
  EXPECT_EQ(Status(vc::kOpMapQueueVector, Maps({Qv(0, 1, vc::kQueueTypeRx)}, 3).span()), vc::kErrParam);
  // The highest vector and ITR "none" are fine.
  EXPECT_EQ(Status(vc::kOpMapQueueVector, Maps({Qv(23, 24, vc::kQueueTypeTx, 3)}).span()), 0);
  EXPECT_EQ(dev_->tx_queue(23).msix_vector, 24u);
  EXPECT_EQ(dev_->tx_queue(23).itr_index, kItrIndexNone);
  // DYN_CTLN beyond the VF's vectors is counted and ignored.
  dev_->WriteReg(VfintDynCtln1(30), kDynCtlIntena);
  EXPECT_EQ(dev_->ReadReg(VfintDynCtln1(30)), 0u);
}

TEST_F(LargeVfTest, RequestQueuesAcrossTheRange) {
  Make(DeviceOptions{.max_queue_pairs = 64});
  NegotiateLarge();
  vc::VfResRequest too_many{65};
  ArqMessage r = *drv_->CallStruct(vc::kOpRequestQueues, too_many);
  EXPECT_EQ(r.v_retval, 0);
  EXPECT_EQ(vc::Load<vc::VfResRequest>(r.payload, 0).num_queue_pairs, 64) << "the most it can give";
  for (uint16_t want : {48, 17, 64, 3}) {
    drv_->SendStruct(vc::kOpRequestQueues, vc::VfResRequest{want});
    auto ev = drv_->Receive();
    ASSERT_TRUE(ev.has_value());
    EXPECT_EQ(vc::Load<vc::PfEvent>(ev->payload, 0).event, vc::kEventResetImpending);
    while (dev_->ReadReg(kVfgenRstat) != kVfrVfActive) {
    }
    NegotiateLarge();
    EXPECT_EQ(Res().num_queue_pairs, want);
    EXPECT_EQ(Res().max_vectors, want + 1);
  }
  // Without LARGE_NUM_QPAIRS: 16 at most.
  NegotiateLarge(kLinuxCaps);
  r = *drv_->CallStruct(vc::kOpRequestQueues, vc::VfResRequest{20});
  EXPECT_EQ(vc::Load<vc::VfResRequest>(r.payload, 0).num_queue_pairs, 16);
}

TEST_F(LargeVfTest, StateGrowsWithTheQueuesInUseAndRestores) {
  // All records but "pci" (config space: 4 KiB whatever the queues; MSI-X
  // table: 16 bytes per vector).
  auto size_of = [](const vfio_user::MapDeviceRecords& recs) {
    size_t n = 0;
    for (const auto& [k, v] : recs.all()) {
      std::printf("  record %s: %zu bytes\n", k.c_str(), v.size());
      if (k != "pci") n += k.size() + v.size();
    }
    return n;
  };
  auto saved = [&](uint32_t device_qps, uint32_t used) {
    Make(DeviceOptions{.max_queue_pairs = device_qps});
    if (device_qps <= 16) {  // no LARGE_NUM_QPAIRS: the legacy ops
      Negotiate();
      EXPECT_EQ(Status(vc::kOpConfigIrqMap, IrqMap(used).span()), 0);
      EXPECT_EQ(Status(vc::kOpConfigVsiQueues, Queues(0, used).span()), 0);
      const uint32_t m = (1u << used) - 1;
      EXPECT_EQ(Status(vc::kOpEnableQueues, Select(m, m).span()), 0);
    } else {
      NegotiateLarge();
      BringUpLarge(used);
    }
    for (uint32_t q = 0; q < used; ++q) dev_->WriteReg(QrxTail(q), 63);
    vfio_user::MapDeviceRecords recs;
    EXPECT_TRUE(dev_->Save(recs).ok());
    return recs;
  };
  const size_t four_of_4 = size_of(saved(4, 4));
  const size_t four_of_64 = size_of(saved(64, 4));
  vfio_user::MapDeviceRecords big = saved(64, 64);
  const size_t all_of_64 = size_of(big);
  std::printf("avf state records but pci: 4/4 queues %zu bytes, 4/64 %zu bytes, 64/64 %zu bytes\n",
              four_of_4, four_of_64, all_of_64);
  // The offer costs nothing until used.
  EXPECT_LE(four_of_64, four_of_4 + 16);
  EXPECT_GT(all_of_64, four_of_64 + 60 * 40) << "each queue in use has its records";
  EXPECT_LT(four_of_4, 1000u) << "no 256-entry arrays";
  // A successor rebuilds queue 40 and vector 41 from the records.
  dev_->WriteReg(VfintDynCtln1(40), kDynCtlIntena);
  ASSERT_TRUE(dev_->Save(big).ok());
  auto other = Device::Create(DeviceOptions{.max_queue_pairs = 64});
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE((*other)->Restore(big).ok());
  Device& b = **other;
  EXPECT_EQ(b.num_queue_pairs(), 64u);
  EXPECT_TRUE(b.rx_queue(40).enabled);
  EXPECT_EQ(b.rx_queue(40).ring_addr, SmallRx(40));
  EXPECT_EQ(b.tx_queue(63).msix_vector, 64u);
  EXPECT_EQ(b.RxTail(63), 63u);
  EXPECT_TRUE(b.vector_state(41).armed);
  EXPECT_NE(b.granted_caps() & vc::kCapLargeNumQpairs, 0u);
  // A device with another vector count refuses them.
  auto smaller = Device::Create(DeviceOptions{.max_queue_pairs = 32});
  ASSERT_TRUE(smaller.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition((*smaller)->Restore(big)));
}

}  // namespace
}  // namespace emud::avf
