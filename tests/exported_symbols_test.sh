#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# tests/exported_symbols_test.sh LIBVM_DEVICE_SO: the shared library exports
# the public API and nothing else (CMake builds it with -fvisibility=hidden;
# include/vm_device/export.h marks what is exported). Reads `nm -D`:
#
#   * every strong symbol it defines is in namespace vm_device, and no
#     exported name is in an internal namespace (vm_device::internal,
#     vm_device::*_internal) or is the range table;
#   * weak symbols (vague linkage: template instantiations, typeinfo of std
#     types, which libstdc++ declares with default visibility) are std::,
#     absl:: or vm_device:: public names;
#   * the public entry points a user calls are all there;
#   * fewer than 200 symbols in all (a library built without hidden
#     visibility exports thousands).
#
# To show the rules bite, it then checks the same list with an internal
# symbol added and expects that to fail.
set -euo pipefail

lib="$1"
listing="$(nm -D --defined-only -C "$lib")"

check() {
  python3 -c '
import re, sys
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
bad = []
names = []
# Internal state that inline code in the application and the library itself
# must share, so it is exported on purpose (device_lock.h: the per-thread
# record of held device locks, read by IoManager::Synchronize()).
SHARED_STATE = {"vm_device::device_lock_internal::tls_held_locks"}
def head(name):
    # The qualified name without template arguments and parameter list.
    out, depth = "", 0
    for ch in name.split("(")[0] if not name.startswith("operator") else name:
        if ch == "<": depth += 1
        elif ch == ">": depth -= 1
        elif depth == 0: out += ch
    return out
for l in lines:
    parts = l.split(None, 2)
    if len(parts) == 3:
        _, kind, name = parts
    else:
        kind, name = parts[0], parts[1]
    names.append(name)
    h = head(name)
    if h in SHARED_STATE:
        pass  # internal, but shared by the application and the library
    elif re.search(r"(^|::| )internal::|_internal::|RangeTable", h):
        bad.append("internal symbol exported: " + name)
    elif kind in "TDBRGSi":
        if not re.match(r"^((typeinfo|typeinfo name|vtable|VTT) for )?vm_device::", name):
            bad.append("strong symbol outside namespace vm_device: %s %s" % (kind, name))
    elif kind in "WVu":
        if not re.search(r"(^| )(std|absl|vm_device)::", h):
            bad.append("weak symbol outside std/absl/vm_device: %s %s" % (kind, name))
    else:
        bad.append("unexpected symbol kind %s: %s" % (kind, name))
required = [
    "vm_device::IoManager::IoManager()",
    "vm_device::IoManager::~IoManager()",
    "vm_device::IoManager::PioRead(", "vm_device::IoManager::PioWrite(",
    "vm_device::IoManager::MmioRead(", "vm_device::IoManager::MmioWrite(",
    "vm_device::IoManager::RegisterPio(", "vm_device::IoManager::RegisterMmio(",
    "vm_device::IoManager::DeregisterPio(", "vm_device::IoManager::Commit(",
    "vm_device::IoManager::Synchronize()",
    "vm_device::IoBatch::AddPio(",
    "vm_device::VcpuThread::VcpuThread()",
    "vm_device::VersionString()",
    "vm_device::NewPioConstraint(",
    "vm_device::DeviceResources::GetPioAddressRanges()",
]
for r in required:
    if not any(n.startswith(r) for n in names):
        bad.append("public symbol missing: " + r)
if len(lines) >= 200:
    bad.append("%d exported symbols: is the library still built with hidden visibility?" % len(lines))
if bad:
    print("FAIL:\n  " + "\n  ".join(bad))
    sys.exit(1)
print("ok: %d exported symbols, all public API" % len(lines))
'
}

echo "$listing" | check
if printf '%s\n%s\n' "$listing" \
    "0000000000001000 T vm_device::internal::RegisterSlow()" | check >/dev/null; then
  echo "FAIL: an exported vm_device::internal symbol was not caught"
  exit 1
fi
if printf '%s\n%s\n' "$listing" "0000000000001000 T absl::Mutex::Lock()" | check >/dev/null; then
  echo "FAIL: an exported strong absl symbol was not caught"
  exit 1
fi
echo "ok: the rules reject an exported internal or foreign strong symbol"
