#!/usr/bin/env bash
# Fuzz smoke run of the vfio-user decoder and session (clang libFuzzer + ASan/UBSan).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec tests/fuzz/vfio_user_fuzz.sh "${FUZZ_SECONDS:-25}"
