// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: doorbell.h
// -----------------------------------------------------------------------------
//
// Doorbells: a range where a guest write signals an eventfd and runs no
// device code, as KVM's `KVM_IOEVENTFD` does in the kernel, here in the
// userspace bus (for VMMs without the kernel path, or that want it testable).
// A virtio queue notify is the typical doorbell: the vCPU only bumps the
// eventfd's counter, and the queue's backend, on an I/O thread, reads the
// eventfd and processes the queue.
//
//   * `DoorbellMatch`: which writes ring (KVM's datamatch): optionally only
//     writes of one size, only of one value, only at the range base.
//   * `MakePioDoorbell()`, `MakeMmioDoorbell()`: the doorbell as a device to
//     register. Register it like any device (`RegisterPio`,
//     `IoBatch::AddMmio`, resources, `MoveMmio`): it is one, so doorbells
//     take part in batches, moves and resources, and give the same
//     all-or-nothing and visibility guarantees (io_manager.h).
//
// What an access to a doorbell range does:
//   a write that matches   adds 1 to the eventfd's counter; IoStatus::kOk.
//   a read, or a write     goes to the fallback device given at creation
//   that does not match    (kOk), or, without one, IoStatus::kDoorbellUnmatched
//                          and nothing else happens.
// With access rules (access_rules.h: `MmioWithAccessRules(doorbell, ...)`)
// the rules are checked first: a violating write never rings.
//
// Example (virtio-mmio QueueNotify at offset 0x50, one eventfd for queue 0;
// other registers go to the transport device):
//
//   int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
//   absl::StatusOr<std::shared_ptr<vm_device::DeviceMmio>> bell =
//       vm_device::MakeMmioDoorbell(efd, {.size = 4, .value = 0},
//                                   /*fallback=*/transport);
//   absl::Status s = io.RegisterMmio(
//       *vm_device::MmioRange::Create(vm_device::MmioAddress(0xd0000050), 4),
//       *bell);
//   // vCPU: io.MmioWrite(MmioAddress(0xd0000050), {0, 0, 0, 0}) rings;
//   // I/O thread: read(efd, &count, 8) returns the rings since last read.
//
// The eventfd: the doorbell keeps a duplicate of `eventfd` (the caller may
// close its own), closed after the doorbell's last range is gone and a grace
// period has passed, so no vCPU ever writes to a closed or reused number.
// Every ring adds exactly 1 and eventfd counters add up: the counts an I/O
// thread reads sum to the rings made.
//
// Thread safety: a doorbell is immutable; any number of vCPUs ring it at once.
// Progress: the vCPU side is wait-free apart from the eventfd write(2) itself
// (one system call; it blocks only if the counter is saturated at 2^64 - 2 on
// a blocking eventfd).

#ifndef VM_DEVICE_DOORBELL_H_
#define VM_DEVICE_DOORBELL_H_

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "vm_device/device.h"
#include "vm_device/export.h"

namespace vm_device {

// DoorbellMatch
//
// Which writes ring. The default: any write at the range base.
struct DoorbellMatch {
  // 0: any size; 1 to 8: only writes of exactly this many bytes.
  uint32_t size = 0;
  // Only writes whose bytes, read little-endian, equal `value` (KVM's
  // datamatch). Needs `size` 1, 2, 4 or 8, and a value that fits it.
  std::optional<uint64_t> value;
  // false: only writes that start at the range base ring (KVM's behaviour);
  // true: writes anywhere in the range do.
  bool any_offset = false;
};

// MakePioDoorbell(), MakeMmioDoorbell()
//
// A doorbell that rings `eventfd` on the writes `match` selects, and passes
// every other access to `fallback` (may be null). Errors (kInvalidArgument,
// naming the input): `eventfd` is not an open eventfd; `match.size` above 8;
// `match.value` with a size other than 1, 2, 4 or 8, or too large for it.
VM_DEVICE_EXPORT absl::StatusOr<std::shared_ptr<DevicePio>> MakePioDoorbell(
    int eventfd, const DoorbellMatch& match = {},
    std::shared_ptr<DevicePio> fallback = nullptr);
VM_DEVICE_EXPORT absl::StatusOr<std::shared_ptr<DeviceMmio>> MakeMmioDoorbell(
    int eventfd, const DoorbellMatch& match = {},
    std::shared_ptr<DeviceMmio> fallback = nullptr);

}  // namespace vm_device

#endif  // VM_DEVICE_DOORBELL_H_
