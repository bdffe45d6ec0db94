// vfu-bench: measures any vfio-user server through the client library.
//
//   bazel run //vfio_user/tools:vfu-bench -- --socket PATH
//
// Prints, measured in the same run with the same client code:
//   - REGION_READ round trip p50 / p99 (a 4-byte read, default: config space
//     offset 0, which every PCI device has);
//   - posted REGION_WRITE messages/s (NO_REPLY writes, default: config space
//     interrupt line byte written with its current value; finished by one
//     read so every write is known to be applied);
//   - the same against two in-process references served over an AF_UNIX
//     stream socketpair by a forked child placed where the server runs:
//       floor      the least any server can do: it spins on a non-blocking
//                  socket (no sleep, no wake-up), takes a whole request in
//                  one recv (the posted stream in bulk reads of up to 64 KiB)
//                  and answers with one send. No server can beat it.
//       libvfio-user model  libvfio-user's per-message work on its default
//                  blocking socket (lib/tran_sock.c: tran_sock_get_request_header
//                  = recvmsg of the 16-byte header with room for fds,
//                  MSG_WAITALL; tran_sock_recv_body = recv of the body,
//                  MSG_WAITALL; the handler copies the bytes; the reply is one
//                  sendmsg of header + payload iovecs), for comparing with a
//                  libvfio-user server where none is installed (Debian 12
//                  does not package it).
//   and the ratios.
#include <fcntl.h>
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
          "pin the reference servers (floor, libvfio-user model) to this CPU (-1: the server's CPU if it "
          "is pinned to one, else none)");
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

void Pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  ::sched_setaffinity(0, sizeof(set), &set);
}

// Blocking read of exactly n bytes (MSG_WAITALL), as libvfio-user does.
bool RecvWaitAll(int fd, void* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, static_cast<uint8_t*>(buf) + got, n - got, MSG_WAITALL);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    got += static_cast<size_t>(r);
  }
  return true;
}

// Reply to a REGION_READ: the request's RegionAccess and `count` zero bytes.
size_t BuildReadReply(const Header& req, const uint8_t* body, uint8_t* out) {
  RegionAccess a;
  std::memcpy(&a, body, sizeof(a));
  const uint32_t count = std::min<uint32_t>(a.count, 256);
  Header r;
  r.msg_id = req.msg_id;
  r.command = req.command;
  r.flags = kFlagTypeReply;
  r.msg_size = static_cast<uint32_t>(kHeaderSize + sizeof(a) + count);
  std::memcpy(out, &r, kHeaderSize);
  std::memcpy(out + kHeaderSize, &a, sizeof(a));
  std::memset(out + kHeaderSize + sizeof(a), 0, count);
  return r.msg_size;
}

// The floor: spin on the non-blocking socket; parse whole messages out of
// bulk reads; one send per reply.
[[noreturn]] void ServeFloor(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  std::vector<uint8_t> buf(1 << 16);
  size_t have = 0;
  uint8_t out[512];
  for (;;) {
    ssize_t r = ::recv(fd, buf.data() + have, buf.size() - have, 0);
    if (r == 0) _exit(0);
    if (r < 0) {
      if (errno != EAGAIN && errno != EINTR) _exit(0);
      continue;  // spin
    }
    have += static_cast<size_t>(r);
    size_t off = 0;
    while (have - off >= kHeaderSize) {
      Header h;
      std::memcpy(&h, buf.data() + off, kHeaderSize);
      if (h.msg_size < kHeaderSize || h.msg_size > buf.size()) _exit(1);
      if (have - off < h.msg_size) break;
      if (h.command == kCmdRegionRead && !(h.flags & kFlagNoReply) && h.msg_size >= kHeaderSize + sizeof(RegionAccess)) {
        size_t n = BuildReadReply(h, buf.data() + off + kHeaderSize, out);
        if (::send(fd, out, n, MSG_NOSIGNAL) != static_cast<ssize_t>(n)) _exit(0);
      }
      off += h.msg_size;
    }
    std::memmove(buf.data(), buf.data() + off, have - off);
    have -= off;
  }
}

// libvfio-user's per-message work (see the file comment).
[[noreturn]] void ServeLibvfioUserModel(int fd) {
  std::vector<uint8_t> body(1 << 16);
  uint8_t out[512];
  for (;;) {
    Header h;
    iovec iov{&h, kHeaderSize};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof(control);
    ssize_t r = ::recvmsg(fd, &mh, MSG_WAITALL);
    if (r != static_cast<ssize_t>(kHeaderSize)) _exit(0);
    if (h.msg_size < kHeaderSize || h.msg_size - kHeaderSize > body.size()) _exit(1);
    const size_t len = h.msg_size - kHeaderSize;
    if (len > 0 && !RecvWaitAll(fd, body.data(), len)) _exit(0);
    if (h.flags & kFlagNoReply) {
      // A posted write: the handler stores the byte.
      if (len >= sizeof(RegionAccess) + 1) out[0] = body[sizeof(RegionAccess)];
      continue;
    }
    if (h.command != kCmdRegionRead || len < sizeof(RegionAccess)) _exit(1);
    size_t n = BuildReadReply(h, body.data(), out);
    iovec riov[2] = {{out, kHeaderSize}, {out + kHeaderSize, n - kHeaderSize}};
    msghdr rm{};
    rm.msg_iov = riov;
    rm.msg_iovlen = 2;
    if (::sendmsg(fd, &rm, MSG_NOSIGNAL) != static_cast<ssize_t>(n)) _exit(0);
  }
}

// A reference server in a forked child on `cpu`, and a Client connected to it.
class Reference {
 public:
  Reference(int cpu, void (*serve)(int)) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(sv[0]);
      Pin(cpu);
      serve(sv[1]);
      _exit(0);
    }
    ::close(sv[1]);
    auto c = Client::FromFd(emud::UniqueFd(sv[0]));
    if (c.ok()) client_ = std::move(*c);
  }
  ~Reference() {
    client_.reset();
    int st;
    if (pid_ > 0) ::waitpid(pid_, &st, 0);
  }
  Client* client() { return client_.get(); }

 private:
  pid_t pid_ = -1;
  std::unique_ptr<Client> client_;
};

struct Measured {
  std::vector<int64_t> read_ns;
  absl::Duration write_time;
  Percentiles rd;
  double wps = 0;
};

// One batch of timed reads; false on a failed request.
bool ReadBatch(Client& c, uint32_t region, uint64_t off, int n, bool keep, Measured* m) {
  uint8_t buf[4];
  for (int i = 0; i < n; ++i) {
    absl::Time t0 = absl::Now();
    auto s = c.RegionRead(region, off, absl::MakeSpan(buf, 4));
    if (!s.ok()) {
      std::fprintf(stderr, "REGION_READ: %s\n", std::string(s.message()).c_str());
      return false;
    }
    if (keep) m->read_ns.push_back(absl::ToInt64Nanoseconds(absl::Now() - t0));
  }
  return true;
}

// A batch of posted writes closed by one read (in-order processing: every
// write is applied when the read's reply arrives).
bool WriteBatch(Client& c, uint32_t wr, uint64_t wo, uint8_t val, uint32_t rr, uint64_t ro, int n,
                Measured* m) {
  uint8_t buf[4];
  absl::Time t0 = absl::Now();
  for (int i = 0; i < n; ++i) {
    auto s = c.RegionWrite(wr, wo, absl::MakeConstSpan(&val, 1), /*posted=*/true);
    if (!s.ok()) {
      std::fprintf(stderr, "REGION_WRITE: %s\n", std::string(s.message()).c_str());
      return false;
    }
  }
  if (!c.RegionRead(rr, ro, absl::MakeSpan(buf, 4)).ok()) return false;
  m->write_time += absl::Now() - t0;
  return true;
}

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
  if (client_cpu >= 0) Pin(client_cpu);
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

  Reference floor_ref(echo_cpu, ServeFloor);
  Reference model_ref(echo_cpu, ServeLibvfioUserModel);
  if (floor_ref.client() == nullptr || model_ref.client() == nullptr) {
    std::fprintf(stderr, "cannot start the reference servers\n");
    return 1;
  }
  Client* clients[3] = {&client, floor_ref.client(), model_ref.client()};
  for (Client* x : clients) x->set_busy_wait(spin);
  Measured m[3];
  // Round trips, in interleaved batches (server, floor, model, ...) so all
  // see the same machine conditions; the first batch of each is warm-up.
  constexpr int kBatch = 1000;
  for (int done = -kBatch; done < reads; done += kBatch) {
    for (int k = 0; k < 3; ++k) {
      if (!ReadBatch(*clients[k], rr, ro, kBatch, done >= 0, &m[k])) return 1;
    }
  }
  // Posted writes, also interleaved.
  const int kWBatch = 10000;
  for (int done = 0; done < writes; done += kWBatch) {
    for (int k = 0; k < 3; ++k) {
      if (!WriteBatch(*clients[k], wr, wo, wval, rr, ro, kWBatch, &m[k])) return 1;
    }
  }
  const int wn = ((writes + kWBatch - 1) / kWBatch) * kWBatch;
  for (Measured& x : m) {
    x.rd = Summarize(x.read_ns);
    x.wps = wn / absl::ToDoubleSeconds(x.write_time);
  }
  c->reset();

  std::printf("vfu-bench against %s (client waits by %s)\n", path.c_str(), spin ? "spinning" : "poll()");
  std::printf("  placement: server cpu %s, client cpu %s, references cpu %s%s\n",
              server_cpu >= 0 ? std::to_string(server_cpu).c_str() : "any",
              client_cpu >= 0 ? std::to_string(client_cpu).c_str() : "any",
              echo_cpu >= 0 ? std::to_string(echo_cpu).c_str() : "any",
              server_cpu < 0 && echo_cpu < 0 ? " (pin the server, e.g. taskset -c 1, for a like-for-like floor)" : "");
  const char* names[3] = {"server", "floor", "libvfio-user model"};
  for (int k = 0; k < 3; ++k) {
    std::printf("  %-20s REGION_READ p50 %7.2f us  p99 %7.2f us   posted REGION_WRITE %10.0f msgs/s\n",
                names[k], m[k].rd.p50_us, m[k].rd.p99_us, m[k].wps);
  }
  std::printf("  server/floor               REGION_READ p50 %5.2f  p99 %5.2f   posted writes %5.2f\n",
              m[0].rd.p50_us / m[1].rd.p50_us, m[0].rd.p99_us / m[1].rd.p99_us, m[0].wps / m[1].wps);
  std::printf("  server/libvfio-user model  REGION_READ p50 %5.2f  p99 %5.2f   posted writes %5.2f\n",
              m[0].rd.p50_us / m[2].rd.p50_us, m[0].rd.p99_us / m[2].rd.p99_us, m[0].wps / m[2].wps);
  return 0;
}
