#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# tests/spdx_test.sh CHECKER ANCHOR: runs tools/check_spdx.sh (CHECKER) first
# on small trees it must reject and accept, then on the repository that holds
# ANCHOR (any file at its root; under Bazel, the runfile is a symlink into the
# source tree). Fails if a C++, Bazel, shell, CMake or Make source file there
# lacks its SPDX line.
set -euo pipefail

checker="$(readlink -f "$1")"
root="$(dirname "$(readlink -f "$2")")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

spdx='SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause'
mkdir -p "$tmp/tree/src" "$tmp/tree/tests/data"
printf '// %s\nint a;\n' "$spdx" >"$tmp/tree/src/good.cc"
printf 'int b;\n// %s\n' "$spdx" >"$tmp/tree/src/late.h"   # too late
printf '#!/bin/sh\n# %s\necho\n' "$spdx" >"$tmp/tree/run.sh"
printf '#!/bin/sh\necho\n' >"$tmp/tree/script"            # no extension
printf 'project(x)\n' >"$tmp/tree/CMakeLists.txt"
printf 'not source\n' >"$tmp/tree/tests/data/devices.tsv"
printf 'docs\n' >"$tmp/tree/README.md"

if out="$("$checker" "$tmp/tree" 2>&1)"; then
  echo "FAIL: the checker accepted files without SPDX lines:"; echo "$out"
  exit 1
fi
for f in src/late.h script CMakeLists.txt; do
  grep -qx "  $f" <<<"$out" || { echo "FAIL: $f not reported:"; echo "$out"; exit 1; }
done
for f in src/good.cc run.sh tests/data/devices.tsv README.md; do
  if grep -qx "  $f" <<<"$out"; then echo "FAIL: $f reported:"; echo "$out"; exit 1; fi
done
printf '// %s\nint b;\n' "$spdx" >"$tmp/tree/src/late.h"
printf '#!/bin/sh\n# %s\necho\n' "$spdx" >"$tmp/tree/script"
printf '# %s\nproject(x)\n' "$spdx" >"$tmp/tree/CMakeLists.txt"
"$checker" "$tmp/tree" >/dev/null || { echo "FAIL: fixed tree rejected"; exit 1; }
echo "ok: the checker rejects and accepts the fixture trees"

"$checker" "$root"
