// supervisor_test's standby worker: `standby_shim SCRIPT [--standby-fd=N]`.
// With --standby-fd it says it is ready (unless SHIM_NO_READY is set: then
// it never is) and waits for its promotion (fdstore/standby.h), as
// emud-worker does; then, or at once without the flag, it runs SCRIPT with
// /bin/sh -c, the promotion's fds and environment in place.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "fdstore/standby.h"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  int go = -1;
  for (int i = 2; i < argc; ++i) {
    if (std::strncmp(argv[i], "--standby-fd=", 13) == 0) go = std::atoi(argv[i] + 13);
  }
  if (go >= 0) {
    if (std::getenv("SHIM_NO_READY") != nullptr) {
      for (;;) ::pause();
    }
    if (!emud::fdstore::StandbyReady(go).ok()) return 2;
    absl::Status s = emud::fdstore::AwaitPromotion(go);
    if (absl::IsCancelled(s)) return 0;
    if (!s.ok()) return 3;
    ::close(go);
    // Received fds are close-on-exec; the script is to see them.
    for (int fd = 3; fd < 256; ++fd) ::fcntl(fd, F_SETFD, 0);
  }
  ::execl("/bin/sh", "sh", "-c", argv[1], static_cast<char*>(nullptr));
  return 127;
}
