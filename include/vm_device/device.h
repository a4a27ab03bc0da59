// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: device.h
// -----------------------------------------------------------------------------
//
// The interfaces an emulated device implements to sit on a bus.
//
//   * `DevicePio`, `DeviceMmio`: shared devices. Their handlers are `const`
//     and are called concurrently from many vCPU threads; the device
//     synchronizes its own state (the C++ reading of Rust's `&self`:
//     `const` means safe to call concurrently, and mutable state is
//     `mutable` and guarded by the device's own locks or atomics).
//   * `MutDevicePio`, `MutDeviceMmio`: exclusive devices, written as if one
//     thread owned them. Their handlers are not `const` and are called by one
//     caller at a time. Wrap one in `LockedDevice<T>` (locked_device.h) to
//     register it: the adapter gives each device a lock of its own.
//
// A handler receives the base of the registered range that matched the access
// and the offset of the access inside it, so one device registered on several
// ranges (several BARs, say) tells them apart by `base`. `data.size()` is the
// access width. Handlers return nothing: a device cannot fail an access.
//
// Example (a shared device with its own lock):
//
//   class Scratch final : public vm_device::DevicePio {
//    public:
//     void PioRead(vm_device::PioAddress, vm_device::PioAddressOffset,
//                  absl::Span<uint8_t> data) const override {
//       absl::MutexLock l(&mu_);
//       std::fill(data.begin(), data.end(), value_);
//     }
//     void PioWrite(vm_device::PioAddress, vm_device::PioAddressOffset,
//                   absl::Span<const uint8_t> data) const override {
//       absl::MutexLock l(&mu_);
//       value_ = data.empty() ? 0 : data[0];
//     }
//    private:
//     mutable absl::Mutex mu_;
//     mutable uint8_t value_ ABSL_GUARDED_BY(mu_) = 0;
//   };
//
// Thread safety: `Device*` handlers are called concurrently from any number of
// threads; `MutDevice*` handlers are called with exclusive access.
// Handler context: handlers run inside the dispatching thread's RCU read-side
// critical section (see io_manager.h for what that allows: registering,
// deregistering and dispatching are fine; `IoManager::Synchronize()` is not).
// Opting into more: a device that wants the vCPU id and the full guest
// address of each access derives from `DevicePioWithInfo` /
// `DeviceMmioWithInfo` (access_info.h) instead; per-range access rules and
// eventfd doorbells are in access_rules.h and doorbell.h. Devices that use
// none of it keep the crate's signatures above and pay nothing for them.
//
// Lifetime: devices are held by `std::shared_ptr`; the manager keeps its
// reference until no vCPU can still be inside a handler (an RCU grace period
// after the device's last range was deregistered).

#ifndef VM_DEVICE_DEVICE_H_
#define VM_DEVICE_DEVICE_H_

#include <cstdint>

#include "absl/types/span.h"
#include "vm_device/address.h"

namespace vm_device {
namespace internal {

// How a snapshot slot routes an access (src/internal/range_table.h keeps the
// tag in the low bits of the slot's device pointer; devices are at least
// 8-byte aligned, having a vtable pointer).
inline constexpr uintptr_t kDispatchPlain = 0;     // call the handler
inline constexpr uintptr_t kDispatchWithInfo = 1;  // Device*WithInfo
inline constexpr uintptr_t kDispatchHook = 2;      // rules and/or doorbell
inline constexpr uintptr_t kDispatchTagMask = 3;

struct DispatchTagAccess;

}  // namespace internal

// DevicePio
//
// A device on the port-I/O bus whose handlers may run concurrently.
class DevicePio {
 public:
  virtual ~DevicePio() = default;

  // DevicePio::PioRead()
  //
  // Fills `data` with the device's answer to a read of `data.size()` bytes at
  // `base + offset`.
  virtual void PioRead(PioAddress base, PioAddressOffset offset,
                       absl::Span<uint8_t> data) const = 0;

  // DevicePio::PioWrite()
  //
  // Applies a write of `data` at `base + offset`.
  virtual void PioWrite(PioAddress base, PioAddressOffset offset,
                        absl::Span<const uint8_t> data) const = 0;

 private:
  friend struct internal::DispatchTagAccess;
  // How the bus dispatches to this device: 0, the handlers above. Overridden
  // only by the library's own classes (access_info.h, access_rules.h,
  // doorbell.h); read when a snapshot is built, never on the dispatch path.
  virtual uintptr_t BusDispatchTag() const { return 0; }
};

// DeviceMmio
//
// A device on the MMIO bus whose handlers may run concurrently.
class DeviceMmio {
 public:
  virtual ~DeviceMmio() = default;

  // DeviceMmio::MmioRead()
  //
  // Fills `data` with the device's answer to a read at `base + offset`.
  virtual void MmioRead(MmioAddress base, MmioAddressOffset offset,
                        absl::Span<uint8_t> data) const = 0;

  // DeviceMmio::MmioWrite()
  //
  // Applies a write of `data` at `base + offset`.
  virtual void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                         absl::Span<const uint8_t> data) const = 0;

 private:
  friend struct internal::DispatchTagAccess;
  // How the bus dispatches to this device: 0, the handlers above. Overridden
  // only by the library's own classes (access_info.h, access_rules.h,
  // doorbell.h); read when a snapshot is built, never on the dispatch path.
  virtual uintptr_t BusDispatchTag() const { return 0; }
};

// MutDevicePio
//
// A port-I/O device written for one caller at a time. Register it through
// `LockedDevice<T>`.
class MutDevicePio {
 public:
  virtual ~MutDevicePio() = default;

  // MutDevicePio::PioRead(), MutDevicePio::PioWrite()
  //
  // As `DevicePio`'s, with exclusive access to the device.
  virtual void PioRead(PioAddress base, PioAddressOffset offset,
                       absl::Span<uint8_t> data) = 0;
  virtual void PioWrite(PioAddress base, PioAddressOffset offset,
                        absl::Span<const uint8_t> data) = 0;
};

// MutDeviceMmio
//
// An MMIO device written for one caller at a time. Register it through
// `LockedDevice<T>`.
class MutDeviceMmio {
 public:
  virtual ~MutDeviceMmio() = default;

  // MutDeviceMmio::MmioRead(), MutDeviceMmio::MmioWrite()
  //
  // As `DeviceMmio`'s, with exclusive access to the device.
  virtual void MmioRead(MmioAddress base, MmioAddressOffset offset,
                        absl::Span<uint8_t> data) = 0;
  virtual void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                         absl::Span<const uint8_t> data) = 0;
};

namespace internal {

// Reads a device's dispatch tag (the library's own use only).
struct DispatchTagAccess {
  static uintptr_t Of(const DevicePio& d) { return d.BusDispatchTag(); }
  static uintptr_t Of(const DeviceMmio& d) { return d.BusDispatchTag(); }
};

}  // namespace internal
}  // namespace vm_device

#endif  // VM_DEVICE_DEVICE_H_
