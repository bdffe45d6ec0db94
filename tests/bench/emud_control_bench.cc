// emud control-plane benchmark. Starts a real emud on a private state
// directory and measures, side by side in one run:
//
//  1. create-device -> LISTENING latency (p50/p99) through emud's gRPC API
//     (CreateDevice, then the LISTENING event on a WatchDevices stream),
//     against the same worker binary spawned directly by this process with the
//     same arguments (spawn -> its vfio-user socket accepts a connection).
//     The ratio is emud's overhead over a bare process start.
//  2. The CPU and memory of N idle devices (emud + workers) over a window.
//  3. Optionally, create/delete cycles with emud's fds, sockets, RSS, tmpfs
//     entries and children before and after (leak check).
//
// Usage: emud_control_bench [--worker PATH] [--samples N] [--idle N]
//        [--idle-seconds S] [--cycles N]
// Default worker: the fake worker (tests/fakes); pass
// --worker bazel-bin/dataplane/emud-worker for the real one.
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/integration/emud_harness.h"

extern char** environ;

namespace emud::testing {
namespace {

namespace v1 = emud::v1;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

bool Connectable(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

// Spawns the worker directly and returns the time until its socket accepts.
double DirectStartMs(const std::string& worker, const std::string& state_dir, int i) {
  std::string name = absl::StrCat("direct", i);
  std::string sock = absl::StrCat(state_dir, "/d", i, ".sock");
  char mac[32];
  std::snprintf(mac, sizeof(mac), "02:00:00:00:%02x:%02x", (i >> 8) & 0xff, i & 0xff);
  std::vector<std::string> argv = {worker,        "--device", name,        "--state-dir",
                                   state_dir,     "--socket", sock,        "--mac",
                                   mac,           "--queues", "1",         "--backend",
                                   "loopback",    "--doorbell", "trap"};
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  absl::Time t0 = absl::Now();
  pid_t pid = 0;
  if (posix_spawn(&pid, cargv[0], nullptr, nullptr, cargv.data(), environ) != 0) return -1;
  bool ok = WaitFor([&] { return Connectable(sock); }, absl::Seconds(10));
  double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  ::kill(pid, SIGTERM);
  ::waitpid(pid, nullptr, 0);
  std::error_code ec;
  std::filesystem::remove(sock, ec);
  return ok ? ms : -1;
}

struct Totals {
  double cpu = 0;
  long rss_kb = 0;
  long pss_kb = 0;
};

long PssKb(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/smaps_rollup"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Pss:", 0) == 0) return std::strtol(line.c_str() + 4, nullptr, 10);
  }
  return 0;
}

Totals Sum(const std::vector<pid_t>& pids) {
  Totals t;
  for (pid_t p : pids) {
    ProcResources r = Measure(p);
    t.cpu += r.cpu_seconds;
    t.rss_kb += r.rss_kb;
    t.pss_kb += PssKb(p);
  }
  return t;
}

int Main(int argc, char** argv) {
  std::string worker = Runfile("tests/fakes/fake_worker");
  int samples = 100, idle = 64, cycles = 0;
  double idle_seconds = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i], v = argv[i + 1];
    if (f == "--worker") worker = std::filesystem::absolute(v).string();
    else if (f == "--samples") samples = std::atoi(v.c_str());
    else if (f == "--idle") idle = std::atoi(v.c_str());
    else if (f == "--idle-seconds") idle_seconds = std::atof(v.c_str());
    else if (f == "--cycles") cycles = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      return 1;
    }
  }
  TempStateDir dir("bench");
  EmudProcess::Options o;
  o.state_dir = dir.path() + "/state";
  o.worker_binary = worker;
  o.extra_flags = {"--stop-workers-on-exit"};
  auto emud = EmudProcess::Start(o);
  if (!emud.ok()) {
    std::fprintf(stderr, "%s\n", emud.status().ToString().c_str());
    return 1;
  }
  EmudProcess& e = **emud;
  std::printf("worker: %s\n", worker.c_str());

  // 1. create -> LISTENING, emud vs direct spawn, interleaved.
  std::vector<double> via_emud, direct, create_rpc;
  std::string direct_dir = dir.path() + "/direct";
  std::filesystem::create_directories(direct_dir);
  for (int i = 0; i < samples; ++i) {
    double d = DirectStartMs(worker, direct_dir, i);
    if (d >= 0) direct.push_back(d);
    std::string name = absl::StrCat("lat", i);
    grpc::ClientContext wctx;
    wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::WatchDevicesRequest wreq;
    wreq.add_names(name);
    wreq.set_skip_initial(true);
    auto reader = e.stub()->WatchDevices(&wctx, wreq);
    absl::SleepFor(absl::Milliseconds(2));  // let the watch register
    absl::Time t0 = absl::Now();
    grpc::Status s = CreateDevice(e.stub(), name, nullptr);
    create_rpc.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
    if (!s.ok()) {
      std::fprintf(stderr, "create: %s\n", s.error_message().c_str());
      return 1;
    }
    v1::DeviceEvent ev;
    bool listening = false;
    while (reader->Read(&ev)) {
      if (ev.device().status().phase() == v1::PHASE_LISTENING) {
        listening = true;
        break;
      }
    }
    double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    wctx.TryCancel();
    reader->Finish();
    if (listening) via_emud.push_back(ms);
    DeleteDevice(e.stub(), name);
  }
  double ep50 = Percentile(via_emud, 0.5), ep99 = Percentile(via_emud, 0.99);
  double dp50 = Percentile(direct, 0.5), dp99 = Percentile(direct, 0.99);
  std::printf("create-device -> LISTENING (%zu samples): via emud p50 %.2f ms p99 %.2f ms; "
              "direct spawn -> socket accepts p50 %.2f ms p99 %.2f ms; ratio emud/direct "
              "p50 %.2f p99 %.2f\n",
              via_emud.size(), ep50, ep99, dp50, dp99, dp50 > 0 ? ep50 / dp50 : 0,
              dp99 > 0 ? ep99 / dp99 : 0);

  std::printf("  of which the CreateDevice call: p50 %.2f ms p99 %.2f ms\n",
              Percentile(create_rpc, 0.5), Percentile(create_rpc, 0.99));

  // 2. idle devices.
  if (idle > 0) {
    for (int i = 0; i < idle; ++i) {
      grpc::Status s = CreateDevice(e.stub(), absl::StrCat("idle", i), nullptr);
      if (!s.ok()) {
        std::fprintf(stderr, "create idle%d: %s\n", i, s.error_message().c_str());
        return 1;
      }
    }
    std::vector<pid_t> workers;
    bool all = WaitFor(
        [&] {
          workers.clear();
          for (int i = 0; i < idle; ++i) {
            auto d = GetDevice(e.stub(), absl::StrCat("idle", i));
            if (!d.ok() || d->status().phase() != v1::PHASE_LISTENING) return false;
            workers.push_back(d->status().worker_pid());
          }
          return true;
        },
        absl::Seconds(60));
    if (!all) {
      std::fprintf(stderr, "idle devices did not all reach LISTENING\n");
      return 1;
    }
    absl::SleepFor(absl::Seconds(1));
    Totals e0 = Sum({e.pid()}), w0 = Sum(workers);
    absl::Time t0 = absl::Now();
    absl::SleepFor(absl::Seconds(idle_seconds));
    double wall = absl::ToDoubleSeconds(absl::Now() - t0);
    Totals e1 = Sum({e.pid()}), w1 = Sum(workers);
    double ecpu = (e1.cpu - e0.cpu) / wall * 100, wcpu = (w1.cpu - w0.cpu) / wall * 100;
    std::printf("%d idle devices over %.1f s: CPU emud %.3f%% workers %.3f%% (total %.3f%% of "
                "one core, %.4f%% per device); memory emud RSS %ld kB PSS %ld kB, workers RSS "
                "%ld kB PSS %ld kB total (%.0f kB PSS per worker)\n",
                idle, wall, ecpu, wcpu, ecpu + wcpu, (ecpu + wcpu) / idle, e1.rss_kb, e1.pss_kb,
                w1.rss_kb, w1.pss_kb, static_cast<double>(w1.pss_kb) / idle);
    for (int i = 0; i < idle; ++i) DeleteDevice(e.stub(), absl::StrCat("idle", i));
  }

  // 3. create/delete cycles.
  if (cycles > 0) {
    auto cycle = [&](int i) {
      std::string name = absl::StrCat("cyc", i % 13);
      if (!CreateDevice(e.stub(), name, nullptr).ok()) return false;
      if (!WaitPhase(e.stub(), name, v1::PHASE_LISTENING)) return false;
      return DeleteDevice(e.stub(), name).ok();
    };
    for (int i = 0; i < 20; ++i) cycle(i);
    ProcResources b = Measure(e.pid());
    int fb = CountFiles(o.state_dir);
    absl::Time t0 = absl::Now();
    int failed = 0;
    for (int i = 0; i < cycles; ++i) failed += cycle(i) ? 0 : 1;
    double secs = absl::ToDoubleSeconds(absl::Now() - t0);
    ProcResources a = Measure(e.pid());
    int fa = CountFiles(o.state_dir);
    std::printf("%d create/delete cycles in %.1f s (%.1f ms each, %d failed): emud fds %d -> %d, "
                "sockets %d -> %d, RSS %ld -> %ld kB, state entries %d -> %d, children %d -> "
                "%d => %s\n",
                cycles, secs, secs * 1000 / cycles, failed, b.fds, a.fds, b.sockets, a.sockets,
                b.rss_kb, a.rss_kb, fb, fa, b.children, a.children,
                (failed == 0 && a.fds == b.fds && a.sockets == b.sockets && fa == fb &&
                 a.children == 0)
                    ? "no leak"
                    : "LEAK");
  }
  e.Stop(SIGTERM);
  return 0;
}

}  // namespace
}  // namespace emud::testing

int main(int argc, char** argv) { return emud::testing::Main(argc, argv); }
