#!/usr/bin/env bash
# Container image suite: builds the image with tools/image.sh (Debian
# packages only), runs it with podman as its non-root user with a host tmpfs
# state directory mounted, creates a loopback device with the image's own
# emuctl, and drives it from the host with the test guest (the way a VMM on
# the node would). Also: the worker killed on the host is replaced by the
# containerised emud, and SIGTERM stops the container cleanly.
#
# Runtime notes for this CI machine (and any like it):
# - crun 1.8 (Debian 12) refuses hybrid cgroup hierarchies that have a
#   controller enabled in the cgroup2 tree ("cgroups in hybrid mode not
#   supported"); runc (Debian's package) handles them, so podman runs with
#   --runtime runc.
# - The sandbox has no CAP_SYS_RESOURCE, so podman's default rlimits
#   (nofile 1048576, nproc 4194304) cannot be set ("setrlimit RLIMIT_NOFILE:
#   Operation not permitted"); explicit --ulimit values within the current
#   hard limits are used instead.
set -uo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "image: FAIL: $*"; exit 1; }

start=$(date +%s)
read -r -a bazel <<<"${BAZEL:-bazel}"
if ! "${bazel[@]}" build //tests/guest:emu-guest >/dev/null 2>&1; then fail "bazel build of the test guest"; fi
bindir=$("${bazel[@]}" info bazel-bin 2>/dev/null)
image=$(tools/image.sh) || fail "tools/image.sh failed"
size=$(podman image inspect --format '{{.Size}}' "$image") || fail "image $image not found"
echo "image: built $image, $((size / 1024 / 1024)) MiB, in $(($(date +%s) - start)) s"
# The DaemonSet runs what the script builds.
grep -q "image: ${image}\$" deploy/k8s/daemonset.yaml ||
  fail "deploy/k8s/daemonset.yaml does not reference $image"

sd=$(mktemp -d /dev/shm/emud-image.XXXXXX)
name="emud-image-test-$$"
ctr_uid=$(podman image inspect --format '{{.Config.User}}' "$image" | cut -d: -f1)
[[ "$ctr_uid" =~ ^[1-9][0-9]*$ ]] || fail "image user '$ctr_uid' is not a non-root uid"
chown "$ctr_uid:$ctr_uid" "$sd"
chmod 0755 "$sd"
cleanup() {
  podman rm -f -t 2 "$name" >/dev/null 2>&1
  rm -rf "$sd"
}
trap cleanup EXIT

nofile=$(ulimit -Hn)
[[ "$nofile" == unlimited ]] && nofile=1048576
runtime=(--runtime runc)
command -v runc >/dev/null || runtime=()
podman "${runtime[@]}" run -d --name "$name" --network none \
  --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096 \
  -v "$sd:$sd" "$image" --state-dir="$sd" --metrics-listen= >/dev/null ||
  fail "podman run"

ectl() { podman exec "$name" /usr/bin/emuctl --server "unix://$sd/emud.sock" "$@"; }
ok=0
for _ in $(seq 1 100); do
  if ectl --timeout 1 health >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
if ((ok == 0)); then
  podman logs "$name" 2>&1 | tail -20
  fail "containerised emud did not become healthy"
fi

# emud and its worker run as the image's non-root user, under emud-init.
ectl create-device --type avf --name img0 --queues 2 --backend loopback --wait >/dev/null ||
  { podman logs "$name" 2>&1 | tail -20; fail "create-device in the container"; }
users=$(podman top "$name" user comm | awk 'NR > 1 {print $1 ":" $2}' | sort -u | tr '\n' ' ')
echo "image: processes: $users"
for p in emud-init emud emud-worker; do
  grep -q ":$p " <<<"$users " || fail "$p is not running in the container ($users)"
done
if grep -q "^root:" <<<"${users// /$'\n'}"; then fail "a process runs as root: $users"; fi

sock="$sd/sockets/img0/vfio-user.sock"
[[ -S "$sock" ]] || fail "no socket at $sock on the host"
guest=("$bindir/tests/guest/emu-guest" --socket "$sock" --queues 2 --resets 1)
"${guest[@]}" >/tmp/emud-image-guest.$$ 2>&1 || { cat /tmp/emud-image-guest.$$; fail "test guest against the containerised emud"; }
tail -3 /tmp/emud-image-guest.$$
rm -f /tmp/emud-image-guest.$$

# Kill the worker from the host: the containerised emud replaces it and the
# guest drives it again.
wpid=$(ectl get img0 -o json | sed -n 's/.*"workerPid": *\([0-9]*\).*/\1/p')
hostpid=$(podman top "$name" pid hpid comm | awk -v p="$wpid" '$1 == p {print $2}')
[[ -n "$hostpid" ]] || fail "worker pid $wpid not found on the host"
kill -9 "$hostpid"
ok=0
for _ in $(seq 1 100); do
  now=$(ectl get img0 -o json | sed -n 's/.*"workerPid": *\([0-9]*\).*/\1/p')
  phase=$(ectl get img0 -o json | sed -n 's/.*"phase": *"\([A-Z_]*\)".*/\1/p')
  if [[ -n "$now" && "$now" != "$wpid" && "$phase" == PHASE_LISTENING ]]; then ok=1; break; fi
  sleep 0.1
done
((ok == 1)) || fail "worker not replaced after SIGKILL (phase $phase)"
"${guest[@]}" >/dev/null 2>&1 || fail "test guest after the worker was replaced"
ectl list

# SIGTERM (podman stop) reaches emud through emud-init; the container exits 0.
podman stop -t 20 "$name" >/dev/null || fail "podman stop"
rc=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[[ "$rc" == 0 ]] || { podman logs "$name" 2>&1 | tail -20; fail "container exit code $rc after SIGTERM"; }
echo "image: PASS ($(($(date +%s) - start)) s)"
