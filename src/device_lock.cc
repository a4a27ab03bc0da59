// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The one definition of the per-thread record of held device locks
// (include/vm_device/internal/device_lock.h).

#include "vm_device/internal/device_lock.h"

namespace vm_device {
namespace device_lock_internal {

ABSL_CONST_INIT thread_local HeldLocks tls_held_locks = {};

}  // namespace device_lock_internal
}  // namespace vm_device
