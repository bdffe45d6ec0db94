#!/usr/bin/env bash
# Short fuzz run of every fuzz target (clang libFuzzer + ASan/UBSan), each
# starting from its checked-in corpus: FUZZ_SECONDS (default 20) per target,
# one target at a time, so 6 targets fuzz for 2 minutes in all (plus the
# clang builds). The corpora themselves are replayed by the Bazel replay
# tests (no clang needed). Campaigns: tests/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-20}
failed=()
for name in $(tests/fuzz/fuzz.sh list); do
  echo "--- $name"
  tests/fuzz/fuzz.sh run "$name" "$secs" || failed+=("$name")
done
if ((${#failed[@]} > 0)); then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
