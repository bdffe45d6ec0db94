#include "tests/integration/emud_harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

extern char** environ;

namespace emud::testing {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {

std::vector<char*> CStrings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::vector<std::string> EnvWith(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  for (const auto& x : extra) env.push_back(x);
  return env;
}

}  // namespace

std::string Runfile(const std::string& rel) {
  if (const char* srcdir = std::getenv("TEST_SRCDIR"); srcdir != nullptr) {
    std::string p = absl::StrCat(srcdir, "/emud/", rel);
    if (::access(p.c_str(), F_OK) == 0) return p;
  }
  std::error_code ec;
  std::string self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::string p = absl::StrCat(self, ".runfiles/emud/", rel);
  if (::access(p.c_str(), F_OK) == 0) return p;
  // Running from bazel-bin directly: bazel-bin/<rel>.
  std::filesystem::path dir = std::filesystem::path(self).parent_path();
  for (int i = 0; i < 4; ++i) {
    std::string cand = (dir / rel).string();
    if (::access(cand.c_str(), F_OK) == 0) return cand;
    dir = dir.parent_path();
  }
  return rel;
}

TempStateDir::TempStateDir(const std::string& tag) {
  const char* base = std::getenv("EMUD_TEST_TMPDIR");
  // Bazel's sandbox gives every test the same pid in its own pid namespace
  // while /dev/shm is shared: add randomness so concurrent runs never meet.
  uint64_t rnd = 0;
  if (::getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd)) rnd = absl::ToUnixNanos(absl::Now());
  path_ = absl::StrCat(base != nullptr && *base != '\0' ? base : "/dev/shm", "/emud-",
                       tag.substr(0, 24), "-", ::getpid(), "-", absl::Hex(rnd & 0xffffffff));
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  std::filesystem::create_directories(path_, ec);
}

TempStateDir::~TempStateDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  // EmudProcess logs beside its state directory: a test whose state
  // directory is this one itself leaves its log here.
  std::filesystem::remove(path_ + ".emud.log", ec);
}

CommandResult RunCommand(const std::vector<std::string>& argv_in,
                  const std::vector<std::string>& extra_env) {
  CommandResult r;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) return r;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  std::vector<std::string> argv = argv_in, env = EnvWith(extra_env);
  auto cargv = CStrings(argv), cenv = CStrings(env);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, cargv[0], &fa, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  ::close(err[1]);
  if (rc != 0) {
    ::close(out[0]);
    ::close(err[0]);
    r.err = std::strerror(rc);
    return r;
  }
  struct pollfd pfds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    if (::poll(pfds, 2, -1) < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (pfds[i].fd < 0 || pfds[i].revents == 0) continue;
      char buf[4096];
      ssize_t n = ::read(pfds[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        ::close(pfds[i].fd);
        pfds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, n);
      }
    }
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

absl::StatusOr<std::unique_ptr<EmudProcess>> EmudProcess::Start(Options o) {
  std::unique_ptr<EmudProcess> p(new EmudProcess());
  if (o.worker_binary.empty()) o.worker_binary = Runfile("tests/fakes/fake_worker");
  p->log_path_ = absl::StrCat(o.state_dir, ".emud.log");
  std::vector<std::string> argv = o.wrapper;
  std::vector<std::string> emud_argv = {o.emud_binary.empty() ? Runfile("server/emud") : o.emud_binary,
                                   "--state-dir", o.state_dir,
                                   "--worker-binary", o.worker_binary,
                                   "--metrics-listen", o.metrics ? "127.0.0.1:0" : ""};
  for (const auto& f : o.extra_flags) emud_argv.push_back(f);
  argv.insert(argv.end(), emud_argv.begin(), emud_argv.end());
  std::vector<std::string> env = EnvWith(o.extra_env);
  auto cargv = CStrings(argv), cenv = CStrings(env);
  int log = ::open(p->log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  size_t log_start = static_cast<size_t>(::lseek(log, 0, SEEK_END));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, log, 2);
  int rc = posix_spawn(&p->pid_, cargv[0], &fa, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(log);
  if (rc != 0) return absl::InternalError(absl::StrCat("spawn emud: ", std::strerror(rc)));
  std::string ready;
  bool ok = WaitFor(
      [&] {
        std::string text = ReadFile(p->log_path_).substr(log_start);
        size_t at = text.find("emud: ready: ");                  // --log-format=text
        if (at == std::string::npos) at = text.find("\"msg\":\"ready: ");  // json
        if (at == std::string::npos) return false;
        size_t end = text.find('\n', at);
        if (end == std::string::npos) return false;  // line still being written
        ready = text.substr(at, end - at);
        return true;
      },
      absl::Seconds(15));
  if (!ok) {
    std::string log_text = p->Log();
    p->Stop(SIGKILL);
    return absl::DeadlineExceededError(absl::StrCat("emud did not become ready: ", log_text));
  }
  std::vector<std::string> words = absl::StrSplit(ready, ' ');
  for (size_t i = 0; i + 1 < words.size(); ++i) {
    if (words[i] == "grpc") p->grpc_address_ = words[i + 1];
    if (words[i] == "metrics") p->metrics_url_ = words[i + 1];
  }
  p->channel_ = grpc::CreateChannel(p->grpc_address_, grpc::InsecureChannelCredentials());
  p->stub_ = emud::v1::DeviceService::NewStub(p->channel_);
  return p;
}

EmudProcess::~EmudProcess() {
  if (pid_ > 0) Stop(SIGKILL);
}

int EmudProcess::Stop(int sig) {
  if (pid_ <= 0) return -1;
  // Close our connection first: gRPC's graceful shutdown waits (up to emud's
  // shutdown deadline) for connected clients to go away.
  stub_.reset();
  channel_.reset();
  ::kill(pid_, sig);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = 0;
  return status;
}

std::string EmudProcess::Log() const { return ReadFile(log_path_); }

CommandResult EmudProcess::Emuctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {Runfile("ctl/emuctl"), "--server", grpc_address_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout) {
  absl::Time end = absl::Now() + timeout;
  while (true) {
    if (pred()) return true;
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

namespace {
void SetDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
}
}  // namespace

absl::StatusOr<emud::v1::Device> GetDevice(emud::v1::DeviceService::Stub* stub,
                                           const std::string& name) {
  // A stopped EmudProcess has no stub.
  if (stub == nullptr) return absl::UnavailableError("emud is not running");
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  emud::v1::GetDeviceRequest req;
  req.set_name(name);
  emud::v1::Device d;
  grpc::Status s = stub->GetDevice(&ctx, req, &d);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return d;
}

grpc::Status CreateDevice(emud::v1::DeviceService::Stub* stub, const std::string& name,
                          emud::v1::Device* out, const std::string& backend) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  emud::v1::CreateDeviceRequest req;
  req.set_name(name);
  req.set_type(emud::v1::DEVICE_TYPE_AVF);
  req.mutable_spec()->set_backend(backend);
  emud::v1::Device d;
  grpc::Status s = stub->CreateDevice(&ctx, req, out != nullptr ? out : &d);
  return s;
}

grpc::Status DeleteDevice(emud::v1::DeviceService::Stub* stub, const std::string& name,
                          bool force) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  emud::v1::DeleteDeviceRequest req;
  req.set_name(name);
  req.set_force(force);
  emud::v1::DeleteDeviceResponse resp;
  return stub->DeleteDevice(&ctx, req, &resp);
}

bool WaitPhase(emud::v1::DeviceService::Stub* stub, const std::string& name,
               emud::v1::Phase phase, absl::Duration timeout) {
  return WaitFor(
      [&] {
        auto d = GetDevice(stub, name);
        return d.ok() && d->status().phase() == phase;
      },
      timeout);
}

absl::StatusOr<std::string> HttpGet(const std::string& url) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://")) return absl::InvalidArgumentError("not http://");
  size_t slash = rest.find('/');
  std::string hostport(rest.substr(0, slash));
  std::string path = slash == absl::string_view::npos ? "/" : std::string(rest.substr(slash));
  size_t colon = hostport.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(hostport.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError("no port");
  }
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, hostport.substr(0, colon).c_str(), &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect ", hostport, ": ", std::strerror(errno)));
  }
  std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", hostport, "\r\n\r\n");
  // MSG_NOSIGNAL: emud may die between connect and send (the chaos tests kill
  // it); a plain write would then SIGPIPE the whole test binary, silently.
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("send to ", hostport, ": ", std::strerror(err)));
  }
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  ::close(fd);
  size_t body = resp.find("\r\n\r\n");
  if (body == std::string::npos || !absl::StartsWith(resp, "HTTP/1.")) {
    return absl::DataLossError("malformed HTTP response");
  }
  if (resp.find(" 200 ") > resp.find("\r\n")) {
    return absl::UnavailableError(resp.substr(0, resp.find("\r\n")));
  }
  return resp.substr(body + 4);
}

absl::StatusOr<std::map<std::string, double>> ParsePrometheus(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    size_t sp = line.rfind(' ');
    if (sp == absl::string_view::npos) {
      return absl::DataLossError(absl::StrCat("bad sample line: ", line));
    }
    std::string key(line.substr(0, sp));
    double v = 0;
    absl::string_view val = line.substr(sp + 1);
    if (val == "+Inf") {
      v = INFINITY;
    } else if (!absl::SimpleAtod(val, &v)) {
      return absl::DataLossError(absl::StrCat("bad value in: ", line));
    }
    out[key] = v;
  }
  return out;
}

ProcResources Measure(pid_t pid) {
  ProcResources r;
  std::string fd_dir = absl::StrCat("/proc/", pid, "/fd");
  if (DIR* d = ::opendir(fd_dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      ++r.fds;
      char target[256] = {0};
      std::string link = absl::StrCat(fd_dir, "/", e->d_name);
      if (::readlink(link.c_str(), target, sizeof(target) - 1) > 0 &&
          absl::StartsWith(target, "socket:")) {
        ++r.sockets;
      }
    }
    ::closedir(d);
  }
  std::string status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  size_t at = status.find("VmRSS:");
  if (at != std::string::npos) r.rss_kb = std::strtol(status.c_str() + at + 6, nullptr, 10);
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  size_t close = stat.rfind(')');
  if (close != std::string::npos) {
    std::vector<std::string> f = absl::StrSplit(stat.substr(close + 2), ' ');
    if (f.size() > 13) {
      double ticks = std::strtod(f[11].c_str(), nullptr) + std::strtod(f[12].c_str(), nullptr);
      r.cpu_seconds = ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
    }
  }
  if (DIR* d = ::opendir("/proc")) {
    while (dirent* e = ::readdir(d)) {
      int other = 0;
      if (!absl::SimpleAtoi(e->d_name, &other)) continue;
      std::string s = ReadFile(absl::StrCat("/proc/", other, "/stat"));
      size_t c = s.rfind(')');
      if (c == std::string::npos) continue;
      std::vector<std::string> f = absl::StrSplit(s.substr(c + 2), ' ');
      int ppid = 0;
      if (f.size() > 1 && absl::SimpleAtoi(f[1], &ppid) && ppid == pid) ++r.children;
    }
    ::closedir(d);
  }
  return r;
}

int CountFiles(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    ++n;  // files, sockets and directories
  }
  return n;
}

}  // namespace emud::testing
