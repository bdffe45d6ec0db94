// emud-init: keeps emud running without taking its workers down with it.
//
//   emud-init [--backoff-initial-ms N] [--backoff-max-ms N] -- /usr/bin/emud [ARGS...]
//
// Run as the container's PID 1 (deploy/k8s does). If emud itself were PID 1,
// its crash would end the container, and the runtime kills every process in
// the container's cgroup: every worker, and with them every guest's
// connection. emud-init instead:
//  - restarts emud whenever it exits on its own (backoff doubling from
//    --backoff-initial-ms to --backoff-max-ms, back to the start after emud
//    ran for 10 s); the new emud adopts the running workers;
//  - is the child subreaper (PR_SET_CHILD_SUBREAPER; PID 1 is one anyway), so
//    workers orphaned by emud's death become its children and are reaped
//    when they exit (the new emud watches them through pidfds);
//  - forwards SIGTERM, SIGINT, SIGQUIT and SIGHUP to emud; after SIGTERM,
//    SIGINT or SIGQUIT it stops restarting, waits for emud and exits with
//    its status (128 + signal if emud was killed);
//  - does not restart an emud that exited with kExitHandedOver (75: it
//    handed its devices to a successor emud, server/handover.h) and waits
//    for SIGTERM instead.
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/log.h"
#include "base/version.h"

extern char** environ;

namespace {

// emud's exit status after a handover to a successor (server/handover.h).
constexpr int kExitHandedOver = 75;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

void Log(const std::string& s) { emud::log::Info(s); }

constexpr char kUsage[] =
    "usage: emud-init [--backoff-initial-ms N] [--backoff-max-ms N] -- EMUD [ARGS...]\n";

constexpr char kHelp[] =
    "emud-init: runs EMUD (emud and its arguments) and restarts it when it exits, so that a\n"
    "crash of emud never ends the container and its workers. It is the child subreaper\n"
    "(workers orphaned by emud are reaped), forwards SIGTERM, SIGINT, SIGQUIT and SIGHUP to\n"
    "emud, and after SIGTERM, SIGINT or SIGQUIT exits with emud's status. An emud that handed\n"
    "its devices to a successor (exit status 75) is not restarted.\n\n"
    "Flags:\n"
    "  --backoff-initial-ms N  first restart delay, doubling per quick exit (default 100)\n"
    "  --backoff-max-ms N      upper bound of the delay (default 5000)\n"
    "  --help, -h              print this text and exit\n"
    "  --version               print the version and exit\n"
    "Log lines follow EMUD_LOG_FORMAT (text or json) like emud's.\n";

int Usage(const char* why) {
  std::fprintf(stderr, "emud-init: %s\n%s", why, kUsage);
  return 2;
}

bool ParseMs(const char* s, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 3600 * 1000) return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  emud::log::InitFromEnvironment("emud-init");
  int64_t backoff_initial = 100, backoff_max = 5000;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a == "--help" || a == "-h") {
      std::printf("%s%s", kUsage, kHelp);
      return 0;
    }
    if (a == "--version") {
      std::printf("emud-init %s\n", emud::kVersion);
      return 0;
    }
    if ((a == "--backoff-initial-ms" || a == "--backoff-max-ms") && i + 1 < argc) {
      if (!ParseMs(argv[++i], a == "--backoff-initial-ms" ? &backoff_initial : &backoff_max)) {
        return Usage("backoff must be 1..3600000 ms");
      }
      continue;
    }
    return Usage(("unknown argument '" + a + "'").c_str());
  }
  if (i >= argc) return Usage("no command after '--'");
  if (backoff_max < backoff_initial) backoff_max = backoff_initial;
  std::vector<char*> cmd(argv + i, argv + argc);
  cmd.push_back(nullptr);

  if (::getpid() != 1 && ::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    Log(std::string("PR_SET_CHILD_SUBREAPER: ") + std::strerror(errno));
  }
  sigset_t handled;
  sigemptyset(&handled);
  for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP}) sigaddset(&handled, s);
  sigprocmask(SIG_BLOCK, &handled, nullptr);

  // emud starts with default dispositions and nothing blocked.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &handled);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  pid_t emud = 0;
  int64_t started_ms = 0, restart_at_ms = NowMs(), backoff = backoff_initial;
  bool stopping = false, handed_over = false;
  int exit_code = 0;
  for (;;) {
    if (emud == 0 && !stopping && !handed_over && NowMs() >= restart_at_ms) {
      int rc = posix_spawn(&emud, cmd[0], nullptr, &attr, cmd.data(), environ);
      if (rc != 0) {
        emud = 0;
        Log(std::string("cannot start ") + cmd[0] + ": " + std::strerror(rc));
        restart_at_ms = NowMs() + backoff;
        backoff = std::min(backoff * 2, backoff_max);
      } else {
        started_ms = NowMs();
        Log("started " + std::string(cmd[0]) + " as pid " + std::to_string(emud));
      }
    }
    if (stopping && emud == 0) return exit_code;

    siginfo_t si;
    int sig;
    if (emud == 0 && !stopping && !handed_over) {
      int64_t wait_ms = std::max<int64_t>(0, restart_at_ms - NowMs());
      timespec ts{time_t(wait_ms / 1000), long(wait_ms % 1000) * 1000000};
      sig = sigtimedwait(&handled, &si, &ts);
    } else {
      sig = sigwaitinfo(&handled, &si);
    }
    if (sig < 0) continue;  // timeout (restart due) or EINTR
    if (sig == SIGCHLD) {
      int status;
      pid_t pid;
      while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid != emud) continue;  // an orphaned worker: reaped, emud saw it via its pidfd
        emud = 0;
        std::string how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                            : "was killed by signal " + std::to_string(WTERMSIG(status));
        exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        const bool handed = WIFEXITED(status) && WEXITSTATUS(status) == kExitHandedOver;
        if (stopping) {
          // SIGTERM may cross the end of a handover (the old pod is deleted
          // as soon as the new one is ready): a successful handover is still
          // a clean exit, not a failure of the pod.
          if (handed) exit_code = 0;
          Log("emud " + how + (handed ? " (handed every device over)" : "") + "; stopping");
          continue;
        }
        if (handed) {
          // A successor emud (a surge rollout's new pod) took every device
          // over: starting emud again would fight it. Wait for SIGTERM (the
          // old pod's deletion) and exit 0 then.
          Log("emud handed every device over to its successor; not restarting it");
          handed_over = true;
          exit_code = 0;
          continue;
        }
        if (NowMs() - started_ms >= 10000) backoff = backoff_initial;
        restart_at_ms = NowMs() + backoff;
        Log("emud " + how + "; restarting in " + std::to_string(backoff) + " ms");
        backoff = std::min(backoff * 2, backoff_max);
      }
      continue;
    }
    if (emud > 0) ::kill(emud, sig);
    if (sig != SIGHUP) stopping = true;
  }
}
