// Per-command tests of the vfio-user server, valid and invalid, over a real
// UNIX socket with real memfds and eventfds.
#include "vfio_user/session.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "vfio_user/client.h"
#include "vfio_user/test_harness.h"

namespace emud::vfio_user {
namespace {

using testing::DrainEventfd;
using testing::MakeEventfd;
using testing::MakeMemfd;
using testing::ServerHarness;

constexpr uint32_t kBar = kBar0;

template <typename T>
std::vector<uint8_t> Bytes(const T& v) {
  std::vector<uint8_t> out;
  AppendStruct(&out, v);
  return out;
}

// errno of a reply (0 for success).
int ReplyErrno(const absl::StatusOr<Message>& m) {
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return -1;
  EXPECT_EQ(m->hdr.flags & kFlagTypeMask, kFlagTypeReply);
  return (m->hdr.flags & kFlagError) ? static_cast<int>(m->hdr.error) : 0;
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    harness_ = std::make_unique<ServerHarness>(Options());
    client_ = harness_->Connect();
    ASSERT_NE(client_, nullptr);
  }
  virtual SessionOptions Options() { return SessionOptions{}; }

  // Enables bus mastering and memory decoding in config space.
  void EnableDevice() {
    uint16_t cmd = 0x6;
    ASSERT_TRUE(client_->RegionWrite(kConfigRegion, 4, absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&cmd), 2)).ok());
  }

  std::unique_ptr<ServerHarness> harness_;
  std::unique_ptr<Client> client_;
};

// ---------------------------------------------------------------- VERSION

TEST(VersionTest, NegotiatesZeroZeroWithQemuCapsAndFitsTheRequest) {
  ServerHarness h;
  auto c = h.Connect(false);
  // Exactly what QEMU 10.1 sends.
  std::string js =
      R"({"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,)"
      R"("max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}})";
  VersionPayload v{0, 0, js};
  auto req = EncodeVersion(v);
  auto m = c->Request(kCmdVersion, req);
  ASSERT_EQ(ReplyErrno(m), 0);
  EXPECT_LE(m->payload.size(), req.size());  // QEMU's receive buffer is its request
  auto rv = DecodeVersion(m->payload);
  ASSERT_TRUE(rv.ok());
  EXPECT_EQ(rv->major, 0);
  EXPECT_EQ(rv->minor, 0);
  ASSERT_TRUE(rv->json.has_value());
  auto caps = ParseCapabilities(*rv->json);
  ASSERT_TRUE(caps.ok());
  EXPECT_LE(caps->max_msg_fds, 16u);
  EXPECT_LE(caps->max_data_xfer_size, 64u << 20);
  EXPECT_LE(caps->max_dma_maps, 65535u);
  EXPECT_TRUE(caps->write_multiple);
  EXPECT_EQ(caps->pgsizes & 0xfff, 0u);
}

// A client that connects and never sends VERSION is dropped after the
// handshake timeout and the next client is served; one that completed VERSION
// may stay silent as long as it likes (tests/hostile: client-never-speaks).
TEST(VersionTest, SilentClientDroppedAfterHandshakeTimeout) {
  SessionOptions o;
  o.handshake_timeout = absl::Milliseconds(100);
  ServerHarness h(o);
  auto silent = h.Connect(false);
  ASSERT_NE(silent, nullptr);
  auto next = Client::Connect(h.path());  // waits in the backlog
  ASSERT_TRUE(next.ok());
  (*next)->set_timeout(absl::Seconds(10));
  ASSERT_TRUE((*next)->Version().ok());  // served once the silent one is gone
  pollfd p{silent->fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  char b;
  EXPECT_EQ(::recv(silent->fd(), &b, 1, 0), 0) << "the silent client was not dropped";
  absl::SleepFor(absl::Milliseconds(300));  // three timeouts' worth of silence after VERSION
  EXPECT_TRUE((*next)->GetInfo().ok());
  EXPECT_EQ(h.session().stats().handshake_timeouts, 1u);
}

TEST(VersionTest, AnyMinorGetsZero) {
  ServerHarness h;
  auto c = h.Connect(false);
  Capabilities caps;
  auto v = c->Version(caps, 7);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->minor, 0);
}

TEST(VersionTest, NoJsonGetsNoJsonAndTinyJsonStillFits) {
  ServerHarness h;
  {
    auto c = h.Connect(false);
    auto m = c->Request(kCmdVersion, EncodeVersion({0, 0, std::nullopt}));
    ASSERT_EQ(ReplyErrno(m), 0);
    EXPECT_EQ(m->payload.size(), 4u);
  }
  {
    // QEMU-shaped (it sends migration.max_bitmap_size) with a tiny request:
    // the reply still fits the request, QEMU's receive buffer.
    auto c = h.Connect(false);
    auto req = EncodeVersion({0, 0, std::string(R"({"capabilities":{"migration":{"max_bitmap_size":1}}})")});
    auto m = c->Request(kCmdVersion, req);
    ASSERT_EQ(ReplyErrno(m), 0);
    EXPECT_LE(m->payload.size(), req.size());
    auto rv = DecodeVersion(m->payload);
    ASSERT_TRUE(rv.ok());
    ASSERT_TRUE(rv->json.has_value());
    EXPECT_TRUE(ParseCapabilities(*rv->json).ok());
  }
  {
    // Any other client reads msg_size bytes (rust-vmm, SPDK, libvfio-user):
    // it gets our real limits, never an empty object meaning spec defaults
    // looser than what the session enforces.
    auto c = h.Connect(false);
    auto req = EncodeVersion({0, 0, std::string("{}")});
    auto m = c->Request(kCmdVersion, req, {}, 0, /*max_reply=*/4096);
    ASSERT_EQ(ReplyErrno(m), 0);
    auto rv = DecodeVersion(m->payload);
    ASSERT_TRUE(rv.ok());
    ASSERT_TRUE(rv->json.has_value());
    auto caps = ParseCapabilities(*rv->json);
    ASSERT_TRUE(caps.ok());
    EXPECT_NE(rv->json->find("max_data_xfer_size"), std::string::npos) << *rv->json;
    EXPECT_NE(rv->json->find("max_dma_maps"), std::string::npos) << *rv->json;
  }
}

// serde writes an absent Option as null (rust-vmm's protocol types): null is
// "not given", never an error.
TEST(VersionTest, NullCapabilityValuesAreAbsent) {
  ServerHarness h;
  for (const char* js : {R"({"capabilities":null})",
                         R"({"capabilities":{"max_msg_fds":null,"max_data_xfer_size":null,)"
                         R"("migration":{"pgsize":4096,"max_bitmap_size":null},"twin_socket":null,)"
                         R"("write_multiple":null}})"}) {
    auto c = h.Connect(false);
    auto m = c->Request(kCmdVersion, EncodeVersion({0, 0, std::string(js)}), {}, 0, 4096);
    EXPECT_EQ(ReplyErrno(m), 0) << js;
  }
  auto caps = ParseCapabilities(R"({"capabilities":{"max_msg_fds":null,"migration":{"max_bitmap_size":null}}})");
  ASSERT_TRUE(caps.ok());
  EXPECT_FALSE(caps->migration_max_bitmap_size.has_value());
  EXPECT_EQ(caps->max_msg_fds, Capabilities().max_msg_fds);
  EXPECT_FALSE(ParseCapabilities(R"({"capabilities":{"max_msg_fds":"7"}})").ok());
}

TEST(VersionTest, BadVersionsRefused) {
  ServerHarness h;
  auto c = h.Connect(false);
  // Commands before VERSION.
  EXPECT_EQ(ReplyErrno(c->Request(kCmdDeviceGetInfo, Bytes(DeviceInfo{}))), EINVAL);
  // Wrong major: EINVAL (libvfio-user test_negotiate.py: test_invalid_major).
  EXPECT_EQ(ReplyErrno(c->Request(kCmdVersion, EncodeVersion({1, 0, std::string("{}")}))), EINVAL);
  EXPECT_EQ(ReplyErrno(c->Request(kCmdVersion, EncodeVersion({999, 0, std::nullopt}))), EINVAL);
  // Short payload.
  std::vector<uint8_t> shortp = {0, 0};
  EXPECT_EQ(ReplyErrno(c->Request(kCmdVersion, shortp)), EINVAL);
  // JSON not NUL-terminated.
  std::vector<uint8_t> nonul = {0, 0, 0, 0, '{', '}'};
  EXPECT_EQ(ReplyErrno(c->Request(kCmdVersion, nonul)), EINVAL);
  // Not JSON / not an object / wrong types.
  for (const char* js : {"{", "[1]", "1", R"({"capabilities":3})", R"({"capabilities":{"max_msg_fds":"x"}})",
                         R"({"capabilities":{"max_msg_fds":-1}})", R"({"capabilities":{"write_multiple":1}})",
                         R"({"capabilities":{"migration":[]}})", R"({"capabilities":{"max_msg_fds":4096}})"}) {
    EXPECT_EQ(ReplyErrno(c->Request(kCmdVersion, EncodeVersion({0, 0, std::string(js)}))), EINVAL) << js;
  }
  // VERSION carrying an fd.
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  EXPECT_EQ(ReplyErrno(c->Request(kCmdVersion, EncodeVersion({0, 0, std::string("{}")}), absl::MakeConstSpan(&fd, 1))),
            EINVAL);
  // A good one, then a second one.
  ASSERT_TRUE(c->Version().ok());
  EXPECT_EQ(ReplyErrno(c->Request(kCmdVersion, EncodeVersion({0, 0, std::string("{}")}))), EINVAL);
}

// ---------------------------------------------------------------- DMA

TEST_F(SessionTest, DmaMapUnmapRemap) {
  UniqueFd mem = MakeMemfd(1 << 20);
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x100000, 0x10000).ok());
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0x10000, 0x200000, 0x10000).ok());
  // Overlaps of every shape.
  for (auto [iova, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0x100000, 0x10000}, {0xf8000, 0x10000}, {0x108000, 0x1000}, {0x10f000, 0x2000}, {0x0, 0x300000}}) {
    EXPECT_EQ(StatusToErrno(client_->DmaMap(mem.get(), 0, iova, size)), EEXIST) << std::hex << iova;
  }
  // Adjacent is fine.
  EXPECT_TRUE(client_->DmaMap(mem.get(), 0x20000, 0x110000, 0x1000).ok());
  EXPECT_EQ(StatusToErrno(client_->DmaUnmap(0x300000, 0x1000)), ENOENT);
  EXPECT_EQ(StatusToErrno(client_->DmaUnmap(0x100000, 0x8000)), ENOENT);  // must match exactly
  ASSERT_TRUE(client_->DmaUnmap(0x100000, 0x10000).ok());
  EXPECT_EQ(StatusToErrno(client_->DmaUnmap(0x100000, 0x10000)), ENOENT);
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x100000, 0x10000).ok());  // remap
  ASSERT_TRUE(client_->DmaUnmapAll().ok());
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x200000, 0x10000).ok());  // all gone
  EXPECT_EQ(harness_->device().unmaps_seen(), 4u);
}

TEST_F(SessionTest, DmaMapInvalid) {
  UniqueFd mem = MakeMemfd(1 << 16);
  EXPECT_EQ(StatusToErrno(client_->DmaMap(mem.get(), 0, 0x1000, 0)), EINVAL);                       // zero size
  EXPECT_EQ(StatusToErrno(client_->DmaMap(mem.get(), 0, ~uint64_t{0} - 0xfff, 0x2000)), EINVAL);    // wraps
  EXPECT_EQ(StatusToErrno(client_->DmaMap(mem.get(), 0, 0x1000, 0x1000, 0x4)), EINVAL);             // unknown flag
  EXPECT_EQ(StatusToErrno(client_->DmaMap(mem.get(), 0, 0x1000, 0x1000, 0)), EINVAL);               // no access
  EXPECT_EQ(StatusToErrno(client_->DmaMap(-1, 0x1000, 0x1000, 0x1000)), EINVAL);                    // offset w/o fd
  EXPECT_NE(StatusToErrno(client_->DmaMap(mem.get(), ~uint64_t{0} - 10, 0x1000, 0x1000)), 0);       // fd offset wraps
  EXPECT_EQ(StatusToErrno(client_->DmaMap(mem.get(), 0, 0x100000, 1 << 17)), EINVAL);               // beyond the fd
  EXPECT_EQ(StatusToErrno(client_->DmaMap(mem.get(), 0x10000, 0x100000, 0x1000)), EINVAL);          // offset at EOF
  // Two fds.
  vfio_user::DmaMap req;
  req.flags = kDmaFlagRead;
  req.addr = 0x1000;
  req.size = 0x1000;
  int fds[2] = {mem.get(), mem.get()};
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDmaMap, Bytes(req), fds)), EINVAL);
  // argsz too small / payload short.
  req.argsz = 16;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDmaMap, Bytes(req))), EINVAL);
  std::vector<uint8_t> shortp(20, 0);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDmaMap, shortp)), EINVAL);
  // Unmap: bad flags, all with range, dirty bitmap, short payload.
  EXPECT_EQ(StatusToErrno(client_->DmaUnmap(0, 0, 0x4)), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->DmaUnmap(0x1000, 0x1000, kDmaUnmapFlagAll)), EINVAL);
  // libvfio-user test_dma_unmap.py: dirty bitmap without tracking, ALL with
  // another flag, and an argsz above the transfer limit are EINVAL.
  EXPECT_EQ(StatusToErrno(client_->DmaUnmap(0, 0, kDmaUnmapFlagDirtyBitmap)), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->DmaUnmap(0, 0, kDmaUnmapFlagAll | kDmaUnmapFlagDirtyBitmap)), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->DmaUnmap(0x1000, 0)), EINVAL);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDmaUnmap, shortp)), EINVAL);
  DmaUnmap un;
  un.argsz = (1 << 20) + 8;
  un.addr = 0x1000;
  un.size = 0x1000;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDmaUnmap, Bytes(un))), EINVAL);
}

// SPDK's client sends the region's fd with every DMA_UNMAP: accepted (and
// closed), and the window is really gone (a new map of it succeeds).
TEST_F(SessionTest, DmaUnmapCarryingTheRegionFd) {
  UniqueFd mem = MakeMemfd(1 << 16);
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x100000, 0x10000).ok());
  int before = testing::CountOpenFds();
  DmaUnmap un;
  un.addr = 0x100000;
  un.size = 0x10000;
  const int fd = mem.get();
  auto m = client_->Request(kCmdDmaUnmap, Bytes(un), absl::MakeConstSpan(&fd, 1));
  ASSERT_EQ(ReplyErrno(m), 0);
  EXPECT_TRUE(client_->DmaMap(mem.get(), 0, 0x100000, 0x10000).ok()) << "the window was unmapped";
  ASSERT_TRUE(client_->DmaUnmap(0x100000, 0x10000).ok());
  EXPECT_EQ(testing::CountOpenFds(), before) << "the fd that came with the unmap was closed";
  int two[2] = {fd, fd};
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDmaUnmap, Bytes(un), absl::MakeConstSpan(two, 2))), EINVAL);
}

TEST_F(SessionTest, DmaUnmapReplyIsTheRequestsEntry) {
  UniqueFd mem = MakeMemfd(1 << 16);
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x100000, 0x10000).ok());
  DmaUnmap un;
  un.argsz = 64;  // a client may offer a larger reply buffer
  un.addr = 0x100000;
  un.size = 0x10000;
  auto m = client_->Request(kCmdDmaUnmap, Bytes(un));
  ASSERT_EQ(ReplyErrno(m), 0);
  EXPECT_EQ(m->payload, Bytes(un));
}

class SmallLimitsTest : public SessionTest {
  SessionOptions Options() override {
    SessionOptions o;
    o.max_dma_maps = 4;
    o.max_data_xfer_size = 4096;
    o.max_msg_fds = 4;
    o.max_msg_size = 8192;
    return o;
  }
};

TEST_F(SmallLimitsTest, LimitsEnforced) {
  UniqueFd mem = MakeMemfd(1 << 16);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x10000 * (i + 1), 0x1000).ok());
  EXPECT_EQ(StatusToErrno(client_->DmaMap(mem.get(), 0, 0x100000, 0x1000)), ENOSPC);
  std::vector<uint8_t> buf(4097);
  EXPECT_EQ(StatusToErrno(client_->RegionRead(kBar, 0, absl::MakeSpan(buf))), E2BIG);
  EXPECT_TRUE(client_->RegionRead(kBar, 0x2000, absl::MakeSpan(buf.data(), 4096)).ok());
  // More fds than max_msg_fds in one message.
  std::vector<UniqueFd> efds;
  std::vector<int> raw;
  for (int i = 0; i < 5; ++i) {
    efds.push_back(MakeEventfd());
    raw.push_back(efds.back().get());
  }
  IrqSet set;
  set.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  set.index = kMsixIrq;
  set.count = 1;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceSetIrqs, Bytes(set), raw)), EINVAL);
  // A message larger than max_msg_size cannot be framed: an EINVAL reply,
  // then the connection is closed.
  std::vector<uint8_t> big(9000, 0);
  auto m = client_->Request(kCmdRegionWrite, big);
  EXPECT_EQ(ReplyErrno(m), EINVAL);
  EXPECT_FALSE(client_->GetInfo().ok());
  auto c2 = harness_->Connect();
  ASSERT_NE(c2, nullptr);
  EXPECT_TRUE(c2->GetInfo().ok());
}

TEST_F(SessionTest, DeviceDmaThroughMappedMemory) {
  EnableDevice();
  UniqueFd mem = MakeMemfd(1 << 16);
  uint8_t* guest = static_cast<uint8_t*>(::mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0));
  ASSERT_NE(guest, MAP_FAILED);
  uint32_t sum = 0;
  for (int i = 0; i < 4096; ++i) {
    guest[0x1000 + i] = static_cast<uint8_t>(i * 7);
    sum += static_cast<uint8_t>(i * 7);
  }
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x40000000, 1 << 16).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaAddr, 0x40001000).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaAddr + 4, 0).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaLen, 4096).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaCmd, 3).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kStatus), 0u);
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kDmaResult), sum);
  // Guest -> device -> guest copy.
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaCmd, 1).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 2).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaAddr, 0x40008000).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaCmd, 2).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(std::memcmp(guest + 0x8000, guest + 0x1000, 4096), 0);
  // Crossing the end of the window: refused, nothing touched.
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaAddr, 0x4000f800).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaCmd, 3).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kStatus), static_cast<uint32_t>(EFAULT));
  // Read-only window: the device cannot write it.
  ASSERT_TRUE(client_->DmaUnmap(0x40000000, 1 << 16).ok());
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x40000000, 1 << 16, kDmaFlagRead).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaAddr, 0x40000000).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaCmd, 2).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kStatus), static_cast<uint32_t>(EFAULT));
  ::munmap(guest, 1 << 16);
}

class HeapDma : public ClientDmaHandler {
 public:
  explicit HeapDma(uint64_t base, size_t size) : base_(base), mem_(size) {}
  int Read(uint64_t iova, absl::Span<uint8_t> out) override {
    if (iova < base_ || iova - base_ + out.size() > mem_.size()) return EFAULT;
    std::memcpy(out.data(), mem_.data() + (iova - base_), out.size());
    ++reads;
    return 0;
  }
  int Write(uint64_t iova, absl::Span<const uint8_t> data) override {
    if (iova < base_ || iova - base_ + data.size() > mem_.size()) return EFAULT;
    std::memcpy(mem_.data() + (iova - base_), data.data(), data.size());
    ++writes;
    return 0;
  }
  uint64_t base_;
  std::vector<uint8_t> mem_;
  int reads = 0, writes = 0;
};

class MessageDmaTest : public ::testing::TestWithParam<DmaRwLayout> {};

TEST_P(MessageDmaTest, DmaWithoutFdUsesMessages) {
  ServerHarness harness;
  auto c = Client::Connect(harness.path());
  ASSERT_TRUE(c.ok());
  std::unique_ptr<Client> client_ = std::move(*c);
  client_->set_dma_layout(GetParam());  // the server picks it up from VERSION
  ASSERT_TRUE(client_->Version().ok());
  uint16_t cmd = 0x6;
  ASSERT_TRUE(client_->RegionWrite(kConfigRegion, 4, absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&cmd), 2)).ok());
  HeapDma heap(0x80000000, 0x4000);
  for (size_t i = 0; i < heap.mem_.size(); ++i) heap.mem_[i] = static_cast<uint8_t>(i);
  client_->set_dma_handler(&heap);
  ASSERT_TRUE(client_->DmaMap(-1, 0, 0x80000000, 0x4000).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaAddr, 0x80000100).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaLen, 0x1000).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaCmd, 1).ok());  // guest -> shared
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kStatus), 0u);
  EXPECT_GE(heap.reads, 1);
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaAddr, 0x80002000).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDmaCmd, 2).ok());  // shared -> guest
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kStatus), 0u);
  EXPECT_GE(heap.writes, 1);
  EXPECT_EQ(std::memcmp(heap.mem_.data() + 0x2000, heap.mem_.data() + 0x100, 0x1000), 0);
  // Client refuses (no handler): the device sees a DMA error, the session lives.
  client_->set_dma_handler(nullptr);
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kStatus), static_cast<uint32_t>(EFAULT));
}

INSTANTIATE_TEST_SUITE_P(Layouts, MessageDmaTest, ::testing::Values(DmaRwLayout::kSpec, DmaRwLayout::kQemu));

// ---------------------------------------------------------------- info

TEST_F(SessionTest, DeviceInfo) {
  auto info = client_->GetInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->flags, kDeviceFlagReset | kDeviceFlagPci);
  EXPECT_EQ(info->num_regions, 9u);
  EXPECT_EQ(info->num_irqs, 5u);
  DeviceInfo small;
  small.argsz = 8;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceGetInfo, Bytes(small))), EINVAL);
  std::vector<uint8_t> longp(20, 0);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceGetInfo, longp)), EINVAL);
  // A client whose struct has the kernel's cap_offset (20 bytes; the rust-vmm
  // vfio-user crate reads exactly that many back) gets cap_offset 0.
  std::vector<uint8_t> with_cap(20, 0);
  with_cap[0] = 20;
  auto m = client_->Request(kCmdDeviceGetInfo, with_cap);
  ASSERT_EQ(ReplyErrno(m), 0);
  ASSERT_EQ(m->payload.size(), 20u);
  DeviceInfo got;
  std::memcpy(&got, m->payload.data(), sizeof got);
  EXPECT_EQ(got.argsz, 20u);
  EXPECT_EQ(got.num_regions, 9u);
  EXPECT_EQ(m->payload[16] | m->payload[17] | m->payload[18] | m->payload[19], 0);
}

TEST_F(SessionTest, RegionInfoWithSparseMmapAndFd) {
  auto r = client_->GetRegionInfo(kBar);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->info.size, ExampleDevice::kBar0Size);
  EXPECT_EQ(r->info.flags & (kRegionFlagRead | kRegionFlagWrite | kRegionFlagMmap | kRegionFlagCaps), 0xfu);
  ASSERT_EQ(r->sparse_areas.size(), 1u);
  EXPECT_EQ(r->sparse_areas[0].offset, ExampleDevice::kSharedOffset);
  ASSERT_TRUE(r->fd.valid());
  // The mmapped area and trapped accesses see the same bytes.
  uint8_t* p = static_cast<uint8_t*>(::mmap(nullptr, r->sparse_areas[0].size, PROT_READ | PROT_WRITE, MAP_SHARED,
                                            r->fd.get(), r->info.offset + r->sparse_areas[0].offset));
  ASSERT_NE(p, MAP_FAILED);
  p[16] = 0xab;
  uint8_t b = 0;
  ASSERT_TRUE(client_->RegionRead(kBar, ExampleDevice::kSharedOffset + 16, absl::MakeSpan(&b, 1)).ok());
  EXPECT_EQ(b, 0xab);
  ::munmap(p, r->sparse_areas[0].size);
  // Too small argsz: size needed, no caps, no fd.
  RegionInfo req;
  req.index = kBar;
  auto m = client_->Request(kCmdDeviceGetRegionInfo, Bytes(req));
  ASSERT_EQ(ReplyErrno(m), 0);
  RegionInfo got;
  ASSERT_TRUE(LoadStruct(m->payload, 0, &got));
  EXPECT_GT(got.argsz, sizeof(RegionInfo));
  EXPECT_EQ(got.flags & kRegionFlagCaps, 0u);  // QEMU rejects CAPS without a valid cap_offset
  EXPECT_EQ(got.cap_offset, 0u);
  EXPECT_EQ(m->payload.size(), sizeof(RegionInfo));
  EXPECT_TRUE(m->fds.empty());
  // Config region: no mmap.
  auto cfg = client_->GetRegionInfo(kConfigRegion);
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->info.size, 4096u);
  EXPECT_EQ(cfg->info.flags & kRegionFlagMmap, 0u);
  EXPECT_FALSE(cfg->fd.valid());
  // Absent region: size 0. Bad index / sizes: EINVAL.
  auto rom = client_->GetRegionInfo(kRomRegion);
  ASSERT_TRUE(rom.ok());
  EXPECT_EQ(rom->info.size, 0u);
  EXPECT_EQ(StatusToErrno(client_->GetRegionInfo(9).status()), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->GetRegionInfo(0xffffffff).status()), EINVAL);
  req.argsz = 8;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceGetRegionInfo, Bytes(req))), EINVAL);
  // A request padded to argsz, as libvfio-user's test client sends it
  // (test_device_get_region_info.py: test_device_get_region_info_caps).
  req.argsz = got.argsz;
  std::vector<uint8_t> padded = Bytes(req);
  padded.resize(got.argsz, 0);
  auto pm = client_->Request(kCmdDeviceGetRegionInfo, padded);
  ASSERT_EQ(ReplyErrno(pm), 0);
  RegionInfo full;
  ASSERT_TRUE(LoadStruct(pm->payload, 0, &full));
  EXPECT_EQ(full.argsz, got.argsz);
  EXPECT_EQ(full.cap_offset, sizeof(RegionInfo));
  EXPECT_EQ(pm->fds.size(), 1u);
  // GET_INFO: a longer payload with a larger argsz (test_device_get_info.py).
  DeviceInfo di;
  di.argsz = 32;
  std::vector<uint8_t> dp = Bytes(di);
  dp.resize(32, 0);
  auto dm = client_->Request(kCmdDeviceGetInfo, dp);
  ASSERT_EQ(ReplyErrno(dm), 0);
  DeviceInfo dout;
  ASSERT_TRUE(LoadStruct(dm->payload, 0, &dout));
  EXPECT_EQ(dout.argsz, sizeof(DeviceInfo));
  EXPECT_EQ(dm->payload.size(), sizeof(DeviceInfo));
}

TEST(RegionInfoTest, ClientTakingNoFdsGetsTrapOnlyRegions) {
  ServerHarness h;
  auto c = h.Connect(false);
  Capabilities caps;
  caps.max_msg_fds = 0;
  ASSERT_TRUE(c->Version(caps).ok());
  auto r = c->GetRegionInfo(kBar);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->info.flags & kRegionFlagMmap, 0u);
  EXPECT_FALSE(r->fd.valid());
  EXPECT_TRUE(r->sparse_areas.empty());
}

TEST_F(SessionTest, RegionIoFds) {
  RegionIoFds req;
  req.index = kBar;
  auto m = client_->Request(kCmdDeviceGetRegionIoFds, Bytes(req));
  ASSERT_EQ(ReplyErrno(m), 0);
  RegionIoFds got;
  ASSERT_TRUE(LoadStruct(m->payload, 0, &got));
  EXPECT_EQ(got.count, 0u);
  req.index = 50;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceGetRegionIoFds, Bytes(req))), EINVAL);
  req.index = kBar;
  req.flags = 1;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceGetRegionIoFds, Bytes(req))), EINVAL);
}

TEST_F(SessionTest, IrqInfo) {
  auto msix = client_->GetIrqInfo(kMsixIrq);
  ASSERT_TRUE(msix.ok());
  EXPECT_EQ(msix->count, 1u);
  EXPECT_EQ(msix->flags, kIrqInfoEventfd | kIrqInfoMaskable);
  auto intx = client_->GetIrqInfo(kIntxIrq);
  ASSERT_TRUE(intx.ok());
  EXPECT_EQ(intx->count, 0u);
  EXPECT_EQ(intx->flags, kIrqInfoEventfd | kIrqInfoMaskable);
  // ERR and REQ: one transport notifier each (QEMU warns unless ERR has 1).
  for (uint32_t i : {uint32_t{kErrIrq}, uint32_t{kReqIrq}}) {
    auto n = client_->GetIrqInfo(i);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(n->count, 1u);
    EXPECT_EQ(n->flags, kIrqInfoEventfd);
  }
  EXPECT_EQ(StatusToErrno(client_->GetIrqInfo(5).status()), EINVAL);
}

// ---------------------------------------------------------------- interrupts

TEST_F(SessionTest, MsixEventfdMaskPendingUnmask) {
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  ASSERT_TRUE(client_->SetIrqEventfds(kMsixIrq, 0, absl::MakeConstSpan(&fd, 1)).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  // Masked: pending, visible in the PBA; fires on unmask.
  ASSERT_TRUE(client_->MaskIrq(kMsixIrq, 0, 1, true).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 0u);
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kMsixPbaOffset) & 1, 1u);
  ASSERT_TRUE(client_->MaskIrq(kMsixIrq, 0, 1, false).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kMsixPbaOffset) & 1, 0u);
  // Software triggers: DATA_NONE and DATA_BOOL.
  ASSERT_TRUE(client_->SetIrqs(kMsixIrq, kIrqSetDataNone | kIrqSetActionTrigger, 0, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  uint8_t no = 0, yes = 1;
  ASSERT_TRUE(client_->SetIrqs(kMsixIrq, kIrqSetDataBool | kIrqSetActionTrigger, 0, 1, {}, absl::MakeConstSpan(&no, 1)).ok());
  EXPECT_EQ(DrainEventfd(fd), 0u);
  ASSERT_TRUE(client_->SetIrqs(kMsixIrq, kIrqSetDataBool | kIrqSetActionTrigger, 0, 1, {}, absl::MakeConstSpan(&yes, 1)).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  // BOOL mask/unmask.
  ASSERT_TRUE(client_->SetIrqs(kMsixIrq, kIrqSetDataBool | kIrqSetActionMask, 0, 1, {}, absl::MakeConstSpan(&yes, 1)).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 0u);
  ASSERT_TRUE(client_->SetIrqs(kMsixIrq, kIrqSetDataBool | kIrqSetActionUnmask, 0, 1, {}, absl::MakeConstSpan(&yes, 1)).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  // The guest's own table mask (written through the region) also masks.
  uint32_t ctl = 1;
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kMsixTableOffset + 12, ctl).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 0u);
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kMsixTableOffset + 12, 0).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  // De-assign (EVENTFD without fds): triggers become pending.
  ASSERT_TRUE(client_->SetIrqs(kMsixIrq, kIrqSetDataEventfd | kIrqSetActionTrigger, 0, 1).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 0u);
  // Re-assign delivers the pending one.
  ASSERT_TRUE(client_->SetIrqEventfds(kMsixIrq, 0, absl::MakeConstSpan(&fd, 1)).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  // Disable all.
  ASSERT_TRUE(client_->SetIrqs(kMsixIrq, kIrqSetDataNone | kIrqSetActionTrigger, 0, 0).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 0u);
}

TEST_F(SessionTest, SetIrqsInvalid) {
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  auto bad = [&](uint32_t index, uint32_t flags, uint32_t start, uint32_t count, std::vector<int> fds,
                 std::vector<uint8_t> bools = {}) {
    return StatusToErrno(client_->SetIrqs(index, flags, start, count, fds, bools));
  };
  const uint32_t T = kIrqSetActionTrigger, M = kIrqSetActionMask, U = kIrqSetActionUnmask;
  const uint32_t N = kIrqSetDataNone, B = kIrqSetDataBool, E = kIrqSetDataEventfd;
  EXPECT_EQ(bad(kMsixIrq, N | B | T, 0, 1, {}), EINVAL);        // two data types
  EXPECT_EQ(bad(kMsixIrq, N | T | M, 0, 1, {}), EINVAL);        // two actions
  EXPECT_EQ(bad(kMsixIrq, N, 0, 1, {}), EINVAL);                // no action
  EXPECT_EQ(bad(kMsixIrq, T, 0, 1, {}), EINVAL);                // no data type
  EXPECT_EQ(bad(kMsixIrq, N | T | 0x40, 0, 1, {}), EINVAL);     // unknown bit
  EXPECT_EQ(bad(kMsixIrq, N | T, 1, 1, {}), EINVAL);            // beyond count
  EXPECT_EQ(bad(kMsixIrq, N | T, 0xffffffff, 2, {}), EINVAL);   // start + count wraps
  EXPECT_EQ(bad(kMsixIrq, N | T, 0, 2, {}), EINVAL);
  EXPECT_EQ(bad(5, N | T, 0, 1, {}), EINVAL);                   // bad index
  EXPECT_EQ(bad(kIntxIrq, N | T, 0, 1, {}), EINVAL);            // no INTx vectors
  EXPECT_EQ(bad(kMsixIrq, E | T, 0, 1, {fd, fd}), EINVAL);      // fd count mismatch
  EXPECT_EQ(bad(kMsixIrq, E | M, 0, 1, {fd}), EINVAL);          // eventfd + mask
  EXPECT_EQ(bad(kMsixIrq, N | T, 0, 1, {fd}), EINVAL);          // fds with DATA_NONE
  EXPECT_EQ(bad(kMsixIrq, B | T, 0, 1, {}, {}), EINVAL);        // bool payload missing
  EXPECT_EQ(bad(kMsixIrq, B | T, 0, 1, {fd}, {1}), EINVAL);     // fds with DATA_BOOL
  EXPECT_EQ(bad(kMsixIrq, N | T, 1, 0, {}), EINVAL);            // count 0 with start
  EXPECT_EQ(bad(kMsixIrq, B | T, 0, 0, {}), EINVAL);            // count 0 with bool
  EXPECT_EQ(bad(kErrIrq, N | U, 0, 0, {}), EINVAL);             // unmask non-maskable index
  // libvfio-user test_device_set_irqs.py cases.
  EXPECT_EQ(bad(kMsixIrq, N | M, 0, 0, {}), EINVAL);            // count 0 needs TRIGGER
  EXPECT_EQ(bad(kErrIrq, N | M, 0, 1, {}), EINVAL);             // ERR only triggers
  EXPECT_EQ(bad(kReqIrq, N | U, 0, 1, {}), EINVAL);             // REQ only triggers
  {
    IrqSet big;  // DATA_BOOL with one byte too many
    big.flags = B | T;
    big.index = kMsixIrq;
    big.count = 1;
    std::vector<uint8_t> p = Bytes(big);
    p.push_back(0);
    p.push_back(0);
    big.argsz = static_cast<uint32_t>(p.size());
    std::memcpy(p.data(), &big.argsz, 4);
    EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceSetIrqs, p)), EINVAL);
    IrqSet lie;  // argsz other than the payload
    lie.argsz = 24;
    lie.flags = N | T;
    lie.index = kMsixIrq;
    lie.count = 1;
    EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceSetIrqs, Bytes(lie))), EINVAL);
  }
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  EXPECT_EQ(bad(kMsixIrq, E | T, 0, 1, {pipefd[1]}), EINVAL);   // not an eventfd
  ::close(pipefd[0]);
  ::close(pipefd[1]);
  IrqSet set;
  set.argsz = 8;
  set.flags = N | T;
  set.index = kMsixIrq;
  set.count = 1;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceSetIrqs, Bytes(set))), EINVAL);  // argsz
  std::vector<uint8_t> shortp(12, 0);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceSetIrqs, shortp)), EINVAL);
  // Still alive and well.
  EXPECT_TRUE(client_->SetIrqEventfds(kMsixIrq, 0, absl::MakeConstSpan(&fd, 1)).ok());
}

// ---------------------------------------------------------------- region access

TEST_F(SessionTest, RegionAccess) {
  uint16_t vendor = 0;
  ASSERT_TRUE(client_->RegionRead(kConfigRegion, 0, absl::MakeSpan(reinterpret_cast<uint8_t*>(&vendor), 2)).ok());
  EXPECT_EQ(vendor, 0x1b36);
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kId), ExampleDevice::kIdValue);
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kScratch, 0xdeadbeef).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kScratch), 0xdeadbeefu);
  uint8_t buf[8];
  EXPECT_EQ(StatusToErrno(client_->RegionRead(kBar, ExampleDevice::kBar0Size - 4, absl::MakeSpan(buf, 8))), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->RegionRead(kBar, ~uint64_t{0} - 2, absl::MakeSpan(buf, 8))), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->RegionRead(kBar, 0, absl::MakeSpan(buf, 0))), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->RegionRead(kBar1, 0, absl::MakeSpan(buf, 4))), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->RegionRead(99, 0, absl::MakeSpan(buf, 4))), EINVAL);
  EXPECT_EQ(StatusToErrno(client_->RegionWrite(kConfigRegion, 4094, absl::MakeConstSpan(buf, 4))), EINVAL);
  std::vector<uint8_t> huge((1 << 20) + 1);
  EXPECT_EQ(StatusToErrno(client_->RegionRead(kBar, 0, absl::MakeSpan(huge))), E2BIG);
  // Device refuses an unaligned register write.
  EXPECT_EQ(StatusToErrno(client_->RegionWrite(kBar, 1, absl::MakeConstSpan(buf, 4))), EINVAL);
  // Write whose count disagrees with its payload; read with data attached.
  RegionAccess a{ExampleDevice::kScratch, kBar, 8};
  std::vector<uint8_t> p = Bytes(a);
  p.resize(p.size() + 4);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdRegionWrite, p)), EINVAL);
  a.count = 4;
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdRegionRead, p)), EINVAL);
  std::vector<uint8_t> shortp(8, 0);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdRegionRead, shortp)), EINVAL);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdRegionWrite, shortp)), EINVAL);
}

TEST_F(SessionTest, PostedWritesAreOrderedBeforeALaterRead) {
  uint32_t sum = 0;
  for (uint32_t i = 1; i <= 500; ++i) {
    ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kAdd, i, /*posted=*/true).ok());
    sum += i;
  }
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kAcc), sum);
  // A failing posted write gets no reply and does not disturb the stream.
  uint8_t b[4] = {};
  ASSERT_TRUE(client_->RegionWrite(kBar, 1, absl::MakeConstSpan(b, 4), true).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kAcc), sum);
  EXPECT_EQ(harness_->session().stats().posted_errors, 1u);
  EXPECT_GE(harness_->session().stats().by_command[kCmdRegionWrite], 501u);
  EXPECT_EQ(harness_->session().stats().errors_by_command[kCmdRegionWrite], 1u);
}

TEST_F(SessionTest, PipelinedRequestsAnsweredInOrder) {
  std::vector<uint8_t> stream;
  for (uint16_t id = 100; id < 110; ++id) {
    Header h;
    h.msg_id = id;
    h.command = id % 2 ? kCmdRegionRead : kCmdDeviceGetInfo;
    std::vector<uint8_t> p = id % 2 ? Bytes(RegionAccess{ExampleDevice::kId, kBar, 4}) : Bytes(DeviceInfo{});
    h.msg_size = static_cast<uint32_t>(kHeaderSize + p.size());
    AppendStruct(&stream, h);
    AppendBytes(&stream, p);
  }
  ASSERT_TRUE(client_->SendRaw(stream).ok());
  for (uint16_t id = 100; id < 110; ++id) {
    auto m = client_->ReceiveReply(id, id % 2 ? kCmdRegionRead : kCmdDeviceGetInfo);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->hdr.flags & kFlagError, 0u);
  }
}

TEST_F(SessionTest, WriteMulti) {
  std::vector<MultiWrite> w;
  uint32_t sum = 0;
  for (uint32_t i = 1; i <= 200; ++i) {
    MultiWrite m;
    m.region = kBar;
    m.offset = ExampleDevice::kAdd;
    m.data.resize(4);
    std::memcpy(m.data.data(), &i, 4);
    w.push_back(m);
    sum += i;
  }
  ASSERT_TRUE(client_->WriteMulti(w, /*posted=*/false).ok());
  ASSERT_TRUE(client_->WriteMulti(absl::MakeConstSpan(w.data(), 3), /*posted=*/true).ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kAcc), sum + 6);
  w.push_back(w[0]);  // 201 entries
  EXPECT_EQ(StatusToErrno(client_->WriteMulti(w, false)), EINVAL);
  w.resize(2);
  w[1].region = 99;
  EXPECT_EQ(StatusToErrno(client_->WriteMulti(w, false)), EINVAL);
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kAcc), sum + 6);  // nothing of a bad batch applied
  std::vector<uint8_t> p = Bytes(uint64_t{1});
  WriteMultiEntry e;
  e.region = kBar;
  e.offset = ExampleDevice::kAdd;
  e.count = 9;
  AppendStruct(&p, e);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdRegionWriteMulti, p)), EINVAL);
}

TEST(WriteMultiTest, RefusedUnlessNegotiated) {
  ServerHarness h;
  auto c = h.Connect(false);
  Capabilities caps;  // write_multiple false
  ASSERT_TRUE(c->Version(caps).ok());
  MultiWrite w{kBar, ExampleDevice::kAdd, {1, 0, 0, 0}};
  EXPECT_EQ(StatusToErrno(c->WriteMulti(absl::MakeConstSpan(&w, 1), false)), ENOTSUP);
}

// ---------------------------------------------------------------- misc

TEST_F(SessionTest, ResetAndUnsupportedCommands) {
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kScratch, 5).ok());
  ASSERT_TRUE(client_->Reset().ok());
  EXPECT_EQ(*client_->Read32(kBar, ExampleDevice::kScratch), 0u);
  EXPECT_EQ(harness_->device().resets(), 1u);
  std::vector<uint8_t> junk(4, 0);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceReset, junk)), EINVAL);
  for (uint16_t cmd : {kCmdDeviceFeature, kCmdMigDataRead, kCmdMigDataWrite, kCmdDirtyPages}) {
    EXPECT_EQ(ReplyErrno(client_->Request(cmd, junk)), ENOTSUP) << cmd;
  }
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDmaRead, Bytes(DmaAccess{0, 4}))), EINVAL);
  EXPECT_EQ(ReplyErrno(client_->Request(0, junk)), EINVAL);
  EXPECT_EQ(ReplyErrno(client_->Request(99, junk)), EINVAL);
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceGetInfo, Bytes(DeviceInfo{}), {}, 0x100)), EINVAL);
  // A request that carries the reply type is dropped; error field set -> EINVAL.
  Header h;
  h.msg_id = 7;
  h.command = kCmdDeviceGetInfo;
  h.error = 5;
  std::vector<uint8_t> raw = Bytes(h);
  DeviceInfo di;
  AppendStruct(&raw, di);
  std::memcpy(&h, raw.data(), sizeof(h));
  h.msg_size = static_cast<uint32_t>(raw.size());
  std::memcpy(raw.data(), &h, sizeof(h));
  ASSERT_TRUE(client_->SendRaw(raw).ok());
  auto m = client_->ReceiveReply(7, kCmdDeviceGetInfo);
  EXPECT_EQ(ReplyErrno(m), EINVAL);
  // FD-carrying command that takes none.
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  EXPECT_EQ(ReplyErrno(client_->Request(kCmdDeviceGetInfo, Bytes(DeviceInfo{}), absl::MakeConstSpan(&fd, 1))), EINVAL);
  EXPECT_TRUE(client_->GetInfo().ok());
}

TEST_F(SessionTest, FramingErrorClosesOnlyThatConnectionAndStateIsKept) {
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kScratch, 0x1234).ok());
  Header h;
  h.msg_id = 1;
  h.command = kCmdDeviceGetInfo;
  h.msg_size = 8;  // lies: smaller than a header
  ASSERT_TRUE(client_->SendRaw(Bytes(h)).ok());
  // An EINVAL reply (libvfio-user test_request_errors.py: test_too_small),
  // then EOF.
  EXPECT_EQ(ReplyErrno(client_->ReceiveReply(1, kCmdDeviceGetInfo)), EINVAL);
  uint8_t b;
  pollfd p{client_->fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  EXPECT_EQ(::recv(client_->fd(), &b, 1, 0), 0);  // EOF
  auto c2 = harness_->Connect();
  ASSERT_NE(c2, nullptr);
  EXPECT_EQ(*c2->Read32(kBar, ExampleDevice::kScratch), 0x1234u);
  // Oversized header on the new connection.
  h.msg_size = 0x7fffffff;
  ASSERT_TRUE(c2->SendRaw(Bytes(h)).ok());
  EXPECT_EQ(ReplyErrno(c2->ReceiveReply(1, kCmdDeviceGetInfo)), EINVAL);  // test_too_large
  p.fd = c2->fd();
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  EXPECT_EQ(::recv(c2->fd(), &b, 1, 0), 0);
  auto c3 = harness_->Connect();
  ASSERT_NE(c3, nullptr);
  EXPECT_TRUE(c3->GetInfo().ok());
  EXPECT_EQ(harness_->session().stats().framing_errors, 2u);
}

TEST_F(SessionTest, DisconnectUnmapsClosesEventfdsAndNextClientIsServed) {
  UniqueFd mem = MakeMemfd(1 << 16);
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  ASSERT_TRUE(client_->DmaMap(mem.get(), 0, 0x1000000, 1 << 16).ok());
  ASSERT_TRUE(client_->SetIrqEventfds(kMsixIrq, 0, absl::MakeConstSpan(&fd, 1)).ok());
  ASSERT_TRUE(client_->Write32(kBar, ExampleDevice::kScratch, 77).ok());
  // A second client waits while the first is attached.
  auto waiting = Client::Connect(harness_->path());
  ASSERT_TRUE(waiting.ok());
  (*waiting)->set_timeout(absl::Milliseconds(200));
  EXPECT_EQ((*waiting)->Version().status().code(), absl::StatusCode::kDeadlineExceeded);
  waiting->reset();
  client_.reset();  // disconnect
  auto c2 = harness_->Connect();
  ASSERT_NE(c2, nullptr);
  EXPECT_EQ(*c2->Read32(kBar, ExampleDevice::kScratch), 77u);  // device state kept
  EXPECT_EQ(harness_->device().unmaps_seen(), 1u);
  EXPECT_EQ(harness_->session().dma().size(), 0u);
  // The old eventfd is no longer signalled.
  ASSERT_TRUE(c2->Write32(kBar, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 0u);
  // The same window can be mapped again by the new client.
  EXPECT_TRUE(c2->DmaMap(mem.get(), 0, 0x1000000, 1 << 16).ok());
}

TEST(SlowClientTest, ClientThatNeverReadsIsDroppedAndTheNextIsServed) {
  SessionOptions o;
  o.send_timeout = absl::Milliseconds(100);
  ServerHarness h(o);
  auto c = h.Connect();
  ASSERT_NE(c, nullptr);
  // Pipeline requests and never read a reply: the server's replies fill our
  // receive buffer, its sends time out, it drops us.
  Header hdr;
  hdr.command = kCmdDeviceGetInfo;
  hdr.msg_size = kHeaderSize + sizeof(DeviceInfo);
  std::vector<uint8_t> one = Bytes(hdr);
  AppendStruct(&one, DeviceInfo{});
  std::vector<uint8_t> burst;
  for (int i = 0; i < 256; ++i) burst.insert(burst.end(), one.begin(), one.end());
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  bool dropped = false;
  while (!dropped && absl::Now() < deadline) {
    ssize_t n = ::send(c->fd(), burst.data(), burst.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN) dropped = true;  // EPIPE / ECONNRESET
    if (n < 0 && errno == EAGAIN) absl::SleepFor(absl::Milliseconds(20));
    if (n >= 0 && static_cast<size_t>(n) < burst.size()) absl::SleepFor(absl::Milliseconds(20));
    // The server closing shows as POLLHUP/POLLRDHUP even with unread data.
    pollfd p{c->fd(), POLLRDHUP, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) dropped = true;
  }
  EXPECT_TRUE(dropped);
  auto c2 = h.Connect();
  ASSERT_NE(c2, nullptr);
  EXPECT_TRUE(c2->GetInfo().ok());
  EXPECT_NE(h.session().last_disconnect_reason().find("sending reply"), std::string::npos)
      << h.session().last_disconnect_reason();
}

TEST(SessionFdTest, NoFdLeaksOnRefusedRequests) {
  ServerHarness h;
  auto c = h.Connect();
  UniqueFd mem = MakeMemfd(1 << 16);
  UniqueFd efd = MakeEventfd();
  ASSERT_TRUE(c->GetInfo().ok());
  int before = testing::CountOpenFds();
  for (int i = 0; i < 50; ++i) {
    int fds[3] = {mem.get(), efd.get(), mem.get()};
    (void)c->Request(kCmdDeviceGetInfo, Bytes(DeviceInfo{}), absl::MakeConstSpan(fds, 3));
    (void)c->DmaMap(mem.get(), 0, 0, 0);  // zero size: refused
    IrqSet set;
    set.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
    set.index = kMsixIrq;
    set.count = 2;  // mismatch
    (void)c->Request(kCmdDeviceSetIrqs, Bytes(set), absl::MakeConstSpan(fds, 1));
  }
  ASSERT_TRUE(c->GetInfo().ok());
  EXPECT_EQ(testing::CountOpenFds(), before);
}

TEST(SessionCreateTest, DeviceDescriptionsAreBounded) {
  auto dev = ExampleDevice::Create();
  ASSERT_TRUE(dev.ok());
  struct Case {
    std::vector<RegionDesc> regions;
    std::vector<IrqDesc> irqs;
  };
  RegionDesc cfg;
  cfg.index = kConfigRegion;
  cfg.size = 256;
  RegionDesc far = cfg;
  far.index = 200;
  RegionDesc bad_area;
  bad_area.index = 0;
  bad_area.size = 0x1000;
  bad_area.mmap_areas.push_back({0x800, 0x1000});  // beyond the region
  bad_area.mmap_fd = 0;
  std::vector<Case> cases = {
      {{}, {}},                                   // no config region
      {{cfg, far}, {}},                           // > 100 regions
      {{cfg, bad_area}, {}},                      // mmap area outside region
      {{cfg}, {IrqDesc{7, 1, false}}},            // unknown IRQ index
      {{cfg}, {IrqDesc{kMsixIrq, 4096, true}}},   // too many vectors
  };
  for (auto& c : cases) {
    struct Fake : public PciDevice {
      std::vector<RegionDesc> r;
      std::vector<IrqDesc> i;
      std::vector<RegionDesc> Regions() const override { return r; }
      std::vector<IrqDesc> Irqs() const override { return i; }
      absl::Status RegionRead(uint32_t, uint64_t, absl::Span<uint8_t>) override { return absl::OkStatus(); }
      absl::Status RegionWrite(uint32_t, uint64_t, absl::Span<const uint8_t>) override { return absl::OkStatus(); }
      void Attach(const DeviceContext&) override {}
      void Detach() override {}
      absl::Status Reset() override { return absl::OkStatus(); }
      void OnDmaUnmap(uint64_t, uint64_t) override {}
      absl::string_view RecordNamespace() const override { return "fake"; }
      absl::Status Save(DeviceRecordWriter&) override { return absl::OkStatus(); }
      absl::Status Restore(const DeviceRecordReader&) override { return absl::OkStatus(); }
    } fake;
    fake.r = c.regions;
    fake.i = c.irqs;
    EXPECT_FALSE(Session::Create(&fake, nullptr, {}).ok());
  }
  EXPECT_TRUE(Session::Create(dev->get(), nullptr, {}).ok());
}

}  // namespace
}  // namespace emud::vfio_user
