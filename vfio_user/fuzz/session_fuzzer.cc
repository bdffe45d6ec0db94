// libFuzzer entry point for the vfio-user decoder and server session.
//
// Input: byte 0 = mode (bit 0: the harness first sends a valid VERSION so the
// fuzzer reaches every command; bit 1: also parse the rest as capabilities
// JSON), then chunks of [tag u8][len u16 LE][len bytes]. Each chunk is written
// to the session's client socket in one sendmsg; tag bit 0 attaches a memfd
// (64 KiB), bit 1 an eventfd, bit 2 a pipe end, bit 3 makes it 17 eventfds;
// bit 7 runs the session between chunks. The session is driven without an
// event loop (ProcessReady), replies are drained and discarded.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "base/scm_rights.h"
#include "vfio_user/examples/example_device.h"
#include "vfio_user/protocol.h"
#include "vfio_user/session.h"

namespace {

using namespace emud::vfio_user;

void Drain(int fd) {
  uint8_t buf[65536];
  while (::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
  }
}

void SendChunk(int sock, const uint8_t* p, size_t n, uint8_t tag) {
  std::vector<emud::UniqueFd> fds;
  if (tag & 1) {
    emud::UniqueFd m(::memfd_create("fuzz", MFD_CLOEXEC));
    if (m.valid() && ::ftruncate(m.get(), 65536) == 0) fds.push_back(std::move(m));
  }
  if (tag & 2) fds.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (tag & 4) {
    int pp[2];
    if (::pipe2(pp, O_CLOEXEC) == 0) {
      fds.emplace_back(pp[0]);
      ::close(pp[1]);
    }
  }
  if (tag & 8) {
    for (int i = 0; i < 17; ++i) fds.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }
  std::vector<int> raw;
  for (auto& f : fds) {
    if (f.valid()) raw.push_back(f.get());
  }
  if (n > 0) (void)emud::SendWithFds(sock, absl::MakeConstSpan(p, n), raw, MSG_DONTWAIT);
}

void Pump(Session& s, int client) {
  for (int i = 0; i < 1000; ++i) {
    s.ProcessReady();
    Drain(client);
    if (!s.connected() || !s.HasBufferedInput()) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  if (mode & 2) {
    (void)ParseCapabilities(std::string(reinterpret_cast<const char*>(data + 1), size - 1));
    (void)DecodeVersion(absl::MakeConstSpan(data + 1, size - 1));
  }
  auto dev = ExampleDevice::Create();
  if (!dev.ok()) return 0;
  SessionOptions opts;
  opts.send_timeout = absl::Milliseconds(5);
  opts.dma_timeout = absl::Milliseconds(1);
  opts.max_dma_maps = 8;
  opts.max_msg_size = 1 << 16;
  opts.max_data_xfer_size = 1 << 15;
  auto session = Session::Create(dev->get(), nullptr, opts);
  if (!session.ok()) return 0;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  emud::UniqueFd client(sv[1]);
  if (!(*session)->AttachClient(emud::UniqueFd(sv[0])).ok()) return 0;
  if (mode & 1) {
    std::string js = R"({"capabilities":{"max_msg_fds":16,"write_multiple":true}})";
    std::vector<uint8_t> payload = EncodeVersion({0, 0, js});
    Header h;
    h.command = kCmdVersion;
    h.msg_size = static_cast<uint32_t>(kHeaderSize + payload.size());
    std::vector<uint8_t> msg;
    AppendStruct(&msg, h);
    AppendBytes(&msg, payload);
    SendChunk(client.get(), msg.data(), msg.size(), 0);
    Pump(**session, client.get());
    Drain(client.get());
  }
  size_t off = 1;
  while (off + 3 <= size && (*session)->connected()) {
    uint8_t tag = data[off];
    size_t len = data[off + 1] | (size_t{data[off + 2]} << 8);
    off += 3;
    len = std::min(len, size - off);
    SendChunk(client.get(), data + off, len, tag);
    off += len;
    if (tag & 0x80) {
      Pump(**session, client.get());
      Drain(client.get());
    }
  }
  ::shutdown(client.get(), SHUT_WR);
  for (int i = 0; i < 64 && (*session)->connected(); ++i) {
    Pump(**session, client.get());
    Drain(client.get());
  }
  session->reset();
  return 0;
}
