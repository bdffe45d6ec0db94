// emud-worker as a process: the test guest connects over vfio-user (its RAM
// DMA-mapped by fd, MSI-X through eventfds), brings the AVF device up the
// Linux way and exchanges frames through the loopback backend, with trapped
// and with mapped doorbells. Also: the WorkerStatus record, bad flags, and
// a clean exit on SIGTERM.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "proto/worker_status.pb.h"
#include "state_store/record.h"
#include "state_store/state_dir.h"
#include "state_store/store.h"
#include "tests/guest/guest_datapath.h"
#include "tests/guest/iavf_driver.h"
#include "tests/guest/vfio_user_bus.h"

namespace emud {
namespace {

std::string WorkerBinary() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir ? srcdir : ".", "/emud/dataplane/emud-worker");
}

class Worker {
 public:
  Worker(const std::string& dir, const std::string& name, std::vector<std::string> extra,
         const std::string& mac = "02:00:00:00:00:07", const std::string& netns = "")
      : dir_(dir), name_(name), socket_(absl::StrCat(dir, "/", name, ".sock")) {
    std::vector<std::string> args = {WorkerBinary(), "--device", name,   "--state-dir", dir,
                                     "--socket",     socket_,   "--mac", mac,           "--queues",
                                     "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = fork();
    if (pid_ == 0) {
      if (!netns.empty()) {
        int fd = open(absl::StrCat("/var/run/netns/", netns).c_str(), O_RDONLY);
        if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) _exit(126);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Worker() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  bool WaitSocket() {
    for (int i = 0; i < 500; ++i) {
      if (std::filesystem::exists(socket_)) return true;
      usleep(10000);
    }
    return false;
  }
  // Exit status after SIGTERM.
  int Stop() {
    kill(pid_, SIGTERM);
    int st = 0;
    waitpid(pid_, &st, 0);
    pid_ = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  internal::WorkerStatus Status() {
    internal::WorkerStatus out;
    state_store::EnvOptions o;
    o.tables = {"status"};
    auto env = state_store::Env::Open(state_store::DeviceEnvDir(dir_, name_), o);
    if (!env.ok()) return out;
    state_store::RecordTable<internal::WorkerStatus> t("status");
    (void)(*env)->View([&](const state_store::ReadTxn& txn) {
      auto r = t.Get(txn, "worker");
      if (r.ok() && r->has_value()) out = **r;
      return absl::OkStatus();
    });
    return out;
  }
  // Polls the status record (written at most once a second) until `done`
  // holds, for up to 30 s; returns the last record read.
  internal::WorkerStatus WaitStatus(const std::function<bool(const internal::WorkerStatus&)>& done) {
    internal::WorkerStatus s = Status();
    for (absl::Time until = absl::Now() + absl::Seconds(30); !done(s) && absl::Now() < until;) {
      usleep(10000);
      s = Status();
    }
    return s;
  }
  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }

 private:
  std::string dir_, name_, socket_;
  pid_t pid_ = -1;
};

std::string TestDir() {
  const char* base = std::getenv("EMUD_TEST_TMPDIR");
  std::string d = absl::StrCat(base ? base : "/dev/shm", "/emud-worker-test-", getpid());
  std::filesystem::create_directories(d);
  return d;
}

// Writes QTX/QRX tails straight into the mmapped doorbell page of BAR0.
class MappedDoorbellBus : public guest::GuestBus {
 public:
  MappedDoorbellBus(guest::VfioUserBus* inner, volatile uint32_t* page) : in_(inner), page_(page) {}
  absl::StatusOr<uint32_t> Read32(uint32_t o) override { return in_->Read32(o); }
  absl::Status Write32(uint32_t o, uint32_t v) override {
    if (o < 0x2800 && (o < 0x1000 || o >= 0x2000)) {
      __atomic_store_n(const_cast<uint32_t*>(&page_[o / 4]), v, __ATOMIC_RELEASE);
      return absl::OkStatus();
    }
    return in_->Write32(o, v);
  }
  absl::Status ConfigRead(uint32_t o, absl::Span<uint8_t> out) override {
    return in_->ConfigRead(o, out);
  }
  absl::Status ConfigWrite(uint32_t o, absl::Span<const uint8_t> d) override {
    return in_->ConfigWrite(o, d);
  }
  absl::Status EnableMsix(uint32_t c) override { return in_->EnableMsix(c); }
  absl::Status DisableMsix() override { return in_->DisableMsix(); }
  absl::StatusOr<uint64_t> WaitVector(uint32_t v, absl::Duration t) override {
    return in_->WaitVector(v, t);
  }
  absl::Status DeviceReset() override { return in_->DeviceReset(); }
  void Sleep(absl::Duration d) override { in_->Sleep(d); }
  guest::GuestMemory& memory() override { return in_->memory(); }

 private:
  guest::VfioUserBus* in_;
  volatile uint32_t* page_;
};

void ExchangeFrames(guest::GuestBus* bus, Worker& w) {
  guest::DriverOptions dopt;
  dopt.ring_size = 128;
  guest::IavfDriver drv(bus, dopt);
  ASSERT_TRUE(drv.Probe().ok());
  ASSERT_TRUE(drv.Init().ok());
  ASSERT_TRUE(drv.Open().ok());
  ASSERT_TRUE(drv.link_up());
  guest::GuestDataPath gdp(&drv);
  std::mt19937 rng(3);
  std::vector<std::vector<uint8_t>> sent;
  for (size_t len : {60, 128, 1000, 1514}) {
    std::vector<uint8_t> f(len);
    for (auto& b : f) b = uint8_t(rng());
    std::copy(drv.mac().begin(), drv.mac().end(), f.begin());
    f[6] = 0x02;
    f[12] = 0x88;
    f[13] = 0xb5;
    sent.push_back(f);
    ASSERT_TRUE(gdp.Transmit(0, f).ok());
  }
  std::vector<guest::RxFrame> got;
  uint64_t rx_irqs = 0;
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (got.size() < sent.size() && absl::Now() < deadline) {
    auto n = bus->WaitVector(1, absl::Milliseconds(20));  // queue vector of pair 0
    if (n.ok()) rx_irqs += *n;
    for (uint32_t q = 0; q < drv.num_active_queues(); ++q) {
      auto r = gdp.Receive(q);
      ASSERT_TRUE(r.ok()) << r.status();
      got.insert(got.end(), r->begin(), r->end());
    }
  }
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_EQ(got[i].data, sent[i]) << i;
  // The frames may all have been taken by polling before the interrupt
  // (ITR-deferred) fired: it must still come.
  for (absl::Time until = absl::Now() + absl::Seconds(5); rx_irqs == 0 && absl::Now() < until;) {
    auto n = bus->WaitVector(1, absl::Milliseconds(50));
    if (n.ok()) rx_irqs += *n;
  }
  EXPECT_GT(rx_irqs, 0u) << "queue interrupt through the MSI-X eventfd";
  for (int i = 0; i < 100 && gdp.ReapTx(0) == 0; ++i) usleep(10000);
  auto st = drv.RequestStats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->tx_unicast, sent.size());
  EXPECT_EQ(st->rx_unicast, sent.size());
  // The status record shows the link and the counters (written <= 1/s).
  internal::WorkerStatus s = w.WaitStatus([](const internal::WorkerStatus& s) {
    return s.phase() == internal::WorkerStatus::LINK_UP && s.tx_size() > 0 && s.tx(0).packets() > 0;
  });
  EXPECT_EQ(s.phase(), internal::WorkerStatus::LINK_UP);
  ASSERT_GT(s.tx_size(), 0);
  EXPECT_EQ(s.tx(0).packets(), sent.size());
  ASSERT_TRUE(drv.Close().ok());
}

TEST(EmudWorker, RejectsBadFlags) {
  std::string dir = TestDir();
  Worker w(dir, "bad..", {"--queues", "99"});
  int st = 0;
  waitpid(w.pid(), &st, 0);
  EXPECT_TRUE(WIFEXITED(st));
  EXPECT_NE(WEXITSTATUS(st), 0);
  std::filesystem::remove_all(dir);
}

TEST(EmudWorker, TrappedDoorbellsLoopback) {
  std::string dir = TestDir();
  Worker w(dir, "wt", {"--backend", "loopback", "--doorbell", "trap"});
  ASSERT_TRUE(w.WaitSocket());
  // The worker listens first and publishes its status record after
  // (dataplane/worker.cc: listen, then status): wait for the record.
  internal::WorkerStatus st = w.Status();
  for (int i = 0; i < 500 && st.phase() == internal::WorkerStatus::PHASE_UNSPECIFIED; ++i) {
    usleep(10000);
    st = w.Status();
  }
  EXPECT_EQ(st.phase(), internal::WorkerStatus::LISTENING);
  EXPECT_EQ(st.pid(), w.pid());
  {
    guest::VfioUserBusOptions bo;
    bo.posted_writes = true;  // as QEMU sends them while nothing is mmappable
    auto bus = guest::VfioUserBus::Connect(w.socket(), bo);
    ASSERT_TRUE(bus.ok()) << bus.status();
    ExchangeFrames(bus->get(), w);
  }
  EXPECT_EQ(w.Stop(), 0);
  std::filesystem::remove_all(dir);
}

TEST(EmudWorker, MappedDoorbellsLoopback) {
  std::string dir = TestDir();
  Worker w(dir, "wm", {"--backend", "loopback", "--doorbell", "mmap"});
  ASSERT_TRUE(w.WaitSocket());
  {
    auto bus = guest::VfioUserBus::Connect(w.socket());
    ASSERT_TRUE(bus.ok()) << bus.status();
    auto ri = (*bus)->client().GetRegionInfo(0);
    ASSERT_TRUE(ri.ok()) << ri.status();
    ASSERT_TRUE(ri->fd.valid()) << "BAR0 doorbell page is mmappable";
    ASSERT_FALSE(ri->sparse_areas.empty());
    uint64_t size = 0;
    for (auto& a : ri->sparse_areas) size = std::max(size, a.offset + a.size);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, ri->fd.get(),
                   static_cast<off_t>(ri->info.offset));
    ASSERT_NE(p, MAP_FAILED);
    MappedDoorbellBus mbus(bus->get(), static_cast<volatile uint32_t*>(p));
    ExchangeFrames(&mbus, w);
    munmap(p, size);
  }
  EXPECT_EQ(w.Stop(), 0);
  std::filesystem::remove_all(dir);
}

std::vector<uint8_t> TestFrame(const std::array<uint8_t, 6>& dst, size_t len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> f(len);
  for (auto& b : f) b = uint8_t(rng());
  std::copy(dst.begin(), dst.end(), f.begin());
  f[6] = 0x02;
  f[12] = 0x88;
  f[13] = 0xb5;
  return f;
}

struct Guest {
  std::unique_ptr<guest::VfioUserBus> bus;
  std::unique_ptr<guest::IavfDriver> drv;
  std::unique_ptr<guest::GuestDataPath> gdp;
  absl::Status Up(const std::string& socket) {
    guest::VfioUserBusOptions bo;
    bo.posted_writes = true;
    auto b = guest::VfioUserBus::Connect(socket, bo);
    if (!b.ok()) return b.status();
    bus = std::move(*b);
    guest::DriverOptions d;
    d.ring_size = 128;
    drv = std::make_unique<guest::IavfDriver>(bus.get(), d);
    if (auto s = drv->Probe(); !s.ok()) return s;
    if (auto s = drv->Init(); !s.ok()) return s;
    if (auto s = drv->Open(); !s.ok()) return s;
    gdp = std::make_unique<guest::GuestDataPath>(drv.get());
    return absl::OkStatus();
  }
  std::vector<std::vector<uint8_t>> ReceiveN(size_t n, absl::Duration timeout) {
    std::vector<std::vector<uint8_t>> got;
    absl::Time deadline = absl::Now() + timeout;
    while (got.size() < n && absl::Now() < deadline) {
      (void)bus->WaitVector(1, absl::Milliseconds(10));
      (void)bus->WaitVector(2, absl::Milliseconds(1));
      for (uint32_t q = 0; q < drv->num_active_queues(); ++q) {
        auto r = gdp->Receive(q);
        if (!r.ok()) return got;
        for (auto& f : *r) got.push_back(std::move(f.data));
      }
    }
    return got;
  }
  ~Guest() {
    gdp.reset();
    drv.reset();
    bus.reset();
  }
};

TEST(EmudWorker, DmaUnmapMidTrafficIsCountedAndTrafficResumesAfterRemap) {
  std::string dir = TestDir();
  Worker w(dir, "du", {"--backend", "loopback", "--doorbell", "trap"});
  ASSERT_TRUE(w.WaitSocket());
  {
    Guest g;
    ASSERT_TRUE(g.Up(w.socket()).ok());
    guest::GuestMemory& mem = g.bus->memory();
    std::vector<std::vector<uint8_t>> sent;
    // The guest unmaps its RAM, then rings TX doorbells: the worker must
    // service the queue with its ring unmapped (counted, nothing written,
    // no crash). Ringing before the unmap would race the worker's servicing.
    ASSERT_TRUE(g.bus->client().DmaUnmap(mem.iova_base(), mem.size()).ok());
    for (uint32_t i = 0; i < 6; ++i) {
      sent.push_back(TestFrame(g.drv->mac(), 100 + 10 * i, i));
      ASSERT_TRUE(g.gdp->Transmit(0, sent.back()).ok());
    }
    // The worker serviced the doorbells while the ring was unmapped: wait
    // for it to say so before mapping again (a fixed sleep let a loaded
    // machine process the map first, and nothing was counted).
    internal::WorkerStatus unmapped = w.WaitStatus([](const internal::WorkerStatus& s) {
      return s.tx_size() > 0 && s.tx(0).errors() >= 1;
    });
    ASSERT_GT(unmapped.tx_size(), 0);
    ASSERT_GE(unmapped.tx(0).errors(), 1u) << "the unmapped ring was counted";
    EXPECT_EQ(unmapped.tx(0).packets(), 0u) << "nothing sent from an unmapped ring";
    EXPECT_EQ(kill(w.pid(), 0), 0) << "worker alive";
    // Map the same RAM again and ring the doorbell: the queued packets go.
    ASSERT_TRUE(g.bus->client().DmaMap(mem.fd(), 0, mem.iova_base(), mem.size()).ok());
    ASSERT_TRUE(g.bus->Write32(g.drv->tx_ring(0).tail_offset, g.drv->tx_ring(0).next_to_use).ok());
    auto got = g.ReceiveN(sent.size(), absl::Seconds(10));
    EXPECT_EQ(got, sent);
    internal::WorkerStatus s = w.WaitStatus([&](const internal::WorkerStatus& s) {
      return s.tx_size() > 0 && s.tx(0).packets() == sent.size();
    });
    ASSERT_GT(s.tx_size(), 0);
    EXPECT_EQ(s.tx(0).packets(), sent.size());
    EXPECT_GE(s.tx(0).errors(), 1u) << "the unmapped ring was counted";
  }
  EXPECT_EQ(w.Stop(), 0);
  std::filesystem::remove_all(dir);
}

TEST(EmudWorker, TwoWorkersJoinedByPeerExchangeFramesBothWays) {
  std::string dir = TestDir();
  Worker wa(dir, "pa", {"--backend", "peer:pb"}, "02:00:00:00:00:0a");
  Worker wb(dir, "pb", {"--backend", "peer:pa"}, "02:00:00:00:00:0b");
  ASSERT_TRUE(wa.WaitSocket());
  ASSERT_TRUE(wb.WaitSocket());
  {
    Guest a, b;
    ASSERT_TRUE(a.Up(wa.socket()).ok());
    ASSERT_TRUE(b.Up(wb.socket()).ok());
    std::vector<std::vector<uint8_t>> ab, ba;
    for (uint32_t i = 0; i < 8; ++i) {
      ab.push_back(TestFrame(b.drv->mac(), 64 + 180 * i, i));
      ASSERT_TRUE(a.gdp->Transmit(0, ab.back()).ok());
      ba.push_back(TestFrame(a.drv->mac(), 1514 - 150 * i, 50 + i));
      ASSERT_TRUE(b.gdp->Transmit(1, ba.back()).ok());
    }
    auto at_b = b.ReceiveN(ab.size(), absl::Seconds(10));
    auto at_a = a.ReceiveN(ba.size(), absl::Seconds(10));
    EXPECT_EQ(at_b, ab);
    EXPECT_EQ(at_a, ba);
  }
  EXPECT_EQ(wa.Stop(), 0);
  EXPECT_EQ(wb.Stop(), 0);
  std::filesystem::remove_all(dir);
}

// --datapath-threads 2: queue pair q is served by data-path thread q % 2,
// while the worker's main thread takes the trapped doorbells and the
// virtchnl requests. Frames go out on both TX queues at once; every one
// comes back (the order across queues is the threads'), and the device's
// counters add both threads' packets. Under --config=tsan this is the test
// of the worker's threads as a process (tools/sanitizers/BUILD.bazel).
TEST(EmudWorker, TwoDataPathThreadsServeBothQueuePairs) {
  std::string dir = TestDir();
  Worker w(dir, "dt", {"--backend", "loopback", "--doorbell", "trap", "--datapath-threads", "2"});
  ASSERT_TRUE(w.WaitSocket());
  {
    Guest g;
    ASSERT_TRUE(g.Up(w.socket()).ok());
    ASSERT_EQ(g.drv->num_active_queues(), 2u);
    std::vector<std::vector<uint8_t>> sent;
    for (uint32_t round = 0; round < 4; ++round) {
      for (uint32_t q = 0; q < 2; ++q) {
        sent.push_back(TestFrame(g.drv->mac(), 60 + 200 * round + 7 * q, 100 + 2 * round + q));
        ASSERT_TRUE(g.gdp->Transmit(q, sent.back()).ok());
      }
    }
    auto got = g.ReceiveN(sent.size(), absl::Seconds(20));
    std::sort(sent.begin(), sent.end());
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, sent);
    for (uint32_t q = 0; q < 2; ++q) {
      for (int i = 0; i < 100 && g.gdp->ReapTx(q) == 0; ++i) usleep(10000);
    }
    auto st = g.drv->RequestStats();
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->tx_unicast, sent.size());
    EXPECT_EQ(st->rx_unicast, sent.size());
  }
  EXPECT_EQ(w.Stop(), 0);
  std::filesystem::remove_all(dir);
}

TEST(EmudWorker, TapBackendInNetworkNamespace) {
  if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0) {
    GTEST_SKIP() << "needs root and /dev/net/tun";
  }
  std::string ns = absl::StrCat("emudwk", getpid());
  ASSERT_EQ(std::system(absl::StrCat("ip netns add ", ns).c_str()), 0);
  std::string dir = TestDir();
  {
    Worker w(dir, "tw", {"--backend", "tap:emudw0"}, "02:00:00:00:00:0c", ns);
    ASSERT_TRUE(w.WaitSocket());
    Guest g;
    ASSERT_TRUE(g.Up(w.socket()).ok());
    ASSERT_EQ(std::system(absl::StrCat("ip -n ", ns, " link set emudw0 up").c_str()), 0);
    UniqueFd orig(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
    UniqueFd nsfd(open(absl::StrCat("/var/run/netns/", ns).c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_EQ(setns(nsfd.get(), CLONE_NEWNET), 0);
    int ifindex = if_nametoindex("emudw0");
    UniqueFd ps(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(0x88b5)));
    setns(orig.get(), CLONE_NEWNET);
    ASSERT_GT(ifindex, 0);
    ASSERT_TRUE(ps.valid());
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(0x88b5);
    sll.sll_ifindex = ifindex;
    ASSERT_EQ(bind(ps.get(), reinterpret_cast<sockaddr*>(&sll), sizeof(sll)), 0);
    // Guest -> host kernel, byte for byte.
    auto out = TestFrame({0x02, 0xaa, 0, 0, 0, 1}, 1200, 9);
    ASSERT_TRUE(g.gdp->Transmit(0, out).ok());
    pollfd p{ps.get(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 5000), 1);
    std::vector<uint8_t> buf(2048);
    ssize_t len = recv(ps.get(), buf.data(), buf.size(), 0);
    buf.resize(len > 0 ? size_t(len) : 0);
    EXPECT_EQ(buf, out);
    // Host kernel -> guest RX ring.
    auto in = TestFrame(g.drv->mac(), 900, 10);
    ASSERT_EQ(sendto(ps.get(), in.data(), in.size(), 0, reinterpret_cast<sockaddr*>(&sll),
                     sizeof(sll)),
              ssize_t(in.size()));
    auto got = g.ReceiveN(1, absl::Seconds(10));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0], in);
  }
  EXPECT_EQ(std::system(absl::StrCat("ip netns del ", ns).c_str()), 0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace emud
