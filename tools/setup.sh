#!/usr/bin/env bash
# Installs exactly the Debian 12 packages emud's build, tests and run need.
# Idempotent: a no-op (no apt-get at all) when every package is present.
#   tools/setup.sh          build + test + run dependencies
#   tools/setup.sh --bench  also the benchmark yardsticks (DPDK testpmd)
set -euo pipefail

packages=(
  # build
  bazel-bootstrap bazel-rules-java bazel-rules-proto
  g++ pkg-config
  libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  liblmdb-dev prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libyaml-cpp-dev
  # fuzzing: libFuzzer from Debian's clang 19 (tests/fuzz/lib.sh says why 19)
  clang-19 libclang-rt-19-dev
  # tests: network namespaces, TAP, process inspection
  iproute2 procps util-linux lmdb-utils curl
  # container image (tools/image.sh, tests/suites/image.sh): a bookworm rootfs
  # from Debian packages, podman to import and run it (runc: crun 1.8 refuses
  # hybrid cgroup hierarchies)
  mmdebstrap podman runc
  # Kubernetes manifests validated against the API's types (deploy/k8s)
  python3-kubernetes
  # promtool: emud's metrics scrape linted (tests/integration:operability_test)
  prometheus
)
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(dpdk-dev)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
