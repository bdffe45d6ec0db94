#!/bin/bash
# The fuzz targets built with Debian's clang (libFuzzer + ASan + UBSan),
# outside Bazel (tests/fuzz/lib.sh has the table of targets and the build).
#
#   tests/fuzz/fuzz.sh list
#   tests/fuzz/fuzz.sh build NAME
#   tests/fuzz/fuzz.sh run NAME [SECONDS]   short run from the checked-in corpus
#                                           (default 20 s; what CI does)
#   tests/fuzz/fuzz.sh campaign NAME RUNS   RUNS executions (e.g. 10000000),
#                                           one process at nice 19, growing the
#                                           work corpus $OUT/work-NAME
#   tests/fuzz/fuzz.sh merge NAME           minimises work corpus + checked-in
#                                           corpus into the checked-in corpus
#                                           (libFuzzer -merge=1; regress-* files
#                                           are kept by name)
#
# Env: FUZZ_OUT (build and work dir, default /dev/shm/emud-fuzz-$UID), CXX.
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
  build|run|campaign|merge) ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
fuzz_target "$name"
mkdir -p "$OUT"
fuzz_build "$name" "$OUT"
[ "$cmd" = build ] && exit 0
fuzz_env
corpus="$PWD/$CORPUS_DIR"
mkdir -p "$corpus"
work="$OUT/work-$name"
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
    cd "$OUT"
    rc=0
    nice -n 19 "./$name" -runs="$runs" "${common[@]}" "$work" "$corpus" \
      > "$OUT/campaign-$name.log" 2>&1 || rc=$?
    tail -n 12 "$OUT/campaign-$name.log"
    ((rc == 0)) || { echo "$name: CRASH (exit $rc), see $OUT/crash-$name-*"; exit 1; }
    echo "$name: campaign of $runs executions done, no crash"
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
