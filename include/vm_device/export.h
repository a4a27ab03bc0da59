// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: export.h
// -----------------------------------------------------------------------------
//
// VM_DEVICE_EXPORT marks what the shared library exports. The CMake build
// compiles the library with -fvisibility=hidden and
// -fvisibility-inlines-hidden, so only declarations marked here (the public
// API of include/vm_device/, never vm_device::internal) are in its dynamic
// symbol table; tests/exported_symbols_test.sh checks that list with nm.
//
// On GCC and Clang it is visibility("default"), also in static builds and in
// the Bazel build (where nothing is hidden and it changes nothing). Define
// VM_DEVICE_NO_EXPORT_ATTRIBUTE to make it empty, e.g. when linking the static
// library into a shared object that must not re-export vm_device's symbols.
//
// Thread safety: macros only.

#ifndef VM_DEVICE_EXPORT_H_
#define VM_DEVICE_EXPORT_H_

#if defined(VM_DEVICE_NO_EXPORT_ATTRIBUTE)
#define VM_DEVICE_EXPORT
#elif defined(__GNUC__) || defined(__clang__)
#define VM_DEVICE_EXPORT __attribute__((visibility("default")))
#else
#define VM_DEVICE_EXPORT
#endif

#endif  // VM_DEVICE_EXPORT_H_
