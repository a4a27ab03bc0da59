#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# tools/check_spdx.sh [ROOT]: checks that every C++, Bazel, shell, CMake and
# Make source file under ROOT (default: the repository this script is in)
# starts with an SPDX licence line:
#
#   // SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause     (C, C++)
#   # SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause      (the others)
#
# on its first line, or on its second line when the first is a `#!` line.
# Files are those git tracks plus untracked ones git does not ignore (so a
# file another branch adds is caught before it is committed); outside a git
# checkout, every file found under ROOT except bazel-*/ and build*/ trees.
# Test data, corpora, images and documentation are not source files.
#
# Prints each offending file and exits 1 if there is any; exits 0 and prints
# the count checked otherwise.
set -euo pipefail

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$root"

list_files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files --cached --others --exclude-standard
  else
    find . \( -name 'bazel-*' -o -name 'build*' -o -name .git \) -prune \
      -o -type f -print | sed 's|^\./||'
  fi
}

# Whether a path is a source file this check covers.
is_source() {
  local path="$1" base
  base="$(basename "$path")"
  case "$path" in
    tests/data/* | */corpus/* | bench/results/*) return 1 ;;
  esac
  case "$base" in
    *.cc | *.h | *.c | *.cpp | *.hpp | *.inc) return 0 ;;
    *.bzl | *.bazel | BUILD | WORKSPACE | .bazelrc) return 0 ;;
    *.sh | CMakeLists.txt | *.cmake | *.cmake.in | *.pc.in) return 0 ;;
    Makefile | *.mk) return 0 ;;
  esac
  # Scripts without an extension (tools/bazel, .ci/run): a #! first line.
  [[ -f "$path" ]] && head -c 2 "$path" 2>/dev/null | grep -q '^#!'
}

checked=0
bad=()
while IFS= read -r f; do
  [[ -f "$f" ]] || continue  # deleted in the work tree
  is_source "$f" || continue
  checked=$((checked + 1))
  first="$(sed -n 1p "$f")"
  line="$first"
  if [[ "$first" == '#!'* ]]; then line="$(sed -n 2p "$f")"; fi
  if ! [[ "$line" =~ ^(//|#)\ SPDX-License-Identifier:\ [A-Za-z0-9] ]]; then
    bad+=("$f")
  fi
done < <(list_files)

if ((${#bad[@]})); then
  echo "FAIL: ${#bad[@]} of ${checked} source files lack an SPDX line" \
    "(first line, or second after #!):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  echo "add: '// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause' (C++)" \
    "or '# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause'" >&2
  exit 1
fi
echo "ok: ${checked} source files carry an SPDX line"
