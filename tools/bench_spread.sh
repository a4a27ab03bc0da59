#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# tools/bench_spread.sh: runs //bench:dispatch N times, each in a fresh
# process, and prints per-cell spreads and the targets of issues 7 and 9 per
# run.
#
#   tools/bench_spread.sh [N] [-- FLAGS...]
#     N      runs (default 10)
#     FLAGS  passed to every run, e.g. -- --benchmark_filter='rcu|unsync'
#
# Prints:
#   * every cell (benchmark name) with its min, max and max/min of
#     ns_per_dispatch (us_per_change for BM_Publish) over the runs, worst
#     spread first, and how many cells exceed max/min 1.3;
#   * every target, computed within each run (ratios of cells of that run),
#     with its min and max over the runs and in how many runs it held.
# The JSON of each run stays in the directory printed at the start
# (BENCH_SPREAD_DIR to choose it).
#
# BENCH_SPREAD_CPU=<cpu list> runs every process under `taskset -c <list>`.
# On a VM whose CPUs are not equally fast (tools/vcpu_speed.sh), an unpinned
# 1-thread cell reads the speed of whichever CPU the scheduler picked, so
# ratios of two cells of one run can compare two CPUs. Pin to one CPU only
# with a 1-thread filter: pinned to one CPU, a threads:2 cell time-slices.
#   BENCH_SPREAD_CPU=1 tools/bench_spread.sh 10 -- \
#     --benchmark_filter='BM_Dispatch/(rcu|unsynchronized)/.*threads:1$'
#
# BENCH_SPREAD_BIN=<path> runs that binary instead of building
# //bench:dispatch (a machine without Bazel; run from the repository root so
# the trace data resolves). BENCH_SPREAD_DEADLINE=<s> starts no run that would
# end past that many seconds from the start, judged by the last run's length
# (at least one run is made); the spreads and
# targets then cover the runs made. BENCH_SPREAD_AFTER_RUN=<command> is run
# after each run (e.g. to save the JSON so far).
#
# BENCH_SPREAD_REUSE=1 with BENCH_SPREAD_DIR=<dir> runs nothing: it analyses
# the run<i>.json already in <dir> (e.g. runs made on another machine), N
# being how many there are.
set -euo pipefail

runs=10
if [[ $# -gt 0 && "$1" != "--" ]]; then runs="$1"; shift; fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
cd "$(dirname "$0")/.."

if [[ -n "${BENCH_SPREAD_REUSE:-}" ]]; then
  dir="${BENCH_SPREAD_DIR:?BENCH_SPREAD_REUSE needs BENCH_SPREAD_DIR}"
  runs=0
  while [[ -f "$dir/run$((runs + 1)).json" ]]; do runs=$((runs + 1)); done
  [[ $runs -gt 0 ]] || { echo "no run1.json in $dir" >&2; exit 2; }
  echo "bench_spread: analysing $runs runs in $dir" >&2
elif [[ -n "${BENCH_SPREAD_BIN:-}" ]]; then
  bin="$BENCH_SPREAD_BIN"
else
  tools/bazel build //bench:dispatch >&2
  bin="$(tools/bazel info bazel-bin 2>/dev/null)/bench/dispatch"
fi
if [[ -z "${BENCH_SPREAD_REUSE:-}" ]]; then
  dir="${BENCH_SPREAD_DIR:-$(mktemp -d /tmp/bench_spread.XXXXXX)}"
  mkdir -p "$dir"
  pin=()
  [[ -n "${BENCH_SPREAD_CPU:-}" ]] && pin=(taskset -c "$BENCH_SPREAD_CPU")
  echo "bench_spread: $runs runs of $bin${pin:+ under ${pin[*]}}, JSON in $dir" >&2
  t0=$(date +%s)
  made=0
  last=0
  for ((i = 1; i <= runs; i++)); do
    start=$(date +%s)
    if [[ $i -gt 1 && -n "${BENCH_SPREAD_DEADLINE:-}" &&
          $((start - t0 + last)) -gt "$BENCH_SPREAD_DEADLINE" ]]; then
      echo "  deadline of ${BENCH_SPREAD_DEADLINE} s reached after $made runs" >&2
      break
    fi
    # From the workspace root, as `bazel run` would, so the trace data resolves.
    "${pin[@]}" "$bin" --benchmark_out="$dir/run$i.json" \
      --benchmark_out_format=json "$@" > "$dir/run$i.txt" 2>&1
    made=$i
    echo "  run $i/$runs: $(($(date +%s) - start)) s" >&2
    last=$(($(date +%s) - start))
    if [[ -n "${BENCH_SPREAD_AFTER_RUN:-}" ]]; then
      bash -c "$BENCH_SPREAD_AFTER_RUN"
    fi
  done
  runs=$made
fi

python3 - "$dir" "$runs" <<'PY'
import json, re, sys, collections

d, runs = sys.argv[1], int(sys.argv[2])
pat = re.compile(r"^BM_Dispatch/([^/]+)/([^/]+)/ranges:(\d+)(?:/iterations:\d+)?"
                 r"(?:/real_time)?/threads:(\d+)$")
per_run = []   # [{(engine, workload, ranges, threads): ns}, ...]
cells = collections.defaultdict(list)
publish = []   # [{ranges: (mean_us, p50_us)}]
shares = []    # [{(engine, workload, ranges, threads): cpu_share}, ...]
for i in range(1, runs + 1):
    with open(f"{d}/run{i}.json") as f:
        data = json.load(f)
    r, p, sh = {}, {}, {}
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration" or b.get("error_occurred"):
            continue
        name = b["name"]
        m = pat.match(name)
        if m and "ns_per_dispatch" in b:
            key = (m[1], m[2], int(m[3]), int(m[4]))
            r[key] = b["ns_per_dispatch"]
            cells[name].append(b["ns_per_dispatch"])
            if "cpu_share" in b:
                sh[key] = b["cpu_share"]
        m = re.match(r"^BM_Sharded/(one_lock|sharded)/(shards:4|same_shard)"
                     r"(?:/real_time)?/threads:(\d+)$", name)
        if m and "ns_per_dispatch" in b:
            r[("BM_Sharded", m[1], m[2], int(m[3]))] = b["ns_per_dispatch"]
            cells[name].append(b["ns_per_dispatch"])
        m = re.match(r"^BM_Publish/rcu/ranges:(\d+)", name)
        if m and "us_per_change" in b:
            p[int(m[1])] = (b["us_per_change"], b.get("p50_us", -1))
            cells[name].append(b["us_per_change"])
    per_run.append(r)
    publish.append(p)
    shares.append(sh)

print(f"\nPer-cell spread over {runs} runs (ns_per_dispatch; BM_Publish: us per change)")
rows = []
for name, v in cells.items():
    if len(v) and min(v) > 0:
        rows.append((max(v) / min(v), name, min(v), max(v), len(v)))
rows.sort(reverse=True)
for s, name, lo, hi, n in rows:
    print(f"  {s:5.2f}  min {lo:10.1f}  max {hi:10.1f}  ({n} runs)  {name}")
bad = sum(1 for s, *_ in rows if s > 1.3)
print(f"cells with max/min > 1.3: {bad} of {len(rows)} (target: 0)")

def target(label, values, ok):
    vals = [v for v in values if v is not None]
    if not vals:
        print(f"  {label}: not run")
        return
    if ok is None:  # informative, no target
        print(f"  {label}: min {min(vals):.2f} max {max(vals):.2f}")
        return
    held = sum(1 for v in vals if ok(v))
    print(f"  {label}: min {min(vals):.2f} max {max(vals):.2f}; held in "
          f"{held} of {len(vals)} runs")

def ratio(r, a, b):
    return r[a] / r[b] if a in r and b in r and r[b] > 0 else None

print(f"\nTargets, each a ratio within one run (min/max over {runs} runs)")
counts = sorted({k[2] for r in per_run for k in r if k[1] == "uniform"})
for w in ("uniform", "cold"):
    for t in (1, 2):
        worst = []
        for r in per_run:
            v = [ratio(r, ("rcu", w, n, t), ("unsynchronized", w, n, t))
                 for n in counts]
            v = [x for x in v if x is not None]
            worst.append(max(v) if v else None)
        target(f"{w:7s} rcu / unsynchronized, worst range count, threads:{t}"
               " (<= 1.2)", worst, lambda x: x <= 1.2)
    for big, limit in ((4096, 1.5), (65536, 2.0)):
        for t in (1, 2):
            target(f"{w:7s} rcu {big} / 16 ranges, threads:{t} (<= {limit})",
                   [ratio(r, ("rcu", w, big, t), ("rcu", w, 16, t))
                    for r in per_run], lambda x, l=limit: x <= l)
        # The same ratio with no search at all (bench/engines.h,
        # DirectIndexEngine): if it is above the limit, no lookup can meet it.
        for t in (1, 2):
            target(f"{w:7s}   floor, no search: direct_index {big} / rcu 16,"
                   f" threads:{t}",
                   [ratio(r, ("direct_index", w, big, t), ("rcu", w, 16, t))
                    for r in per_run], None)
for e in ("rcu", "unsynchronized"):
    vals = []
    for r in per_run:
        on = [k for k in r if k[0] == e and k[1] == "trace"]
        if on:
            k = on[0]
            vals.append(ratio(r, (e, "trace_nohints", k[2], k[3]), k))
    target(f"trace {e}: hints off / on (>= 1.3)", vals, lambda x: x >= 1.3)
def per_cpu_second(r, sh, a, b):
    """ratio(r, a, b) with each side's time-sharing taken out (cpu_share)."""
    x = ratio(r, a, b)
    if x is None or a not in sh or b not in sh or sh[b] <= 0:
        return None
    return x * sh[a] / sh[b]

for n in (16, 4096):
    for t in (1, 2):
        a, b = ("rcu", "churn", n, t), ("rcu", "uniform", n, t)
        target(f"churn flat out / uniform, rcu ranges:{n} threads:{t} (<= 1.5)",
               [ratio(r, a, b) for r in per_run], lambda x: x <= 1.5)
        target(f"  the same per CPU-second (readers' time-sharing with the "
               f"writer taken out)",
               [per_cpu_second(r, sh, a, b) for r, sh in zip(per_run, shares)],
               None)
        target(f"  readers' share of wall time on a CPU, churn",
               [sh.get(a) for sh in shares], None)
target("publish one change into 4096 ranges, mean us (<= 20)",
       [p[4096][0] if 4096 in p else None for p in publish], lambda x: x <= 20)
target("publish one change into 4096 ranges, median us (<= 20)",
       [p[4096][1] if 4096 in p else None for p in publish], lambda x: x <= 20)
print(f"\nIssue 7 (Mut devices), each a ratio within one run")
own = sorted({(k[2], k[3]) for r in per_run for k in r
              if k[0] == "rcu_locked" and k[1] == "own_device"})
worst = []
for r in per_run:
    v = [ratio(r, ("rcu_locked", "own_device", n, t), ("rcu", "own_device", n, t))
         for n, t in own]
    v = [x for x in v if x is not None]
    worst.append(max(v) if v else None)
target("own_device rcu_locked / rcu, worst cell (<= 1.5)", worst,
       lambda x: x <= 1.5)
for n in sorted({n for n, _ in own}):
    target(f"own_device rcu_locked 2 threads / 1 thread, ranges:{n} (<= 1.2)",
           [ratio(r, ("rcu_locked", "own_device", n, 2),
                  ("rcu_locked", "own_device", n, 1)) for r in per_run],
           lambda x: x <= 1.2)
target("sharded shards:4, 2 threads / 1 thread (<= 1.2)",
       [ratio(r, ("BM_Sharded", "sharded", "shards:4", 2),
              ("BM_Sharded", "sharded", "shards:4", 1)) for r in per_run],
       lambda x: x <= 1.2)
print("  informative: the lock-free baseline on the same workload (a 2-thread"
      " / 1-thread\n  ratio above 1 here is the machine, not the lock):")
for n in sorted({n for n, _ in own}):
    target(f"  own_device rcu 2 threads / 1 thread, ranges:{n}",
           [ratio(r, ("rcu", "own_device", n, 2), ("rcu", "own_device", n, 1))
            for r in per_run], None)
print("  informative (devices shared between threads, not a target):")
for n in (256, 4096):
    target(f"  uniform rcu_locked 2 threads / 1 thread, ranges:{n}",
           [ratio(r, ("rcu_locked", "uniform", n, 2),
                  ("rcu_locked", "uniform", n, 1)) for r in per_run],
           None)
vals = []
for r in per_run:
    on = [k for k in r if k[0] == "rcu_locked" and k[1] == "trace"]
    vals.append(ratio(r, on[0], ("rcu", "trace", on[0][2], on[0][3]))
                if on else None)
target("  trace rcu_locked / rcu", vals, None)
print()
for n in (4096, 65536):
    target(f"rcu edge / uniform, ranges:{n} threads:1 (about 1: placement "
           "does not matter)",
           [ratio(r, ("rcu", "edge", n, 1), ("rcu", "uniform", n, 1))
            for r in per_run], lambda x: x <= 1.3)

def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2

print(f"\nMedian over {runs} runs, ns per dispatch per thread (median of the "
      "within-run ratio to\nunsynchronized; for own_device rcu_locked, to rcu)")
for w, base in (("uniform", "unsynchronized"), ("own_device", "rcu")):
    keys = {k for r in per_run for k in r if k[0] != "BM_Sharded" and k[1] == w}
    threads = sorted({k[3] for k in keys})
    for n in sorted({k[2] for k in keys}):
        print(f"{w} ranges:{n:<6d}" + "".join(f"{'threads:' + str(t):>17s}"
                                              for t in threads))
        order = ["direct_index", "unsynchronized", "rcu", "rwlock_map",
                 "mutex_map", "rcu_locked"]
        for e in [e for e in order if any(k[0] == e and k[2] == n for k in keys)]:
            row = f"  {e:<20s}"
            for t in threads:
                k = (e, w, n, t)
                v = [r[k] for r in per_run if k in r]
                q = [ratio(r, k, (base, w, n, t)) for r in per_run]
                q = [x for x in q if x is not None]
                row += (f"{median(v):8.1f} ({median(q):5.2f}x)" if v and q
                        else f"{median(v):8.1f}         " if v else " " * 17)
            print(row)
PY
