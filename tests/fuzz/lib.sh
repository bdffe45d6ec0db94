# Sourced by the fuzz scripts: builds one libFuzzer target from a list of
# sources with Debian's clang (libFuzzer + ASan + UBSan) against the system
# libraries, reusing the last build while its inputs are unchanged, then runs
# a short fuzz session over the built-in seeds (and a checked-in corpus).
#
# The caller sets, then calls fuzz_build_and_run:
#   NAME             fuzzer binary name ($OUT/$NAME)
#   PROTO            the .proto the sources include (generated under $OUT/gen)
#   FUZZ_TARGET      the fuzzer's Bazel cc_library (entry point + deps): its
#                    sources in this workspace are asked from `bazel query`,
#                    so the clang build follows the BUILD files
#   HASH_INPUTS      array: every file whose change must trigger a rebuild
#   SEED_WRITER_SRCS array: sources of the program writing the built-in seeds
#   MAX_LEN          libFuzzer -max_len
#   SECONDS_TO_RUN   fuzzing time
#   OUT              build and corpus directory
#   CORPUS_DIR       optional checked-in corpus copied into $OUT/corpus
# Exit status: 0 = no crash found; a crash is left in $OUT/crash-*, replay it
# with $OUT/$NAME $OUT/crash-...

fuzz_build_and_run() {
  local cxx=${CXX:-$(command -v clang++-14 || command -v clang++)}
  local q
  q=$(bazel query "kind('source file', deps($FUZZ_TARGET))" 2>/dev/null) ||
    { echo "$NAME: bazel query deps($FUZZ_TARGET) failed" >&2; return 1; }
  mapfile -t SRCS < <(sed -n 's#^//\([^:]*\):\(.*\.cc\)$#\1/\2#p; s#^//:\(.*\.cc\)$#\1#p' <<<"$q" | sort)
  ((${#SRCS[@]} > 0)) || { echo "$NAME: no sources in deps($FUZZ_TARGET)" >&2; return 1; }
  mkdir -p "$OUT/gen" "$OUT/corpus" "$OUT/obj"
  protoc -I. --cpp_out="$OUT/gen" "$PROTO"

  local modules="absl_status absl_statusor absl_strings absl_str_format absl_synchronization absl_time absl_cord absl_flags absl_flags_parse protobuf lmdb"
  local cflags libs san
  cflags="$(pkg-config --cflags $modules) -std=c++20 -g -O1 -I. -I$OUT/gen -Wno-deprecated-declarations"
  libs="$(pkg-config --libs $modules) -lpthread"
  san="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"

  local hash
  hash=$( (cat "${HASH_INPUTS[@]}" "${SRCS[@]}"; echo "$cxx $san ${SRCS[*]}") | sha256sum | cut -c1-16)
  if [ -x "$OUT/$NAME" ] && [ -x "$OUT/seed_writer" ] && [ "$(cat "$OUT/build.hash" 2>/dev/null)" = "$hash" ]; then
    echo "$NAME: sources unchanged, reusing $OUT/$NAME"
  else
    rm -f "$OUT/build.hash"
    # Compile each source in parallel, then link with the libFuzzer main.
    local objs=() pids=() src obj p
    for src in "${SRCS[@]}"; do
      obj="$OUT/obj/$(echo "$src" | tr / _).o"
      objs+=("$obj")
      $cxx $cflags $san -c "$src" -o "$obj" &
      pids+=($!)
    done
    $cxx $cflags -fsanitize=address,undefined -c "$OUT/gen/${PROTO%.proto}.pb.cc" -o "$OUT/obj/pb.o" &
    pids+=($!)
    for p in "${pids[@]}"; do wait "$p"; done
    $cxx $san "${objs[@]}" "$OUT/obj/pb.o" $libs -o "$OUT/$NAME"
    $cxx $cflags "${SEED_WRITER_SRCS[@]}" $libs -o "$OUT/seed_writer"
    echo "$hash" > "$OUT/build.hash"
  fi
  "$OUT/seed_writer" "$OUT/corpus"
  if [ -n "${CORPUS_DIR:-}" ] && [ -d "$CORPUS_DIR" ]; then
    cp -n "$CORPUS_DIR"/* "$OUT/corpus/" 2>/dev/null || true
  fi

  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  (cd "$OUT" && "./$NAME" -max_total_time="$SECONDS_TO_RUN" -max_len="$MAX_LEN" -timeout=10 \
     -rss_limit_mb=2048 -print_final_stats=1 corpus 2>&1 | tail -n 25)
  echo "$NAME: no crash in ${SECONDS_TO_RUN}s (corpus: $OUT/corpus, $(ls "$OUT/corpus" | wc -l) inputs)"
}
