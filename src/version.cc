// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// vm_device::VersionString(): the version this library binary was built as.

#include "vm_device/version.h"

namespace vm_device {

const char* VersionString() { return VM_DEVICE_VERSION_STRING; }

}  // namespace vm_device
