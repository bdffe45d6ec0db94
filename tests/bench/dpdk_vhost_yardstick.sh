#!/usr/bin/env bash
# DPDK yardstick: testpmd virtio-user <-> testpmd vhost-user, io forwarding,
# each testpmd on its own CPU (main + forwarding lcore share that CPU), no
# hugepages. The virtio-user side injects 32 bursts (--tx-first) that then
# circulate; its per-second Rx-pps samples (after 2 s of warm-up) are reported.
# Usage: dpdk_vhost_yardstick.sh FRAME_BYTES [SECONDS]
# Prints: "dpdk_vhost frame=N mpps=MEDIAN samples=a,b,c" (NA without dpdk-testpmd).
set -uo pipefail
frame=${1:-64}
secs=${2:-4}
vcpu=${VHOST_CPU:-0}
ucpu=${VIRTIO_CPU:-1}
if ! command -v dpdk-testpmd >/dev/null; then
  echo "dpdk_vhost frame=$frame mpps=NA (dpdk-testpmd missing: tools/setup.sh --bench)"
  exit 0
fi
tmp=$(mktemp -d /dev/shm/dpdk-yard.XXXXXX)
sock=$tmp/vhost.sock
vpid=""; upid=""
cleanup() {
  for p in $upid $vpid; do kill -INT "$p" 2>/dev/null; done
  sleep 0.5
  for p in $upid $vpid; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [[ -n "${KEEP_LOGS:-}" ]] || rm -rf "$tmp"
}
trap cleanup EXIT
# Non-interactive testpmd exits when stdin ends: give both a FIFO kept open.
mkfifo "$tmp/stdin"
exec 7<>"$tmp/stdin"
len=$((frame - 4))  # testpmd counts frames without the 4-byte CRC
stdbuf -oL dpdk-testpmd --lcores "0@$vcpu,1@$vcpu" --no-huge -m 1024 --no-pci --file-prefix vh$$ \
  --vdev "net_vhost0,iface=$sock,queues=1" -- --forward-mode=io --txd=1024 --rxd=1024 \
  --auto-start <&7 >"$tmp/vhost.log" 2>&1 &
vpid=$!
for _ in $(seq 150); do [[ -S $sock ]] && break; sleep 0.2; done
stdbuf -oL dpdk-testpmd --lcores "0@$ucpu,1@$ucpu" --no-huge -m 1024 --no-pci --single-file-segments \
  --file-prefix vu$$ --vdev "net_virtio_user0,path=$sock,queues=1" -- --forward-mode=io \
  --txd=1024 --rxd=1024 --txpkts=$len --tx-first --auto-start --stats-period 1 \
  <&7 >"$tmp/virtio.log" 2>&1 &
upid=$!
for _ in $(seq 150); do grep -q "Rx-pps" "$tmp/virtio.log" 2>/dev/null && break; sleep 0.2; done
sleep $((secs + 2))
samples=$(grep "Rx-pps" "$tmp/virtio.log" | awk '{print $2}' | tail -n +3 | head -n "$secs")
if [[ -z "$samples" ]]; then
  echo "dpdk_vhost frame=$frame mpps=NA (no samples; see testpmd logs)"
  exit 0
fi
median=$(echo "$samples" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]/1e6}')
echo "dpdk_vhost frame=$frame mpps=$median samples=$(echo "$samples" | awk '{printf "%s%.3f", (NR>1?",":""), $1/1e6}')"
