// Data-path benchmark of the AVF queue engines, cross-process.
//
// A guest process (a polling iavf-style driver: 1024-descriptor rings, RS
// every 32 descriptors, RX buffers re-posted in batches of 32) and a worker
// process (dataplane TxQueue/RxQueue + loopback backend + adaptive poller)
// share guest memory (a memfd, as DMA_MAP gives a worker) and the doorbell
// page, each pinned to its own CPU. Doorbells:
//   mmap  the guest stores tails into the shared doorbell page; the worker polls
//   trap  the guest also sends each tail write as a 40-byte posted message on
//         a UNIX socket (the size of a vfio-user REGION_WRITE); the worker
//         reads tails only from those messages and blocks on the socket when
//         idle
// Hot queue indices are persisted in a tmpfs file as the worker does
// (--persist=false uses anonymous memory: the persistence-overhead switch).
//
// Prints, per configuration, Mpps and Gbit/s over --repeats runs (min/median/
// max), the single-core memcpy bandwidth (in-cache working set and DRAM-sized)
// and the worker's CPU use while the guest is idle.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "dataplane/adaptive_poll.h"
#include "dataplane/backend.h"
#include "dataplane/queue_state.h"
#include "dataplane/queues.h"
#include "dataplane/simple_dma.h"
#include "tests/bench/bench_frame.h"

ABSL_FLAG(std::string, frames, "64,512,1518", "frame sizes (bytes incl. 4-byte CRC)");
ABSL_FLAG(std::string, queues, "1,4", "queue pairs");
ABSL_FLAG(std::string, doorbells, "mmap,trap", "doorbell modes");
ABSL_FLAG(double, seconds, 1.5, "measured seconds per run");
ABSL_FLAG(int, repeats, 3, "runs per configuration");
ABSL_FLAG(bool, persist, true, "hot queue state in a tmpfs file (false: anonymous memory)");
ABSL_FLAG(bool, memcpy, true, "measure memcpy bandwidth");
ABSL_FLAG(bool, idle, true, "measure worker CPU while idle (mmap and trap)");
ABSL_FLAG(int, guest_cpu, 0, "CPU of the guest process");
ABSL_FLAG(int, worker_cpu, 1, "CPU of the worker process");

namespace emud::dataplane {
namespace {

using ::emud::bench::FillUdpFrame;

constexpr uint32_t kRing = 1024;
constexpr uint32_t kBufSize = 2048;
constexpr uint64_t kIova = 0x10000000;
constexpr size_t kCtl = 4096;
constexpr size_t kDoorbellOff = 4096;
constexpr size_t kMemOff = 65536;
constexpr size_t kPerQueue = kRing * 16 + kRing * 32 + 2 * size_t{kRing} * kBufSize;
constexpr uint32_t kTrapMsg = 40;

struct Ctl {
  std::atomic<uint32_t> stop;
  std::atomic<uint32_t> worker_ready;
};

struct Layout {
  uint64_t tx_ring, rx_ring, tx_bufs, rx_bufs;  // IOVAs
};
Layout QueueLayout(uint32_t q) {
  uint64_t b = kIova + q * kPerQueue;
  return {b, b + kRing * 16, b + kRing * 16 + kRing * 32,
          b + kRing * 16 + kRing * 32 + size_t{kRing} * kBufSize};
}

void Pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof(s), &s);
}

// ------------------------------------------------------------- worker
struct Sink : FrameSink {
  RxQueue** rx;
  uint32_t* rx_tail;
  SimpleDmaMemory* dma;
  bool Deliver(uint16_t q, FrameView f) override {
    auto r = rx[q]->Deliver(f, rx_tail[q], *dma);
    if (r == RxQueue::DeliverResult::kNoBuffers) rx[q]->CountDrop();
    return r != RxQueue::DeliverResult::kNoBuffers;
  }
};

[[noreturn]] void RunWorker(uint8_t* shm, size_t mem_size, uint32_t nq, bool trap, int sock,
                            bool persist, int cpu) {
  Pin(cpu);
  Ctl* ctl = reinterpret_cast<Ctl*>(shm);
  volatile uint32_t* db = reinterpret_cast<volatile uint32_t*>(shm + kDoorbellOff);
  SimpleDmaMemory dma;
  dma.AddWindow(kIova, mem_size, shm + kMemOff);
  std::unique_ptr<QueueStateFile> state;
  std::string state_path = absl::StrCat("/dev/shm/emud-bench-", getpid(), ".queues");
  if (persist) {
    auto s = QueueStateFile::Open(state_path, nq);
    if (!s.ok()) _exit(3);
    state = std::move(*s);
  } else {
    state = QueueStateFile::Anonymous(nq);
  }
  std::vector<std::unique_ptr<TxQueue>> tx;
  std::vector<std::unique_ptr<RxQueue>> rx;
  RxQueue* rxp[kMaxQueues];
  uint32_t tx_tail[kMaxQueues] = {}, rx_tail[kMaxQueues] = {};
  for (uint32_t q = 0; q < nq; ++q) {
    Layout l = QueueLayout(q);
    tx.push_back(std::make_unique<TxQueue>(uint16_t(q), state->tx(q)));
    rx.push_back(std::make_unique<RxQueue>(uint16_t(q), state->rx(q)));
    if (!tx[q]->Configure(l.tx_ring, kRing).ok() || !tx[q]->SetEnabled(true).ok()) _exit(4);
    if (!rx[q]->Configure(l.rx_ring, kRing, kBufSize, 1518).ok() || !rx[q]->SetEnabled(true).ok()) {
      _exit(4);
    }
    rxp[q] = rx[q].get();
  }
  auto backend = MakeLoopbackBackend();
  Sink sink;
  sink.rx = rxp;
  sink.rx_tail = rx_tail;
  sink.dma = &dma;
  backend->set_sink(&sink);
  AdaptivePoller poller;
  ctl->worker_ready.store(1);
  uint8_t msgs[kTrapMsg * 256];
  size_t partial = 0;
  while (ctl->stop.load(std::memory_order_relaxed) == 0) {
    bool work = false;
    if (trap) {
      ssize_t n = ::recv(sock, msgs + partial, sizeof(msgs) - partial, MSG_DONTWAIT);
      if (n > 0) {
        size_t have = partial + size_t(n), i = 0;
        for (; i + kTrapMsg <= have; i += kTrapMsg) {
          uint32_t off, val;
          std::memcpy(&off, msgs + i + 24, 4);
          std::memcpy(&val, msgs + i + 32, 4);
          if (off < 0x2000) {
            tx_tail[(off / 4) % kMaxQueues] = val;
          } else {
            rx_tail[((off - 0x2000) / 4) % kMaxQueues] = val;
          }
        }
        partial = have - i;
        std::memmove(msgs, msgs + i, partial);
        work = true;
      }
    } else {
      for (uint32_t q = 0; q < nq; ++q) {
        tx_tail[q] = db[q];
        rx_tail[q] = db[0x800 + q];
      }
    }
    for (uint32_t q = 0; q < nq; ++q) {
      if (tx_tail[q] != tx[q]->head()) {
        auto r = tx[q]->Process(tx_tail[q], dma, *backend, 256);
        if (r.packets) work = true;
      }
    }
    int64_t t = poller.Next(work, !trap);
    if (t != 0) {
      if (trap) {
        pollfd p{sock, POLLIN, 0};
        ::poll(&p, 1, t < 0 ? 100 : int(t / 1'000'000));
      } else {
        timespec ts{0, long(t)};
        nanosleep(&ts, nullptr);
      }
    }
  }
  if (persist) unlink(state_path.c_str());
  _exit(0);
}

// ------------------------------------------------------------- guest

struct GuestQueue {
  Layout l;
  volatile uint64_t* txr;
  volatile uint64_t* rxr;
  uint64_t tx_next = 0, tx_clean = 0;  // free-running
  uint64_t rx_clean = 0, rx_posted = kRing - 1;
  uint64_t rx_packets = 0, rx_bytes = 0;
};

class Guest {
 public:
  Guest(uint8_t* shm, uint32_t nq, uint32_t frame_len, bool trap, int sock)
      : shm_(shm), nq_(nq), trap_(trap), sock_(sock), frame_len_(frame_len) {
    db_ = reinterpret_cast<volatile uint32_t*>(shm + kDoorbellOff);
    for (uint32_t q = 0; q < nq; ++q) {
      GuestQueue g;
      g.l = QueueLayout(q);
      g.txr = reinterpret_cast<volatile uint64_t*>(Host(g.l.tx_ring));
      g.rxr = reinterpret_cast<volatile uint64_t*>(Host(g.l.rx_ring));
      for (uint32_t i = 0; i < kRing; ++i) {
        uint8_t* f = Host(g.l.tx_bufs + uint64_t{i} * kBufSize);
        const uint8_t dst_mac[6] = {0x02, 0, 0, 0, 0, 1};
        FillUdpFrame(f, frame_len, dst_mac);
        g.txr[i * 2] = 0;
        g.txr[i * 2 + 1] = 0;
        g.rxr[i * 4] = g.l.rx_bufs + uint64_t{i} * kBufSize;
        g.rxr[i * 4 + 1] = 0;
      }
      q_.push_back(g);
      Doorbell(0x2000 + 4 * q, kRing - 1);
    }
  }
  uint8_t* Host(uint64_t iova) { return shm_ + kMemOff + (iova - kIova); }

  void Doorbell(uint32_t off, uint32_t val) {
    __atomic_store_n(const_cast<uint32_t*>(&db_[off / 4]), val, __ATOMIC_RELEASE);
    if (trap_) {
      uint8_t m[kTrapMsg] = {};
      std::memcpy(m + 24, &off, 4);
      std::memcpy(m + 32, &val, 4);
      ssize_t n = ::send(sock_, m, sizeof(m), MSG_NOSIGNAL);
      (void)n;
    }
  }

  // One polling round over every queue; returns packets received.
  uint64_t Round() {
    uint64_t got = 0;
    for (uint32_t q = 0; q < nq_; ++q) {
      GuestQueue& g = q_[q];
      // Reap TX: RS every 32nd descriptor.
      while (g.tx_next - g.tx_clean >= 32) {
        uint32_t idx = uint32_t((g.tx_clean + 31) % kRing);
        if ((__atomic_load_n(const_cast<uint64_t*>(&g.txr[idx * 2 + 1]), __ATOMIC_ACQUIRE) &
             0xF) != 0xF) {
          break;
        }
        g.tx_clean += 32;
      }
      // Post TX in bursts of 32.
      uint64_t inflight = g.tx_next - g.tx_clean;
      if (inflight + 32 <= kRing - 32) {
        for (uint32_t k = 0; k < 32; ++k) {
          uint32_t idx = uint32_t((g.tx_next + k) % kRing);
          g.txr[idx * 2] = g.l.tx_bufs + uint64_t{idx} * kBufSize;
          uint32_t cmd = txd::kCmdEop | (k == 31 ? txd::kCmdRs : 0);
          __atomic_store_n(const_cast<uint64_t*>(&g.txr[idx * 2 + 1]),
                           txd::DataQw1(cmd, 0, frame_len_), __ATOMIC_RELAXED);
        }
        g.tx_next += 32;
        Doorbell(4 * q, uint32_t(g.tx_next % kRing));
      }
      // Reap RX, re-post in batches of 32.
      uint32_t reaped = 0;
      for (;;) {
        uint32_t idx = uint32_t(g.rx_clean % kRing);
        uint64_t qw1 =
            __atomic_load_n(const_cast<uint64_t*>(&g.rxr[idx * 4 + 1]), __ATOMIC_ACQUIRE);
        if (!(qw1 & rxd::kDd)) break;
        g.rx_bytes += rxd::Len(qw1);
        ++g.rx_packets;
        ++got;
        g.rxr[idx * 4] = g.l.rx_bufs + uint64_t{idx} * kBufSize;
        g.rxr[idx * 4 + 1] = 0;
        ++g.rx_clean;
        if (++reaped == 256) break;
      }
      if (g.rx_clean + kRing - 1 - g.rx_posted >= 32) {
        g.rx_posted = g.rx_clean + kRing - 1;
        Doorbell(0x2000 + 4 * q, uint32_t(g.rx_posted % kRing));
      }
    }
    return got;
  }

 private:
  uint8_t* shm_;
  uint32_t nq_;
  bool trap_;
  int sock_;
  uint32_t frame_len_;
  volatile uint32_t* db_;
  std::vector<GuestQueue> q_;
};

// CPU time of `pid` in seconds, ns resolution (/proc/PID/schedstat).
double CpuSeconds(pid_t pid) {
  FILE* f = fopen(absl::StrCat("/proc/", pid, "/schedstat").c_str(), "r");
  if (!f) return 0;
  unsigned long long ns = 0;
  if (fscanf(f, "%llu", &ns) != 1) ns = 0;
  fclose(f);
  return ns / 1e9;
}

struct RunResult {
  double mpps = 0;
  double idle_cpu = -1;  // fraction of a core
};

RunResult RunOnce(uint32_t nq, uint32_t frame, bool trap, double seconds, bool persist,
                  bool measure_idle) {
  size_t mem = nq * kPerQueue;
  size_t total = kMemOff + mem;
  int fd = memfd_create("emud-bench-guest", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, off_t(total)) != 0) return {};
  uint8_t* shm =
      static_cast<uint8_t*>(mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);
  std::memset(shm, 0, kMemOff);
  int sv[2] = {-1, -1};
  if (trap) socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
  uint32_t frame_len = frame - 4;  // without CRC, as testpmd's --txpkts
  Guest guest(shm, nq, frame_len, trap, sv[0]);
  pid_t pid = fork();
  if (pid == 0) RunWorker(shm, mem, nq, trap, sv[1], persist, absl::GetFlag(FLAGS_worker_cpu));
  Pin(absl::GetFlag(FLAGS_guest_cpu));
  Ctl* ctl = reinterpret_cast<Ctl*>(shm);
  while (ctl->worker_ready.load() == 0) std::this_thread::yield();
  using Clock = std::chrono::steady_clock;
  // Warm up, then measure.
  auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::milliseconds(200)) guest.Round();
  uint64_t pkts = 0;
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  Clock::time_point now;
  uint32_t it = 0;
  for (;;) {
    pkts += guest.Round();
    if ((++it & 63) == 0 && (now = Clock::now()) >= end) break;
  }
  double secs = std::chrono::duration<double>(now - start).count();
  RunResult r;
  r.mpps = pkts / secs / 1e6;
  if (measure_idle) {
    // Drain, then leave the device idle (queues running, nothing posted).
    auto d0 = Clock::now();
    while (Clock::now() - d0 < std::chrono::milliseconds(100)) guest.Round();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    double c0 = CpuSeconds(pid);
    auto w0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(2));
    double c1 = CpuSeconds(pid);
    r.idle_cpu = (c1 - c0) / std::chrono::duration<double>(Clock::now() - w0).count();
  }
  ctl->stop.store(1);
  if (trap) {
    uint8_t m[kTrapMsg] = {};
    ssize_t n = ::send(sv[0], m, sizeof(m), MSG_NOSIGNAL);  // wake a blocked worker
    (void)n;
  }
  int status;
  waitpid(pid, &status, 0);
  if (trap) {
    close(sv[0]);
    close(sv[1]);
  }
  munmap(shm, total);
  return r;
}

double MemcpyGBps(size_t working_set, double seconds) {
  std::vector<uint8_t> a(working_set / 2, 1), b(working_set / 2, 2);
  using Clock = std::chrono::steady_clock;
  size_t bytes = 0;
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  Clock::time_point now;
  do {
    std::memcpy(b.data(), a.data(), a.size());
    bytes += a.size();
    asm volatile("" : : "r"(b.data()) : "memory");
  } while ((now = Clock::now()) < end);
  return bytes / std::chrono::duration<double>(now - start).count() / 1e9;
}

// Copies len bytes with non-temporal stores for every whole 64-byte line of
// a 64-byte-aligned dst (no read-for-ownership of the RX buffer's lines; they
// go to memory, not to the copying core's cache), the rest with memcpy.
__attribute__((target("avx512f"))) void CopyNonTemporalAvx512(uint8_t* dst, const uint8_t* src,
                                                               uint32_t len) {
  uint32_t lines = len / 64;
  for (uint32_t i = 0; i < lines; ++i) {
    __m512i v = _mm512_loadu_si512(src + size_t{i} * 64);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + size_t{i} * 64), v);
  }
  std::memcpy(dst + size_t{lines} * 64, src + size_t{lines} * 64, len - lines * 64);
}
void CopyNonTemporalSse2(uint8_t* dst, const uint8_t* src, uint32_t len) {
  uint32_t chunks = len / 16;
  for (uint32_t i = 0; i < chunks; ++i) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + size_t{i} * 16));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + size_t{i} * 16), v);
  }
  std::memcpy(dst + size_t{chunks} * 16, src + size_t{chunks} * 16, len - chunks * 16);
}

// The copy a 1518-B frame costs between buffers laid out as the rings lay
// them out: `bufs` TX buffers and `bufs` RX buffers of kBufSize, each frame
// copied from the next TX buffer into the next RX buffer. With 1024-entry
// rings that is ~3 MiB of buffers touched per lap: more than one core's L2
// on the CI machine (2 MiB), so this is the floor a device pays per frame
// however little else it does. non_temporal: the copy with streaming stores
// instead of glibc's memcpy (what the floor would be if the device gave up
// leaving the frame in cache for the guest that reads it next). ns per frame.
double MemcpyFramesNs(uint32_t bufs, uint32_t len, double seconds, bool non_temporal = false) {
  std::vector<uint8_t> src(size_t{bufs} * kBufSize + 64, 1), dst(size_t{bufs} * kBufSize + 64, 2);
  uint8_t* d = dst.data() + (64 - reinterpret_cast<uintptr_t>(dst.data()) % 64) % 64;
  const uint8_t* sp = src.data();
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  using Clock = std::chrono::steady_clock;
  uint64_t frames = 0;
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  Clock::time_point now;
  do {
    for (uint32_t i = 0; i < bufs; ++i) {
      uint8_t* to = d + size_t{i} * kBufSize;
      const uint8_t* from = sp + size_t{i} * kBufSize;
      if (!non_temporal) {
        std::memcpy(to, from, len);
      } else if (avx512) {
        CopyNonTemporalAvx512(to, from, len);
      } else {
        CopyNonTemporalSse2(to, from, len);
      }
      asm volatile("" : : "r"(d) : "memory");
    }
    if (non_temporal) _mm_sfence();
    frames += bufs;
  } while ((now = Clock::now()) < end);
  return std::chrono::duration<double, std::nano>(now - start).count() / double(frames);
}

struct Stat {
  double min, med, max;
};
Stat Summ(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2], v.back()};
}

int Main() {
  signal(SIGPIPE, SIG_IGN);
  std::vector<uint32_t> frames, queues;
  for (auto s : absl::StrSplit(absl::GetFlag(FLAGS_frames), ',')) frames.push_back(std::stoi(std::string(s)));
  for (auto s : absl::StrSplit(absl::GetFlag(FLAGS_queues), ',')) queues.push_back(std::stoi(std::string(s)));
  std::vector<std::string> modes = absl::StrSplit(absl::GetFlag(FLAGS_doorbells), ',');
  const int repeats = absl::GetFlag(FLAGS_repeats);
  const bool persist = absl::GetFlag(FLAGS_persist);
  if (absl::GetFlag(FLAGS_memcpy)) {
    Pin(absl::GetFlag(FLAGS_worker_cpu));
    for (size_t ws : {size_t{2} << 20, size_t{1} << 30}) {
      std::vector<double> v;
      for (int i = 0; i < repeats; ++i) v.push_back(MemcpyGBps(ws, 0.3));
      Stat s = Summ(v);
      printf("memcpy working_set=%zuMiB GBps min=%.2f median=%.2f max=%.2f\n", ws >> 20, s.min,
             s.med, s.max);
    }
    // The ring sizes the benchmarks run: this one's (the DPDK yardstick's
    // 1024) and 512, Linux iavf's and DPDK ethdev's default.
    for (uint32_t bufs : {kRing, uint32_t{512}}) {
      std::vector<double> v;
      for (int i = 0; i < repeats; ++i) v.push_back(MemcpyFramesNs(bufs, 1514, 0.3));
      Stat s = Summ(v);
      printf("memcpy_frames frame=1518 bufs=%u ns_per_frame min=%.1f median=%.1f max=%.1f\n",
             bufs, s.min, s.med, s.max);
      v.clear();
      for (int i = 0; i < repeats; ++i) v.push_back(MemcpyFramesNs(bufs, 1514, 0.3, true));
      s = Summ(v);
      printf("memcpy_frames_nt frame=1518 bufs=%u ns_per_frame min=%.1f median=%.1f max=%.1f\n",
             bufs, s.min, s.med, s.max);
    }
  }
  for (const std::string& mode : modes) {
    for (uint32_t nq : queues) {
      for (uint32_t frame : frames) {
        std::vector<double> v;
        for (int i = 0; i < repeats; ++i) {
          v.push_back(RunOnce(nq, frame, mode == "trap", absl::GetFlag(FLAGS_seconds), persist,
                              false)
                          .mpps);
        }
        Stat s = Summ(v);
        printf(
            "ours doorbell=%s queues=%u frame=%u persist=%d mpps min=%.3f median=%.3f max=%.3f "
            "gbps_median=%.2f\n",
            mode.c_str(), nq, frame, persist, s.min, s.med, s.max, s.med * frame * 8 / 1e3);
        fflush(stdout);
      }
    }
  }
  if (absl::GetFlag(FLAGS_idle)) {
    for (const std::string& mode : modes) {
      RunResult r = RunOnce(1, 64, mode == "trap", 0.2, persist, true);
      printf("idle doorbell=%s worker_cpu_percent=%.3f\n", mode.c_str(), r.idle_cpu * 100);
    }
  }
  return 0;
}

}  // namespace
}  // namespace emud::dataplane

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return emud::dataplane::Main();
}
