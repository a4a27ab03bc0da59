// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// VcpuThread: explicit RCU reader registration for a scope.

#include "vm_device/vcpu_thread.h"

#include "src/internal/rcu.h"

namespace vm_device {

VcpuThread::VcpuThread() : owns_registration_(!internal::IsRegistered()) {
  if (owns_registration_) internal::RegisterForScope();
}

VcpuThread::~VcpuThread() {
  if (owns_registration_) internal::UnregisterForScope();
}

}  // namespace vm_device
