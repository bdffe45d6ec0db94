#!/usr/bin/env bash
# Real-VMM suite: QEMU (TCG) vfio-user-pci + a Debian guest's stock iavf.ko
# against emud (tests/vmm/README.md). Builds the harness (cached under
# $EMUD_VMM_CACHE, default /var/cache/emud-vmm), then runs tests/vmm/run.sh.
# A harness that cannot be built is a failure, never a pass.
set -uo pipefail
cd "$(dirname "$0")/../.."

if ! bazel build //server:emud //server:emud-init //dataplane:emud-worker //ctl:emuctl; then
  echo "vmm: bazel build failed"
  exit 1
fi

hlog=$(mktemp)
tests/vmm/build_harness.sh 2>&1 | tee "$hlog"
rc=${PIPESTATUS[0]}
if [[ $rc -eq 2 ]]; then
  pkg=$(sed -n 's/^harness unavailable: //p' "$hlog" | tail -1)
  echo "vmm: HARNESS UNAVAILABLE: ${pkg:-unknown}"
  rm -f "$hlog"
  exit 1
elif [[ $rc -ne 0 ]]; then
  echo "vmm: harness build failed (exit $rc)"
  rm -f "$hlog"
  exit 1
fi
rm -f "$hlog"

# Link-up, traffic and the chaos scenarios (worker kills, an emud kill and an
# upgrade under traffic) on emud's defaults, then guest-initiated VF resets
# (MTU 9000 and back with jumbo pings and TCP, driver unbind + bind) while the
# guest keeps transmitting, with 1 and 2 queue pairs in both doorbell modes;
# 4 queue pairs with several TCP flows at once spread over them; a Linux VLAN
# sub-interface over iavf (tagged traffic passes, untagged and other-ID frames
# do not leak in) and DPDK's testpmd (flex RXDID, RSS over 4 queues, ptype,
# VLAN filter and strip, VXLAN checksum offload), in both doorbell modes.
exec tests/vmm/run.sh trap-1qp mmap-2qp mmap-1qp trap-2qp chaos-trap-1qp chaos-mmap-2qp \
  reset-trap-1qp reset-mmap-2qp reset-trap-2qp flows-mmap-4qp \
  vlan-trap-1qp vlan-mmap-2qp dpdk-trap-4qp dpdk-mmap-4qp
