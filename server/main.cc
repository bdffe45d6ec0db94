// emud: the emud control plane. Serves emud.v1.DeviceService over gRPC,
// supervises one emud-worker per device and exports Prometheus metrics.
// See device_manager.h for supervision and the worker command line.
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/flags/flag.h"
#include "base/command_line.h"
#include "base/log.h"
#include "base/sd_notify.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "prometheus/exposer.h"
#include "worker_api/worker_args.h"
#include "server/device_manager.h"
#include "server/metrics.h"
#include "server/reflection_v1.h"
#include "server/service.h"
#include "base/socket_access.h"
#include "base/unique_fd.h"
#include "fdstore/keeper.h"
#include "fdstore/process.h"
#include "server/handover.h"
#include "state_store/state_dir.h"

ABSL_FLAG(std::string, state_dir, emud::state_store::kDefaultStateDir,
          "Directory (on tmpfs) holding emud's and the devices' state");
ABSL_FLAG(std::string, grpc_listen, "",
          "Comma-separated gRPC listen addresses: unix:///abs/path or host:port. Default: "
          "unix://<state-dir>/emud.sock (a UNIX socket, mode 0660). TCP addresses must be "
          "loopback unless --allow-remote");
ABSL_FLAG(bool, allow_remote, false,
          "Allow --grpc-listen on non-loopback TCP addresses (the API has no authentication)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "host:port of the Prometheus endpoint (/metrics); empty disables it");
ABSL_FLAG(std::string, socket_dir, "",
          "Directory for devices' default vfio-user sockets (<dir>/<name>/vfio-user.sock, a "
          "directory per device). Default: <state-dir>/sockets");
ABSL_FLAG(std::string, socket_roots, "",
          "Comma-separated absolute directories under which a create request may name an "
          "explicit socket path (spec.socket_path / emuctl --socket), besides --socket-dir. "
          "Default: none (only --socket-dir)");
ABSL_FLAG(std::string, socket_group, "",
          "Numeric group id given to device sockets (and their per-device directories) whose "
          "create request names no group, e.g. the group the VMMs run in. Default: emud's group");
ABSL_FLAG(std::string, worker_binary, "",
          "Path of emud-worker. Default: emud-worker next to emud, then ../dataplane/emud-worker "
          "(the Bazel output tree), then emud's runfiles");
ABSL_FLAG(bool, allow_worker_override, false,
          "Let UpgradeWorker requests name another worker binary");
ABSL_FLAG(absl::Duration, worker_stop_timeout, absl::Seconds(5),
          "Grace period between SIGTERM and SIGKILL when stopping a worker");
ABSL_FLAG(absl::Duration, restart_backoff_initial, absl::Milliseconds(100),
          "Delay before restarting a worker that died before it was serving (a worker that "
          "was serving is always restarted at once); doubles per consecutive such exit. While "
          "a guest is connected the delay starts at 10ms and never exceeds 100ms");
ABSL_FLAG(absl::Duration, restart_backoff_max, absl::Seconds(10), "Upper bound of the delay");
ABSL_FLAG(int, datapath_threads, 1,
          "data-path threads per worker (1..16, at most one per queue pair): queue pair q is "
          "served by thread q % N, thread 0 being the worker's event loop, which also serves "
          "the vfio-user session. 1 (default): measured best on small hosts, and an idle "
          "mapped-doorbell device polls on one thread only (README, Data-path threads)");
ABSL_FLAG(int, crash_loop_restarts, 5,
          "Consecutive deaths before serving that are retried; the next one marks the device "
          "FAILED");
ABSL_FLAG(int, startup_rt_priority, 1,
          "SCHED_FIFO priority (1-99) of emud's supervision loop and of a starting worker until "
          "its first frame (at most 200 ms), so that a successor's start does not wait behind "
          "other work on the machine; 0: no real-time scheduling. Needs CAP_SYS_NICE (without "
          "it both run SCHED_OTHER)");
ABSL_FLAG(bool, standby_workers, true,
          "keep one standby worker per running device: exec'd and initialised ahead of need, "
          "promoted when the device's worker dies instead of spawning its successor (no fork "
          "or exec on the reattach path); costs one idle process per device (RSS about 5 MiB, "
          "0.4 MiB of it private)");
ABSL_FLAG(std::string, fd_keeper, "auto",
          "Where the devices' fds are kept: PATH of emud-keeper's socket (wait for it at start), "
          "'auto' (<state-dir>/keeper.sock if a keeper answers there, else in emud), or 'none' "
          "(in emud: a whole-container restart then resets every guest)");
ABSL_FLAG(bool, takeover, false,
          "If another emud serves --state-dir, take its devices over, each as a live upgrade of "
          "its worker, then serve in its place (a surge rollout; both need the same --fd-keeper)");
ABSL_FLAG(bool, stop_workers_on_exit, false,
          "Stop all workers when emud exits (default: leave them serving; the next emud adopts "
          "them)");
ABSL_FLAG(std::string, log_format, "text",
          "Log line format of emud and its workers (on stderr): text (time, level, program, "
          "device, message) or json (one object per line: time, level, program, pid, device, "
          "msg)");
ABSL_FLAG(std::string, log_level, "info",
          "Least severe level logged by emud and its workers: debug, info, warning or error");
ABSL_FLAG(bool, v, false, "Verbose: the same as --log-level=debug");

namespace {

using emud::UniqueFd;

// Logs and exits at once. _Exit, not exit: a failure after the device
// manager started has threads running, and static destructors and atexit
// handlers under their feet could hang the exit (emud-init then never sees
// it and never restarts emud).
[[noreturn]] void Fail(absl::string_view msg) {
  emud::log::Error(msg);
  std::fflush(nullptr);
  std::_Exit(2);
}

// Takes the state directory's lock: a POSIX record lock (F_SETLK), which
// belongs to this process alone, not an flock, which belongs to the open
// file and so also to a child being spawned until its exec closes the
// O_CLOEXEC fd: an emud killed while spawning a worker left its flock held
// by that child for the rest of the spawn (~20 ms under ASan, seen in the
// chaos suite), and the emud started next refused to run. On failure
// `*holder` is the holding process (0 if unknown).
bool LockStateDir(int fd, pid_t* holder) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_SETLK, &fl) == 0) return true;
  struct flock q = fl;
  *holder = ::fcntl(fd, F_GETLK, &q) == 0 && q.l_type != F_UNLCK ? q.l_pid : 0;
  return false;
}

// What an operator needs to know about a state directory that is not on
// tmpfs (empty if it is).
std::string NonTmpfsWarning(const std::string& dir) {
  struct statfs fs;
  if (::statfs(dir.c_str(), &fs) != 0) return "";
  constexpr unsigned long kTmpfs = 0x01021994, kRamfs = 0x858458f6;
  const auto type = static_cast<unsigned long>(fs.f_type);
  if (type == kTmpfs || type == kRamfs) return "";
  std::string name;
  switch (type) {
    case 0xef53: name = "ext2/3/4"; break;
    case 0x58465342: name = "xfs"; break;
    case 0x9123683e: name = "btrfs"; break;
    case 0x794c7630: name = "overlayfs"; break;
    case 0x6969: name = "nfs"; break;
    case 0x2fc12fc1: name = "zfs"; break;
    default: name = absl::StrCat("type 0x", absl::Hex(type));
  }
  return absl::StrCat(
      "--state-dir ", dir, " is on ", name,
      ", not tmpfs: every committed guest request and queue-index update then dirties pages "
      "the kernel writes back to that disk (disk I/O under guest traffic, where tmpfs has "
      "none), and the state outlives a reboot that the guests' connections do not; put it on "
      "a tmpfs (e.g. under /dev/shm)");
}

// Counts this start in <state-dir>/emud.starts (emud_starts_total); 0 if
// the count cannot be kept (a full tmpfs: the metric then starts over).
uint64_t CountStart(const std::string& state_dir) {
  const std::string path = state_dir + "/emud.starts";
  uint64_t n = 0;
  {
    std::ifstream in(path);
    std::string line;
    if (std::getline(in, line)) (void)absl::SimpleAtoi(line, &n);
  }
  ++n;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << n << "\n";
    if (!out.flush()) {
      emud::log::Warning(absl::StrCat("cannot record emud's start in ", path,
                                      "; emud_starts_total counts from this start"));
      ::unlink(tmp.c_str());
      return 1;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return 1;
  return n;
}

// Why the metrics endpoint cannot listen on host:port, with what to do.
std::string MetricsListenError(const std::string& addr, const std::string& what) {
  const size_t colon = addr.rfind(':');
  std::string host = colon == std::string::npos ? addr : addr.substr(0, colon);
  const std::string port = colon == std::string::npos ? "" : addr.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
  if (colon == std::string::npos || rc != 0) {
    return absl::StrCat("--metrics-listen ", addr, ": not a usable HOST:PORT (",
                        rc != 0 ? gai_strerror(rc) : "no port", "); pass --metrics-listen "
                        "HOST:PORT, e.g. 127.0.0.1:9464, or --metrics-listen= to disable it");
  }
  std::string why = what;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) continue;
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      const int err = errno;
      ::freeaddrinfo(res);
      if (err == EADDRINUSE) {
        return absl::StrCat("metrics port ", port, " on ", host, " is in use (",
                            std::strerror(err),
                            "): another process listens there, maybe another emud; pass "
                            "--metrics-listen HOST:PORT with a free port, or --metrics-listen= "
                            "to disable the endpoint");
      }
      return absl::StrCat("--metrics-listen ", addr, ": cannot listen there (",
                          std::strerror(err), "); pass --metrics-listen HOST:PORT with an "
                          "address of this host, or --metrics-listen= to disable it");
    }
  }
  ::freeaddrinfo(res);
  return absl::StrCat("--metrics-listen ", addr, ": cannot serve metrics (", why,
                      "); pass another --metrics-listen HOST:PORT, or --metrics-listen= to "
                      "disable it");
}

std::string Dirname(const std::string& p) { return std::filesystem::path(p).parent_path(); }

std::string FindWorkerBinary() {
  std::error_code ec;
  std::string self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  std::string dir = Dirname(self);
  for (const std::string& cand :
       {dir + "/emud-worker", dir + "/../dataplane/emud-worker",
        self + ".runfiles/emud/dataplane/emud-worker"}) {
    if (::access(cand.c_str(), X_OK) == 0) {
      return std::filesystem::weakly_canonical(cand, ec).string();
    }
  }
  return "";
}

bool IsLoopbackHost(absl::string_view host) {
  return host == "localhost" || host == "::1" || host == "[::1]" ||
         absl::StartsWith(host, "127.");
}

// Removes a stale UNIX socket at `path` (refusing a live one) and creates
// its directory. A socket that accepts connections is stale all the same
// when the process that listened on it is gone: an emud killed while it was
// spawning a worker leaves its listening socket open in that child until
// the child's exec closes it (5-26 ms under load, seen in the chaos suite),
// and nobody will ever accept on it.
void PrepareUnixListen(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(Dirname(path), ec);
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!S_ISSOCK(st.st_mode)) Fail(absl::StrCat(path, " exists and is not a socket"));
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    // The peer credentials of a connection are the listener's, taken when it
    // called listen().
    struct ucred cred {};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0 ||
        !emud::fdstore::ProcessGone(cred.pid)) {
      Fail(absl::StrCat("another server is listening on ", path,
                        cred.pid > 0 ? absl::StrCat(" (pid ", cred.pid, ")") : "",
                        "; stop it or choose another --grpc-listen"));
    }
    emud::log::Info(absl::StrCat("replacing ", path, ": its server (pid ", cred.pid,
                                 ") is gone; only a child it was spawning still held it"));
  }
  ::unlink(path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const absl::Time start_time = absl::Now();
  emud::ProgramInfo info;
  info.name = "emud";
  info.usage =
      "emud: vfio-user device-emulation service (control plane).\n"
      "Usage: emud [--state-dir DIR] [--grpc-listen ADDR[,ADDR]] [--metrics-listen HOST:PORT]\n"
      "            [--socket-dir DIR] [--worker-binary PATH] ... (every flag has a default)\n"
      "SIGTERM or SIGINT shut emud down gracefully; workers keep serving unless\n"
      "--stop-workers-on-exit. Under systemd (Type=notify) emud reports READY=1 once it\n"
      "serves its API and metrics.";
  // Signals are taken synchronously by main (sigwait); every thread created
  // from here on inherits the blocked mask. Workers get a clean mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGUSR1);  // a successor took everything over (handover)
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  // Flags are documented with dashes (--state-dir); both spellings work.
  std::vector<std::string> rest = emud::ParseDashedCommandLine(argc, argv, info);
  {
    emud::log::Format format;
    emud::log::Level level;
    if (absl::Status s = emud::log::ParseFormat(absl::GetFlag(FLAGS_log_format), &format);
        !s.ok()) {
      Fail(s.message());
    }
    if (absl::Status s = emud::log::ParseLevel(absl::GetFlag(FLAGS_log_level), &level); !s.ok()) {
      Fail(s.message());
    }
    if (absl::GetFlag(FLAGS_v)) level = emud::log::Level::kDebug;
    emud::log::Init("emud", format, level);
    emud::log::ExportToEnvironment();  // the workers log the same way
  }
  if (rest.size() > 1) Fail(absl::StrCat("unexpected argument '", rest[1], "'; see --help"));

  emud::server::ManagerOptions opts;
  opts.state_dir = absl::GetFlag(FLAGS_state_dir);
  if (opts.state_dir.empty() || opts.state_dir[0] != '/') Fail("--state-dir must be an absolute path");
  while (opts.state_dir.size() > 1 && opts.state_dir.back() == '/') opts.state_dir.pop_back();
  opts.socket_dir = absl::GetFlag(FLAGS_socket_dir);
  if (opts.socket_dir.empty()) opts.socket_dir = opts.state_dir + "/sockets";
  if (opts.socket_dir[0] != '/') Fail("--socket-dir must be an absolute path");
  for (absl::string_view r : absl::StrSplit(absl::GetFlag(FLAGS_socket_roots), ',', absl::SkipEmpty())) {
    if (r.empty() || r[0] != '/' || absl::StrContains(r, "/../") || absl::EndsWith(r, "/..")) {
      Fail(absl::StrCat("--socket-roots: '", r, "' is not an absolute, normalised directory"));
    }
    opts.socket_roots.emplace_back(r);
  }
  if (!absl::GetFlag(FLAGS_socket_group).empty()) {
    auto gid = emud::ParseNumericId(absl::GetFlag(FLAGS_socket_group), "--socket-group");
    if (!gid.ok()) Fail(gid.status().message());
    opts.socket_group = *gid;
  }
  opts.worker_binary = absl::GetFlag(FLAGS_worker_binary);
  if (opts.worker_binary.empty()) opts.worker_binary = FindWorkerBinary();
  if (opts.worker_binary.empty()) {
    Fail("cannot find emud-worker next to emud; pass --worker-binary /path/to/emud-worker");
  }
  {
    std::error_code ec;
    opts.worker_binary = std::filesystem::absolute(opts.worker_binary, ec).string();
  }
  if (::access(opts.worker_binary.c_str(), X_OK) != 0) {
    Fail(absl::StrCat("--worker-binary ", opts.worker_binary, " is not an executable file"));
  }
  opts.allow_worker_override = absl::GetFlag(FLAGS_allow_worker_override);
  opts.worker_stop_timeout = absl::GetFlag(FLAGS_worker_stop_timeout);
  opts.stop_workers_on_exit = absl::GetFlag(FLAGS_stop_workers_on_exit);
  {
    const std::string keeper = absl::GetFlag(FLAGS_fd_keeper);
    if (keeper == "auto") {
      const std::string path = opts.state_dir + "/keeper.sock";
      if (emud::fdstore::KeeperClient::Connect(path).ok()) opts.fd_keeper = path;
    } else if (keeper != "none") {
      if (keeper.empty() || keeper[0] != '/') {
        Fail("--fd-keeper must be an absolute socket path, 'auto' or 'none'");
      }
      opts.fd_keeper = keeper;
    }
    if (opts.fd_keeper.empty()) {
      emud::log::Warning(
          "fd store in emud (no emud-keeper): a restart of emud's whole container resets every "
          "guest; run emud-keeper to survive it");
    }
  }
  opts.restart.initial_backoff = absl::GetFlag(FLAGS_restart_backoff_initial);
  opts.restart.max_backoff = absl::GetFlag(FLAGS_restart_backoff_max);
  opts.restart.max_consecutive_failures = absl::GetFlag(FLAGS_crash_loop_restarts);
  opts.datapath_threads = absl::GetFlag(FLAGS_datapath_threads);
  if (opts.datapath_threads < 1 || opts.datapath_threads > emud::worker_api::kMaxQueuePairs) {
    Fail(absl::StrCat("--datapath-threads must be 1..", emud::worker_api::kMaxQueuePairs));
  }
  if (opts.restart.initial_backoff <= absl::ZeroDuration() ||
      opts.restart.max_backoff < opts.restart.initial_backoff) {
    Fail("need 0 < --restart-backoff-initial <= --restart-backoff-max");
  }
  if (opts.restart.max_consecutive_failures < 0) Fail("--crash-loop-restarts must be >= 0");
  opts.startup_rt_priority = absl::GetFlag(FLAGS_startup_rt_priority);
  opts.standby_workers = absl::GetFlag(FLAGS_standby_workers);
  if (opts.startup_rt_priority < 0 || opts.startup_rt_priority > 99) {
    Fail("--startup-rt-priority must be 0 (off) or 1-99");
  }

  // One emud per state directory.
  std::error_code ec;
  std::filesystem::create_directories(opts.state_dir, ec);
  if (ec) Fail(absl::StrCat("cannot create --state-dir ", opts.state_dir, ": ", ec.message()));
  if (std::string w = NonTmpfsWarning(opts.state_dir); !w.empty()) emud::log::Warning(w);
  std::string lock_path = opts.state_dir + "/emud.lock";
  UniqueFd lock_fd(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock_fd.valid()) Fail(absl::StrCat("cannot open ", lock_path, ": ", std::strerror(errno)));
  std::unique_ptr<emud::server::HandoverClient> predecessor;
  pid_t holder = 0;
  if (!LockStateDir(lock_fd.get(), &holder)) {
    if (!absl::GetFlag(FLAGS_takeover)) {
      Fail(absl::StrCat("another emud", holder > 0 ? absl::StrCat(" (pid ", holder, ")") : "",
                        " already uses --state-dir ", opts.state_dir, " (lock ", lock_path,
                        "); stop it, or pass --takeover to take its devices over"));
    }
    if (opts.fd_keeper.empty()) {
      Fail("--takeover needs emud-keeper (--fd-keeper): the devices' fds must outlive the emud "
           "being replaced");
    }
    auto c = emud::server::HandoverClient::Connect(emud::server::HandoverSocket(opts.state_dir));
    if (!c.ok()) Fail(absl::StrCat("--takeover: ", c.status().message()));
    absl::Status b = (*c)->Begin();
    if (!b.ok()) Fail(absl::StrCat("--takeover: ", b.message()));
    predecessor = std::move(*c);
    // It releases the lock once it stopped supervising.
    absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (!LockStateDir(lock_fd.get(), &holder)) {
      if (absl::Now() > give_up) Fail("--takeover: the running emud did not release its lock");
      absl::SleepFor(absl::Milliseconds(5));
    }
    emud::log::Info("taking the devices over from the running emud");
  }

  std::vector<std::string> listen;
  std::string grpc_listen = absl::GetFlag(FLAGS_grpc_listen);
  if (grpc_listen.empty()) grpc_listen = "unix://" + opts.state_dir + "/emud.sock";
  for (absl::string_view a : absl::StrSplit(grpc_listen, ',', absl::SkipEmpty())) {
    listen.emplace_back(a);
  }

  // Refuse a live gRPC socket before adopting or restarting any worker (a
  // takeover's predecessor still serves it: checked once it finished).
  if (predecessor == nullptr) {
    for (const std::string& addr : listen) {
      if (absl::StartsWith(addr, "unix:///") && addr.size() - 7 < sizeof(sockaddr_un::sun_path)) {
        PrepareUnixListen(addr.substr(7));
      }
    }
  }

  emud::server::Metrics metrics;
  metrics.SetStarts(CountStart(opts.state_dir));
  auto manager = emud::server::DeviceManager::Open(opts, &metrics);
  if (!manager.ok()) Fail(manager.status().ToString());
  absl::Status s = (*manager)->Start(
      predecessor == nullptr
          ? std::function<absl::Status(const std::string&)>()
          : [&](const std::string& name) { return predecessor->Release(name); });
  if (!s.ok()) Fail(s.ToString());
  if (predecessor != nullptr) {
    // It stops serving its API and metrics; then we bind them.
    s = predecessor->Finish();
    if (!s.ok()) Fail(absl::StrCat("--takeover: ", s.message()));
    predecessor.reset();
    emud::log::Info("took every device over");
  }

  emud::server::DeviceServiceImpl service(
      manager->get(), emud::server::ServerIdentity{opts.state_dir, opts.socket_dir, start_time});
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::vector<std::string> unix_paths;
  std::vector<std::unique_ptr<int>> ports;
  for (const std::string& addr : listen) {
    if (absl::StartsWith(addr, "unix://")) {
      std::string path = addr.substr(7);
      if (path.empty() || path[0] != '/') {
        Fail(absl::StrCat("--grpc-listen ", addr, ": use unix:///absolute/path"));
      }
      if (path.size() >= sizeof(sockaddr_un::sun_path)) {
        Fail(absl::StrCat("--grpc-listen ", addr, ": path longer than ",
                          sizeof(sockaddr_un::sun_path) - 1, " bytes"));
      }
      PrepareUnixListen(path);
      unix_paths.push_back(path);
      builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
    } else {
      size_t colon = addr.rfind(':');
      int port = 0;
      if (colon == std::string::npos || !absl::SimpleAtoi(addr.substr(colon + 1), &port) ||
          port < 0 || port > 65535) {
        Fail(absl::StrCat("--grpc-listen ", addr, ": expected unix:///path or host:port"));
      }
      std::string host = addr.substr(0, colon);
      if (!IsLoopbackHost(host) && !absl::GetFlag(FLAGS_allow_remote)) {
        Fail(absl::StrCat("--grpc-listen ", addr,
                          ": not a loopback address; the API is unauthenticated, pass "
                          "--allow-remote to expose it anyway"));
      }
      ports.push_back(std::make_unique<int>(0));
      builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), ports.back().get());
    }
  }
  builder.RegisterService(&service);
  // grpc.reflection.v1 next to the plugin's v1alpha (server/reflection_v1.h).
  emud::server::ReflectionV1Service reflection_v1;
  builder.RegisterService(&reflection_v1);
  mode_t old_umask = ::umask(0117);  // UNIX sockets come out 0660
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ::umask(old_umask);
  if (server == nullptr) Fail(absl::StrCat("cannot serve gRPC on ", grpc_listen));
  reflection_v1.SetServer(server.get());
  for (const auto& p : unix_paths) ::chmod(p.c_str(), 0660);
  for (const auto& p : ports) {
    if (*p == 0) Fail(absl::StrCat("cannot bind a TCP address of --grpc-listen ", grpc_listen));
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  server->GetHealthCheckService()->SetServingStatus("emud.v1.DeviceService", true);

  std::unique_ptr<prometheus::Exposer> exposer;
  std::string metrics_addr = absl::GetFlag(FLAGS_metrics_listen);
  std::string metrics_url = "disabled";
  if (!metrics_addr.empty()) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(metrics_addr, 2);
    } catch (const std::exception& e) {
      // prometheus-cpp only says "null context when constructing CivetServer".
      Fail(MetricsListenError(metrics_addr, e.what()));
    }
    exposer->RegisterCollectable(metrics.registry());
    exposer->RegisterCollectable(metrics.process_collector());
    auto bound = exposer->GetListeningPorts();
    std::string host = metrics_addr.substr(0, metrics_addr.rfind(':'));
    metrics_url = absl::StrCat("http://", host, ":", bound.empty() ? 0 : bound[0], "/metrics");
  }
  std::vector<std::string> served;
  for (const auto& p : unix_paths) served.push_back("unix://" + p);
  size_t pi = 0;
  for (const std::string& addr : listen) {
    if (!absl::StartsWith(addr, "unix://")) {
      served.push_back(absl::StrCat(addr.substr(0, addr.rfind(':')), ":", *ports[pi++]));
    }
  }
  emud::log::Info(absl::StrCat("ready: grpc ", absl::StrJoin(served, ","), " metrics ",
                               metrics_url, " state ", opts.state_dir, " worker ",
                               opts.worker_binary));
  // systemd (Type=notify): the API and metrics are served. Workers must not
  // inherit NOTIFY_SOCKET; the address is kept for STOPPING=1.
  std::string notify_socket;
  if (const char* n = ::getenv(emud::kNotifySocketEnv); n != nullptr) notify_socket = n;
  if (absl::Status s = emud::SdNotify(
          absl::StrCat("READY=1\nSTATUS=serving ", absl::StrJoin(served, ",")),
          /*unset_environment=*/true);
      !s.ok()) {
    emud::log::Warning(s.message());
  }
  auto notify_stopping = [&] {
    if (!notify_socket.empty()) (void)emud::SdNotifyTo(notify_socket, "STOPPING=1");
  };

  // A later emud may take everything over from us (--takeover).
  emud::server::HandoverServer::Hooks hooks;
  hooks.begin = [&]() -> absl::Status {
    absl::Status b = (*manager)->BeginHandover();
    if (!b.ok()) return b;
    lock_fd.reset();  // closing the fd releases the lock for the successor
    return absl::OkStatus();
  };
  hooks.release = [&](const std::string& name) { return (*manager)->ReleaseForSuccessor(name); };
  hooks.abort = [&]() { (*manager)->AbortHandover(); };
  hooks.finish = [&]() {
    notify_stopping();
    server->GetHealthCheckService()->SetServingStatus(false);
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    exposer.reset();
    for (const auto& p : unix_paths) ::unlink(p.c_str());
  };
  auto handover = emud::server::HandoverServer::Listen(
      emud::server::HandoverSocket(opts.state_dir), std::move(hooks));
  if (!handover.ok()) Fail(handover.status().ToString());
  (*handover)->set_on_done([] { ::kill(::getpid(), SIGUSR1); });

  int sig = 0;
  sigwait(&sigs, &sig);
  if (sig == SIGUSR1 && (*handover)->done()) {
    server->Wait();
    (*manager)->Shutdown();  // no worker is ours any more
    emud::log::Info("handed every device over to the successor; exiting");
    std::exit(emud::server::kExitHandedOver);
  }
  handover->reset();
  emud::log::Info(absl::StrCat(strsignal(sig), ": shutting down"));
  notify_stopping();
  server->GetHealthCheckService()->SetServingStatus(false);
  (*manager)->BeginShutdown();  // ends watches, refuses new mutations
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  exposer.reset();  // civetweb takes up to ~1.5 s to stop its listener
  (*manager)->Shutdown();
  for (const auto& p : unix_paths) ::unlink(p.c_str());
  emud::log::Info("stopped");
  return 0;
}
