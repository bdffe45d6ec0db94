#!/bin/bash
# Builds the vfio-user session fuzzer (vfio_user/fuzz/session_fuzzer.cc) with
# Debian's clang (libFuzzer + ASan + UBSan) and runs a short fuzz session over
# the built-in seeds plus vfio_user/fuzz/corpus (tests/fuzz/lib.sh does the
# work).
#
#   tests/fuzz/vfio_user_fuzz.sh [SECONDS]     (default 25)
#
# Env: FUZZ_OUT (build/corpus dir, default /dev/shm/vfu-fuzz-$UID), CXX
# (default clang++-14 or clang++). Exit status: 0 = no crash found.
# Crashes are written as $FUZZ_OUT/crash-*; replay one with
#   $FUZZ_OUT/vfio_user_fuzzer $FUZZ_OUT/crash-...
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/fuzz/lib.sh

NAME=vfio_user_fuzzer
SECONDS_TO_RUN=${1:-25}
OUT=${FUZZ_OUT:-/dev/shm/vfu-fuzz-$(id -u)}
PROTO=vfio_user/session_state.proto
MAX_LEN=4096
CORPUS_DIR=vfio_user/fuzz/corpus
FUZZ_TARGET=//vfio_user/fuzz:session_fuzzer
HASH_INPUTS=(vfio_user/*.h vfio_user/*.cc vfio_user/*.proto vfio_user/examples/*.h
             vfio_user/examples/*.cc vfio_user/fuzz/*.h vfio_user/fuzz/*.cc state_store/*.h
             state_store/*.cc base/*.h base/*.cc worker_api/*.h worker_api/*.cc tests/fuzz/lib.sh)
SEED_WRITER_SRCS=(vfio_user/fuzz/seed_writer.cc vfio_user/protocol.cc)
fuzz_build_and_run
