// example_server: serves one ExampleDevice over vfio-user.
//
//   bazel run //vfio_user/examples:example_server -- --socket /tmp/example.sock
//
// Then point a vfio-user client at it, e.g.
//   qemu-system-x86_64 ... -device '{"driver":"vfio-user-pci","socket":{"path":"/tmp/example.sock","type":"unix"}}'
// SIGTERM/SIGINT stop it cleanly. Clients are served one at a time; a client
// that disconnects leaves the device state in place for the next one.
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/time.h"
#include "base/event_loop.h"
#include "state_store/store.h"
#include "vfio_user/examples/example_device.h"
#include "vfio_user/session.h"

ABSL_FLAG(std::string, socket, "", "path of the vfio-user UNIX socket to listen on (also --socket-path)");
ABSL_FLAG(int, fd, -1, "serve the already connected vfio-user socket at this fd and exit when it closes");
ABSL_FLAG(int, busy_poll_us, 100, "keep polling this long after activity before sleeping (0 = never)");
ABSL_FLAG(std::string, state_dir, "", "persist the session and device in an LMDB env here (tmpfs)");
ABSL_FLAG(bool, crash_consistent, false, "peek/commit/consume/journal every request (needs --state_dir)");

namespace {
emud::EventLoop* g_loop = nullptr;
void OnSignal(int) {
  if (g_loop) g_loop->Stop();
}
}  // namespace

int main(int argc, char** argv) {
  // The spec's backend convention spells it --socket-path=PATH.
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> argp;
  for (auto& a : args) {
    if (a.rfind("--socket-path", 0) == 0) a = "--socket" + a.substr(13);
    argp.push_back(a.data());
  }
  absl::ParseCommandLine(static_cast<int>(argp.size()), argp.data());
  std::string path = absl::GetFlag(FLAGS_socket);
  const int conn_fd = absl::GetFlag(FLAGS_fd);
  if (path.empty() == (conn_fd < 0)) {
    std::fprintf(stderr, "usage: example_server --socket PATH | --fd FDNUM\n");
    return 2;
  }
  auto loop = emud::EventLoop::Create();
  if (!loop.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loop.status().message()).c_str());
    return 1;
  }
  (*loop)->set_busy_poll(absl::Microseconds(absl::GetFlag(FLAGS_busy_poll_us)));
  auto device = emud::vfio_user::ExampleDevice::Create();
  if (!device.ok()) {
    std::fprintf(stderr, "device: %s\n", std::string(device.status().message()).c_str());
    return 1;
  }
  emud::vfio_user::SessionOptions options;
  std::unique_ptr<emud::state_store::Env> env;
  if (!absl::GetFlag(FLAGS_state_dir).empty()) {
    emud::state_store::EnvOptions eo;
    eo.tables = emud::vfio_user::SessionTables();
    eo.tables.push_back(emud::vfio_user::ExampleDevice::kTable);
    auto e = emud::state_store::Env::Open(absl::GetFlag(FLAGS_state_dir), eo);
    if (!e.ok()) {
      std::fprintf(stderr, "state_dir: %s\n", std::string(e.status().message()).c_str());
      return 1;
    }
    env = std::move(*e);
    options.store = env.get();
    options.crash_consistent = absl::GetFlag(FLAGS_crash_consistent);
    options.journal_path = absl::GetFlag(FLAGS_state_dir) + "/journal";
  }
  std::unique_ptr<emud::vfio_user::Server> server;
  std::unique_ptr<emud::vfio_user::Session> session;
  if (conn_fd >= 0) {
    auto s = emud::vfio_user::Session::Create(device->get(), loop->get(), options);
    if (!s.ok()) {
      std::fprintf(stderr, "session: %s\n", std::string(s.status().message()).c_str());
      return 1;
    }
    session = std::move(*s);
    emud::EventLoop* l = loop->get();
    session->set_on_disconnect([l] { l->Stop(); });
    if (auto st = session->AttachClient(emud::UniqueFd(conn_fd)); !st.ok()) {
      std::fprintf(stderr, "--fd: %s\n", std::string(st.message()).c_str());
      return 1;
    }
  } else {
    auto s = emud::vfio_user::Server::Listen(path, device->get(), loop->get(), options);
    if (!s.ok()) {
      std::fprintf(stderr, "listen: %s\n", std::string(s.status().message()).c_str());
      return 1;
    }
    server = std::move(*s);
  }
  g_loop = loop->get();
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  std::fprintf(stderr, "example_server: serving 1b36:10f0 on %s\n",
               conn_fd >= 0 ? ("fd " + std::to_string(conn_fd)).c_str() : path.c_str());
  auto st = (*loop)->Run();
  const auto& stats = server ? server->session().stats() : session->stats();
  std::fprintf(stderr, "example_server: exiting (%s); clients=%llu requests=%llu errors=%llu\n",
               st.ok() ? "ok" : std::string(st.message()).c_str(), (unsigned long long)stats.clients,
               (unsigned long long)stats.requests, (unsigned long long)stats.error_replies);
  server.reset();
  session.reset();
  return st.ok() ? 0 : 1;
}
