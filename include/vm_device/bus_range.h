// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: bus_range.h
// -----------------------------------------------------------------------------
//
// `BusRange<A>` is a non-empty, closed interval of addresses on one bus:
// `[base, base + size - 1]`. It is what a device is registered on.
//
// A range is made only through the checked factory `Create()` (or `Unit()`,
// which cannot fail), so a `BusRange` in hand is always valid: its size is at
// least 1 and its last address does not run past the top of the address space.
// A range may end exactly at the top address (e.g. PIO [0xfff0, 0xffff]).
// Because the size type has the width of the address, a single range cannot
// cover a whole address space (2^16 ports or 2^64 bytes).
//
// Example:
//
//   absl::StatusOr<vm_device::PioRange> r =
//       vm_device::PioRange::Create(vm_device::PioAddress(0x3f8), 8);
//   if (!r.ok()) return r.status();
//   r->last();                                   // PioAddress(0x3ff)
//   r->Contains(vm_device::PioAddress(0x3fd));   // true
//
// Equality and ordering compare the base only (like the crate this ports:
// ranges are keys of an ordered map of disjoint ranges, where two ranges with
// one base cannot coexist). Compare `size()` too to tell two extents apart.
//
// Thread safety: values; copy freely between threads.
// Progress: every operation is constant time and never blocks.
// Memory ordering: none (plain values).
// Lifetime: trivially copyable and destructible.

#ifndef VM_DEVICE_BUS_RANGE_H_
#define VM_DEVICE_BUS_RANGE_H_

#include <compare>
#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "vm_device/address.h"

namespace vm_device {
namespace range_search_internal {
struct RangeFactory;
}  // namespace range_search_internal

template <typename A>
class BusRange {
 public:
  using Address = A;
  using Value = typename A::Value;

  // BusRange::Create()
  //
  // The range of `size` addresses starting at `base`. Fails with
  // `kInvalidArgument`, naming the input, when `size` is 0 or when the last
  // address `base + size - 1` would pass the top of the address space.
  static absl::StatusOr<BusRange> Create(A base, Value size) {
    if (!IsValid(base, size)) return InvalidRangeError(base, size);
    return BusRange(base, size);
  }

  // BusRange::Unit()
  //
  // The range holding the single address `base`. Valid for every address.
  static constexpr BusRange Unit(A base) { return BusRange(base, 1); }

  // BusRange::IsValid()
  //
  // Whether `Create(base, size)` would succeed.
  static constexpr bool IsValid(A base, Value size) {
    return size != 0 &&
           base.CheckedAdd(static_cast<Value>(size - 1)).has_value();
  }

  // BusRange::InvalidRangeError()
  //
  // The error `Create(base, size)` returns for an invalid range.
  static absl::Status InvalidRangeError(A base, Value size) {
    if (size == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("invalid %s range: size 0 at base 0x%x", A::kBusName,
                          static_cast<uint64_t>(base.value())));
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid %s range: base 0x%x size 0x%x runs past the last address 0x%x",
        A::kBusName, static_cast<uint64_t>(base.value()),
        static_cast<uint64_t>(size), static_cast<uint64_t>(A::kMax)));
  }

  // BusRange::base()
  //
  // The first address of the range.
  constexpr A base() const { return base_; }

  // BusRange::size()
  //
  // The number of addresses in the range (at least 1).
  constexpr Value size() const { return size_; }

  // BusRange::last()
  //
  // The last address still inside the range: `base + size - 1`. Never
  // overflows.
  constexpr A last() const { return base_ + static_cast<Value>(size_ - 1); }

  // BusRange::Contains()
  //
  // Whether `addr` lies inside the range.
  constexpr bool Contains(A addr) const {
    return base_ <= addr && addr <= last();
  }

  // BusRange::Overlaps()
  //
  // Whether the two ranges share at least one address. Adjacent ranges (one
  // ends at x, the next starts at x + 1) do not overlap. Symmetric.
  constexpr bool Overlaps(const BusRange& other) const {
    return !(base_ > other.last() || last() < other.base_);
  }

  // BusRange::ToString()
  //
  // `PIO [0x3f8, 0x3ff]`.
  std::string ToString() const {
    return absl::StrFormat("%s [0x%x, 0x%x]", A::kBusName,
                           static_cast<uint64_t>(base_.value()),
                           static_cast<uint64_t>(last().value()));
  }

  // Equality and ordering by base only; see the file comment.
  friend constexpr bool operator==(const BusRange& a, const BusRange& b) {
    return a.base_ == b.base_;
  }
  friend constexpr std::strong_ordering operator<=>(const BusRange& a,
                                                    const BusRange& b) {
    return a.base_ <=> b.base_;
  }

  friend std::ostream& operator<<(std::ostream& os, const BusRange& r) {
    return os << r.ToString();
  }

 private:
  friend struct range_search_internal::RangeFactory;

  constexpr BusRange(A base, Value size) : base_(base), size_(size) {}

  A base_;
  Value size_;
};

// PioRange, MmioRange
//
// Ranges on each bus.
using PioRange = BusRange<PioAddress>;
using MmioRange = BusRange<MmioAddress>;

}  // namespace vm_device

#endif  // VM_DEVICE_BUS_RANGE_H_
