#!/usr/bin/env bash
# Issue 7 benchmark: end-to-end throughput (test guest -> vfio-user ->
# emud-worker -> loopback -> guest) with the worker's crash-consistent state
# writes as implemented (--persist-session=true, the default) versus switched
# off (--persist-session=false, a switch only benchmarks use), alternated
# within each repeat on the same machine; prints persisted/unpersisted ratios.
#
#   tests/bench/persistence_bench.sh [REPEATS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=${1:-3}
secs=${2:-1.5}
bazel build //tests/bench:worker_bench //dataplane:emud-worker >/dev/null 2>&1
bin=$(bazel info bazel-bin 2>/dev/null)
out=$(mktemp /tmp/persist-bench.XXXXXX)
trap 'rm -f "$out"' EXIT
for r in $(seq "$repeats"); do
  for p in true false; do
    "$bin"/tests/bench/worker_bench --worker="$bin"/dataplane/emud-worker --frames=64,1518 \
      --queues=1 --doorbells=trap,mmap --repeats=1 --seconds="$secs" --idle=false \
      --persist_session="$p" 2>/dev/null | grep '^e2e' | sed "s/^/rep=$r /" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r'(\w+)=([^\s]+)', l)) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by[(r['rep'], r['doorbell'], r['frame'], r['persist'])] = float(r['median'])
keys = sorted({(d, f) for (_, d, f, _) in by})
for d, f in keys:
    ratios = [by[(rep, d, f, 'true')] / by[(rep, d, f, 'false')]
              for rep in sorted({k[0] for k in by})
              if (rep, d, f, 'true') in by and (rep, d, f, 'false') in by and by[(rep, d, f, 'false')] > 0]
    if ratios:
        on = [v for (rep, dd, ff, p), v in by.items() if (dd, ff, p) == (d, f, 'true')]
        off = [v for (rep, dd, ff, p), v in by.items() if (dd, ff, p) == (d, f, 'false')]
        # Pairs swing with the VM's scheduling; the ratio of the two medians
        # is the steadier figure, the per-pair spread says how noisy it was.
        print(f"persistence on/off doorbell={d} frame={f}: "
              f"median on {statistics.median(on):.2f} Mpps / off {statistics.median(off):.2f} Mpps = "
              f"{statistics.median(on) / statistics.median(off):.3f}; per-pair ratio min={min(ratios):.3f} "
              f"median={statistics.median(ratios):.3f} max={max(ratios):.3f} ({len(ratios)} repeats)")
PY
