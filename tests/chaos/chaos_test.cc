// Chaos: the test guest (in this process: IavfDriver over vfio-user) runs
// continuous two-way traffic through emud + the real emud-worker, every
// frame carrying a sequence number, plus control-path activity (GET_STATS,
// CONFIG_PROMISCUOUS_MODE, ADD/DEL_ETH_ADDR, DMA map/unmap of an extra
// window, a queue vector's eventfd replaced by SET_IRQS, register reads,
// interrupts), while a second thread kills workers (and emud). emud runs
// with its default flags in every configuration: defaults are the product
// (issue 11: --stable-after=5ms hid that the default supervision abandoned a
// device killed a few times in a row).
//
// Configurations (ChaosConfig):
//  - links: loopback (every TX frame comes back on the device's own RX),
//    TAP (ICMP pings through a TAP in a network namespace of its own,
//    answered by the host kernel), peer (two devices with --backend
//    peer:OTHER wired to each other, one test guest per device - two
//    IavfDrivers over two vfio-user connections in this process - each
//    sending to the other);
//  - doorbells: trap (posted REGION_WRITEs) or mmap (the guest stores into
//    the mapped tail page, as under QEMU);
//  - queues: 1 to 4, and 20 with LARGE_NUM_QPAIRS (MAP_QUEUE_VECTOR,
//    ENABLE_QUEUES_V2, queue and vector numbers past 16);
//  - kills: random (SIGKILL of a worker at a random instant 2..32 ms after
//    traffic resumed from the previous kill - CHAOS_WORKER_KILLS, default
//    100, of any device - plus emud SIGKILLs, CHAOS_EMUD_KILLS, default 20,
//    and upgrade-worker, CHAOS_UPGRADES, default 5) or rapid (each successor
//    SIGKILLed as soon as emud shows it serving - its pid is the device's
//    worker_pid, its own status record is read: LINK_UP and one more
//    reattach - CHAOS_RAPID_KILLS times in a row, default 100, per device).
//
// VLAN (loopback and peer): each guest holds a VLAN_V2 filter (kChaosVlan)
// with stripping and insertion on; odd frames are sent with the device
// inserting the tag and must come back stripped with the TCI in L2TAG1,
// even frames untagged - across every kill, so the filter and stripping
// state are those the successor restored.
// Flex RX descriptors (loopback and peer): the guests configure RXDID 22
// (COMMS_OVS_1; FLEX_NIC, 2, for a peer link's second guest) and every frame
// must be written back in that format across every kill; TAP runs the
// legacy descriptor.
// Checked (correctness only; the one time bound is the 2.5 s reply bound):
//  - the guest never sees a reset (VFGEN_RSTAT stays VFACTIVE, ARQLEN.ENABLE
//    stays set, no RESET_IMPENDING event, the watchdog finds nothing), and no
//    request fails or times out;
//  - no vfio-user request waits 2.5 s or more for its reply (half of QEMU's
//    5 s x-msg-timeout; a late reply is as fatal to QEMU as none);
//  - no device ever reaches FAILED (the failure names its phase and
//    last_error);
//  - every TX frame whose completion (DTYPE 0xF) a guest reaped arrived at
//    the receiving guest (0 lost completions), and at the end every frame
//    sent arrived;
//  - duplicates (a burst re-sent by a successor, a peer-ring frame delivered
//    again) stay within a bounded window per kill; traffic resumes after
//    every kill (random) or streak (rapid);
//  - the fd store holds as many fds at the end as at the start, and each
//    worker's fd count is back where it was.
// Printed (lines starting "chaos", which tools/test.sh collects): kills,
// reattach p50/p99/max (SIGKILL -> first frame sent after the kill
// received), where a worker kill's reattach time goes (p50/p99/max of each
// phase between the SIGKILL, emud's wake-up, lock, reap and spawn, the
// successor's exec, main, each ResumeOrCreate step and first poll, and the
// guest's first frame: worker_api/restart_trace.h, matched from the traces
// the workers log), respawn p50/p99/max in rapid mode (SIGKILL -> successor
// serving in emud's view), lost completions, duplicates, the longest wait of any
// request for its reply, the devices' phases, fds.
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/un.h>
#include <sys/wait.h>
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
#include <memory>
#include <mutex>
#include <ostream>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "avf/regs.h"
#include "avf/virtchnl.h"
#include "base/unique_fd.h"
#include "fdstore/keeper.h"
#include "gtest/gtest.h"
#include "tests/guest/guest_datapath.h"
#include "tests/guest/iavf_driver.h"
#include "tests/guest/vfio_user_bus.h"
#include "tests/integration/emud_harness.h"
#include "vfio_user/protocol.h"
#include "worker_api/restart_trace.h"

namespace emud::testing {
namespace {

namespace v1 = emud::v1;

int EnvInt(const char* name, int def) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : def;
}

// The last lines of a process log, for a failure message.
std::string LogTail(const std::string& log, size_t max_bytes = 6000) {
  if (log.size() <= max_bytes) return log;
  size_t from = log.find('\n', log.size() - max_bytes);
  return "...\n" + log.substr(from == std::string::npos ? log.size() - max_bytes : from + 1);
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

// The pid, in this test's pid namespace, of the worker of `dev` that emud
// calls `ns_pid` (emud may run in a PID namespace of its own - the container
// configuration - where its pids mean other processes here): the process
// whose innermost NSpid is ns_pid and whose command line names the device.
pid_t HostPid(pid_t ns_pid, const std::string& dev) {
  if (ns_pid <= 0) return 0;
  const std::string needle = " --device " + dev + " ";
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    pid_t pid = std::atoi(e.path().filename().c_str());
    if (pid <= 0) continue;
    FILE* f = std::fopen((e.path() / "status").c_str(), "r");
    if (f == nullptr) continue;
    char line[256];
    pid_t inner = 0;
    while (std::fgets(line, sizeof(line), f) != nullptr) {
      if (std::strncmp(line, "NSpid:", 6) != 0) continue;
      for (char* tok = std::strtok(line + 6, " \t\n"); tok != nullptr; tok = std::strtok(nullptr, " \t\n")) {
        inner = std::atoi(tok);
      }
    }
    std::fclose(f);
    if (inner != ns_pid) continue;
    f = std::fopen((e.path() / "cmdline").c_str(), "r");
    if (f == nullptr) continue;
    std::string cmd(4096, '\0');
    cmd.resize(std::fread(cmd.data(), 1, cmd.size(), f));
    std::fclose(f);
    for (char& c : cmd) c = c == '\0' ? ' ' : c;
    if (cmd.find(needle) != std::string::npos) return pid;
  }
  return 0;
}

pid_t WorkerPid(EmudProcess& e, const std::string& dev) {
  auto d = GetDevice(e.stub(), dev);
  return d.ok() ? HostPid(d->status().worker_pid(), dev) : 0;
}

// emud's view of a device, for failure messages: phase, worker, last_error.
std::string DeviceDiag(EmudProcess* e, const std::string& dev) {
  if (e == nullptr || e->stub() == nullptr) return absl::StrCat("device ", dev, ": emud is not running");
  auto d = GetDevice(e->stub(), dev);
  if (!d.ok()) return absl::StrCat("device ", dev, ": GetDevice: ", d.status().ToString());
  const v1::DeviceStatus& s = d->status();
  return absl::StrCat("device ", dev, ": phase ", v1::Phase_Name(s.phase()), ", worker pid ",
                      s.worker_pid(), ", restarts ", s.restart_count(), ", consecutive failures ",
                      s.consecutive_failures(), ", last_error \"", s.last_error(), "\"");
}

std::string FdList(pid_t pid) {
  std::string out;
  std::string dir = absl::StrCat("/proc/", pid, "/fd");
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
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
// Loopback and peer links run over a VLAN as a Linux VLAN sub-interface
// would (VLAN_V2: filter, CTAG_RX stripping, CTAG_TX insertion): every odd
// frame is sent with the device inserting this VLAN and must come back
// through the filter, stripped, with the TCI in L2TAG1 - on every worker,
// so the filter and the stripping state survive each kill. Even frames are
// untagged and must arrive without L2TAG1P.
constexpr uint16_t kChaosVlan = 100;
constexpr uint32_t kWindow = 48;  // frames in flight per flow (RX ring 256: never short of buffers)
// Half of QEMU's 5 s x-msg-timeout: a reply later than this is a correctness
// failure waiting to happen under a real VMM, not a slow run.
constexpr absl::Duration kReplyBound = absl::Milliseconds(2500);

// Kills every process still running with `state_dir` on its command line
// (workers outlive emud: they keep serving when it exits).
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

enum class Link { kLoopback, kTap, kPeer };
// kContainer: the fd store lives in emud-keeper (outside "emud's container":
// a PID namespace of emud-init's own, as a container runtime makes one), and
// the killer SIGKILLs the whole container - emud-init, emud and every worker
// at once - then starts a new one; it also upgrades the keeper itself (a
// successor keeper takes every fd over) and kills single workers.
enum class Kills { kRandom, kRapid, kContainer };

// emud-keeper, run by the test outside the "container".
class KeeperProcess {
 public:
  explicit KeeperProcess(std::string socket) : socket_(std::move(socket)) {}
  ~KeeperProcess() {
    for (pid_t p : pids_) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
  }
  // Starts a keeper (the first, or a successor that takes over from the
  // running one, which then exits) and waits until it serves.
  absl::Status StartOrUpgrade() {
    const std::string log = socket_ + ".log";
    std::vector<std::string> argv = {Runfile("fdstore/emud-keeper"), "--socket", socket_};
    pid_t pid = ::fork();
    if (pid < 0) return absl::InternalError("fork");
    if (pid == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) ::dup2(fd, 2);
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      ::execv(a[0], a.data());
      ::_exit(127);
    }
    const pid_t old = pids_.empty() ? 0 : pids_.back();
    pids_.push_back(pid);
    // Ready: the predecessor handed over and exited, or a fresh one answers.
    bool ok = WaitFor(
        [&] {
          if (old != 0) {
            int st;
            return ::waitpid(old, &st, WNOHANG) == old;
          }
          UniqueFd c(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
          sockaddr_un addr{};
          addr.sun_family = AF_UNIX;
          std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket_.c_str());
          return ::connect(c.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
        },
        absl::Seconds(10));
    if (old != 0) pids_.erase(std::find(pids_.begin(), pids_.end(), old));
    if (!ok) return absl::DeadlineExceededError("emud-keeper did not start or take over");
    return absl::OkStatus();
  }
  // SIGKILL of the running keeper (no successor), then a fresh one.
  absl::Status KillAndRestart() {
    for (pid_t p : pids_) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
    pids_.clear();
    return StartOrUpgrade();
  }
  const std::string& socket() const { return socket_; }
  // How many fds the running keeper holds for `dev`, asked of the keeper
  // itself (a control channel of the test's own; -1 if it does not answer).
  // emud's emud_fdstore_fds gauge is no substitute right after a keeper
  // restart: emud refreshes it every 100 ms, so it still shows the dead
  // keeper's count.
  int Held(const std::string& dev) {
    if (client_ == nullptr) {
      auto c = fdstore::KeeperClient::Connect(socket_);
      if (!c.ok()) return -1;
      client_ = std::move(*c);
    }
    auto keys = client_->List(dev);  // reconnects after a keeper restart
    return keys.ok() ? static_cast<int>(keys->size()) : -1;
  }

 private:
  std::string socket_;
  std::vector<pid_t> pids_;
  std::unique_ptr<fdstore::KeeperClient> client_;
};

struct ChaosConfig {
  const char* name;
  const char* doorbell;  // trap: posted REGION_WRITEs; mmap: stores into the mapped page
  uint32_t queues;
  // loopback: each TX frame comes back on RX. tap: a TAP interface in a
  // network namespace of its own with an IPv4 address; the guest pings it
  // (ICMP echo requests) and the host kernel's echo replies come back.
  // peer: two devices, each the other's backend, one guest each.
  Link link = Link::kLoopback;
  Kills kills = Kills::kRandom;
  // emud --datapath-threads (1 = emud's default, not passed): queue pair q
  // is served by worker thread q % N; a kill lands on any thread mid-burst.
  uint32_t datapath_threads = 1;
  // The guest asks for VIRTCHNL_VF_LARGE_NUM_QPAIRS (as DPDK and Linux with
  // large-VF support do): more than 16 queue pairs, mapped with
  // MAP_QUEUE_VECTOR and started with ENABLE_QUEUES_V2.
  bool large_vf = false;
};

// gtest prints the parameter of a failed test by its name.
void PrintTo(const ChaosConfig& c, std::ostream* os) { *os << c.name; }

const char* LinkName(Link l) {
  switch (l) {
    case Link::kLoopback: return "loopback";
    case Link::kTap: return "ping through a TAP in its own netns";
    case Link::kPeer: return "two devices joined by peer backends, traffic both ways";
  }
  return "?";
}

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

// One direction of traffic: the frames one guest sends (seq 0, 1, ...),
// received by the same guest (loopback, TAP) or by its peer.
struct Flow {
  uint64_t next_seq = 0;
  uint64_t unique_received = 0;
  std::vector<std::deque<uint64_t>> tx_fifo;  // per TX queue: sent, completion not reaped
  std::vector<int64_t> sent_ns;               // by seq
  std::vector<uint8_t> completed;             // by seq
  std::vector<uint16_t> received;             // by seq: times received
  std::vector<uint32_t> sent_after;           // by seq: events (kills...) before the send
  bool tx_pending() const {
    for (const auto& f : tx_fifo) {
      if (!f.empty()) return true;
    }
    return false;
  }
};

// One device and the test guest driving it.
struct Guest {
  uint8_t id = 0;
  std::string dev;
  std::unique_ptr<guest::VfioUserBus> bus;
  std::unique_ptr<guest::IavfDriver> drv;
  std::unique_ptr<guest::GuestDataPath> gdp;
  Flow out;                       // frames this guest sends
  Guest* from = nullptr;          // whose frames it receives (itself unless peer)
  std::array<uint8_t, 6> dst{};   // destination MAC of the frames it sends
  int extra_fd = -1;              // extra DMA window (map/unmap under chaos)
  bool extra_mapped = false;
  uint32_t op = 0, wait_turn = 0;
  std::mt19937 rng{7};
  uint64_t other_frames = 0;      // TAP: the host kernel's own traffic
  // At the start of the chaos.
  double fdstore_start = -1;
  pid_t first_worker = 0;
  int worker_fds_start = 0;
  std::string fd_list_start;
  ~Guest() {
    gdp.reset();
    drv.reset();
    bus.reset();
    if (extra_fd >= 0) ::close(extra_fd);
  }
};

// emud's view of a worker serving the guest: the device's worker_pid is
// `pid`, emud has read that worker's own status record (phase LINK_UP is
// only reported from the record of the current pid) and it counts one more
// reattach than the predecessor's.
struct Serving {
  pid_t pid = 0;
  uint64_t reattaches = 0;
};

absl::StatusOr<Serving> ServingNow(EmudProcess& e, const std::string& dev) {
  auto d = GetDevice(e.stub(), dev);
  if (!d.ok()) return d.status();
  if (d->status().phase() == v1::PHASE_FAILED) {
    return absl::FailedPreconditionError(DeviceDiag(&e, dev));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::GetDeviceStatsRequest req;
  req.set_name(dev);
  v1::DeviceStats st;
  grpc::Status s = e.stub()->GetDeviceStats(&ctx, req, &st);
  if (!s.ok()) return absl::UnavailableError(absl::StrCat("GetDeviceStats: ", s.error_message()));
  if (d->status().phase() != v1::PHASE_LINK_UP || d->status().worker_pid() <= 0) {
    return absl::UnavailableError("not serving");
  }
  // Read the device again: the stats must belong to the same worker.
  auto again = GetDevice(e.stub(), dev);
  if (!again.ok() || again->status().worker_pid() != d->status().worker_pid() ||
      again->status().phase() != v1::PHASE_LINK_UP) {
    return absl::UnavailableError("worker changed");
  }
  return Serving{d->status().worker_pid(), st.reattaches()};
}

// One reattach after a worker kill (random or rapid): the SIGKILL instant,
// the device and when the first frame sent after it arrived.
struct ReattachSample {
  int64_t kill_ns = 0, frame_ns = 0;
  int device = 0;
};

// The successors' startup traces (worker_api/restart_trace.h) in emud's log
// (workers log to emud's stderr), by device.
std::map<std::string, std::vector<worker_api::RestartTrace>> StartupTraces(const std::string& log) {
  std::map<std::string, std::vector<worker_api::RestartTrace>> out;
  // "<time> INFO emud-worker: DEV: startup trace pid N: TRACE" (base/log.h)
  const std::string head = "emud-worker: ";
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    size_t h = line.find(head);
    if (h == absl::string_view::npos) continue;
    line.remove_prefix(h + head.size());
    size_t at = line.find(worker_api::kRestartTraceLogTag);
    if (at == absl::string_view::npos) continue;
    absl::string_view dev = absl::StripAsciiWhitespace(line.substr(0, at));
    absl::ConsumeSuffix(&dev, ":");
    size_t colon = line.find(": ", at);
    if (colon == absl::string_view::npos) continue;
    out[std::string(dev)].push_back(worker_api::RestartTrace::Decode(line.substr(colon + 2)));
  }
  return out;
}

// Where a reattach's time goes, phase by phase: the SIGKILL, emud's marks,
// the successor's, the guest's first frame. Each sample is matched with the
// trace of the first successor whose emud wake-up for its predecessor's exit
// came after the kill (a rapid streak's sample: the successor of its last
// kill). Prints p50/p99/max per phase.
void PrintPhases(const std::string& tag, const std::vector<ReattachSample>& samples,
                 const std::vector<std::string>& devs, const std::string& log) {
  static const char* const kMarks[] = {"woke",   "locked",  "reaped", "spawn",  "exec",
                                       "main",   "args",    "fdstore", "lmdb", "device",
                                       "session", "listen", "status", "run",    "polled"};
  constexpr size_t kN = sizeof(kMarks) / sizeof(kMarks[0]);
  auto traces = StartupTraces(log);
  std::vector<std::vector<double>> phase(kN + 1);  // kill->woke ... polled->frame
  std::vector<double> total;
  size_t matched = 0;
  for (const ReattachSample& s : samples) {
    const worker_api::RestartTrace* best = nullptr;
    for (const auto& t : traces[devs[s.device]]) {
      int64_t w = t.At("woke");
      if (w < s.kill_ns || w > s.frame_ns) continue;
      if (best == nullptr || w < best->At("woke")) best = &t;
    }
    if (best == nullptr) continue;
    std::vector<int64_t> at = {s.kill_ns};
    for (const char* m : kMarks) at.push_back(best->At(m));
    at.push_back(s.frame_ns);
    if (std::find(at.begin(), at.end(), 0) != at.end()) continue;  // an older worker's line
    ++matched;
    for (size_t i = 0; i + 1 < at.size(); ++i) phase[i].push_back(double(at[i + 1] - at[i]) / 1e6);
    total.push_back(double(s.frame_ns - s.kill_ns) / 1e6);
  }
  std::printf("%s reattach phases (%zu of %zu worker-kill samples traced), ms p50 / p99 / max:\n",
              tag.c_str(), matched, samples.size());
  if (matched == 0) return;
  for (size_t i = 0; i <= kN; ++i) {
    std::string name = absl::StrCat(i == 0 ? "kill" : kMarks[i - 1], "->", i == kN ? "frame" : kMarks[i]);
    std::printf("%s   %-16s %6.2f / %6.2f / %6.2f\n", tag.c_str(), name.c_str(),
                Percentile(phase[i], 0.5), Percentile(phase[i], 0.99), Percentile(phase[i], 1.0));
  }
  std::printf("%s   %-16s %6.2f / %6.2f / %6.2f\n", tag.c_str(), "kill->frame", Percentile(total, 0.5),
              Percentile(total, 0.99), Percentile(total, 1.0));
}

class ChaosTest : public ::testing::TestWithParam<ChaosConfig> {};

TEST_P(ChaosTest, KillsDuringTrafficAreInvisibleToTheGuest) {
  const ChaosConfig cfg = GetParam();
  const uint32_t nq = cfg.queues;
  const bool tap = cfg.link == Link::kTap, peer = cfg.link == Link::kPeer;
  const bool rapid = cfg.kills == Kills::kRapid;
  const bool container = cfg.kills == Kills::kContainer;
  ScopedNetns netns;
  if (tap) {
    absl::Status s = netns.Enter();
    ASSERT_TRUE(s.ok()) << s;
  }
  const std::string kTap = "emudc0";
  const int rapid_streak = EnvInt("CHAOS_RAPID_KILLS", 100);
  const std::vector<std::string> devs =
      peer ? std::vector<std::string>{"chaosA", "chaosB"} : std::vector<std::string>{"chaos0"};
  const size_t ndev = devs.size();
  const int worker_kills = rapid ? rapid_streak * int(ndev)
                           : container ? EnvInt("CHAOS_CONTAINER_WORKER_KILLS", 20)
                                       : EnvInt("CHAOS_WORKER_KILLS", 100);
  const int emud_kills = rapid || container ? 0 : EnvInt("CHAOS_EMUD_KILLS", 20);
  const int upgrades = rapid || container ? 0 : EnvInt("CHAOS_UPGRADES", 5);
  const int container_kills = container ? EnvInt("CHAOS_CONTAINER_KILLS", 10) : 0;
  const int keeper_upgrades = container ? EnvInt("CHAOS_KEEPER_UPGRADES", 5) : 0;
  const int surges = container ? EnvInt("CHAOS_SURGES", 3) : 0;
  const int keeper_kills = container ? EnvInt("CHAOS_KEEPER_KILLS", 3) : 0;

  TempStateDir dir("chaos");
  EmudProcess::Options o;
  if (cfg.datapath_threads != 1) {
    o.extra_flags.push_back(absl::StrCat("--datapath-threads=", cfg.datapath_threads));
  }
  o.state_dir = dir.path() + "/state";
  o.worker_binary = Runfile("dataplane/emud-worker");
  // emud's defaults, supervision included. (Workers outlive emud by
  // default; ProcessReaper ends them.)
  ProcessReaper reaper{o.state_dir};
  KeeperProcess keeper(dir.path() + "/keeper.sock");
  // "A container": a cgroup v2 of its own holding emud-init and everything
  // it starts (as a container runtime makes one; the DaemonSet runs with
  // hostPID, so pids are the host's). Its death: cgroup.kill, which SIGKILLs
  // every process in it at once.
  std::string cgroup_root;
  for (const char* root : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}) {
    if (std::filesystem::exists(std::string(root) + "/cgroup.controllers")) {
      cgroup_root = root;
      break;
    }
  }
  int containers_made = 0;
  std::string cgroup;  // the current container's
  auto in_new_container = [&](EmudProcess::Options opts) {
    cgroup = absl::StrCat(cgroup_root, "/emud-chaos-", ::getpid(), "-", containers_made++);
    opts.wrapper = {"/bin/sh", "-c", "mkdir -p \"$0\" && echo $$ > \"$0/cgroup.procs\" && exec \"$@\"",
                    cgroup, Runfile("server/emud-init"), "--"};
    return opts;
  };
  auto kill_container = [](const std::string& cg) {
    if (FILE* f = std::fopen((cg + "/cgroup.kill").c_str(), "w")) {
      std::fputs("1", f);
      std::fclose(f);
    }
    // Empty once every process is gone; then it can go.
    WaitFor([&] { return ::rmdir(cg.c_str()) == 0; }, absl::Seconds(5));
  };
  if (container) {
    ASSERT_FALSE(cgroup_root.empty()) << "the container configuration needs cgroup v2 (cgroup.kill)";
    ASSERT_TRUE(keeper.StartOrUpgrade().ok());
    o.extra_flags.push_back("--fd-keeper=" + keeper.socket());
    o = in_new_container(o);
  }
  // A surge rollout's new pod runs emud and emud-worker from its own image:
  // copies at another path.
  EmudProcess::Options surge = o;
  if (surges > 0) {
    const std::string v2 = dir.path() + "/v2";
    std::filesystem::create_directories(v2);
    for (const char* b : {"server/emud", "dataplane/emud-worker"}) {
      std::filesystem::copy_file(Runfile(b), v2 + "/" + std::filesystem::path(b).filename().string(),
                                 std::filesystem::copy_options::overwrite_existing);
    }
    surge.emud_binary = v2 + "/emud";
    surge.worker_binary = v2 + "/emud-worker";
    surge.extra_flags.push_back("--takeover");
  }
  auto started = EmudProcess::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<EmudProcess> emud = std::move(*started);

  std::vector<v1::Device> devices;
  for (size_t i = 0; i < ndev; ++i) {
    std::string backend = peer ? "peer:" + devs[1 - i] : tap ? "tap:" + kTap : "loopback";
    CommandResult c = emud->Emuctl({"create-device", "--type", "avf", "--name", devs[i],
                                    "--queues", absl::StrCat(nq), "--doorbell", cfg.doorbell,
                                    "--backend", backend, "--wait"});
    ASSERT_EQ(c.exit_code, 0) << c.err << emud->Log();
    auto dev = GetDevice(emud->stub(), devs[i]);
    ASSERT_TRUE(dev.ok());
    devices.push_back(*dev);
  }
  // The host end: an address on the TAP, the guest as a static neighbour (the
  // guest answers no ARP), no IPv6 chatter; its MAC is the pings' destination.
  std::array<uint8_t, 6> host_mac{};
  if (tap) {
    // (Our netns's /proc/sys/net; absent when the kernel has no IPv6.)
    if (FILE* f = std::fopen(absl::StrCat("/proc/sys/net/ipv6/conf/", kTap, "/disable_ipv6").c_str(), "w")) {
      std::fputs("1", f);
      std::fclose(f);
    }
    for (const std::string& cmd : {
             absl::StrCat("ip link set ", kTap, " up"),
             absl::StrCat("ip addr add 10.77.0.1/24 dev ", kTap),
             absl::StrCat("ip neigh replace 10.77.0.2 lladdr ", devices[0].spec().mac(), " dev ",
                          kTap, " nud permanent")}) {
      absl::Status s = netns.Run(cmd);
      ASSERT_TRUE(s.ok()) << s;
    }
    UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, IFNAMSIZ, "%s", kTap.c_str());
    ASSERT_EQ(::ioctl(sock.get(), SIOCGIFHWADDR, &ifr), 0) << std::strerror(errno);
    std::memcpy(host_mac.data(), ifr.ifr_hwaddr.sa_data, 6);
  }

  // ---- the guests (one per device) ----
  std::vector<std::unique_ptr<Guest>> guests;
  for (size_t i = 0; i < ndev; ++i) {
    auto g = std::make_unique<Guest>();
    g->id = uint8_t(i);
    g->dev = devs[i];
    guest::VfioUserBusOptions bopt;
    // QEMU's x-msg-timeout; a reply later than kReplyBound fails the test
    // anyway, and a lost one shows as an error before the stall check.
    bopt.timeout = absl::Seconds(5);
    bopt.map_sparse_areas = std::string(cfg.doorbell) == "mmap";
    auto bus = guest::VfioUserBus::Connect(devices[i].spec().socket_path(), bopt);
    ASSERT_TRUE(bus.ok()) << bus.status();
    g->bus = std::move(*bus);
    // mmap mode: the tails really are stores into the mapped page.
    ASSERT_EQ(g->bus->mapped_bytes() > 0, bopt.map_sparse_areas);
    guest::DriverOptions dopt;
    dopt.ring_size = 256;
    dopt.max_queues = nq;
    if (cfg.large_vf) dopt.caps |= avf::vc::kCapLargeNumQpairs;
    // Flex RX descriptors (loopback and peer): DPDK's default COMMS_OVS_1,
    // FLEX_NIC on a peer link's second guest; TAP keeps the legacy format.
    if (!tap) dopt.rxdid = peer && i == 1 ? avf::vc::kRxdidFlexNic : avf::vc::kRxdidCommsOvs1;
    g->drv = std::make_unique<guest::IavfDriver>(g->bus.get(), dopt);
    ASSERT_TRUE(g->drv->Probe().ok());
    ASSERT_TRUE(g->drv->Init().ok());
    ASSERT_TRUE(g->drv->Open().ok());
    ASSERT_TRUE(g->drv->link_up());
    ASSERT_EQ(g->drv->num_active_queues(), nq);
    ASSERT_EQ((g->drv->caps() & avf::vc::kCapLargeNumQpairs) != 0, cfg.large_vf);
    ASSERT_EQ(g->drv->rxdid(), dopt.rxdid.value_or(avf::vc::kRxdidLegacy1));
    if (!tap) {
      ASSERT_TRUE(g->drv->vlan_v2());
      absl::Status v = g->drv->AddVlan(kChaosVlan);
      ASSERT_TRUE(v.ok()) << v;
    }
    g->gdp = std::make_unique<guest::GuestDataPath>(g->drv.get());
    g->out.tx_fifo.resize(nq);
    g->extra_fd = memfd_create("chaos-extra", MFD_CLOEXEC);
    ASSERT_GE(g->extra_fd, 0);
    guests.push_back(std::move(g));
  }
  for (size_t i = 0; i < ndev; ++i) {
    Guest& g = *guests[i];
    g.from = peer ? guests[1 - i].get() : &g;
    g.dst = tap ? host_mac : g.from->drv->mac();
  }

  // ---- bookkeeping (main thread only) ----
  uint64_t errors = 0;
  std::vector<std::string> error_log;
  auto error = [&](const std::string& what) {
    ++errors;
    if (error_log.size() < 20) error_log.push_back(what);
  };

  // ---- kill coordination ----
  std::atomic<int64_t> kill_ns{0};        // last worker kill, 0 = none pending
  std::atomic<bool> resumed{true};
  std::atomic<bool> stop{false}, killer_done{false};
  std::vector<double> reattach_ms;        // main thread
  std::vector<ReattachSample> reattach_samples;  // main thread: worker kills ('w', 'r')
  std::atomic<int> kill_device{0};        // the device of the last worker kill
  std::vector<double> respawn_ms;         // killer thread (rapid)
  // Duplicates are charged to the latest chaos event (worker kill, rapid
  // kill, upgrade or emud kill: 'w', 'r', 'u', 'e'); none may come before
  // the first.
  std::vector<uint32_t> dups_per_kill;    // main thread; duplicates after event i
  std::vector<char> event_kinds;          // main thread; kind of event i
  std::atomic<int> events{0};
  std::atomic<char> last_event_kind{0};
  int last_event_seen = 0;
  uint64_t dups_before_kills = 0;
  // Registers the killer's events so far (main thread). Also called when a
  // duplicate arrives: the event that caused it may be newer than the last
  // loop round.
  auto sync_events = [&] {
    for (int e = events.load(); last_event_seen < e; ++last_event_seen) {
      dups_per_kill.push_back(0);
      event_kinds.push_back(last_event_kind.load());
    }
  };
  std::atomic<int> worker_killed{0}, emud_killed{0}, upgraded{0};
  std::atomic<int> containers_killed{0}, keepers_upgraded{0}, surged{0}, keepers_killed{0};
  std::vector<double> container_ms, keeper_ms, surge_ms;  // main thread: outage per event kind
  std::vector<double> redeposit_ms;  // killer thread: keeper restart -> every fd held again
  std::atomic<uint64_t> frames_while_emud_down{0};
  std::atomic<bool> emud_down{false};
  std::string killer_error;
  std::vector<int> kills_by_device(ndev, 0);  // killer thread

  const uint64_t kExtraIova = 0x7f000000, kExtraSize = 1 << 20;
  for (auto& g : guests) ASSERT_EQ(ftruncate(g->extra_fd, kExtraSize), 0);

  // Loopback/peer: a raw frame carrying seq, magic and the sender's id. TAP:
  // an ICMP echo request from the guest's address to the host's, carrying
  // seq and magic.
  auto make_frame = [&](const Guest& g, uint64_t seq) {
    if (!tap) {
      std::vector<uint8_t> f(64, 0);
      std::copy(g.dst.begin(), g.dst.end(), f.begin());
      std::copy(g.drv->mac().begin(), g.drv->mac().end(), f.begin() + 6);
      f[12] = kEtherType >> 8;
      f[13] = kEtherType & 0xff;
      std::memcpy(&f[14], &seq, 8);
      std::memcpy(&f[22], &kMagic, 8);
      f[30] = g.id;
      return f;
    }
    std::vector<uint8_t> f(kIcmpPayload + 16, 0);
    std::copy(g.dst.begin(), g.dst.end(), f.begin());
    std::copy(g.drv->mac().begin(), g.drv->mac().end(), f.begin() + 6);
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
  auto send_frames = [&](Guest& g) {
    Flow& fl = g.out;
    uint32_t in_flight = uint32_t(fl.next_seq - fl.unique_received);
    for (int i = 0; i < 8 && in_flight < kWindow; ++i, ++in_flight) {
      uint64_t seq = fl.next_seq;
      std::vector<uint8_t> f = make_frame(g, seq);
      const uint32_t q = uint32_t(seq % nq);
      const int32_t tci = !tap && seq % 2 == 1 ? kChaosVlan : -1;
      absl::Status s = g.gdp->Transmit(q, f, 0, 0, tci);
      if (absl::IsResourceExhausted(s)) break;
      if (!s.ok()) {
        error(absl::StrCat(g.dev, ": transmit: ", s.ToString()));
        break;
      }
      ++fl.next_seq;
      fl.sent_ns.push_back(NowNs());
      fl.sent_after.push_back(uint32_t(events.load()));
      fl.completed.push_back(0);
      fl.received.push_back(0);
      fl.tx_fifo[q].push_back(seq);
    }
  };
  auto reap = [&](Guest& g) -> bool {
    bool moved = false;
    Flow& in = g.from->out;
    for (uint32_t q = 0; q < nq; ++q) {
      uint32_t n = g.gdp->ReapTx(q);
      for (uint32_t i = 0; i < n && !g.out.tx_fifo[q].empty(); ++i) {
        g.out.completed[g.out.tx_fifo[q].front()] = 1;
        g.out.tx_fifo[q].pop_front();
        moved = true;
      }
      auto r = g.gdp->Receive(q);
      if (!r.ok()) {
        error(absl::StrCat(g.dev, ": receive: ", r.status().ToString()));
        return moved;
      }
      for (const guest::RxFrame& f : *r) {
        uint64_t seq, magic;
        const size_t at = tap ? kIcmpPayload : 14;
        if (f.error) {
          error(absl::StrCat(g.dev, ": RX frame with an error status"));
          continue;
        }
        if (tap && !is_echo_reply(f.data)) {
          ++g.other_frames;  // the host kernel's own traffic
          continue;
        }
        if (f.data.size() < at + 16) {
          error(absl::StrCat(g.dev, ": short RX frame"));
          continue;
        }
        std::memcpy(&seq, &f.data[at], 8);
        std::memcpy(&magic, &f.data[at + 8], 8);
        if (magic != kMagic || seq >= in.next_seq || (!tap && f.data[30] != g.from->id)) {
          error(absl::StrCat(g.dev, ": RX frame with bad payload, seq ", seq));
          continue;
        }
        // The RXDID the queues were configured with, in every descriptor
        // (a successor restores it), no flow id.
        if (f.rxdid != g.drv->rxdid() || (f.rxdid != 1 && f.flow_id != 0xFFFFFFFFu)) {
          error(absl::StrCat(g.dev, ": frame ", seq, " written back as RXDID ", f.rxdid,
                             " (flow id ", f.flow_id, "), configured ", g.drv->rxdid()));
          continue;
        }
        if (!tap && f.vlan_tci != (seq % 2 == 1 ? int32_t{kChaosVlan} : -1)) {
          error(absl::StrCat(g.dev, ": frame ", seq, " came back with VLAN TCI ", f.vlan_tci));
          continue;
        }
        // Loopback and TAP return a frame on the queue it left by; a peer
        // spreads by RSS.
        if (!peer && seq % nq != q) {
          error(absl::StrCat(g.dev, ": frame ", seq, " sent on queue ", seq % nq,
                             " came back on ", q));
          continue;
        }
        moved = true;
        if (in.received[seq]++ == 0) {
          ++in.unique_received;
        } else if (sync_events(), !dups_per_kill.empty()) {
          ++dups_per_kill.back();
        } else {
          ++dups_before_kills;
        }
        if (emud_down.load()) frames_while_emud_down.fetch_add(1);
        int64_t k = kill_ns.load();
        if (k != 0 && in.sent_ns[seq] > k) {
          const int64_t now = NowNs();
          reattach_ms.push_back(double(now - k) / 1e6);
          if (last_event_kind.load() == 'w' || last_event_kind.load() == 'r') {
            reattach_samples.push_back({k, now, kill_device.load()});
          }
          if (last_event_kind.load() == 'c') container_ms.push_back(reattach_ms.back());
          if (last_event_kind.load() == 'k') keeper_ms.push_back(reattach_ms.back());
          if (last_event_kind.load() == 's') surge_ms.push_back(reattach_ms.back());
          if (std::getenv("CHAOS_VERBOSE") != nullptr) {
            std::printf("reattach %.2f ms at %ld us\n", reattach_ms.back(), long(NowNs() / 1000));
          }
          kill_ns.store(0);
          resumed.store(true);
        }
      }
    }
    return moved;
  };
  auto reap_all = [&]() {
    bool moved = false;
    for (auto& g : guests) moved |= reap(*g);
    return moved;
  };
  // Queue q interrupts on vector q + 1 (misc on 0); wait on each in turn,
  // and on each guest in turn.
  uint32_t guest_turn = 0;
  auto wait_irq = [&](absl::Duration d) {
    Guest& g = *guests[guest_turn++ % ndev];
    (void)g.bus->WaitVector(1 + g.wait_turn++ % nq, d / (nq * ndev));
  };
  auto control_op = [&](Guest& g) {
    guest::IavfDriver& drv = *g.drv;
    guest::VfioUserBus& bus = *g.bus;
    const uint32_t op = g.op++;
    switch (op % 8) {
      case 0: {
        auto st = drv.RequestStats();
        if (!st.ok()) error(absl::StrCat(g.dev, ": GET_STATS: ", st.status().ToString()));
        break;
      }
      case 1:
      case 2: {
        avf::vc::PromiscInfo p{drv.vsi_id(), uint16_t(g.op % 2 ? avf::vc::kPromiscUnicast : 0)};
        auto r = drv.Exec(avf::vc::kOpConfigPromiscuousMode,
                          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&p), sizeof p));
        if (!r.ok() || r->v_retval != 0) error(absl::StrCat(g.dev, ": CONFIG_PROMISCUOUS_MODE failed"));
        break;
      }
      case 3:
      case 4: {
        uint8_t msg[4 + sizeof(avf::vc::EtherAddr)] = {};
        uint16_t vsi = drv.vsi_id(), n = 1;
        std::memcpy(msg, &vsi, 2);
        std::memcpy(msg + 2, &n, 2);
        avf::vc::EtherAddr a{{0x02, 0xc4, 0xa0, 0x5, 0, uint8_t(g.rng())}, 0, 0};
        a.addr[5] = 0x42;
        std::memcpy(msg + 4, &a, sizeof a);
        uint32_t v = (g.op % 2) ? avf::vc::kOpAddEthAddr : avf::vc::kOpDelEthAddr;
        auto r = drv.Exec(v, msg);
        if (!r.ok()) error(absl::StrCat(g.dev, ": ETH_ADDR: ", r.status().ToString()));
        break;
      }
      case 5: {
        absl::Status s = g.extra_mapped
                             ? bus.client().DmaUnmap(kExtraIova, kExtraSize)
                             : bus.client().DmaMap(g.extra_fd, 0, kExtraIova, kExtraSize);
        if (!s.ok()) {
          error(absl::StrCat(g.dev, ": DMA map/unmap: ", s.ToString()));
        } else {
          g.extra_mapped = !g.extra_mapped;
        }
        break;
      }
      case 6: {
        auto w = drv.Watchdog();
        if (!w.ok()) error(absl::StrCat(g.dev, ": watchdog: ", w.status().ToString()));
        else if (*w) error(absl::StrCat(g.dev, ": watchdog saw a reset"));
        break;
      }
      case 7: {
        // QEMU swaps a vector's eventfd when the guest masks/unmasks it.
        const uint32_t v = 1 + uint32_t(g.op / 8) % nq;
        if (absl::Status st = bus.ReplaceVectorEventfd(v); !st.ok()) {
          error(absl::StrCat(g.dev, ": SET_IRQS (replace vector ", v, " eventfd): ", st.ToString()));
        }
        break;
      }
      default:
        break;
    }
    // Register reads every time: the guest must never see a reset.
    auto rstat = bus.Read32(avf::kVfgenRstat);
    auto arq = bus.Read32(avf::kVfArqlen1);
    if (!rstat.ok() || !arq.ok()) {
      error(absl::StrCat(g.dev, ": register read failed: ",
                         (!rstat.ok() ? rstat.status() : arq.status()).ToString()));
    } else {
      if ((*rstat & avf::kRstatMask) != avf::kVfrVfActive) error(absl::StrCat(g.dev, ": RSTAT left VFACTIVE"));
      if (!(*arq & avf::kAqLenEnable)) error(absl::StrCat(g.dev, ": ARQLEN.ENABLE dropped"));
    }
    if (drv.reset_impending()) error(absl::StrCat(g.dev, ": RESET_IMPENDING seen"));
  };
  auto unmap_extra = [&]() {
    for (auto& g : guests) {
      if (!g->extra_mapped) continue;
      absl::Status s = g->bus->client().DmaUnmap(kExtraIova, kExtraSize);
      if (!s.ok()) error(absl::StrCat(g->dev, ": DMA unmap: ", s.ToString()));
      g->extra_mapped = false;
    }
  };
  auto all_received = [&]() {
    for (auto& g : guests) {
      if (g->out.unique_received < g->out.next_seq || g->out.tx_pending()) return false;
    }
    return true;
  };

  // Warm up: traffic flows before the first kill (an idle mmap-doorbell
  // worker polls slowly at first, so run until frames come back).
  auto warm = [&]() {
    for (auto& g : guests) {
      if (g->out.unique_received < 1000) return false;
    }
    return true;
  };
  for (absl::Time until = absl::Now() + absl::Seconds(5); !warm() && absl::Now() < until;) {
    for (auto& g : guests) send_frames(*g);
    reap_all();
    wait_irq(absl::Microseconds(200));
  }
  for (auto& g : guests) {
    ASSERT_GT(g->out.unique_received, 0u) << g->dev << ": no traffic before the chaos";
    // Settled: the same count twice, 300 ms apart (the guest's bring-up
    // deposits may still be arriving; with a keeper emud polls the count).
    double v = FdStoreFds(*emud, g->dev);
    for (int i = 0; i < 20; ++i) {
      absl::SleepFor(absl::Milliseconds(300));
      double w = FdStoreFds(*emud, g->dev);
      if (w == v) break;
      v = w;
    }
    g->fdstore_start = v;
    g->first_worker = WorkerPid(*emud, g->dev);
    ASSERT_GT(g->first_worker, 0);
    g->worker_fds_start = Measure(g->first_worker).fds;
    g->fd_list_start = FdList(g->first_worker);
  }
  ASSERT_EQ(errors, 0u) << error_log[0];
  auto emud_fds_start = Measure(emud->pid()).fds;
  const absl::Time chaos_start = absl::Now();

  // ---- the killer ----
  std::thread killer([&] {
    std::mt19937 r(12345);
    auto fail = [&](const std::string& what) {
      killer_error = what;
      for (const auto& d : devs) absl::StrAppend(&killer_error, "\n", DeviceDiag(emud.get(), d));
      stop.store(true);
    };
    // Until traffic resumed after the last event; FAILED ends the wait.
    auto wait_resumed = [&](const std::string& after) {
      absl::Time deadline = absl::Now() + absl::Seconds(10);
      absl::Time next_check = absl::Now();
      while (!resumed.load() && !stop.load()) {
        absl::Time now = absl::Now();
        if (now > deadline) {
          fail(absl::StrCat("traffic did not resume within 10 s after ", after));
          return false;
        }
        if (now >= next_check) {
          next_check = now + absl::Milliseconds(20);
          for (const auto& d : devs) {
            auto dv = GetDevice(emud->stub(), d);
            if (dv.ok() && dv->status().phase() == v1::PHASE_FAILED) {
              fail(absl::StrCat("a device went FAILED after ", after));
              return false;
            }
          }
        }
        absl::SleepFor(absl::Microseconds(200));
      }
      return !stop.load();
    };
    auto begin_kill = [&](char kind) {
      resumed.store(false);
      kill_ns.store(NowNs());
      last_event_kind.store(kind);
      events.fetch_add(1);
    };
    int wk = 0, ek = 0, up = 0;
    std::string last = "the start";
    if (rapid) {
      for (size_t d = 0; d < ndev && !stop.load(); ++d) {
        if (!wait_resumed(last)) return;
        absl::SleepFor(absl::Microseconds(2000 + r() % 30000));  // a random instant
        absl::StatusOr<Serving> cur = ServingNow(*emud, devs[d]);
        if (!cur.ok()) {
          fail(absl::StrCat(devs[d], " not serving before its rapid kills: ", cur.status().ToString()));
          return;
        }
        for (int i = 0; i < rapid_streak && !stop.load(); ++i) {
          const int64_t t0 = NowNs();
          kill_device.store(int(d));
          begin_kill('r');
          ::kill(cur->pid, SIGKILL);
          ++wk;
          ++kills_by_device[d];
          worker_killed.store(wk);
          // The successor: a new pid, serving in emud's view.
          absl::Status why = absl::UnavailableError("not yet");
          absl::StatusOr<Serving> next = why;
          absl::Time deadline = absl::Now() + absl::Seconds(10);
          while (!stop.load()) {
            next = ServingNow(*emud, devs[d]);
            if (next.ok() && next->pid != cur->pid && next->reattaches > cur->reattaches) break;
            if (!next.ok() && absl::IsFailedPrecondition(next.status())) break;  // FAILED
            if (absl::Now() > deadline) break;
            absl::SleepFor(absl::Microseconds(500));
          }
          if (stop.load()) return;
          if (!next.ok() || next->pid == cur->pid || next->reattaches <= cur->reattaches) {
            fail(absl::StrCat("rapid kill ", i + 1, " of ", devs[d], " (pid ", cur->pid,
                              "): no successor serving within 10 s",
                              next.ok() ? "" : absl::StrCat(" (", next.status().ToString(), ")")));
            return;
          }
          respawn_ms.push_back(double(NowNs() - t0) / 1e6);
          if (std::getenv("CHAOS_VERBOSE") != nullptr) {
            std::printf("rapid kill %d of %s: %d -> %d in %.2f ms\n", i + 1, devs[d].c_str(),
                        cur->pid, next->pid, respawn_ms.back());
          }
          cur = next;
        }
        last = absl::StrCat("rapid kill streak of ", devs[d]);
      }
    }
    int ck = 0, ku = 0, su = 0, kk = 0;
    while (!rapid && !stop.load() &&
           (wk < worker_kills || ek < emud_kills || up < upgrades || ck < container_kills ||
            ku < keeper_upgrades || su < surges || kk < keeper_kills)) {
      if (!wait_resumed(last)) return;
      absl::SleepFor(absl::Microseconds(2000 + r() % 30000));  // a random instant
      if (kk < keeper_kills && (r() % 6 == 0 || (wk >= worker_kills && ck >= container_kills &&
                                                 ku >= keeper_upgrades && su >= surges))) {
        // The keeper dies (no successor) while emud and the workers live:
        // nothing may be lost. The workers hold their own duplicates and
        // re-deposit into the next keeper; emud re-adopts their tokens.
        std::vector<int> before;
        for (const auto& dv : devs) before.push_back(keeper.Held(dv));
        last_event_kind.store('K');
        events.fetch_add(1);
        absl::Status s = keeper.KillAndRestart();
        if (!s.ok()) {
          fail(absl::StrCat("keeper restart after kill ", kk + 1, ": ", s.ToString()));
          return;
        }
        ++kk;
        keepers_killed.store(kk);
        const absl::Time restarted = absl::Now();
        // Before the next kill, the new keeper must hold the device's fds
        // again: a worker or container killed earlier would leave nothing to
        // inherit (two faults at once, which the keeper does not claim to
        // survive).
        for (size_t i = 0; i < ndev; ++i) {
          if (!WaitFor([&] { return before[i] > 0 && keeper.Held(devs[i]) >= before[i]; },
                       absl::Seconds(30))) {
            fail(absl::StrCat("workers did not re-deposit into the new keeper after kill ", kk,
                              " (had ", before[i], ", now ", keeper.Held(devs[i]), ")"));
            return;
          }
        }
        redeposit_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - restarted));
        last = absl::StrCat("keeper kill ", kk);
        continue;
      }
      if (su < surges && (r() % 5 == 0 || (wk >= worker_kills && ck >= container_kills &&
                                           ku >= keeper_upgrades))) {
        // Surge rollout: a new "pod" (emud from another binary path, in a
        // container of its own) takes every device over from the running
        // one, which then exits (status 75: emud-init waits for the old
        // pod's deletion, SIGTERM here).
        begin_kill('s');
        const std::string old_cgroup = cgroup;
        // Back and forth between the two builds, as rollouts and rollbacks do.
        EmudProcess::Options back = o;
        back.extra_flags.push_back("--takeover");
        auto next = EmudProcess::Start(in_new_container(su % 2 == 0 ? surge : back));
        if (!next.ok()) {
          fail(absl::StrCat("surge ", su + 1, ": the new emud: ", next.status().ToString()));
          return;
        }
        // The old pod is deleted once the new one is ready: SIGTERM, and
        // its container goes (nothing of the devices is left in it).
        int st = emud->Stop(SIGTERM);
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
          fail(absl::StrCat("surge ", su + 1, ": the old emud-init exited with status ", st,
                            "; the end of its log:\n", LogTail(emud->Log())));
          return;
        }
        kill_container(old_cgroup);
        emud = std::move(*next);
        ++su;
        surged.store(su);
        last = absl::StrCat("surge rollout ", su);
        continue;
      }
      bool container_turn = ck < container_kills && (wk >= worker_kills || r() % 3 == 0);
      bool keeper_turn = !container_turn && ku < keeper_upgrades &&
                         ((wk >= worker_kills && ck >= container_kills) || r() % 4 == 0);
      bool emud_turn = !container_turn && !keeper_turn && ek < emud_kills &&
                       (wk >= worker_kills || r() % 6 == 0);
      bool upgrade_turn = !container_turn && !keeper_turn && !emud_turn && up < upgrades &&
                          (wk >= worker_kills || r() % 20 == 0);
      const size_t d = r() % ndev;
      if (container_turn) {
        // The whole container at once: emud-init, emud, every worker. The
        // keeper holds the guests' connections; a new container's emud
        // starts every worker again from the keeper's fds + tmpfs state.
        begin_kill('c');
        emud_down.store(true);
        const std::string dead = cgroup;
        kill_container(dead);
        emud->Stop(SIGKILL);  // reaps emud-init (already dead)
        emud.reset();
        auto again = EmudProcess::Start(in_new_container(o));
        if (!again.ok()) {
          fail(absl::StrCat("new container's emud: ", again.status().ToString()));
          return;
        }
        emud = std::move(*again);
        emud_down.store(false);
        ++ck;
        containers_killed.store(ck);
        last = absl::StrCat("container kill ", ck);
      } else if (keeper_turn) {
        begin_kill('k');
        absl::Status s = keeper.StartOrUpgrade();
        if (!s.ok()) {
          fail(absl::StrCat("keeper upgrade ", ku + 1, ": ", s.ToString()));
          return;
        }
        ++ku;
        keepers_upgraded.store(ku);
        last = absl::StrCat("keeper upgrade ", ku);
      } else if (upgrade_turn) {
        // emuctl upgrade-worker under traffic: the old worker stops (leaving
        // the session in the fd store), a new process takes it over.
        begin_kill('u');
        CommandResult u = emud->Emuctl({"upgrade-worker", devs[d]});
        if (u.exit_code != 0) {
          fail(absl::StrCat("upgrade-worker ", devs[d], ": ", u.err));
          return;
        }
        ++up;
        upgraded.store(up);
        last = absl::StrCat("upgrade ", up, " of ", devs[d]);
      } else if (emud_turn) {
        std::vector<double> before;
        for (const auto& dv : devs) before.push_back(FdStoreFds(*emud, dv));
        emud_down.store(true);
        last_event_kind.store('e');
        events.fetch_add(1);
        emud->Stop(SIGKILL);
        emud.reset();
        ++ek;
        emud_killed.store(ek);
        auto again = EmudProcess::Start(o);
        if (!again.ok()) {
          fail(absl::StrCat("emud restart: ", again.status().ToString()));
          return;
        }
        emud = std::move(*again);
        emud_down.store(false);
        // The workers reconnect and re-deposit; wait for them before the
        // next worker kill (a worker killed before that has no fds to
        // inherit).
        for (size_t i = 0; i < ndev; ++i) {
          if (!WaitFor([&] { return FdStoreFds(*emud, devs[i]) >= before[i] && before[i] > 0; },
                       absl::Seconds(10))) {
            fail(absl::StrCat("worker of ", devs[i], " did not re-deposit after emud restart ", ek,
                              " (had ", before[i], ", now ", FdStoreFds(*emud, devs[i]), ")"));
            return;
          }
        }
        last = absl::StrCat("emud kill ", ek);
      } else {
        pid_t pid = WorkerPid(*emud, devs[d]);
        if (pid <= 0) {
          fail(absl::StrCat("no worker pid for ", devs[d], " after ", last));
          return;
        }
        kill_device.store(int(d));
        begin_kill('w');
        ::kill(pid, SIGKILL);
        if (std::getenv("CHAOS_VERBOSE") != nullptr) {
          std::printf("killed %d (%s) at %ld us\n", pid, devs[d].c_str(), long(kill_ns.load() / 1000));
        }
        ++wk;
        ++kills_by_device[d];
        worker_killed.store(wk);
        last = absl::StrCat("worker kill ", wk, " (", devs[d], ", pid ", pid, ")");
      }
    }
    if (!wait_resumed(last)) return;
    killer_done.store(true);
  });

  // ---- the guests' loop ----
  uint64_t rounds = 0;
  while (!stop.load() && !killer_done.load()) {
    sync_events();
    for (auto& g : guests) send_frames(*g);
    bool moved = reap_all();
    if (++rounds % 16 == 0) control_op(*guests[(rounds / 16) % ndev]);
    if (!moved) wait_irq(absl::Microseconds(500));
    if (errors > 0) break;
  }
  stop.store(true);
  killer.join();
  const double chaos_s = absl::ToDoubleSeconds(absl::Now() - chaos_start);

  // ---- figures ----
  absl::Duration max_wait;
  std::string max_wait_at = "-";
  for (auto& g : guests) {
    const vfio_user::Client& c = g->bus->client();
    if (c.max_reply_wait() > max_wait) {
      max_wait = c.max_reply_wait();
      max_wait_at = absl::StrCat(vfio_user::CommandName(c.max_reply_wait_command()), " on ", g->dev);
    }
  }
  const bool failed_early = !killer_error.empty() || errors > 0;
  if (!failed_early) {
    // Drain: no new frames; everything sent must complete and arrive.
    unmap_extra();
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!all_received() && absl::Now() < deadline) {
      if (!reap_all()) wait_irq(absl::Milliseconds(1));
    }
    // A last exchange, so that every last worker has moved frames both ways
    // (a peer backend opens its outbound ring at its first frame), then the
    // same drain.
    for (auto& g : guests) send_frames(*g);
    deadline = absl::Now() + absl::Seconds(10);
    while (!all_received() && absl::Now() < deadline) {
      if (!reap_all()) wait_irq(absl::Milliseconds(1));
    }
    for (auto& g : guests) control_op(*g);
    // The ops cycle; if that last one mapped the extra window, unmap it so
    // the fd counts below compare like with like.
    unmap_extra();
  }
  uint64_t lost = 0, missing = 0, dups_total = 0, frames = 0;
  sync_events();
  for (auto& g : guests) {
    const Flow& f = g->out;
    frames += f.next_seq;
    for (uint64_t s = 0; s < f.next_seq; ++s) {
      if (f.completed[s] && f.received[s] == 0) ++lost;
      if (f.received[s] == 0 && ++missing <= 8) {
        // Which event the frame crossed: the last one before its send and
        // the next (w worker kill, r rapid kill, u upgrade, e emud kill,
        // c container death, k keeper upgrade, K keeper kill, s surge).
        const uint32_t e = f.sent_after[s];
        auto kind = [&](uint32_t i) {
          return i >= 1 && i <= event_kinds.size() ? std::string(1, event_kinds[i - 1]) : std::string("-");
        };
        std::printf("%s %s: never received seq %lu (queue %lu, VLAN %s, TX completed %d, sent %.3f s "
                    "into the run) after event %u (%s), before event %u (%s)\n",
                    absl::StrCat("chaos [", cfg.name, "]").c_str(), g->dev.c_str(), (unsigned long)s, (unsigned long)(s % nq),
                    s % 2 == 1 ? "inserted" : "none", int(f.completed[s]),
                    double(f.sent_ns[s] - f.sent_ns[0]) / 1e9, e, kind(e).c_str(), e + 1,
                    kind(e + 1).c_str());
      }
      if (f.received[s] > 1) dups_total += f.received[s] - 1;
    }
  }
  if (missing > 0 && emud != nullptr && emud->stub() != nullptr) {
    // Where a missing frame may have been counted: the device's RX drops
    // (no buffers, no running queue) and TX drops/errors, by queue.
    for (auto& g : guests) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::GetDeviceStatsRequest req;
      req.set_name(g->dev);
      v1::DeviceStats st;
      if (!emud->stub()->GetDeviceStats(&ctx, req, &st).ok()) continue;
      std::string line;
      for (const auto& q : st.rx()) absl::StrAppend(&line, " rx", q.queue(), " drops ", q.drops(), ";");
      for (const auto& q : st.tx()) {
        absl::StrAppend(&line, " tx", q.queue(), " drops ", q.drops(), " errors ", q.errors(), ";");
      }
      std::printf("chaos [%s] %s counters of the serving worker:%s\n", cfg.name, g->dev.c_str(),
                  line.c_str());
    }
  }
  // Again: the drain's requests count too.
  for (auto& g : guests) {
    const vfio_user::Client& c = g->bus->client();
    if (c.max_reply_wait() > max_wait) {
      max_wait = c.max_reply_wait();
      max_wait_at = absl::StrCat(vfio_user::CommandName(c.max_reply_wait_command()), " on ", g->dev);
    }
  }
  uint32_t worst_dup = 0;
  std::map<char, uint32_t> worst_by_kind;
  for (size_t i = 0; i < dups_per_kill.size(); ++i) {
    worst_dup = std::max(worst_dup, dups_per_kill[i]);
    uint32_t& w = worst_by_kind[event_kinds[i]];
    w = std::max(w, dups_per_kill[i]);
  }
  std::vector<std::string> phases;
  bool any_failed = false;
  for (const auto& d : devs) {
    auto dv = emud ? GetDevice(emud->stub(), d) : absl::StatusOr<v1::Device>(absl::UnavailableError("no emud"));
    std::string p = dv.ok() ? v1::Phase_Name(dv->status().phase()) : "?";
    if (dv.ok() && dv->status().phase() == v1::PHASE_FAILED) any_failed = true;
    phases.push_back(absl::StrCat(d, " ", absl::StripPrefix(p, "PHASE_")));
  }

  // Fds: emud's store and the workers, after the guests' state is as at start.
  std::vector<double> fdstore_end(ndev, -1);
  std::vector<pid_t> last_worker(ndev, 0);
  std::vector<int> worker_fds_end(ndev, 0);
  int emud_fds_end = 0;
  if (!failed_early) {
    for (size_t i = 0; i < ndev; ++i) {
      WaitFor([&] { return (fdstore_end[i] = FdStoreFds(*emud, devs[i])) == guests[i]->fdstore_start; },
              absl::Seconds(30));
      last_worker[i] = WorkerPid(*emud, devs[i]);
      worker_fds_end[i] = Measure(last_worker[i]).fds;
    }
    emud_fds_end = Measure(emud->pid()).fds;
  }

  const std::string tag = absl::StrCat("chaos [", cfg.name, "]");
  std::printf("%s doorbell %s, %u queue pair(s), %s, %s kills, emud default flags, %.1f s\n",
              tag.c_str(), cfg.doorbell, nq, LinkName(cfg.link),
              rapid ? absl::StrCat("rapid (each successor as soon as it serves, ", rapid_streak,
                                   " in a row per device)").c_str()
                    : "random-instant",
              chaos_s);
  std::printf(
      "%s kills: worker %d (%s), emud %d, upgrades %d; frames %lu, rounds %lu\n", tag.c_str(),
      worker_killed.load(),
      absl::StrJoin(kills_by_device, "/").c_str(), emud_killed.load(), upgraded.load(),
      (unsigned long)frames, (unsigned long)rounds);
  if (container) {
    auto fig = [](const std::vector<double>& v) {
      return absl::StrFormat("p50 %.1f p99 %.1f max %.1f ms (%zu)", Percentile(v, 0.5),
                             Percentile(v, 0.99), Percentile(v, 1.0), v.size());
    };
    std::printf("%s container deaths %d (emud-init+emud+workers SIGKILLed together, keeper "
                "kept the fds): guest-visible outage %s\n",
                tag.c_str(), containers_killed.load(), fig(container_ms).c_str());
    std::printf("%s keeper self-upgrades %d (every fd handed over SCM_RIGHTS): outage %s\n",
                tag.c_str(), keepers_upgraded.load(), fig(keeper_ms).c_str());
    std::printf("%s keeper kills %d (SIGKILL, a fresh keeper, workers re-deposited; traffic "
                "never waited for it): new keeper holding every fd again after %s\n",
                tag.c_str(), keepers_killed.load(), fig(redeposit_ms).c_str());
    std::printf("%s surge rollouts %d (a new emud from another binary path took every device "
                "over, the old one exited): outage %s\n",
                tag.c_str(), surged.load(), fig(surge_ms).c_str());
  }
  std::printf("%s reattach ms p50 %.2f p99 %.2f max %.2f (%zu samples)\n", tag.c_str(),
              Percentile(reattach_ms, 0.5), Percentile(reattach_ms, 0.99),
              Percentile(reattach_ms, 1.0), reattach_ms.size());
  PrintPhases(tag, reattach_samples, devs, emud ? emud->Log() : std::string());
  if (rapid) {
    std::printf("%s respawn (kill -> successor serving in emud's view) ms p50 %.2f p99 %.2f max %.2f\n",
                tag.c_str(), Percentile(respawn_ms, 0.5), Percentile(respawn_ms, 0.99),
                Percentile(respawn_ms, 1.0));
  }
  std::printf(
      "%s lost completions %lu%s, never received %lu, duplicates %lu (worst per event %u: worker "
      "kill %u, rapid kill %u, upgrade %u, emud kill %u)\n",
      tag.c_str(), (unsigned long)lost, failed_early ? " (not drained: the run failed)" : "",
      (unsigned long)missing, (unsigned long)dups_total, worst_dup,
      worst_by_kind['w'], worst_by_kind['r'], worst_by_kind['u'], worst_by_kind['e']);
  std::printf("%s max reply wait %.2f ms (%s; bound %.0f ms)\n", tag.c_str(),
              absl::ToDoubleMilliseconds(max_wait), max_wait_at.c_str(),
              absl::ToDoubleMilliseconds(kReplyBound));
  std::printf("%s devices at end: %s; frames moved while emud was down %lu\n", tag.c_str(),
              absl::StrJoin(phases, ", ").c_str(), (unsigned long)frames_while_emud_down.load());
  if (tap) std::printf("%s frames from the host kernel ignored %lu\n", tag.c_str(), (unsigned long)guests[0]->other_frames);
  if (!failed_early) {
    std::vector<std::string> fds;
    for (size_t i = 0; i < ndev; ++i) {
      fds.push_back(absl::StrCat(devs[i], ": fd store ", guests[i]->fdstore_start, " -> ",
                                 fdstore_end[i], ", worker ", guests[i]->worker_fds_start, " -> ",
                                 worker_fds_end[i]));
    }
    std::printf("%s fds %s; emud %d -> %d\n", tag.c_str(), absl::StrJoin(fds, "; ").c_str(),
                emud_fds_start, emud_fds_end);
  }
  std::printf("%s result %s\n", tag.c_str(),
              failed_early ? "FAILED (see below)" : any_failed ? "FAILED (device FAILED)" : "checked");
  std::fflush(stdout);

  EXPECT_GT(max_wait, absl::ZeroDuration()) << "the client recorded no reply wait";
  EXPECT_LT(max_wait, kReplyBound)
      << "a vfio-user request (" << max_wait_at << ") waited "
      << absl::ToDoubleMilliseconds(max_wait)
      << " ms for its reply: QEMU gives up at 5 s (x-msg-timeout)";
  EXPECT_FALSE(any_failed) << "a device went FAILED:\n"
                           << absl::StrJoin(devs, "\n", [&](std::string* out, const std::string& d) {
                                out->append(DeviceDiag(emud.get(), d));
                              });
  if (failed_early) {
    std::string diag;
    for (auto& g : guests) {
      const Flow& f = g->out;
      uint64_t first_missing = 0;
      while (first_missing < f.next_seq && f.received[first_missing] != 0) ++first_missing;
      absl::StrAppend(
          &diag, "\n", g->dev, ": sent ", f.next_seq, " received ", f.unique_received,
          " first missing seq ", first_missing,
          first_missing < f.next_seq ? absl::StrCat(" (completed ", int(f.completed[first_missing]), ")")
                                     : "",
          "; TX ring use/clean ", g->drv->tx_ring(0).next_to_use, "/",
          g->drv->tx_ring(0).next_to_clean, " RX ring use/clean ", g->drv->rx_ring(0).next_to_use,
          "/", g->drv->rx_ring(0).next_to_clean);
    }
    if (killer_error.empty()) {  // (the killer's message names them already)
      for (const auto& d : devs) absl::StrAppend(&diag, "\n", DeviceDiag(emud.get(), d));
    }
    for (const auto& e : error_log) absl::StrAppend(&diag, "\nguest error: ", e);
    std::string log = emud ? emud->Log() : "";
    ADD_FAILURE() << (killer_error.empty() ? "the guest saw errors" : killer_error) << diag
                  << "\nemud log (tail):\n"
                  << LogTail(log)
                  << (container ? "\nemud-keeper log (tail):\n" + LogTail(ReadFile(keeper.socket() + ".log"))
                                : std::string());
    return;
  }

  EXPECT_EQ(dups_before_kills, 0u) << "duplicates before any chaos event";
  EXPECT_EQ(errors, 0u) << (error_log.empty() ? "" : error_log[0]);
  for (const auto& e : error_log) ADD_FAILURE() << e;
  EXPECT_EQ(worker_killed.load(), worker_kills);
  EXPECT_EQ(emud_killed.load(), emud_kills);
  EXPECT_EQ(upgraded.load(), upgrades);
  EXPECT_EQ(containers_killed.load(), container_kills);
  EXPECT_EQ(keepers_upgraded.load(), keeper_upgrades);
  EXPECT_EQ(surged.load(), surges);
  EXPECT_EQ(keepers_killed.load(), keeper_kills);
  if (!rapid) {
    EXPECT_EQ(reattach_ms.size(),
              size_t(worker_kills + upgrades + container_kills + keeper_upgrades + surges))
        << "traffic resumed after every kill and upgrade";
  }
  EXPECT_EQ(lost, 0u) << "completed TX frames that never arrived";
  EXPECT_EQ(missing, 0u) << "frames never delivered after the drain";
  // A successor re-sends at most the burst in flight (tx budget) per kill.
  EXPECT_LE(worst_dup, 256u);
  for (size_t i = 0; i < ndev; ++i) {
    if (kills_by_device[i] > 0) {
      EXPECT_NE(last_worker[i], guests[i]->first_worker) << devs[i];
    }
    EXPECT_EQ(fdstore_end[i], guests[i]->fdstore_start) << devs[i] << ": fd store count";
    EXPECT_EQ(worker_fds_end[i], guests[i]->worker_fds_start)
        << devs[i] << ": worker fds\nfirst worker:\n"
        << guests[i]->fd_list_start << "last worker:\n"
        << FdList(last_worker[i]);
  }
  for (auto& g : guests) EXPECT_FALSE(g->drv->reset_impending()) << g->dev;
  if (std::getenv("CHAOS_VERBOSE") != nullptr) std::printf("%s\n", emud->Log().c_str());

  if (::testing::Test::HasFailure()) {
    std::printf("emud log (tail):\n%s\n", LogTail(emud->Log()).c_str());
  }
  emud->Stop(SIGTERM);
  if (container) kill_container(cgroup);
}

INSTANTIATE_TEST_SUITE_P(
    Chaos, ChaosTest,
    ::testing::Values(
        ChaosConfig{"ContainerDeathsMmapTwoQueues", "mmap", 2, Link::kLoopback,
                    Kills::kContainer},
        ChaosConfig{"TrapOneQueue", "trap", 1},
        ChaosConfig{"MmapTwoQueues", "mmap", 2},
        ChaosConfig{"MmapFourQueuesTwoThreads", "mmap", 4, Link::kLoopback, Kills::kRandom, 2},
        ChaosConfig{"TrapFourQueuesTwoThreads", "trap", 4, Link::kLoopback, Kills::kRandom, 2},
        ChaosConfig{"MmapTwentyQueuesLargeVfTwoThreads", "mmap", 20, Link::kLoopback,
                    Kills::kRandom, 2, /*large_vf=*/true},
        ChaosConfig{"TapPing", "trap", 1, Link::kTap},
        ChaosConfig{"RapidKillsTrapOneQueue", "trap", 1, Link::kLoopback, Kills::kRapid},
        ChaosConfig{"RapidKillsMmapTwoQueues", "mmap", 2, Link::kLoopback, Kills::kRapid},
        ChaosConfig{"PeerMmapTwoQueues", "mmap", 2, Link::kPeer},
        ChaosConfig{"PeerTrapRapidKills", "trap", 1, Link::kPeer, Kills::kRapid}),
    [](const ::testing::TestParamInfo<ChaosConfig>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace emud::testing
