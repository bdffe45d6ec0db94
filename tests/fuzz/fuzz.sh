#!/bin/bash
# The fuzz targets built with Debian's clang (libFuzzer + ASan + UBSan),
# outside Bazel (tests/fuzz/lib.sh has the table of targets and the build).
#
#   tests/fuzz/fuzz.sh list
#   tests/fuzz/fuzz.sh build NAME
#   tests/fuzz/fuzz.sh run NAME [SECONDS]   short run from the checked-in corpus
#                                           (default 20 s; what CI does)
#   tests/fuzz/fuzz.sh campaign NAME RUNS [WORKERS]
#                                           RUNS executions in all (e.g.
#                                           10000000) over WORKERS processes
#                                           (default: one per core) at nice 19,
#                                           sharing and
#                                           growing the work corpus
#                                           $OUT/work-NAME
#   tests/fuzz/fuzz.sh replay NAME DIR      runs every input in DIR once (e.g.
#                                           a fast build's work corpus under
#                                           the default ASan build)
#   tests/fuzz/fuzz.sh merge NAME           minimises work corpus + checked-in
#                                           corpus into the checked-in corpus
#                                           (libFuzzer -merge=1; regress-* files
#                                           are kept by name)
#
# Env: FUZZ_OUT (build and work dir, default /dev/shm/emud-fuzz-$UID), CXX,
# FUZZ_SANITIZERS (default address,undefined; "undefined" builds a binary
# about 2.5x faster for long campaigns, whose corpus is then replayed under
# ASan: use another FUZZ_OUT for it), FUZZ_COVERAGE_FLAGS (extra
# -fsanitize-coverage flags, e.g. -fno-sanitize-coverage=trace-cmp: no
# comparison tracing, 2-4.6x faster again, blind to magic values),
# FUZZ_WORK (the work corpus, default $OUT/work-NAME: two campaigns of two
# builds can share one).
# Exit status of run/campaign: 0 = no crash. A crash is left as
# $FUZZ_OUT/crash-NAME-*; replay it with $FUZZ_OUT/NAME FILE.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/fuzz/lib.sh

cmd=${1:-}
name=${2:-}
OUT=${FUZZ_OUT:-/dev/shm/emud-fuzz-$(id -u)}
case "$cmd" in
  list) fuzz_names; echo; exit 0 ;;
  build|run|campaign|merge|replay) ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
fuzz_target "$name"
mkdir -p "$OUT"
fuzz_build "$name" "$OUT"
[ "$cmd" = build ] && exit 0
fuzz_env
corpus="$PWD/$CORPUS_DIR"
mkdir -p "$corpus"
work=${FUZZ_WORK:-$OUT/work-$name}
mkdir -p "$work"
common=(-max_len="$MAX_LEN" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$OUT/crash-$name-")

case "$cmd" in
  run)
    secs=${3:-20}
    # The checked-in corpus is read, never written: new inputs go to $work.
    rc=0
    (cd "$OUT" && "./$name" -max_total_time="$secs" "${common[@]}" "$work" "$corpus") \
      > "$OUT/run-$name.log" 2>&1 || rc=$?
    grep -E '^(INFO: seed corpus|#[0-9]+ +(INITED|DONE)|stat::|Done)' "$OUT/run-$name.log" || true
    if ((rc != 0)); then
      tail -n 60 "$OUT/run-$name.log"
      echo "$name: CRASH (exit $rc), see $OUT/crash-$name-*"
      exit 1
    fi
    echo "$name: no crash in ${secs}s"
    ;;
  campaign)
    runs=${3:?RUNS}
    workers=${4:-$(nproc)}
    cd "$OUT"
    rc=0
    if ((workers == 1)); then
      nice -n 19 "./$name" -runs="$runs" "${common[@]}" "$work" "$corpus" \
        > "$OUT/campaign-$name.log" 2>&1 || rc=$?
      logs=("$OUT/campaign-$name.log")
    else
      # libFuzzer's job mode: WORKERS processes, each RUNS/WORKERS
      # executions, each picking up the others' new inputs from $work
      # (-reload); their logs are fuzz-N.log in a directory of their own.
      jobdir="$OUT/campaign-$name"
      rm -rf "$jobdir"
      mkdir -p "$jobdir"
      (cd "$jobdir" && nice -n 19 "$OUT/$name" -jobs="$workers" -workers="$workers" \
        -runs=$((runs / workers)) "${common[@]}" "$work" "$corpus") \
        > "$OUT/campaign-$name.log" 2>&1 || rc=$?
      logs=("$jobdir"/fuzz-*.log)
      for l in "${logs[@]}"; do grep -q 'stat::number_of_executed_units' "$l" || rc=1; done
    fi
    for l in "${logs[@]}"; do tail -n 12 "$l"; done
    awk '/stat::number_of_executed_units/ {n += $2} /stat::average_exec_per_sec/ {r += $2}
         END {printf "%s: %d executions, %d exec/s summed over the workers\n", "'"$name"'", n, r}' \
      "${logs[@]}"
    ((rc == 0)) || { echo "$name: CRASH or failure (exit $rc), see $OUT/crash-$name-* and ${logs[*]}"; exit 1; }
    echo "$name: campaign of $runs executions done, no crash"
    ;;
  replay)
    dir=${3:?DIR}
    rc=0
    (cd "$OUT" && "./$name" -runs=0 "${common[@]}" "$dir") > "$OUT/replay-$name.log" 2>&1 || rc=$?
    grep -E '^(INFO: seed corpus|stat::number_of_executed_units)' "$OUT/replay-$name.log" || true
    ((rc == 0)) || { tail -n 60 "$OUT/replay-$name.log"; echo "$name: CRASH replaying $dir"; exit 1; }
    echo "$name: replayed $(ls "$dir" | wc -l) inputs from $dir, no crash"
    ;;
  merge)
    tmp="$OUT/merge-$name"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    (cd "$OUT" && nice -n 19 "./$name" -merge=1 "${common[@]}" "$tmp" "$corpus" "$work" 2>&1 | tail -n 3)
    # Named regression inputs (regress-*) stay as they are; the rest is
    # replaced by the minimised set.
    find "$corpus" -maxdepth 1 -type f ! -name 'regress-*' -delete
    cp "$tmp"/* "$corpus"/ 2>/dev/null || true
    echo "$name: $(ls "$corpus" | wc -l) inputs, $(du -sh "$corpus" | cut -f1) in $CORPUS_DIR"
    ;;
esac
