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
//
//   worker_bench --rr [--rr_gaps_us=1000,10000] [--rr_round_trips=500] [--rr_wait=poll]
//
// Request/response latency instead (light load): the guest sends one 64-byte
// frame, the worker loops it back, the guest waits for its RX descriptor
// (spinning on the ring, or with --rr_wait=irq on the queue's MSI-X eventfd
// and re-arming DYN_CTLN like NAPI), then pauses `gap` before the next one.
// Both doorbell modes in one run: "rr doorbell=D gap_us=G p50_us= p99_us=",
// "rr_ratio gap_us=G mmap/trap rtt ratio p50= p99=", and "rr_idle" (the
// worker's CPU while the same device is idle afterwards). With --rr_wait=irq
// the re-arm is a trapped write that wakes the worker, whose next poll also
// finds mapped tails: a stale interrupt (TX completion and RX share vector 1)
// then acts as a doorbell, as it would under Linux iavf; --rr_wait=poll is
// what measures the poll policy alone.
//
// With --napi (default) each configuration also runs an interrupt-driven
// guest, Linux NAPI style, interleaved with the polling one: it sleeps on
// the queue's MSI-X eventfd, polls the rings (budget 64 RX descriptors, as
// NAPI's weight), and when a poll did not use its budget re-arms the vector
// with a trapped VFINT_DYN_CTLN1 write (posted REGION_WRITE, as
// iavf_update_enable_itr does) before sleeping again. It prints "e2e_napi
// ..." and "interrupt-driven vs polling ... ratio=" (Mpps, same run) with
// the re-arm rate.
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
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "avf/regs.h"
#include "tests/bench/bench_frame.h"
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
ABSL_FLAG(int, guest_cpu, 0, "CPU of this (guest) process (-1: not pinned)");
ABSL_FLAG(int, worker_cpu, 1, "CPU of the worker (-1: not pinned)");
ABSL_FLAG(std::string, datapath_threads, "1",
          "worker --datapath-threads values; several (e.g. 1,2) are measured side by side, "
          "interleaved run by run");
ABSL_FLAG(bool, rr, false, "request/response latency mode (see the file comment)");
ABSL_FLAG(std::string, rr_gaps_us, "1000,10000", "pauses between round trips (microseconds)");
ABSL_FLAG(int, rr_round_trips, 500, "measured round trips per gap and doorbell mode");
ABSL_FLAG(std::string, rr_wait, "poll", "how the guest waits for the answer: poll or irq");
ABSL_FLAG(bool, napi, true,
          "also run the interrupt-driven (NAPI-style) guest and print interrupt-driven vs polling");
ABSL_FLAG(uint32_t, ring, 1024,
          "descriptors per ring, a power of two (1024 as the DPDK yardstick; Linux iavf's "
          "default is 512). With 2 KiB buffers it sets the buffer working set: ~3 MiB per lap "
          "at 1024, more than the CI machine's 2 MiB L2");

namespace emud::bench {
namespace {

uint32_t kRing = 1024;  // --ring
uint32_t kMask = 1023;

void Pin(int cpu) {
  if (cpu < 0) return;
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
  double rearms_per_s = 0;  // NAPI guest: DYN_CTLN re-arm writes
};

constexpr uint32_t kNapiBudget = 64;  // NAPI_POLL_WEIGHT

// Starts emud-worker on CPU --worker_cpu serving one bench device in `dir`
// (loopback backend, the given doorbell mode, queues and data-path threads,
// --persist_session passed on), pins this process to --guest_cpu and waits
// (up to 5 s) for the worker's socket. Returns the worker's pid.
pid_t StartWorker(const std::string& dir, const std::string& sock, const std::string& mode,
                  uint32_t nq, int threads) {
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
    if (threads != 1) args.insert(args.end(), {"--datapath-threads", std::to_string(threads)});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  Pin(absl::GetFlag(FLAGS_guest_cpu));
  for (int i = 0; i < 500 && !std::filesystem::exists(sock); ++i) usleep(10000);
  return pid;
}

Result RunOnce(const std::string& mode, uint32_t nq, uint32_t frame, double seconds, bool idle,
               int threads = 1, bool napi = false) {
  Result res;
  std::string dir = absl::StrCat("/dev/shm/emud-wbench-", getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::string sock = dir + "/w.sock";
  pid_t pid = StartWorker(dir, sock, mode, nq, threads);
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
    const uint32_t rx_budget = napi ? kNapiBudget : 256;
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
          if (++reaped == rx_budget) break;
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
    // NAPI: one poll of every queue; a poll that stayed under its budget
    // completes and re-arms the queue vectors (trapped DYN_CTLN1 writes,
    // iavf_update_enable_itr without an ITR change); then the guest sleeps
    // until a vector fires. A poll that used its budget polls again at once.
    uint64_t rearms = 0;
    guest::VfioUserBus* vbus = bus->get();
    auto napi_round = [&]() -> uint64_t {
      uint64_t got = round();
      if (got >= rx_budget * qs.size()) return got;
      for (uint32_t q = 0; q < qs.size(); ++q) {
        (void)vbus->Write32(avf::VfintDynCtln1(q), avf::kDynCtlIntena |
                                                       (avf::kItrIndexNone << avf::kDynCtlItrIndxShift));
        ++rearms;
      }
      // Sleep until a queue vector fires (vector q + 1 serves queue q); after
      // 5 ms without one, poll anyway (a lost interrupt shows as a low rate).
      bool woke = false;
      for (uint32_t q = 0; q < qs.size() && !woke; ++q) {
        auto n = vbus->WaitVector(q + 1, q == 0 ? absl::Milliseconds(5) : absl::ZeroDuration());
        woke = !n.ok() || *n > 0;
      }
      return got;
    };
    auto step = [&]() -> uint64_t { return napi ? napi_round() : round(); };
    using Clock = std::chrono::steady_clock;
    auto t0 = Clock::now();
    while (Clock::now() - t0 < std::chrono::milliseconds(200)) step();
    uint64_t pkts = 0;
    rearms = 0;
    auto start = Clock::now();
    auto end = start + std::chrono::duration<double>(seconds);
    Clock::time_point now;
    uint32_t it = 0;
    for (;;) {
      pkts += step();
      if ((++it & (napi ? 0 : 63)) == 0 && (now = Clock::now()) >= end) break;
    }
    const double elapsed = std::chrono::duration<double>(now - start).count();
    res.mpps = pkts / elapsed / 1e6;
    res.rearms_per_s = rearms / elapsed;
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

// ------------------------------------------------------- request/response
// One emud-worker (loopback backend, 1 queue pair) and the test guest, up and
// linked, for the request/response mode.
class RrDevice {
 public:
  ~RrDevice() {
    drv_.reset();
    if (map_ != nullptr) munmap(map_, map_size_);
    bus_.reset();
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  bool Start(const std::string& mode) {
    dir_ = absl::StrCat("/dev/shm/emud-wbench-rr-", getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    std::string sock = dir_ + "/w.sock";
    pid_ = StartWorker(dir_, sock, mode, 1, 1);
    guest::VfioUserBusOptions bo;
    bo.posted_writes = true;
    bo.memory_size = 16u << 20;
    auto bus = guest::VfioUserBus::Connect(sock, bo);
    if (!bus.ok()) {
      fprintf(stderr, "connect: %s\n", bus.status().ToString().c_str());
      return false;
    }
    bus_ = std::move(*bus);
    if (mode == "mmap") {
      auto ri = bus_->client().GetRegionInfo(0);
      if (!ri.ok() || !ri->fd.valid()) return false;
      for (auto& a : ri->sparse_areas) map_size_ = std::max<size_t>(map_size_, a.offset + a.size);
      void* m = mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_SHARED, ri->fd.get(),
                     off_t(ri->info.offset));
      if (m == MAP_FAILED) return false;
      map_ = m;
    }
    guest::DriverOptions dopt;
    dopt.max_queues = 1;
    dopt.ring_size = kRing;
    dopt.rx_buf_len = 2048;
    drv_ = std::make_unique<guest::IavfDriver>(bus_.get(), dopt);
    if (!drv_->Probe().ok() || !drv_->Init().ok() || !drv_->Open().ok()) {
      fprintf(stderr, "driver bring-up failed\n");
      return false;
    }
    return true;
  }

  pid_t pid() const { return pid_; }
  guest::VfioUserBus& bus() { return *bus_; }
  guest::IavfDriver& drv() { return *drv_; }
  volatile uint32_t* page() const { return static_cast<volatile uint32_t*>(map_); }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  std::unique_ptr<guest::VfioUserBus> bus_;
  std::unique_ptr<guest::IavfDriver> drv_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
};

struct RrResult {
  std::vector<double> rtt_us;  // sorted
  int lost = 0;
  double worker_cpu = -1;      // share of a core while the round trips ran
  double Pct(double p) const {
    if (rtt_us.empty()) return -1;
    size_t i = std::min(rtt_us.size() - 1, size_t(p * double(rtt_us.size())));
    return rtt_us[i];
  }
};

// `n` round trips of one 64-byte frame with `gap_us` between the answer and
// the next request (after `warmup` unmeasured ones).
RrResult RequestResponse(RrDevice& d, int gap_us, int n, int warmup, bool irq) {
  RrResult res;
  guest::IavfDriver& drv = d.drv();
  Doorbells db(&d.bus(), d.page());
  guest::Ring& tx = drv.tx_ring(0);
  guest::Ring& rx = drv.rx_ring(0);
  auto buf = d.bus().memory().Allocate(2048, 64);
  if (!buf.ok()) return res;
  constexpr uint32_t kLen = 60;
  FillUdpFrame(buf->host, kLen, drv.mac().data());
  uint8_t* txd = tx.desc.host;
  uint8_t* rxd = rx.desc.host;
  uint64_t tx_next = tx.next_to_use, rx_clean = rx.next_to_clean, rx_posted = rx.next_to_use;
  // Linux flavour: queue 0 on vector 1, re-armed through DYN_CTLN1(0) (trapped).
  const uint32_t vec = 1;
  const uint32_t rearm = avf::kDynCtlIntena | avf::kDynCtlItrIndxMask;
  using Clock = std::chrono::steady_clock;
  double c0 = 0;
  Clock::time_point w0;
  for (int i = 0; i < warmup + n; ++i) {
    if (i == warmup) {
      c0 = CpuSeconds(d.pid());
      w0 = Clock::now();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
    uint32_t idx = uint32_t(tx_next % kRing);
    uint64_t cmd = 0x1 | 0x2 | 0x4;  // EOP | RS | ICRC
    *reinterpret_cast<uint64_t*>(txd + idx * 16) = buf->iova;
    __atomic_store_n(reinterpret_cast<uint64_t*>(txd + idx * 16 + 8), cmd << 4 | uint64_t(kLen) << 34,
                     __ATOMIC_RELEASE);
    ++tx_next;
    auto t0 = Clock::now();
    db.Write(tx.tail_offset, uint32_t(tx_next % kRing));
    uint32_t ridx = uint32_t(rx_clean % kRing);
    auto* rqw1 = reinterpret_cast<uint64_t*>(rxd + ridx * 32 + 8);
    bool got = false;
    for (;;) {
      if (__atomic_load_n(rqw1, __ATOMIC_ACQUIRE) & 1) {
        got = true;
        break;
      }
      if (Clock::now() - t0 > std::chrono::seconds(1)) break;
      if (irq) {
        // NAPI: sleep on the vector, poll, re-arm (the re-arm is a trapped
        // register write in both doorbell modes).
        (void)d.bus().WaitVector(vec, absl::Milliseconds(100));
        if (__atomic_load_n(rqw1, __ATOMIC_ACQUIRE) & 1) {
          got = true;
        }
        (void)d.bus().Write32(avf::VfintDynCtln1(vec - 1), rearm);
        if (got) break;
      }
    }
    auto t1 = Clock::now();
    if (!got) {
      if (i >= warmup) ++res.lost;
      break;  // the ring positions are unknown now
    }
    if (i >= warmup) res.rtt_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    // Re-post the RX buffer (as the throughput loop does) and reap the TX slot.
    uint32_t u = uint32_t(rx_posted % kRing);
    const guest::DmaBuffer& b = rx.buffers[rx_posted % rx.buffers.size()];
    *reinterpret_cast<uint64_t*>(rxd + u * 32) = b.iova;
    *reinterpret_cast<uint64_t*>(rxd + u * 32 + 8) = 0;
    ++rx_posted;
    ++rx_clean;
    db.Write(rx.tail_offset, uint32_t(rx_posted % kRing));
  }
  res.worker_cpu = (CpuSeconds(d.pid()) - c0) / std::chrono::duration<double>(Clock::now() - w0).count();
  tx.next_to_use = uint32_t(tx_next % kRing);
  rx.next_to_clean = uint32_t(rx_clean % kRing);
  rx.next_to_use = uint32_t(rx_posted % kRing);
  std::sort(res.rtt_us.begin(), res.rtt_us.end());
  return res;
}

int MainRequestResponse() {
  std::vector<int> gaps;
  for (auto s : absl::StrSplit(absl::GetFlag(FLAGS_rr_gaps_us), ',')) gaps.push_back(std::stoi(std::string(s)));
  std::vector<std::string> modes = absl::StrSplit(absl::GetFlag(FLAGS_doorbells), ',');
  const bool irq = absl::GetFlag(FLAGS_rr_wait) == "irq";
  const char* wait = irq ? "irq" : "poll";
  const int n = absl::GetFlag(FLAGS_rr_round_trips);
  std::map<std::pair<std::string, int>, RrResult> results;
  for (const auto& mode : modes) {
    RrDevice d;
    if (!d.Start(mode)) return 1;
    for (int gap : gaps) {
      RrResult r = RequestResponse(d, gap, n, std::max(10, n / 20), irq);
      printf("rr doorbell=%s gap_us=%d wait=%s round_trips=%zu lost=%d p50_us=%.1f p90_us=%.1f "
             "p99_us=%.1f max_us=%.1f worker_cpu_percent=%.2f\n",
             mode.c_str(), gap, wait, r.rtt_us.size(), r.lost, r.Pct(0.5), r.Pct(0.9), r.Pct(0.99),
             r.rtt_us.empty() ? -1.0 : r.rtt_us.back(), r.worker_cpu * 100);
      fflush(stdout);
      results[{mode, gap}] = std::move(r);
    }
    if (absl::GetFlag(FLAGS_idle)) {
      // The same device idle afterwards (as --idle measures it: 0.5 s after
      // the last frame, for 3 s).
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      double c0 = CpuSeconds(d.pid());
      auto w0 = std::chrono::steady_clock::now();
      std::this_thread::sleep_for(std::chrono::seconds(3));
      double cpu = (CpuSeconds(d.pid()) - c0) /
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
      printf("rr_idle doorbell=%s worker_cpu_percent=%.3f\n", mode.c_str(), cpu * 100);
      fflush(stdout);
    }
  }
  for (int gap : gaps) {
    auto m = results.find({"mmap", gap});
    auto t = results.find({"trap", gap});
    if (m == results.end() || t == results.end() || t->second.rtt_us.empty() ||
        m->second.rtt_us.empty()) {
      continue;
    }
    printf("rr_ratio gap_us=%d wait=%s mmap/trap rtt ratio p50=%.2f p99=%.2f\n", gap, wait,
           m->second.Pct(0.5) / t->second.Pct(0.5), m->second.Pct(0.99) / t->second.Pct(0.99));
  }
  return 0;
}

int Main() {
  signal(SIGPIPE, SIG_IGN);
  kRing = absl::GetFlag(FLAGS_ring);
  if (kRing < 64 || kRing > 4096 || (kRing & (kRing - 1)) != 0) {
    fprintf(stderr, "--ring: a power of two in [64, 4096]\n");
    return 2;
  }
  kMask = kRing - 1;
  if (absl::GetFlag(FLAGS_rr)) return MainRequestResponse();
  std::vector<uint32_t> frames, queues;
  for (auto s : absl::StrSplit(absl::GetFlag(FLAGS_frames), ',')) frames.push_back(std::stoi(std::string(s)));
  for (auto s : absl::StrSplit(absl::GetFlag(FLAGS_queues), ',')) queues.push_back(std::stoi(std::string(s)));
  std::vector<std::string> modes = absl::StrSplit(absl::GetFlag(FLAGS_doorbells), ',');
  std::vector<int> threads;
  for (auto s : absl::StrSplit(absl::GetFlag(FLAGS_datapath_threads), ',')) {
    threads.push_back(std::stoi(std::string(s)));
  }
  for (const auto& mode : modes) {
    for (uint32_t nq : queues) {
      for (uint32_t f : frames) {
        const bool napi = absl::GetFlag(FLAGS_napi);
        std::vector<std::vector<double>> v(threads.size()), nv(threads.size()),
            ratio(threads.size()), rearm(threads.size());
        for (int i = 0; i < absl::GetFlag(FLAGS_repeats); ++i) {
          for (size_t t = 0; t < threads.size(); ++t) {
            v[t].push_back(
                RunOnce(mode, nq, f, absl::GetFlag(FLAGS_seconds), false, threads[t]).mpps);
            if (napi) {  // interleaved with the polling runs: same machine conditions
              Result r = RunOnce(mode, nq, f, absl::GetFlag(FLAGS_seconds), false, threads[t],
                                 /*napi=*/true);
              nv[t].push_back(r.mpps);
              rearm[t].push_back(r.rearms_per_s);
              ratio[t].push_back(v[t].back() > 0 ? r.mpps / v[t].back() : 0);
            }
          }
        }
        std::string persist = absl::GetFlag(FLAGS_persist_session);
        const char* ps = persist.empty() ? "default" : persist.c_str();
        for (size_t t = 0; t < threads.size(); ++t) {
          std::sort(v[t].begin(), v[t].end());
          // " threads=N" only when measuring thread counts (older parsers).
          std::string th = threads.size() > 1 || threads[t] != 1 ? absl::StrCat(" threads=", threads[t]) : "";
          printf("e2e doorbell=%s queues=%u frame=%u persist=%s%s ring=%u mpps min=%.3f "
                 "median=%.3f max=%.3f gbps_median=%.2f\n",
                 mode.c_str(), nq, f, ps, th.c_str(), kRing, v[t].front(), v[t][v[t].size() / 2],
                 v[t].back(), v[t][v[t].size() / 2] * f * 8 / 1e3);
          if (napi) {
            std::sort(nv[t].begin(), nv[t].end());
            std::sort(ratio[t].begin(), ratio[t].end());
            std::sort(rearm[t].begin(), rearm[t].end());
            printf("e2e_napi doorbell=%s queues=%u frame=%u persist=%s%s mpps min=%.3f median=%.3f "
                   "max=%.3f rearms_per_s_median=%.0f\n",
                   mode.c_str(), nq, f, ps, th.c_str(), nv[t].front(), nv[t][nv[t].size() / 2],
                   nv[t].back(), rearm[t][rearm[t].size() / 2]);
            printf("interrupt-driven vs polling doorbell=%s queues=%u frame=%u persist=%s%s ratio "
                   "min=%.3f median=%.3f max=%.3f\n",
                   mode.c_str(), nq, f, ps, th.c_str(), ratio[t].front(),
                   ratio[t][ratio[t].size() / 2], ratio[t].back());
          }
        }
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
