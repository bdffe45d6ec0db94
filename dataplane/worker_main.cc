// emud-worker: one process per emulated AVF device (dataplane/worker.h). One
// event loop owns the vfio-user session (listening socket bound here), the
// AVF model, the queues and the backend.
//
//   emud-worker --device NAME --state-dir DIR --socket PATH --mac MAC
//               --queues N --backend tap:IF|loopback|peer:DEV --doorbell trap|mmap
//
// (worker_api/worker_args.h: the whole command line.) Publishes
// internal.WorkerStatus in the device's LMDB environment
// (worker_api/status_record.h) on every phase change and at most once per
// second otherwise. Hot queue indices live in DIR/shm/NAME/queues.
// SIGTERM/SIGINT stop it cleanly.
//
// Under emud (EMUD_FDS carries worker_api::kChannelFdKey) the worker
// survives its own death: it deposits every fd it relies on in emud's fd
// store before using it, persists the session crash-consistently
// (--persist_session, default on), and a successor started with the stored
// fds resumes the guest's session where it was (ARCHITECTURE.md, "How a
// crash is survived"). SIGTERM then leaves the session to the successor
// (upgrade-worker).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "base/command_line.h"
#include "base/exit_reason.h"
#include "dataplane/startup_priority.h"
#include "base/log.h"
#include "absl/strings/str_cat.h"
#include "dataplane/worker.h"
#include "fdstore/fd_store.h"
#include "fdstore/standby.h"
#include "worker_api/fd_keys.h"
#include "worker_api/flags.h"
#include "worker_api/restart_trace.h"

namespace emud::dataplane {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<bool> g_exit_now{false};  // resumable: SIGTERM = a crash
std::atomic<Worker*> g_worker{nullptr};

// The first instant of this process's code (before static constructors of
// the default priority): the end of exec, for the startup trace.
int64_t g_exec_ns = 0;
// A real-time start (emud --startup-rt-priority) is adopted here, before
// anything could create a thread that would inherit it.
__attribute__((constructor(101))) void AtExec() {
  g_exec_ns = absl::GetCurrentTimeNanos();
  AdoptStartupPriority();
}

void OnSignal(int) {
  // Every instant is a consistent crash point for a resumable worker (what
  // tests/chaos verifies), so under emud SIGTERM simply ends the process and
  // leaves the guest's session, fds and state to the successor - this is how
  // `emuctl upgrade-worker` hands a running guest over. Deleting the device
  // is what closes the connection (emud releases the fds).
  if (g_exit_now.load()) _exit(0);
  g_stop.store(true);
  if (Worker* w = g_worker.load()) w->Stop();
}

int Fail(absl::string_view what, const absl::Status& s) {
  log::Error(absl::StrCat(what, ": ", s.ToString()));
  RecordExitReason(what, s);  // emud puts it into the device's last_error
  return 1;
}

// A standby worker (--standby-fd, fdstore/standby.h): everything above
// (exec, loading, static init, logging, the arguments) is done; say so and
// wait for emud. Returns false if emud no longer wants this standby. Once
// promoted, the process is what a spawned successor would be at main():
// its fds and environment are those emud would have spawned it with.
bool AwaitPromotion(int go) {
  if (!fdstore::StandbyReady(go).ok()) return false;
  absl::Status s = fdstore::AwaitPromotion(go);
  ::close(go);
  if (!s.ok()) {
    if (!absl::IsCancelled(s)) log::Error(absl::StrCat("standby: ", s.ToString()));
    return false;
  }
  // Its start begins here; emud made it real-time before waking it.
  g_exec_ns = absl::GetCurrentTimeNanos();
  AdoptStartupPriority();
  return true;
}

int Main(int argc, char** argv) {
  // emud's --log-format and --log-level (base/log.h).
  log::InitFromEnvironment("emud-worker");
  // emud passes dashed flags (--state-dir).
  ParseDashedCommandLine(argc, argv);
  auto args = worker_api::WorkerArgsFromFlags();
  if (const int go = worker_api::StandbyFdFromFlags(); go >= 0) {
    // Nothing of the device is touched before the promotion: no fd store,
    // no state environment, no socket (the live worker owns them).
    if (!args.ok()) {
      log::Error(absl::StrCat("standby: arguments: ", args.status().ToString()));
      return 1;
    }
    if (!AwaitPromotion(go)) return 0;
  }
  // emud's marks (a restart: its wake-up for the predecessor's exit), then
  // ours. For a promoted standby "exec" is its wake-up.
  const char* trace_env = std::getenv(worker_api::kRestartTraceEnv);
  worker_api::RestartTrace trace =
      worker_api::RestartTrace::Decode(trace_env != nullptr ? trace_env : "");
  trace.MarkAt("exec", g_exec_ns);
  trace.Mark("main");
  InitExitReasonFromEnv();
  if (!args.ok()) return Fail("arguments", args.status());

  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sa.sa_flags = SA_RESTART;  // no EINTR in a reply's sendmsg or an fd-store ack
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  const std::string name = args->device;
  log::SetProcessDevice(name);  // every line of this worker is about its device
  WorkerOptions options;
  options.args = *std::move(args);
  auto inherited = fdstore::TakeInheritedFds();
  if (!inherited.ok()) return Fail(worker_api::kInheritedFdsEnv, inherited.status());
  options.inherited_fds = *std::move(inherited);
  if (const char* store = std::getenv(worker_api::kFdStoreSocketEnv); store != nullptr) {
    options.store_socket = store;
  }
  trace.Mark("args");
  options.trace = std::move(trace);

  Worker worker(std::move(options));
  g_worker.store(&worker);
  if (g_stop.load()) worker.Stop();  // a signal before g_worker was set
  if (absl::Status s = worker.ResumeOrCreate(); !s.ok()) {
    g_worker.store(nullptr);
    return Fail(name, s);
  }
  g_exit_now.store(worker.resumable());
  if (g_stop.load() && g_exit_now.load()) _exit(0);  // SIGTERM during start-up

  absl::Status s = worker.Run();
  if (!s.ok()) log::Error(absl::StrCat("event loop: ", s.ToString()));
  g_worker.store(nullptr);
  return 0;
}

}  // namespace
}  // namespace emud::dataplane

int main(int argc, char** argv) { return emud::dataplane::Main(argc, argv); }
