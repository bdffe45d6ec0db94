// The timeline of a worker (re)start, for the reattach breakdown
// (ARCHITECTURE.md, "A worker crash to its successor").
//
// emud marks when its loop woke for the predecessor's exit (the pidfd became
// readable), when it held its mutex, when it began handling the exit and when
// it called posix_spawn, and hands those to the successor in kRestartTraceEnv
// ("woke=NS,locked=NS,..."; CLOCK_REALTIME nanoseconds since the epoch, so
// that a test can set its own SIGKILL instant against them). The successor
// adds its own marks (its main(), each ResumeOrCreate step, its first poll)
// and logs the whole line once it has polled (kLogPrefix): nothing of this is
// on the path to the first frame but a clock read per step.
//
// A promoted standby worker (fdstore/standby.h) gets the same marks in its
// promotion message; its "exec" is its wake-up from the go channel (it
// exec'd long before), so "spawn -> exec" is then the promotion.
//
// A worker started for another reason (create, upgrade-worker, a backed-off
// restart) logs its own marks only.
#ifndef EMUD_WORKER_API_RESTART_TRACE_H_
#define EMUD_WORKER_API_RESTART_TRACE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace emud::worker_api {

inline constexpr char kRestartTraceEnv[] = "EMUD_RESTART_TRACE";
// "emud-worker: NAME startup trace pid PID: woke=NS locked=NS ... polled=NS"
inline constexpr char kRestartTraceLogTag[] = " startup trace pid ";

class RestartTrace {
 public:
  // Appends (name, now). Names are short identifiers ([a-z_]).
  void Mark(absl::string_view name);
  void MarkAt(absl::string_view name, int64_t unix_ns);
  // "name=NS,name=NS" (the environment variable's value).
  std::string Encode() const;
  // The marks of Encode()'s (or Format()'s) text; unparsable items are
  // skipped. Separators: ',' or ' '.
  static RestartTrace Decode(absl::string_view text);
  // "name=NS name=NS" (the log line's tail).
  std::string Format() const;
  // The time of `name`, or 0.
  int64_t At(absl::string_view name) const;
  const std::vector<std::pair<std::string, int64_t>>& marks() const { return marks_; }
  bool empty() const { return marks_.empty(); }

 private:
  std::vector<std::pair<std::string, int64_t>> marks_;
};

}  // namespace emud::worker_api

#endif  // EMUD_WORKER_API_RESTART_TRACE_H_
