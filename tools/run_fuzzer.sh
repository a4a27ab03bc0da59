#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds the IoManager libFuzzer target with clang (libFuzzer + ASan + UBSan)
# straight from the sources and runs it on the seed corpus for a bounded time.
#
#   tools/run_fuzzer.sh [seconds=60] [extra libFuzzer flags...]
#
# Exits non-zero on a crash, a sanitizer report or a model divergence (the
# target aborts). New inputs go to a scratch corpus, not tests/fuzz/corpus;
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
"$cxx" -std=c++20 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I "$root/include" -I "$root" \
  "$root"/src/*.cc "$root"/src/internal/*.cc \
  "$root/tests/fuzz/io_manager_fuzzer.cc" \
  -o "$work/io_manager_fuzzer" -lurcu-memb $absl_libs -lpthread

mkdir -p "$work/corpus"

cd "$work"
echo "fuzzing for ${seconds} s"
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" \
  ./io_manager_fuzzer -max_total_time="$seconds" -print_final_stats=1 \
  -max_len=512 "$@" corpus "$root/tests/fuzz/corpus"
echo "fuzzer finished without crash or divergence (work dir: $work)"
