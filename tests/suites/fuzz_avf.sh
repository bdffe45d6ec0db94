#!/usr/bin/env bash
# Fuzz smoke run of the AVF device model (clang libFuzzer + ASan/UBSan).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec tests/fuzz/avf_fuzz.sh "${FUZZ_SECONDS:-15}"
