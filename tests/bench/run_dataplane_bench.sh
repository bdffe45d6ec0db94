#!/usr/bin/env bash
# Data-path benchmark with its yardsticks, measured side by side in one run.
# Each repeat runs, back to back (so they share the machine's conditions):
#   e2e     tests/bench:worker_bench - test guest over vfio-user + emud-worker
#           process, loopback, each pinned to its own CPU, mmap and trap doorbells;
#           also its interrupt-driven (NAPI-style) guest against the polling one
#   engine  tests/bench:dataplane_bench - the same guest loop and the worker's
#           queue engines in two processes without the vfio-user session
#           (also persistence on vs off)
#   DPDK    testpmd virtio-user <-> vhost-user io forwarding (dpdk_vhost_yardstick.sh)
#   memcpy  single-core bandwidth, in-cache (2 MiB) and DRAM-sized (1 GiB), and
#           the copy of a 1518-B frame between buffers laid out as 1024- and
#           512-entry rings lay them out (the floor of the e2e 1518-B figure);
#           every repeat, so that each repeat's ratio uses its own
#   rr      worker_bench --rr: request/response round trips at light load (one
#           frame, 1 ms and 10 ms pauses), mmap against trap doorbells
#   threads worker_bench at 4 queues, mmap doorbells, --datapath-threads 1 and 2
#           interleaved, guest and worker unpinned (sharing the same cores)
# Ratios are formed per repeat (ours_r / DPDK_r) and reported min/median/max.
# Usage: [FRAMES=64,512,1518] [QUEUES=1,4] run_dataplane_bench.sh [REPEATS] [SECONDS]
# Needs dpdk-testpmd (tools/setup.sh --bench) for the DPDK column.
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=${1:-3}
secs=${2:-1.5}
frames=${FRAMES:-64,512,1518}
queues=${QUEUES:-1,4}
bazel build //tests/bench:dataplane_bench //tests/bench:worker_bench //dataplane:emud-worker >/dev/null
# The bazel-bin symlink follows whatever config ran last; ask for this one's.
bin=$(bazel info bazel-bin 2>/dev/null)
out=$(mktemp /tmp/dp-bench.XXXXXX)
trap 'rm -f "$out"' EXIT
for r in $(seq "$repeats"); do
  echo "== repeat $r/$repeats" >&2
  "$bin"/tests/bench/worker_bench --worker="$bin"/dataplane/emud-worker \
    --frames="$frames" --queues="$queues" --doorbells=mmap,trap --repeats=1 --seconds="$secs" --napi=false \
    --idle=$([[ $r == 1 ]] && echo true || echo false) 2>/dev/null | sed "s/^/rep=$r /" | tee -a "$out"
  # The worker's crash-consistent session persistence (issue 7) switched off:
  # the persistence overhead, side by side.
  "$bin"/tests/bench/worker_bench --worker="$bin"/dataplane/emud-worker --frames=64,1518 \
    --queues=1 --doorbells=mmap,trap --repeats=1 --seconds="$secs" --idle=false \
    --persist_session=false --napi=false 2>/dev/null | sed "s/^/rep=$r /" | tee -a "$out"
  # Data-path threads: 2 against 1 at 4 queues, guest and worker on the same
  # (all) cores, side by side.
  "$bin"/tests/bench/worker_bench --worker="$bin"/dataplane/emud-worker --frames=64,1518 \
    --queues=4 --doorbells=mmap --repeats=1 --seconds="$secs" --idle=false \
    --datapath_threads=1,2 --guest_cpu=-1 --worker_cpu=-1 --napi=false 2>/dev/null | sed "s/^/rep=$r /" | tee -a "$out"
  # Interrupt-driven guest (NAPI style: sleep on MSI-X, poll, re-arm with a
  # trapped DYN_CTLN1 write) against the polling one, interleaved, defaults.
  "$bin"/tests/bench/worker_bench --worker="$bin"/dataplane/emud-worker --frames=64,1518 \
    --queues=1 --doorbells=trap --repeats=1 --seconds="$secs" --idle=false --napi=true 2>/dev/null \
    | grep -E '^(e2e_napi|interrupt-driven)' | sed "s/^/rep=$r /" | tee -a "$out"
  # 512-descriptor rings (Linux iavf's default): half the buffer working set,
  # which then fits one core's L2 - the 1518-B copy's cost depends on it.
  "$bin"/tests/bench/worker_bench --worker="$bin"/dataplane/emud-worker --frames=1518 \
    --queues=1 --doorbells=mmap,trap --repeats=1 --seconds="$secs" --idle=false --ring=512 --napi=false \
    2>/dev/null | sed "s/^/rep=$r /" | tee -a "$out"
  "$bin"/tests/bench/dataplane_bench --frames=64,1518 --queues=1 --doorbells=mmap,trap \
    --repeats=1 --seconds="$secs" --idle=false --memcpy=true \
    | sed "s/^/rep=$r /" | tee -a "$out"
  "$bin"/tests/bench/dataplane_bench --frames=64 --queues=1 --doorbells=mmap --repeats=1 \
    --seconds="$secs" --persist=false --idle=false --memcpy=false | sed "s/^/rep=$r /" | tee -a "$out"
  # Light-load latency (issue 16 item 4): mapped against trapped doorbells.
  "$bin"/tests/bench/worker_bench --worker="$bin"/dataplane/emud-worker --rr \
    --rr_gaps_us=${RR_GAPS_US:-1000,10000} --rr_round_trips=${RR_ROUND_TRIPS:-300} \
    --doorbells=mmap,trap --idle=$([[ $r == 1 ]] && echo true || echo false) 2>/dev/null |
    sed "s/^/rep=$r /" | tee -a "$out"
  for f in ${frames//,/ }; do
    bash tests/bench/dpdk_vhost_yardstick.sh "$f" 3 | sed "s/^/rep=$r /" | tee -a "$out"
  done
done
echo "== summary (min/median/max over $repeats repeats; ratios formed within each repeat)"
python3 - "$out" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r'(\w+)=([^\s]+)', l)) | {'kind': l.split()[1]}
        for l in open(sys.argv[1]) if l.startswith('rep=')]
def mmm(v):
    v = sorted(v); return f"min={v[0]:.2f} median={statistics.median(v):.2f} max={v[-1]:.2f}"
# memcpy is measured in every repeat: its in-cache figure moves from day to
# day on a VM (16-28 GB/s seen), so each repeat's ratio uses its own.
mem_rep = {}  # (rep, working set) -> GB/s
ring_copy = {}  # (kind, bufs) -> [ns per frame per repeat]
for r in rows:
    if r['kind'] == 'memcpy': mem_rep[(r['rep'], r['working_set'])] = float(r['median'])
    if r['kind'] in ('memcpy_frames', 'memcpy_frames_nt'):
        ring_copy.setdefault((r['kind'], r['bufs']), []).append(float(r['median']))
mem = {ws: statistics.median([g for (_, w), g in mem_rep.items() if w == ws])
       for ws in sorted({w for _, w in mem_rep})}
def copy_ns(kind, bufs):
    v = ring_copy.get((kind, bufs)); return statistics.median(v) if v else None
dpdk = {}
for r in rows:
    if r['kind'] == 'dpdk_vhost':
        try: dpdk[(r['rep'], int(r['frame']))] = float(r['mpps'])
        except ValueError: pass
for ws, g in sorted(mem.items()): print(f"memcpy[{ws}] {g:.2f} GB/s")
for f in (64, 512, 1518):
    v = [m for (rep, fr), m in dpdk.items() if fr == f]
    if v: print(f"dpdk_vhost frame={f} Mpps {mmm(v)}")
groups = {}
threads = {}
for r in rows:
    if r['kind'] == 'e2e' and r.get('ring', '1024') != '1024': r['kind'] = 'e2e_ring' + r['ring']
    if r['kind'] == 'e2e' and 'threads' in r:
        threads.setdefault((r['rep'], int(r['frame'])), {})[int(r['threads'])] = float(r['median'])
for r in rows:
    if r['kind'] not in ('e2e', 'ours') or 'threads' in r: continue
    p = r.get('persist', '1')
    p = {'default': '1', 'true': '1', 'false': '0'}.get(p, p)
    key = (r['kind'], r['doorbell'], int(r['queues']), int(r['frame']), p)
    groups.setdefault(key, []).append((r['rep'], float(r['median'])))
for key, vals in sorted(groups.items()):
    kind, db, q, f, persist = key
    name = 'e2e   ' if kind == 'e2e' else 'engine'
    line = f"{name} doorbell={db} queues={q} frame={f}" + ("" if persist == '1' else " persist=off")
    line += f" Mpps {mmm([m for _, m in vals])}"
    ratios = [m / dpdk[(rep, f)] for rep, m in vals if dpdk.get((rep, f), 0) > 0]
    if ratios: line += f" | ours/dpdk {mmm(ratios)}"
    for ws, g in sorted(mem.items()):
        line += f" | ours/memcpy[{ws}] {mmm([m * 1e6 * f / (g * 1e9) for _, m in vals])}"
    print(line)
for kind, db, f in (('ours', 'mmap', 64), ('e2e', 'mmap', 64), ('e2e', 'trap', 64),
                    ('e2e', 'mmap', 1518), ('e2e', 'trap', 1518)):
    on = dict(groups.get((kind, db, 1, f, '1'), []))
    off = dict(groups.get((kind, db, 1, f, '0'), []))
    pr = [on[k] / off[k] for k in on if k in off and off[k] > 0]
    name = 'engine hot-state file' if kind == 'ours' else 'worker session persistence'
    if pr: print(f"persistence on/off ({name}, {db}, {f} B, 1 queue) {mmm(pr)}")
for f in (64, 1518):
    tr = [t[2] / t[1] for (rep, fr), t in threads.items() if fr == f and t.get(1, 0) > 0 and 2 in t]
    if tr: print(f"data-path threads 2 vs 1 (mmap, 4 queues, {f} B, guest and worker unpinned on the same cores) {mmm(tr)}")
napi, rearm = {}, {}
for r in rows:
    if r['kind'] == 'interrupt-driven':
        napi.setdefault((r['doorbell'], int(r['frame'])), []).append(float(r['median']))
    if r['kind'] == 'e2e_napi':
        rearm.setdefault((r['doorbell'], int(r['frame'])), []).append(float(r['rearms_per_s_median']))
for (db, f), v in sorted(napi.items()):
    line = f"interrupt-driven vs polling ({db}, {f} B, 1 queue) {mmm(v)}"
    if rearm.get((db, f)): line += f" | DYN_CTLN re-arms/s {mmm(rearm[(db, f)])}"
    print(line)
for r in rows:
    if r['kind'] in ('e2e_idle',): print(f"idle worker CPU doorbell={r['doorbell']}: {r['worker_cpu_percent']}% of a core")
rr = {}
for r in rows:
    if r['kind'] == 'rr' and int(r.get('lost', '0')) == 0:
        rr.setdefault((r['doorbell'], int(r['gap_us'])), []).append(
            (r['rep'], float(r['p50_us']), float(r['p99_us']), float(r['worker_cpu_percent'])))
for (db, gap), v in sorted(rr.items()):
    print(f"rr doorbell={db} gap={gap}us rtt p50 us {mmm([x[1] for x in v])} | p99 us "
          f"{mmm([x[2] for x in v])} | worker CPU % {mmm([x[3] for x in v])}")
for gap in sorted({g for _, g in rr}):
    m = {x[0]: x for x in rr.get(('mmap', gap), [])}
    t = {x[0]: x for x in rr.get(('trap', gap), [])}
    reps = [k for k in m if k in t]
    if reps:
        print(f"mmap/trap rtt ratio gap={gap}us p50 {mmm([m[k][1] / t[k][1] for k in reps])} | "
              f"p99 {mmm([m[k][2] / t[k][2] for k in reps])}")
for r in rows:
    if r['kind'] == 'rr_idle':
        print(f"idle worker CPU after request/response doorbell={r['doorbell']}: {r['worker_cpu_percent']}% of a core")
# The issue-16 targets, e2e (test guest + emud-worker), 1 queue pair.
print("== targets (e2e, 1 queue; ratios formed per repeat, min/median/max)")
incache = mem.get('2MiB')
for db in ('mmap', 'trap'):
    vals = groups.get(('e2e', db, 1, 64, '1'), [])
    r = [m / dpdk[(rep, 64)] for rep, m in vals if dpdk.get((rep, 64), 0) > 0]
    print(f"64 B vs DPDK vhost-user, {db} doorbells: " + (mmm(r) if r else "NA") + " (target >= 1.5)")
# 1518 B against in-cache memcpy, per repeat (that repeat's memcpy). The
# target is set at 512-descriptor rings, the ring a guest gets by default
# (Linux iavf IAVF_DEFAULT_RXD/TXD, DPDK ethdev's fallback ring size); at the
# DPDK yardstick's 1024 the copy between buffers laid out as the rings lay
# them out alone takes about the whole budget (it no longer fits L2).
for ring, kind, target in (('512', 'e2e_ring512', True), ('1024', 'e2e', False)):
    for db in ('mmap', 'trap'):
        if kind == 'e2e':
            vals = groups.get(('e2e', db, 1, 1518, '1'), [])
        else:
            vals = [(r['rep'], float(r['median'])) for r in rows
                    if r['kind'] == kind and r['doorbell'] == db and r['frame'] == '1518']
        r = [m * 1e6 * 1518 / (mem_rep[(rep, '2MiB')] * 1e9) for rep, m in vals
             if (rep, '2MiB') in mem_rep]
        if not r:
            print(f"1518 B vs in-cache memcpy, {db} doorbells, {ring}-descriptor rings: NA")
            continue
        ns = statistics.median([1e3 / m for _, m in vals])
        line = (f"1518 B vs in-cache memcpy, {db} doorbells, {ring}-descriptor rings: {mmm(r)}"
                + (" (target >= 0.5)" if target else "") + f"; {ns:.0f} ns/frame")
        c, cnt = copy_ns('memcpy_frames', ring), copy_ns('memcpy_frames_nt', ring)
        if c: line += f", of which the copy between ring-laid-out buffers alone is {c:.0f} ns"
        if cnt: line += f" ({cnt:.0f} ns with non-temporal stores)"
        if incache: line += f"; 0.5x needs <= {1518 / (0.5 * incache):.0f} ns/frame"
        print(line)
PY
