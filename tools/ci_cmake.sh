#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# tools/ci_cmake.sh: the CMake half of CI (.ci/run runs it). In temporary
# directories (the checkout is left as it was):
#
#   1. configure and build with CMake (tests on), run ctest, one line per
#      test; the "large" stress and soak tests are left to `bazel test`
#      unless VM_DEVICE_CTEST_ALL=1;
#   2. `cmake --install` into a temporary prefix and check the version that
#      version.h, vm_deviceConfigVersion.cmake and vm_device.pc carry;
#   3. build and run the consumers of tests/consumers/ against that prefix:
#      cmake (find_package; shared, then VM_DEVICE_USE_STATIC_LIBS=ON),
#      make (pkg-config; shared, then STATIC=1), bazel (a separate workspace,
#      @vm_device through local_repository).
#
# Prints "=== cmake: NAME: passed" or "=== cmake: NAME: FAILED" per check
# (.ci/run counts them) and exits non-zero if any failed. Installs, once and
# only when missing, the Debian packages it needs (as tools/bazel does).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

packages=(cmake make ninja-build pkg-config g++ libabsl-dev libgtest-dev
          libgmock-dev libbenchmark-dev liburcu-dev zlib1g-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
    || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "tools/ci_cmake.sh: installing ${missing[*]}" >&2
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q >&2
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
build="$work/build"
prefix="$work/prefix"
jobs="${VM_DEVICE_CI_JOBS:-2}"
failed=0

result() {  # result NAME RC
  if [[ $2 -eq 0 ]]; then
    echo "=== cmake: $1: passed"
  else
    echo "=== cmake: $1: FAILED (exit $2)"
    failed=$((failed + 1))
  fi
}

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

# 1. Build and ctest.
cmake -S . -B "$build" "${generator[@]}" -DVM_DEVICE_BUILD_TESTS=ON \
  && cmake --build "$build" -j "$jobs"
rc=$?
result build $rc
if [[ $rc -ne 0 ]]; then exit 1; fi
label=(-LE large)
[[ "${VM_DEVICE_CTEST_ALL:-0}" == 1 ]] && label=()
ctest --test-dir "$build" "${label[@]}" --output-on-failure -j "$jobs" \
  >"$work/ctest.log" 2>&1
cat "$work/ctest.log"
while read -r name status; do
  [[ "$status" == Passed ]] && result "ctest $name" 0 || result "ctest $name" 1
done < <(sed -nE 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([A-Za-z0-9_]+) [.*]+ *(Passed|\*\*\*Failed|\*\*\*Timeout|Failed|Timeout|Not Run).*/\1 \2/p' "$work/ctest.log")

# 2. Install; the version in each place.
cmake --install "$build" --prefix "$prefix" >"$work/install.log"
rc=$?
result install $rc
[[ $rc -eq 0 ]] || { cat "$work/install.log"; exit 1; }
for f in include/vm_device/vm_device.h include/vm_device/version.h \
         include/vm_device/internal/range_search.h lib/libvm_device.a \
         lib/libvm_device.so lib/cmake/vm_device/vm_deviceConfig.cmake \
         lib/cmake/vm_device/vm_deviceConfigVersion.cmake \
         lib/pkgconfig/vm_device.pc; do
  [[ -e "$prefix/$f" ]] || { echo "missing from the install: $f"; rc=1; }
done
if find "$prefix" -path '*src/internal*' | grep -q .; then
  echo "src/internal was installed"; rc=1
fi
result "install layout" $rc

header_version="$(sed -nE 's/^#define VM_DEVICE_VERSION_(MAJOR|MINOR|PATCH) ([0-9]+)$/\2/p' \
  include/vm_device/version.h | paste -sd.)"
pc_version="$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --modversion vm_device)"
cmake_version="$(sed -nE 's/^set\(PACKAGE_VERSION "([^"]*)"\)$/\1/p' \
  "$prefix/lib/cmake/vm_device/vm_deviceConfigVersion.cmake")"
so_version="$(readlink "$prefix/lib/libvm_device.so" | sed -E 's/^libvm_device\.so\.//')"
echo "version: version.h $header_version, pkg-config $pc_version," \
  "CMake package $cmake_version, soname link $so_version"
[[ -n "$header_version" && "$pc_version" == "$header_version" &&
   "$cmake_version" == "$header_version" ]]
result "version agreement" $?

# 3. Consumers.
c="$root/tests/consumers"
for mode in shared static; do
  static=OFF; [[ $mode == static ]] && static=ON
  (cmake -S "$c/cmake" -B "$work/consumer-cmake-$mode" "${generator[@]}" \
      -DCMAKE_PREFIX_PATH="$prefix" -DVM_DEVICE_USE_STATIC_LIBS=$static \
    && cmake --build "$work/consumer-cmake-$mode" \
    && "$work/consumer-cmake-$mode/consumer")
  result "consumer cmake ($mode)" $?
done

for mode in shared static; do
  static=""; [[ $mode == static ]] && static=1
  rm -rf "$work/consumer-make" && cp -r "$c/make" "$work/consumer-make" \
    && cp "$c/consumer_main.cc" "$work/" \
    && make -C "$work/consumer-make" PKG_CONFIG_PATH="$prefix/lib/pkgconfig" \
         STATIC="$static" run
  result "consumer make ($mode)" $?
done

# The Bazel consumer: a workspace of its own, in batch mode (no server left
# behind), sharing the main workspace's user.bazelrc (disk cache) if any.
[[ -f user.bazelrc ]] && cp user.bazelrc "$c/bazel/user.bazelrc"
(cd "$c/bazel" && "$root/tools/bazel" --batch test //:consumer_test)
result "consumer bazel" $?

echo "=== cmake: $failed failed"
[[ $failed -eq 0 ]]
