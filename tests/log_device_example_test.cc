// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The crate's crate-level example, in C++: a log device on the PIO bus,
// registered with an IoManager, and a write dispatched to it.
//
// A plain program rather than a gtest: it is both a test (it exits non-zero
// when something goes wrong) and an example to run:
//
//   bazel run //tests:log_device_example_test

#include <cstdint>
#include <iostream>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "vm_device/vm_device.h"

using vm_device::IoManager;
using vm_device::IoStatus;
using vm_device::MakeLocked;
using vm_device::MutDevicePio;
using vm_device::PioAddress;
using vm_device::PioAddressOffset;
using vm_device::PioRange;

// Prints bytes as a list of numbers: [111, 107].
std::ostream& operator<<(std::ostream& os, absl::Span<const uint8_t> data) {
  os << "[";
  for (size_t i = 0; i < data.size(); ++i) {
    os << (i > 0 ? ", " : "") << static_cast<int>(data[i]);
  }
  return os << "]";
}

struct LogDevice : MutDevicePio {
  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> /*data*/) override {
    std::cout << "mut pio_read: base " << base << ", offset " << offset << "\n";
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) override {
    std::cout << "mut pio_write: base " << base << ", offset " << offset
              << ", data " << data << "\n";
  }
};

int main() {
  // IoManager models the PioManager concept.
  IoManager manager;
  absl::StatusOr<PioRange> bus_range = PioRange::Create(PioAddress(0), 10);
  if (!bus_range.ok()) {
    std::cerr << bus_range.status() << "\n";
    return 1;
  }
  if (absl::Status s = manager.RegisterPio(*bus_range, MakeLocked<LogDevice>());
      !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  if (IoStatus r = manager.PioWrite(PioAddress(0), {'o', 'k'});
      r != IoStatus::kOk) {
    std::cerr << "pio write: " << r << "\n";
    return 1;
  }

  // Past the device's ten ports there is nothing.
  if (IoStatus r = manager.PioWrite(PioAddress(10), {'o', 'k'});
      r != IoStatus::kDeviceNotFound) {
    std::cerr << "pio write past the device: " << r << "\n";
    return 1;
  }
  return 0;
}
