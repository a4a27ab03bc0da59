// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: address.h
// -----------------------------------------------------------------------------
//
// Bus addresses. A guest reaches an emulated device through one of two
// independent address spaces:
//
//   * `PioAddress`  - x86 port I/O, 16-bit ports (0x0000 .. 0xffff).
//   * `MmioAddress` - memory-mapped I/O, 64-bit guest-physical addresses.
//
// Each address type has an offset type (`PioAddressOffset`,
// `MmioAddressOffset`) that is also the size type of ranges on that bus: an
// address plus an offset is an address, an address minus an address is an
// offset.
//
// Example:
//
//   vm_device::PioAddress port(0x3f8);
//   vm_device::PioAddressOffset off = vm_device::PioAddress(0x3fd) - port;  //
//   5 std::optional<vm_device::PioAddress> p = port.CheckedAdd(0xffff);      //
//   nullopt
//
// Thread safety: values; copy freely between threads.
// Progress: every operation is constant time and never blocks.
// Memory ordering: none (plain values).
// Lifetime: trivially copyable and destructible.

#ifndef VM_DEVICE_ADDRESS_H_
#define VM_DEVICE_ADDRESS_H_

#include <compare>
#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>

namespace vm_device {

// PioAddressOffset, MmioAddressOffset
//
// The offset and size types of each bus: the width of its addresses.
using PioAddressOffset = uint16_t;
using MmioAddressOffset = uint64_t;

namespace address_internal {

// BasicAddress
//
// The shared implementation of `PioAddress` and `MmioAddress`. `Tag` keeps the
// two types apart so that a port number never converts to a guest-physical
// address by accident.
template <typename Tag, typename V>
class BasicAddress {
 public:
  // The offset (and range size) type of this bus.
  using Value = V;
  // The largest address of this bus.
  static constexpr V kMax = std::numeric_limits<V>::max();
  // "PIO" or "MMIO", for messages.
  static constexpr const char* kBusName = Tag::kBus;

  constexpr BasicAddress() = default;
  constexpr explicit BasicAddress(V value) : value_(value) {}

  // BasicAddress::value()
  //
  // The address as an integer.
  constexpr V value() const { return value_; }

  // BasicAddress::CheckedAdd()
  //
  // The address `offset` bytes further on, or `std::nullopt` if that would
  // run past the top of the address space.
  constexpr std::optional<BasicAddress> CheckedAdd(V offset) const {
    if (offset > kMax - value_) return std::nullopt;
    return BasicAddress(static_cast<V>(value_ + offset));
  }

  // operator+
  //
  // The address `offset` bytes further on. REQUIRES: no overflow (the crate
  // this ports panics in debug builds); use `CheckedAdd()` when unsure.
  friend constexpr BasicAddress operator+(BasicAddress a, V offset) {
    return BasicAddress(static_cast<V>(a.value_ + offset));
  }

  // operator-
  //
  // The distance from `b` up to `a`. REQUIRES: `a >= b`.
  friend constexpr V operator-(BasicAddress a, BasicAddress b) {
    return static_cast<V>(a.value_ - b.value_);
  }

  friend constexpr bool operator==(BasicAddress, BasicAddress) = default;
  friend constexpr auto operator<=>(BasicAddress, BasicAddress) = default;

 private:
  V value_ = 0;
};

struct PioTag {
  static constexpr const char kName[] = "PioAddress";
  static constexpr const char kBus[] = "PIO";
};
struct MmioTag {
  static constexpr const char kName[] = "MmioAddress";
  static constexpr const char kBus[] = "MMIO";
};

// Prints `PioAddress(0x3f8)`.
template <typename Tag, typename V>
std::ostream& operator<<(std::ostream& os, BasicAddress<Tag, V> a) {
  const auto flags = os.flags();
  os << Tag::kName << "(0x" << std::hex << static_cast<uint64_t>(a.value())
     << ")";
  os.flags(flags);
  return os;
}

}  // namespace address_internal

// PioAddress
//
// A port-I/O address (16 bits).
using PioAddress =
    address_internal::BasicAddress<address_internal::PioTag, PioAddressOffset>;

// MmioAddress
//
// A memory-mapped I/O address (64-bit guest-physical address).
using MmioAddress = address_internal::BasicAddress<address_internal::MmioTag,
                                                   MmioAddressOffset>;

static_assert(sizeof(PioAddress) == 2);
static_assert(sizeof(MmioAddress) == 8);

}  // namespace vm_device

#endif  // VM_DEVICE_ADDRESS_H_
