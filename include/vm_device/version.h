// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: version.h
// -----------------------------------------------------------------------------
//
// The library's version: the one place it is written down. CMake reads the
// three VM_DEVICE_VERSION_* numbers below (CMakeLists.txt, project()) and
// writes them into the installed vm_deviceConfigVersion.cmake and
// vm_device.pc; the Bazel build compiles this header into the library, whose
// vm_device::VersionString() returns it. To release, change the numbers here
// and add a CHANGELOG.md entry; nothing else names the version.
//
// Versioning: semantic (https://semver.org). Before 1.0.0 a minor release may
// change the stable API (README.md, "Use it from your build", says what that
// is); a patch release does not.
//
// Thread safety: constants and a pure function; callable from any thread.

#ifndef VM_DEVICE_VERSION_H_
#define VM_DEVICE_VERSION_H_

#include "vm_device/export.h"

#define VM_DEVICE_VERSION_MAJOR 0
#define VM_DEVICE_VERSION_MINOR 1
#define VM_DEVICE_VERSION_PATCH 0

#define VM_DEVICE_VERSION_STRINGIFY_INTERNAL(x) #x
#define VM_DEVICE_VERSION_STR_INTERNAL(x) \
  VM_DEVICE_VERSION_STRINGIFY_INTERNAL(x)

// "MAJOR.MINOR.PATCH", e.g. "0.1.0".
// clang-format off
#define VM_DEVICE_VERSION_STRING                               \
  VM_DEVICE_VERSION_STR_INTERNAL(VM_DEVICE_VERSION_MAJOR) "."  \
  VM_DEVICE_VERSION_STR_INTERNAL(VM_DEVICE_VERSION_MINOR) "."  \
  VM_DEVICE_VERSION_STR_INTERNAL(VM_DEVICE_VERSION_PATCH)
// clang-format on

namespace vm_device {

// VersionString()
//
// The version the library binary was built as ("0.1.0"). Compare it with
// VM_DEVICE_VERSION_STRING to detect headers of one release compiled against
// the library of another.
VM_DEVICE_EXPORT const char *VersionString();

}  // namespace vm_device

#endif  // VM_DEVICE_VERSION_H_
