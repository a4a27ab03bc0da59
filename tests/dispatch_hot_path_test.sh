#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Checks the machine code of IoManager's four dispatch functions for what the
# wait-free read path must not contain (src/internal/range_table.h, "Progress"):
#
#   * no atomic read-modify-write: no `lock`-prefixed instruction, no xchg,
#     no cmpxchg, no xadd;
#   * no allocation, no lock, no reference count: every direct call goes to an
#     allowed symbol. Allowed: the device's own handler (an indirect call),
#     the thread's one-time RCU registration (RegisterSlow), and
#     liburcu's futex wake-up of a writer sleeping in synchronize_rcu
#     (syscall, __errno_location, compat_futex_async: a system call that
#     waits for nothing), and _Unwind_Resume (a handler threw: the read side
#     is left while the exception passes through).
#   * no C++ TLS wrapper around liburcu's reader record: no reference to the
#     weak "TLS init function for urcu_memb_reader" (src/internal/rcu.h
#     redeclares the record constinit; the wrapper's tests of that symbol were
#     about 1.3 ns of the read side).
#   (`xchg %ax,%ax` is a two-byte no-op: only an xchg with memory is atomic.)
#
# Tagged ranges (access info, access rules, doorbells) leave the dispatch
# functions through one out-of-line call, internal::DispatchTagged<>, whose
# bodies are held to the same rules plus two more allowed calls: the write(2)
# of a doorbell's eventfd and CurrentVcpuId() (a thread-local load).
#
# Reads the optimized static library (Bazel's libio_manager.a, CMake's
# libvm_device.a) or CMake's shared, -fPIC libvm_device.so, where it also
# refuses what position-independent code can add to the path: a call to
# __tls_get_addr (a general-dynamic TLS access to liburcu's reader record;
# the CMake build compiles the shared library with -ftls-model=initial-exec
# so there is none) and PLT calls to anything not allowed above. Skipped
# (passes, saying so) in sanitizer
# builds, where the code is instrumented and liburcu's read side is not inlined.
set -euo pipefail

if [[ -n "${VM_DEVICE_SANITIZER:-}" ]]; then
  echo "skipped: ${VM_DEVICE_SANITIZER} build (instrumented code)"
  exit 0
fi
lib=""
for f in "$@"; do
  case "$f" in *libio_manager.a | *libvm_device.a | *libvm_device.so*) lib="$f" ;; esac
done
if [[ -z "$lib" ]]; then
  echo "FAIL: libio_manager.a, libvm_device.a or libvm_device.so not among the arguments: $*" >&2
  exit 1
fi

objdump -dr -C --no-show-raw-insn "$lib" | LIB="$lib" python3 -c '
import os, re, sys
text = sys.stdin.read()
allowed = ("vm_device::internal::RegisterSlow()",
           "syscall", "__errno_location", "compat_futex_async",
           "_Unwind_Resume",
           # Built with --define=vm_device_urcu_inline=false: the library
           # exported read side: the same wait-free code, behind a call.
           "urcu_memb_read_lock", "urcu_memb_read_unlock",
           # In the shared library, the inline unlock of liburcu, emitted once
           # out of line for the exception path (the same wait-free code).
           "_urcu_memb_read_unlock")
funcs = {}
name = None
for line in text.splitlines():
    m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
    if m:
        name = m.group(1)
        funcs[name] = []
    elif line.strip() == "":
        name = None
    elif name is not None:
        funcs[name].append(line)
wanted = [n for n in funcs
          if re.match(r"vm_device::IoManager::(Pio|Mmio)(Read|Write)\(", n)]
bodies = [n for n in wanted if "[clone" not in n]
if len(bodies) != 4:
    sys.exit("FAIL: expected the 4 dispatch functions, found %r" % wanted)
tagged_prefix = "vm_device::IoStatus vm_device::internal::DispatchTagged<"
tagged = [n for n in funcs if n.startswith(tagged_prefix)]
if len([n for n in tagged if "[clone" not in n]) != 4:
    sys.exit("FAIL: expected 4 out-of-line tagged dispatch functions, found %r"
             % tagged)
bad = []
for n in wanted + tagged:
    lines = funcs[n]
    ok_calls = allowed + (tagged_prefix,)
    if n in tagged:
        ok_calls = allowed + ("write", "vm_device::CurrentVcpuId()")
    for i, l in enumerate(lines):
        ins = l.split("\t")[-1] if "\t" in l else l
        if "TLS init function for urcu_memb_reader" in l or "_ZTH16urcu_memb_reader" in l:
            bad.append("%s: C++ TLS wrapper around the liburcu reader record "
                       "(src/internal/rcu.h must redeclare it constinit): %s"
                       % (n, l.strip()))
            continue
        if (re.search(r"\block\b|\bcmpxchg|\bxadd", ins) or
                (re.search(r"\bxchg", ins) and "(" in ins)):
            bad.append("%s: atomic read-modify-write: %s" % (n, l.strip()))
        if re.search(r"\bcall\b", ins) and "*" not in ins:
            target = None
            for r in lines[i + 1:i + 3]:
                m = re.search(r"R_X86_64_\w+\s+(.*?)(-0x[0-9a-f]+|\+0x[0-9a-f]+)?$", r.strip())
                if m and "R_X86_64" in r:
                    target = m.group(1)
                    break
            if target is None:
                # Linked code, or a local function of the same section: no
                # relocation; the target is named in <...>.
                m = re.search(r"<(.*?)(@plt)?(\+0x[0-9a-f]+)?>$", ins)
                if m:
                    target = m.group(1)
                    if target.startswith(tuple(wanted)) or target in funcs and "[clone" in target:
                        target = ".text"  # a jump into its own cold part
            if target is not None and target.startswith("__tls_get_addr"):
                bad.append("%s: general-dynamic TLS access (__tls_get_addr): "
                           "build with -ftls-model=initial-exec: %s" % (n, l.strip()))
                continue
            if target is None:
                bad.append("%s: call without relocation: %s" % (n, l.strip()))
            elif not target.startswith(ok_calls) and not target.startswith(".text"):
                bad.append("%s: call to %s" % (n, target))
calls = sum(1 for n in bodies for l in funcs[n] if "call   *" in l)
if calls != 4:
    bad.append("expected one indirect (device handler) call per function, found %d" % calls)
if bad:
    sys.exit("FAIL:\n  " + "\n  ".join(bad))
print("ok: %s: %d functions (%d with cold parts) and %d tagged-range "
      "functions: no atomic RMW, only allowed calls" %
      (os.path.basename(os.environ["LIB"]), len(bodies), len(wanted),
       len(tagged)))
'
