// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: io_status.h
// -----------------------------------------------------------------------------
//
// `IoStatus` is the outcome of one dispatched guest access (or of a bus access
// check). It is a one-byte enum, not an `absl::Status`: the dispatch path must
// not allocate, and "no device at this address" is a normal answer that a VMM
// turns into open-bus behaviour (reads of all ones, writes dropped).
//
//   kOk                   the access reached a device.
//   kDeviceNotFound       no registered range holds the first byte, or the
//                         access runs past the end of the range that does
//                         (an access never spans two ranges, even two ranges
//                         of one device).
//   kInvalidAccessLength  the length does not fit the bus's size type (more
//                         than 65535 bytes on the PIO bus).
//   kInvalidRange         the access is empty (length 0) or runs past the top
//                         of the address space. Checked before the lookup: a
//                         zero-length access is kInvalidRange even where no
//                         device is mapped.
//   kAccessRuleViolation  the access breaks the access rules of the range
//                         that holds it (access_rules.h): too narrow, too
//                         wide or misaligned. No device was called.
//   kDoorbellUnmatched    the access hit a doorbell (doorbell.h) registered
//                         without a fallback device, and was a read, or a
//                         write that does not match the doorbell's size or
//                         value. No eventfd was signalled, no device called.
//
// Example (a vCPU loop turning the answer into open-bus behaviour):
//
//   uint8_t v[4];
//   vm_device::IoStatus s = io.MmioRead(vm_device::MmioAddress(gpa), v);
//   if (s != vm_device::IoStatus::kOk) {
//     std::fill(std::begin(v), std::end(v), 0xff);  // no device: all ones
//     LOG_EVERY_N(INFO, 1000) << "MMIO read at " << gpa << ": " << s;
//   }
//
// Thread safety, progress, memory ordering, lifetime: a plain value.

#ifndef VM_DEVICE_IO_STATUS_H_
#define VM_DEVICE_IO_STATUS_H_

#include <cstdint>
#include <ostream>
#include <string_view>

namespace vm_device {

enum class [[nodiscard]] IoStatus : uint8_t{
    kOk = 0,
    kDeviceNotFound = 1,
    kInvalidAccessLength = 2,
    kInvalidRange = 3,
    kAccessRuleViolation = 4,
    kDoorbellUnmatched = 5,
};

// IoStatusName()
//
// A short description: "ok", "device not found", "invalid access length",
// "invalid range", "access rule violation", "unmatched doorbell access".
constexpr std::string_view IoStatusName(IoStatus s) {
  switch (s) {
    case IoStatus::kOk:
      return "ok";
    case IoStatus::kDeviceNotFound:
      return "device not found";
    case IoStatus::kInvalidAccessLength:
      return "invalid access length";
    case IoStatus::kInvalidRange:
      return "invalid range";
    case IoStatus::kAccessRuleViolation:
      return "access rule violation";
    case IoStatus::kDoorbellUnmatched:
      return "unmatched doorbell access";
  }
  return "unknown IoStatus";
}

inline std::ostream& operator<<(std::ostream& os, IoStatus s) {
  return os << IoStatusName(s);
}

}  // namespace vm_device

#endif  // VM_DEVICE_IO_STATUS_H_
