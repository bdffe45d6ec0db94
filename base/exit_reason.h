// Why a worker exited, told to its supervisor.
//
// emud starts each worker with a small memfd (EMUD_EXIT_REASON_FD names its
// number in the worker). A worker that gives up writes one line there before
// it exits ("RESOURCE_EXHAUSTED: backend: TUNSETIFF lo ...: Invalid
// argument"); emud reads it when it reaps the worker and puts it into the
// device's last_error and its events. A memfd, not a file in the state
// directory, so that a full state tmpfs can still be reported, and nothing
// lingers once both ends close it.
#ifndef EMUD_BASE_EXIT_REASON_H_
#define EMUD_BASE_EXIT_REASON_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/unique_fd.h"

namespace emud {

inline constexpr char kExitReasonEnv[] = "EMUD_EXIT_REASON_FD";
inline constexpr size_t kExitReasonMax = 4095;

// Supervisor: a fresh, allocated, empty reason file.
absl::StatusOr<UniqueFd> CreateExitReasonFile();
// Supervisor: what the process wrote ("" if nothing).
std::string ReadExitReason(int fd);

// Worker: takes the fd named by EMUD_EXIT_REASON_FD (once, at start; unsets
// the variable). Without it RecordExitReason only does nothing.
void InitExitReasonFromEnv();
// Worker: records "<CODE>: <what>: <message>" (the last call wins).
void RecordExitReason(absl::string_view what, const absl::Status& status);

// Supervisor: true if a recorded reason says the cause is a full filesystem
// or memory (RESOURCE_EXHAUSTED): retried without counting as a crash loop.
bool ExitReasonIsResourceExhausted(absl::string_view reason);

}  // namespace emud

#endif  // EMUD_BASE_EXIT_REASON_H_
