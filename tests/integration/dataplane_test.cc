// Data path end to end: the test guest (iavf-style driver + GuestDataPath)
// drives an avf::Device whose DataPath moves real frames through each
// backend - loopback, peer (two devices, both ways) and tap (in a network
// namespace the test creates; needs root).
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "avf/device.h"
#include "base/unique_fd.h"
#include "dataplane/adaptive_poll.h"
#include "dataplane/backend.h"
#include "dataplane/datapath.h"
#include "dataplane/queue_state.h"
#include "dataplane/rss.h"
#include "gtest/gtest.h"
#include "tests/guest/guest_datapath.h"
#include "tests/guest/guest_memory.h"
#include "tests/guest/iavf_driver.h"
#include "tests/guest/inprocess_bus.h"

namespace emud {
namespace {

using dataplane::Backend;
using dataplane::DataPath;
using dataplane::QueueStateFile;

std::string TestDir() {
  const char* base = std::getenv("EMUD_TEST_TMPDIR");
  std::string d = absl::StrCat(base ? base : "/dev/shm", "/dp-integ-", getpid());
  std::filesystem::create_directories(d);
  return d;
}

// The device and driver a Node starts.
struct NodeShape {
  uint32_t queues = 2;
  guest::Flavor flavor = guest::Flavor::kLinux;
  uint32_t caps = guest::kLinuxIavfCaps;
  uint32_t threads = 1;
  bool keep_crc = false;
  int64_t (*now_ns)() = nullptr;  // the data path's ITR clock (nullptr: real)
};

// One emulated device with its guest.
struct Node {
  std::unique_ptr<guest::GuestMemory> mem;
  std::unique_ptr<avf::Device> dev;
  std::unique_ptr<guest::InProcessBus> bus;
  std::unique_ptr<guest::IavfDriver> drv;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<QueueStateFile> state;
  std::unique_ptr<DataPath> dp;
  std::unique_ptr<guest::GuestDataPath> gdp;

  void Start(const std::string& name, const std::string& spec, uint8_t mac_last,
             const std::string& shm, NodeShape shape = NodeShape()) {
    avf::DeviceOptions o;
    o.max_queue_pairs = shape.queues;
    o.mac = {0x02, 0, 0, 0, 0, mac_last};
    auto d = avf::Device::Create(o);
    ASSERT_TRUE(d.ok()) << d.status();
    dev = std::move(*d);
    auto m = guest::GuestMemory::Create(32 << 20);
    ASSERT_TRUE(m.ok()) << m.status();
    mem = std::move(*m);
    dataplane::BackendOptions bo;
    bo.device = name;
    bo.shm_dir = shm;
    auto b = dataplane::OpenBackend(spec, bo);
    ASSERT_TRUE(b.ok()) << b.status();
    backend = std::move(*b);
    state = QueueStateFile::Anonymous(shape.queues);
    dataplane::DataPathOptions dpo;
    dpo.threads = shape.threads;
    dpo.now_ns = shape.now_ns;
    dp = std::make_unique<DataPath>(dev.get(), backend.get(), state.get(), dpo);
    ASSERT_TRUE(dp->StartThreads().ok());
    bus = std::make_unique<guest::InProcessBus>(dev.get(), mem.get());
    guest::DriverOptions dopt;
    dopt.flavor = shape.flavor;
    dopt.caps = shape.caps;
    dopt.max_queues = shape.queues;
    dopt.keep_crc = shape.keep_crc;
    dopt.ring_size = 64;
    dopt.rx_buf_len = 1024;  // frames above 1 KiB span buffers
    drv = std::make_unique<guest::IavfDriver>(bus.get(), dopt);
    ASSERT_TRUE(drv->Probe().ok());
    ASSERT_TRUE(drv->Init().ok());
    ASSERT_TRUE(drv->Open().ok());
    ASSERT_TRUE(drv->link_up());
    gdp = std::make_unique<guest::GuestDataPath>(drv.get());
  }
  ~Node() {
    gdp.reset();
    drv.reset();
    bus.reset();
    dp.reset();
  }
};

std::vector<uint8_t> MakeFrame(const std::array<uint8_t, 6>& dst, size_t len, uint32_t seed) {
  std::vector<uint8_t> f(len);
  std::mt19937 rng(seed);
  for (auto& b : f) b = uint8_t(rng());
  std::copy(dst.begin(), dst.end(), f.begin());
  f[6] = 0x02;
  f[12] = 0x88;
  f[13] = 0xb5;
  return f;
}

// Polls the nodes' data paths until `rx` has `want` frames on any queue.
std::vector<guest::RxFrame> Collect(std::vector<Node*> nodes, Node& rx, size_t want) {
  std::vector<guest::RxFrame> got;
  for (int i = 0; i < 2000 && got.size() < want; ++i) {
    for (Node* n : nodes) n->dp->PollOnce();
    for (uint32_t q = 0; q < rx.drv->num_active_queues(); ++q) {
      auto r = rx.gdp->Receive(q);
      EXPECT_TRUE(r.ok());
      if (r.ok()) got.insert(got.end(), r->begin(), r->end());
    }
    if (got.size() < want) usleep(500);
  }
  return got;
}

TEST(DataplaneIntegration, LoopbackFramesComeBackByteForByte) {
  std::string shm = TestDir();
  Node n;
  n.Start("lb", "loopback", 1, shm);
  std::vector<std::vector<uint8_t>> sent;
  for (size_t len : {60, 61, 500, 1514, 2500}) {
    sent.push_back(MakeFrame(n.drv->mac(), len, uint32_t(len)));
    ASSERT_TRUE(n.gdp->Transmit(0, sent.back()).ok());
  }
  // A frame to another MAC is filtered (not promiscuous).
  ASSERT_TRUE(n.gdp->Transmit(0, MakeFrame({0x02, 9, 9, 9, 9, 9}, 100, 7)).ok());
  auto got = Collect({&n}, n, sent.size());
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_EQ(got[i].data, sent[i]) << i;
  EXPECT_EQ(n.gdp->ReapTx(0), sent.size() + 1);
  EXPECT_EQ(n.dp->filtered(), 1u);
  // GET_STATS through virtchnl sees the counters.
  auto st = n.drv->RequestStats();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->tx_unicast, sent.size() + 1);
  EXPECT_EQ(st->rx_unicast, sent.size());
  std::filesystem::remove_all(shm);
}

// An 802.1Q frame for `dst`: the MakeFrame bytes with a tag (TCI) after the
// MAC addresses.
std::vector<uint8_t> Tagged(const std::vector<uint8_t>& untagged, uint16_t tci) {
  std::vector<uint8_t> f(untagged.size() + 4);
  std::memcpy(f.data(), untagged.data(), 12);
  f[12] = 0x81;
  f[13] = 0x00;
  f[14] = uint8_t(tci >> 8);
  f[15] = uint8_t(tci);
  std::memcpy(f.data() + 16, untagged.data() + 12, untagged.size() - 12);
  return f;
}

// Sends `frame` (optionally asking the device to insert `insert_tci`) on
// TX queue 0 of a loopback node and returns what came back (nothing if the
// device dropped or filtered it).
std::vector<guest::RxFrame> Loop(Node& n, const std::vector<uint8_t>& frame, int32_t insert_tci = -1) {
  EXPECT_TRUE(n.gdp->Transmit(0, frame, 0, 0, insert_tci).ok());
  std::vector<guest::RxFrame> got;
  for (int i = 0; i < 20; ++i) {
    n.dp->PollOnce();
    for (uint32_t q = 0; q < n.drv->num_active_queues(); ++q) {
      auto r = n.gdp->Receive(q);
      EXPECT_TRUE(r.ok());
      if (r.ok()) got.insert(got.end(), r->begin(), r->end());
    }
  }
  n.gdp->ReapTx(0);
  return got;
}

// VLAN as Linux iavf uses it over VLAN_V2 (a VLAN sub-interface: filter +
// CTAG_RX stripping + CTAG_TX insertion): the tagged frames of its VLAN
// arrive untagged with the TCI in L2TAG1, other VLANs are filtered, untagged
// frames never carry a tag (they stay on the parent interface), inserted
// tags go out and come back through the filter.
TEST(DataplaneIntegration, VlanV2LinuxFilterStripInsert) {
  std::string shm = TestDir();
  Node n;
  n.Start("vlan", "loopback", 1, shm);
  ASSERT_TRUE(n.drv->vlan_v2());
  EXPECT_TRUE(n.dev->vlan_strip());
  ASSERT_TRUE(n.drv->AddVlan(100).ok());
  const auto plain = MakeFrame(n.drv->mac(), 200, 1);
  auto got = Loop(n, Tagged(plain, 100));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, plain) << "tag stripped";
  EXPECT_EQ(got[0].vlan_tci, 100);
  got = Loop(n, Tagged(plain, 0x6064));  // priority 3, VLAN 100
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].vlan_tci, 0x6064);
  // VLAN 200 has no filter.
  EXPECT_TRUE(Loop(n, Tagged(plain, 200)).empty());
  EXPECT_EQ(n.dp->counters().rx_vlan_filtered.load(), 1u);
  // Untagged: delivered without L2TAG1P (the parent interface's).
  got = Loop(n, plain);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].vlan_tci, -1);
  EXPECT_EQ(got[0].data, plain);
  // Priority-tagged (VLAN 0) frames pass the filter.
  got = Loop(n, Tagged(plain, 0x2000));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].vlan_tci, 0x2000);
  // TX insertion from L2TAG1: out tagged, in through the filter, stripped.
  got = Loop(n, plain, 100);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, plain);
  EXPECT_EQ(got[0].vlan_tci, 100);
  EXPECT_TRUE(Loop(n, plain, 300).empty()) << "inserted VLAN 300 is filtered on the way back";
  // Stripping off (ethtool -K rxvlan off): the tag stays in the frame.
  ASSERT_TRUE(n.drv->SetVlanStripping(false).ok());
  got = Loop(n, Tagged(plain, 100));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, Tagged(plain, 100));
  EXPECT_EQ(got[0].vlan_tci, -1);
  // Insertion off: a descriptor still asking for it is malformed (dropped).
  ASSERT_TRUE(n.drv->SetVlanInsertion(false).ok());
  const uint64_t malformed = n.dp->counters().tx_malformed.load();
  EXPECT_TRUE(Loop(n, plain, 100).empty());
  EXPECT_EQ(n.dp->counters().tx_malformed.load(), malformed + 1);
  // Promiscuous mode lets every VLAN through (ice's VLAN promiscuous).
  ASSERT_TRUE(n.drv->ConfigPromisc(true, false).ok());
  EXPECT_EQ(Loop(n, Tagged(plain, 200)).size(), 1u);
  ASSERT_TRUE(n.drv->ConfigPromisc(false, false).ok());
  ASSERT_TRUE(n.drv->DelVlan(100).ok());
  EXPECT_TRUE(Loop(n, Tagged(plain, 100)).empty());
  // A successor's data path (worker restart) rebuilds the same VLAN state
  // from the device model: VLAN 100 still filtered, stripping still off.
  ASSERT_TRUE(n.drv->AddVlan(100).ok());
  n.dp.reset();
  n.dp = std::make_unique<DataPath>(n.dev.get(), n.backend.get(), n.state.get());
  n.dp->Recover();
  got = Loop(n, Tagged(plain, 100));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, Tagged(plain, 100));
  EXPECT_TRUE(Loop(n, Tagged(plain, 101)).empty());
  std::filesystem::remove_all(shm);
}

// DPDK over VLAN_V2: testpmd's default leaves stripping and insertion off
// (iavf_dev_init_vlan), filters through ADD_VLAN_V2; "vlan set strip on"
// turns it on.
TEST(DataplaneIntegration, VlanV2DpdkFlavour) {
  std::string shm = TestDir();
  Node n;
  NodeShape dpdk;
  dpdk.flavor = guest::Flavor::kDpdk;
  n.Start("vlandpdk", "loopback", 1, shm, dpdk);
  ASSERT_TRUE(n.drv->vlan_v2());
  EXPECT_FALSE(n.dev->vlan_strip());
  EXPECT_FALSE(n.dev->vlan_insert_l2tag1());
  ASSERT_TRUE(n.drv->AddVlan(100).ok());
  const auto plain = MakeFrame(n.drv->mac(), 300, 2);
  auto got = Loop(n, Tagged(plain, 100));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, Tagged(plain, 100)) << "no stripping by default";
  EXPECT_TRUE(Loop(n, Tagged(plain, 300)).empty());
  ASSERT_TRUE(n.drv->SetVlanStripping(true).ok());
  ASSERT_TRUE(n.drv->SetVlanInsertion(true).ok());
  got = Loop(n, Tagged(plain, 100));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, plain);
  EXPECT_EQ(got[0].vlan_tci, 100);
  got = Loop(n, plain, 100);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].vlan_tci, 100);
  std::filesystem::remove_all(shm);
}

// A DPDK build without VLAN_V2 (or any driver asking only for VLAN) gets
// the legacy offload: ADD_VLAN and ENABLE/DISABLE_VLAN_STRIPPING, and both
// descriptor tag locations for insertion.
TEST(DataplaneIntegration, LegacyVlanOffload) {
  std::string shm = TestDir();
  Node n;
  NodeShape legacy;
  legacy.flavor = guest::Flavor::kDpdk;
  legacy.caps = guest::kDpdkIavfCaps & ~avf::vc::kCapVlanV2;
  n.Start("vlanleg", "loopback", 1, shm, legacy);
  ASSERT_FALSE(n.drv->vlan_v2());
  ASSERT_TRUE(n.drv->caps() & avf::vc::kCapVlan);
  EXPECT_FALSE(n.dev->vlan_strip()) << "DPDK sent DISABLE_VLAN_STRIPPING";
  ASSERT_TRUE(n.drv->AddVlan(7).ok());
  EXPECT_TRUE(n.dev->vlan_filters()[7]);
  const auto plain = MakeFrame(n.drv->mac(), 100, 3);
  EXPECT_TRUE(Loop(n, Tagged(plain, 8)).empty());
  ASSERT_TRUE(n.drv->SetVlanStripping(true).ok());
  auto got = Loop(n, plain, 7);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, plain);
  EXPECT_EQ(got[0].vlan_tci, 7);
  std::filesystem::remove_all(shm);
}

// GET_STATS as the hardware counts (DPDK iavf_dev_stats_get: ipackets =
// unicast + multicast + broadcast - rx_discards, ibytes = rx_bytes - 4 per
// ipacket, oerrors = tx_errors + tx_discards; Linux iavf_virtchnl_completion
// copies them into rtnl stats): the per-class RX counters include discarded
// frames, byte counters include the 4-byte CRC of each frame, and a
// malformed TX packet is an error, not also a discard.
// More than 16 queue pairs (LARGE_NUM_QPAIRS): 40, so that queue masks need
// more than 32 bits. Both driver flavours negotiate it, map their vectors
// with MAP_QUEUE_VECTOR and start their queues with ENABLE_QUEUES_V2; one
// frame sent on each TX queue comes back (loopback) on the RX queue of the
// same number, through three data-path threads (queue q on lane q % 3) for
// the Linux flavour and one for DPDK's.
TEST(DataplaneIntegration, LargeVfServesEveryQueueInBothFlavours) {
  std::string shm = TestDir();
  constexpr uint32_t kQueues = 40;
  for (guest::Flavor flavor : {guest::Flavor::kLinux, guest::Flavor::kDpdk}) {
    SCOPED_TRACE(flavor == guest::Flavor::kLinux ? "linux" : "dpdk");
    const bool is_linux = flavor == guest::Flavor::kLinux;
    Node n;
    NodeShape shape;
    shape.queues = kQueues;
    shape.flavor = flavor;
    shape.caps = is_linux ? (guest::kLinuxIavfCaps | avf::vc::kCapLargeNumQpairs) : guest::kDpdkIavfCaps;
    shape.threads = is_linux ? 3 : 1;
    n.Start(is_linux ? "lvl" : "lvd", "loopback", 1, shm, shape);
    if (::testing::Test::HasFatalFailure()) return;
    ASSERT_NE(n.drv->caps() & avf::vc::kCapLargeNumQpairs, 0u);
    ASSERT_EQ(n.drv->num_active_queues(), kQueues);
    ASSERT_EQ(n.dp->threads(), shape.threads);
    const auto& trace = n.drv->trace();
    auto count = [&](const char* op) { return std::count(trace.begin(), trace.end(), std::string(op)); };
    EXPECT_EQ(count("CONFIG_IRQ_MAP"), 0);
    EXPECT_EQ(count("ENABLE_QUEUES"), 0);
    EXPECT_EQ(count("MAP_QUEUE_VECTOR"), 1);
    EXPECT_EQ(count("CONFIG_VSI_QUEUES"), 2) << "batches of 32";
    EXPECT_EQ(count("ENABLE_QUEUES_V2"), is_linux ? 1 : 2 * int(kQueues)) << "DPDK: one chunk per queue";
    if (!is_linux) {
      EXPECT_EQ(n.drv->max_rss_qregion(), 64u);
    }
    for (uint32_t q = 0; q < kQueues; ++q) {
      ASSERT_TRUE(n.dev->rx_queue(q).enabled && n.dev->tx_queue(q).enabled) << q;
      std::vector<uint8_t> f = MakeFrame(n.drv->mac(), 64 + q, q);
      f[14] = uint8_t(q);  // the queue it was sent on
      ASSERT_TRUE(n.gdp->Transmit(q, f).ok()) << q;
    }
    std::vector<int> got(kQueues, 0);
    size_t total = 0;
    for (int i = 0; i < 4000 && total < kQueues; ++i) {
      n.dp->PollOnce();
      for (uint32_t q = 0; q < kQueues; ++q) {
        auto r = n.gdp->Receive(q);
        ASSERT_TRUE(r.ok()) << r.status();
        for (const guest::RxFrame& fr : *r) {
          ASSERT_GE(fr.data.size(), 15u);
          EXPECT_EQ(fr.data[14], q) << "came back on the queue it was sent on";
          EXPECT_EQ(fr.data.size(), 64 + q);
          ++got[q];
          ++total;
        }
      }
      if (total < kQueues) usleep(500);
    }
    for (uint32_t q = 0; q < kQueues; ++q) {
      EXPECT_EQ(got[q], 1) << "RX queue " << q;
      EXPECT_EQ(n.gdp->ReapTx(q), 1u) << "TX queue " << q;
    }
    const auto st = n.drv->RequestStats();
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st->tx_unicast, kQueues);
    ASSERT_TRUE(n.drv->Close().ok());
    EXPECT_EQ(count("DISABLE_QUEUES_V2"), 1);
    for (uint32_t q = 0; q < kQueues; ++q) EXPECT_FALSE(n.dev->rx_queue(q).enabled) << q;
  }
}

// CRC-32 of IEEE 802.3 bit by bit (independent of the data path's tables).
uint32_t BitwiseFcs(const std::vector<uint8_t>& d) {
  uint32_t c = 0xFFFFFFFF;
  for (uint8_t b : d) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
  }
  return ~c;
}

// VIRTCHNL_VF_OFFLOAD_CRC: DPDK with KEEP_CRC (crc_disable = 1) receives each
// frame with its Ethernet FCS appended, least significant byte first; the
// descriptor length counts it. Without it (the Linux default) nothing is
// appended.
TEST(DataplaneIntegration, KeepCrcAppendsTheEthernetFcs) {
  std::string shm = TestDir();
  for (bool keep : {true, false}) {
    SCOPED_TRACE(keep ? "keep_crc" : "stripped");
    Node n;
    NodeShape shape;
    shape.flavor = guest::Flavor::kDpdk;
    shape.caps = guest::kDpdkIavfCaps;
    shape.keep_crc = keep;
    n.Start(keep ? "crc" : "nocrc", "loopback", 1, shm, shape);
    if (::testing::Test::HasFatalFailure()) return;
    ASSERT_NE(n.drv->caps() & avf::vc::kCapCrc, 0u) << "granted as ice does";
    EXPECT_EQ(n.dev->rx_queue(0).keep_crc, keep);
    std::vector<std::vector<uint8_t>> sent;
    // Up to DPDK's max_pkt_size (MTU 1500 + 26) with the FCS; 1000 and up
    // span two 1 KiB buffers.
    for (size_t len : {60, 61, 1000, 1021, 1514, 1522}) {
      sent.push_back(MakeFrame(n.drv->mac(), len, uint32_t(len) + 5));
      ASSERT_TRUE(n.gdp->Transmit(0, sent.back()).ok());
    }
    auto got = Collect({&n}, n, sent.size());
    ASSERT_EQ(got.size(), sent.size());
    for (size_t i = 0; i < sent.size(); ++i) {
      std::vector<uint8_t> want = sent[i];
      if (keep) {
        const uint32_t fcs = BitwiseFcs(sent[i]);
        for (int b = 0; b < 4; ++b) want.push_back(uint8_t(fcs >> (8 * b)));
      }
      EXPECT_EQ(got[i].data, want) << "frame " << i;
    }
  }
}

TEST(DataplaneIntegration, StatsFollowHardwareCounterSemantics) {
  std::string shm = TestDir();
  Node n;
  n.Start("stats", "loopback", 1, shm);
  const std::array<uint8_t, 6> bcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  // 100 frames and no RX reaping: the RX ring fills, the rest is dropped.
  const size_t kFrames = 100, kLen = 100;
  size_t queued = 0, bc_sent = 0;
  for (int round = 0; round < 1000 && queued < kFrames; ++round) {
    while (queued < kFrames) {
      const bool bc = queued % 3 == 0;
      auto f = MakeFrame(bc ? bcast : n.drv->mac(), kLen, uint32_t(queued));
      if (!n.gdp->Transmit(0, f).ok()) break;
      bc_sent += bc;
      ++queued;
    }
    n.dp->PollOnce();
    n.gdp->ReapTx(0);
  }
  ASSERT_EQ(queued, kFrames);
  // One malformed packet (shorter than an Ethernet header).
  ASSERT_TRUE(n.gdp->Transmit(0, std::vector<uint8_t>(10, 0x02)).ok());
  for (int i = 0; i < 10; ++i) n.dp->PollOnce();
  auto got = n.gdp->Receive(0);
  ASSERT_TRUE(got.ok());
  const size_t delivered = got->size();
  ASSERT_GT(delivered, 0u);
  ASSERT_LT(delivered, kFrames) << "the RX ring must have overflowed";
  auto st = n.drv->RequestStats();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->rx_discards, kFrames - delivered);
  EXPECT_EQ(st->rx_unicast + st->rx_multicast + st->rx_broadcast, kFrames);
  EXPECT_EQ(st->rx_broadcast, bc_sent);
  EXPECT_EQ(st->rx_multicast, 0u);
  EXPECT_EQ(st->rx_unicast + st->rx_multicast + st->rx_broadcast - st->rx_discards, delivered)
      << "DPDK's ipackets";
  EXPECT_EQ(st->rx_bytes, delivered * (kLen + 4));
  EXPECT_EQ(st->tx_unicast + st->tx_multicast + st->tx_broadcast, kFrames);
  EXPECT_EQ(st->tx_bytes, kFrames * (kLen + 4));
  EXPECT_EQ(st->tx_errors, 1u);
  EXPECT_EQ(st->tx_discards, 0u) << "DPDK's oerrors = tx_errors + tx_discards";

  // A successor's engine over the same queue state (the worker restarted)
  // continues every counter: nothing a driver reads goes backwards.
  n.gdp.reset();
  n.dp.reset();
  DataPath successor(n.dev.get(), n.backend.get(), n.state.get());
  avf::vc::EthStats again{};
  successor.GetStats(&again);
  EXPECT_EQ(again.rx_broadcast, st->rx_broadcast);
  EXPECT_EQ(again.rx_multicast, st->rx_multicast);
  EXPECT_EQ(again.rx_unicast, st->rx_unicast);
  EXPECT_EQ(again.rx_discards, st->rx_discards);
  EXPECT_EQ(again.rx_bytes, st->rx_bytes);
  EXPECT_EQ(again.tx_errors, st->tx_errors);
  EXPECT_EQ(again.tx_discards, st->tx_discards) << "the malformed count survives";
  EXPECT_EQ(again.tx_unicast, st->tx_unicast);
  std::filesystem::remove_all(shm);
}

TEST(DataplaneIntegration, TxChecksumOffloadThenRxChecksumReport) {
  std::string shm = TestDir();
  Node n;
  n.Start("csum", "loopback", 1, shm);
  // IPv4/UDP with the pseudo-header seed in the checksum field (what the
  // Linux stack hands iavf), IPv4 header checksum left 0: the device
  // completes both on TX; on RX it verifies them and reports L3L4P.
  auto f = MakeFrame(n.drv->mac(), 14 + 20 + 8 + 201, 5);
  f[12] = 0x08;
  f[13] = 0x00;
  f[14] = 0x45;
  uint16_t tot = uint16_t(f.size() - 14), ulen = uint16_t(f.size() - 34);
  f[16] = uint8_t(tot >> 8);
  f[17] = uint8_t(tot);
  f[20] = f[21] = 0;
  f[23] = 17;
  f[24] = f[25] = 0;
  f[38] = uint8_t(ulen >> 8);
  f[39] = uint8_t(ulen);
  uint32_t seed = 17 + ulen;
  for (int i = 26; i < 34; i += 2) seed += uint32_t(f[i] << 8 | f[i + 1]);
  while (seed >> 16) seed = (seed & 0xffff) + (seed >> 16);
  f[40] = uint8_t(seed >> 8);
  f[41] = uint8_t(seed);
  uint32_t cmd = (3u << 5) /*IIPT IPv4+csum*/ | (3u << 8) /*L4T UDP*/;
  uint32_t offset = (14 / 2) | (20 / 4) << 7 | (8 / 4) << 14;
  ASSERT_TRUE(n.gdp->Transmit(0, f, cmd, offset).ok());
  // A frame with a broken UDP checksum and no offload is reported as such.
  auto bad = f;
  bad[45] ^= 0xff;
  ASSERT_TRUE(n.gdp->Transmit(0, bad).ok());
  auto got = Collect({&n}, n, 2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].ptype, 24u) << "IPv4/UDP";
  EXPECT_TRUE(got[0].last_qw1 & (1ull << 3)) << "L3L4P";
  EXPECT_FALSE(got[0].last_qw1 & (3ull << 22)) << "no IPE/L4E";
  EXPECT_NE(got[0].data[24] | got[0].data[25], 0) << "IPv4 checksum filled";
  EXPECT_TRUE(got[1].last_qw1 & (1ull << 23)) << "L4E on the corrupted frame";
  std::filesystem::remove_all(shm);
}

// The ITR test's clock: time moves only when the test says so, so a loaded
// machine cannot let the interval elapse between two steps.
std::atomic<int64_t> g_itr_clock_ns{1'000'000'000};
int64_t ItrClock() { return g_itr_clock_ns.load(); }

TEST(DataplaneIntegration, ItrDefersButNeverLosesQueueInterrupts) {
  std::string shm = TestDir();
  Node n;
  NodeShape shape;
  shape.now_ns = &ItrClock;
  n.Start("itr", "loopback", 1, shm, shape);
  // 1 ms ITR on both indexes of queue vector 1 (queue pair 0): 500 x 2 us.
  ASSERT_TRUE(n.bus->Write32(avf::VfintItrn1(0, 0), 500).ok());
  ASSERT_TRUE(n.bus->Write32(avf::VfintItrn1(1, 0), 500).ok());
  (void)n.bus->WaitVector(1, absl::ZeroDuration());  // reset the counter
  auto frame = MakeFrame(n.drv->mac(), 100, 1);
  ASSERT_TRUE(n.gdp->Transmit(0, frame).ok());
  n.dp->PollOnce();
  EXPECT_EQ(*n.bus->WaitVector(1, absl::ZeroDuration()), 1u) << "first cause fires at once";
  // The driver re-arms (NAPI done) and traffic goes on within the interval.
  g_itr_clock_ns += 400'000;
  ASSERT_TRUE(n.bus->Write32(avf::VfintDynCtln1(0), 0x1 | (3u << 3)).ok());
  ASSERT_TRUE(n.gdp->Transmit(0, frame).ok());
  n.dp->PollOnce();
  EXPECT_EQ(*n.bus->WaitVector(1, absl::ZeroDuration()), 0u) << "held back by ITR";
  EXPECT_GE(n.dp->irqs_deferred(), 1u);
  EXPECT_TRUE(n.dp->NeedsPolling());
  EXPECT_EQ(n.dp->NextInterruptDeadlineNs(ItrClock()), 600'000);
  // Still inside the interval: polling does not fire it early.
  g_itr_clock_ns += 599'999;
  n.dp->PollOnce();
  EXPECT_EQ(*n.bus->WaitVector(1, absl::ZeroDuration()), 0u) << "1 ns before the deadline";
  EXPECT_EQ(n.dp->NextInterruptDeadlineNs(ItrClock()), 1);
  // At the deadline the deferred cause is raised, once.
  g_itr_clock_ns += 1;
  n.dp->PollOnce();
  EXPECT_EQ(*n.bus->WaitVector(1, absl::ZeroDuration()), 1u) << "delivered at the deadline";
  EXPECT_EQ(n.dp->NextInterruptDeadlineNs(ItrClock()), -1);
  EXPECT_FALSE(n.dp->NeedsPolling());
  std::filesystem::remove_all(shm);
}

TEST(DataplaneIntegration, PeerDevicesExchangeFramesBothWays) {
  signal(SIGPIPE, SIG_IGN);
  std::string shm = TestDir();
  Node a, b;
  a.Start("devA", "peer:devB", 1, shm);
  b.Start("devB", "peer:devA", 2, shm);
  std::vector<std::vector<uint8_t>> ab, ba;
  for (uint32_t i = 0; i < 20; ++i) {
    ab.push_back(MakeFrame(b.drv->mac(), 60 + i * 70, i));
    ASSERT_TRUE(a.gdp->Transmit(i % 2, ab.back()).ok());
    ba.push_back(MakeFrame(a.drv->mac(), 1514 - i * 50, 100 + i));
    ASSERT_TRUE(b.gdp->Transmit(0, ba.back()).ok());
  }
  auto got_b = Collect({&a, &b}, b, ab.size());
  auto got_a = Collect({&a, &b}, a, ba.size());
  ASSERT_EQ(got_b.size(), ab.size());
  ASSERT_EQ(got_a.size(), ba.size());
  // Per-direction order is preserved within one TX queue; compare as sets.
  auto sorted = [](std::vector<std::vector<uint8_t>> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  std::vector<std::vector<uint8_t>> rb, ra;
  for (auto& f : got_b) rb.push_back(f.data);
  for (auto& f : got_a) ra.push_back(f.data);
  EXPECT_EQ(sorted(rb), sorted(ab));
  EXPECT_EQ(ra, ba);
  std::filesystem::remove_all(shm);
}

// A frame for a VF whose RX queues are stopped (the guest's ndo_stop) is
// dropped and counted, never lost silently.
TEST(DataplaneIntegration, FramesForAStoppedVfAreCountedDiscards) {
  signal(SIGPIPE, SIG_IGN);
  std::string shm = TestDir();
  Node a, b;
  a.Start("devA", "peer:devB", 1, shm);
  b.Start("devB", "peer:devA", 1, shm);
  ASSERT_TRUE(b.drv->Close().ok());
  auto before = b.drv->RequestStats();
  ASSERT_TRUE(before.ok()) << before.status();
  const std::array<uint8_t, 6> bcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  constexpr size_t kFrames = 5;
  for (uint32_t i = 0; i < kFrames; ++i) {
    ASSERT_TRUE(a.gdp->Transmit(0, MakeFrame(bcast, 100, i)).ok());
  }
  size_t done = 0;
  for (int i = 0; i < 2000 && done < kFrames; ++i) {
    a.dp->PollOnce();
    b.dp->PollOnce();
    done += a.gdp->ReapTx(0);
    if (done < kFrames) usleep(500);
  }
  ASSERT_EQ(done, kFrames) << "A's TX completed";
  for (int i = 0; i < 10; ++i) b.dp->PollOnce();
  auto after = b.drv->RequestStats();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->rx_discards - before->rx_discards, kFrames);
  EXPECT_EQ(after->rx_broadcast - before->rx_broadcast, kFrames);
  EXPECT_EQ(after->rx_bytes, before->rx_bytes) << "nothing reached the guest";
  std::filesystem::remove_all(shm);
}

TEST(DataplaneIntegration, PeerTrafficIsSpreadOverRxQueuesByRss) {
  signal(SIGPIPE, SIG_IGN);
  std::string shm = TestDir();
  Node a, b;
  a.Start("rssA", "peer:rssB", 1, shm);
  b.Start("rssB", "peer:rssA", 2, shm);
  ASSERT_EQ(b.drv->num_active_queues(), 2u);
  // UDP hashing on: the PF default (Linux never sends SET_RSS_HENA).
  ASSERT_NE(b.dev->rss().hena & (1ull << 31), 0u);
  const int kFlows = 32;
  for (int i = 0; i < kFlows; ++i) {
    auto f = MakeFrame(b.drv->mac(), 100, 1000 + i);
    f[12] = 0x08;  // IPv4 / UDP, source port varies per flow
    f[13] = 0x00;
    f[14] = 0x45;
    f[20] = f[21] = 0;
    f[23] = 17;
    f[34] = uint8_t(i);
    ASSERT_TRUE(a.gdp->Transmit(0, f).ok());
  }
  size_t per_queue[2] = {0, 0};
  for (int it = 0; it < 2000 && per_queue[0] + per_queue[1] < kFlows; ++it) {
    a.dp->PollOnce();
    b.dp->PollOnce();
    for (uint32_t q = 0; q < 2; ++q) {
      auto r = b.gdp->Receive(q);
      ASSERT_TRUE(r.ok());
      per_queue[q] += r->size();
    }
  }
  EXPECT_EQ(per_queue[0] + per_queue[1], size_t(kFlows));
  EXPECT_GT(per_queue[0], 0u);
  EXPECT_GT(per_queue[1], 0u);
  std::filesystem::remove_all(shm);
}

// An IPv4/IPv6 frame with an L4 protocol (ports from `flow`) for `dst`.
std::vector<uint8_t> IpFrame(const std::array<uint8_t, 6>& dst, bool v6, uint8_t proto,
                             uint32_t flow) {
  const size_t l3 = v6 ? 40 : 20;
  auto f = MakeFrame(dst, 14 + l3 + 20 + 64, flow);
  const uint16_t l4len = uint16_t(20 + 64);
  if (v6) {
    f[12] = 0x86;
    f[13] = 0xdd;
    f[14] = 0x60;
    f[15] = f[16] = f[17] = 0;
    f[18] = uint8_t(l4len >> 8);
    f[19] = uint8_t(l4len);
    f[20] = proto;
    f[21] = 64;
  } else {
    f[12] = 0x08;
    f[13] = 0x00;
    f[14] = 0x45;
    f[15] = 0;
    const uint16_t tot = uint16_t(l3 + l4len);
    f[16] = uint8_t(tot >> 8);
    f[17] = uint8_t(tot);
    f[20] = f[21] = 0;
    f[22] = 64;
    f[23] = proto;
  }
  f[14 + l3] = uint8_t(flow >> 8);  // source port
  f[14 + l3 + 1] = uint8_t(flow);
  return f;
}

// DPDK's default flex descriptor (COMMS_OVS_1, RXDID 22) end to end: a
// Linux guest sends IPv4/IPv6 TCP/UDP/other frames, some 802.1Q-tagged,
// over a peer link to a DPDK guest with stripping on; every frame arrives
// with its RSS hash (the device's Toeplitz over the untagged frame, on the
// queue the LUT names), the ice ptype, the stripped tag, and no flow id.
TEST(DataplaneIntegration, FlexDescriptorsCarryHashPtypeAndVlanPerFrame) {
  signal(SIGPIPE, SIG_IGN);
  std::string shm = TestDir();
  Node a, b;
  NodeShape dpdk;
  dpdk.flavor = guest::Flavor::kDpdk;
  dpdk.caps = guest::kDpdkIavfCaps;
  a.Start("flexA", "peer:flexB", 1, shm);
  b.Start("flexB", "peer:flexA", 2, shm, dpdk);
  ASSERT_EQ(b.drv->rxdid(), avf::vc::kRxdidCommsOvs1);
  for (uint32_t q = 0; q < 2; ++q) ASSERT_EQ(b.dev->rx_queue(q).rxdid, avf::vc::kRxdidCommsOvs1);
  ASSERT_EQ(a.dev->rx_queue(0).rxdid, avf::vc::kRxdidLegacy1) << "Linux keeps the legacy format";
  ASSERT_TRUE(b.drv->AddVlan(100).ok());
  ASSERT_TRUE(b.drv->SetVlanStripping(true).ok());
  struct Sent {
    std::vector<uint8_t> untagged;
    uint32_t ptype;
    bool tagged;
  };
  const struct {
    bool v6;
    uint8_t proto;
    uint32_t ptype;
  } kinds[] = {{false, 6, 26}, {false, 17, 24}, {false, 47, 23},
               {true, 6, 92},  {true, 17, 90},  {true, 59, 89}};
  std::vector<Sent> sent;
  for (int i = 0; i < 24; ++i) {
    const auto& k = kinds[i % 6];
    Sent s{IpFrame(b.drv->mac(), k.v6, k.proto, 4000 + i), k.ptype, (i / 6) % 2 == 1};
    ASSERT_TRUE(a.gdp->Transmit(0, s.tagged ? Tagged(s.untagged, 100) : s.untagged).ok());
    sent.push_back(std::move(s));
    if (i % 8 == 7) a.gdp->ReapTx(0);
  }
  std::vector<std::pair<uint32_t, guest::RxFrame>> got;
  for (int it = 0; it < 2000 && got.size() < sent.size(); ++it) {
    a.dp->PollOnce();
    b.dp->PollOnce();
    for (uint32_t q = 0; q < 2; ++q) {
      auto r = b.gdp->Receive(q);
      ASSERT_TRUE(r.ok()) << r.status();
      for (auto& f : *r) got.emplace_back(q, std::move(f));
    }
    if (got.size() < sent.size()) usleep(200);
  }
  ASSERT_EQ(got.size(), sent.size());
  const avf::RssConfig& rss = b.dev->rss();
  size_t hashed = 0, per_queue[2] = {0, 0};
  for (auto& [q, f] : got) {
    auto it = std::find_if(sent.begin(), sent.end(),
                           [&](const Sent& s) { return s.untagged == f.data; });
    ASSERT_NE(it, sent.end()) << "a frame that was not sent (or kept its tag)";
    SCOPED_TRACE(testing::Message() << "ptype " << it->ptype << " tagged " << it->tagged);
    EXPECT_EQ(f.rxdid, avf::vc::kRxdidCommsOvs1);
    EXPECT_EQ(f.ptype, it->ptype);
    EXPECT_EQ(f.vlan_tci, it->tagged ? 100 : -1);
    EXPECT_EQ(f.flow_id, 0xFFFFFFFFu);
    const auto want = dataplane::FrameRssHash(rss.key, it->untagged, rss.hena);
    EXPECT_EQ(f.rss_valid, want.has_value());
    if (want) {
      ++hashed;
      EXPECT_EQ(f.rss_hash, *want);
      EXPECT_EQ(q, rss.lut[*want % rss.lut.size()]) << "on the queue the LUT names";
    }
    ++per_queue[q];
    sent.erase(it);
  }
  EXPECT_GE(hashed, 16u) << "TCP and UDP over IPv4 and IPv6 hash";
  EXPECT_GT(per_queue[0], 0u);
  EXPECT_GT(per_queue[1], 0u);
  EXPECT_EQ(b.dev->counters().vc_errors, 0u);
  std::filesystem::remove_all(shm);
}

TEST(DataplaneIntegration, TapFramesCrossTheHostKernel) {
  if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0) {
    GTEST_SKIP() << "needs root and /dev/net/tun";
  }
  std::string ns = absl::StrCat("emuddp", getpid());
  ASSERT_EQ(std::system(absl::StrCat("ip netns add ", ns).c_str()), 0);
  UniqueFd orig(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  {
    UniqueFd nsfd(open(absl::StrCat("/var/run/netns/", ns).c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_EQ(setns(nsfd.get(), CLONE_NEWNET), 0);
  }
  std::string shm = TestDir();
  {
    Node n;
    n.Start("tapdev", "tap:emudt0", 1, shm);
    ASSERT_EQ(std::system(absl::StrCat("ip -n ", ns, " link set emudt0 up").c_str()), 0);
    int ifindex = if_nametoindex("emudt0");
    UniqueFd ps(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(0x88b5)));
    ASSERT_TRUE(ps.valid());
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(0x88b5);
    sll.sll_ifindex = ifindex;
    ASSERT_EQ(bind(ps.get(), reinterpret_cast<sockaddr*>(&sll), sizeof(sll)), 0);
    // Guest -> TAP.
    auto out = MakeFrame({0x02, 0xaa, 0, 0, 0, 1}, 1000, 11);
    ASSERT_TRUE(n.gdp->Transmit(0, out).ok());
    n.dp->PollOnce();
    pollfd p{ps.get(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 5000), 1);
    std::vector<uint8_t> buf(2048);
    ssize_t len = recv(ps.get(), buf.data(), buf.size(), 0);
    buf.resize(len > 0 ? size_t(len) : 0);
    EXPECT_EQ(buf, out);
    // TAP -> guest RX ring.
    auto in = MakeFrame(n.drv->mac(), 1400, 12);
    ASSERT_EQ(sendto(ps.get(), in.data(), in.size(), 0, reinterpret_cast<sockaddr*>(&sll),
                     sizeof(sll)),
              ssize_t(in.size()));
    auto got = Collect({&n}, n, 1);
    bool found = false;
    for (auto& f : got) found |= f.data == in;
    EXPECT_TRUE(found);
  }
  setns(orig.get(), CLONE_NEWNET);
  EXPECT_EQ(std::system(absl::StrCat("ip netns del ", ns).c_str()), 0);
  std::filesystem::remove_all(shm);
}

}  // namespace
}  // namespace emud
