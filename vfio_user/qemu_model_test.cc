// The server and its PCI helpers driven by QemuModel (qemu_model.h): the
// messages QEMU 10.1's vfio-user-pci sends, in its order, with its checks on
// every reply. A failure names the QEMU function that would refuse to realize
// the device or misbehave at run time.
#include "vfio_user/qemu_model.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "state_store/store.h"
#include "vfio_user/msix_table.h"
#include "vfio_user/pci_config_space.h"
#include "vfio_user/test_harness.h"

namespace emud::vfio_user {
namespace {

using testing::DrainEventfd;
using testing::MakeEventfd;
using testing::MakeMemfd;
using testing::ServerHarness;

std::string Joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& w : v) s += w + "; ";
  return s;
}

// A q35 guest's listener view: low RAM, the PAM area read-only from the same
// memfd, and the BIOS ROM without an fd.
struct GuestMemory {
  UniqueFd memfd = MakeMemfd(2 << 20);
  std::vector<QemuModel::Section> sections() const {
    return {
        {0x0, 0xa0000, memfd.get(), 0x0, false},
        {0xc0000, 0x40000, memfd.get(), 0xc0000, true},
        {0x100000, 0x100000, memfd.get(), 0x100000, false},
        {0xfffc0000, 0x40000, -1, 0, true},
    };
  }
};

TEST(QemuRealizeTest, ExampleDeviceRealizesWithoutErrorsOrWarnings) {
  ServerHarness h;
  auto q = QemuModel::Connect(h.path());
  ASSERT_TRUE(q.ok()) << q.status();
  GuestMemory mem;
  ASSERT_TRUE((*q)->Realize(mem.sections()).ok());
  EXPECT_TRUE((*q)->LintDevice().ok());
  EXPECT_TRUE((*q)->warnings().empty()) << Joined((*q)->warnings());
  EXPECT_TRUE((*q)->reset_works());
  EXPECT_EQ((*q)->msix_entries(), 1u);
  EXPECT_EQ((*q)->bar_size(0), ExampleDevice::kBar0Size);
  // BAR0 has an mmappable area: QEMU stops posting writes (device.c).
  EXPECT_FALSE((*q)->posted_writes());
  // The sparse area was really mmapped from the region fd: a store through
  // QEMU's mapping is what the device sees.
  uint8_t* area = (*q)->bar_mmap(0, 0);
  ASSERT_NE(area, nullptr);
  area[5] = 0x5a;
  EXPECT_EQ(h.device().shared()[5], 0x5a);
  // Registers through REGION_READ/WRITE of every access size QEMU issues.
  auto id = (*q)->BarRead(0, ExampleDevice::kId, 4);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, ExampleDevice::kIdValue);
  ASSERT_TRUE((*q)->BarWrite(0, ExampleDevice::kScratch, 0x11223344, 4).ok());
  for (int size : {1, 2, 4, 8}) {
    auto v = (*q)->BarRead(0, ExampleDevice::kScratch, size);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(*v, 0x11223344ull & (size == 8 ? ~0ull : (1ull << (8 * size)) - 1)) << size;
  }
  EXPECT_TRUE((*q)->warnings().empty()) << Joined((*q)->warnings());
}

TEST(QemuRealizeTest, MsixEnableUseReleaseDisableAndPba) {
  ServerHarness h;
  auto q = QemuModel::Connect(h.path());
  ASSERT_TRUE(q.ok());
  GuestMemory mem;
  ASSERT_TRUE((*q)->Realize(mem.sections()).ok());
  QemuModel& m = **q;
  const uint8_t cap = h.device().config().FindCapability(pci::kCapIdMsix);
  ASSERT_NE(cap, 0);
  ASSERT_TRUE(m.ConfigWrite(pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster, 2).ok());
  // Linux: enable with the function masked, program the table, unmask.
  ASSERT_TRUE(m.ConfigWrite(cap + 2, pci::kMsixControlEnable | pci::kMsixControlFunctionMask, 2).ok());
  ASSERT_TRUE(m.ConfigWrite(cap + 2, pci::kMsixControlEnable, 2).ok());
  UniqueFd kvm = MakeEventfd(), qemu = MakeEventfd();
  ASSERT_TRUE(m.MsixVectorUse(0, kvm.get()).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDoorbell, 1, 4).ok());
  EXPECT_EQ(DrainEventfd(kvm.get()), 1u);
  // The guest masks the vector in QEMU's table: QEMU swaps in its own fd.
  ASSERT_TRUE(m.MsixVectorRelease(0, qemu.get()).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDoorbell, 1, 4).ok());
  EXPECT_EQ(DrainEventfd(qemu.get()), 1u);
  EXPECT_EQ(DrainEventfd(kvm.get()), 0u);
  auto pba = m.PbaRead(0);
  ASSERT_TRUE(pba.ok());
  EXPECT_EQ(*pba, 0u);
  // Disable: the index loses its eventfds; an interrupt is then pending in
  // the PBA the server owns.
  ASSERT_TRUE(m.ConfigWrite(cap + 2, 0, 2).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDoorbell, 1, 4).ok());
  EXPECT_EQ(DrainEventfd(qemu.get()), 0u);
  pba = m.PbaRead(0);
  ASSERT_TRUE(pba.ok());
  EXPECT_EQ(*pba, 1u);
  EXPECT_TRUE(m.warnings().empty()) << Joined(m.warnings());
}

TEST(QemuRealizeTest, SystemResetSequence) {
  ServerHarness h;
  auto q = QemuModel::Connect(h.path());
  ASSERT_TRUE(q.ok());
  GuestMemory mem;
  ASSERT_TRUE((*q)->Realize(mem.sections()).ok());
  QemuModel& m = **q;
  const uint8_t cap = h.device().config().FindCapability(pci::kCapIdMsix);
  ASSERT_TRUE(m.ConfigWrite(pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster, 2).ok());
  ASSERT_TRUE(m.ConfigWrite(pci::kBar0, 0xfe000000, 4).ok());
  ASSERT_TRUE(m.ConfigWrite(cap + 2, pci::kMsixControlEnable, 2).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kScratch, 7, 4).ok());
  const uint32_t resets = h.device().resets();
  ASSERT_TRUE(m.SystemReset().ok());
  EXPECT_TRUE(m.warnings().empty()) << Joined(m.warnings());
  auto scratch = m.BarRead(0, ExampleDevice::kScratch, 4);
  ASSERT_TRUE(scratch.ok());
  EXPECT_EQ(*scratch, 0u);
  EXPECT_EQ(h.device().resets(), resets + 1);
  EXPECT_EQ(h.device().config().BarAddress(0), 0u);
  auto ctl = m.ConfigRead(cap + 2, 2);
  ASSERT_TRUE(ctl.ok());
  EXPECT_EQ(*ctl & pci::kMsixControlEnable, 0u);
}

TEST(QemuRealizeTest, DmaUnmapOfListenerSectionsAndRemap) {
  ServerHarness h;
  auto q = QemuModel::Connect(h.path());
  ASSERT_TRUE(q.ok());
  GuestMemory mem;
  ASSERT_TRUE((*q)->Realize(mem.sections()).ok());
  // A PAM toggle: the read-only alias goes away and comes back writable.
  std::vector<QemuModel::Section> old = {mem.sections()[1]};
  QemuModel::Section rw = old[0];
  rw.readonly = false;
  ASSERT_TRUE((*q)->UnmapSections(old).ok());
  ASSERT_TRUE((*q)->MapSections({rw}).ok());
  // Read with the server's loop thread stopped (test_harness.h): read while
  // it runs, this raced the session's own teardown (TSan).
  h.Stop();
  EXPECT_EQ(h.session().dma().size(), 4u);
}

// The same realize, MSI-X and reset flows against a session that persists
// every request (and one that also peeks/commits/consumes/journals): QEMU
// pipelines its listener's DMA_MAPs, each with its fd, before GET_INFO.
enum class Mode { kPlain, kPersisted, kCrashConsistent };

class QemuModesTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    SessionOptions o;
    if (GetParam() != Mode::kPlain) {
      dir_ = absl::StrCat(testing::TempDir(), "/vfu-qemu-", ::getpid(), "-", counter_++);
      state_store::EnvOptions eo;
      eo.tables = SessionTables();
      eo.tables.push_back(ExampleDevice::kTable);
      auto env = state_store::Env::Open(dir_, eo);
      ASSERT_TRUE(env.ok()) << env.status();
      env_ = std::move(*env);
      o.store = env_.get();
      if (GetParam() == Mode::kCrashConsistent) {
        o.crash_consistent = true;
        o.journal_path = dir_ + "/journal";
      }
    }
    harness_ = std::make_unique<ServerHarness>(o, "qemu-mode");
  }
  void TearDown() override {
    harness_.reset();
    env_.reset();
    if (!dir_.empty() && std::system(absl::StrCat("rm -rf ", dir_).c_str()) != 0) ADD_FAILURE() << "cleanup";
  }
  static inline int counter_ = 0;
  std::string dir_;
  std::unique_ptr<state_store::Env> env_;
  std::unique_ptr<ServerHarness> harness_;
};

TEST_P(QemuModesTest, RealizeInterruptsAndReset) {
  auto q = QemuModel::Connect(harness_->path());
  ASSERT_TRUE(q.ok());
  GuestMemory mem;
  ASSERT_TRUE((*q)->Realize(mem.sections()).ok());
  QemuModel& m = **q;
  const uint8_t cap = harness_->device().config().FindCapability(pci::kCapIdMsix);
  ASSERT_TRUE(m.ConfigWrite(pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster, 2).ok());
  ASSERT_TRUE(m.ConfigWrite(cap + 2, pci::kMsixControlEnable | pci::kMsixControlFunctionMask, 2).ok());
  ASSERT_TRUE(m.ConfigWrite(cap + 2, pci::kMsixControlEnable, 2).ok());
  UniqueFd efd = MakeEventfd();
  ASSERT_TRUE(m.MsixVectorUse(0, efd.get()).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDoorbell, 1, 4).ok());
  EXPECT_EQ(DrainEventfd(efd.get()), 1u);
  ASSERT_TRUE(m.SystemReset().ok());
  EXPECT_TRUE(m.warnings().empty()) << Joined(m.warnings());
  EXPECT_EQ(harness_->device().resets(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Modes, QemuModesTest,
                         ::testing::Values(Mode::kPlain, Mode::kPersisted, Mode::kCrashConsistent));

// Message-based DMA (a window without an fd) with a server whose
// max_data_xfer_size is below QEMU's: QEMU refuses any server request larger
// than what the server itself advertised (vfio_user_recv_one,
// vfio_user_dma_read), and a refused request desynchronises its stream.
TEST(QemuRealizeTest, MessageDmaChunksFitTheServersOwnTransferLimit) {
  SessionOptions o;
  o.max_data_xfer_size = 4096;
  ServerHarness h(o);
  auto q = QemuModel::Connect(h.path());
  ASSERT_TRUE(q.ok());
  ASSERT_TRUE((*q)->ValidateVersion().ok());
  EXPECT_EQ((*q)->server_caps().max_data_xfer_size, 4096u);
  QemuModel::GuestRam ram;
  ram.base = 0x10000;
  ram.bytes.assign(0x4000, 0);
  for (size_t i = 0; i < ram.bytes.size(); ++i) ram.bytes[i] = static_cast<uint8_t>(i * 7);
  (*q)->set_guest_ram(&ram);
  ASSERT_TRUE((*q)->MapSections({{0x10000, 0x4000, -1, 0, false}}).ok());
  ASSERT_TRUE((*q)->GetDeviceInfo().ok());
  ASSERT_TRUE((*q)->PopulateDevice().ok());
  ASSERT_TRUE((*q)->ConfigSetup().ok());
  QemuModel& m = **q;
  ASSERT_TRUE(m.ConfigWrite(pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster, 2).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDmaAddr, 0x10000, 4).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDmaAddr + 4, 0, 4).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDmaLen, 8192, 4).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDmaCmd, 1, 4).ok());  // guest -> shared area
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDoorbell, 2, 4).ok());
  auto st = m.BarRead(0, ExampleDevice::kStatus, 4);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(*st, 0u);
  EXPECT_GE(m.dma_requests_served(), 2u);
  EXPECT_EQ(std::memcmp(h.device().shared(), ram.bytes.data(), 8192), 0);
  // And back: shared area -> guest through DMA_WRITE.
  std::memset(ram.bytes.data(), 0, ram.bytes.size());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDmaCmd, 2, 4).ok());
  ASSERT_TRUE(m.BarWrite(0, ExampleDevice::kDoorbell, 2, 4).ok());
  st = m.BarRead(0, ExampleDevice::kStatus, 4);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, 0u);
  EXPECT_EQ(std::memcmp(h.device().shared(), ram.bytes.data(), 8192), 0);
}

// Limits a deployment might configure are brought within what QEMU accepts
// in the VERSION reply and needs for realize.
TEST(QemuRealizeTest, ConfiguredLimitsStayWithinWhatQemuAccepts) {
  SessionOptions o;
  o.max_data_xfer_size = 1024;   // below the 4 KiB config-space read
  o.max_dma_maps = 100000;       // above QEMU's 65535
  o.max_msg_fds = 64;            // above QEMU's 16
  ServerHarness h(o);
  auto q = QemuModel::Connect(h.path());
  ASSERT_TRUE(q.ok());
  GuestMemory mem;
  ASSERT_TRUE((*q)->Realize(mem.sections()).ok());
  EXPECT_EQ((*q)->server_caps().max_data_xfer_size, 4096u);
  EXPECT_EQ((*q)->server_caps().max_dma_maps, 65535u);
  EXPECT_EQ((*q)->server_caps().max_msg_fds, 16u);
  o.max_data_xfer_size = 1ull << 30;  // above QEMU's 64 MiB
  ServerHarness h2(o);
  auto q2 = QemuModel::Connect(h2.path());
  ASSERT_TRUE(q2.ok());
  ASSERT_TRUE((*q2)->ValidateVersion().ok());
  EXPECT_EQ((*q2)->server_caps().max_data_xfer_size, 64ull << 20);
}

// An AVF-shaped device: 64-bit prefetchable BAR0 (registers) and BAR3 (MSI-X
// table at 0, PBA at 0x2000), PCIe endpoint with FLR, no PM, no INTx, no
// mmap (so QEMU posts BAR writes), many vectors.
class AvfShapedDevice : public PciDevice {
 public:
  static constexpr uint32_t kVectors = 40;
  // `region0_size` != 64 KiB makes the region disagree with the BAR.
  explicit AvfShapedDevice(uint64_t region0_size = 64 << 10) : region0_size_(region0_size) {
    config_.SetHeader({.vendor_id = 0x8086, .device_id = 0x1889, .subsystem_vendor_id = 0x8086,
                       .revision = 1, .class_code = 0x020000});
    EXPECT_TRUE(config_.SetBar(0, 64 << 10, PciConfigSpace::BarType::kMem64, true).ok());
    EXPECT_TRUE(config_.SetBar(3, 16 << 10, PciConfigSpace::BarType::kMem64, true).ok());
    EXPECT_TRUE(config_.AddPcieCapability({}).ok());
    EXPECT_TRUE(config_.AddMsixCapability(&msix_, 3, 0, 3, 0x2000).ok());
  }
  std::vector<RegionDesc> Regions() const override {
    std::vector<RegionDesc> r(kNumPciRegions);
    for (uint32_t i = 0; i < kNumPciRegions; ++i) r[i].index = i;
    r[0].size = region0_size_;
    r[3].size = 16 << 10;
    r[kConfigRegion].size = config_.size();
    for (uint32_t i : {0u, 3u, uint32_t{kConfigRegion}}) r[i].readable = r[i].writable = true;
    return r;
  }
  std::vector<IrqDesc> Irqs() const override { return {IrqDesc{kMsixIrq, kVectors, true}}; }
  absl::Status RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out) override {
    if (region == kConfigRegion) return config_.Read(offset, out);
    if (region == 3 && offset >= 0x2000) {
      msix_.PbaRead(offset - 0x2000, out);
    } else if (region == 3) {
      msix_.TableRead(offset, out);
    } else {
      std::memcpy(out.data(), regs_.data() + offset, out.size());
    }
    return absl::OkStatus();
  }
  absl::Status RegionWrite(uint32_t region, uint64_t offset, absl::Span<const uint8_t> data) override {
    if (region == kConfigRegion) return config_.Write(offset, data);
    if (region == 3 && offset < 0x2000) msix_.TableWrite(offset, data);
    if (region == 0) {
      std::memcpy(regs_.data() + offset, data.data(), data.size());
      if (offset == 0 && data.size() == 4 && irqs_) {  // "doorbell": fire the vector written
        uint32_t v;
        std::memcpy(&v, data.data(), 4);
        irqs_->TriggerMsix(v);
      }
    }
    return absl::OkStatus();
  }
  void Attach(const DeviceContext& ctx) override {
    irqs_ = ctx.irqs;
    msix_.Attach(ctx.irqs);
  }
  void Detach() override {
    msix_.Detach();
    irqs_ = nullptr;
  }
  absl::Status Reset() override {
    config_.Reset();
    msix_.Reset();
    return absl::OkStatus();
  }
  void OnDmaUnmap(uint64_t, uint64_t) override {}
  absl::string_view RecordNamespace() const override { return "qemu_model"; }
  absl::Status Save(DeviceRecordWriter&) override { return absl::OkStatus(); }
  absl::Status Restore(const DeviceRecordReader&) override { return absl::NotFoundError("none"); }

 private:
  uint64_t region0_size_;
  PciConfigSpace config_{4096};
  MsixTable msix_{kVectors};
  std::vector<uint8_t> regs_ = std::vector<uint8_t>(64 << 10, 0);
  InterruptSink* irqs_ = nullptr;
};

class AvfShapedTest : public ::testing::Test {
 protected:
  explicit AvfShapedTest(uint64_t region0_size = 64 << 10) : device_(region0_size) {}
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    path_ = testing::UniqueSocketPath("qemu-avf");
    auto server = Server::Listen(path_, &device_, loop_.get(), SessionOptions{});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this] { (void)loop_->Run(); });
  }
  void TearDown() override {
    loop_->Stop();
    thread_.join();
  }
  AvfShapedDevice device_;
  std::unique_ptr<EventLoop> loop_;
  std::string path_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

TEST_F(AvfShapedTest, RealizesPostsWritesAndTakesVectorArraysInFdChunks) {
  auto q = QemuModel::Connect(path_);
  ASSERT_TRUE(q.ok());
  GuestMemory mem;
  ASSERT_TRUE((*q)->Realize(mem.sections()).ok());
  QemuModel& m = **q;
  EXPECT_TRUE(m.LintDevice().ok());
  EXPECT_TRUE(m.warnings().empty()) << Joined(m.warnings());
  EXPECT_TRUE(m.posted_writes());
  EXPECT_TRUE(m.bar_mem64(0));
  EXPECT_TRUE(m.bar_mem64(3));
  EXPECT_EQ(m.msix_entries(), AvfShapedDevice::kVectors);
  const uint8_t cap = 0x7c;  // after the 0x3c-byte PCIe capability at 0x40
  auto id = m.ConfigRead(cap, 1);
  ASSERT_TRUE(id.ok());
  ASSERT_EQ(*id, pci::kCapIdMsix);
  ASSERT_TRUE(m.ConfigWrite(cap + 2, pci::kMsixControlEnable, 2).ok());
  // vfio_enable_vectors with a sparse array: runs of valid fds and of -1,
  // each message at most max_msg_fds (16) fds.
  std::vector<UniqueFd> efds;
  std::vector<int> fds(AvfShapedDevice::kVectors, -1);
  for (uint32_t v = 0; v < AvfShapedDevice::kVectors; ++v) {
    if (v % 7 == 3) continue;
    efds.push_back(MakeEventfd());
    fds[v] = efds.back().get();
  }
  ASSERT_TRUE(m.MsixEnableVectors(fds).ok());
  // Posted doorbell writes fire each assigned vector; the ordering rule makes
  // a later read a barrier.
  for (uint32_t v = 0; v < AvfShapedDevice::kVectors; ++v) ASSERT_TRUE(m.BarWrite(0, 0, v, 4).ok());
  ASSERT_TRUE(m.BarRead(0, 4, 4).ok());
  size_t k = 0;
  for (uint32_t v = 0; v < AvfShapedDevice::kVectors; ++v) {
    if (fds[v] == -1) continue;
    EXPECT_EQ(DrainEventfd(efds[k++].get()), 1u) << "vector " << v;
  }
  // Vectors without an eventfd are pending in the server's PBA.
  auto pba = m.PbaRead(0);
  ASSERT_TRUE(pba.ok());
  uint64_t want = 0;
  for (uint32_t v = 0; v < AvfShapedDevice::kVectors; ++v) {
    if (fds[v] == -1) want |= 1ull << v;
  }
  EXPECT_EQ(*pba, want);
  ASSERT_TRUE(m.SystemReset().ok());
  EXPECT_TRUE(m.warnings().empty()) << Joined(m.warnings());
}

class MismatchedBarTest : public AvfShapedTest {
 protected:
  MismatchedBarTest() : AvfShapedTest(32 << 10) {}
};

TEST_F(MismatchedBarTest, LintCatchesARegionSmallerThanItsBar) {
  auto q = QemuModel::Connect(path_);
  ASSERT_TRUE(q.ok());
  GuestMemory mem;
  ASSERT_TRUE((*q)->Realize(mem.sections()).ok());  // QEMU itself does not notice
  absl::Status lint = (*q)->LintDevice();
  EXPECT_FALSE(lint.ok());
  EXPECT_NE(lint.message().find("BAR0 decodes 65536 bytes"), absl::string_view::npos) << lint;
}

}  // namespace
}  // namespace emud::vfio_user
