// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The calling thread's vCPU id (access_info.h).

#include "vm_device/access_info.h"

#include <cstdint>

namespace vm_device {
namespace {

// Constant-initialized: reading it needs no TLS init call.
constinit thread_local uint32_t current_vcpu_id = kNoVcpu;

}  // namespace

uint32_t CurrentVcpuId() { return current_vcpu_id; }

namespace internal {

uint32_t ExchangeCurrentVcpuId(uint32_t vcpu_id) {
  const uint32_t previous = current_vcpu_id;
  current_vcpu_id = vcpu_id;
  return previous;
}

}  // namespace internal
}  // namespace vm_device
