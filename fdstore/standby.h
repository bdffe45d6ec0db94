// A standby worker (emud --standby-workers): a worker process that emud
// starts ahead of need, with the device's command line plus
// --standby-fd=N, which runs everything that is safe while the device's
// live worker runs (exec, dynamic loading, static init, logging, argument
// parsing) and then blocks on N, one end of a SOCK_SEQPACKET socketpair
// ("the go channel"). When the live worker dies, emud promotes the standby
// instead of spawning a successor: one message on the go channel carries
// exactly what a spawned successor would have inherited (the fds of
// fdstore::SpawnWithFds's `inherit`, with their keys or environment
// variable names, and the extra environment), and the standby continues as
// that successor would (ARCHITECTURE.md, "A worker crash to its successor").
//
// The protocol, both sides:
//  - standby -> emud: one byte kStandbyReady once it is ready to be
//    promoted (StandbyReady). Before that emud does not promote it.
//  - emud -> standby: one promotion message (SendPromotion), at most
//    kMaxFdsPerMessage fds. Its payload is '\0'-separated items:
//    "f<key>\x01<env>" per fd, in the order of the fds attached, and
//    "e<NAME>=<VALUE>" per environment entry.
//  - emud closes its end (emud exited, or discarded the standby): the
//    standby's AwaitPromotion returns CANCELLED and it exits quietly.
#ifndef EMUD_FDSTORE_STANDBY_H_
#define EMUD_FDSTORE_STANDBY_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "fdstore/process.h"

namespace emud::fdstore {

inline constexpr char kStandbyReady = 'R';

// emud: sends the promotion (non-blocking; a socketpair's buffer takes it
// whole). UNAVAILABLE if the standby is gone (EPIPE, ECONNRESET);
// INVALID_ARGUMENT for more than kMaxFdsPerMessage fds or a key that
// ValidateKey refuses.
absl::Status SendPromotion(int go, const std::vector<InheritedFd>& inherit,
                           const std::vector<std::string>& env);

// Standby: says it is ready (one byte).
absl::Status StandbyReady(int go);

// Standby: blocks until emud promotes it, then makes the process look like
// a successor spawned with the promotion's fds and environment: every fd
// without an environment name is listed in EMUD_FDS (for
// TakeInheritedFds) under its key, every other fd's number is set in its
// variable, every environment entry is set (replacing). CANCELLED if emud
// closed the channel (the standby is no longer wanted); INTERNAL for a
// malformed message.
absl::Status AwaitPromotion(int go);

}  // namespace emud::fdstore

#endif  // EMUD_FDSTORE_STANDBY_H_
