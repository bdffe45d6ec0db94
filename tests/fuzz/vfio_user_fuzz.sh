#!/bin/bash
# Builds the vfio-user session fuzzer with Debian's clang (libFuzzer + ASan +
# UBSan) against the system libraries and runs a short fuzz session over the
# built-in seeds (plus vfio_user/fuzz/corpus if present).
#
#   tests/fuzz/vfio_user_fuzz.sh [SECONDS]     (default 25)
#
# Env: FUZZ_OUT (build/corpus dir, default /dev/shm/vfu-fuzz-$UID), CXX
# (default clang++-14 or clang++). Exit status: 0 = no crash found.
# Crashes are written as $FUZZ_OUT/crash-*; replay one with
#   $FUZZ_OUT/vfio_user_fuzzer $FUZZ_OUT/crash-...
set -euo pipefail

SECONDS_TO_RUN=${1:-25}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${FUZZ_OUT:-/dev/shm/vfu-fuzz-$(id -u)}
CXX=${CXX:-$(command -v clang++-14 || command -v clang++)}
mkdir -p "$OUT/gen" "$OUT/corpus" "$OUT/obj"

cd "$ROOT"
protoc -I. --cpp_out="$OUT/gen" vfio_user/session_state.proto

MODULES="absl_status absl_statusor absl_strings absl_str_format absl_synchronization absl_time absl_cord protobuf lmdb"
CFLAGS="$(pkg-config --cflags $MODULES) -std=c++20 -g -O1 -I. -I$OUT/gen -Wno-deprecated-declarations"
LIBS="$(pkg-config --libs $MODULES) -lpthread"
SAN="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"

SRCS=(
  vfio_user/protocol.cc
  vfio_user/transport.cc
  vfio_user/dma_table.cc
  vfio_user/event_loop.cc
  vfio_user/irq_state.cc
  vfio_user/session.cc
  vfio_user/msix_table.cc
  vfio_user/pci_config_space.cc
  vfio_user/examples/example_device.cc
  state_store/store.cc
  state_store/state_dir.cc
  vfio_user/fuzz/session_fuzzer.cc
)

# Rebuild only when a source or header changed since the last build.
HASH=$( (cat vfio_user/*.h vfio_user/*.cc vfio_user/*.proto vfio_user/examples/*.h vfio_user/examples/*.cc \
          vfio_user/fuzz/*.h vfio_user/fuzz/*.cc state_store/*.h state_store/*.cc base/*.h; echo "$CXX $SAN") | sha256sum | cut -c1-16)
if [ -x "$OUT/vfio_user_fuzzer" ] && [ -x "$OUT/seed_writer" ] && [ "$(cat "$OUT/build.hash" 2>/dev/null)" = "$HASH" ]; then
  echo "vfio_user_fuzz: sources unchanged, reusing $OUT/vfio_user_fuzzer"
else
rm -f "$OUT/build.hash"
# Compile each source (in parallel), then link with the libFuzzer main.
OBJS=()
pids=()
for src in "${SRCS[@]}"; do
  obj="$OUT/obj/$(echo "$src" | tr / _).o"
  OBJS+=("$obj")
  $CXX $CFLAGS $SAN -c "$src" -o "$obj" &
  pids+=($!)
done
$CXX $CFLAGS -fsanitize=address,undefined -c "$OUT/gen/vfio_user/session_state.pb.cc" -o "$OUT/obj/pb.o" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
$CXX $SAN "${OBJS[@]}" "$OUT/obj/pb.o" $LIBS -o "$OUT/vfio_user_fuzzer"

# Seeds: the built-in ones (written by a tiny program) and the checked-in corpus.
$CXX $CFLAGS vfio_user/fuzz/seed_writer.cc vfio_user/protocol.cc $LIBS -o "$OUT/seed_writer"
echo "$HASH" > "$OUT/build.hash"
fi
"$OUT/seed_writer" "$OUT/corpus"
if [ -d vfio_user/fuzz/corpus ]; then cp -n vfio_user/fuzz/corpus/* "$OUT/corpus/" 2>/dev/null || true; fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$OUT"
./vfio_user_fuzzer -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 corpus 2>&1 | tail -n 25
echo "vfio_user_fuzz: no crash in ${SECONDS_TO_RUN}s (corpus: $OUT/corpus, $(ls corpus | wc -l) inputs)"
