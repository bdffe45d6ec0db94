// Conformance: drives the real example_server binary (a separate process)
// through the client library over a real UNIX socket, with real memfds and
// eventfds, the way a VMM would: VERSION, GET_INFO, REGION_INFO for every
// region, IRQ_INFO, DMA map/unmap/remap, config space, region access, an
// interrupt observed on its eventfd, posted writes ordered before a read,
// disconnect and reconnect.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "vfio_user/client.h"
#include "vfio_user/examples/example_device.h"
#include "vfio_user/pci_config_space.h"
#include "vfio_user/qemu_model.h"
#include "vfio_user/test_harness.h"

extern char** environ;

namespace emud::vfio_user {
namespace {

using testing::DrainEventfd;
using testing::MakeEventfd;
using testing::MakeMemfd;

std::string ServerBinary() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  return std::string(srcdir ? srcdir : ".") + "/" + (ws ? ws : "emud") + "/vfio_user/examples/example_server";
}

class ServerProcess {
 public:
  // `extra` flags follow "--socket PATH" (the two-word spelling of the
  // README's `bazel run ... -- --socket PATH`).
  explicit ServerProcess(std::vector<std::string> extra = {}) {
    path_ = testing::UniqueSocketPath("conf");
    std::string bin = ServerBinary();
    ::unlink(path_.c_str());
    std::vector<std::string> args = {bin, "--socket", path_};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(::posix_spawn(&pid_, bin.c_str(), nullptr, nullptr, argv.data(), environ), 0) << bin;
    for (absl::Time until = absl::Now() + absl::Seconds(30); absl::Now() < until;) {
      struct stat st;
      if (::stat(path_.c_str(), &st) == 0) break;
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "server exit status " << status;
    }
  }
  const std::string& path() const { return path_; }
  std::unique_ptr<Client> Connect() {
    auto c = Client::Connect(path_);
    for (int i = 0; i < 200 && !c.ok(); ++i) {  // bound but not yet listening
      absl::SleepFor(absl::Milliseconds(10));
      c = Client::Connect(path_);
    }
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    (*c)->set_timeout(absl::Seconds(10));
    return std::move(*c);
  }

 private:
  std::string path_;
  pid_t pid_ = -1;
};

TEST(ConformanceTest, VmmLikeSessionAgainstExampleServer) {
  ServerProcess server;
  auto c = server.Connect();
  ASSERT_NE(c, nullptr);
  auto v = c->Version();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->major, 0);
  EXPECT_EQ(v->minor, 0);
  ASSERT_TRUE(v->had_json);
  EXPECT_LE(v->server_caps.max_msg_fds, 16u);

  auto info = c->GetInfo();
  ASSERT_TRUE(info.ok());
  ASSERT_GE(info->num_regions, 8u);
  ASSERT_LE(info->num_regions, 100u);
  ASSERT_LE(info->num_irqs, 50u);
  for (uint32_t i = 0; i < info->num_regions; ++i) {
    auto r = c->GetRegionInfo(i);
    ASSERT_TRUE(r.ok()) << "region " << i << ": " << r.status();
    if (r->info.flags & kRegionFlagMmap) {
      EXPECT_TRUE(r->fd.valid());
      EXPECT_FALSE(r->sparse_areas.empty());
    }
  }
  for (uint32_t i = 0; i < info->num_irqs; ++i) ASSERT_TRUE(c->GetIrqInfo(i).ok());

  // Config space: identity, capability list, MSI-X capability location.
  uint32_t id = *c->Read32(kConfigRegion, 0);
  EXPECT_EQ(id, 0x10f01b36u);
  uint8_t cap = 0;
  ASSERT_TRUE(c->RegionRead(kConfigRegion, pci::kCapPtr, absl::MakeSpan(&cap, 1)).ok());
  bool found_msix = false;
  for (int guard = 0; cap && guard < 16; ++guard) {
    uint8_t hdr[2];
    ASSERT_TRUE(c->RegionRead(kConfigRegion, cap, absl::MakeSpan(hdr, 2)).ok());
    if (hdr[0] == pci::kCapIdMsix) found_msix = true;
    cap = hdr[1];
  }
  EXPECT_TRUE(found_msix);
  // BAR sizing.
  ASSERT_TRUE(c->Write32(kConfigRegion, pci::kBar0, 0xffffffff).ok());
  EXPECT_EQ(*c->Read32(kConfigRegion, pci::kBar0), static_cast<uint32_t>(~(ExampleDevice::kBar0Size - 1)));
  ASSERT_TRUE(c->Write32(kConfigRegion, pci::kBar0, 0xfe000000).ok());
  uint16_t cmd = pci::kCommandMemory | pci::kCommandBusMaster;
  ASSERT_TRUE(c->RegionWrite(kConfigRegion, pci::kCommand, absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&cmd), 2)).ok());

  // Guest RAM in two windows; DMA map, unmap, remap.
  UniqueFd ram = MakeMemfd(4 << 20);
  ASSERT_TRUE(c->DmaMap(ram.get(), 0, 0, 2 << 20).ok());
  ASSERT_TRUE(c->DmaMap(ram.get(), 2 << 20, 0x100000000ull, 2 << 20).ok());
  EXPECT_EQ(StatusToErrno(c->DmaMap(ram.get(), 0, 0x1000, 0x1000)), EEXIST);
  ASSERT_TRUE(c->DmaUnmap(0x100000000ull, 2 << 20).ok());
  ASSERT_TRUE(c->DmaMap(ram.get(), 2 << 20, 0x100000000ull, 2 << 20).ok());
  uint8_t* guest = static_cast<uint8_t*>(::mmap(nullptr, 4 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, ram.get(), 0));
  ASSERT_NE(guest, MAP_FAILED);
  uint32_t sum = 0;
  for (int i = 0; i < 2048; ++i) {
    guest[(2 << 20) + 0x3000 + i] = static_cast<uint8_t>(i ^ 0x5a);
    sum += static_cast<uint8_t>(i ^ 0x5a);
  }

  // Interrupt: eventfd on MSI-X vector 0, fired by the device after its DMA.
  UniqueFd efd = MakeEventfd();
  int fd = efd.get();
  ASSERT_TRUE(c->SetIrqEventfds(kMsixIrq, 0, absl::MakeConstSpan(&fd, 1)).ok());
  ASSERT_TRUE(c->Write32(kBar0, ExampleDevice::kDmaAddr, 0x3000).ok());
  ASSERT_TRUE(c->Write32(kBar0, ExampleDevice::kDmaAddr + 4, 1).ok());
  ASSERT_TRUE(c->Write32(kBar0, ExampleDevice::kDmaLen, 2048).ok());
  ASSERT_TRUE(c->Write32(kBar0, ExampleDevice::kDmaCmd, 3).ok());
  ASSERT_TRUE(c->Write32(kBar0, ExampleDevice::kDoorbell, 2, /*posted=*/true).ok());
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  EXPECT_EQ(DrainEventfd(fd), 1u);
  EXPECT_EQ(*c->Read32(kBar0, ExampleDevice::kDmaResult), sum);

  // The mmapped BAR area is shared with the device.
  auto bar = c->GetRegionInfo(kBar0);
  ASSERT_TRUE(bar.ok());
  ASSERT_EQ(bar->sparse_areas.size(), 1u);
  uint8_t* area = static_cast<uint8_t*>(::mmap(nullptr, bar->sparse_areas[0].size, PROT_READ | PROT_WRITE,
                                               MAP_SHARED, bar->fd.get(), bar->info.offset + bar->sparse_areas[0].offset));
  ASSERT_NE(area, MAP_FAILED);
  ASSERT_TRUE(c->Write32(kBar0, ExampleDevice::kDmaCmd, 1).ok());  // guest -> shared area
  ASSERT_TRUE(c->Write32(kBar0, ExampleDevice::kDoorbell, 2).ok());
  EXPECT_EQ(std::memcmp(area, guest + (2 << 20) + 0x3000, 2048), 0);
  EXPECT_EQ(DrainEventfd(fd), 1u);  // the copy's completion interrupt
  ::munmap(area, bar->sparse_areas[0].size);

  // Posted writes are applied before a later read.
  uint32_t acc = 0;
  for (uint32_t i = 0; i < 1000; ++i) {
    ASSERT_TRUE(c->Write32(kBar0, ExampleDevice::kAdd, i, /*posted=*/true).ok());
    acc += i;
  }
  EXPECT_EQ(*c->Read32(kBar0, ExampleDevice::kAcc), acc);

  // Disconnect: the next client finds the device state, but no windows/irqs.
  c.reset();
  auto c2 = server.Connect();
  ASSERT_NE(c2, nullptr);
  ASSERT_TRUE(c2->Version().ok());
  EXPECT_EQ(*c2->Read32(kBar0, ExampleDevice::kAcc), acc);
  EXPECT_EQ(StatusToErrno(c2->DmaUnmap(0, 2 << 20)), ENOENT);
  ASSERT_TRUE(c2->Write32(kBar0, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 0u);
  ASSERT_TRUE(c2->DmaMap(ram.get(), 0, 0, 2 << 20).ok());
  // The interrupt raised while no eventfd was assigned stayed pending and is
  // delivered on assignment; then a fresh one.
  ASSERT_TRUE(c2->SetIrqEventfds(kMsixIrq, 0, absl::MakeConstSpan(&fd, 1)).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  ASSERT_TRUE(c2->Write32(kBar0, ExampleDevice::kDoorbell, 1).ok());
  EXPECT_EQ(DrainEventfd(fd), 1u);
  ASSERT_TRUE(c2->Reset().ok());
  EXPECT_EQ(*c2->Read32(kBar0, ExampleDevice::kAcc), 0u);
  ::munmap(guest, 4 << 20);
}

// What `qemu-system-x86_64 -device vfio-user-pci,socket=...` does to the
// binary (QemuModel: QEMU 10.1's realize sequence and reply checks), with and
// without crash-consistent persistence.
void QemuLikeSession(const std::string& path) {
  std::unique_ptr<QemuModel> q;
  for (int i = 0; i < 300 && !q; ++i) {
    auto c = QemuModel::Connect(path);
    if (c.ok()) {
      q = std::move(*c);
    } else {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  ASSERT_NE(q, nullptr);
  UniqueFd ram = MakeMemfd(1 << 20);
  const std::vector<QemuModel::Section> sections = {{0, 0xa0000, ram.get(), 0, false},
                                                    {0xc0000, 0x40000, ram.get(), 0xc0000, true},
                                                    {0xfffc0000, 0x40000, -1, 0, true}};
  ASSERT_TRUE(q->Realize(sections).ok());
  std::string warnings;
  for (const auto& w : q->warnings()) warnings += w + "; ";
  EXPECT_TRUE(q->warnings().empty()) << warnings;
  uint8_t cap = 0;
  for (uint8_t p = static_cast<uint8_t>(*q->ConfigRead(pci::kCapPtr, 1)); p;
       p = static_cast<uint8_t>(*q->ConfigRead(p + 1, 1))) {
    if (*q->ConfigRead(p, 1) == pci::kCapIdMsix) cap = p;
  }
  ASSERT_NE(cap, 0);
  ASSERT_TRUE(q->ConfigWrite(pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster, 2).ok());
  ASSERT_TRUE(q->ConfigWrite(cap + 2, pci::kMsixControlEnable, 2).ok());
  UniqueFd efd = MakeEventfd();
  ASSERT_TRUE(q->MsixVectorUse(0, efd.get()).ok());
  ASSERT_TRUE(q->BarWrite(0, ExampleDevice::kDoorbell, 1, 4).ok());
  pollfd p{efd.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  EXPECT_EQ(DrainEventfd(efd.get()), 1u);
  ASSERT_TRUE(q->SystemReset().ok());
  EXPECT_EQ(*q->BarRead(0, ExampleDevice::kIrqCount, 4), 0u);
  EXPECT_TRUE(q->warnings().empty());
}

TEST(ConformanceTest, QemuLikeClientAgainstTheBinary) {
  ServerProcess server;
  QemuLikeSession(server.path());
}

TEST(ConformanceTest, QemuLikeClientAgainstTheCrashConsistentBinary) {
  std::string dir = testing::UniqueSocketPath("conf-state") + ".d";
  {
    ServerProcess server({"--state_dir", dir, "--crash_consistent"});
    QemuLikeSession(server.path());
  }
  EXPECT_EQ(std::system(("rm -rf " + dir).c_str()), 0);
}

TEST(ConformanceTest, ServesAnInheritedConnectedSocketAndExitsWhenItCloses) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ASSERT_EQ(::fcntl(sv[1], F_SETFD, 0), 0);  // only the server end is inherited
  std::string bin = ServerBinary();
  std::string flag = "--fd=" + std::to_string(sv[1]);
  char* argv[] = {bin.data(), flag.data(), nullptr};
  pid_t pid;
  ASSERT_EQ(::posix_spawn(&pid, bin.c_str(), nullptr, nullptr, argv, environ), 0);
  ::close(sv[1]);
  auto c = Client::FromFd(UniqueFd(sv[0]));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Version().ok());
  EXPECT_EQ(*(*c)->Read32(kBar0, ExampleDevice::kId), ExampleDevice::kIdValue);
  c->reset();
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(ConformanceTest, AcceptsTheSpecsSocketPathSpelling) {
  std::string path = testing::UniqueSocketPath("conf-sp");
  std::string bin = ServerBinary();
  std::string flag = "--socket-path=" + path;
  char* argv[] = {bin.data(), flag.data(), nullptr};
  pid_t pid;
  ASSERT_EQ(::posix_spawn(&pid, bin.c_str(), nullptr, nullptr, argv, environ), 0);
  absl::StatusOr<std::unique_ptr<Client>> c = absl::UnavailableError("not yet");
  for (absl::Time until = absl::Now() + absl::Seconds(30); !c.ok() && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(10));
    c = Client::Connect(path);
  }
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->Version().ok());
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace emud::vfio_user
