// Chaos: the test guest (in this process: IavfDriver over vfio-user) runs
// continuous two-way traffic through emud + the real emud-worker (loopback
// backend: every TX frame comes back on RX, carrying a sequence number) plus
// control-path activity (GET_STATS, CONFIG_PROMISCUOUS_MODE, ADD/DEL_ETH_ADDR,
// DMA map/unmap of an extra window, a queue vector's eventfd replaced by
// SET_IRQS, register reads, interrupts), while a
// second thread SIGKILLs the worker at random instants (CHAOS_WORKER_KILLS,
// default 100) and emud (CHAOS_EMUD_KILLS, default 20). Two runs: trapped
// doorbells (posted REGION_WRITEs) with one queue pair, and mapped doorbells
// (the guest stores into the mmapped tail page, as under QEMU) with two.
//
// Checked (correctness only, never wall-clock times):
//  - the guest never sees a reset (VFGEN_RSTAT stays VFACTIVE, ARQLEN.ENABLE
//    stays set, no RESET_IMPENDING event, the watchdog finds nothing), and no
//    request fails or times out;
//  - every TX frame whose completion (DTYPE 0xF) the guest reaped came back on
//    RX (0 lost completions), and at the end every frame sent came back;
//  - duplicates (a burst re-sent by a successor) stay within a bounded
//    window per kill; traffic resumes after every kill;
//  - the fd store holds as many fds at the end as at the start, and the
//    worker's fd count is back where it was.
// Printed: kills, reattach p50/p99/max (SIGKILL -> first frame sent after the
// kill received by the guest), lost completions, worst duplicates per kill,
// fds held at start and end.
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "avf/regs.h"
#include "avf/virtchnl.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "tests/guest/guest_datapath.h"
#include "tests/guest/iavf_driver.h"
#include "tests/guest/vfio_user_bus.h"
#include "tests/integration/emud_harness.h"

namespace emud::testing {
namespace {

namespace v1 = emud::v1;

int EnvInt(const char* name, int def) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : def;
}

int64_t NowNs() { return absl::GetCurrentTimeNanos(); }

double FdStoreFds(EmudProcess& e, const std::string& dev) {
  auto body = HttpGet(e.metrics_url());
  if (!body.ok()) return -1;
  auto m = ParsePrometheus(*body);
  if (!m.ok()) return -1;
  auto it = m->find(absl::StrCat("emud_fdstore_fds{device=\"", dev, "\"}"));
  return it == m->end() ? -1 : it->second;
}

pid_t WorkerPid(EmudProcess& e, const std::string& dev) {
  auto d = GetDevice(e.stub(), dev);
  return d.ok() ? d->status().worker_pid() : 0;
}

std::string FdList(pid_t pid) {
  std::string out;
  std::string dir = absl::StrCat("/proc/", pid, "/fd");
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    char buf[256];
    ssize_t n = readlink(e.path().c_str(), buf, sizeof buf - 1);
    out += absl::StrCat(e.path().filename().string(), " -> ",
                        n > 0 ? std::string(buf, n) : "?", "\n");
  }
  return out;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5));
  return v[i];
}

constexpr uint16_t kEtherType = 0x88b5;
constexpr uint64_t kMagic = 0xc4a05c4a05c4a05cull;
constexpr uint32_t kWindow = 48;  // frames in flight (RX ring 256: never short of buffers)

// Kills every process still running with `state_dir` on its command line
// (workers outlive a failed test's emud).
struct ProcessReaper {
  std::string state_dir;
  ~ProcessReaper() {
    for (const auto& e : std::filesystem::directory_iterator("/proc")) {
      pid_t pid = std::atoi(e.path().filename().c_str());
      if (pid <= 0 || pid == getpid()) continue;
      FILE* f = std::fopen((e.path() / "cmdline").c_str(), "r");
      if (f == nullptr) continue;
      std::string cmd(4096, '\0');
      cmd.resize(std::fread(cmd.data(), 1, cmd.size(), f));
      std::fclose(f);
      for (char& c : cmd) c = c == '\0' ? ' ' : c;
      if (cmd.find(" " + state_dir + " ") != std::string::npos) ::kill(pid, SIGKILL);
    }
  }
};

struct ChaosConfig {
  const char* name;
  const char* doorbell;  // trap: posted REGION_WRITEs; mmap: stores into the mapped page
  uint32_t queues;
  // false: loopback (each TX frame comes back on RX). true: a TAP interface
  // in a network namespace of its own with an IPv4 address; the guest pings
  // it (ICMP echo requests) and the host kernel's echo replies come back.
  bool tap = false;
};

// Runs the test (and everything it starts: emud, workers) in a fresh network
// namespace, deleted at the end.
class ScopedNetns {
 public:
  absl::Status Enter() {
    name_ = absl::StrCat("emudchaos", ::getpid());
    orig_.reset(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
    if (!orig_.valid()) return absl::InternalError("open /proc/self/ns/net");
    if (std::system(absl::StrCat("ip netns add ", name_).c_str()) != 0) {
      return absl::InternalError("ip netns add (the TAP chaos run needs root)");
    }
    created_ = true;
    UniqueFd ns(::open(absl::StrCat("/var/run/netns/", name_).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns.valid() || ::setns(ns.get(), CLONE_NEWNET) != 0) {
      return absl::InternalError(absl::StrCat("setns: ", std::strerror(errno)));
    }
    entered_ = true;
    return Run("ip link set lo up");
  }
  absl::Status Run(const std::string& cmd) {
    if (std::system(cmd.c_str()) != 0) return absl::InternalError(absl::StrCat("failed: ", cmd));
    return absl::OkStatus();
  }
  ~ScopedNetns() {
    if (entered_) (void)::setns(orig_.get(), CLONE_NEWNET);
    if (created_ && std::system(absl::StrCat("ip netns del ", name_).c_str()) != 0) {
      std::fprintf(stderr, "ip netns del %s failed\n", name_.c_str());
    }
  }

 private:
  std::string name_;
  UniqueFd orig_;
  bool created_ = false, entered_ = false;
};

uint16_t InetChecksum(const uint8_t* p, size_t n) {
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i]) << 8 | p[i + 1];
  if (n & 1) sum += uint32_t(p[n - 1]) << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(~sum);
}

constexpr uint8_t kGuestIp[4] = {10, 77, 0, 2};
constexpr uint8_t kHostIp[4] = {10, 77, 0, 1};
constexpr uint16_t kIcmpId = 0x4d55;
constexpr size_t kIcmpPayload = 14 + 20 + 8;  // where seq and magic sit in a ping frame

class ChaosTest : public ::testing::TestWithParam<ChaosConfig> {};

TEST_P(ChaosTest, KillsDuringTrafficAreInvisibleToTheGuest) {
  const ChaosConfig cfg = GetParam();
  const uint32_t nq = cfg.queues;
  ScopedNetns netns;
  if (cfg.tap) {
    absl::Status s = netns.Enter();
    ASSERT_TRUE(s.ok()) << s;
  }
  const std::string kTap = "emudc0";
  const int worker_kills = EnvInt("CHAOS_WORKER_KILLS", 100);
  const int emud_kills = EnvInt("CHAOS_EMUD_KILLS", 20);
  const int upgrades = EnvInt("CHAOS_UPGRADES", 5);
  const std::string kDev = "chaos0";

  TempStateDir dir("chaos");
  EmudProcess::Options o;
  o.state_dir = dir.path() + "/state";
  o.worker_binary = Runfile("dataplane/emud-worker");
  // Kills come every few tens of ms: a worker that served that long counts
  // as healthy (restarted at once, no crash-loop verdict).
  o.extra_flags = {"--stop-workers-on-exit", "--stable-after=5ms",
                   "--restart-backoff-initial=5ms"};
  ProcessReaper reaper{o.state_dir};
  auto started = EmudProcess::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<EmudProcess> emud = std::move(*started);

  CommandResult c = emud->Emuctl({"create-device", "--type", "avf", "--name", kDev, "--queues",
                                  absl::StrCat(nq), "--doorbell", cfg.doorbell, "--backend",
                                  cfg.tap ? "tap:" + kTap : "loopback", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err << emud->Log();
  auto dev = GetDevice(emud->stub(), kDev);
  ASSERT_TRUE(dev.ok());
  // The host end: an address on the TAP, the guest as a static neighbour (the
  // guest answers no ARP), no IPv6 chatter; its MAC is the pings' destination.
  std::array<uint8_t, 6> host_mac{};
  if (cfg.tap) {
    // (Our netns's /proc/sys/net; absent when the kernel has no IPv6.)
    if (FILE* f = std::fopen(absl::StrCat("/proc/sys/net/ipv6/conf/", kTap, "/disable_ipv6").c_str(), "w")) {
      std::fputs("1", f);
      std::fclose(f);
    }
    for (const std::string& cmd : {
             absl::StrCat("ip link set ", kTap, " up"),
             absl::StrCat("ip addr add 10.77.0.1/24 dev ", kTap),
             absl::StrCat("ip neigh replace 10.77.0.2 lladdr ", dev->spec().mac(), " dev ", kTap,
                          " nud permanent")}) {
      absl::Status s = netns.Run(cmd);
      ASSERT_TRUE(s.ok()) << s;
    }
    UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, IFNAMSIZ, "%s", kTap.c_str());
    ASSERT_EQ(::ioctl(sock.get(), SIOCGIFHWADDR, &ifr), 0) << std::strerror(errno);
    std::memcpy(host_mac.data(), ifr.ifr_hwaddr.sa_data, 6);
  }
  const std::string socket_path = dev->spec().socket_path();

  guest::VfioUserBusOptions bopt;
  bopt.timeout = absl::Seconds(4);  // a lost reply shows as an error before the stall check
  bopt.map_sparse_areas = std::string(cfg.doorbell) == "mmap";
  auto bus = guest::VfioUserBus::Connect(socket_path, bopt);
  ASSERT_TRUE(bus.ok()) << bus.status();
  // mmap mode: the tails really are stores into the mapped page.
  ASSERT_EQ((*bus)->mapped_bytes() > 0, bopt.map_sparse_areas);
  guest::DriverOptions dopt;
  dopt.ring_size = 256;
  dopt.max_queues = nq;
  guest::IavfDriver drv(bus->get(), dopt);
  ASSERT_TRUE(drv.Probe().ok());
  ASSERT_TRUE(drv.Init().ok());
  ASSERT_TRUE(drv.Open().ok());
  ASSERT_TRUE(drv.link_up());
  ASSERT_EQ(drv.num_active_queues(), nq);
  guest::GuestDataPath gdp(&drv);

  // ---- guest-side bookkeeping (main thread only) ----
  uint64_t next_seq = 0;
  // Frame seq goes out on queue seq % nq; loopback returns it on that RX queue.
  std::vector<std::deque<uint64_t>> tx_fifo(nq);  // sent, completion not reaped (ring order)
  std::vector<int64_t> sent_ns;           // by seq
  std::vector<uint8_t> completed;         // by seq
  std::vector<uint16_t> received;         // by seq: times received
  uint64_t unique_received = 0;
  uint64_t errors = 0;
  std::vector<std::string> error_log;
  auto error = [&](const std::string& what) {
    ++errors;
    if (error_log.size() < 20) error_log.push_back(what);
  };

  // ---- kill coordination ----
  std::atomic<int64_t> kill_ns{0};        // last worker kill, 0 = none pending
  std::atomic<bool> resumed{true};
  std::atomic<bool> stop{false};
  std::vector<double> reattach_ms;        // main thread
  // Duplicates are charged to the latest chaos event (worker kill, upgrade or
  // emud kill: 'w', 'u', 'e'); none may come before the first.
  std::vector<uint32_t> dups_per_kill;    // main thread; duplicates after event i
  std::vector<char> event_kinds;          // main thread; kind of event i
  std::atomic<int> events{0};
  std::atomic<char> last_event_kind{0};
  int last_event_seen = 0;
  uint64_t dups_before_kills = 0;
  std::atomic<int> worker_killed{0}, emud_killed{0}, upgraded{0};
  std::atomic<uint64_t> frames_while_emud_down{0};
  std::atomic<bool> emud_down{false};
  std::string killer_error;

  double fds_start = FdStoreFds(*emud, kDev);
  pid_t first_worker = WorkerPid(*emud, kDev);
  ASSERT_GT(first_worker, 0);

  // Extra DMA window (map/unmap under chaos) backed by its own memfd.
  const uint64_t kExtraIova = 0x7f000000, kExtraSize = 1 << 20;
  int extra_fd = memfd_create("chaos-extra", MFD_CLOEXEC);
  ASSERT_GE(extra_fd, 0);
  ASSERT_EQ(ftruncate(extra_fd, kExtraSize), 0);
  bool extra_mapped = false;

  // Loopback: a raw frame carrying seq and magic. TAP: an ICMP echo request
  // from the guest's address to the host's, carrying the same.
  uint64_t other_frames = 0;
  auto make_frame = [&](uint64_t seq) {
    if (!cfg.tap) {
      std::vector<uint8_t> f(64, 0);
      std::copy(drv.mac().begin(), drv.mac().end(), f.begin());
      f[6] = 0x02;
      f[11] = 0x01;
      f[12] = kEtherType >> 8;
      f[13] = kEtherType & 0xff;
      std::memcpy(&f[14], &seq, 8);
      std::memcpy(&f[22], &kMagic, 8);
      return f;
    }
    std::vector<uint8_t> f(kIcmpPayload + 16, 0);
    std::copy(host_mac.begin(), host_mac.end(), f.begin());
    std::copy(drv.mac().begin(), drv.mac().end(), f.begin() + 6);
    f[12] = 0x08;
    uint8_t* ip = &f[14];
    const size_t ip_len = f.size() - 14;
    ip[0] = 0x45;
    ip[2] = uint8_t(ip_len >> 8);
    ip[3] = uint8_t(ip_len);
    ip[4] = uint8_t(seq >> 8);
    ip[5] = uint8_t(seq);
    ip[8] = 64;
    ip[9] = 1;  // ICMP
    std::memcpy(ip + 12, kGuestIp, 4);
    std::memcpy(ip + 16, kHostIp, 4);
    uint16_t c = InetChecksum(ip, 20);
    ip[10] = uint8_t(c >> 8);
    ip[11] = uint8_t(c);
    uint8_t* icmp = ip + 20;
    icmp[0] = 8;  // echo request
    icmp[4] = kIcmpId >> 8;
    icmp[5] = kIcmpId & 0xff;
    icmp[6] = uint8_t(seq >> 8);
    icmp[7] = uint8_t(seq);
    std::memcpy(icmp + 8, &seq, 8);
    std::memcpy(icmp + 16, &kMagic, 8);
    c = InetChecksum(icmp, ip_len - 20);
    icmp[2] = uint8_t(c >> 8);
    icmp[3] = uint8_t(c);
    return f;
  };
  auto is_echo_reply = [&](const std::vector<uint8_t>& f) {
    return f.size() >= kIcmpPayload && f[12] == 0x08 && f[13] == 0 && f[14 + 9] == 1 &&
           std::memcmp(&f[14 + 12], kHostIp, 4) == 0 && f[34] == 0 &&
           (uint16_t(f[38]) << 8 | f[39]) == kIcmpId;
  };
  auto send_frames = [&]() {
    uint32_t in_flight = uint32_t(next_seq - unique_received);
    for (int i = 0; i < 8 && in_flight < kWindow; ++i, ++in_flight) {
      uint64_t seq = next_seq;
      std::vector<uint8_t> f = make_frame(seq);
      const uint32_t q = uint32_t(seq % nq);
      absl::Status s = gdp.Transmit(q, f);
      if (absl::IsResourceExhausted(s)) break;
      if (!s.ok()) {
        error(absl::StrCat("transmit: ", s.ToString()));
        break;
      }
      ++next_seq;
      sent_ns.push_back(NowNs());
      completed.push_back(0);
      received.push_back(0);
      tx_fifo[q].push_back(seq);
    }
  };
  auto reap = [&]() -> bool {
    bool moved = false;
    for (uint32_t q = 0; q < nq; ++q) {
    uint32_t n = gdp.ReapTx(q);
    for (uint32_t i = 0; i < n && !tx_fifo[q].empty(); ++i) {
      completed[tx_fifo[q].front()] = 1;
      tx_fifo[q].pop_front();
      moved = true;
    }
    auto r = gdp.Receive(q);
    if (!r.ok()) {
      error(absl::StrCat("receive: ", r.status().ToString()));
      return moved;
    }
    for (const guest::RxFrame& f : *r) {
      uint64_t seq, magic;
      const size_t at = cfg.tap ? kIcmpPayload : 14;
      if (f.error) {
        error("RX frame with an error status");
        continue;
      }
      if (cfg.tap && !is_echo_reply(f.data)) {
        ++other_frames;  // the host kernel's own traffic
        continue;
      }
      if (f.data.size() < at + 16) {
        error("short RX frame");
        continue;
      }
      std::memcpy(&seq, &f.data[at], 8);
      std::memcpy(&magic, &f.data[at + 8], 8);
      if (magic != kMagic || seq >= next_seq) {
        error(absl::StrCat("RX frame with bad payload, seq ", seq));
        continue;
      }
      if (seq % nq != q) {
        error(absl::StrCat("frame ", seq, " sent on queue ", seq % nq, " came back on ", q));
        continue;
      }
      moved = true;
      if (received[seq]++ == 0) {
        ++unique_received;
      } else if (!dups_per_kill.empty()) {
        ++dups_per_kill.back();
      } else {
        ++dups_before_kills;
      }
      if (emud_down.load()) frames_while_emud_down.fetch_add(1);
      int64_t k = kill_ns.load();
      if (k != 0 && sent_ns[seq] > k) {
        reattach_ms.push_back(double(NowNs() - k) / 1e6);
        if (std::getenv("CHAOS_VERBOSE") != nullptr) std::printf("reattach %.2f ms at %ld us\n", reattach_ms.back(), long(NowNs() / 1000));
        kill_ns.store(0);
        resumed.store(true);
      }
    }
    }
    return moved;
  };
  // Queue q interrupts on vector q + 1 (misc on 0); wait on each in turn.
  uint32_t wait_turn = 0;
  auto wait_irq = [&](absl::Duration d) {
    (void)(*bus)->WaitVector(1 + wait_turn++ % nq, d / nq);
  };
  uint32_t op = 0;
  std::mt19937 rng(7);
  auto control_op = [&]() {
    switch (op++ % 8) {
      case 0: {
        auto st = drv.RequestStats();
        if (!st.ok()) error(absl::StrCat("GET_STATS: ", st.status().ToString()));
        break;
      }
      case 1:
      case 2: {
        avf::vc::PromiscInfo p{drv.vsi_id(), uint16_t(op % 2 ? avf::vc::kPromiscUnicast : 0)};
        auto r = drv.Exec(avf::vc::kOpConfigPromiscuousMode,
                          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&p), sizeof p));
        if (!r.ok() || r->v_retval != 0) error("CONFIG_PROMISCUOUS_MODE failed");
        break;
      }
      case 3:
      case 4: {
        uint8_t msg[4 + sizeof(avf::vc::EtherAddr)] = {};
        uint16_t vsi = drv.vsi_id(), n = 1;
        std::memcpy(msg, &vsi, 2);
        std::memcpy(msg + 2, &n, 2);
        avf::vc::EtherAddr a{{0x02, 0xc4, 0xa0, 0x5, 0, uint8_t(rng())}, 0, 0};
        a.addr[5] = 0x42;
        std::memcpy(msg + 4, &a, sizeof a);
        uint32_t v = (op % 2) ? avf::vc::kOpAddEthAddr : avf::vc::kOpDelEthAddr;
        auto r = drv.Exec(v, msg);
        if (!r.ok()) error(absl::StrCat("ETH_ADDR: ", r.status().ToString()));
        break;
      }
      case 5: {
        absl::Status s =
            extra_mapped
                ? (*bus)->client().DmaUnmap(kExtraIova, kExtraSize)
                : (*bus)->client().DmaMap(extra_fd, 0, kExtraIova, kExtraSize);
        if (!s.ok()) {
          error(absl::StrCat("DMA map/unmap: ", s.ToString()));
        } else {
          extra_mapped = !extra_mapped;
        }
        break;
      }
      case 6: {
        auto w = drv.Watchdog();
        if (!w.ok()) error(absl::StrCat("watchdog: ", w.status().ToString()));
        else if (*w) error("watchdog saw a reset");
        break;
      }
      case 7: {
        // QEMU swaps a vector's eventfd when the guest masks/unmasks it.
        const uint32_t v = 1 + uint32_t(op / 8) % nq;
        if (absl::Status st = (*bus)->ReplaceVectorEventfd(v); !st.ok()) {
          error(absl::StrCat("SET_IRQS (replace vector ", v, " eventfd): ", st.ToString()));
        }
        break;
      }
      default:
        break;
    }
    // Register reads every time: the guest must never see a reset.
    auto rstat = (*bus)->Read32(avf::kVfgenRstat);
    auto arq = (*bus)->Read32(avf::kVfArqlen1);
    if (!rstat.ok() || !arq.ok()) {
      error("register read failed");
    } else {
      if ((*rstat & avf::kRstatMask) != avf::kVfrVfActive) error("RSTAT left VFACTIVE");
      if (!(*arq & avf::kAqLenEnable)) error("ARQLEN.ENABLE dropped");
    }
    if (drv.reset_impending()) error("RESET_IMPENDING seen");
  };

  // Warm up: traffic flows before the first kill (an idle mmap-doorbell
  // worker polls slowly at first, so run until frames come back).
  for (absl::Time until = absl::Now() + absl::Seconds(5);
       unique_received < 1000 && absl::Now() < until;) {
    send_frames();
    reap();
    wait_irq(absl::Microseconds(200));
  }
  ASSERT_GT(unique_received, 0u) << "no traffic before the chaos";
  ASSERT_EQ(errors, 0u) << error_log[0];
  auto worker_fds_start = Measure(first_worker).fds;
  std::string fd_list_start = FdList(first_worker);
  auto emud_fds_start = Measure(emud->pid()).fds;

  // ---- the killer ----
  std::thread killer([&] {
    std::mt19937 r(12345);
    int wk = 0, ek = 0, up = 0;
    while (!stop.load() && (wk < worker_kills || ek < emud_kills || up < upgrades)) {
      absl::Time deadline = absl::Now() + absl::Seconds(10);
      while (!resumed.load() && !stop.load()) {
        if (absl::Now() > deadline) {
          killer_error = absl::StrCat("traffic did not resume within 10 s after worker kill ", wk);
          stop.store(true);
          return;
        }
        absl::SleepFor(absl::Microseconds(200));
      }
      absl::SleepFor(absl::Microseconds(2000 + r() % 30000));  // a random instant
      bool emud_turn = ek < emud_kills && (wk >= worker_kills || r() % 6 == 0);
      bool upgrade_turn = !emud_turn && up < upgrades && (wk >= worker_kills || r() % 20 == 0);
      if (upgrade_turn) {
        // emuctl upgrade-worker under traffic: the old worker stops (leaving
        // the session in the fd store), a new process takes it over.
        resumed.store(false);
        kill_ns.store(NowNs());
        last_event_kind.store('u');
        events.fetch_add(1);
        CommandResult u = emud->Emuctl({"upgrade-worker", kDev});
        if (u.exit_code != 0) {
          killer_error = absl::StrCat("upgrade-worker: ", u.err);
          stop.store(true);
          return;
        }
        ++up;
        upgraded.store(up);
      } else if (emud_turn) {
        double before = FdStoreFds(*emud, kDev);
        emud_down.store(true);
        last_event_kind.store('e');
        events.fetch_add(1);
        emud->Stop(SIGKILL);
        emud.reset();
        ++ek;
        emud_killed.store(ek);
        auto again = EmudProcess::Start(o);
        if (!again.ok()) {
          killer_error = absl::StrCat("emud restart: ", again.status().ToString());
          stop.store(true);
          return;
        }
        emud = std::move(*again);
        emud_down.store(false);
        // The worker reconnects and re-deposits; wait for it before the next
        // worker kill (a worker killed before that has no fds to inherit).
        if (!WaitFor([&] { return FdStoreFds(*emud, kDev) >= before && before > 0; },
                     absl::Seconds(10))) {
          killer_error = absl::StrCat("worker did not re-deposit after emud restart ", ek,
                                      " (had ", before, ", now ", FdStoreFds(*emud, kDev), ")");
          stop.store(true);
          return;
        }
      } else {
        pid_t pid = WorkerPid(*emud, kDev);
        if (pid <= 0) {
          killer_error = "no worker pid";
          stop.store(true);
          return;
        }
        resumed.store(false);
        kill_ns.store(NowNs());
        last_event_kind.store('w');
        events.fetch_add(1);
        ::kill(pid, SIGKILL);
        if (std::getenv("CHAOS_VERBOSE") != nullptr) std::printf("killed %d at %ld us\n", pid, long(kill_ns.load() / 1000));
        ++wk;
        worker_killed.store(wk);
      }
    }
  });

  // ---- the guest ----
  uint64_t rounds = 0;
  while (!stop.load() && (worker_killed.load() < worker_kills || emud_killed.load() < emud_kills ||
                          upgraded.load() < upgrades || !resumed.load())) {
    if (int e = events.load(); e != last_event_seen) {
      last_event_seen = e;
      dups_per_kill.push_back(0);
      event_kinds.push_back(last_event_kind.load());
    }
    send_frames();
    bool moved = reap();
    if (++rounds % 16 == 0) control_op();
    if (!moved) wait_irq(absl::Microseconds(500));
    if (errors > 0) break;
  }
  stop.store(true);
  killer.join();
  if (!killer_error.empty()) {
    uint64_t first_missing = 0;
    while (first_missing < next_seq && received[first_missing] != 0) ++first_missing;
    std::string diag = absl::StrCat(
        "sent ", next_seq, " received ", unique_received, " tx not reaped (queue 0) ", tx_fifo[0].size(),
        " first missing seq ", first_missing,
        first_missing < next_seq ? absl::StrCat(" (completed ", int(completed[first_missing]), ")")
                                 : "",
        "; TX ring use/clean ", drv.tx_ring(0).next_to_use, "/", drv.tx_ring(0).next_to_clean,
        " RX ring use/clean ", drv.rx_ring(0).next_to_use, "/", drv.rx_ring(0).next_to_clean);
    auto st = drv.RequestStats();
    if (st.ok()) {
      absl::StrAppend(&diag, "; stats tx ", st->tx_unicast, " rx ", st->rx_unicast, " rx_discards ",
                      st->rx_discards, " tx_discards ", st->tx_discards);
    }
    for (const auto& e : error_log) absl::StrAppend(&diag, "\nguest error: ", e);
    ADD_FAILURE() << killer_error << "\n" << diag << "\n" << (emud ? emud->Log() : "");
    if (pid_t w = emud ? WorkerPid(*emud, kDev) : 0; w > 0) ::kill(w, SIGKILL);
    return;
  }

  // Drain: no new frames; everything sent must complete and come back.
  if (extra_mapped) {
    ASSERT_TRUE((*bus)->client().DmaUnmap(kExtraIova, kExtraSize).ok());
    extra_mapped = false;
  }
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  auto tx_pending = [&] {
    for (const auto& f : tx_fifo) {
      if (!f.empty()) return true;
    }
    return false;
  };
  while ((unique_received < next_seq || tx_pending()) && absl::Now() < deadline) {
    if (!reap()) wait_irq(absl::Milliseconds(1));
  }
  control_op();
  // The ops cycle; if that last one mapped the extra window, unmap it so the
  // fd counts below compare like with like.
  if (extra_mapped) {
    ASSERT_TRUE((*bus)->client().DmaUnmap(kExtraIova, kExtraSize).ok());
    extra_mapped = false;
  }

  uint64_t lost = 0, missing = 0, dups_total = 0;
  for (uint64_t s = 0; s < next_seq; ++s) {
    if (completed[s] && received[s] == 0) ++lost;
    if (received[s] == 0) ++missing;
    if (received[s] > 1) dups_total += received[s] - 1;
  }
  uint32_t worst_dup = 0;
  std::map<char, uint32_t> worst_by_kind;
  for (size_t i = 0; i < dups_per_kill.size(); ++i) {
    worst_dup = std::max(worst_dup, dups_per_kill[i]);
    uint32_t& w = worst_by_kind[event_kinds[i]];
    w = std::max(w, dups_per_kill[i]);
  }

  // Fds: emud's store and the worker, after the guest's state is as at start.
  double fds_end = -1;
  WaitFor([&] { return (fds_end = FdStoreFds(*emud, kDev)) == fds_start; }, absl::Seconds(3));
  pid_t last_worker = WorkerPid(*emud, kDev);
  int worker_fds_end = Measure(last_worker).fds;
  int emud_fds_end = Measure(emud->pid()).fds;

  std::printf("chaos [%s: doorbell %s, %u queue pairs, %s]\n", cfg.name, cfg.doorbell, nq,
              cfg.tap ? "ping through a TAP in its own netns" : "loopback");
  std::printf("chaos: worst duplicates after a worker kill %u, an upgrade %u, an emud kill %u\n",
              worst_by_kind['w'], worst_by_kind['u'], worst_by_kind['e']);
  if (cfg.tap) std::printf("chaos: frames from the host kernel ignored %lu\n", (unsigned long)other_frames);
  std::printf(
      "chaos: worker kills %d, emud kills %d, upgrades %d, frames %lu (duplicates %lu), rounds "
      "%lu\n"
      "chaos: reattach (kills and upgrades) ms p50 %.2f p99 %.2f max %.2f (%zu samples)\n"
      "chaos: lost completions %lu, never received %lu, worst duplicates per kill %u\n"
      "chaos: frames moved while emud was down %lu\n"
      "chaos: fd store fds start %.0f end %.0f; worker /proc fds start %d end %d; emud /proc "
      "fds start %d end %d\n",
      worker_killed.load(), emud_killed.load(), upgraded.load(), (unsigned long)next_seq,
      (unsigned long)dups_total, (unsigned long)rounds, Percentile(reattach_ms, 0.5),
      Percentile(reattach_ms, 0.99), Percentile(reattach_ms, 1.0), reattach_ms.size(),
      (unsigned long)lost, (unsigned long)missing, worst_dup,
      (unsigned long)frames_while_emud_down.load(), fds_start, fds_end, worker_fds_start,
      worker_fds_end, emud_fds_start, emud_fds_end);
  std::fflush(stdout);

  EXPECT_EQ(dups_before_kills, 0u) << "duplicates before any chaos event";
  EXPECT_EQ(errors, 0u) << (error_log.empty() ? "" : error_log[0]);
  for (const auto& e : error_log) ADD_FAILURE() << e;
  EXPECT_EQ(worker_killed.load(), worker_kills);
  EXPECT_EQ(emud_killed.load(), emud_kills);
  EXPECT_EQ(upgraded.load(), upgrades);
  EXPECT_EQ(reattach_ms.size(), size_t(worker_kills + upgrades))
      << "traffic resumed after every kill and upgrade";
  EXPECT_EQ(lost, 0u) << "completed TX frames that never came back";
  EXPECT_EQ(missing, 0u) << "frames never delivered after the drain";
  // A successor re-sends at most the burst in flight (tx budget) per kill.
  EXPECT_LE(worst_dup, 256u);
  EXPECT_NE(last_worker, first_worker);
  EXPECT_EQ(fds_end, fds_start) << "fd store count";
  EXPECT_EQ(worker_fds_end, worker_fds_start)
      << "worker fds\nfirst worker:\n" << fd_list_start << "last worker:\n" << FdList(last_worker);
  if (std::getenv("CHAOS_VERBOSE") != nullptr) std::printf("%s\n", emud->Log().c_str());
  EXPECT_FALSE(drv.reset_impending());

  if (::testing::Test::HasFailure()) {
    std::string log = emud->Log();
    std::printf("emud log (tail):\n%s\n", log.substr(log.size() > 6000 ? log.size() - 6000 : 0).c_str());
  }
  ::close(extra_fd);
  emud->Stop(SIGTERM);
}

INSTANTIATE_TEST_SUITE_P(
    Doorbells, ChaosTest,
    ::testing::Values(ChaosConfig{"TrapOneQueue", "trap", 1}, ChaosConfig{"MmapTwoQueues", "mmap", 2},
                      ChaosConfig{"TapPing", "trap", 1, true}),
    [](const ::testing::TestParamInfo<ChaosConfig>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace emud::testing
