// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: access_rules.h
// -----------------------------------------------------------------------------
//
// Per-range access rules, checked by the bus before the device sees the
// access (as QEMU's `MemoryRegionOps::valid`): a minimum and a maximum access
// size, and a required alignment. An access that breaks them never reaches
// the device; the dispatch returns `IoStatus::kAccessRuleViolation`, which the
// VMM answers like open bus (or by injecting a fault), so handlers no longer
// check widths and alignment by hand.
//
//   * `AccessRules`: the rules.
//   * `PioWithAccessRules()`, `MmioWithAccessRules()`: the device with its
//     rules, as a device to register. Register the result like any device
//     (`RegisterPio`, `IoBatch::AddPio`, resources): the rules belong to the
//     registered object, so they travel with its ranges through moves and
//     batches, and `PioDevice()` / deregistration hand back that object.
//
// Example (a 16550 UART that takes byte accesses only, and a virtio-pci
// common config that takes aligned 1-, 2- and 4-byte accesses):
//
//   absl::StatusOr<std::shared_ptr<vm_device::DevicePio>> uart =
//       vm_device::PioWithAccessRules(serial, {.min_size = 1, .max_size = 1});
//   absl::Status s = io.RegisterPio(com1_range, *uart);
//   uint8_t two[2];
//   io.PioRead(vm_device::PioAddress(0x3f8), two);
//       // kAccessRuleViolation; `serial` was not called
//
//   auto common = vm_device::MmioWithAccessRules(
//       virtio_common, {.min_size = 1, .max_size = 4,
//                       .natural_alignment = true});
//
// Ranges registered without rules pay nothing: the bus tells them apart when
// a snapshot is built (a tag in the range's slot), not per access. A ruled
// range costs one out-of-line call and the comparisons below per access.
//
// Alignment is of the offset inside the registered range (as in QEMU, where
// it is relative to the region), which equals the address's alignment when
// the range base is aligned.
//
// Thread safety: a ruled device is immutable; its rules are checked
// concurrently by any number of threads. Progress: wait-free.

#ifndef VM_DEVICE_ACCESS_RULES_H_
#define VM_DEVICE_ACCESS_RULES_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "vm_device/device.h"
#include "vm_device/export.h"

namespace vm_device {

// AccessRules
//
// An access of `size` bytes at `offset` into the range is allowed when
//   min_size <= size, (max_size == 0 or size <= max_size),
//   offset % alignment == 0, and, with natural_alignment, offset % size == 0.
struct AccessRules {
  uint32_t min_size = 1;   // at least 1
  uint32_t max_size = 0;   // 0: no maximum; else >= min_size
  uint32_t alignment = 1;  // a power of two
  bool natural_alignment = false;  // the offset is a multiple of the size
};

// ValidateAccessRules()
//
// kInvalidArgument, naming the field and its value, if `rules` cannot be
// met as written: min_size 0, max_size below min_size, alignment not a power
// of two.
VM_DEVICE_EXPORT absl::Status ValidateAccessRules(const AccessRules& rules);

// PioWithAccessRules(), MmioWithAccessRules()
//
// `device` behind `rules`, as a device to register. Errors (kInvalidArgument,
// naming what is wrong): a null device, rules that ValidateAccessRules()
// refuses. Rules given to a doorbell (doorbell.h) apply to the doorbell's
// writes and its fallback's accesses alike; rules given to a device that
// already has rules replace them.
VM_DEVICE_EXPORT absl::StatusOr<std::shared_ptr<DevicePio>> PioWithAccessRules(
    std::shared_ptr<DevicePio> device, const AccessRules& rules);
VM_DEVICE_EXPORT absl::StatusOr<std::shared_ptr<DeviceMmio>> MmioWithAccessRules(
    std::shared_ptr<DeviceMmio> device, const AccessRules& rules);

}  // namespace vm_device

#endif  // VM_DEVICE_ACCESS_RULES_H_
