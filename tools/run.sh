#!/usr/bin/env bash
# The README's run command: set up, build and start emud with embedded
# defaults (state under /dev/shm/emud, gRPC API on a local UNIX socket,
# metrics on 127.0.0.1). Extra arguments are passed to emud.
#
# emud-keeper (the fd store outside emud) is started first unless one
# already serves /dev/shm/emud/keeper.sock: emud's default --fd-keeper=auto
# then keeps every device's descriptors there, so stopping or upgrading emud
# never resets a guest. The keeper keeps running after emud stops (that is
# its point); stop it with `pkill -x emud-keeper` once no VM uses a device.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build //server:emud //dataplane:emud-worker //ctl:emuctl //fdstore:emud-keeper
state_dir=/dev/shm/emud
for a in "$@"; do
  case "$a" in --state-dir=*|--state_dir=*) state_dir="${a#*=}" ;; esac
done
mkdir -p "$state_dir"
if [[ ! -S "$state_dir/keeper.sock" ]] || ! pgrep -x emud-keeper >/dev/null; then
  setsid bazel-bin/fdstore/emud-keeper --socket="$state_dir/keeper.sock" \
    >>"$state_dir/keeper.log" 2>&1 < /dev/null &
  for _ in $(seq 100); do [[ -S "$state_dir/keeper.sock" ]] && break; sleep 0.05; done
fi
exec bazel-bin/server/emud --worker-binary="$PWD/bazel-bin/dataplane/emud-worker" "$@"
