#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Turns the JSON of //bench:dispatch into a picture: ns per dispatch (per
# thread) against threads, one line per engine, one panel per range count,
# for one workload (default: uniform).
#
#   bazel run //bench:dispatch -- --benchmark_out=/tmp/dispatch.json \
#       --benchmark_out_format=json
#   bazel run //tools:plot_dispatch -- /tmp/dispatch.json /tmp/dispatch.png
#
# Usage: plot_dispatch.sh IN.json OUT.png [WORKLOAD]
# Needs python3 (stdlib only) and gnuplot; installs Debian's gnuplot-nox with
# apt-get when gnuplot is missing.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: $0 IN.json OUT.png [WORKLOAD]" >&2
  exit 2
fi
# `bazel run` starts in the runfiles tree: relative paths are the user's.
if [[ -n "${BUILD_WORKING_DIRECTORY:-}" ]]; then cd "${BUILD_WORKING_DIRECTORY}"; fi
in="$1"
out="$2"
workload="${3:-uniform}"
if [[ ! -r "${in}" ]]; then
  echo "$0: cannot read ${in}" >&2
  exit 1
fi

if ! command -v gnuplot >/dev/null 2>&1; then
  echo "$0: gnuplot not found; installing gnuplot-nox" >&2
  sudo_cmd=""
  if [[ "$(id -u)" != 0 ]]; then sudo_cmd="sudo"; fi
  ${sudo_cmd} apt-get install -y gnuplot-nox >&2 || {
    ${sudo_cmd} apt-get update >&2 && ${sudo_cmd} apt-get install -y gnuplot-nox >&2
  }
fi

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

# One data file per range count: "threads engine1 engine2 ...", "-" where a
# benchmark did not run; and the gnuplot script that plots them.
python3 - "${in}" "${tmp}" "${workload}" "${out}" <<'PY'
import json, os, re, sys
src, tmp, workload, out = sys.argv[1:5]
with open(src) as f:
    data = json.load(f)
pat = re.compile(r"^BM_Dispatch/([^/]+)/([^/]+)/ranges:(\d+)(?:/[a-z_]+_time)?/threads:(\d+)$")
table = {}  # ranges -> {threads -> {engine -> ns}}
engines = []
for b in data.get("benchmarks", []):
    if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
        continue
    m = pat.match(b["name"])
    if not m or m.group(2) != workload or "ns_per_dispatch" not in b:
        continue
    engine, ranges, threads = m.group(1), int(m.group(3)), int(m.group(4))
    if engine not in engines:
        engines.append(engine)
    # Repetitions (--benchmark_repetitions) are averaged.
    table.setdefault(ranges, {}).setdefault(threads, {}).setdefault(engine, []).append(
        b["ns_per_dispatch"])
if not table:
    sys.exit("%s: no BM_Dispatch/*/%s/... results with ns_per_dispatch" % (src, workload))
for per_threads in table.values():
    for per_engine in per_threads.values():
        for e, xs in per_engine.items():
            per_engine[e] = sum(xs) / len(xs)
panels = sorted(table)
for r in panels:
    with open(os.path.join(tmp, "r%d.dat" % r), "w") as f:
        f.write("threads " + " ".join(engines) + "\n")
        for t in sorted(table[r]):
            f.write("%d %s\n" % (t, " ".join(
                "%.3f" % table[r][t][e] if e in table[r][t] else "-" for e in engines)))
cols = min(len(panels), 2)
rows = (len(panels) + cols - 1) // cols
ctx = data.get("context", {})
title = "%s: ns per dispatch (per thread) vs threads, workload %s (%s CPUs, %s)" % (
    os.path.basename(ctx.get("executable", "dispatch")), workload,
    ctx.get("num_cpus", "?"), ctx.get("date", ""))
with open(os.path.join(tmp, "plot.gp"), "w") as g:
    g.write("set terminal png size %d,%d noenhanced\n" % (600 * cols, 420 * rows + 40))
    g.write('set output "%s"\n' % out.replace('"', '\\"'))
    g.write('set datafile missing "-"\n')
    g.write('set key top left\nset grid\nset logscale x 2\nset logscale y 10\n')
    g.write('set xlabel "threads"\nset ylabel "ns per dispatch"\n')
    g.write('set multiplot layout %d,%d title "%s"\n' % (rows, cols, title.replace('"', "'")))
    for r in panels:
        g.write('set title "ranges: %d"\n' % r)
        plots = ['"%s" using 1:%d with linespoints lw 2 title "%s"' % (
            os.path.join(tmp, "r%d.dat" % r), i + 2, e) for i, e in enumerate(engines)]
        g.write("plot " + ", ".join(plots) + "\n")
    g.write("unset multiplot\n")
PY
gnuplot "${tmp}/plot.gp"
echo "wrote ${out}"
