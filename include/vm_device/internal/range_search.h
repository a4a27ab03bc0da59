// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: internal/range_search.h
// -----------------------------------------------------------------------------
//
// The two pieces of arithmetic every bus lookup shares: the search of a sorted
// array of range bases, and the shape check of an access. Used by the generic
// `Bus<A, D>` and by the RCU-published range table behind `IoManager`, so both
// answer exactly the same way. Not part of the public API.
//
// Thread safety: pure functions over memory the caller keeps alive.
// Progress: wait-free; FindFloor() runs ceil(log2(n)) iterations and
// EytzingerFloor() floor(log2(n)) + 1, no more.

#ifndef VM_DEVICE_INTERNAL_RANGE_SEARCH_H_
#define VM_DEVICE_INTERNAL_RANGE_SEARCH_H_

#include <cstddef>
#include <cstdint>

#include "absl/base/attributes.h"
#include "vm_device/bus_range.h"
#include "vm_device/io_status.h"

namespace vm_device {
namespace range_search_internal {

// RangeFactory
//
// Rebuilds a `BusRange` from the inclusive bounds of a range that was valid
// when it was stored, without re-checking it. REQUIRES: base <= last.
struct RangeFactory {
  template <typename A>
  static constexpr BusRange<A> FromBounds(typename A::Value base,
                                          typename A::Value last) {
    return BusRange<A>(A(base),
                       static_cast<typename A::Value>(last - base + 1));
  }
};

// FindFloor()
//
// The index of the last element of the ascending array `keys[0, n)` that is
// <= `x`, or `n` when there is none (n == 0, or keys[0] > x).
//
// Branch-free: each step halves the window with a conditional move rather than
// a branch, so random addresses cost no mispredictions, and the number of
// steps depends on `n` alone.
template <typename V>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline size_t FindFloor(const V* keys, size_t n,
                                                     V x) {
  if (n == 0) return 0;
  const V* lo = keys;
  size_t len = n;
  while (len > 1) {
    const size_t half = len / 2;
    lo = (lo[half] <= x) ? lo + half : lo;
    len -= half;
  }
  return *lo <= x ? static_cast<size_t>(lo - keys) : n;
}

// EytzingerLevels()
//
// The number of complete levels of an Eytzinger tree of `n` nodes:
// floor(log2(n + 1)). Store it beside the keys for EytzingerFloor().
constexpr size_t EytzingerLevels(size_t n) {
  size_t levels = 0;
  while ((size_t{2} << levels) - 1 <= n) ++levels;
  return levels;
}

// EytzingerFloor()
//
// The same answer as FindFloor() over a cache-friendlier layout: the keys in
// Eytzinger (breadth-first) order at `keys[1, n]` (`keys[0]` unused; see
// ForEachEytzingerSlot()), with `levels` = EytzingerLevels(n). Returns the
// Eytzinger index of the last key <= `x` in sorted order, or 0 when there is
// none.
//
// Each step goes down one level of the implicit tree with a conditional move
// and remembers the last node whose key was <= x (the floor is the last
// right turn). The loop runs exactly `levels` times, and the last, partial
// level is one more branch-free step, so the number of steps depends on `n`
// alone: no mispredicted loop exit. The top levels share a few cache lines
// that stay hot; in tables larger than a few cache lines, each step also
// prefetches the line holding all descendants log2(64 / sizeof(V)) levels
// below, so the dependent loads of deep levels overlap instead of queueing.
// With `keys` 64-byte aligned, `keys + k * kPerLine` starts a cache line.
template <typename V>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline size_t EytzingerFloor(const V* keys,
                                                          size_t n,
                                                          size_t levels, V x) {
  constexpr size_t kPerLine = 64 / sizeof(V);
  size_t k = 1;
  size_t floor = 0;
  if (n >= 4 * kPerLine) {
    for (size_t level = 0; level < levels; ++level) {
      __builtin_prefetch(keys + k * kPerLine);
      const bool right = keys[k] <= x;
      floor = right ? k : floor;
      k = 2 * k + static_cast<size_t>(right);
    }
  } else {
    for (size_t level = 0; level < levels; ++level) {
      const bool right = keys[k] <= x;
      floor = right ? k : floor;
      k = 2 * k + static_cast<size_t>(right);
    }
  }
  // The partial last level: node k exists only if k <= n (keys[0] stands in).
  const size_t last = k <= n ? k : 0;
  const bool right = last != 0 && keys[last] <= x;
  return right ? last : floor;
}

namespace eytzinger_internal {
template <typename F>
void InOrder(size_t k, size_t n, size_t& sorted, F& f) {
  if (k > n) return;
  InOrder(2 * k, n, sorted, f);
  f(k, sorted++);
  InOrder(2 * k + 1, n, sorted, f);
}
}  // namespace eytzinger_internal

// ForEachEytzingerSlot()
//
// Calls `f(eytzinger_index, sorted_index)` for the `n` elements of a sorted
// array, in sorted order: element `sorted_index` of the sorted array goes to
// `keys[eytzinger_index]` of the EytzingerFloor() layout.
template <typename F>
void ForEachEytzingerSlot(size_t n, F&& f) {
  size_t sorted = 0;
  eytzinger_internal::InOrder(1, n, sorted, f);
}

// CheckAccessShape()
//
// The checks of an access of `len` bytes at `addr` that need no lookup, in the
// order the crate makes them: the length must fit the bus's size type
// (kInvalidAccessLength), and `[addr, addr + len - 1]` must be a valid range
// (kInvalidRange: empty, or past the top of the address space). On kOk,
// `*last` is the access's last address.
template <typename A>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline IoStatus CheckAccessShape(
    A addr, size_t len, typename A::Value* last) {
  using V = typename A::Value;
  if constexpr (sizeof(V) < sizeof(size_t)) {
    if (len > static_cast<size_t>(A::kMax)) {
      return IoStatus::kInvalidAccessLength;
    }
  }
  const V size = static_cast<V>(len);
  if (size == 0 ||
      static_cast<V>(size - 1) > static_cast<V>(A::kMax - addr.value())) {
    return IoStatus::kInvalidRange;
  }
  *last = static_cast<V>(addr.value() + (size - 1));
  return IoStatus::kOk;
}

}  // namespace range_search_internal
}  // namespace vm_device

#endif  // VM_DEVICE_INTERNAL_RANGE_SEARCH_H_
