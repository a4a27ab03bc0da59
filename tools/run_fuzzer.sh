#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds the IoManager libFuzzer target with clang (libFuzzer + ASan + UBSan)
# straight from the sources and runs it on the seed corpus for a bounded time.
#
#   tools/run_fuzzer.sh [seconds=60] [extra libFuzzer flags...]
#
# Exits non-zero on a crash, a sanitizer report, a leak, a model divergence
# (the target aborts), or if libFuzzer turned its per-input leak detection
# off. Prints the total number of operations checked against the model. New inputs go to a scratch corpus, not tests/fuzz/corpus;
# crash reproducers are left in the scratch directory, whose path is printed.
# Run it longer with e.g. `tools/run_fuzzer.sh 3600 -jobs=2 -workers=2`.
set -euo pipefail

seconds="${1:-60}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/vm_device_fuzz.XXXXXX")"
cxx="${CXX_FUZZ:-clang++}"

# The Abseil libraries: the list in third_party/BUILD.bazel (//third_party:abseil).
absl_libs=$(sed -n '/name = "abseil"/,/^)/p' "$root/third_party/BUILD.bazel" |
            grep -o '"-l[^"]*"' | tr -d '"' | tr '\n' ' ')

echo "building the fuzzer in $work"
"$cxx" -std=c++20 -O2 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I "$root/include" -I "$root" \
  "$root"/src/*.cc "$root"/src/internal/*.cc \
  "$root/tests/fuzz/io_manager_fuzzer.cc" \
  -o "$work/io_manager_fuzzer" -lurcu-memb $absl_libs -lpthread

mkdir -p "$work/corpus"

cd "$work"
echo "fuzzing for ${seconds} s"
# Throughput (about twice the libFuzzer defaults, measured in README.md,
# "Fuzzing"): -entropic=0 drops the entropic schedule's per-input feature
# bookkeeping, the largest single cost of a run of this target; a 16 MiB
# quarantine (instead of 256 MiB) and 8-frame allocation stacks cut ASan's
# allocator work and page faults; allocations are not pre-filled. Flags given
# after the seconds come later on the command line and override these.
# Leak detection stays on for the whole run: every input ends with everything
# it allocated freed (see the target), and the run fails if libFuzzer ever
# turns per-input leak detection off.
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:quarantine_size_mb=16:malloc_context_size=8:max_malloc_fill_size=0}" \
  ./io_manager_fuzzer -max_total_time="$seconds" -print_final_stats=1 \
  -max_len=512 -entropic=0 "$@" corpus "$root/tests/fuzz/corpus" 2>&1 |
  tee "$work/fuzz.log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
  echo "fuzzer failed (exit $status); reproducers and log in $work" >&2
  exit "$status"
fi
if grep -q "disabled leak detection" "$work/fuzz.log"; then
  echo "FAIL: libFuzzer turned per-input leak detection off" >&2
  exit 1
fi
echo "total: $(grep -h '^io_manager_fuzzer: ' "$work/fuzz.log" |
  awk '{i += $2; o += $4} END {print i " inputs, " o " operations checked against the model"}')"
echo "fuzzer finished without crash, divergence or leak (work dir: $work)"
