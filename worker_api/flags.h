// The worker's side of worker_args.h: the Abseil flags a worker binary takes,
// one per WorkerArgs field, named as WorkerArgs::ToArgv spells them with
// underscores (parse the command line with emud::ParseDashedCommandLine,
// base/command_line.h, so the dashed spelling emud passes is accepted).
//
// Link into worker binaries only (emud-worker, its fault-injection twin,
// tests/fakes:fake_worker): emud defines flags of the same names (--state-dir)
// and two definitions of one flag do not link.
#ifndef EMUD_WORKER_API_FLAGS_H_
#define EMUD_WORKER_API_FLAGS_H_

#include "absl/status/statusor.h"
#include "worker_api/worker_args.h"

namespace emud::worker_api {

// The parsed command line as WorkerArgs, checked: the device name
// (state_store::ValidateDeviceName), --doorbell, --socket-mode, then
// WorkerArgs::Validate. INVALID_ARGUMENT naming the flag otherwise. Unset
// optional flags come back as their defaults (socket_uid/gid unset for -1,
// socket_mode and persist_session always set), so the result describes
// exactly what the worker will do.
absl::StatusOr<WorkerArgs> WorkerArgsFromFlags();

// --standby-fd: >= 0 for a standby worker (fdstore/standby.h), the fd of its
// go channel; -1 otherwise. Not a WorkerArgs field: emud adds it to a
// standby's argv only, and an older worker binary that does not know it
// refuses to start (so it never runs as a worker beside the live one).
int StandbyFdFromFlags();

}  // namespace emud::worker_api

#endif  // EMUD_WORKER_API_FLAGS_H_
