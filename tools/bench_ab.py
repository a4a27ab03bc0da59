#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# tools/bench_ab.py: A/B of //bench:dispatch binaries in interleaved fresh
# processes (A B, B A, A B, ...), for causal experiments on a noisy machine.
#
#   tools/bench_ab.py N FILTER BIN_A [BIN_B ...] [-- extra flags]
#
# Runs each binary N times with --benchmark_filter=FILTER; per process, each
# cell's value is the min over --benchmark_repetitions (REPS in the
# environment, default 5). Prints per cell and binary min / median / max over
# the processes, and rcu / unsynchronized within each process. Run from the
# repository root (the trace workload reads tests/data/). To compare two
# revisions, build each and copy bazel-bin/bench/dispatch aside; prefix with
# `taskset -c CPU` to pin.
import subprocess, sys, re, collections, statistics, os
args = sys.argv[1:]
extra = []
if "--" in args:
    i = args.index("--"); extra = args[i+1:]; args = args[:i]
n, filt, bins = int(args[0]), args[1], args[2:]
reps = int(os.environ.get("REPS", "5"))
res = collections.defaultdict(lambda: collections.defaultdict(list))
ratios = collections.defaultdict(list)
pat = re.compile(r"^(BM_\S+?)(?:/repeats:\d+)?(?:_mean|_median|_stddev|_cv)?\s.*ns_per_dispatch=([0-9.]+)(k?)")
for it in range(n):
    order = bins if it % 2 == 0 else bins[::-1]
    for b in order:
        out = subprocess.run([b, f"--benchmark_filter={filt}", f"--benchmark_repetitions={reps}",
                              "--benchmark_report_aggregates_only=false", "--benchmark_display_aggregates_only=false"] + extra,
                             capture_output=True, text=True).stdout
        cur = collections.defaultdict(list)
        for line in out.splitlines():
            if any(s in line.split()[0] for s in ("_mean", "_median", "_stddev", "_cv")) if line.startswith("BM_") else True:
                continue
            m = pat.match(line)
            if m:
                cur[m[1]].append(float(m[2]) * (1000 if m[3] else 1))
        for c, v in cur.items():
            res[c][b].append(min(v))
        for c in cur:
            if "/rcu/" in c:
                u = c.replace("/rcu/", "/unsynchronized/")
                if u in cur:
                    ratios[(c, b)].append(min(cur[c]) / min(cur[u]))
def show(v):
    v = sorted(v)
    return f"min {v[0]:7.1f} med {statistics.median(v):7.1f} max {v[-1]:7.1f} max/min {v[-1]/v[0]:5.2f}  [{' '.join(f'{x:.0f}' for x in v)}]"
for cell, per in res.items():
    print(cell)
    for b in bins:
        if per[b]: print(f"  {os.path.basename(b):12s} {show(per[b])}")
print("rcu/unsynchronized within a process (min over reps each):")
for (c, b), v in ratios.items():
    v = sorted(v)
    print(f"  {c:50s} {os.path.basename(b):10s} min {v[0]:.2f} med {statistics.median(v):.2f} max {v[-1]:.2f}; <=1.2 in {sum(x<=1.2 for x in v)}/{len(v)}  [{' '.join(f'{x:.2f}' for x in v)}]")
