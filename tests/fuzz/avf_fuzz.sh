#!/bin/bash
# Builds the AVF device fuzzer (avf/fuzz/device_fuzzer.cc) with Debian's
# clang (libFuzzer + ASan + UBSan) against the system libraries and runs a
# short fuzz session over the built-in seeds.
#
#   tests/fuzz/avf_fuzz.sh [SECONDS]     (default 20)
#
# Env: FUZZ_OUT (build/corpus dir, default /dev/shm/avf-fuzz-$UID), CXX
# (default clang++-14 or clang++). Exit status: 0 = no crash found. Crashes
# are written as $FUZZ_OUT/crash-*; replay one with
#   $FUZZ_OUT/avf_fuzzer $FUZZ_OUT/crash-...
set -euo pipefail

SECONDS_TO_RUN=${1:-20}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${FUZZ_OUT:-/dev/shm/avf-fuzz-$(id -u)}
CXX=${CXX:-$(command -v clang++-14 || command -v clang++)}
mkdir -p "$OUT/gen" "$OUT/corpus" "$OUT/obj"

cd "$ROOT"
protoc -I. --cpp_out="$OUT/gen" avf/avf_state.proto

MODULES="absl_status absl_statusor absl_strings absl_str_format absl_synchronization absl_time absl_cord protobuf lmdb"
CFLAGS="$(pkg-config --cflags $MODULES) -std=c++20 -g -O1 -I. -I$OUT/gen -Wno-deprecated-declarations"
LIBS="$(pkg-config --libs $MODULES) -lpthread"
SAN="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"

SRCS=(
  avf/admin_queue.cc
  avf/descriptors.cc
  avf/device.cc
  avf/interrupts.cc
  avf/virtchnl.cc
  avf/virtchnl_pf.cc
  vfio_user/msix_table.cc
  vfio_user/pci_config_space.cc
  state_store/store.cc
  avf/fuzz/device_fuzzer.cc
)

HASH=$( (cat avf/*.h avf/*.cc avf/*.proto avf/fuzz/*.h avf/fuzz/*.cc vfio_user/msix_table.* vfio_user/pci_config_space.* \
          vfio_user/device.h state_store/*.h state_store/store.cc base/*.h; echo "$CXX $SAN") | sha256sum | cut -c1-16)
if [ -x "$OUT/avf_fuzzer" ] && [ -x "$OUT/seed_writer" ] && [ "$(cat "$OUT/build.hash" 2>/dev/null)" = "$HASH" ]; then
  echo "avf_fuzz: sources unchanged, reusing $OUT/avf_fuzzer"
else
  rm -f "$OUT/build.hash"
  OBJS=()
  pids=()
  for src in "${SRCS[@]}"; do
    obj="$OUT/obj/$(echo "$src" | tr / _).o"
    OBJS+=("$obj")
    $CXX $CFLAGS $SAN -c "$src" -o "$obj" &
    pids+=($!)
  done
  $CXX $CFLAGS -fsanitize=address,undefined -c "$OUT/gen/avf/avf_state.pb.cc" -o "$OUT/obj/pb.o" &
  pids+=($!)
  for p in "${pids[@]}"; do wait "$p"; done
  $CXX $SAN "${OBJS[@]}" "$OUT/obj/pb.o" $LIBS -o "$OUT/avf_fuzzer"
  $CXX $CFLAGS avf/fuzz/seed_writer.cc $LIBS -o "$OUT/seed_writer"
  echo "$HASH" > "$OUT/build.hash"
fi
"$OUT/seed_writer" "$OUT/corpus"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$OUT"
./avf_fuzzer -max_total_time="$SECONDS_TO_RUN" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 corpus 2>&1 | tail -n 25
echo "avf_fuzz: no crash in ${SECONDS_TO_RUN}s (corpus: $OUT/corpus, $(ls corpus | wc -l) inputs)"
