#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# tools/bundle_bench.sh: copies the optimized //bench:dispatch and every
# shared library it loads into one folder, so the benchmark runs on a machine
# that has neither Bazel nor Abseil, Benchmark or liburcu installed (the
# 16-CPU machine whose figures README gives).
#
#   tools/bundle_bench.sh DIR
#   # there, from a checkout of the same revision (the trace data):
#   BENCH_SPREAD_BIN=DIR/run-dispatch tools/bench_spread.sh 10
#
# DIR/run-dispatch starts DIR/dispatch with DIR/lib first on the library
# path. If the machine's own loader cannot run it (a glibc older than this
# one's), it starts it through the bundled loader and C library instead.
set -euo pipefail
out="${1:?usage: tools/bundle_bench.sh DIR}"
cd "$(dirname "$0")/.."
tools/bazel build //bench:dispatch >&2
bin="$(tools/bazel info bazel-bin 2>/dev/null)/bench/dispatch"
rm -rf "$out"
mkdir -p "$out/lib"
cp "$bin" "$out/dispatch"
ldd "$bin" | awk '/=> \// {print $3} /^\t\/lib64\// {print $1}' |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done
cat > "$out/run-dispatch" <<'SH'
#!/usr/bin/env bash
# Runs the bundled dispatch benchmark (made by tools/bundle_bench.sh).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The machine's loader and C library, the bundle's C++ and other libraries.
sys="${TMPDIR:-/tmp}/vm_device-bench-lib.$(id -u)"
rm -rf "$sys" && mkdir -p "$sys"
for f in "$here"/lib/*; do
  case "$(basename "$f")" in
    libc.so.*|libm.so.*|ld-linux*) ;;
    *) ln -s "$f" "$sys/" ;;
  esac
done
if LD_LIBRARY_PATH="$sys" "$here/dispatch" --benchmark_list_tests >/dev/null 2>&1; then
  exec env LD_LIBRARY_PATH="$sys" "$here/dispatch" "$@"
fi
exec "$here/lib/ld-linux-x86-64.so.2" --library-path "$here/lib" "$here/dispatch" "$@"
SH
chmod +x "$out/run-dispatch"
du -sh "$out" >&2
