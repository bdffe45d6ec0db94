# Sourced by tests/fuzz/fuzz.sh: the table of fuzz targets, and the clang
# build of one of them (libFuzzer + ASan + UBSan against the system
# libraries, outside Bazel). The sources come from `bazel query` over the
# target's cc_library, so the clang build follows the BUILD files; the .proto
# files among them are compiled with protoc. The last build is reused while
# none of its inputs changed.

# name | Bazel cc_library holding LLVMFuzzerTestOneInput (+ deps) | -max_len |
# checked-in corpus (minimised, replayed by the target's Bazel replay test)
FUZZ_TARGETS=(
  "avf_device|//avf/fuzz:device_fuzzer|4096|avf/fuzz/corpus/device"
  "vfio_user_session|//vfio_user/fuzz:session_fuzzer|4096|vfio_user/fuzz/corpus/session"
  "dataplane_tx|//dataplane/fuzz:tx_fuzzer|4096|dataplane/fuzz/corpus/tx"
  "dataplane_rx|//dataplane/fuzz:rx_fuzzer|4096|dataplane/fuzz/corpus/rx"
  "state_store_records|//state_store/fuzz:record_fuzzer|4096|state_store/fuzz/corpus/records"
  "fdstore_channel|//fdstore/fuzz:channel_fuzzer|2048|fdstore/fuzz/corpus/channel"
)

# fuzz_target NAME: sets FUZZ_TARGET, MAX_LEN, CORPUS_DIR for NAME.
fuzz_target() {
  local row
  for row in "${FUZZ_TARGETS[@]}"; do
    IFS='|' read -r n FUZZ_TARGET MAX_LEN CORPUS_DIR <<<"$row"
    [[ "$n" == "$1" ]] && return 0
  done
  echo "unknown fuzz target '$1'; known: $(fuzz_names)" >&2
  return 1
}
fuzz_names() {
  local row
  for row in "${FUZZ_TARGETS[@]}"; do printf '%s ' "${row%%|*}"; done
}

# fuzz_build NAME OUT: builds $OUT/NAME (the libFuzzer binary).
fuzz_build() {
  local name=$1 out=$2
  fuzz_target "$name" || return 1
  # clang 19 (Debian 12 has it): its libFuzzer keeps the entropic schedule's
  # rare features in a bitset (llvm-project #65288, LLVM 18). libFuzzer 14
  # looked each feature up in a list, half of every execution on the AVF and
  # session targets. clang >= 18 mangles some template arguments differently
  # from the g++ that built Debian's Abseil: -fclang-abi-compat=17 links.
  local cxx=${CXX:-clang++-19 -fclang-abi-compat=17}
  local q
  q=$(bazel query "kind('source file', deps($FUZZ_TARGET))" 2>/dev/null) ||
    { echo "$name: bazel query deps($FUZZ_TARGET) failed" >&2; return 1; }
  local files srcs protos
  mapfile -t files < <(sed -n 's#^//\([^:]*\):\(.*\)$#\1/\2#p; s#^//:\(.*\)$#\1#p' <<<"$q" | sort)
  mapfile -t srcs < <(printf '%s\n' "${files[@]}" | grep '\.cc$')
  mapfile -t protos < <(printf '%s\n' "${files[@]}" | grep '\.proto$' || true)
  ((${#srcs[@]} > 0)) || { echo "$name: no sources in deps($FUZZ_TARGET)" >&2; return 1; }
  mkdir -p "$out/gen" "$out/obj-$name"

  local modules="absl_status absl_statusor absl_strings absl_str_format absl_synchronization absl_time absl_cord absl_flags absl_flags_parse protobuf lmdb"
  local cflags libs san
  cflags="$(pkg-config --cflags $modules) -std=c++20 -g -O2 -I. -I$out/gen -Wno-deprecated-declarations"
  libs="$(pkg-config --libs $modules) -lpthread"
  # FUZZ_SANITIZERS: the sanitizers besides libFuzzer (default address,undefined).
  local sans=${FUZZ_SANITIZERS:-address,undefined}
  # UBSan's vptr check is left to the Bazel ASan+UBSan suite (which keeps
  # it): in a fuzz build it hashes the dynamic type at every virtual call
  # (each DMA access of the device model), and its own branches and traced
  # comparisons were a third of the AVF target's coverage edges and
  # executions (x1.4 exec/s without it). ASan still catches the
  # use-after-free it mostly finds.
  san="-fsanitize=fuzzer,$sans -fno-sanitize=vptr -fno-sanitize-recover=undefined"
  san+=" -fsanitize-coverage-ignorelist=tests/fuzz/coverage_ignore.txt ${FUZZ_COVERAGE_FLAGS:-}"

  local hash
  hash=$( (cat "${files[@]}" tests/fuzz/lib.sh tests/fuzz/coverage_ignore.txt; echo "$cxx $san $cflags ${srcs[*]}") | sha256sum | cut -c1-16)
  if [ -x "$out/$name" ] && [ "$(cat "$out/$name.hash" 2>/dev/null)" = "$hash" ]; then
    echo "$name: sources unchanged, reusing $out/$name"
    return 0
  fi
  rm -f "$out/$name.hash"
  local objs=() src obj rc=0 proto
  for proto in "${protos[@]}"; do
    [ -n "$proto" ] || continue
    protoc -I. --cpp_out="$out/gen" "$proto" || return 1
  done
  # Two compilers at a time (the machine is shared), then link with the
  # libFuzzer main.
  local jobs=${FUZZ_BUILD_JOBS:-2}
  for proto in "${protos[@]}"; do
    [ -n "$proto" ] || continue
    obj="$out/obj-$name/$(echo "$proto" | tr / _).pb.o"
    objs+=("$obj")
    rm -f "$obj"
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
    $cxx $cflags -fsanitize=$sans -c "$out/gen/${proto%.proto}.pb.cc" -o "$obj" &
  done
  for src in "${srcs[@]}"; do
    obj="$out/obj-$name/$(echo "$src" | tr / _).o"
    objs+=("$obj")
    rm -f "$obj"
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
    $cxx $cflags $san -c "$src" -o "$obj" &
  done
  wait
  for obj in "${objs[@]}"; do [ -f "$obj" ] || rc=1; done
  ((rc == 0)) || { echo "$name: compile failed" >&2; return 1; }
  $cxx $san "${objs[@]}" $libs -o "$out/$name" || return 1
  echo "$hash" > "$out/$name.hash"
}

fuzz_env() {
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
}
