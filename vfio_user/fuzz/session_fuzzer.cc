// libFuzzer entry point for the vfio-user decoder and server session.
//
// Input: byte 0 = mode (bit 0: the harness first sends a valid VERSION so the
// fuzzer reaches every command; bit 1: also parse the rest as capabilities
// JSON; bit 2: persistence - every request's effect committed to a state
// store, in memory (state_store::Env::OpenInMemory); bit 3: crash-consistent
// mode (peek/commit/consume/journal, with an fd store), followed by one byte
// naming a crash point: stage (b % 7, 0 = none) and occurrence (b / 7 + 1),
// at which the session dies as a killed process would and a successor
// resumes it from the store and the fd store, on the same connection), then
// chunks of [tag u8][len u16 LE][len bytes]. Each chunk is written
// to the session's client socket in one sendmsg; tag bit 0 attaches a memfd
// (64 KiB), bit 1 an eventfd, bit 2 a pipe end, bit 3 makes it 17 eventfds;
// bit 7 runs the session between chunks. The session is driven without an
// event loop (ProcessReady), replies are drained and discarded.
//
// Per-process set-up (the fd pool, the journal file) outlives inputs; each
// input gets a fresh device, store and session.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <map>
#include <memory>

#include "base/scm_rights.h"
#include "state_store/store.h"
#include "vfio_user/examples/example_device.h"
#include "vfio_user/protocol.h"
#include "vfio_user/session.h"
#include "vfio_user/session_store.h"
#include "tests/fuzz/fuzz_reader.h"
#include "worker_api/fd_keys.h"

namespace {

using namespace emud::vfio_user;

void Drain(int fd) {
  uint8_t buf[65536];
  while (::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
  }
}

// The descriptors a chunk may carry, created once per process: SCM_RIGHTS
// installs new copies in the receiving session whatever we send, so fresh
// ones per chunk only cost syscalls (a quarter of an execution with 17
// eventfds). They stay stateless across inputs: nothing writes the memfd
// (the example device does no DMA), the pipe's write end is closed (reads
// see EOF), and an eventfd's counter cannot reach its 2^64 - 2 limit.
struct FdPool {
  emud::UniqueFd memfd, eventfd, pipe_read;
  std::vector<emud::UniqueFd> eventfds;
  FdPool() {
    memfd.reset(::memfd_create("fuzz", MFD_CLOEXEC));
    if (memfd.valid() && ::ftruncate(memfd.get(), 65536) != 0) memfd.reset();
    eventfd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    int pp[2];
    if (::pipe2(pp, O_CLOEXEC) == 0) {
      pipe_read.reset(pp[0]);
      ::close(pp[1]);
    }
    for (int i = 0; i < 17; ++i) eventfds.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }
};

void SendChunk(int sock, const uint8_t* p, size_t n, uint8_t tag) {
  static const FdPool* pool = new FdPool();
  int raw[20];
  size_t k = 0;
  auto add = [&](const emud::UniqueFd& f) {
    if (f.valid()) raw[k++] = f.get();
  };
  if (tag & 1) add(pool->memfd);
  if (tag & 2) add(pool->eventfd);
  if (tag & 4) add(pool->pipe_read);
  if (tag & 8) {
    for (const auto& f : pool->eventfds) add(f);
  }
  if (n > 0) (void)emud::SendWithFds(sock, absl::MakeConstSpan(p, n), absl::MakeConstSpan(raw, k), MSG_DONTWAIT);
}

// The fd store a crash-consistent session deposits into: duplicates by key,
// handed to the successor.
class FakeFdStore : public FdDepositor {
 public:
  absl::Status Deposit(absl::string_view key, int fd) override {
    int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return absl::InternalError("dup");
    fds_[std::string(key)] = emud::UniqueFd(d);
    return absl::OkStatus();
  }
  void Release(absl::string_view key) override {
    auto it = fds_.find(key);
    if (it != fds_.end()) fds_.erase(it);
  }
  FdLookup Lookup() {
    return [this](absl::string_view key) -> absl::StatusOr<emud::UniqueFd> {
      auto it = fds_.find(key);
      if (it == fds_.end()) return absl::NotFoundError(key);
      int d = ::fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0);
      if (d < 0) return absl::InternalError("dup");
      return emud::UniqueFd(d);
    };
  }

 private:
  std::map<std::string, emud::UniqueFd, std::less<>> fds_;
};

void Check(bool ok, const char* what) { emud::fuzz::Check(ok, "session", what); }

// A session with its device, store and fd store, and what a crash needs to
// bring a successor up.
struct Rig {
  std::unique_ptr<ExampleDevice> dev;
  std::unique_ptr<emud::state_store::Env> env;
  FakeFdStore fd_store;
  SessionOptions opts;
  std::unique_ptr<Session> session;
  int crash_stage = 0, crash_nth = 0, stage_hits = 0;
  bool crashed = false;
  int resumes = 0;

  // A crashed session is abandoned by the hook; the successor resumes it on
  // the connection the fd store kept.
  void ResumeIfCrashed() {
    if (!crashed || session == nullptr) return;
    crashed = false;
    session.reset();
    ++resumes;
    auto d = ExampleDevice::Create();
    Check(d.ok(), "device");
    dev = std::move(*d);
    absl::Status rs = session_store::RestoreDevice(*env, *dev);
    Check(rs.ok() || absl::IsNotFound(rs), "a committed device state does not restore");
    auto conn = fd_store.Lookup()(emud::worker_api::kConnFdKey);
    if (!conn.ok()) return;  // no live session was committed: nothing to resume
    auto s = Session::Resume(dev.get(), nullptr, opts, std::move(*conn), fd_store.Lookup());
    if (s.ok()) session = std::move(*s);
  }
};

void Pump(Rig& r, int client) {
  for (int i = 0; i < 1000 && r.session != nullptr; ++i) {
    r.session->ProcessReady();
    Drain(client);
    r.ResumeIfCrashed();
    if (r.session == nullptr || !r.session->connected() || !r.session->HasBufferedInput()) return;
  }
}

[[maybe_unused]] void Pump(Session& s, int client) {
  for (int i = 0; i < 1000; ++i) {
    s.ProcessReady();
    Drain(client);
    if (!s.connected() || !s.HasBufferedInput()) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  emud::fuzz::Reader in(data, size);
  const uint8_t mode = in.U8();
  if (mode & 2) {
    emud::fuzz::Reader rest = in;
    const std::string all = rest.String(rest.remaining());
    (void)ParseCapabilities(all);
    (void)DecodeVersion(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(all.data()), all.size()));
  }
  Rig rig;
  auto dev = ExampleDevice::Create();
  if (!dev.ok()) return 0;
  rig.dev = std::move(*dev);
  SessionOptions& opts = rig.opts;
  opts.send_timeout = absl::Milliseconds(5);
  opts.dma_timeout = absl::Milliseconds(1);
  opts.max_dma_maps = 8;
  opts.max_msg_size = 1 << 16;
  opts.max_data_xfer_size = 1 << 15;
  if (mode & 0xC) {
    emud::state_store::EnvOptions eo;
    eo.tables = SessionTables();
    eo.tables.emplace_back(rig.dev->RecordNamespace());
    auto env = emud::state_store::Env::OpenInMemory(nullptr, eo);
    Check(env.ok(), "in-memory store");
    rig.env = std::move(*env);
    opts.store = rig.env.get();
  }
  if (mode & 8) {
    // One journal file per process, emptied per input.
    static const std::string journal = [] {
      const char* tmp = std::getenv("TEST_TMPDIR");  // under bazel test
      return std::string(tmp != nullptr ? tmp : "/dev/shm") + "/emud-session-fuzz-journal-" +
             std::to_string(::getpid());
    }();
    static const bool cleanup = [] { return std::atexit([] { ::unlink(journal.c_str()); }) == 0; }();
    (void)cleanup;
    ::unlink(journal.c_str());
    opts.crash_consistent = true;
    opts.journal_path = journal;
    opts.fd_depositor = &rig.fd_store;
    const uint8_t crash = in.U8();
    rig.crash_stage = crash % 7;
    rig.crash_nth = crash / 7 + 1;
    opts.crash_point = [&rig](int stage) {
      if (rig.crash_stage == 0 || stage != rig.crash_stage || ++rig.stage_hits != rig.crash_nth) return false;
      rig.crashed = true;
      return true;
    };
  }
  auto session = Session::Create(rig.dev.get(), nullptr, opts);
  if (!session.ok()) return 0;
  rig.session = std::move(*session);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  emud::UniqueFd client(sv[1]);
  if (!rig.session->AttachClient(emud::UniqueFd(sv[0])).ok()) return 0;
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
    Pump(rig, client.get());
    Drain(client.get());
  }
  while (in.remaining() >= 3 && rig.session != nullptr && rig.session->connected()) {
    const uint8_t tag = in.U8();
    absl::Span<const uint8_t> chunk = in.Bytes(in.U16());
    SendChunk(client.get(), chunk.data(), chunk.size(), tag);
    if (tag & 0x80) {
      Pump(rig, client.get());
      Drain(client.get());
    }
  }
  ::shutdown(client.get(), SHUT_WR);
  for (int i = 0; i < 64 && rig.session != nullptr && rig.session->connected(); ++i) {
    Pump(rig, client.get());
    Drain(client.get());
  }
  rig.session.reset();
  return 0;
}
