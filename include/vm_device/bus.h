// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: bus.h
// -----------------------------------------------------------------------------
//
// `Bus<A, D>` maps disjoint ranges of one address space to device handles of
// any type `D`. It is the generic container of the crate this library ports
// (`vm_device::bus::Bus`): register a range, find the range holding an
// address, check that an access fits inside one range, deregister by any
// address inside a range.
//
// `IoManager` (io_manager.h) keeps one `Bus` per address space as its writers'
// master copy and publishes immutable snapshots of it to vCPU threads; use
// `Bus` directly for single-threaded bookkeeping of your own.
//
// Example:
//
//   vm_device::PioBus<int> bus;
//   auto range = vm_device::PioRange::Create(vm_device::PioAddress(10), 10);
//   absl::Status s = bus.Register(*range, 1);          // OK
//   bus.Device(vm_device::PioAddress(15))->range;      // PIO [0xa, 0x13]
//   bus.CheckAccess(vm_device::PioAddress(18), 4);     // kDeviceNotFound
//
// Storage is a pair of sorted arrays (bases, then {last, device}); lookups are
// a branch-free binary search (O(log n)); Register/Deregister are O(n)
// (insertion into the arrays) with an O(log n) overlap check.
//
// Thread safety: like a standard container. Const methods may run
// concurrently with each other; anything else needs external synchronization.
// Progress: lookups are wait-free; nothing blocks.
// Lifetime: pointers returned by lookups are invalidated by Register and
// Deregister.

#ifndef VM_DEVICE_BUS_H_
#define VM_DEVICE_BUS_H_

#include <algorithm>
#include <cstddef>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "vm_device/address.h"
#include "vm_device/bus_range.h"
#include "vm_device/internal/range_search.h"
#include "vm_device/io_status.h"

namespace vm_device {

// BusEntry
//
// What a lookup finds: the registered range and a pointer to its device
// handle (owned by the bus).
template <typename A, typename D>
struct BusEntry {
  BusRange<A> range;
  D* device;
};

template <typename A, typename D>
class Bus {
  static_assert(std::is_nothrow_move_constructible_v<D> &&
                    std::is_nothrow_move_assignable_v<D>,
                "Bus<A, D> needs a device handle type that moves without "
                "throwing, so that a failed Register leaves the bus unchanged");

 public:
  using Address = A;
  using Value = typename A::Value;
  using Range = BusRange<A>;

  Bus() = default;
  Bus(const Bus&) = default;
  Bus& operator=(const Bus&) = default;
  Bus(Bus&&) noexcept = default;
  Bus& operator=(Bus&&) noexcept = default;

  // Bus::size()
  //
  // The number of registered ranges.
  size_t size() const { return bases_.size(); }
  bool empty() const { return bases_.empty(); }

  // Bus::Register()
  //
  // Maps `range` to `device`. Fails with `kAlreadyExists`, naming both ranges,
  // if `range` shares an address with a registered range (of any device; a
  // device may own many ranges, but they never overlap). On failure the bus
  // is unchanged and `device` is destroyed.
  absl::Status Register(Range range, D device) {
    const size_t at = InsertionPoint(range.base());
    if (const std::optional<Range> clash = Clash(range, at)) {
      return OverlapError(range, *clash);
    }
    bases_.reserve(bases_.size() + 1);
    slots_.reserve(slots_.size() + 1);
    // No reallocation, and D moves without throwing: nothing below throws.
    bases_.insert(bases_.begin() + at, range.base().value());
    slots_.insert(slots_.begin() + at,
                  Slot{range.last().value(), std::move(device)});
    return absl::OkStatus();
  }

  // Bus::Deregister()
  //
  // Removes the range holding `addr` (any address inside it, not only its
  // base) and returns it with its device, or `std::nullopt` when no range
  // holds `addr`.
  std::optional<std::pair<Range, D>> Deregister(A addr) {
    const size_t i = Find(addr);
    if (i == kNone) return std::nullopt;
    std::pair<Range, D> out(RangeAt(i), std::move(slots_[i].device));
    bases_.erase(bases_.begin() + i);
    slots_.erase(slots_.begin() + i);
    return out;
  }

  // Bus::Device(), Bus::DeviceMut()
  //
  // The range holding `addr` and its device, or `std::nullopt` for an address
  // before the first range, between ranges or after the last one. No length
  // check: see `CheckAccess()`.
  std::optional<BusEntry<A, const D>> Device(A addr) const {
    const size_t i = Find(addr);
    if (i == kNone) return std::nullopt;
    return BusEntry<A, const D>{RangeAt(i), &slots_[i].device};
  }
  std::optional<BusEntry<A, D>> DeviceMut(A addr) {
    const size_t i = Find(addr);
    if (i == kNone) return std::nullopt;
    return BusEntry<A, D>{RangeAt(i), &slots_[i].device};
  }

  // Bus::CheckAccess()
  //
  // Checks an access of `len` bytes at `addr`, in this order:
  //   1. `len` must fit the size type     -> else kInvalidAccessLength
  //   2. [addr, addr + len - 1] is valid   -> else kInvalidRange (len 0, or
  //      past the top of the address space)
  //   3. one range holds the whole access  -> else kDeviceNotFound
  // On kOk, and when `entry` is not null, stores the range and device there.
  IoStatus CheckAccess(
      A addr, size_t len,
      std::optional<BusEntry<A, const D>>* entry = nullptr) const {
    Value access_last;
    const IoStatus shape =
        range_search_internal::CheckAccessShape(addr, len, &access_last);
    if (shape != IoStatus::kOk) return shape;
    const size_t i = Find(addr);
    if (i == kNone || slots_[i].last < access_last) {
      return IoStatus::kDeviceNotFound;
    }
    if (entry != nullptr)
      entry->emplace(BusEntry<A, const D>{RangeAt(i), &slots_[i].device});
    return IoStatus::kOk;
  }

  // Bus::ForEach()
  //
  // Calls `f(range, device)` for every registered range, in address order.
  template <typename F>
  void ForEach(F&& f) const {
    for (size_t i = 0; i < bases_.size(); ++i) f(RangeAt(i), slots_[i].device);
  }

  // Bus::At()
  //
  // The `i`-th range in address order and its device. REQUIRES: i < size().
  BusEntry<A, const D> At(size_t i) const {
    return BusEntry<A, const D>{RangeAt(i), &slots_[i].device};
  }

  // Bus::Overlapping()
  //
  // A registered range that shares an address with `range`, if any.
  std::optional<Range> Overlapping(Range range) const {
    return Clash(range, InsertionPoint(range.base()));
  }

  // Bus::OverlapError()
  //
  // The error Register returns when `range` overlaps the registered range
  // `existing`.
  static absl::Status OverlapError(Range range, Range existing) {
    return absl::AlreadyExistsError(
        absl::StrCat(range.ToString(), " overlaps ", existing.ToString(),
                     ", which is already registered"));
  }

  // Bus::Reserve()
  //
  // Makes room for `n` ranges so that Register cannot fail for lack of memory
  // (bad_alloc) until the bus holds more. Grows the capacity at least twofold
  // when it grows it, so that registering ranges one at a time (one Reserve
  // per range) reallocates and moves the ranges O(log n) times, not n times.
  void Reserve(size_t n) {
    if (n > bases_.capacity()) {
      bases_.reserve(std::max(n, 2 * bases_.capacity()));
    }
    if (n > slots_.capacity()) {
      slots_.reserve(std::max(n, 2 * slots_.capacity()));
    }
  }

 private:
  static constexpr size_t kNone = static_cast<size_t>(-1);

  struct Slot {
    Value last;
    D device;
  };

  Range RangeAt(size_t i) const {
    return range_search_internal::RangeFactory::FromBounds<A>(bases_[i],
                                                              slots_[i].last);
  }

  // Index of the range holding `addr`, or kNone.
  size_t Find(A addr) const {
    const size_t i = range_search_internal::FindFloor(
        bases_.data(), bases_.size(), addr.value());
    if (i == bases_.size() || slots_[i].last < addr.value()) return kNone;
    return i;
  }

  // Where a range starting at `base` goes: the first index whose base is
  // greater.
  size_t InsertionPoint(A base) const {
    const size_t i = range_search_internal::FindFloor(
        bases_.data(), bases_.size(), base.value());
    return i == bases_.size() ? 0 : i + 1;
  }

  // The registered range that overlaps `range`, which would be inserted at
  // `at`. Ranges are disjoint and sorted, so only the two neighbours can.
  std::optional<Range> Clash(Range range, size_t at) const {
    if (at > 0 && slots_[at - 1].last >= range.base().value()) {
      return RangeAt(at - 1);
    }
    if (at < bases_.size() && bases_[at] <= range.last().value()) {
      return RangeAt(at);
    }
    return std::nullopt;
  }

  std::vector<Value> bases_;  // ascending; bases_[i] pairs with slots_[i]
  std::vector<Slot> slots_;
};

// PioBus, MmioBus
//
// A bus of each address space.
template <typename D>
using PioBus = Bus<PioAddress, D>;
template <typename D>
using MmioBus = Bus<MmioAddress, D>;

}  // namespace vm_device

#endif  // VM_DEVICE_BUS_H_
