#!/usr/bin/env bash
# The README's run command: set up, build and start emud with embedded
# defaults (state under /dev/shm/emud, gRPC API on a local UNIX socket,
# metrics on 127.0.0.1). Extra arguments are passed to emud.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build //server:emud //dataplane:emud-worker //ctl:emuctl
exec bazel-bin/server/emud --worker-binary="$PWD/bazel-bin/dataplane/emud-worker" "$@"
