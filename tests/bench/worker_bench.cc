// End-to-end data-path benchmark: the test guest (IavfDriver over a real
// vfio-user connection, then a DPDK-style polling loop on its rings) in this
// process, emud-worker (loopback backend) in another, each pinned to its own
// CPU. Doorbells: trap (posted REGION_WRITEs, as QEMU sends them while no
// region is mmappable) or mmap (the guest stores into the mmapped tail page).
//
//   worker_bench --worker bazel-bin/dataplane/emud-worker
//
// Prints per configuration: "e2e doorbell=D queues=Q frame=F mpps min= median=
// max=", and with --idle the worker's CPU share while the link is up and idle.
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/guest/iavf_driver.h"
#include "tests/guest/vfio_user_bus.h"

ABSL_FLAG(std::string, worker, "bazel-bin/dataplane/emud-worker", "emud-worker binary");
ABSL_FLAG(std::string, frames, "64,512,1518", "frame sizes (bytes incl. 4-byte CRC)");
ABSL_FLAG(std::string, queues, "1,4", "queue pairs");
ABSL_FLAG(std::string, doorbells, "mmap,trap", "doorbell modes");
ABSL_FLAG(double, seconds, 1.5, "measured seconds per run");
ABSL_FLAG(int, repeats, 3, "runs per configuration");
ABSL_FLAG(bool, idle, true, "measure the worker's CPU while idle");
ABSL_FLAG(std::string, persist_session, "",
          "pass --persist-session=VALUE to the worker (true/false; empty: its default)");
ABSL_FLAG(int, guest_cpu, 0, "CPU of this (guest) process");
ABSL_FLAG(int, worker_cpu, 1, "CPU of the worker");
ABSL_FLAG(uint32_t, ring, 1024,
          "descriptors per ring, a power of two (1024 as the DPDK yardstick; Linux iavf's "
          "default is 512). With 2 KiB buffers it sets the buffer working set: ~3 MiB per lap "
          "at 1024, more than the CI machine's 2 MiB L2");

namespace emud::bench {
namespace {

uint32_t kRing = 1024;  // --ring
uint32_t kMask = 1023;

void Pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof(s), &s);
}

double CpuSeconds(pid_t pid) {
  FILE* f = fopen(absl::StrCat("/proc/", pid, "/schedstat").c_str(), "r");
  if (!f) return 0;
  unsigned long long ns = 0;
  if (fscanf(f, "%llu", &ns) != 1) ns = 0;
  fclose(f);
  return ns / 1e9;
}

// Tails straight into the mmapped doorbell page; everything else as the bus does.
class Doorbells {
 public:
  Doorbells(guest::VfioUserBus* bus, volatile uint32_t* page) : bus_(bus), page_(page) {}
  void Write(uint32_t off, uint32_t v) {
    if (page_ != nullptr) {
      __atomic_store_n(const_cast<uint32_t*>(&page_[off / 4]), v, __ATOMIC_RELEASE);
    } else {
      (void)bus_->Write32(off, v);  // posted REGION_WRITE
    }
  }

 private:
  guest::VfioUserBus* bus_;
  volatile uint32_t* page_;
};

// An IPv4/UDP frame of `len` bytes as testpmd's txonly builds them: valid
// IPv4 header checksum and lengths, UDP checksum 0 (none), so the device's
// RX checksum check verifies the IP header and reports L3L4P.
void FillUdpFrame(uint8_t* f, uint32_t len, const uint8_t* dst_mac) {
  std::memset(f, 0, len);
  std::memcpy(f, dst_mac, 6);
  f[6] = 0x02;
  f[11] = 0x02;
  f[12] = 0x08;  // IPv4
  uint8_t* ip = f + 14;
  const uint32_t ip_len = len - 14, udp_len = ip_len - 20;
  ip[0] = 0x45;
  ip[2] = uint8_t(ip_len >> 8);
  ip[3] = uint8_t(ip_len);
  ip[8] = 64;  // TTL
  ip[9] = 17;  // UDP
  const uint8_t addrs[8] = {198, 18, 0, 1, 198, 18, 0, 2};
  std::memcpy(ip + 12, addrs, 8);
  uint32_t sum = 0;
  for (int i = 0; i < 20; i += 2) sum += uint32_t(ip[i] << 8 | ip[i + 1]);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  ip[10] = uint8_t(~sum >> 8);
  ip[11] = uint8_t(~sum);
  uint8_t* udp = ip + 20;
  udp[0] = 0x04; udp[1] = 0xd2;  // 1234
  udp[2] = 0x16; udp[3] = 0x2e;  // 5678
  udp[4] = uint8_t(udp_len >> 8);
  udp[5] = uint8_t(udp_len);
}

struct Q {
  guest::Ring* tx;
  guest::Ring* rx;
  std::vector<guest::DmaBuffer> txbuf;
  uint64_t tx_next = 0, tx_clean = 0, rx_clean = 0, rx_posted = 0;
  uint64_t rx_tail_written = 0;  // rx_posted as last told to the device
  uint32_t rx_buf = 0;           // rx_posted % buffers.size(), kept incrementally
};

struct Result {
  double mpps = -1;
  double idle_cpu = -1;
};

Result RunOnce(const std::string& mode, uint32_t nq, uint32_t frame, double seconds, bool idle) {
  Result res;
  std::string dir = absl::StrCat("/dev/shm/emud-wbench-", getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::string sock = dir + "/w.sock";
  pid_t pid = fork();
  if (pid == 0) {
    Pin(absl::GetFlag(FLAGS_worker_cpu));
    std::string bin = absl::GetFlag(FLAGS_worker);
    std::string q = std::to_string(nq);
    std::vector<std::string> args = {bin,      "--device", "bench",      "--state-dir", dir,
                                     "--socket", sock,     "--mac",      "02:00:00:00:00:01",
                                     "--queues", q,        "--backend",  "loopback",
                                     "--doorbell", mode};
    std::string persist = absl::GetFlag(FLAGS_persist_session);
    if (!persist.empty()) args.push_back("--persist-session=" + persist);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  Pin(absl::GetFlag(FLAGS_guest_cpu));
  for (int i = 0; i < 500 && !std::filesystem::exists(sock); ++i) usleep(10000);
  {
    guest::VfioUserBusOptions bo;
    bo.posted_writes = true;
    bo.memory_size = 64u << 20;
    auto bus = guest::VfioUserBus::Connect(sock, bo);
    if (!bus.ok()) {
      fprintf(stderr, "connect: %s\n", bus.status().ToString().c_str());
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      return res;
    }
    volatile uint32_t* page = nullptr;
    void* map = nullptr;
    size_t map_size = 0;
    if (mode == "mmap") {
      auto ri = (*bus)->client().GetRegionInfo(0);
      if (ri.ok() && ri->fd.valid()) {
        for (auto& a : ri->sparse_areas) map_size = std::max<size_t>(map_size, a.offset + a.size);
        map = mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, ri->fd.get(),
                   off_t(ri->info.offset));
        if (map != MAP_FAILED) page = static_cast<volatile uint32_t*>(map);
      }
    }
    guest::DriverOptions dopt;
    dopt.max_queues = nq;
    dopt.ring_size = kRing;
    dopt.rx_buf_len = 2048;
    guest::IavfDriver drv(bus->get(), dopt);
    if (!drv.Probe().ok() || !drv.Init().ok() || !drv.Open().ok()) {
      fprintf(stderr, "driver bring-up failed\n");
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      return res;
    }
    Doorbells db(bus->get(), page);
    guest::GuestMemory& mem = (*bus)->memory();
    std::vector<Q> qs(drv.num_active_queues());
    uint32_t len = frame - 4;
    for (uint32_t q = 0; q < qs.size(); ++q) {
      qs[q].tx = &drv.tx_ring(q);
      qs[q].rx = &drv.rx_ring(q);
      qs[q].rx_posted = qs[q].rx->next_to_use;
      qs[q].rx_tail_written = qs[q].rx_posted;
      qs[q].rx_buf = uint32_t(qs[q].rx_posted % qs[q].rx->buffers.size());
      for (uint32_t i = 0; i < kRing; ++i) {
        auto b = mem.Allocate(2048, 64);
        if (!b.ok()) return res;
        FillUdpFrame(b->host, len, drv.mac().data());
        qs[q].txbuf.push_back(*b);
      }
    }
    auto round = [&]() -> uint64_t {
      uint64_t got = 0;
      for (uint32_t q = 0; q < qs.size(); ++q) {
        Q& g = qs[q];
        uint8_t* txd = g.tx->desc.host;
        while (g.tx_next - g.tx_clean >= 32) {
          uint32_t idx = uint32_t((g.tx_clean + 31) & kMask);
          uint64_t qw1 = __atomic_load_n(reinterpret_cast<uint64_t*>(txd + idx * 16 + 8),
                                         __ATOMIC_ACQUIRE);
          if ((qw1 & 0xF) != 0xF) break;
          g.tx_clean += 32;
        }
        if (g.tx_next - g.tx_clean + 64 <= kRing) {
          for (uint32_t k = 0; k < 32; ++k) {
            uint32_t idx = uint32_t((g.tx_next + k) & kMask);
            uint64_t cmd = 0x1 | 0x4 | (k == 31 ? 0x2 : 0);
            *reinterpret_cast<uint64_t*>(txd + idx * 16) = g.txbuf[idx].iova;
            *reinterpret_cast<uint64_t*>(txd + idx * 16 + 8) = cmd << 4 | uint64_t(len) << 34;
          }
          g.tx_next += 32;
          db.Write(g.tx->tail_offset, uint32_t(g.tx_next & kMask));
        }
        uint8_t* rxd = g.rx->desc.host;
        const uint32_t nbufs = uint32_t(g.rx->buffers.size());
        uint32_t reaped = 0;
        for (;;) {
          uint32_t idx = uint32_t(g.rx_clean & kMask);
          uint64_t qw1 = __atomic_load_n(reinterpret_cast<uint64_t*>(rxd + idx * 32 + 8),
                                         __ATOMIC_ACQUIRE);
          if (!(qw1 & 1)) break;
          ++got;
          // Re-post the buffer that sat in this slot (fixed slot->buffer map
          // since the ring keeps one slot empty: slot u gets buffer u % (N-1)).
          uint32_t u = uint32_t(g.rx_posted & kMask);
          const guest::DmaBuffer& b = g.rx->buffers[g.rx_buf];
          if (++g.rx_buf == nbufs) g.rx_buf = 0;
          *reinterpret_cast<uint64_t*>(rxd + u * 32) = b.iova;
          *reinterpret_cast<uint64_t*>(rxd + u * 32 + 8) = 0;
          ++g.rx_posted;
          ++g.rx_clean;
          if (++reaped == 256) break;
        }
        // The tail moves in steps of at least 32 re-posted buffers, as a
        // DPDK PMD's rx_free_thresh does (one doorbell, in trap mode one
        // posted REGION_WRITE, per 32 frames instead of per poll).
        if (g.rx_posted - g.rx_tail_written >= 32) {
          db.Write(g.rx->tail_offset, uint32_t(g.rx_posted & kMask));
          g.rx_tail_written = g.rx_posted;
        }
      }
      return got;
    };
    using Clock = std::chrono::steady_clock;
    auto t0 = Clock::now();
    while (Clock::now() - t0 < std::chrono::milliseconds(200)) round();
    uint64_t pkts = 0;
    auto start = Clock::now();
    auto end = start + std::chrono::duration<double>(seconds);
    Clock::time_point now;
    uint32_t it = 0;
    for (;;) {
      pkts += round();
      if ((++it & 63) == 0 && (now = Clock::now()) >= end) break;
    }
    res.mpps = pkts / std::chrono::duration<double>(now - start).count() / 1e6;
    if (idle) {
      auto d0 = Clock::now();
      // Drain the rings (reap what is in flight), then stay idle.
      while (Clock::now() - d0 < std::chrono::milliseconds(100)) {
        for (auto& g : qs) g.tx_next = g.tx_clean + kRing;  // stop posting TX
        round();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      double c0 = CpuSeconds(pid);
      auto w0 = Clock::now();
      std::this_thread::sleep_for(std::chrono::seconds(3));
      res.idle_cpu =
          (CpuSeconds(pid) - c0) / std::chrono::duration<double>(Clock::now() - w0).count();
    }
    if (map != nullptr && map != MAP_FAILED) munmap(map, map_size);
  }
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  std::filesystem::remove_all(dir);
  return res;
}

int Main() {
  signal(SIGPIPE, SIG_IGN);
  kRing = absl::GetFlag(FLAGS_ring);
  if (kRing < 64 || kRing > 4096 || (kRing & (kRing - 1)) != 0) {
    fprintf(stderr, "--ring: a power of two in [64, 4096]\n");
    return 2;
  }
  kMask = kRing - 1;
  std::vector<uint32_t> frames, queues;
  for (auto s : absl::StrSplit(absl::GetFlag(FLAGS_frames), ',')) frames.push_back(std::stoi(std::string(s)));
  for (auto s : absl::StrSplit(absl::GetFlag(FLAGS_queues), ',')) queues.push_back(std::stoi(std::string(s)));
  std::vector<std::string> modes = absl::StrSplit(absl::GetFlag(FLAGS_doorbells), ',');
  for (const auto& mode : modes) {
    for (uint32_t nq : queues) {
      for (uint32_t f : frames) {
        std::vector<double> v;
        for (int i = 0; i < absl::GetFlag(FLAGS_repeats); ++i) {
          v.push_back(RunOnce(mode, nq, f, absl::GetFlag(FLAGS_seconds), false).mpps);
        }
        std::sort(v.begin(), v.end());
        std::string persist = absl::GetFlag(FLAGS_persist_session);
        printf("e2e doorbell=%s queues=%u frame=%u persist=%s ring=%u mpps min=%.3f median=%.3f "
               "max=%.3f gbps_median=%.2f\n",
               mode.c_str(), nq, f, persist.empty() ? "default" : persist.c_str(), kRing, v.front(),
               v[v.size() / 2], v.back(), v[v.size() / 2] * f * 8 / 1e3);
        fflush(stdout);
      }
    }
  }
  if (absl::GetFlag(FLAGS_idle)) {
    for (const auto& mode : modes) {
      Result r = RunOnce(mode, 1, 64, 0.3, true);
      printf("e2e_idle doorbell=%s worker_cpu_percent=%.3f\n", mode.c_str(), r.idle_cpu * 100);
    }
  }
  return 0;
}

}  // namespace
}  // namespace emud::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return emud::bench::Main();
}
