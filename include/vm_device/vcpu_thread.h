// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: vcpu_thread.h
// -----------------------------------------------------------------------------
//
// `VcpuThread` registers the calling thread as an RCU reader (liburcu, memb
// flavour) for the lifetime of the object. Every thread that dispatches
// through an `IoManager` must be registered; a thread that is not is
// registered on its first dispatch and unregistered when it exits, so holding
// a `VcpuThread` is optional. Hold one to pay the registration (a mutex and an
// allocation inside liburcu) before the first VM exit instead of during it,
// or to unregister a long-lived thread that stops dispatching.
//
// Example:
//
//   void VcpuLoop(vm_device::IoManager& io) {
//     vm_device::VcpuThread rcu_reader;
//     for (;;) { /* KVM_RUN, then io.PioWrite(...) on an exit */ }
//   }
//
// A vCPU thread should also say which vCPU it is, for devices that ask
// (access_info.h): `VcpuThread(vcpu_id)` sets `CurrentVcpuId()` for the
// object's lifetime (restoring the previous id when it is destroyed). A
// thread that never does reports `kNoVcpu`.
//
//   void VcpuLoop(vm_device::IoManager& io, uint32_t index) {
//     vm_device::VcpuThread vcpu(index);  // registered, and CurrentVcpuId()
//     for (;;) { /* KVM_RUN, dispatch */ } //   == index
//   }
//
// Nothing else is asked of a vCPU thread: with the memb flavour it never has
// to announce quiescent states, and it may block (in KVM_RUN, say) for as long
// as it likes outside a dispatch.
//
// Applications that use liburcu's memb flavour themselves may register their
// threads with `urcu_memb_register_thread()` as usual: the library sees that
// registration and neither repeats nor undoes it. (Built with
// --define=vm_device_urcu_inline=false it cannot see it: then register such
// threads only through VcpuThread.)
//
// Thread safety: create and destroy on the same thread, outside any dispatch
// or handler. Nesting is harmless (an inner object does nothing).
// Progress: blocking (liburcu's registry mutex), once per thread.

#ifndef VM_DEVICE_VCPU_THREAD_H_
#define VM_DEVICE_VCPU_THREAD_H_

#include <cstdint>

#include "vm_device/export.h"

namespace vm_device {

class VM_DEVICE_EXPORT VcpuThread {
 public:
  // Registers the thread; its vCPU id stays as it was (kNoVcpu unless an
  // enclosing VcpuThread set one).
  VcpuThread();
  // Registers the thread and sets CurrentVcpuId() to `vcpu_id` until
  // destruction. `vcpu_id` must not be kNoVcpu.
  explicit VcpuThread(uint32_t vcpu_id);
  ~VcpuThread();
  VcpuThread(const VcpuThread&) = delete;
  VcpuThread& operator=(const VcpuThread&) = delete;

 private:
  bool owns_registration_;
  bool sets_vcpu_id_ = false;
  uint32_t previous_vcpu_id_ = 0;
};

}  // namespace vm_device

#endif  // VM_DEVICE_VCPU_THREAD_H_
