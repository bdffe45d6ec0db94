// Test harness for cross-process tests of emud: starts a real emud (from the
// Bazel runfiles) on a private state directory, talks to it over gRPC and
// through emuctl, scrapes its metrics, and measures its resources.
#ifndef EMUD_TESTS_INTEGRATION_EMUD_HARNESS_H_
#define EMUD_TESTS_INTEGRATION_EMUD_HARNESS_H_

#include <signal.h>
#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/emud_v1.grpc.pb.h"

namespace emud::testing {

// Absolute path of a runfile ("server/emud"), from TEST_SRCDIR or the
// binary's own .runfiles directory.
std::string Runfile(const std::string& rel);

// A fresh, uniquely named directory for state under $EMUD_TEST_TMPDIR
// (default /dev/shm), short enough for UNIX socket paths; removed by the
// destructor.
class TempStateDir {
 public:
  explicit TempStateDir(const std::string& tag);
  ~TempStateDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};
// Runs argv (argv[0] absolute) to completion, capturing stdout and stderr.
CommandResult RunCommand(const std::vector<std::string>& argv,
                  const std::vector<std::string>& extra_env = {});

class EmudProcess {
 public:
  struct Options {
    std::string state_dir;
    std::string worker_binary;  // default: the fake worker
    std::string emud_binary;    // default: //server:emud
    std::vector<std::string> extra_flags;
    std::vector<std::string> extra_env;  // NAME=VALUE for emud and its workers
    // Serve metrics on 127.0.0.1:<ephemeral>. Off saves ~1.5 s per emud
    // stop (civetweb's listener thread stops slowly).
    bool metrics = true;
    // Runs emud under this command prefix (e.g. {emud-init, "--"}); pid()
    // is then the wrapper's.
    std::vector<std::string> wrapper;
  };
  // Starts emud and waits for its "ready" line.
  static absl::StatusOr<std::unique_ptr<EmudProcess>> Start(Options o);
  ~EmudProcess();  // SIGKILLs emud if still running (workers: see Stop)

  // Sends `sig` and waits for exit; returns the exit status (waitpid form).
  int Stop(int sig = SIGTERM);
  pid_t pid() const { return pid_; }
  const std::string& grpc_address() const { return grpc_address_; }  // unix:///...
  const std::string& metrics_url() const { return metrics_url_; }
  const std::string& log_path() const { return log_path_; }
  std::string Log() const;
  emud::v1::DeviceService::Stub* stub() { return stub_.get(); }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

  // emuctl with --server pointing at this emud.
  CommandResult Emuctl(const std::vector<std::string>& args);

 private:
  EmudProcess() = default;
  pid_t pid_ = 0;
  std::string grpc_address_, metrics_url_, log_path_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<emud::v1::DeviceService::Stub> stub_;
};

// Polls `pred` every 5 ms until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout);

// gRPC helpers (5 s deadline).
absl::StatusOr<emud::v1::Device> GetDevice(emud::v1::DeviceService::Stub* stub,
                                           const std::string& name);
grpc::Status CreateDevice(emud::v1::DeviceService::Stub* stub, const std::string& name,
                          emud::v1::Device* out, const std::string& backend = "");
grpc::Status DeleteDevice(emud::v1::DeviceService::Stub* stub, const std::string& name,
                          bool force = false);
// Waits until the device reaches `phase`.
bool WaitPhase(emud::v1::DeviceService::Stub* stub, const std::string& name,
               emud::v1::Phase phase, absl::Duration timeout = absl::Seconds(10));

// HTTP GET of a URL "http://host:port/path"; returns the body.
// The whole file, or "" if it cannot be read.
std::string ReadFile(const std::string& path);

absl::StatusOr<std::string> HttpGet(const std::string& url);
// Parses Prometheus text format into "name{labels}" -> value. Fails on a
// malformed sample line.
absl::StatusOr<std::map<std::string, double>> ParsePrometheus(const std::string& text);

struct ProcResources {
  int fds = 0;
  long rss_kb = 0;
  double cpu_seconds = 0;  // user + system
  int children = 0;        // processes whose parent is pid
  int sockets = 0;         // fds that are sockets
};
ProcResources Measure(pid_t pid);
// Number of entries (files, sockets, directories) under `dir`, recursively.
int CountFiles(const std::string& dir);

}  // namespace emud::testing

#endif  // EMUD_TESTS_INTEGRATION_EMUD_HARNESS_H_
