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
};

// IoStatusName()
//
// A short description: "ok", "device not found", "invalid access length",
// "invalid range".
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
  }
  return "unknown IoStatus";
}

inline std::ostream& operator<<(std::ostream& os, IoStatus s) {
  return os << IoStatusName(s);
}

}  // namespace vm_device

#endif  // VM_DEVICE_IO_STATUS_H_
