#!/usr/bin/env bash
# Data-path benchmark with its yardsticks, measured side by side in one run:
#   ours   bazel-bin/tests/bench/dataplane_bench (guest + worker processes,
#          each pinned to its own CPU; loopback; mmap and trap doorbells)
#   DPDK   testpmd virtio-user <-> vhost-user io forwarding (tests/bench/dpdk_vhost_yardstick.sh)
#   memcpy single-core bandwidth, in-cache and DRAM-sized working sets
# Prints ours/DPDK (Mpps) and ours/memcpy (bytes/s) ratios as min/median/max
# over REPEATS runs.  Usage: run_dataplane_bench.sh [REPEATS] [SECONDS]
# Needs: bazel build //tests/bench:dataplane_bench; dpdk-dev (tools/setup.sh --bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=${1:-3}
secs=${2:-1.5}
bazel build -c opt //tests/bench:dataplane_bench >/dev/null 2>&1 || bazel build //tests/bench:dataplane_bench
bin=bazel-bin/tests/bench/dataplane_bench
out=$(mktemp /tmp/dp-bench.XXXXXX)
trap 'rm -f "$out" "$out".dpdk' EXIT
frames="64 512 1518"

echo "== ours (persist on) and memcpy"
$bin --frames=64,512,1518 --queues=1,4 --doorbells=mmap,trap --repeats="$repeats" \
  --seconds="$secs" | tee "$out"
echo "== ours, hot-state persistence off (overhead check)"
$bin --frames=64 --queues=1 --doorbells=mmap --repeats="$repeats" --seconds="$secs" \
  --persist=false --memcpy=false --idle=false | tee -a "$out"

echo "== DPDK vhost-user <-> virtio-user (testpmd io fwd)"
: >"$out.dpdk"
for f in $frames; do
  for r in $(seq "$repeats"); do
    bash tests/bench/dpdk_vhost_yardstick.sh "$f" 3 | tee -a "$out.dpdk"
  done
done

echo "== ratios (min/median/max over $repeats runs each; ours median vs each DPDK run)"
python3 - "$out" "$out.dpdk" <<'PY'
import re, statistics, sys
ours = open(sys.argv[1]).read().splitlines()
dpdk = open(sys.argv[2]).read().splitlines()
def kv(line):
    return dict(re.findall(r'(\w+)=([\w.,/-]+)', line))
mem = {}
for l in ours:
    if l.startswith('memcpy'):
        d = kv(l); mem[d['working_set']] = float(d['median'])
dp = {}
for l in dpdk:
    d = kv(l)
    try: dp.setdefault(int(d['frame']), []).append(float(d['mpps']))
    except (KeyError, ValueError): pass
for l in ours:
    if not l.startswith('ours'): continue
    d = kv(l)
    f = int(d['frame']); med = float(d['median']); lo = float(d['min']); hi = float(d['max'])
    line = f"ratio doorbell={d['doorbell']} queues={d['queues']} frame={f} persist={d['persist']}"
    if dp.get(f):
        rs = sorted(m / x for x in dp[f] for m in (lo, med, hi) if x > 0)
        if rs:
            line += f" ours/dpdk min={rs[0]:.2f} median={statistics.median(rs):.2f} max={rs[-1]:.2f}"
    for ws, gbps in sorted(mem.items()):
        r = [m * 1e6 * f / (gbps * 1e9) for m in (lo, med, hi)]
        line += f" ours/memcpy[{ws}MiB] min={r[0]:.2f} median={r[1]:.2f} max={r[2]:.2f}"
    print(line)
p_on = [float(kv(l)['median']) for l in ours if l.startswith('ours') and 'persist=1' in l and 'doorbell=mmap' in l and 'queues=1 ' in l and 'frame=64 ' in l]
p_off = [float(kv(l)['median']) for l in ours if l.startswith('ours') and 'persist=0' in l]
if p_on and p_off:
    print(f"persistence overhead: persist/nopersist 64B mmap 1q = {p_on[0]/p_off[0]:.3f}")
PY
