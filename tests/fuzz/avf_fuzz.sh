#!/bin/bash
# Builds the AVF device fuzzer (avf/fuzz/device_fuzzer.cc) with Debian's
# clang (libFuzzer + ASan + UBSan) and runs a short fuzz session over the
# built-in seeds (tests/fuzz/lib.sh does the work).
#
#   tests/fuzz/avf_fuzz.sh [SECONDS]     (default 20)
#
# Env: FUZZ_OUT (build/corpus dir, default /dev/shm/avf-fuzz-$UID), CXX
# (default clang++-14 or clang++). Exit status: 0 = no crash found. Crashes
# are written as $FUZZ_OUT/crash-*; replay one with
#   $FUZZ_OUT/avf_fuzzer $FUZZ_OUT/crash-...
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/fuzz/lib.sh

NAME=avf_fuzzer
SECONDS_TO_RUN=${1:-20}
OUT=${FUZZ_OUT:-/dev/shm/avf-fuzz-$(id -u)}
PROTO=avf/avf_state.proto
MAX_LEN=8192
FUZZ_TARGET=//avf/fuzz:device_fuzzer
HASH_INPUTS=(avf/*.h avf/*.cc avf/*.proto avf/fuzz/*.h avf/fuzz/*.cc vfio_user/msix_table.*
             vfio_user/pci_config_space.* vfio_user/device.h vfio_user/device_records.h state_store/record_codec.h worker_api/*.h
             base/*.h base/*.cc tests/fuzz/lib.sh)
SEED_WRITER_SRCS=(avf/fuzz/seed_writer.cc)
fuzz_build_and_run
