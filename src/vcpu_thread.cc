// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// VcpuThread: explicit RCU reader registration for a scope.

#include "vm_device/vcpu_thread.h"

#include "src/internal/rcu.h"
#include "vm_device/access_info.h"

namespace vm_device {

VcpuThread::VcpuThread() : owns_registration_(!internal::IsRegistered()) {
  if (owns_registration_) internal::RegisterForScope();
}

VcpuThread::VcpuThread(uint32_t vcpu_id) : VcpuThread() {
  sets_vcpu_id_ = true;
  previous_vcpu_id_ = internal::ExchangeCurrentVcpuId(vcpu_id);
}

VcpuThread::~VcpuThread() {
  if (sets_vcpu_id_) internal::ExchangeCurrentVcpuId(previous_vcpu_id_);
  if (owns_registration_) internal::UnregisterForScope();
}

}  // namespace vm_device
