// emud-keeper: holds the devices' file descriptors outside emud's container
// (fdstore/keeper.h). Usage:
//
//   emud-keeper [--socket PATH] [--after-handoff exit|wait]
//
// Starting it while another keeper serves PATH upgrades the keeper: the new
// one takes every descriptor over and the old one stops serving. The old one
// then exits (--after-handoff=exit, the default) or waits for SIGTERM
// (=wait: under Kubernetes, where an exited container would be restarted and
// would take everything back).
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/flags/flag.h"
#include "base/command_line.h"
#include "absl/flags/usage.h"
#include "fdstore/keeper.h"

ABSL_FLAG(std::string, socket, "/dev/shm/emud/keeper.sock",
          "The keeper's listening socket (a host path shared with emud and its workers)");
ABSL_FLAG(std::string, after_handoff, "exit",
          "After handing everything to a successor keeper: exit, or wait for SIGTERM");

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

// systemd Type=notify (NotifyAccess=all): the successor becomes the main pid.
void NotifySystemd() {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || (path[0] != '/' && path[0] != '@')) return;
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  size_t n = std::min(std::strlen(path), sizeof(addr.sun_path) - 1);
  std::memcpy(addr.sun_path, path, n);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';
  std::string msg = "READY=1\nMAINPID=" + std::to_string(::getpid()) + "\n";
  (void)!::sendto(fd, msg.data(), msg.size(), 0, reinterpret_cast<sockaddr*>(&addr),
                  static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n));
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Holds emud's device file descriptors across emud restarts.");
  // Dashed flags, as the other emud binaries take them.
  emud::ParseDashedCommandLine(argc, argv);
  const std::string mode = absl::GetFlag(FLAGS_after_handoff);
  if (mode != "exit" && mode != "wait") {
    std::fprintf(stderr, "emud-keeper: --after-handoff must be exit or wait, not '%s'\n",
                 mode.c_str());
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  auto keeper = emud::fdstore::Keeper::Start(absl::GetFlag(FLAGS_socket));
  if (!keeper.ok()) {
    std::fprintf(stderr, "emud-keeper: %s\n", keeper.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "emud-keeper: ready: %s (%zu fds held)\n",
               absl::GetFlag(FLAGS_socket).c_str(), (*keeper)->fds_held());
  NotifySystemd();
  absl::Status s = (*keeper)->Run(&g_stop);
  if (!s.ok()) {
    std::fprintf(stderr, "emud-keeper: %s\n", s.ToString().c_str());
    return 1;
  }
  if ((*keeper)->handed_over()) {
    if (mode == "wait") {
      std::fprintf(stderr, "emud-keeper: handed over; waiting for SIGTERM\n");
      while (!g_stop.load()) ::pause();
    }
    // Exiting closes our copies only: the successor holds every object.
    return 0;
  }
  // SIGTERM without a successor: the descriptors close with us, and every
  // guest whose worker is not running sees its device reset.
  std::fprintf(stderr, "emud-keeper: stopping with %zu fds held\n", (*keeper)->fds_held());
  return 0;
}
