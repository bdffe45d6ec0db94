// systemd's service readiness protocol (sd_notify(3)), written directly:
// one datagram of "KEY=VALUE\n..." to the AF_UNIX socket named by
// $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace). systemd
// documents the protocol as stable and meant to be implemented without
// libsystemd; doing so keeps libsystemd out of emud's image.
#ifndef EMUD_BASE_SD_NOTIFY_H_
#define EMUD_BASE_SD_NOTIFY_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace emud {

inline constexpr char kNotifySocketEnv[] = "NOTIFY_SOCKET";

// Sends `state` (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET. Without
// $NOTIFY_SOCKET (not started by systemd with Type=notify) it does nothing
// and returns OK. With `unset_environment`, $NOTIFY_SOCKET is removed
// afterwards so that child processes (workers) do not inherit it.
absl::Status SdNotify(absl::string_view state, bool unset_environment = false);

// The same, to an explicit socket address (as $NOTIFY_SOCKET spells it).
absl::Status SdNotifyTo(absl::string_view address, absl::string_view state);

}  // namespace emud

#endif  // EMUD_BASE_SD_NOTIFY_H_
