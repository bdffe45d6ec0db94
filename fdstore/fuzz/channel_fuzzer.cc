// libFuzzer entry point for the fd store's channel protocol (fd_store.h):
// what a worker (or anything reaching the store's socket) sends to emud's
// FdStore - raw datagrams, well-formed messages with lying names and
// arguments, 0, 1 or 2 fds attached - through ServeOne, and what a hostile
// store sends back to a worker's ReceiveMessage.
//
// Input: chunks of [u8 tag][u16 len][len bytes], each one SOCK_SEQPACKET
// datagram. tag bit 0: attach an eventfd; bit 1: attach a second fd; bit 2:
// the datagram goes the other way (store -> worker, parsed by
// ReceiveMessage); bit 3: the bytes are a structured message [u8 op][u8
// arg-sel][u64 arg][name] sent with SendMessage (arg-sel 0: the sender's
// pid, what HELLO must carry); otherwise the bytes are sent raw.
//
// Invariants: ServeOne and ReceiveMessage never crash; no fd leaks (every
// fd received is held by the store or closed: after the input, with the
// store gone, the lowest free descriptor is what it was before); the store
// holds fds only under valid keys.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/scm_rights.h"
#include "fdstore/fd_store.h"
#include "tests/fuzz/fuzz_reader.h"

namespace {

using namespace emud;
using namespace emud::fdstore;

void Check(bool ok, const char* what) { emud::fuzz::Check(ok, "fd store", what); }

int LowestFreeFd() {
  int fd = ::dup(0);
  ::close(fd);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int lowest = LowestFreeFd();
  {
    int sv[2];
    Check(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    UniqueFd store_end(sv[0]), worker_end(sv[1]);
    FdStore store;
    std::string device;
    emud::fuzz::Reader in(data, size);
    for (int n = 0; in.remaining() >= 3 && n < 128; ++n) {
      const uint8_t tag = in.U8();
      absl::Span<const uint8_t> bytes = in.Bytes(in.U16());
      const uint8_t* p = bytes.data();
      const size_t len = bytes.size();
      std::vector<UniqueFd> fds;
      if (tag & 1) fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
      if (tag & 2) fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
      std::vector<int> raw;
      for (auto& f : fds) raw.push_back(f.get());
      const int to = (tag & 4) ? store_end.get() : worker_end.get();
      const int from = (tag & 4) ? worker_end.get() : store_end.get();
      if (tag & 8) {
        Message m;
        m.op = static_cast<Op>(len > 0 ? p[0] : 0);
        uint64_t arg = 0;
        if (len >= 10) std::memcpy(&arg, p + 2, 8);
        m.arg = (len > 1 && p[1] == 0) ? ::getpid() : static_cast<int64_t>(arg);
        if (len > 10) m.name.assign(reinterpret_cast<const char*>(p + 10), len - 10);
        (void)SendMessage(to, m, raw.empty() ? -1 : raw[0]);
      } else {
        (void)SendWithFds(to, absl::MakeConstSpan(p, len), raw, MSG_DONTWAIT);
      }
      fds.clear();  // the datagram holds its own references
      // As the event loops do: receive only when the channel is readable
      // (a send refused above - a name too long, an empty datagram - leaves
      // nothing to read, and both sides read blocking sockets).
      pollfd pfd{from, POLLIN, 0};
      if (::poll(&pfd, 1, 0) != 1) continue;
      if (tag & 4) {
        UniqueFd got;
        (void)ReceiveMessage(from, &got);
      } else {
        (void)store.ServeOne(from, &device);
        // Drain the store's ack so the channel never fills.
        uint8_t buf[512];
        while (::recv(worker_end.get(), buf, sizeof(buf), MSG_DONTWAIT) > 0) {
        }
      }
    }
    for (const std::string& d : store.Devices()) {
      for (const std::string& k : store.Keys(d)) Check(ValidateKey(k).ok(), "fd held under an invalid key");
    }
  }
  Check(LowestFreeFd() == lowest, "fd leaked");
  return 0;
}
