#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# tools/bench_stack_sweep.py: does a cell depend on where the stack lands?
#
#   tools/bench_stack_sweep.py BIN STEP ROUNDS FILTER
#
# Runs BIN (a //bench:dispatch binary) with address-space randomization off
# (setarch -R) and the environment padded by 0, STEP, 2*STEP, ... < 4096
# bytes, which shifts the stack by that much; ROUNDS rounds, each padding in a
# seeded random order, --benchmark_repetitions=3 per process. Prints each
# cell's min over repetitions per padding and round. Run from the repository
# root.
import subprocess, sys, re, collections, random, os, statistics
b, step, rounds, filt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pads = list(range(0, 4096, step))
res = collections.defaultdict(lambda: collections.defaultdict(list))
pat = re.compile(r"^(BM_\S+)\s.*ns_per_dispatch=([0-9.]+)")
for r in range(rounds):
    order = pads[:] ; random.Random(r).shuffle(order)
    for pad in order:
        env = {"PATH": os.environ["PATH"], "PAD": "x" * pad}
        out = subprocess.run(["setarch", "-R", b, f"--benchmark_filter={filt}", "--benchmark_repetitions=3"],
                             capture_output=True, text=True, env=env).stdout
        cur = collections.defaultdict(list)
        for line in out.splitlines():
            m = pat.match(line)
            if m: cur[m[1]].append(float(m[2]))
        for c, v in cur.items(): res[c][pad].append(min(v))
for c, per in res.items():
    print(c)
    for pad in pads:
        print(f"  pad {pad:5d}: " + " ".join(f"{x:6.1f}" for x in per[pad]))
