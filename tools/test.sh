#!/usr/bin/env bash
# The README's test command: set up, build everything, run every test.
# Exits non-zero on any failure; the last line is "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

tools/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
failures=()

# 1. Everything under Bazel: build all targets, run all cc_tests.
log=$(mktemp)
bazel test //... --keep_going 2>&1 | tee "$log"
bazel_rc=${PIPESTATUS[0]}
p=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log" || true)
# A test marked flaky=True that failed and then passed on a retry counts as
# passed, but is listed below: it points at an open bug, not at a green test.
k=$(grep -cE '^//[^ ]+ +FLAKY' "$log" || true)
f=$(grep -cE '^//[^ ]+ +(FAILED|TIMEOUT|NO STATUS|INCOMPLETE|REMOTE FAILURE)' "$log" || true)
passed=$((passed + p + k))
failed=$((failed + f))
flaky=$(grep -E '^//[^ ]+ +FLAKY' "$log" | awk '{print $1}' || true)
while read -r t; do failures+=("$t"); done < <(grep -E '^//[^ ]+ +(FAILED|TIMEOUT|NO STATUS|INCOMPLETE|REMOTE FAILURE)' "$log" | awk '{print $1}')
if [[ $bazel_rc -ne 0 && $f -eq 0 ]]; then
  # Build failure or no test ran: count it, never report green.
  failed=$((failed + 1))
  failures+=("bazel test //... (exit $bazel_rc: build failure)")
fi
rm -f "$log"
# The chaos suite's figures (kills, reattach p50/p99/max, lost completions,
# duplicates, fds), from its test log.
chaos_log="$(bazel info bazel-testlogs 2>/dev/null)/tests/chaos/chaos_test/test.log"
if [[ -f "$chaos_log" ]]; then
  echo "=== tests/chaos figures"
  grep -E '^chaos' "$chaos_log" || true
fi

# 2. Suites that run outside Bazel's sandbox (clang-built fuzzers, chaos).
for suite in tests/suites/*.sh; do
  [[ -e "$suite" ]] || continue
  echo "=== $suite"
  if bash "$suite"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$suite")
  fi
done

if [[ -n "$flaky" ]]; then
  echo "flaky (failed, then passed on a retry; see the test's BUILD comment):"
  for t in $flaky; do echo "  $t"; done
fi
if ((failed > 0)); then
  echo "failed:"
  for t in "${failures[@]}"; do echo "  $t"; done
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
