#include "dataplane/queues.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "dataplane/simple_dma.h"
#include "dataplane/tunnel_frames_testutil.h"
#include "gtest/gtest.h"

namespace emud::dataplane {
namespace {

constexpr uint64_t kBase = 0x100000;
constexpr uint64_t kTxRing = kBase;             // 256 x 16 B
constexpr uint64_t kRxRing = kBase + 0x10000;   // 256 x 32 B
constexpr uint64_t kBufs = kBase + 0x100000;    // buffers, 16 KiB apart
constexpr size_t kMemSize = 8 << 20;

struct CaptureBackend : Backend {
  std::vector<std::vector<uint8_t>> sent;
  size_t accept_limit = SIZE_MAX;
  std::string spec() const override { return "capture"; }
  size_t Send(uint16_t, absl::Span<const FrameView> frames) override {
    size_t n = 0;
    for (auto f : frames) {
      if (sent.size() >= accept_limit) break;
      sent.emplace_back(f.begin(), f.end());
      ++n;
    }
    return n;
  }
  size_t Poll(size_t, uint32_t) override { return 0; }
  int event_fd(uint32_t) const override { return -1; }
};

class QueuesTest : public ::testing::Test {
 protected:
  QueuesTest() : mem_(kMemSize), state_(QueueStateFile::Anonymous()) {
    dma_.AddWindow(kBase, kMemSize, mem_.data());
  }
  // Guest memory is page-aligned, as a VMM's mapping is (cache-line
  // placement of descriptors matters to RxQueue's held write-backs).
  struct PageAligned {
    explicit PageAligned(size_t n)
        : p(static_cast<uint8_t*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {
      std::memset(p, 0, n);
    }
    PageAligned(const PageAligned&) = delete;
    PageAligned& operator=(const PageAligned&) = delete;
    ~PageAligned() { std::free(p); }
    uint8_t* data() { return p; }
    uint8_t* p;
  };
  uint8_t* At(uint64_t iova) { return mem_.data() + (iova - kBase); }
  uint64_t& Qw(uint64_t iova) { return *reinterpret_cast<uint64_t*>(At(iova)); }
  uint64_t Buf(uint32_t i) { return kBufs + uint64_t{i} * 0x4000; }

  // Writes TX data descriptor `idx`.
  void TxDesc(uint32_t idx, uint64_t addr, uint32_t size, uint32_t cmd, uint32_t offset = 0) {
    Qw(kTxRing + idx * 16) = addr;
    Qw(kTxRing + idx * 16 + 8) = txd::DataQw1(cmd, offset, size);
  }
  std::vector<uint8_t> Frame(size_t len, uint8_t seed) {
    std::vector<uint8_t> f(len);
    for (size_t i = 0; i < len; ++i) f[i] = uint8_t(seed + i * 7);
    return f;
  }
  void PostRx(uint32_t idx, uint64_t addr) {
    Qw(kRxRing + idx * 32) = addr;
    Qw(kRxRing + idx * 32 + 8) = 0;
  }
  uint64_t RxQw1(uint32_t idx) { return Qw(kRxRing + idx * 32 + 8); }

  PageAligned mem_;
  SimpleDmaMemory dma_;
  std::unique_ptr<QueueStateFile> state_;
  CaptureBackend backend_;
};

TEST_F(QueuesTest, TxSendsFramesAndWritesBackRs) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  std::vector<std::vector<uint8_t>> frames;
  for (uint32_t i = 0; i < 70; ++i) {  // wraps the ring of 64
    uint32_t idx = i % 64;
    frames.push_back(Frame(60 + i, uint8_t(i)));
    std::memcpy(At(Buf(idx)), frames.back().data(), frames.back().size());
    TxDesc(idx, Buf(idx), uint32_t(frames.back().size()), txd::kCmdEop | txd::kCmdRs);
    if (idx == 62 || i == 69) {  // doorbell every so often
      auto r = q.Process((idx + 1) % 64, dma_, backend_, 1000);
      EXPECT_TRUE(r.wrote_back);
    }
  }
  ASSERT_EQ(backend_.sent.size(), 70u);
  for (size_t i = 0; i < 70; ++i) EXPECT_EQ(backend_.sent[i], frames[i]) << i;
  EXPECT_EQ(Qw(kTxRing + 5 * 16 + 8) & 0xF, 0xFu);
  EXPECT_EQ(q.head(), 70u % 64);
  EXPECT_EQ(q.stats().packets.load(), 70u);
  EXPECT_EQ(q.stats().errors.load(), 0u);
}

TEST_F(QueuesTest, TxGathersBuffersAndCompletesChecksums) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  // Eth + IPv4 + UDP, 300 bytes payload, split over 3 buffers at odd sizes.
  std::vector<uint8_t> f(14 + 20 + 8 + 300, 0);
  for (size_t i = 0; i < f.size(); ++i) f[i] = uint8_t(i * 13);
  f[12] = 0x08;
  f[13] = 0x00;
  f[14] = 0x45;
  uint16_t tot = uint16_t(f.size() - 14);
  f[16] = uint8_t(tot >> 8);
  f[17] = uint8_t(tot);
  f[23] = 17;
  uint16_t ulen = 308;
  f[38] = uint8_t(ulen >> 8);
  f[39] = uint8_t(ulen);
  // Pseudo-header seed (with length), as the Linux stack leaves it.
  uint32_t s = 0;
  for (int i = 26; i < 34; i += 2) s += uint32_t(f[i] << 8 | f[i + 1]);
  s += 17 + ulen;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  f[40] = uint8_t(s >> 8);
  f[41] = uint8_t(s);
  size_t cuts[] = {0, 33, 101, f.size()};
  for (int b = 0; b < 3; ++b) {
    std::memcpy(At(Buf(b)), f.data() + cuts[b], cuts[b + 1] - cuts[b]);
    uint32_t cmd = (3u << 5) | (3u << 8) | (b == 2 ? txd::kCmdEop | txd::kCmdRs : 0);
    TxDesc(b, Buf(b), uint32_t(cuts[b + 1] - cuts[b]), cmd, txd::Offsets(14, 20, 8));
  }
  q.Process(3, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 1u);
  auto& out = backend_.sent[0];
  ASSERT_EQ(out.size(), f.size());
  // IPv4 header and UDP (with pseudo header) verify to all-ones.
  auto verify = [](const std::vector<uint8_t>& v, uint32_t init) {
    uint32_t sum = init;
    for (size_t i = 0; i + 1 < v.size(); i += 2) sum += uint32_t(v[i] << 8 | v[i + 1]);
    if (v.size() & 1) sum += uint32_t(v.back() << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return sum;
  };
  EXPECT_EQ(verify(std::vector<uint8_t>(out.begin() + 14, out.begin() + 34), 0), 0xffffu);
  uint32_t pseudo = 0;
  for (int i = 26; i < 34; i += 2) pseudo += uint32_t(out[i] << 8 | out[i + 1]);
  pseudo += 17 + ulen;
  EXPECT_EQ(verify(std::vector<uint8_t>(out.begin() + 34, out.end()), pseudo), 0xffffu);
  EXPECT_EQ(0, std::memcmp(out.data() + 42, f.data() + 42, 300));
  EXPECT_EQ(Qw(kTxRing + 2 * 16 + 8) & 0xF, 0xFu);
}

TEST_F(QueuesTest, TxTsoWithContextDescriptor) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  const uint32_t payload = 4000, mss = 1448;
  std::vector<uint8_t> f(14 + 20 + 20 + payload, 0);
  for (size_t i = 54; i < f.size(); ++i) f[i] = uint8_t(i);
  f[12] = 0x08;
  f[14] = 0x45;
  f[23] = 6;
  f[14 + 20 + 12] = 5 << 4;
  f[14 + 20 + 13] = 0x18;  // ACK PSH
  Qw(kTxRing + 0) = 0;
  Qw(kTxRing + 8) = txd::ContextQw1(txd::kCtxCmdTso, payload, mss);
  std::memcpy(At(Buf(0)), f.data(), 54);
  std::memcpy(At(Buf(1)), f.data() + 54, payload);
  uint32_t cmd = (3u << 5) | (1u << 8);
  TxDesc(1, Buf(0), 54, cmd, txd::Offsets(14, 20, 20));
  TxDesc(2, Buf(1), payload, cmd | txd::kCmdEop | txd::kCmdRs, txd::Offsets(14, 20, 20));
  q.Process(3, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 3u);
  EXPECT_EQ(backend_.sent[0].size(), 54u + mss);
  EXPECT_EQ(backend_.sent[2].size(), 54u + payload - 2 * mss);
  EXPECT_EQ(Qw(kTxRing + 2 * 16 + 8) & 0xF, 0xFu);
  EXPECT_EQ(q.stats().packets.load(), 3u);
}

// A GSO skb as iavf_tx_map lays it out with many small frags: header in the
// head, 39 payload frags of 512 bytes (every 6 consecutive frags >= MSS, so
// __iavf_chk_linearize does not linearize it): 40 data descriptors.
TEST_F(QueuesTest, TxTsoWithManyFragmentsAsLinuxSendsThem) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  const uint32_t frags = 39, frag_len = 512, mss = 1448;
  const uint32_t payload = frags * frag_len;
  std::vector<uint8_t> h(54, 0);
  h[12] = 0x08;
  h[14] = 0x45;
  h[23] = 6;
  h[14 + 20 + 12] = 5 << 4;
  h[14 + 20 + 13] = 0x10;  // ACK
  Qw(kTxRing + 0) = 0;
  Qw(kTxRing + 8) = txd::ContextQw1(txd::kCtxCmdTso, payload, mss);
  const uint32_t cmd = (3u << 5) | (1u << 8);
  std::memcpy(At(Buf(0)), h.data(), h.size());
  TxDesc(1, Buf(0), 54, cmd, txd::Offsets(14, 20, 20));
  for (uint32_t i = 0; i < frags; ++i) {
    std::memset(At(Buf(1 + i)), int(i), frag_len);
    const bool last = i + 1 == frags;
    TxDesc(2 + i, Buf(1 + i), frag_len, cmd | (last ? txd::kCmdEop | txd::kCmdRs : 0),
           txd::Offsets(14, 20, 20));
  }
  const uint32_t tail = 2 + frags;
  q.Process(tail, dma_, backend_, 64);
  const uint32_t nseg = (payload + mss - 1) / mss;
  ASSERT_EQ(backend_.sent.size(), nseg);
  size_t got = 0;
  for (const auto& s : backend_.sent) got += s.size() - 54;
  EXPECT_EQ(got, payload);
  EXPECT_EQ(backend_.sent[1][54], uint8_t(mss / frag_len)) << "payload bytes in order";
  EXPECT_EQ(Qw(kTxRing + (tail - 1) * 16 + 8) & 0xF, 0xFu);
  EXPECT_EQ(q.head(), tail);
  EXPECT_EQ(q.stats().drops.load(), 0u);
}

TEST_F(QueuesTest, TxBadInputIsCountedNeverFollowed) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  // Tail beyond the ring.
  q.Process(64, dma_, backend_, 64);
  q.Process(1000, dma_, backend_, 64);
  EXPECT_EQ(q.stats().errors.load(), 2u);
  EXPECT_EQ(q.head(), 0u);
  // Buffer outside the DMA map, zero length, 9 buffers: dropped, completed.
  TxDesc(0, 0xdead0000, 100, txd::kCmdEop | txd::kCmdRs);
  TxDesc(1, Buf(1), 0, txd::kCmdEop | txd::kCmdRs);
  for (uint32_t i = 0; i < 9; ++i) {
    TxDesc(2 + i, Buf(2), 100, i == 8 ? txd::kCmdEop | txd::kCmdRs : 0);
  }
  TxDesc(11, kBase + kMemSize - 50, 100, txd::kCmdEop | txd::kCmdRs);  // straddles the end
  q.Process(12, dma_, backend_, 64);
  EXPECT_TRUE(backend_.sent.empty());
  EXPECT_EQ(q.stats().drops.load(), 4u);
  EXPECT_EQ(q.head(), 12u);
  for (uint32_t i : {0u, 1u, 10u, 11u}) EXPECT_EQ(Qw(kTxRing + i * 16 + 8) & 0xF, 0xFu) << i;
  // A chain without EOP waits for the rest...
  TxDesc(12, Buf(1), 100, 0);
  TxDesc(13, Buf(1), 100, 0);
  q.Process(14, dma_, backend_, 64);
  EXPECT_EQ(q.head(), 12u);
  // ... and a whole ring of them is dropped, not looped over.
  for (uint32_t i = 0; i < 64; ++i) TxDesc(i, Buf(1), 100, 0);
  q.Process(11, dma_, backend_, 64);
  EXPECT_EQ(q.head(), 11u);
  EXPECT_TRUE(backend_.sent.empty());
  // The ring unmapped mid-traffic: error counted once, no progress.
  uint64_t errors = q.stats().errors.load();
  q.OnDmaUnmap(kBase, kMemSize);
  dma_.RemoveWindow(kBase);
  q.Process(20, dma_, backend_, 64);
  q.Process(20, dma_, backend_, 64);
  EXPECT_EQ(q.stats().errors.load(), errors + 1);
  EXPECT_EQ(q.head(), 11u);
  // Mapped again: traffic resumes.
  dma_.AddWindow(kBase, kMemSize, mem_.data());
  auto f = Frame(64, 1);
  std::memcpy(At(Buf(5)), f.data(), f.size());
  TxDesc(11, Buf(5), 64, txd::kCmdEop | txd::kCmdRs);
  q.Process(12, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 1u);
  EXPECT_EQ(backend_.sent[0], f);
}

TEST_F(QueuesTest, TxShortFramesArePadded) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  auto f = Frame(20, 3);
  std::memcpy(At(Buf(0)), f.data(), f.size());
  TxDesc(0, Buf(0), 20, txd::kCmdEop | txd::kCmdRs);
  q.Process(1, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 1u);
  ASSERT_EQ(backend_.sent[0].size(), 60u);
  EXPECT_EQ(0, std::memcmp(backend_.sent[0].data(), f.data(), 20));
  EXPECT_EQ(backend_.sent[0][59], 0);
}

// may_hold: a frame whose descriptor opens a cache line has its write-back
// held until its line-mate's (or FlushHeld, or any slower path); a crash
// while it is held leaves the frame undelivered, never a descriptor without
// its bytes.
TEST_F(QueuesTest, RxHeldWriteBackPairsLineMatesAndSurvivesACrash) {
  ASSERT_EQ(kRxRing % 64, 0u);
  RxQueue q(0, state_->rx(0));
  ASSERT_TRUE(q.Configure(kRxRing, 32, 1024, 9000).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  for (uint32_t i = 0; i < 32; ++i) PostRx(i, Buf(i));
  const uint32_t tail = 31;
  auto f = [this](uint8_t seed) { return Frame(200, seed); };
  auto deliver = [&](const std::vector<uint8_t>& fr) {
    return q.Deliver(fr, tail, dma_, 0, false, 0, 0, /*may_hold=*/true);
  };
  // Descriptor 0 (the first frame translates the ring on the slow path,
  // which never holds) and 1 (the second half of its line): written at once.
  ASSERT_EQ(deliver(f(1)), RxQueue::DeliverResult::kDelivered);
  ASSERT_EQ(deliver(f(2)), RxQueue::DeliverResult::kDelivered);
  EXPECT_FALSE(q.holding());
  EXPECT_TRUE(RxQw1(0) & rxd::kDd);
  EXPECT_TRUE(RxQw1(1) & rxd::kDd);
  EXPECT_EQ(q.head(), 2u);
  // Descriptor 2 opens a line: the bytes are written, the descriptor and
  // the head wait; intent already covers the frame.
  ASSERT_EQ(deliver(f(3)), RxQueue::DeliverResult::kDelivered);
  EXPECT_TRUE(q.holding());
  EXPECT_EQ(0, std::memcmp(At(Buf(2)), f(3).data(), 200));
  EXPECT_FALSE(RxQw1(2) & rxd::kDd);
  EXPECT_EQ(q.head(), 2u);
  EXPECT_EQ(state_->rx(0)->intent.load(), 3u);
  // Its line-mate writes both.
  ASSERT_EQ(deliver(f(4)), RxQueue::DeliverResult::kDelivered);
  EXPECT_FALSE(q.holding());
  EXPECT_TRUE(RxQw1(2) & rxd::kDd);
  EXPECT_EQ(rxd::Len(RxQw1(2)), 200u);
  EXPECT_TRUE(RxQw1(3) & rxd::kDd);
  EXPECT_EQ(q.head(), 4u);
  EXPECT_EQ(state_->rx(0)->intent.load(), 4u);
  // FlushHeld writes a held one alone.
  ASSERT_EQ(deliver(f(5)), RxQueue::DeliverResult::kDelivered);
  EXPECT_TRUE(q.holding());
  q.FlushHeld();
  EXPECT_FALSE(q.holding());
  EXPECT_TRUE(RxQw1(4) & rxd::kDd);
  EXPECT_EQ(q.head(), 5u);
  // A frame that needs the slow path (three 1024-byte buffers) writes the
  // held descriptor before its own.
  ASSERT_EQ(deliver(f(6)), RxQueue::DeliverResult::kDelivered);  // 5: odd, written
  ASSERT_EQ(deliver(f(7)), RxQueue::DeliverResult::kDelivered);  // 6: held
  EXPECT_TRUE(q.holding());
  ASSERT_EQ(deliver(Frame(3000, 8)), RxQueue::DeliverResult::kDelivered);
  EXPECT_FALSE(q.holding());
  EXPECT_TRUE(RxQw1(6) & rxd::kDd);
  EXPECT_TRUE(RxQw1(6) & rxd::kEof);
  EXPECT_FALSE(RxQw1(7) & rxd::kEof);
  EXPECT_TRUE(RxQw1(9) & rxd::kEof);
  EXPECT_EQ(q.head(), 10u);
  // Without may_hold nothing is held.
  ASSERT_EQ(q.Deliver(f(9), tail, dma_), RxQueue::DeliverResult::kDelivered);  // 10
  EXPECT_FALSE(q.holding());
  EXPECT_TRUE(RxQw1(10) & rxd::kDd);
  ASSERT_EQ(deliver(f(10)), RxQueue::DeliverResult::kDelivered);  // 11: odd
  // The worker dies while descriptor 12 is held: its successor's Recover
  // finds no DD there, so the head stays and the next frame takes it.
  ASSERT_EQ(deliver(f(11)), RxQueue::DeliverResult::kDelivered);
  ASSERT_TRUE(q.holding());
  EXPECT_EQ(q.head(), 12u);
  RxQueue successor(0, state_->rx(0));
  successor.SetBufferSizes(1024, 9000);
  successor.Recover(dma_);
  EXPECT_EQ(successor.head(), 12u);
  EXPECT_EQ(state_->rx(0)->intent.load(), 12u);
  EXPECT_FALSE(RxQw1(12) & rxd::kDd);
  ASSERT_EQ(successor.Deliver(f(12), tail, dma_), RxQueue::DeliverResult::kDelivered);
  EXPECT_TRUE(RxQw1(12) & rxd::kDd);
  EXPECT_EQ(0, std::memcmp(At(Buf(12)), f(12).data(), 200));
  EXPECT_EQ(successor.head(), 13u);
}

TEST_F(QueuesTest, RxWritesLegacyDescriptorsAndSpansBuffers) {
  RxQueue q(0, state_->rx(0));
  ASSERT_TRUE(q.Configure(kRxRing, 32, 1024, 9000).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  for (uint32_t i = 0; i < 32; ++i) PostRx(i, Buf(i));
  uint32_t tail = 31;
  // IPv4/UDP frame of 100 bytes.
  auto small = Frame(100, 9);
  small[12] = 0x08;
  small[13] = 0x00;
  small[14] = 0x45;
  small[20] = small[21] = 0;
  small[23] = 17;
  EXPECT_EQ(q.Deliver(small, tail, dma_), RxQueue::DeliverResult::kDelivered);
  uint64_t qw1 = RxQw1(0);
  EXPECT_TRUE(qw1 & rxd::kDd);
  EXPECT_TRUE(qw1 & rxd::kEof);
  EXPECT_EQ(rxd::Len(qw1), 100u);
  EXPECT_EQ(rxd::Ptype(qw1), 24u);
  EXPECT_EQ(0, std::memcmp(At(Buf(0)), small.data(), 100));
  // 3000 bytes over 1024-byte buffers: 3 descriptors, EOF on the last.
  auto big = Frame(3000, 4);
  EXPECT_EQ(q.Deliver(big, tail, dma_), RxQueue::DeliverResult::kDelivered);
  EXPECT_EQ(rxd::Len(RxQw1(1)), 1024u);
  EXPECT_FALSE(RxQw1(1) & rxd::kEof);
  EXPECT_EQ(rxd::Len(RxQw1(3)), 3000u - 2048);
  EXPECT_TRUE(RxQw1(3) & rxd::kEof);
  EXPECT_EQ(0, std::memcmp(At(Buf(2)), big.data() + 1024, 1024));
  EXPECT_EQ(q.head(), 4u);
  // Too long for max_pkt_size: dropped, nothing written.
  EXPECT_EQ(q.Deliver(Frame(9001, 0), tail, dma_), RxQueue::DeliverResult::kDropped);
  EXPECT_EQ(q.head(), 4u);
  // Out of buffers.
  while (q.Deliver(small, tail, dma_) == RxQueue::DeliverResult::kDelivered) {
  }
  EXPECT_EQ(q.head(), 31u);
  EXPECT_EQ(q.Deliver(small, tail, dma_), RxQueue::DeliverResult::kNoBuffers);
  // Guest recycles: tail moves on (wrap).
  for (uint32_t i = 0; i < 10; ++i) PostRx(i, Buf(i));
  tail = 9;
  EXPECT_EQ(q.Deliver(small, tail, dma_), RxQueue::DeliverResult::kDelivered);
  EXPECT_EQ(q.head(), 0u);
  EXPECT_EQ(q.stats().packets.load(), 27u + 2 + 1);
}

TEST_F(QueuesTest, RxBadInput) {
  RxQueue q(0, state_->rx(0));
  EXPECT_FALSE(q.Configure(kRxRing, 7, 2048, 1518).ok());
  EXPECT_FALSE(q.Configure(kRxRing + 8, 32, 2048, 1518).ok());
  EXPECT_FALSE(q.Configure(kRxRing, 32, 100, 1518).ok());
  EXPECT_FALSE(q.Configure(kRxRing, 32, 2048, 20000).ok());
  EXPECT_FALSE(q.SetEnabled(true).ok()) << "unconfigured";
  ASSERT_TRUE(q.Configure(kRxRing, 32, 2048, 1518).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  auto f = Frame(200, 1);
  EXPECT_EQ(q.Deliver(f, 32, dma_), RxQueue::DeliverResult::kDropped);  // tail beyond ring
  EXPECT_EQ(q.stats().errors.load(), 1u);
  // Buffer outside the map: descriptor returned with RXE, not skipped.
  PostRx(0, 0xbad00000);
  PostRx(1, Buf(1));
  EXPECT_EQ(q.Deliver(f, 2, dma_), RxQueue::DeliverResult::kDropped);
  EXPECT_TRUE(RxQw1(0) & rxd::kErrRxe);
  EXPECT_TRUE(RxQw1(0) & rxd::kDd);
  EXPECT_TRUE(RxQw1(0) & rxd::kEof);
  EXPECT_GT(rxd::Len(RxQw1(0)), 0u) << "pre-libeth iavf stalls on a 0-byte first buffer";
  // DPDK never tests RXE (iavf_rxd_to_pkt_flags): IPE and L4E make the
  // fragment it delivers checksum-BAD, ptype 0 makes it unknown.
  EXPECT_TRUE(RxQw1(0) & rxd::kErrIpe);
  EXPECT_TRUE(RxQw1(0) & rxd::kErrL4e);
  EXPECT_EQ(rxd::Ptype(RxQw1(0)), 0u);
  EXPECT_FALSE(RxQw1(0) & rxd::kL3L4P);
  EXPECT_EQ(q.head(), 1u);
  EXPECT_EQ(q.Deliver(f, 2, dma_), RxQueue::DeliverResult::kDelivered);
  // Ring unmapped: drop, no crash.
  q.OnDmaUnmap(kRxRing, 4096);
  dma_.RemoveWindow(kBase);
  PostRx(2, Buf(2));
  EXPECT_EQ(q.Deliver(f, 3, dma_), RxQueue::DeliverResult::kDropped);
}

TEST_F(QueuesTest, RxRecoveryNeitherRewritesNorSkips) {
  RxQueue q(0, state_->rx(0));
  ASSERT_TRUE(q.Configure(kRxRing, 32, 1024, 9000).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  for (uint32_t i = 0; i < 32; ++i) PostRx(i, Buf(i));
  ASSERT_EQ(q.Deliver(Frame(100, 1), 31, dma_), RxQueue::DeliverResult::kDelivered);
  // Simulate a crash in the middle of a 3-buffer frame: intent = 4, only
  // descriptor 1 written (no EOF).
  HotQueue* hot = state_->rx(0);
  hot->intent.store(4);
  Qw(kRxRing + 1 * 32 + 8) = rxd::kDd | uint64_t(1024) << rxd::kLenShift;
  RxQueue successor(0, hot);
  successor.Recover(dma_);
  // Descriptor 2 closes the torn frame with an error; head continues at 3.
  EXPECT_TRUE(RxQw1(2) & rxd::kErrRxe);
  EXPECT_TRUE(RxQw1(2) & rxd::kEof);
  EXPECT_GT(rxd::Len(RxQw1(2)), 0u) << "pre-libeth iavf stalls on a 0-byte buffer";
  EXPECT_TRUE(RxQw1(2) & rxd::kErrIpe) << "DPDK ignores RXE: the fragment must read BAD";
  EXPECT_TRUE(RxQw1(2) & rxd::kErrL4e);
  EXPECT_EQ(hot->head.load(), 3u);
  EXPECT_EQ(hot->intent.load(), 3u);
  EXPECT_EQ(RxQw1(3), 0u) << "posted buffer 3 untouched";
}

TEST_F(QueuesTest, LoopbackTxToRx) {
  TxQueue tx(0, state_->tx(0));
  RxQueue rx(0, state_->rx(0));
  ASSERT_TRUE(tx.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(tx.SetEnabled(true).ok());
  ASSERT_TRUE(rx.Configure(kRxRing, 64, 2048, 1518).ok());
  ASSERT_TRUE(rx.SetEnabled(true).ok());
  for (uint32_t i = 0; i < 64; ++i) PostRx(i, Buf(32 + i));
  struct Sink : FrameSink {
    RxQueue* rx;
    vfio_user::DmaMemory* dma;
    bool Deliver(uint16_t, FrameView f) override {
      return rx->Deliver(f, 63, *dma) != RxQueue::DeliverResult::kNoBuffers;
    }
  } sink;
  sink.rx = &rx;
  sink.dma = &dma_;
  auto lb = MakeLoopbackBackend();
  lb->set_sink(&sink);
  for (uint32_t i = 0; i < 10; ++i) {
    auto f = Frame(64 + i * 100, uint8_t(i));
    std::memcpy(At(Buf(i)), f.data(), f.size());
    TxDesc(i, Buf(i), uint32_t(f.size()), txd::kCmdEop | txd::kCmdRs);
  }
  tx.Process(10, dma_, *lb, 64);
  EXPECT_EQ(rx.head(), 10u);
  for (uint32_t i = 0; i < 10; ++i) {
    EXPECT_EQ(rxd::Len(RxQw1(i)), 64 + i * 100);
    EXPECT_EQ(0, std::memcmp(At(Buf(32 + i)), At(Buf(i)), 64 + i * 100));
  }
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

TEST_F(QueuesTest, TxRecoveryWritesCommittedCompletionsOnlyWhereUnreclaimed) {
  HotQueue* hot = state_->tx(0);
  TxQueue q(0, hot);
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  // A kill after the head store, before the write-backs: head = 3 and the
  // record lists descriptors 0 and 2 with their original qw1.
  for (uint32_t i = 0; i < 3; ++i) TxDesc(i, Buf(i), 100, txd::kCmdEop | txd::kCmdRs);
  uint64_t qw1_0 = Qw(kTxRing + 8), qw1_2 = Qw(kTxRing + 2 * 16 + 8);
  hot->rs_idx[0] = 0;
  hot->rs_qw1[0] = qw1_0;
  hot->rs_idx[1] = 2;
  hot->rs_qw1[1] = qw1_2;
  hot->rs_head = 3;
  hot->rs_count.store(2);
  hot->head.store(3);
  // The guest already reclaimed and reused slot 2 (other contents).
  TxDesc(2, Buf(9), 200, txd::kCmdEop);
  TxQueue successor(0, hot);
  EXPECT_EQ(successor.Recover(dma_), 1u);
  EXPECT_EQ(Qw(kTxRing + 8) & 0xF, 0xFu);
  EXPECT_NE(Qw(kTxRing + 2 * 16 + 8) & 0xF, 0xFu) << "reused slot left alone";
  EXPECT_EQ(hot->rs_count.load(), 0u);
  // A record whose head was never stored (kill before the head store) is
  // ignored: the burst is re-sent instead.
  hot->rs_count.store(1);
  hot->rs_head = 9;
  TxDesc(1, Buf(1), 100, txd::kCmdEop | txd::kCmdRs);
  hot->rs_idx[0] = 1;
  hot->rs_qw1[0] = Qw(kTxRing + 16 + 8);
  TxQueue successor2(0, hot);
  EXPECT_EQ(successor2.Recover(dma_), 0u);
  EXPECT_NE(Qw(kTxRing + 16 + 8) & 0xF, 0xFu);
}

TEST_F(QueuesTest, TxManyDroppedPacketsKeepTheRecordBounded) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 256).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  for (uint32_t i = 0; i < 255; ++i) TxDesc(i, 0xdead0000, 100, txd::kCmdEop | txd::kCmdRs);
  q.Process(255, dma_, backend_, 1000);
  EXPECT_EQ(q.stats().drops.load(), 255u);
  for (uint32_t i = 0; i < 255; ++i) EXPECT_EQ(Qw(kTxRing + i * 16 + 8) & 0xF, 0xFu) << i;
  EXPECT_EQ(q.stats().rs_count.load(), 0u);
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

// Writes a TSO packet of `frags` payload descriptors of `frag_len` bytes
// (one header descriptor first) at ring index 0 behind a context
// descriptor: what DPDK's iavf_xmit_pkts emits for a chained mbuf
// (IAVF_TSO_MAX_SEG = 255 segments). Returns the tail.
class TsoChainTest : public QueuesTest {
 protected:
  uint32_t WriteChain(uint32_t frags, uint32_t frag_len, uint32_t mss) {
    const uint32_t payload = frags * frag_len;
    std::vector<uint8_t> h(54, 0);
    h[12] = 0x08;
    h[14] = 0x45;
    h[23] = 6;
    h[14 + 20 + 12] = 5 << 4;
    h[14 + 20 + 13] = 0x10;
    Qw(kTxRing + 0) = 0;
    Qw(kTxRing + 8) = txd::ContextQw1(txd::kCtxCmdTso, payload, mss);
    const uint32_t cmd = (3u << 5) | (1u << 8);
    std::memcpy(At(Buf(0)), h.data(), h.size());
    TxDesc(1, Buf(0), 54, cmd, txd::Offsets(14, 20, 20));
    for (uint32_t i = 0; i < frags; ++i) {
      const uint64_t a = Buf(1) + uint64_t{i} * frag_len;
      for (uint32_t k = 0; k < frag_len; ++k) *At(a + k) = uint8_t(i * 3 + k);
      const bool last = i + 1 == frags;
      TxDesc(2 + i, a, frag_len, cmd | (last ? txd::kCmdEop | txd::kCmdRs : 0),
             txd::Offsets(14, 20, 20));
    }
    return 2 + frags;
  }
};

TEST_F(TsoChainTest, TsoWithDpdkMaxSegmentsIsSent) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 512).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  const uint32_t frags = 254, frag_len = 64, mss = 1448;  // 255 data descriptors
  const uint32_t tail = WriteChain(frags, frag_len, mss);
  q.Process(tail, dma_, backend_, 64);
  EXPECT_EQ(q.stats().drops.load(), 0u);
  EXPECT_EQ(q.stats().errors.load(), 0u);
  EXPECT_EQ(q.head(), tail);
  const uint32_t payload = frags * frag_len;
  ASSERT_EQ(backend_.sent.size(), (payload + mss - 1) / mss);
  std::vector<uint8_t> got;
  for (const auto& s : backend_.sent) got.insert(got.end(), s.begin() + 54, s.end());
  ASSERT_EQ(got.size(), payload);
  std::vector<uint8_t> want(At(Buf(1)), At(Buf(1)) + payload);
  EXPECT_EQ(got, want);
  EXPECT_EQ(Qw(kTxRing + (tail - 1) * 16 + 8) & 0xF, 0xFu);
}

TEST_F(TsoChainTest, TsoChainLongerThanTheBoundIsDroppedAndCompleted) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 2048).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  const uint32_t tail = WriteChain(1200, 16, 1448);
  q.Process(tail, dma_, backend_, 64);
  EXPECT_TRUE(backend_.sent.empty());
  EXPECT_EQ(q.stats().errors.load(), 1u);
  EXPECT_EQ(q.head(), tail) << "the whole packet is consumed";
  EXPECT_EQ(Qw(kTxRing + (tail - 1) * 16 + 8) & 0xF, 0xFu);
}

// A small ring bounds a packet at ring_len - 1 descriptors; a chain that
// fills the ring without EOP can never end and is dropped.
TEST_F(TsoChainTest, ChainFillingTheRingIsDropped) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 128).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  WriteChain(126, 16, 1448);
  TxDesc(127, Buf(1), 16, (3u << 5) | (1u << 8), txd::Offsets(14, 20, 20));  // no EOP
  q.Process(127, dma_, backend_, 64);
  EXPECT_TRUE(backend_.sent.empty());
  EXPECT_EQ(q.head(), 127u);
  EXPECT_EQ(q.stats().errors.load(), 1u);
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

// Tunnel TX offloads (ENCAP / ENCAP_CSUM). The descriptors are those Linux
// iavf_tx_enable_csum and DPDK iavf_fill_ctx_desc_tunnelling_field /
// iavf_txd_enable_offload write: context qword 0 with EIPT, EIPLEN (outer IP
// header, dwords), L4TUNT, L4TUNLEN (UDP/GRE header + inner MAC, words) and
// L4T_CS; the data descriptor's MACLEN is the OUTER L2 length, IIPT/IPLEN
// and L4T/L4LEN describe the INNER headers. Every checksum is verified with
// the reference sum below (bytewise big-endian words), not the production
// helpers.

// Folded (not inverted) ones' complement sum of big-endian 16-bit words.
uint16_t RefSum(const std::vector<uint8_t>& b) {
  uint64_t sum = 0;
  for (size_t i = 0; i < b.size(); i += 2) {
    sum += uint32_t(b[i]) << 8 | (i + 1 < b.size() ? b[i + 1] : 0);
  }
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  return uint16_t(sum);
}
uint16_t Be16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
void PutBe16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}

bool RefIpv4HeaderOk(const std::vector<uint8_t>& f, size_t l3) {
  const size_t ihl = size_t(f[l3] & 0xF) * 4;
  return RefSum(std::vector<uint8_t>(f.begin() + l3, f.begin() + l3 + ihl)) == 0xFFFF;
}
// The pseudo-header of the IP header at l3 (v6: no extension headers) for
// an L4 of `len` bytes of protocol `proto`, followed by the L4 bytes.
bool RefL4Ok(const std::vector<uint8_t>& f, size_t l3, bool v6, uint8_t proto, size_t l4,
             size_t len) {
  std::vector<uint8_t> b;
  if (v6) {
    b.insert(b.end(), f.begin() + l3 + 8, f.begin() + l3 + 40);
    b.insert(b.end(), {uint8_t(len >> 24), uint8_t(len >> 16), uint8_t(len >> 8), uint8_t(len),
                       0, 0, 0, proto});
  } else {
    b.insert(b.end(), f.begin() + l3 + 12, f.begin() + l3 + 20);
    b.insert(b.end(), {0, proto, uint8_t(len >> 8), uint8_t(len)});
  }
  b.insert(b.end(), f.begin() + l4, f.begin() + l4 + len);
  return RefSum(b) == 0xFFFF;
}
// The pseudo-header sum a driver seeds the L4 checksum field with (Linux
// TSO: without the length), folded, not inverted.
uint16_t RefSeed(const std::vector<uint8_t>& f, size_t l3, bool v6, uint8_t proto, size_t len) {
  std::vector<uint8_t> b;
  if (v6) {
    b.insert(b.end(), f.begin() + l3 + 8, f.begin() + l3 + 40);
  } else {
    b.insert(b.end(), f.begin() + l3 + 12, f.begin() + l3 + 20);
  }
  b.insert(b.end(), {0, proto, uint8_t(len >> 8), uint8_t(len)});
  return RefSum(b);
}

enum class Tun { kVxlan, kGeneve, kGre };

struct TunPkt {
  std::vector<uint8_t> f;
  bool outer_v6, inner_v6, tcp;
  Tun kind;
  size_t ol3 = 14, ol4, il3, il4, hdr;
  uint32_t eiplen, natlen, iplen, l4len;
};

// Outer Ethernet / IPv4 or IPv6 / VXLAN (UDP 4789) or GENEVE (UDP 6081, one
// 8-byte option) or GRE (proto 47, 0x6558) / inner Ethernet / IPv4 or IPv6 /
// TCP or UDP / payload. Lengths and checksums are left for the caller.
TunPkt BuildTunnel(Tun kind, bool outer_v6, bool inner_v6, bool tcp, size_t payload) {
  TunPkt p;
  p.kind = kind;
  p.outer_v6 = outer_v6;
  p.inner_v6 = inner_v6;
  p.tcp = tcp;
  auto& f = p.f;
  auto eth = [&](uint16_t type) {
    for (int i = 0; i < 12; ++i) f.push_back(uint8_t(0x02 + i));
    f.push_back(uint8_t(type >> 8));
    f.push_back(uint8_t(type));
  };
  auto ip = [&](bool v6, uint8_t proto, uint8_t seed) {
    if (v6) {
      f.insert(f.end(), {0x60, 0, 0, 0, 0, 0, proto, 64});
      for (int i = 0; i < 32; ++i) f.push_back(uint8_t(seed + i * 13));
    } else {
      f.insert(f.end(), {0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0});
      for (int i = 0; i < 8; ++i) f.push_back(uint8_t(seed + i * 29));
    }
  };
  eth(outer_v6 ? 0x86DD : 0x0800);
  ip(outer_v6, kind == Tun::kGre ? 47 : 17, 0x0A);
  p.ol4 = f.size();
  p.eiplen = uint32_t(p.ol4 - p.ol3);
  if (kind == Tun::kGre) {
    f.insert(f.end(), {0, 0, 0x65, 0x58});
  } else {
    const uint16_t port = kind == Tun::kVxlan ? 4789 : 6081;
    f.insert(f.end(), {0xC0, 0x01, uint8_t(port >> 8), uint8_t(port), 0, 0, 0, 0});
    if (kind == Tun::kVxlan) {
      f.insert(f.end(), {0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0});
    } else {  // GENEVE: opt len 2 (8 bytes), protocol 0x6558, VNI, one option
      f.insert(f.end(), {0x02, 0, 0x65, 0x58, 0x00, 0xAB, 0xCD, 0});
      f.insert(f.end(), {0x01, 0x02, 0x03, 0x01, 0xDE, 0xAD, 0xBE, 0xEF});
    }
  }
  eth(inner_v6 ? 0x86DD : 0x0800);
  p.il3 = f.size();
  p.natlen = uint32_t(p.il3 - p.ol4);
  ip(inner_v6, tcp ? 6 : 17, 0xC0);
  p.il4 = f.size();
  p.iplen = uint32_t(p.il4 - p.il3);
  if (tcp) {
    f.insert(f.end(), {0x30, 0x39, 0x00, 0x50, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0, 0x50, 0x18,
                       0xFF, 0xFF, 0, 0, 0, 0});
  } else {
    f.insert(f.end(), {0x30, 0x39, 0x00, 0x35, 0, 0, 0, 0});
  }
  p.l4len = uint32_t(f.size() - p.il4);
  p.hdr = f.size();
  for (size_t i = 0; i < payload; ++i) f.push_back(uint8_t(i * 31 + 7));
  return p;
}

// Fills every length field (and the checksums the stack computes before a
// non-TSO transmit: none of the offloaded ones) for a frame sent whole.
void SetLengths(TunPkt& p) {
  auto& f = p.f;
  const size_t n = f.size();
  if (p.outer_v6) {
    PutBe16(&f[p.ol3 + 4], uint16_t(n - p.ol3 - 40));
  } else {
    PutBe16(&f[p.ol3 + 2], uint16_t(n - p.ol3));
  }
  if (p.kind != Tun::kGre) PutBe16(&f[p.ol4 + 4], uint16_t(n - p.ol4));
  if (p.inner_v6) {
    PutBe16(&f[p.il3 + 4], uint16_t(n - p.il3 - 40));
  } else {
    PutBe16(&f[p.il3 + 2], uint16_t(n - p.il3));
  }
  if (!p.tcp) PutBe16(&f[p.il4 + 4], uint16_t(n - p.il4));
}

class TunnelTxTest : public QueuesTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(q_.Configure(kTxRing, 256).ok());  // 24 packets of 3 descriptors
    ASSERT_TRUE(q_.SetEnabled(true).ok());
  }
  // Posts `p` as a context descriptor (tunnel qword 0, TSO fields) and two
  // data descriptors (headers, rest), as Linux maps an skb head and a frag.
  void Post(const TunPkt& p, uint64_t qw0, bool tso = false, uint32_t mss = 0) {
    Qw(kTxRing + idx_ * 16) = qw0;
    Qw(kTxRing + idx_ * 16 + 8) =
        txd::ContextQw1(tso ? txd::kCtxCmdTso : 0, tso ? uint32_t(p.f.size() - p.hdr) : 0, mss);
    const uint32_t cmd = (p.inner_v6 ? 1u << 5 : 3u << 5) | (p.tcp ? 1u << 8 : 3u << 8);
    const uint32_t offs = txd::Offsets(14, p.iplen, p.l4len);
    const size_t split = p.hdr;
    std::memcpy(At(Buf(idx_)), p.f.data(), split);
    std::memcpy(At(Buf(idx_ + 1)), p.f.data() + split, p.f.size() - split);
    TxDesc(idx_ + 1, Buf(idx_), uint32_t(split), cmd, offs);
    TxDesc(idx_ + 2, Buf(idx_ + 1), uint32_t(p.f.size() - split), cmd | txd::kCmdEop | txd::kCmdRs,
           offs);
    idx_ += 3;
  }
  void Run() { q_.Process(idx_, dma_, backend_, 256); }
  static uint64_t Qw0(const TunPkt& p, uint32_t eipt, bool l4t_cs, bool noinc = false) {
    const uint32_t natt = p.kind == Tun::kGre ? 2 : 1;
    return txd::CtxTunnelQw0(eipt, p.eiplen, natt, p.natlen, l4t_cs, noinc);
  }
  // Every checksum of a sent frame, checked with the reference sums.
  void ExpectChecksums(const TunPkt& p, const std::vector<uint8_t>& out, bool outer_udp_csum) {
    const size_t n = out.size();
    if (!p.outer_v6) {
      EXPECT_TRUE(RefIpv4HeaderOk(out, p.ol3)) << "outer IPv4 header";
      EXPECT_EQ(Be16(&out[p.ol3 + 2]), n - p.ol3);
    } else {
      EXPECT_EQ(Be16(&out[p.ol3 + 4]), n - p.ol3 - 40);
    }
    if (p.kind != Tun::kGre) {
      EXPECT_EQ(Be16(&out[p.ol4 + 4]), n - p.ol4) << "outer UDP length";
      if (outer_udp_csum) {
        EXPECT_NE(Be16(&out[p.ol4 + 6]), 0);
        EXPECT_TRUE(RefL4Ok(out, p.ol3, p.outer_v6, 17, p.ol4, n - p.ol4)) << "outer UDP";
      }
    }
    if (!p.inner_v6) {
      EXPECT_TRUE(RefIpv4HeaderOk(out, p.il3)) << "inner IPv4 header";
      EXPECT_EQ(Be16(&out[p.il3 + 2]), n - p.il3);
    } else {
      EXPECT_EQ(Be16(&out[p.il3 + 4]), n - p.il3 - 40);
    }
    EXPECT_TRUE(RefL4Ok(out, p.il3, p.inner_v6, p.tcp ? 6 : 17, p.il4, n - p.il4)) << "inner L4";
  }

  TxQueue q_{0, state_->tx(0)};
  uint32_t idx_ = 0;
};

TEST_F(TunnelTxTest, ChecksumsOfEveryTunnelKindAndOuterFamily) {
  for (Tun kind : {Tun::kVxlan, Tun::kGeneve, Tun::kGre}) {
    for (bool outer_v6 : {false, true}) {
      for (bool inner_v6 : {false, true}) {
        for (bool tcp : {true, false}) {
          SCOPED_TRACE(::testing::Message() << "kind " << int(kind) << " outer_v6 " << outer_v6
                                            << " inner_v6 " << inner_v6 << " tcp " << tcp);
          TunPkt p = BuildTunnel(kind, outer_v6, inner_v6, tcp, 301);
          SetLengths(p);
          auto& f = p.f;
          const size_t n = f.size();
          // The inner L4 field holds the pseudo-header sum with the length
          // (CHECKSUM_PARTIAL / rte_net_intel_cksum_prepare); the outer
          // checksums hold junk the device must overwrite.
          const size_t csum_at = p.il4 + (tcp ? 16 : 6);
          PutBe16(&f[csum_at], RefSeed(f, p.il3, inner_v6, tcp ? 6 : 17, n - p.il4));
          if (!outer_v6) PutBe16(&f[p.ol3 + 10], 0xBEEF);
          const bool udp_tunnel = kind != Tun::kGre;
          if (udp_tunnel) PutBe16(&f[p.ol4 + 6], 0xDEAD);
          const uint32_t eipt = outer_v6 ? 1 : 3;  // DPDK with OUTER_IP_CKSUM
          backend_.sent.clear();
          Post(p, Qw0(p, eipt, udp_tunnel));
          Run();
          ASSERT_EQ(backend_.sent.size(), 1u);
          const auto& out = backend_.sent[0];
          ASSERT_EQ(out.size(), n);
          ExpectChecksums(p, out, udp_tunnel);
          // Nothing but the checksum fields changed.
          std::vector<uint8_t> a = f, b = out;
          for (auto* v : {&a, &b}) {
            PutBe16(&(*v)[csum_at], 0);
            if (!outer_v6) PutBe16(&(*v)[p.ol3 + 10], 0);
            if (udp_tunnel) PutBe16(&(*v)[p.ol4 + 6], 0);
            if (!inner_v6) PutBe16(&(*v)[p.il3 + 10], 0);
          }
          EXPECT_EQ(a, b);
        }
      }
    }
  }
  EXPECT_EQ(q_.stats().errors.load(), 0u);
  EXPECT_EQ(q_.tunnel_malformed(), 0u);
}

// Linux outside TSO: EIPT 2 (the stack computed the outer IPv4 checksum),
// no L4T_CS (the stack computed or zeroed the outer UDP checksum): both are
// left as written.
TEST_F(TunnelTxTest, LinuxNonTsoLeavesOuterChecksumsAlone) {
  TunPkt p = BuildTunnel(Tun::kVxlan, false, false, true, 100);
  SetLengths(p);
  auto& f = p.f;
  PutBe16(&f[p.ol3 + 10], 0);
  PutBe16(&f[p.ol3 + 10], uint16_t(~RefSum(std::vector<uint8_t>(f.begin() + 14, f.begin() + 34))));
  PutBe16(&f[p.ol4 + 6], 0);  // VXLAN without outer checksum
  PutBe16(&f[p.il4 + 16], RefSeed(f, p.il3, false, 6, f.size() - p.il4));
  Post(p, Qw0(p, 2, false));
  Run();
  ASSERT_EQ(backend_.sent.size(), 1u);
  const auto& out = backend_.sent[0];
  EXPECT_EQ(Be16(&out[p.ol4 + 6]), 0) << "outer UDP checksum left 0";
  EXPECT_EQ(Be16(&out[p.ol3 + 10]), Be16(&f[p.ol3 + 10]));
  ExpectChecksums(p, out, false);
}

// Tunnel TSO as Linux iavf_tso prepares it for SKB_GSO_UDP_TUNNEL_CSUM
// (ENCAP_CSUM granted, so not GSO_PARTIAL): outer tot_len/check 0, UDP len
// 0, inner tot_len/check 0, TCP check = pseudo-header sum without length;
// EIPT 3 and L4T_CS.
TEST_F(TunnelTxTest, VxlanTsoFixesOuterAndInnerHeadersPerSegment) {
  const uint32_t payload = 3000, mss = 1000;
  TunPkt p = BuildTunnel(Tun::kVxlan, false, false, true, payload);
  auto& f = p.f;
  PutBe16(&f[p.il4 + 16], RefSeed(f, p.il3, false, 6, 0));
  PutBe16(&f[p.ol4 + 6], RefSeed(f, p.ol3, false, 17, 0));
  Post(p, Qw0(p, 3, true), true, mss);
  Run();
  ASSERT_EQ(backend_.sent.size(), 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    const auto& s = backend_.sent[i];
    ASSERT_EQ(s.size(), p.hdr + mss);
    ExpectChecksums(p, s, true);
    EXPECT_EQ(Be16(&s[p.ol3 + 4]), 0x1234 + i) << "outer IP ID increments";
    EXPECT_EQ(Be16(&s[p.il3 + 4]), 0x1234 + i) << "inner IP ID increments";
    const uint32_t seq = uint32_t(s[p.il4 + 4]) << 24 | s[p.il4 + 5] << 16 | s[p.il4 + 6] << 8 |
                         s[p.il4 + 7];
    EXPECT_EQ(seq, 0x11223344u + i * mss);
    EXPECT_EQ(s[p.il4 + 13], i == 2 ? 0x18 : 0x10) << "PSH only on the last";
    EXPECT_EQ(0, std::memcmp(s.data() + p.hdr, f.data() + p.hdr + i * mss, mss));
    EXPECT_EQ(0, std::memcmp(s.data() + p.ol4 + 8, f.data() + p.ol4 + 8, p.il3 - p.ol4 - 8))
        << "VXLAN header and inner MAC copied";
  }
  EXPECT_EQ(q_.stats().errors.load(), 0u);
}

// GENEVE over IPv6, inner IPv6 TCP, without L4T_CS: outer payload length
// per segment, outer UDP checksum 0 (SKB_GSO_UDP_TUNNEL).
TEST_F(TunnelTxTest, GeneveOverIpv6TsoWithoutOuterUdpChecksum) {
  const uint32_t payload = 2500, mss = 1200;
  TunPkt p = BuildTunnel(Tun::kGeneve, true, true, true, payload);
  auto& f = p.f;
  PutBe16(&f[p.il4 + 16], RefSeed(f, p.il3, true, 6, 0));
  PutBe16(&f[p.ol4 + 6], 0x5555);  // stale: must not survive
  Post(p, Qw0(p, 1, false), true, mss);
  Run();
  ASSERT_EQ(backend_.sent.size(), 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    const auto& s = backend_.sent[i];
    ASSERT_EQ(s.size(), p.hdr + std::min(mss, payload - i * mss));
    ExpectChecksums(p, s, false);
    EXPECT_EQ(Be16(&s[p.ol4 + 6]), 0);
  }
}

// GRE over IPv4, inner IPv4 TCP, EIP_NOINC: the outer ID stays.
TEST_F(TunnelTxTest, GreTsoKeepsOuterIdWithEipNoinc) {
  const uint32_t payload = 2000, mss = 700;
  TunPkt p = BuildTunnel(Tun::kGre, false, false, true, payload);
  auto& f = p.f;
  PutBe16(&f[p.il4 + 16], RefSeed(f, p.il3, false, 6, 0));
  Post(p, Qw0(p, 3, false, true), true, mss);
  Run();
  ASSERT_EQ(backend_.sent.size(), 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    const auto& s = backend_.sent[i];
    ExpectChecksums(p, s, false);
    EXPECT_EQ(Be16(&s[p.ol3 + 4]), 0x1234);
    EXPECT_EQ(Be16(&s[p.il3 + 4]), 0x1234 + i);
    EXPECT_EQ(0, std::memcmp(s.data() + p.ol4, f.data() + p.ol4, 4)) << "GRE header copied";
  }
}

// Lengths that lie: every one is dropped, counted as malformed and as a
// tunnel error, and nothing is sent; a good packet after them still goes.
TEST_F(TunnelTxTest, LyingTunnelLengthsAreDroppedAndCounted) {
  TunPkt p = BuildTunnel(Tun::kVxlan, false, false, true, 40);
  SetLengths(p);
  PutBe16(&p.f[p.il4 + 16], RefSeed(p.f, p.il3, false, 6, p.f.size() - p.il4));
  const uint64_t good = Qw0(p, 3, true);
  const uint64_t cases[] = {
      txd::CtxTunnelQw0(3, p.eiplen, 1, 254, true),    // NATLEN past the frame
      txd::CtxTunnelQw0(3, 24, 1, p.natlen, true),     // EIPLEN != IHL * 4
      txd::CtxTunnelQw0(3, 252, 1, p.natlen, true),    // EIPLEN past the frame
      txd::CtxTunnelQw0(1, p.eiplen, 1, p.natlen),     // IPv6 type on an IPv4 header
      txd::CtxTunnelQw0(3, p.eiplen, 2, p.natlen, true),  // L4T_CS on GRE
      txd::CtxTunnelQw0(0, p.eiplen, 1, p.natlen),     // no EIPT
      txd::CtxTunnelQw0(3, p.eiplen, 3, p.natlen),     // reserved L4TUNT
      txd::CtxTunnelQw0(3, p.eiplen, 1, 6),            // NATLEN shorter than UDP
  };
  for (uint64_t qw0 : cases) Post(p, qw0);
  // Inner IPLEN past the frame (data descriptor).
  Qw(kTxRing + idx_ * 16) = good;
  Qw(kTxRing + idx_ * 16 + 8) = txd::ContextQw1(0, 0, 0);
  std::memcpy(At(Buf(idx_)), p.f.data(), p.f.size());
  TxDesc(idx_ + 1, Buf(idx_), uint32_t(p.f.size()), (3u << 5) | (1u << 8) | txd::kCmdEop,
         txd::Offsets(14, 508, 20));
  idx_ += 2;
  // TSO whose payload length runs past the frame.
  Post(p, good, true, 64);
  Qw(kTxRing + (idx_ - 3) * 16 + 8) = txd::ContextQw1(txd::kCtxCmdTso, 4000, 64);
  const uint32_t bad = 10;
  Post(p, good);
  Run();
  EXPECT_EQ(q_.head(), idx_);
  EXPECT_EQ(q_.tunnel_malformed(), bad);
  EXPECT_EQ(q_.malformed(), bad);
  EXPECT_EQ(q_.stats().errors.load(), bad);
  ASSERT_EQ(backend_.sent.size(), 1u);
  ExpectChecksums(p, backend_.sent[0], true);
}

// Random tunnelling fields and offsets over real tunnel packets (with and
// without TSO): every packet is consumed, sent or counted, and (under the
// asan config) nothing is read or written outside the frame.
TEST_F(TunnelTxTest, RandomFieldsAreSentOrCountedNeverOutOfBounds) {
  std::mt19937 rng(18);
  uint64_t sent_packets = 0;
  for (int round = 0; round < 40; ++round) {
    idx_ = 0;
    backend_.sent.clear();
    ASSERT_TRUE(q_.SetEnabled(false).ok());
    ASSERT_TRUE(q_.Configure(kTxRing, 256).ok());
    ASSERT_TRUE(q_.SetEnabled(true).ok());
    const uint64_t malformed_before = q_.malformed();
    for (int k = 0; k < 16; ++k) {
      const Tun kind = static_cast<Tun>(rng() % 3);
      TunPkt p = BuildTunnel(kind, rng() & 1, rng() & 1, rng() & 1, rng() % 600);
      SetLengths(p);
      const bool tso = (rng() & 3) == 0 && p.f.size() > p.hdr;
      uint64_t qw0 = rng() & 0xFFFFFF;
      if (rng() & 1) qw0 = Qw0(p, p.outer_v6 ? 1 : 2 + (rng() & 1), rng() & 1);
      Post(p, qw0, tso, 64 + rng() % 300);
      const uint32_t data = idx_ - 2;
      if (rng() & 1) {  // lie in the data descriptor's offsets too
        const uint32_t offs = rng() & 0x3FFFF;
        for (uint32_t d : {data, data + 1}) {
          uint64_t& q1 = Qw(kTxRing + d * 16 + 8);
          q1 = (q1 & ~(uint64_t{0x3FFFF} << 16)) | uint64_t{offs} << 16;
        }
      }
    }
    Run();
    ASSERT_EQ(q_.head(), idx_);
    const uint64_t bad = q_.malformed() - malformed_before;
    EXPECT_LE(bad, 16u);
    EXPECT_LE(q_.tunnel_malformed(), q_.malformed());
    for (const auto& f : backend_.sent) EXPECT_GE(f.size(), 60u);
    if (bad < 16) {
      EXPECT_FALSE(backend_.sent.empty());
    }
    sent_packets += 16 - bad;
  }
  EXPECT_GT(sent_packets, 0u) << "some random packets were valid";
  EXPECT_GT(q_.tunnel_malformed(), 0u) << "and some were not";
}

// L2TAG2 bits (qword 0 47:32) alone are not tunnelling fields: the packet
// goes unchanged.
TEST_F(TunnelTxTest, L2tag2BitsAloneAreNotATunnel) {
  auto f = Frame(120, 5);
  std::memcpy(At(Buf(0)), f.data(), f.size());
  Qw(kTxRing) = uint64_t{0x123} << 32;
  Qw(kTxRing + 8) = txd::ContextQw1(0, 0, 0);
  TxDesc(1, Buf(0), 120, txd::kCmdEop | txd::kCmdRs);
  q_.Process(2, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 1u);
  EXPECT_EQ(backend_.sent[0], f);
  EXPECT_EQ(q_.stats().errors.load(), 0u);
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

// TX VLAN insertion (DPDK without VLAN_V2 and Linux with the VLAN cap:
// data descriptor CMD.IL2TAG1 + L2TAG1 in qw1 63:48; header lengths exclude
// the tag, which the device inserts after the offloads).
class TxVlanTest : public QueuesTest {
 protected:
  static constexpr uint32_t kIl2tag1 = 0x008;
  void TxDescTag(uint32_t idx, uint64_t addr, uint32_t size, uint32_t cmd, uint32_t offset,
                 uint16_t tag) {
    Qw(kTxRing + idx * 16) = addr;
    Qw(kTxRing + idx * 16 + 8) = txd::DataQw1(cmd, offset, size) | uint64_t{tag} << 48;
  }
  static std::vector<uint8_t> Tagged(const std::vector<uint8_t>& f, uint16_t tag) {
    std::vector<uint8_t> t(f.size() + 4);
    for (size_t i = 0; i < f.size(); ++i) t[i < 12 ? i : i + 4] = f[i];
    t[12] = 0x81;
    t[13] = 0x00;
    t[14] = uint8_t(tag >> 8);
    t[15] = uint8_t(tag);
    return t;
  }
  // An IPv4/TCP frame (20-byte headers) with `payload` bytes, for TSO.
  static std::vector<uint8_t> Tcp(uint32_t payload) {
    std::vector<uint8_t> f(54 + payload, 0);
    for (size_t i = 54; i < f.size(); ++i) f[i] = uint8_t(i * 13);
    f[12] = 0x08;
    f[14] = 0x45;
    f[23] = 6;
    f[14 + 20 + 12] = 5 << 4;
    f[14 + 20 + 13] = 0x18;
    return f;
  }
  // An IPv4/UDP frame with the driver's pseudo-header seed in place.
  std::vector<uint8_t> Udp(size_t len) {
    auto f = Frame(len, 9);
    f[12] = 0x08;
    f[13] = 0x00;
    f[14] = 0x45;
    f[16] = uint8_t((len - 14) >> 8);
    f[17] = uint8_t(len - 14);
    f[20] = f[21] = 0;
    f[23] = 17;
    f[34 + 4] = uint8_t((len - 34) >> 8);
    f[34 + 5] = uint8_t(len - 34);
    return f;
  }
};

TEST_F(TxVlanTest, Il2tag1InsertsTheTagAfterTheMacAddresses) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  auto f = Frame(100, 1);
  std::memcpy(At(Buf(0)), f.data(), f.size());
  TxDescTag(0, Buf(0), 100, kIl2tag1 | txd::kCmdEop | txd::kCmdRs, 0, 0xE123);
  // Short frame: tagged, then padded to 60.
  auto s = Frame(20, 2);
  std::memcpy(At(Buf(1)), s.data(), s.size());
  TxDescTag(1, Buf(1), 20, kIl2tag1 | txd::kCmdEop | txd::kCmdRs, 0, 5);
  // Tag bits without IL2TAG1: nothing inserted.
  TxDescTag(2, Buf(0), 100, txd::kCmdEop | txd::kCmdRs, 0, 0x777);
  q.Process(3, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 3u);
  EXPECT_EQ(backend_.sent[0], Tagged(f, 0xE123));
  auto ts = Tagged(s, 5);
  ts.resize(60, 0);
  EXPECT_EQ(backend_.sent[1], ts);
  EXPECT_EQ(backend_.sent[2], f);
  EXPECT_EQ(q.stats().errors.load(), 0u);
}

TEST_F(TxVlanTest, TagGoesInAfterChecksumsOverTheUntaggedOffsets) {
  TxQueue plain(0, state_->tx(0)), tagged(1, state_->tx(1));
  const uint32_t cmd = (3u << 5) | (3u << 8) | txd::kCmdEop | txd::kCmdRs;
  auto f = Udp(200);
  // The same packet, gathered from two buffers, with and without the tag.
  std::memcpy(At(Buf(0)), f.data(), 50);
  std::memcpy(At(Buf(1)), f.data() + 50, 150);
  ASSERT_TRUE(plain.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(plain.SetEnabled(true).ok());
  TxDescTag(0, Buf(0), 50, cmd & ~txd::kCmdEop, txd::Offsets(14, 20, 8), 0);
  TxDescTag(1, Buf(1), 150, cmd, txd::Offsets(14, 20, 8), 0);
  plain.Process(2, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 1u);
  const auto want = Tagged(backend_.sent[0], 0x0064);
  ASSERT_TRUE(tagged.Configure(kTxRing + 0x1000, 64).ok());
  ASSERT_TRUE(tagged.SetEnabled(true).ok());
  const uint64_t r = kTxRing + 0x1000;
  Qw(r) = Buf(0);
  Qw(r + 8) = txd::DataQw1((cmd & ~txd::kCmdEop) | kIl2tag1, txd::Offsets(14, 20, 8), 50) |
              uint64_t{0x64} << 48;
  Qw(r + 16) = Buf(1);
  Qw(r + 24) = txd::DataQw1(cmd | kIl2tag1, txd::Offsets(14, 20, 8), 150) | uint64_t{0x64} << 48;
  tagged.Process(2, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 2u);
  EXPECT_EQ(backend_.sent[1], want);
}

TEST_F(TxVlanTest, TsoTagsEverySegment) {
  const uint32_t payload = 4000, mss = 1000;
  const std::vector<uint8_t> f = Tcp(payload);
  std::memcpy(At(Buf(0)), f.data(), f.size());
  const uint32_t cmd = (3u << 5) | (1u << 8) | txd::kCmdEop | txd::kCmdRs;
  std::vector<std::vector<uint8_t>> want;
  for (int pass = 0; pass < 2; ++pass) {
    const uint64_t r = kTxRing + pass * 0x1000;
    TxQueue q(uint16_t(pass), state_->tx(pass));
    ASSERT_TRUE(q.Configure(r, 64).ok());
    ASSERT_TRUE(q.SetEnabled(true).ok());
    Qw(r) = 0;
    Qw(r + 8) = txd::ContextQw1(txd::kCtxCmdTso, payload, mss);
    Qw(r + 16) = Buf(0);
    Qw(r + 24) = txd::DataQw1(cmd | (pass ? kIl2tag1 : 0), txd::Offsets(14, 20, 20),
                              uint32_t(f.size())) |
                 uint64_t{0xABC} << 48;
    backend_.sent.clear();
    q.Process(2, dma_, backend_, 64);
    ASSERT_EQ(backend_.sent.size(), 4u);
    if (pass == 0) {
      for (const auto& s : backend_.sent) want.push_back(Tagged(s, 0xABC));
    } else {
      EXPECT_EQ(backend_.sent, want);
    }
  }
}

// A queue built over a caller's arena (TxQueue's `arena`) that an earlier
// queue left full of other bytes sends exactly what a queue with its own
// arena (allocated, never zeroed) sends: every arena byte handed to the
// backend is written first (tagged, padded and TSO-segmented frames alike).
TEST_F(TxVlanTest, ReusedArenaSendsWhatAFreshOneSends) {
  const uint32_t payload = 3000, mss = 1000;
  const std::vector<uint8_t> f = Tcp(payload);
  std::memcpy(At(Buf(0)), f.data(), f.size());
  auto s = Frame(20, 2);
  std::memcpy(At(Buf(1)), s.data(), s.size());
  const uint32_t tso = (3u << 5) | (1u << 8) | txd::kCmdEop | txd::kCmdRs;
  std::vector<uint8_t> arena(TxQueue::kArenaBytes, 0xA5);
  std::vector<std::vector<uint8_t>> sent[2];
  for (int pass = 0; pass < 2; ++pass) {
    const uint64_t r = kTxRing + pass * 0x1000;
    TxQueue q(uint16_t(pass), state_->tx(pass), {}, pass == 1 ? arena.data() : nullptr);
    ASSERT_TRUE(q.Configure(r, 64).ok());
    ASSERT_TRUE(q.SetEnabled(true).ok());
    Qw(r) = 0;
    Qw(r + 8) = txd::ContextQw1(txd::kCtxCmdTso, payload, mss);
    Qw(r + 16) = Buf(0);
    Qw(r + 24) = txd::DataQw1(tso | kIl2tag1, txd::Offsets(14, 20, 20), uint32_t(f.size())) |
                 uint64_t{0xABC} << 48;
    Qw(r + 32) = Buf(1);
    Qw(r + 40) = txd::DataQw1(kIl2tag1 | txd::kCmdEop | txd::kCmdRs, 0, 20) | uint64_t{5} << 48;
    backend_.sent.clear();
    q.Process(3, dma_, backend_, 64);
    sent[pass] = backend_.sent;
  }
  ASSERT_EQ(sent[0].size(), 4u);  // 3 segments and the padded short frame
  EXPECT_EQ(sent[1], sent[0]);
  EXPECT_EQ(sent[1][3].size(), 60u);
}

// The context descriptor's L2TAG2 (CMD.IL2TAG2, tag in qw0 47:32: DPDK's
// IAVF_TX_FLAGS_VLAN_TAG_LOC_L2TAG2 under VLAN_V2) is inserted the same way;
// both tags at once (ambiguous order) is an error.
TEST_F(TxVlanTest, ContextL2tag2) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  auto f = Frame(80, 4);
  std::memcpy(At(Buf(0)), f.data(), f.size());
  Qw(kTxRing) = uint64_t{0x0456} << 32;
  Qw(kTxRing + 8) = txd::ContextQw1(txd::kCtxCmdIl2tag2, 0, 0);
  TxDescTag(1, Buf(0), 80, txd::kCmdEop | txd::kCmdRs, 0, 0);
  Qw(kTxRing + 32) = uint64_t{0x0456} << 32;
  Qw(kTxRing + 40) = txd::ContextQw1(txd::kCtxCmdIl2tag2, 0, 0);
  TxDescTag(3, Buf(0), 80, kIl2tag1 | txd::kCmdEop | txd::kCmdRs, 0, 9);
  q.Process(4, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 1u);
  EXPECT_EQ(backend_.sent[0], Tagged(f, 0x456));
  EXPECT_EQ(q.stats().errors.load(), 1u);
  EXPECT_EQ(q.head(), 4u);
  EXPECT_EQ(Qw(kTxRing + 3 * 16 + 8) & 0xF, 0xFu);
}

// SetVlanInsertion (the device's negotiated locations and enable state): a
// request for a location not offered is malformed (error + drop, nothing
// sent untagged); the offered one still inserts.
TEST_F(TxVlanTest, InsertionOnlyAtTheOfferedLocation) {
  TxQueue q(0, state_->tx(0));
  ASSERT_TRUE(q.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  q.SetVlanInsertion(/*l2tag1=*/true, /*l2tag2=*/false);  // VLAN_V2
  auto f = Frame(80, 4);
  std::memcpy(At(Buf(0)), f.data(), f.size());
  Qw(kTxRing) = uint64_t{0x0456} << 32;
  Qw(kTxRing + 8) = txd::ContextQw1(txd::kCtxCmdIl2tag2, 0, 0);
  TxDescTag(1, Buf(0), 80, txd::kCmdEop | txd::kCmdRs, 0, 0);
  TxDescTag(2, Buf(0), 80, kIl2tag1 | txd::kCmdEop | txd::kCmdRs, 0, 9);
  q.Process(3, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 1u);
  EXPECT_EQ(backend_.sent[0], Tagged(f, 9));
  EXPECT_EQ(q.stats().errors.load(), 1u);
  EXPECT_EQ(q.malformed(), 1u);
  // Insertion turned off (DISABLE_VLAN_INSERTION_V2): IL2TAG1 refused too,
  // untagged packets unaffected.
  q.SetVlanInsertion(false, false);
  backend_.sent.clear();
  TxDescTag(3, Buf(0), 80, kIl2tag1 | txd::kCmdEop | txd::kCmdRs, 0, 9);
  TxDescTag(4, Buf(0), 80, txd::kCmdEop | txd::kCmdRs, 0, 0);
  q.Process(5, dma_, backend_, 64);
  ASSERT_EQ(backend_.sent.size(), 1u);
  EXPECT_EQ(backend_.sent[0], f);
  EXPECT_EQ(q.malformed(), 2u);
  EXPECT_EQ(q.head(), 5u);
}

// A stripped tag (Deliver's l2tag1) is reported in the EOF descriptor:
// L2TAG1 in qw0 31:16 next to the RSS hash, status L2TAG1P; none without.
TEST_F(QueuesTest, RxReportsTheStrippedTagInL2tag1) {
  RxQueue q(0, state_->rx(0));
  ASSERT_TRUE(q.Configure(kRxRing, 32, 1024, 9000).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  for (uint32_t i = 0; i < 32; ++i) PostRx(i, Buf(i));
  auto f = Frame(100, 9);
  // The fast path (one buffer) ...
  ASSERT_EQ(q.Deliver(f, 31, dma_, 0, true, 0xabcd1234, rxd::kL2tag1Present | 0x6064),
            RxQueue::DeliverResult::kDelivered);
  EXPECT_TRUE(RxQw1(0) & rxd::kL2tag1p);
  EXPECT_EQ(Qw(kRxRing), uint64_t{0xabcd1234} << 32 | uint64_t{0x6064} << 16);
  ASSERT_EQ(q.Deliver(f, 31, dma_), RxQueue::DeliverResult::kDelivered);
  EXPECT_FALSE(RxQw1(1) & rxd::kL2tag1p);
  EXPECT_EQ(Qw(kRxRing + 32), 0u);
  ASSERT_EQ(q.Deliver(f, 31, dma_, 0, false, 0, rxd::kL2tag1Present | 0x0fff),
            RxQueue::DeliverResult::kDelivered);  // ring translated: the fast path
  EXPECT_TRUE(RxQw1(2) & rxd::kL2tag1p);
  EXPECT_EQ(Qw(kRxRing + 2 * 32), uint64_t{0x0fff} << 16);
  // ... and a frame over three buffers: the tag with the EOF descriptor.
  auto big = Frame(3000, 4);
  ASSERT_EQ(q.Deliver(big, 31, dma_, 0, false, 0, rxd::kL2tag1Present | 100),
            RxQueue::DeliverResult::kDelivered);
  EXPECT_FALSE(RxQw1(3) & rxd::kL2tag1p);
  EXPECT_EQ(Qw(kRxRing + 3 * 32), 0u);
  EXPECT_TRUE(RxQw1(5) & rxd::kEof);
  EXPECT_TRUE(RxQw1(5) & rxd::kL2tag1p);
  EXPECT_EQ(Qw(kRxRing + 5 * 32), uint64_t{100} << 16);
}

// ------------------------------------------------------------ flex descriptors

// An independent reading of the 32-byte flex write-back, byte by byte as the
// drivers' structs lay it out (DPDK iavf_rxtx.h iavf_32b_rx_flex_desc_comms_ovs
// for RXDID 22, ice_32b_rx_flex_desc_nic for RXDID 2), little endian.
struct FlexWb {
  uint8_t rxdid, mir;
  uint16_t ptype;  // ptype_flex_flags0 [9:0]
  uint16_t flags0;  // ptype_flex_flags0 [15:10]
  uint16_t pkt_len, hdr_len;
  uint16_t status_error0, l2tag1;
  uint32_t bytes12;  // NIC: rss_hash; OVS: flow_id
  uint16_t status_error1;
  uint8_t flex_flags2, ts_low;
  uint16_t l2tag2_1st, l2tag2_2nd;
  uint32_t bytes24;  // NIC: flow_id; OVS: rss_hash
  uint32_t bytes28;
  uint32_t rss_hash, flow_id;
  bool dd() const { return status_error0 & 1; }
  bool eof() const { return status_error0 >> 1 & 1; }
  bool l3l4p() const { return status_error0 >> 3 & 1; }
  bool ipe() const { return status_error0 >> 4 & 1; }
  bool l4e() const { return status_error0 >> 5 & 1; }
  bool rxe() const { return status_error0 >> 10 & 1; }
  bool rss_valid() const { return status_error0 >> 12 & 1; }
  bool l2tag1p() const { return status_error0 >> 13 & 1; }
};

FlexWb DecodeFlex(const uint8_t* b) {
  auto u16 = [b](int o) { return uint16_t(b[o] | b[o + 1] << 8); };
  auto u32 = [b](int o) {
    return uint32_t(b[o]) | uint32_t(b[o + 1]) << 8 | uint32_t(b[o + 2]) << 16 |
           uint32_t(b[o + 3]) << 24;
  };
  FlexWb w{};
  w.rxdid = b[0] & 0x3F;
  w.mir = b[1];
  w.ptype = u16(2) & 0x3FF;
  w.flags0 = u16(2) >> 10;
  w.pkt_len = u16(4) & 0x3FFF;
  w.hdr_len = u16(6);
  w.status_error0 = u16(8);
  w.l2tag1 = u16(10);
  w.bytes12 = u32(12);
  w.status_error1 = u16(16);
  w.flex_flags2 = b[18];
  w.ts_low = b[19];
  w.l2tag2_1st = u16(20);
  w.l2tag2_2nd = u16(22);
  w.bytes24 = u32(24);
  w.bytes28 = u32(28);
  if (w.rxdid == 22) {
    w.flow_id = w.bytes12;
    w.rss_hash = w.bytes24;
  } else {
    w.rss_hash = w.bytes12;
    w.flow_id = w.bytes24;
  }
  return w;
}

// Headers for ptype classification: Ethernet + IPv4/IPv6 + L4 protocol.
std::vector<uint8_t> L3Frame(bool v6, uint8_t proto, size_t len = 128, bool frag = false) {
  std::vector<uint8_t> f(len, 0x5a);
  std::memset(f.data(), 0, 14);
  f[0] = 0x02;
  f[6] = 0x02;
  f[11] = 1;
  if (v6) {
    f[12] = 0x86;
    f[13] = 0xdd;
    f[14] = 0x60;
    f[14 + 6] = frag ? 44 : proto;
  } else {
    f[12] = 0x08;
    f[13] = 0x00;
    f[14] = 0x45;
    f[14 + 6] = frag ? 0x20 : 0;  // MF
    f[14 + 7] = 0;
    f[14 + 9] = proto;
  }
  return f;
}

class RxFlexTest : public QueuesTest, public ::testing::WithParamInterface<uint8_t> {
 protected:
  const uint8_t* Desc(uint32_t idx) { return At(kRxRing + idx * 32); }
};

TEST_P(RxFlexTest, WritesTheFlexLayoutByteForByte) {
  const uint8_t rxdid = GetParam();
  RxQueue q(0, state_->rx(0));
  q.SetDescFormat(RxDescFormatOf(rxdid));
  ASSERT_EQ(q.desc_format(), rxdid == 2 ? RxDescFormat::kFlexNic : RxDescFormat::kFlexOvs);
  ASSERT_TRUE(q.Configure(kRxRing, 64, 1024, 9000).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  for (uint32_t i = 0; i < 64; ++i) PostRx(i, Buf(i));
  struct Case {
    std::vector<uint8_t> frame;
    uint16_t ptype;
    uint64_t csum;
    bool hash;
    uint32_t tag;  // rxd::kL2tag1Present | TCI, or 0
  };
  const std::vector<Case> cases = {
      {L3Frame(false, 6), 26, rxd::kL3L4P, true, 0},
      {L3Frame(false, 17), 24, rxd::kL3L4P | rxd::kErrL4e, true, rxd::kL2tag1Present | 0x2064},
      {L3Frame(false, 47), 23, rxd::kL3L4P | rxd::kErrIpe, false, 0},
      {L3Frame(false, 1), 28, 0, true, rxd::kL2tag1Present | 7},
      {L3Frame(false, 6, 128, /*frag=*/true), 22, 0, true, 0},
      {L3Frame(true, 6), 92, rxd::kL3L4P, true, rxd::kL2tag1Present | 0x0fff},
      {L3Frame(true, 17), 90, rxd::kL3L4P, false, 0},
      {L3Frame(true, 58), 94, 0, true, 0},
      {L3Frame(true, 59), 89, 0, true, 0},
      {L3Frame(true, 17, 128, /*frag=*/true), 88, 0, true, 0},
      {Frame(60, 3), 1, 0, false, 0},
  };
  uint32_t idx = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const uint32_t hash = 0x9e3779b9u * uint32_t(i + 1);
    std::memset(At(kRxRing + idx * 32 + 16), 0xEE, 16);  // stale bytes must be overwritten
    ASSERT_EQ(q.Deliver(c.frame, 63, dma_, c.csum, c.hash, hash, c.tag),
              RxQueue::DeliverResult::kDelivered);
    const FlexWb w = DecodeFlex(Desc(idx));
    SCOPED_TRACE(testing::Message() << "case " << i);
    EXPECT_EQ(w.rxdid, rxdid);
    EXPECT_EQ(w.mir, 0);
    EXPECT_EQ(w.ptype, c.ptype);
    EXPECT_EQ(w.flags0, 0);
    EXPECT_EQ(w.pkt_len, c.frame.size());
    EXPECT_EQ(w.hdr_len, 0);
    EXPECT_TRUE(w.dd());
    EXPECT_TRUE(w.eof());
    EXPECT_EQ(w.l3l4p(), (c.csum & rxd::kL3L4P) != 0);
    EXPECT_EQ(w.ipe(), (c.csum & rxd::kErrIpe) != 0);
    EXPECT_EQ(w.l4e(), (c.csum & rxd::kErrL4e) != 0);
    EXPECT_FALSE(w.rxe());
    EXPECT_EQ(w.rss_valid(), c.hash);
    EXPECT_EQ(w.rss_hash, c.hash ? hash : 0u);
    EXPECT_EQ(w.flow_id, 0xFFFFFFFFu) << "no flow director match";
    EXPECT_EQ(w.l2tag1p(), c.tag != 0);
    EXPECT_EQ(w.l2tag1, c.tag & 0xFFFF);
    // Only the bits above are set in status_error0.
    EXPECT_EQ(w.status_error0 & ~uint16_t(0x303B | 1 << 12 | 1 << 13), 0) << w.status_error0;
    EXPECT_EQ(w.status_error1, 0);
    EXPECT_EQ(w.flex_flags2, 0);
    EXPECT_EQ(w.ts_low, 0);
    EXPECT_EQ(w.l2tag2_1st, 0);
    EXPECT_EQ(w.l2tag2_2nd, 0);
    EXPECT_EQ(w.bytes28, 0u);
    EXPECT_EQ(0, std::memcmp(At(Buf(idx)), c.frame.data(), c.frame.size()));
    ++idx;
  }
  // A frame over three buffers: ptype, length and hash in each, EOF, the
  // checksum status and the tag in the last only.
  auto big = L3Frame(false, 17, 3000);
  ASSERT_EQ(q.Deliver(big, 63, dma_, rxd::kL3L4P, true, 0x12345678, rxd::kL2tag1Present | 100),
            RxQueue::DeliverResult::kDelivered);
  for (uint32_t k = 0; k < 3; ++k) {
    const FlexWb w = DecodeFlex(Desc(idx + k));
    EXPECT_EQ(w.rxdid, rxdid);
    EXPECT_EQ(w.ptype, 24);
    EXPECT_EQ(w.pkt_len, k < 2 ? 1024u : 3000u - 2048);
    EXPECT_TRUE(w.dd());
    EXPECT_EQ(w.eof(), k == 2);
    EXPECT_EQ(w.l3l4p(), k == 2);
    EXPECT_EQ(w.l2tag1p(), k == 2);
    EXPECT_EQ(w.l2tag1, k == 2 ? 100 : 0);
    EXPECT_TRUE(w.rss_valid());
    EXPECT_EQ(w.rss_hash, 0x12345678u);
    EXPECT_EQ(w.flow_id, 0xFFFFFFFFu);
  }
  idx += 3;
  // A buffer outside the map: the flex error descriptor (DD, EOF, RXE, IPE,
  // L4E, length 1), not skipped.
  PostRx(idx, 0xbad00000);
  ASSERT_EQ(q.Deliver(L3Frame(false, 6), 63, dma_, rxd::kL3L4P, true, 1, 0),
            RxQueue::DeliverResult::kDropped);
  const FlexWb e = DecodeFlex(Desc(idx));
  EXPECT_EQ(e.rxdid, rxdid);
  EXPECT_TRUE(e.dd() && e.eof() && e.rxe() && e.ipe() && e.l4e());
  EXPECT_FALSE(e.l3l4p());
  EXPECT_FALSE(e.rss_valid());
  EXPECT_EQ(e.pkt_len, 1u);
  EXPECT_EQ(e.ptype, 0);
  EXPECT_EQ(e.flow_id, 0xFFFFFFFFu);
  EXPECT_EQ(q.head(), idx + 1);
}

TEST_P(RxFlexTest, RecoveryClosesATornFrameWithAFlexErrorDescriptor) {
  const uint8_t rxdid = GetParam();
  RxQueue q(0, state_->rx(0));
  q.SetDescFormat(RxDescFormatOf(rxdid));
  ASSERT_TRUE(q.Configure(kRxRing, 32, 1024, 9000).ok());
  ASSERT_TRUE(q.SetEnabled(true).ok());
  for (uint32_t i = 0; i < 32; ++i) PostRx(i, Buf(i));
  ASSERT_EQ(q.Deliver(Frame(100, 1), 31, dma_), RxQueue::DeliverResult::kDelivered);
  // Killed in a 3-buffer frame: intent 4, descriptor 1 written, no EOF.
  ASSERT_EQ(q.Deliver(Frame(3000, 1), 31, dma_), RxQueue::DeliverResult::kDelivered);
  HotQueue* hot = state_->rx(0);
  hot->head.store(1);
  hot->intent.store(4);
  PostRx(2, Buf(2));
  PostRx(3, Buf(3));
  RxQueue successor(0, hot);
  successor.SetDescFormat(RxDescFormatOf(rxdid));
  successor.Recover(dma_);
  const FlexWb w = DecodeFlex(Desc(2));
  EXPECT_EQ(w.rxdid, rxdid);
  EXPECT_TRUE(w.dd() && w.eof() && w.rxe() && w.ipe() && w.l4e());
  EXPECT_EQ(w.pkt_len, 1u);
  EXPECT_EQ(hot->head.load(), 3u);
  EXPECT_EQ(RxQw1(3), 0u) << "posted buffer 3 untouched";
}

INSTANTIATE_TEST_SUITE_P(Rxdids, RxFlexTest, ::testing::Values(uint8_t{2}, uint8_t{22}));

// Tunnelled frames through the data path's checksum check into the legacy
// descriptor and the flex ones (RXDID 2 and DPDK's default 22): the ice
// tunnel ptype and exactly the error bit of the checksum that was broken.
// The ptypes are copied from Linux drivers/net/ethernet/intel/ice/
// ice_lan_tx_rx.h (ICE_PTYPES, the same rows as iavf's libie table):
//   IPv4 -> GRE/NAT -> IPv4/UDP 46, /TCP 48; -> IPv6/UDP 53, /TCP 55
//   IPv4 -> GRE/NAT -> MAC -> IPv4/UDP 61, /TCP 63; -> IPv6/UDP 68, /TCP 70
//   IPv4 -> GRE/NAT -> MAC/VLAN -> IPv4/UDP 76
//   IPv6 -> GRE/NAT -> IPv4/UDP 112; -> IPv6/UDP 119
//   IPv6 -> GRE/NAT -> MAC -> IPv4/UDP 127, /TCP 129; -> IPv6/UDP 134, /TCP 136
//   IPv6 -> GRE/NAT -> MAC/VLAN -> IPv4/UDP 142
uint16_t IcePtypeOf(const testutil::TunSpec& s) {
  const bool udp = s.inner_proto == 17;
  if (s.gre_ip) {
    if (!s.outer_v6) return s.inner_v6 ? (udp ? 53 : 55) : (udp ? 46 : 48);
    return s.inner_v6 ? 119 : 112;  // (the specs: UDP only)
  }
  if (s.inner_vlan) return s.outer_v6 ? 142 : 76;  // (the specs: IPv4/UDP only)
  if (!s.outer_v6) return s.inner_v6 ? (udp ? 68 : 70) : (udp ? 61 : 63);
  return s.inner_v6 ? (udp ? 134 : 136) : (udp ? 127 : 129);
}

class RxTunnelTest : public QueuesTest, public ::testing::WithParamInterface<uint8_t> {
 protected:
  const uint8_t* Desc(uint32_t idx) { return At(kRxRing + idx * 32); }
};

TEST_P(RxTunnelTest, ReportsTheTunnelPtypeAndEachChecksumBit) {
  const uint8_t rxdid = GetParam();
  enum Break { kNone, kOuterIp, kOuterUdp, kInnerIp, kInnerL4 };
  int checked = 0;
  for (const testutil::TunSpec& s : testutil::TunnelSpecs()) {
    for (Break b : {kNone, kOuterIp, kOuterUdp, kInnerIp, kInnerL4}) {
      if ((b == kOuterIp && s.outer_v6) || (b == kOuterUdp && s.tun == testutil::Tun::kGre) ||
          (b == kInnerIp && s.inner_v6)) {
        continue;
      }
      SCOPED_TRACE(testing::Message() << testutil::Describe(s) << " break " << b);
      testutil::TunFrame t = testutil::BuildTunnel(s);
      switch (b) {
        case kNone: break;
        case kOuterIp: t.f[t.outer_l3 + 8] ^= 1; break;
        case kOuterUdp: t.f[t.outer_l4 + 7] ^= 0x40; break;
        case kInnerIp:
          t.f[t.inner_l3 + 8] ^= 1;
          testutil::FixOuterUdp(t, s);
          break;
        case kInnerL4:
          t.f.back() ^= 0x21;
          testutil::FixOuterUdp(t, s);
          break;
      }
      RxQueue q(0, state_->rx(0));
      q.SetDescFormat(RxDescFormatOf(rxdid));
      ASSERT_TRUE(q.Configure(kRxRing, 64, 2048, 9000).ok());
      ASSERT_TRUE(q.SetEnabled(true).ok());
      for (uint32_t i = 0; i < 64; ++i) PostRx(i, Buf(i));
      const uint64_t csum = rxd::FromRxCsum(CheckRxChecksums(t.f));
      ASSERT_EQ(q.Deliver(t.f, 63, dma_, csum, false, 0, 0), RxQueue::DeliverResult::kDelivered);
      ASSERT_EQ(0, std::memcmp(At(Buf(0)), t.f.data(), t.f.size()));
      if (rxdid == 1) {
        const uint64_t qw1 = RxQw1(0);
        EXPECT_EQ(rxd::Ptype(qw1), IcePtypeOf(s));
        EXPECT_EQ(rxd::Len(qw1), t.f.size());
        EXPECT_TRUE(qw1 & rxd::kL3L4P);
        // Error field (qw1 bits 26:19): IPE bit 3, L4E bit 4, EIPE bit 5;
        // the outer UDP result has no legacy bit.
        EXPECT_EQ(qw1 >> 19 & 0xFF,
                  (b == kInnerIp ? 1u << 3 : 0u) | (b == kInnerL4 ? 1u << 4 : 0u) |
                      (b == kOuterIp ? 1u << 5 : 0u));
        EXPECT_EQ(qw1 >> 52, 0u) << "header length and SPH stay 0";
      } else {
        const FlexWb w = DecodeFlex(Desc(0));
        EXPECT_EQ(w.rxdid, rxdid);
        EXPECT_EQ(w.ptype, IcePtypeOf(s));
        EXPECT_EQ(w.pkt_len, t.f.size());
        EXPECT_TRUE(w.l3l4p());
        // status_error0 bits 4..7: XSUM_IPE, XSUM_L4E, XSUM_EIPE, XSUM_EUDPE.
        EXPECT_EQ(w.status_error0 >> 4 & 0xF,
                  (b == kInnerIp ? 1u : 0u) | (b == kInnerL4 ? 2u : 0u) |
                      (b == kOuterIp ? 4u : 0u) | (b == kOuterUdp ? 8u : 0u));
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 88) << "every spec and break was delivered";
}

// A tunnel whose inner headers are cut short (the outer lengths end inside
// them): the outer packet's ptype, never a read past the frame.
TEST_P(RxTunnelTest, TruncatedInnerHeadersGetTheOuterPtype) {
  const uint8_t rxdid = GetParam();
  for (const testutil::TunSpec& s : testutil::TunnelSpecs()) {
    SCOPED_TRACE(testutil::Describe(s));
    const testutil::TunFrame good = testutil::BuildTunnel(s);
    const uint16_t outer_ptype =
        s.tun == testutil::Tun::kGre ? (s.outer_v6 ? 89 : 23) : (s.outer_v6 ? 90 : 24);
    for (size_t end : {good.outer_l4 + 8, good.outer_l4 + 15, good.inner_l3 - 1,
                       good.inner_l3 + 19}) {
      std::vector<uint8_t> f(good.f.begin(), good.f.begin() + end);
      EXPECT_EQ(ClassifyPtype(f), outer_ptype) << end;
      RxQueue q(0, state_->rx(0));
      q.SetDescFormat(RxDescFormatOf(rxdid));
      ASSERT_TRUE(q.Configure(kRxRing, 64, 2048, 9000).ok());
      ASSERT_TRUE(q.SetEnabled(true).ok());
      for (uint32_t i = 0; i < 64; ++i) PostRx(i, Buf(i));
      const uint64_t csum = rxd::FromRxCsum(CheckRxChecksums(f));
      EXPECT_EQ(csum & (rxd::kErrEipe | rxd::kCsumEudpe | rxd::kErrL4e), 0u) << end;
      ASSERT_EQ(q.Deliver(f, 63, dma_, csum, false, 0, 0), RxQueue::DeliverResult::kDelivered);
      const uint32_t ptype = rxdid == 1 ? rxd::Ptype(RxQw1(0)) : DecodeFlex(Desc(0)).ptype;
      EXPECT_EQ(ptype, outer_ptype) << end;
    }
    for (size_t end = 0; end <= good.f.size(); ++end) {
      const uint8_t p = ClassifyPtype(FrameView(good.f.data(), end));
      if (end < good.f.size()) {
        EXPECT_TRUE(p == outer_ptype || p == 1) << end << " " << int(p);
      } else {
        EXPECT_EQ(p, IcePtypeOf(s));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Rxdids, RxTunnelTest, ::testing::Values(uint8_t{1}, uint8_t{2},
                                                                  uint8_t{22}));

TEST_F(QueuesTest, RxdidsWithoutAFlexWriterGetTheLegacyFormat) {
  EXPECT_EQ(RxDescFormatOf(1), RxDescFormat::kLegacy);
  EXPECT_EQ(RxDescFormatOf(0), RxDescFormat::kLegacy);
  EXPECT_EQ(RxDescFormatOf(16), RxDescFormat::kLegacy);
  EXPECT_EQ(RxDescFormatOf(2), RxDescFormat::kFlexNic);
  EXPECT_EQ(RxDescFormatOf(22), RxDescFormat::kFlexOvs);
}

}  // namespace
}  // namespace emud::dataplane

namespace emud::dataplane {
namespace {

// Buffers are translated through a cached window: every address and length
// is still checked against it, a read-only window never serves an RX write,
// and an unmapped window is forgotten (OnDmaUnmap).
TEST_F(QueuesTest, CachedBufferWindowKeepsEveryCheck) {
  // A second, read-only window right after guest RAM.
  std::vector<uint8_t> ro(0x10000);
  const uint64_t kRo = kBase + kMemSize;
  dma_.AddWindow(kRo, ro.size(), ro.data(), /*writable=*/false);
  TxQueue tx(0, state_->tx(0));
  ASSERT_TRUE(tx.Configure(kTxRing, 64).ok());
  ASSERT_TRUE(tx.SetEnabled(true).ok());
  TxDesc(0, Buf(0), 100, txd::kCmdEop);                          // caches guest RAM
  TxDesc(1, kBase + kMemSize - 50, 100, txd::kCmdEop);          // crosses its end
  TxDesc(2, kBase + kMemSize - 100, 100, txd::kCmdEop);         // ends exactly there
  TxDesc(3, kRo + 16, 100, txd::kCmdEop);                       // the read-only window
  TxDesc(4, 0x10, 100, txd::kCmdEop);                           // nothing mapped
  TxDesc(5, Buf(1), 100, txd::kCmdEop | txd::kCmdRs);
  tx.Process(6, dma_, backend_, 64);
  EXPECT_EQ(backend_.sent.size(), 4u);  // 0, 2, 3, 5
  EXPECT_EQ(tx.stats().drops.load(), 2u);
  EXPECT_EQ(tx.malformed(), 2u);

  RxQueue rx(0, state_->rx(0));
  ASSERT_TRUE(rx.Configure(kRxRing, 64, 2048, 1518).ok());
  ASSERT_TRUE(rx.SetEnabled(true).ok());
  PostRx(0, Buf(2));                 // caches guest RAM for writing
  PostRx(1, kRo + 64);               // read-only: refused
  PostRx(2, kBase + kMemSize - 30);  // crosses the end of guest RAM
  PostRx(3, Buf(3));
  auto f = Frame(100, 3);
  for (uint32_t i = 0; i < 4; ++i) rx.Deliver(f, 4, dma_);
  EXPECT_EQ(rxd::Len(RxQw1(0)), 100u);
  EXPECT_EQ(RxQw1(1), rxd::kErrorDescQw1);
  EXPECT_EQ(RxQw1(2), rxd::kErrorDescQw1);
  EXPECT_EQ(rxd::Len(RxQw1(3)), 100u);
  EXPECT_EQ(std::memcmp(At(Buf(3)), f.data(), f.size()), 0);
  EXPECT_TRUE(std::all_of(ro.begin(), ro.end(), [](uint8_t b) { return b == 0; }));

  // The buffers' window unmapped (the rings live in it too): nothing is
  // read or written through the cached pointer any more.
  tx.OnDmaUnmap(kBase, kMemSize);
  rx.OnDmaUnmap(kBase, kMemSize);
  dma_.RemoveWindow(kBase);
  TxDesc(6, Buf(4), 100, txd::kCmdEop);
  const size_t sent = backend_.sent.size();
  tx.Process(7, dma_, backend_, 64);
  EXPECT_EQ(backend_.sent.size(), sent);
  EXPECT_EQ(rx.Deliver(f, 8, dma_), RxQueue::DeliverResult::kDropped);
}

}  // namespace
}  // namespace emud::dataplane
