#!/usr/bin/env bash
# The README's test command: set up, build everything, run every test.
# Exits non-zero on any failure; the last line is "N passed, N failed".
#
# Stages (each prints its wall time): 1. bazel test //... ; 2a. the same
# under ASan+UBSan (--config=asan, every test); 2b. the threaded tests under
# TSan (--config=tsan //tools/sanitizers:tsan_tests); 3. tests/suites/*.sh
# (fuzz smoke runs, the container image, the real-VMM suite).
#
# Budget: CI (.ci/run, fresh clone, 2 cores) must finish within 45 min.
# Stages 1 and 3 took 17-18 min before the sanitizers were added. The
# sanitizer stages were measured on the shared 2-core development machine
# under load (README.md, "Tests and benchmarks", has the figures) and are
# projected at 8-11 min (ASan, build and all tests) and 5-7 min (TSan, build
# and its 17 tests) on a quiet CI machine: 31-36 min in all, so nothing is
# cut. What is left out of TSan (and why) is in tools/sanitizers/BUILD.bazel;
# if the budget tightens, the first to go are the TSan runs of the in-process
# tests whose threads emud_integration_test also drives.
set -uo pipefail
cd "$(dirname "$0")/.."

tools/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
failures=()
t_all=$(date +%s)
stage_times=()

# Wall time of each stage, printed as it ends and again at the end.
stage_done() {  # NAME START
  local secs=$(($(date +%s) - $2))
  stage_times+=("$(printf '%-28s %3dm%02ds' "$1" $((secs / 60)) $((secs % 60)))")
  echo "=== $1: $((secs / 60))m$((secs % 60))s"
}

# bazel test ARGS..., its tests counted like every other (a test that failed
# under a sanitizer is a failure, listed as "LABEL: //target").
bazel_stage() {  # LABEL ARGS...
  local label=$1
  shift
  local log
  log=$(mktemp)
  bazel test --keep_going "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local p k f t
  p=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log" || true)
  # A test marked flaky=True that failed and then passed on a retry counts as
  # passed, but is listed below: it points at an open bug, not at a green test.
  k=$(grep -cE '^//[^ ]+ +FLAKY' "$log" || true)
  f=$(grep -cE '^//[^ ]+ +(FAILED|TIMEOUT|NO STATUS|INCOMPLETE|REMOTE FAILURE)' "$log" || true)
  passed=$((passed + p + k))
  failed=$((failed + f))
  while read -r t; do flaky+=("$label: $t"); done < <(grep -E '^//[^ ]+ +FLAKY' "$log" | awk '{print $1}')
  while read -r t; do failures+=("$label: $t"); done < <(grep -E '^//[^ ]+ +(FAILED|TIMEOUT|NO STATUS|INCOMPLETE|REMOTE FAILURE)' "$log" | awk '{print $1}')
  if [[ $rc -ne 0 && $f -eq 0 ]]; then
    # Build failure or no test ran: count it, never report green.
    failed=$((failed + 1))
    failures+=("$label: bazel test $* (exit $rc: build failure)")
  fi
  rm -f "$log"
}
flaky=()

# 1. Everything under Bazel: build all targets, run all cc_tests.
t0=$(date +%s)
bazel_stage bazel //...
stage_done "bazel test //..." "$t0"
# The chaos suite's figures (kills, reattach p50/p99/max, lost completions,
# duplicates, fds), from its test log.
chaos_log="$(bazel info bazel-testlogs 2>/dev/null)/tests/chaos/chaos_test/test.log"
if [[ -f "$chaos_log" ]]; then
  echo "=== tests/chaos figures"
  grep -E '^chaos' "$chaos_log" || true
fi

# 2. Sanitizers (.bazelrc configs; tools/sanitizers/README.md). Every process
# a test starts is built with the sanitizer too, and a report from any of
# them fails the test (tools/sanitizers/run_checked.sh).
# 2a. ASan + UBSan (leaks on): every test, the chaos suite included. (It
# was left out while a reply went missing across a worker kill under ASan:
# the window between the journal's reply mark and the reply's sendmsg, which
# ASan's sendmsg interceptor widened; the two are one asm block now,
# ARCHITECTURE.md "Control path".)
t0=$(date +%s)
bazel_stage asan --config=asan //...
stage_done "bazel test --config=asan" "$t0"
# 2b. TSan: the tests with threads (//tools/sanitizers:tsan_tests says which
# and why; tsan_excluded says why not the others). A test in neither list is
# a failure: each new test needs a decision.
t0=$(date +%s)
all_tests=$(bazel query 'tests(//...)' 2>/dev/null | sort)
decided=$(bazel query 'tests(//tools/sanitizers:tsan_tests) + tests(//tools/sanitizers:tsan_excluded)' 2>/dev/null | sort)
undecided=$(comm -23 <(echo "$all_tests") <(echo "$decided"))
if [[ -z "$all_tests" || -z "$decided" || -n "$undecided" ]]; then
  echo "tests in neither //tools/sanitizers:tsan_tests nor :tsan_excluded (or bazel query failed):"
  echo "$undecided" | sed 's/^/  /'
  failed=$((failed + 1))
  failures+=("tsan: tests not in tools/sanitizers/BUILD.bazel: $(echo $undecided)")
fi
bazel_stage tsan --config=tsan //tools/sanitizers:tsan_tests
stage_done "bazel test --config=tsan" "$t0"

# 3. Suites that run outside Bazel's sandbox (clang-built fuzzers, chaos).
for suite in tests/suites/*.sh; do
  [[ -e "$suite" ]] || continue
  echo "=== $suite"
  t0=$(date +%s)
  if bash "$suite"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$suite")
  fi
  stage_done "$suite" "$t0"
done

echo "wall time per stage:"
for t in "${stage_times[@]}"; do echo "  $t"; done
echo "  total                        $(( ($(date +%s) - t_all) / 60 ))m$(( ($(date +%s) - t_all) % 60 ))s"
if ((${#flaky[@]} > 0)); then
  echo "flaky (failed, then passed on a retry; see the test's BUILD comment):"
  for t in "${flaky[@]}"; do echo "  $t"; done
fi
if ((failed > 0)); then
  echo "failed:"
  for t in "${failures[@]}"; do echo "  $t"; done
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
