#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# tools/vcpu_speed.sh: are this machine's CPUs equally fast right now?
#
#   tools/vcpu_speed.sh [N] [FILTER]
#     N       fresh processes per CPU (default 5), CPUs interleaved
#     FILTER  benchmark filter (default: the 1-range, 1-thread uniform cells
#             of rcu and unsynchronized, whose work is a few L1 hits, so a
#             difference between CPUs is the CPU, not the table)
#
# Runs //bench:dispatch pinned (taskset) to each online CPU in turn and
# prints, per CPU and cell, min / median / max of ns_per_dispatch. On the
# 2-vCPU dev VM one vCPU was 1.2-1.45x slower than the other for every cell
# (and which one changed within minutes), so an unpinned 1-thread cell reads
# one of two values depending on where the scheduler put the process: the
# per-process bimodality issue 9 chased (README.md, "Steady dispatch"). Run
# it before tools/bench_spread.sh; if the CPUs differ, pin the 1-thread
# cells with BENCH_SPREAD_CPU (see tools/bench_spread.sh).
set -euo pipefail

runs="${1:-5}"
filter="${2:-BM_Dispatch/(rcu|unsynchronized)/uniform/ranges:1/.*threads:1\$}"
cd "$(dirname "$0")/.."
tools/bazel build //bench:dispatch >&2
bin="$(tools/bazel info bazel-bin 2>/dev/null)/bench/dispatch"
cpus=$(python3 -c 'import os; print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))')
out="$(mktemp -d /tmp/vcpu_speed.XXXXXX)"
for ((i = 1; i <= runs; i++)); do
  for c in $cpus; do
    taskset -c "$c" "$bin" --benchmark_filter="$filter" > "$out/cpu$c.run$i.txt" 2>&1
  done
done
python3 - "$out" "$runs" $cpus <<'PY'
import re, statistics, sys, collections
d, runs, cpus = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
vals = collections.defaultdict(list)
for c in cpus:
    for i in range(1, runs + 1):
        for line in open(f"{d}/cpu{c}.run{i}.txt"):
            m = re.match(r"^(BM_\S+)\s.*ns_per_dispatch=([0-9.]+)", line)
            if m:
                vals[(m[1], c)].append(float(m[2]))
cells = sorted({k[0] for k in vals})
print(f"ns_per_dispatch over {runs} fresh processes per CPU (min / median / max)")
for cell in cells:
    print(cell)
    meds = {}
    for c in cpus:
        v = sorted(vals[(cell, c)])
        if not v:
            continue
        meds[c] = statistics.median(v)
        print(f"  cpu {c:>3}: {v[0]:7.1f} / {meds[c]:7.1f} / {v[-1]:7.1f}")
    if len(meds) > 1:
        print(f"  slowest / fastest median: {max(meds.values()) / min(meds.values()):.2f}")
PY
