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
// Three layouts of the same sorted keys, searched for the same answer (the
// last key <= x):
//   * FindFloor():       the sorted array, branch-free binary search.
//   * EytzingerFloor():  breadth-first (Eytzinger) order, one key per level.
//   * BTreeFloor():      a static B+-tree of one 64-byte cache line per node
//                        (8 MMIO or 32 PIO keys), counted branch-free inside
//                        the node; its leaf layer is the sorted array itself.
//                        The RCU table's layout (range_table.h).
//
// Memory accesses: every search reads, and prefetches, only elements of the
// arrays it is given: nothing before them, nothing past them
// (tests/range_search_test.cc checks every address with a recording `Probe`,
// and with the arrays placed right before a PROT_NONE page). A prefetch past
// an array is not harmless: it costs a failed page walk when the memory after
// the array is not mapped in, on every search.
//
// Thread safety: pure functions over memory the caller keeps alive.
// Progress: wait-free; FindFloor() runs ceil(log2(n)) iterations,
// EytzingerFloor() floor(log2(n)) + 1, BTreeFloor() one per layer of the tree
// (ceil(log_{B+1}(n / B)) + 1 layers), no more.

#ifndef VM_DEVICE_INTERNAL_RANGE_SEARCH_H_
#define VM_DEVICE_INTERNAL_RANGE_SEARCH_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "absl/base/attributes.h"
#include "vm_device/bus_range.h"
#include "vm_device/io_status.h"

namespace vm_device {
namespace range_search_internal {

// DirectProbe
//
// How a search reads and prefetches memory: plainly. Tests pass a recording
// probe instead (the same interface) to check that every access of a search
// stays inside its arrays.
struct DirectProbe {
  template <typename V>
  ABSL_ATTRIBUTE_ALWAYS_INLINE static V Load(const V* p) {
    return *p;
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE static void Prefetch(const void* p) {
    __builtin_prefetch(p);
  }
  // A whole node of `kCount` keys at `p`, about to be compared with a key.
  template <size_t kCount, typename V>
  ABSL_ATTRIBUTE_ALWAYS_INLINE static const V* Node(const V* p) {
    return p;
  }
};

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
template <typename V, typename Probe = DirectProbe>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline size_t FindFloor(const V* keys, size_t n,
                                                     V x) {
  if (n == 0) return 0;
  const V* lo = keys;
  size_t len = n;
  while (len > 1) {
    const size_t half = len / 2;
    lo = (Probe::Load(lo + half) <= x) ? lo + half : lo;
    len -= half;
  }
  return Probe::Load(lo) <= x ? static_cast<size_t>(lo - keys) : n;
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
// That line is clamped to the array (`keys + n` at most): on the deep levels
// the descendants do not exist, and an unclamped prefetch would land up to
// 64 / sizeof(V) times the array's size past its end.
// With `keys` 64-byte aligned, `keys + k * kPerLine` starts a cache line.
template <typename V, typename Probe = DirectProbe>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline size_t EytzingerFloor(const V* keys,
                                                          size_t n,
                                                          size_t levels, V x) {
  constexpr size_t kPerLine = 64 / sizeof(V);
  size_t k = 1;
  size_t floor = 0;
  if (n >= 4 * kPerLine) {
    for (size_t level = 0; level < levels; ++level) {
      const size_t ahead = k * kPerLine;
      Probe::Prefetch(keys + (ahead <= n ? ahead : n));
      const bool right = Probe::Load(keys + k) <= x;
      floor = right ? k : floor;
      k = 2 * k + static_cast<size_t>(right);
    }
  } else {
    for (size_t level = 0; level < levels; ++level) {
      const bool right = Probe::Load(keys + k) <= x;
      floor = right ? k : floor;
      k = 2 * k + static_cast<size_t>(right);
    }
  }
  // The partial last level: node k exists only if k <= n (keys[0] stands in).
  const size_t last = k <= n ? k : 0;
  const bool right = last != 0 && Probe::Load(keys + last) <= x;
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

// -----------------------------------------------------------------------------
// The cache-line-per-node B+-tree
// -----------------------------------------------------------------------------
//
// The keys of a table of `n` ranges, in `kKeysPerNode<V>` = 64 / sizeof(V)
// keys per node (8 MMIO keys, 32 PIO keys: one cache line), in layers stored
// top-down in one array of nodes:
//
//   layer 0                    the root: one node
//   ...
//   layer height - 1 (leaves)  the sorted keys, padded to whole nodes
//
// Node k of a non-leaf layer has up to B + 1 children, nodes k * (B + 1) + c
// (c in [0, B]) of the layer below; its key j is the smallest key under child
// j + 1. A search counts the keys <= x in each node it visits (branch-free,
// SSE2 for 16-bit keys) and goes down to that child: one cache line per layer
// and no other load. The leaf's count, added to the leaf's first sorted index,
// is the number of keys <= x. Padding (in the last node of each layer only)
// is the largest key value: it compares <= x only for x = that value, whose
// answer is the last key; BTreeFloor() answers that case before descending,
// so no count includes padding and no child index leaves its layer (a node's
// real keys are the first keys of its real children), without a clamp.
//
// Because the leaf layer is the sorted array, per-range data can be indexed
// by sorted index, and a hint (a sorted index remembered from an earlier
// search) is checked against `Leaves()` directly.

template <typename V>
inline constexpr size_t kKeysPerNode = 64 / sizeof(V);

// BTreeShape
//
// Where the layers of a tree of `n` keys lie in its node array. Computed by
// BTreeShape::For() when the table is built; `offset[h]` and `count[h]` are
// the first node and the number of nodes of layer h.
struct BTreeShape {
  static constexpr size_t kMaxHeight = 16;  // 8 * 9^15 keys: never reached

  size_t n = 0;
  size_t height = 0;  // layers, leaves included; 0 when n == 0
  size_t nodes = 0;   // all layers
  uint32_t offset[kMaxHeight] = {};
  uint32_t count[kMaxHeight] = {};

  // BTreeShape::For()
  //
  // The shape for `n` keys of type V. REQUIRES: n < 2^31 / kKeysPerNode<V>
  // (node indices fit 32 bits).
  template <typename V>
  static constexpr BTreeShape For(size_t n) {
    constexpr size_t kB = kKeysPerNode<V>;
    BTreeShape s;
    s.n = n;
    if (n == 0) return s;
    size_t per_layer[kMaxHeight] = {};
    size_t layers = 0;
    size_t nodes = (n + kB - 1) / kB;  // leaves
    per_layer[layers++] = nodes;
    while (nodes > 1) {
      nodes = (nodes + kB) / (kB + 1);  // ceil(nodes / (B + 1))
      per_layer[layers++] = nodes;
    }
    s.height = layers;
    size_t at = 0;
    for (size_t h = 0; h < layers; ++h) {  // top-down
      s.offset[h] = static_cast<uint32_t>(at);
      s.count[h] = static_cast<uint32_t>(per_layer[layers - 1 - h]);
      at += per_layer[layers - 1 - h];
    }
    s.nodes = at;
    return s;
  }

  // BTreeShape::Leaves()
  //
  // The leaf layer of `nodes`: the sorted keys, `n` of them then padding.
  template <typename V>
  const V* Leaves(const V* nodes) const {
    return nodes + size_t{offset[height - 1]} * kKeysPerNode<V>;
  }
};

namespace btree_internal {

// The number of keys[I] <= x over I: independent compares, no loop.
template <typename V, size_t... I>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline size_t CountUnrolled(
    const V* keys, V x, std::index_sequence<I...>) {
  return (static_cast<size_t>(keys[I] <= x) + ...);
}

// The number of the `kKeysPerNode<V>` keys at `node` that are <= x.
template <typename V, typename Probe>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline size_t CountLessEqual(const V* node, V x) {
  constexpr size_t kB = kKeysPerNode<V>;
  const V* keys = Probe::template Node<kB>(node);
#if defined(__SSE2__)
  if constexpr (sizeof(V) == 2) {
    // key <= x  <=>  saturating key - x == 0. Each true lane is -1; the
    // lanes are summed, then negated.
    const __m128i vx = _mm_set1_epi16(static_cast<int16_t>(x));
    const __m128i zero = _mm_setzero_si128();
    __m128i acc = zero;
    for (size_t i = 0; i < kB; i += 8) {
      const __m128i k =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(keys + i));
      acc = _mm_add_epi16(acc, _mm_cmpeq_epi16(_mm_subs_epu16(k, vx), zero));
    }
    // acc lanes are in [-4, 0]: negate, then sum the 8 lanes as bytes.
    acc = _mm_sub_epi16(zero, acc);
    const __m128i sums = _mm_sad_epu8(acc, zero);
    return static_cast<size_t>(_mm_cvtsi128_si32(sums) +
                               _mm_extract_epi16(sums, 4));
  }
#endif
  return CountUnrolled(keys, x, std::make_index_sequence<kB>());
}

}  // namespace btree_internal

// NoLeafHook
//
// BTreeFloor()'s default leaf hook: does nothing.
struct NoLeafHook {
  ABSL_ATTRIBUTE_ALWAYS_INLINE void operator()(size_t) const {}
};

// BTreeFloor()
//
// FindFloor()'s answer over the B+-tree `nodes` of shape `shape` (64-byte
// aligned, as BuildBTree() fills it): the sorted index of the last key <= x,
// or shape.n when there is none.
//
// `on_leaf(k)` is called once, with the index of the leaf node the search
// ends in (the leaf holding the floor, or leaf 0 when there is none), before
// that leaf is read: a hook that prefetches what the caller will load for
// that leaf (LeafPrefetch) overlaps those misses with the leaf's own.
// Nothing is called for an empty tree.
template <typename V, typename Probe = DirectProbe,
          typename LeafHook = NoLeafHook>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline size_t BTreeFloor(
    const V* nodes, const BTreeShape& shape, V x,
    LeafHook on_leaf = LeafHook()) {
  constexpr size_t kB = kKeysPerNode<V>;
  if (ABSL_PREDICT_FALSE(shape.n == 0)) return 0;
  // Every key is <= the largest value, so its floor is the last key; below
  // it, padding never counts, and every child a count leads to exists (a
  // node's real keys are its real children's first keys), so the descent
  // needs no clamp.
  if (ABSL_PREDICT_FALSE(x == std::numeric_limits<V>::max())) {
    on_leaf(size_t{shape.count[shape.height - 1]} - 1);
    return shape.n - 1;
  }
  const size_t leaf_layer = shape.height - 1;
  size_t k = 0;
  for (size_t h = 0; h < leaf_layer; ++h) {
    const size_t c = btree_internal::CountLessEqual<V, Probe>(
        nodes + (size_t{shape.offset[h]} + k) * kB, x);
    k = k * (kB + 1) + c;
  }
  on_leaf(k);
  const size_t le =
      k * kB + btree_internal::CountLessEqual<V, Probe>(
                   nodes + (size_t{shape.offset[leaf_layer]} + k) * kB, x);
  // le keys are <= x, none of them padding: le <= n.
  return le == 0 ? shape.n : le - 1;
}

// LeafPrefetch
//
// A BTreeFloor() leaf hook: prefetches the entries of the leaf's keys in an
// array indexed by sorted index (`entries[i]`, i < n; the table's slots), so
// that the line holding the floor's entry is in flight while the leaf's keys
// are counted, instead of being requested after. Only where it pays: the
// entries of one leaf span at most two cache lines (8 MMIO keys of 16-byte
// entries; PIO's 32 keys would need eight), and the array is at least
// kMinBytes (smaller ones stay in L1, where a prefetch is only work). Never
// touches anything past `entries[n - 1]`.
template <typename V, typename E, typename Probe = DirectProbe>
struct LeafPrefetch {
  static constexpr size_t kMinBytes = size_t{16} << 10;

  const E* entries;
  size_t n;

  ABSL_ATTRIBUTE_ALWAYS_INLINE void operator()(size_t leaf) const {
    constexpr size_t kB = kKeysPerNode<V>;
    if constexpr (kB * sizeof(E) <= 128) {
      if (n * sizeof(E) < kMinBytes) return;
      const size_t first = leaf * kB;  // < n: every leaf holds a key
      const size_t last = first + kB - 1 < n ? first + kB - 1 : n - 1;
      Probe::Prefetch(entries + first);
      Probe::Prefetch(entries + last);
    }
  }
};

// FillBTreeInner()
//
// Fills the non-leaf layers of `nodes` from its leaf layer, which must hold
// the `shape.n` ascending keys followed by padding (the largest key value) to
// the end of the layer. O(n / B).
template <typename V>
void FillBTreeInner(const BTreeShape& shape, V* nodes) {
  constexpr size_t kB = kKeysPerNode<V>;
  constexpr V kPad = std::numeric_limits<V>::max();
  if (shape.height == 0) return;
  const size_t n = shape.n;
  const V* sorted = nodes + size_t{shape.offset[shape.height - 1]} * kB;
  // child_span: the number of sorted keys under one node of layer h + 1.
  size_t child_span = kB;
  for (size_t h = shape.height - 1; h-- > 0;) {
    V* layer = nodes + size_t{shape.offset[h]} * kB;
    const size_t count = shape.count[h];
    // Key j of node k: the smallest key under child k * (B + 1) + j + 1,
    // whose first sorted index is that child times the child layer's span.
    for (size_t k = 0; k < count; ++k) {
      for (size_t j = 0; j < kB; ++j) {
        const size_t first = (k * (kB + 1) + j + 1) * child_span;
        layer[k * kB + j] = first < n ? sorted[first] : kPad;
      }
    }
    child_span *= kB + 1;
  }
}

// FillBTree()
//
// Lays out the `shape.n` ascending keys `sorted[i]` (any indexable) into
// `nodes` (shape.nodes * kKeysPerNode<V> elements). O(n).
template <typename V, typename Sorted>
void FillBTree(const BTreeShape& shape, const Sorted& sorted, V* nodes) {
  constexpr size_t kB = kKeysPerNode<V>;
  if (shape.height == 0) return;
  V* leaves = nodes + size_t{shape.offset[shape.height - 1]} * kB;
  const size_t leaf_keys = size_t{shape.count[shape.height - 1]} * kB;
  for (size_t i = 0; i < leaf_keys; ++i) {
    leaves[i] =
        i < shape.n ? static_cast<V>(sorted[i]) : std::numeric_limits<V>::max();
  }
  FillBTreeInner(shape, nodes);
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
