#!/usr/bin/env bash
# Runs one Bazel test under --config=asan or --config=tsan (the configs'
# --run_under): the test and every process it starts (emud, emud-worker,
# emud-keeper, emuctl, the test guest, ...) inherit the sanitizer options set
# here, and each writes its reports to a file of its own in a directory of
# this test. The test fails if any process wrote one, even one whose exit the
# test never looks at (a worker that emud restarts, a child killed on
# purpose): a sanitizer report anywhere is a failure.
#
# Suppressions: tsan.supp and lsan.supp beside this script, for Debian's
# uninstrumented shared libraries only (each entry says why).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
supp_dir="$here"
# Under Bazel the script runs from its runfiles; the files are its data.
for d in "${RUNFILES_DIR:-}/emud/tools/sanitizers" "$0.runfiles/emud/tools/sanitizers"; do
  if [[ -f "$d/tsan.supp" ]]; then supp_dir=$(cd "$d" && pwd); break; fi
done
for f in tsan.supp lsan.supp; do
  if [[ ! -f "$supp_dir/$f" ]]; then
    echo "run_checked: $supp_dir/$f not found" >&2
    exit 1
  fi
done

reports="${TEST_TMPDIR:-$(mktemp -d)}/sanitizer-reports"
rm -rf "$reports"
mkdir -p "$reports"
# Children that drop to other uids (socket owners, the device plugin's
# client as uid 107) must be able to write theirs too.
chmod 1777 "$reports"

# Appended, so the config's --test_env values stay (halt_on_error,
# abort_on_error, detect_leaks); exitcode keeps a report distinguishable.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$reports/asan"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}log_path=$reports/ubsan"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$supp_dir/lsan.supp:print_suppressions=0"
export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS:}log_path=$reports/tsan:suppressions=$supp_dir/tsan.supp:print_suppressions=0"

"$@"
rc=$?

shopt -s nullglob
# LeakSanitizer's tracer prints "Unable to get registers from thread N." when
# a thread of the process being checked at exit is itself exiting (a worker's
# thread ending as the process does); it then scans that thread's whole
# stack, and a leak it finds is still an "ERROR: LeakSanitizer" report. A
# file holding only such notices is not a report: shown, not counted.
found=()
for f in "$reports"/*; do
  if grep -qvE '^(==[0-9]+==Unable to get registers from thread [0-9]+\.)?$' "$f"; then
    found+=("$f")
  else
    echo "run_checked: LeakSanitizer notice, not a report (${f##*/}): $(tr '\n' ' ' <"$f")" >&2
  fi
done
if ((${#found[@]} > 0)); then
  echo "=== sanitizer reports (${#found[@]} processes) ===" >&2
  for f in "${found[@]}"; do
    echo "--- ${f##*/}" >&2
    cat "$f" >&2
  done
  if [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]]; then
    cp "${found[@]}" "$TEST_UNDECLARED_OUTPUTS_DIR/" 2>/dev/null
  fi
  ((rc == 0)) && rc=1
fi
exit "$rc"
