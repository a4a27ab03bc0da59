// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: access_info.h
// -----------------------------------------------------------------------------
//
// Opt-in access information for device handlers: which vCPU made the access
// and the full guest address, besides the range base and offset that every
// handler gets. A per-CPU interrupt controller (a local APIC, a GIC
// redistributor banked by CPU), or a tracer, needs to know who made the
// access.
//
//   * `PioAccessInfo`, `MmioAccessInfo`: what the handler learns.
//   * `DevicePioWithInfo`, `DeviceMmioWithInfo`: derive from one of these
//     instead of `DevicePio` / `DeviceMmio` and implement the `*WithInfo`
//     handlers. Register the device as usual (`RegisterPio`, batches,
//     resources, moves, `PioWithAccessRules`, a doorbell's fallback).
//   * `CurrentVcpuId()`: the vCPU id of the calling thread, as set by
//     `VcpuThread(vcpu_id)` (vcpu_thread.h); `kNoVcpu` on any other thread.
//
// Exclusive devices (`MutDevicePio` / `MutDeviceMmio` under `LockedDevice`),
// and any other code, can call `CurrentVcpuId()` themselves: every handler
// runs on the thread that dispatched the access, so it returns the id of the
// vCPU that made it (the full address of a crate-signature handler is
// `base + offset`).
//
// Devices that do not opt in keep the crate's handler signatures
// (device.h) and pay nothing: the bus tells the two apart when a snapshot is
// built (a tag in the range's slot), not per access. An opted-in device costs
// one more thread-local load per access (the vCPU id).
//
// The vCPU id comes from the dispatching thread (`VcpuThread`), not from a
// dispatch argument: a vCPU thread is one vCPU for its whole life, so it says
// so once, and the dispatch signatures (and the crate's `PioManager` /
// `MmioManager` concepts) stay as they are. A thread that never declared an
// id (an I/O thread, the VMM's main thread, a test) reports `kNoVcpu`.
//
// Example (a per-vCPU register file):
//
//   class PerCpuRegs final : public vm_device::DeviceMmioWithInfo {
//    public:
//     void MmioReadWithInfo(const vm_device::MmioAccessInfo& access,
//                           absl::Span<uint8_t> data) const override {
//       if (access.vcpu == vm_device::kNoVcpu) {  // not a vCPU: open bus
//         std::fill(data.begin(), data.end(), 0xff);
//         return;
//       }
//       std::fill(data.begin(), data.end(), uint8_t(access.vcpu));
//     }
//     void MmioWriteWithInfo(const vm_device::MmioAccessInfo&,
//                            absl::Span<const uint8_t>) const override {}
//   };
//
//   // On vCPU thread 3:
//   vm_device::VcpuThread vcpu(3);
//   uint8_t v[4];
//   io.MmioRead(vm_device::MmioAddress(0xfee00020), v);  // v = {3, 3, 3, 3}
//
// Thread safety: as `DevicePio` / `DeviceMmio`: the handlers are called
// concurrently from many threads. `CurrentVcpuId()` reads a thread-local.
// Progress: wait-free (one thread-local load on top of the handler).

#ifndef VM_DEVICE_ACCESS_INFO_H_
#define VM_DEVICE_ACCESS_INFO_H_

#include <cstdint>

#include "absl/types/span.h"
#include "vm_device/address.h"
#include "vm_device/device.h"
#include "vm_device/export.h"

namespace vm_device {

// kNoVcpu
//
// The vCPU id a thread reports when it did not declare one with
// `VcpuThread(vcpu_id)`.
inline constexpr uint32_t kNoVcpu = UINT32_MAX;

// CurrentVcpuId()
//
// The vCPU id the calling thread declared with `VcpuThread(vcpu_id)`, or
// kNoVcpu. Wait-free.
VM_DEVICE_EXPORT uint32_t CurrentVcpuId();

// AccessInfo
//
// What a `*WithInfo` handler learns about one access.
template <typename A>
struct AccessInfo {
  A address;                 // the guest address of the first byte
  A base;                    // the base of the registered range that matched
  typename A::Value offset;  // address - base
  uint32_t vcpu;             // CurrentVcpuId() of the dispatching thread
};

using PioAccessInfo = AccessInfo<PioAddress>;
using MmioAccessInfo = AccessInfo<MmioAddress>;

// DevicePioWithInfo
//
// A port-I/O device whose handlers receive `PioAccessInfo`. Its
// crate-signature handlers are implemented here (final): they build the
// info from their arguments and `CurrentVcpuId()` and call the `*WithInfo`
// ones, so calling the device directly means the same as dispatching to it.
class DevicePioWithInfo : public DevicePio {
 public:
  // DevicePioWithInfo::PioReadWithInfo(), PioWriteWithInfo()
  //
  // As `DevicePio::PioRead()` / `PioWrite()`, with the access information.
  virtual void PioReadWithInfo(const PioAccessInfo& access,
                               absl::Span<uint8_t> data) const = 0;
  virtual void PioWriteWithInfo(const PioAccessInfo& access,
                                absl::Span<const uint8_t> data) const = 0;

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const final {
    PioReadWithInfo({base + offset, base, offset, CurrentVcpuId()}, data);
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const final {
    PioWriteWithInfo({base + offset, base, offset, CurrentVcpuId()}, data);
  }

 private:
  uintptr_t BusDispatchTag() const final {
    return internal::kDispatchWithInfo;
  }
};

// DeviceMmioWithInfo
//
// An MMIO device whose handlers receive `MmioAccessInfo`; as
// `DevicePioWithInfo`.
class DeviceMmioWithInfo : public DeviceMmio {
 public:
  // DeviceMmioWithInfo::MmioReadWithInfo(), MmioWriteWithInfo()
  //
  // As `DeviceMmio::MmioRead()` / `MmioWrite()`, with the access information.
  virtual void MmioReadWithInfo(const MmioAccessInfo& access,
                                absl::Span<uint8_t> data) const = 0;
  virtual void MmioWriteWithInfo(const MmioAccessInfo& access,
                                 absl::Span<const uint8_t> data) const = 0;

  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const final {
    MmioReadWithInfo({base + offset, base, offset, CurrentVcpuId()}, data);
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const final {
    MmioWriteWithInfo({base + offset, base, offset, CurrentVcpuId()}, data);
  }

 private:
  uintptr_t BusDispatchTag() const final {
    return internal::kDispatchWithInfo;
  }
};

namespace internal {

// Sets the calling thread's vCPU id (VcpuThread's use) and returns the
// previous one.
uint32_t ExchangeCurrentVcpuId(uint32_t vcpu_id);

}  // namespace internal
}  // namespace vm_device

#endif  // VM_DEVICE_ACCESS_INFO_H_
