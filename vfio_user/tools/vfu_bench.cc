// vfu-bench: measures any vfio-user server through the client library.
//
//   bazel run //vfio_user/tools:vfu-bench -- --socket PATH
//
// Prints, measured in the same run:
//   - REGION_READ round trip p50 / p99 (a 4-byte read, default: config space
//     offset 0, which every PCI device has);
//   - posted REGION_WRITE messages/s (NO_REPLY writes, default: config space
//     interrupt line byte written with its current value; finished by one
//     read so every write is known to be applied);
//   - the floor: the same request/reply and one-way streams against a trivial
//     echo process over the same socket type (AF_UNIX stream), with the same
//     waiting method (poll + recv), and the ratios.
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "vfio_user/client.h"

ABSL_FLAG(std::string, socket, "", "vfio-user server socket");
ABSL_FLAG(int, reads, 20000, "REGION_READ round trips to time");
ABSL_FLAG(int, writes, 200000, "posted REGION_WRITEs to send");
ABSL_FLAG(int, read_region, 7, "region for the timed reads (7 = config)");
ABSL_FLAG(uint64_t, read_offset, 0, "offset of the timed reads");
ABSL_FLAG(int, write_region, 7, "region for the posted writes");
ABSL_FLAG(uint64_t, write_offset, 0x3c, "offset of the posted writes (1 byte, rewritten with its value)");
ABSL_FLAG(int, client_cpu, -1,
          "pin the benchmark client to this CPU (-1: another CPU than a pinned server's, else none)");
ABSL_FLAG(int, echo_cpu, -1,
          "pin the echo (floor) process to this CPU (-1: the server's CPU if it is pinned to one, else none)");
ABSL_FLAG(bool, busy_wait, false, "client spins instead of sleeping while waiting for replies");

namespace {

using namespace emud::vfio_user;

struct Percentiles {
  double p50_us = 0, p99_us = 0;
};

Percentiles Summarize(std::vector<int64_t>& ns) {
  std::sort(ns.begin(), ns.end());
  Percentiles p;
  if (ns.empty()) return p;
  p.p50_us = ns[ns.size() / 2] / 1000.0;
  p.p99_us = ns[std::min(ns.size() - 1, ns.size() * 99 / 100)] / 1000.0;
  return p;
}

bool WaitReadable(int fd, bool spin) {
  if (spin) return true;
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 10000) == 1;
}

bool RecvAll(int fd, uint8_t* buf, size_t n, bool spin) {
  size_t got = 0;
  while (got < n) {
    if (!WaitReadable(fd, spin)) return false;
    ssize_t r = ::recv(fd, buf + got, n - got, MSG_DONTWAIT);
    if (r == 0) return false;
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return false;
    }
    got += static_cast<size_t>(r);
  }
  return true;
}

// The floor: a child process that answers every 32-byte request (the size of
// a REGION_READ request) with 36 bytes (a 4-byte REGION_READ reply), and
// swallows one-way 37-byte messages (a 1-byte posted REGION_WRITE).
class Echo {
 public:
  explicit Echo(int cpu) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(sv[0]);
      if (cpu >= 0) Pin(cpu);
      uint8_t buf[64] = {};
      for (;;) {
        if (!RecvAll(sv[1], buf, 1, false)) _exit(0);
        if (buf[0] == 'R') {
          if (!RecvAll(sv[1], buf + 1, 31, false)) _exit(0);
          if (::send(sv[1], buf, 36, MSG_NOSIGNAL) != 36) _exit(0);
        } else if (buf[0] == 'W') {
          if (!RecvAll(sv[1], buf + 1, 36, false)) _exit(0);
        } else {
          _exit(0);
        }
      }
    }
    ::close(sv[1]);
    fd_ = sv[0];
  }
  ~Echo() {
    if (fd_ >= 0) ::close(fd_);
    int st;
    if (pid_ > 0) ::waitpid(pid_, &st, 0);
  }
  bool RoundTrip(bool spin) {
    uint8_t req[32] = {'R'}, rep[36];
    return ::send(fd_, req, 32, MSG_NOSIGNAL) == 32 && RecvAll(fd_, rep, 36, spin);
  }
  bool OneWay() {
    uint8_t req[37] = {'W'};
    return ::send(fd_, req, 37, MSG_NOSIGNAL) == 37;
  }
  static void Pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    ::sched_setaffinity(0, sizeof(set), &set);
  }

 private:
  int fd_ = -1;
  pid_t pid_ = -1;
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  ::signal(SIGPIPE, SIG_IGN);
  const std::string path = absl::GetFlag(FLAGS_socket);
  if (path.empty()) {
    std::fprintf(stderr, "usage: vfu-bench --socket PATH\n");
    return 2;
  }
  const int reads = absl::GetFlag(FLAGS_reads);
  const int writes = absl::GetFlag(FLAGS_writes);
  const bool spin = absl::GetFlag(FLAGS_busy_wait);
  const uint32_t rr = absl::GetFlag(FLAGS_read_region), wr = absl::GetFlag(FLAGS_write_region);
  const uint64_t ro = absl::GetFlag(FLAGS_read_offset), wo = absl::GetFlag(FLAGS_write_offset);

  auto c = Client::Connect(path);
  if (!c.ok()) {
    std::fprintf(stderr, "connect: %s\n", std::string(c.status().message()).c_str());
    return 1;
  }
  // Placement: the floor is only comparable if the echo process runs where
  // the server runs. If the server is pinned to one CPU (SO_PEERCRED ->
  // its affinity), put the echo there and the client elsewhere.
  int client_cpu = absl::GetFlag(FLAGS_client_cpu), echo_cpu = absl::GetFlag(FLAGS_echo_cpu);
  int server_cpu = -1;
  {
    ucred cred{};
    socklen_t len = sizeof(cred);
    cpu_set_t set;
    if (::getsockopt((*c)->fd(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0 &&
        ::sched_getaffinity(cred.pid, sizeof(set), &set) == 0 && CPU_COUNT(&set) == 1) {
      for (int i = 0; i < CPU_SETSIZE; ++i) {
        if (CPU_ISSET(i, &set)) server_cpu = i;
      }
    }
  }
  if (server_cpu >= 0) {
    if (echo_cpu < 0) echo_cpu = server_cpu;
    if (client_cpu < 0) {
      for (int i = 0; i < static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN)); ++i) {
        if (i != server_cpu) {
          client_cpu = i;
          break;
        }
      }
    }
  }
  if (client_cpu >= 0) Echo::Pin(client_cpu);
  Client& client = **c;
  client.set_busy_wait(spin);
  auto v = client.Version();
  if (!v.ok()) {
    std::fprintf(stderr, "VERSION: %s\n", std::string(v.status().message()).c_str());
    return 1;
  }
  auto info = client.GetInfo();
  if (!info.ok()) {
    std::fprintf(stderr, "GET_INFO: %s\n", std::string(info.status().message()).c_str());
    return 1;
  }
  uint8_t wval = 0;
  if (!client.RegionRead(wr, wo, absl::MakeSpan(&wval, 1)).ok()) {
    std::fprintf(stderr, "cannot read the write target (region %u offset 0x%llx)\n", wr, (unsigned long long)wo);
    return 1;
  }

  Echo echo(echo_cpu);
  // Round trips, in interleaved batches (server, echo, server, ...) so both
  // see the same machine conditions; the first batch of each is warm-up.
  constexpr int kBatch = 1000;
  std::vector<int64_t> ns, echo_ns;
  uint8_t buf[4];
  for (int done = -kBatch; done < reads; done += kBatch) {
    for (int i = 0; i < kBatch; ++i) {
      absl::Time t0 = absl::Now();
      auto s = client.RegionRead(rr, ro, absl::MakeSpan(buf, 4));
      if (!s.ok()) {
        std::fprintf(stderr, "REGION_READ: %s\n", std::string(s.message()).c_str());
        return 1;
      }
      if (done >= 0) ns.push_back(absl::ToInt64Nanoseconds(absl::Now() - t0));
    }
    for (int i = 0; i < kBatch; ++i) {
      absl::Time t0 = absl::Now();
      if (!echo.RoundTrip(spin)) return 1;
      if (done >= 0) echo_ns.push_back(absl::ToInt64Nanoseconds(absl::Now() - t0));
    }
  }
  Percentiles rd = Summarize(ns);
  Percentiles erd = Summarize(echo_ns);

  // Posted writes, each stream closed by one read (in-order processing =>
  // every write is applied), also interleaved.
  absl::Duration wt, et;
  const int kWBatch = 10000;
  for (int done = 0; done < writes; done += kWBatch) {
    absl::Time t0 = absl::Now();
    for (int i = 0; i < kWBatch; ++i) {
      auto s = client.RegionWrite(wr, wo, absl::MakeConstSpan(&wval, 1), /*posted=*/true);
      if (!s.ok()) {
        std::fprintf(stderr, "REGION_WRITE: %s\n", std::string(s.message()).c_str());
        return 1;
      }
    }
    if (!client.RegionRead(rr, ro, absl::MakeSpan(buf, 4)).ok()) return 1;
    wt += absl::Now() - t0;
    t0 = absl::Now();
    for (int i = 0; i < kWBatch; ++i) {
      if (!echo.OneWay()) return 1;
    }
    if (!echo.RoundTrip(spin)) return 1;
    et += absl::Now() - t0;
  }
  const int wn = ((writes + kWBatch - 1) / kWBatch) * kWBatch;
  double wps = wn / absl::ToDoubleSeconds(wt);
  struct {
    Percentiles rtt;
    double oneway_per_s;
  } floor{erd, wn / absl::ToDoubleSeconds(et)};
  c->reset();

  std::printf("vfu-bench against %s (client waits by %s)\n", path.c_str(), spin ? "spinning" : "poll()");
  std::printf("  placement: server cpu %s, client cpu %s, echo cpu %s%s\n",
              server_cpu >= 0 ? std::to_string(server_cpu).c_str() : "any",
              client_cpu >= 0 ? std::to_string(client_cpu).c_str() : "any",
              echo_cpu >= 0 ? std::to_string(echo_cpu).c_str() : "any",
              server_cpu < 0 && echo_cpu < 0 ? " (pin the server, e.g. taskset -c 1, for a like-for-like floor)" : "");
  std::printf("  REGION_READ round trip   p50 %7.2f us   p99 %7.2f us   (%d reads)\n", rd.p50_us, rd.p99_us, reads);
  std::printf("  floor: echo round trip   p50 %7.2f us   p99 %7.2f us   (AF_UNIX stream, separate process, interleaved)\n",
              floor.rtt.p50_us, floor.rtt.p99_us);
  std::printf("  ratio read/echo          p50 %7.2f      p99 %7.2f\n", rd.p50_us / floor.rtt.p50_us,
              rd.p99_us / floor.rtt.p99_us);
  std::printf("  posted REGION_WRITE      %10.0f msgs/s (%d writes)\n", wps, writes);
  std::printf("  floor: one-way messages  %10.0f msgs/s\n", floor.oneway_per_s);
  std::printf("  ratio write/floor        %7.2f\n", wps / floor.oneway_per_s);
  return 0;
}
