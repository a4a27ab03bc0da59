// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: src/internal/range_table.h
// -----------------------------------------------------------------------------
//
// `RangeTable` is the immutable snapshot of both buses that `IoManager`
// publishes to vCPU threads. This file is also the design note of the
// dispatch engine.
//
// Design
// ------
// * One snapshot holds both buses: per bus, the range bases as a static
//   B+-tree of one cache line per node (8 MMIO or 32 PIO keys; range_search.h)
//   whose leaf layer is the sorted array of bases, and beside it, in sorted
//   order, {last address, device pointer} slots. A lookup reads one cache
//   line per layer (4096 MMIO ranges: 4 layers; 65,536: 6) with a
//   branch-free count inside each node, then one slot (prefetched as soon as
//   the leaf is known, on large MMIO tables). No pointer chasing,
//   no allocation, no writes, and no access outside the snapshot's arrays.
// * Dispatch first tries the calling thread's hints (BusHint: its last two
//   hits on that bus of that manager, in thread-local memory), each checked
//   against the loaded snapshot before use; a miss costs the search.
// * The snapshot is allocated in one block, 64-byte aligned, and never changes
//   after it is published. Writers build a new one from their master copy
//   (`Bus<A, std::shared_ptr<D>>`, guarded by the writer mutex) and publish it
//   with one pointer store, so a reader sees the old or the new snapshot of
//   *both* buses, never a mix, and a batch that touches PIO and MMIO becomes
//   visible at once.
// * The snapshot holds raw device pointers. Devices are owned by the writer's
//   master copy; a device removed from it is kept alive by the retired record
//   of the snapshot that still points at it (one shared_ptr per removed range),
//   which is destroyed only after an RCU grace period. Readers therefore never
//   touch a reference count.
//
// Ordering guarantees (readers = dispatch and lookups; writers = Commit)
// -----------------------------------------------------------------------
// A.1 A reader runs against exactly one snapshot: the one its acquire load of
//     the root pointer returned. It never sees part of a batch.
// A.2 Publish is a release store of the root pointer, after the snapshot has
//     been written in full; the reader's acquire load pairs with it, so every
//     byte of the snapshot is visible to any reader that sees the pointer.
// A.3 If a writer's Commit returns before (happens-before) a reader's dispatch
//     starts, the dispatch sees that commit or a later one. A dispatch that
//     races with a commit sees either snapshot.
// B.1 A device handler can run after its range was deregistered only in a
//     dispatch that loaded the old snapshot before the publish; such a
//     dispatch is inside a read-side critical section that started before the
//     publish.
// B.2 Hence after `IoManager::Synchronize()` returns, no handler of a range
//     deregistered before the call is running or will run (its grace period
//     has elapsed), and the device has been released by the library.
// C.1 Snapshots and devices are destroyed only after a grace period that began
//     after they were unpublished: never while a reader can hold them.
//
// Progress
// --------
// Lookup and dispatch: wait-free. Entering and leaving the read side is a
// thread-local counter update; the search reads one node per layer;
// nothing loops on other threads. The device handler itself is the device's
// business (a `LockedDevice` blocks on its own lock). Commit: blocking (the
// writer mutex), O(n) for the build plus O(n + k) per change of a batch in
// the worst case (io_manager.h, "Time of a change"); never waits for a grace
// period (reclamation is queued for the reclaimer thread), so it is safe
// inside a handler.
//
// Thread safety: a built table is immutable; any number of threads may read
// it. Build() is called by the writer under the writer mutex.

#ifndef VM_DEVICE_SRC_INTERNAL_RANGE_TABLE_H_
#define VM_DEVICE_SRC_INTERNAL_RANGE_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/base/attributes.h"
#include "vm_device/address.h"
#include "vm_device/bus.h"
#include "vm_device/device.h"
#include "vm_device/internal/range_search.h"
#include "vm_device/io_status.h"

namespace vm_device {
namespace internal {

// BusHint
//
// What one thread remembers of one bus of one manager: the sorted indices of
// its last two hits, most recent first. They index whatever snapshot was
// loaded then; BusTable::FindHinted() checks them against the snapshot it
// searches before using one, so a stale or garbage hint costs a search and
// never a wrong route. Lives in thread-local memory (io_manager.cc): reading
// and updating it writes nothing another thread reads.
struct BusHint {
  size_t recent[2] = {0, 0};
};

// BusTable
//
// One bus of a snapshot: `size()` ranges, numbered in address order. The
// bases are the keys of a cache-line-per-node B+-tree (`nodes`, shape
// `shape`; range_search.h), whose leaf layer `bases` is the sorted array of
// bases; `slots[i]` is the last address and device of range i.
template <typename A, typename D>
struct BusTable {
  using Value = typename A::Value;
  using Device = D;
  // `device` carries the device's dispatch tag (device.h) in its low two
  // bits: 0 for a device with the crate's handlers (call it as is), else
  // Device*WithInfo or a range hook (src/internal/range_hook.h), which
  // dispatch takes out of line. Mask with ~kDispatchTagMask before use.
  struct Slot {
    Value last;
    const D* device;
  };

  const Value* nodes = nullptr;  // shape.nodes * kKeysPerNode<Value> keys
  const Value* bases = nullptr;  // shape.Leaves(nodes): bases[i], i < size()
  const Slot* slots = nullptr;   // slots[i], i < size()
  range_search_internal::BTreeShape shape;

  size_t size() const { return shape.n; }

  // BusTable::Locate()
  //
  // The index of the range that holds `addr`, or size() when none does.
  ABSL_ATTRIBUTE_ALWAYS_INLINE size_t Locate(A addr) const {
    const size_t i = Search(addr.value());
    return (i != shape.n && addr.value() <= slots[i].last) ? i : shape.n;
  }

  // BusTable::RangeAt()
  //
  // The range of index `i` (i < size()).
  BusRange<A> RangeAt(size_t i) const {
    return range_search_internal::RangeFactory::FromBounds<A>(bases[i],
                                                              slots[i].last);
  }

  // BusTable::Find()
  //
  // The access check of `Bus::CheckAccess()` against this snapshot. On kOk,
  // `*base` and `*device` are the matching range's base and (tagged, see
  // Slot) device.
  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus Find(A addr, size_t len, A* base,
                                             const D** device) const {
    Value access_last;
    const IoStatus shape_ok =
        range_search_internal::CheckAccessShape(addr, len, &access_last);
    if (ABSL_PREDICT_FALSE(shape_ok != IoStatus::kOk)) return shape_ok;
    const size_t i = Search(addr.value());
    if (ABSL_PREDICT_FALSE(i == shape.n || slots[i].last < access_last)) {
      return IoStatus::kDeviceNotFound;
    }
    *base = A(bases[i]);
    *device = slots[i].device;
    return IoStatus::kOk;
  }

  // BusTable::FindHinted()
  //
  // Find()'s answer, trying the ranges `*hint` names first: a hinted index is
  // used only if, in this snapshot, it is a range that holds the whole access
  // (ranges are disjoint, so that range is the one Find() would return).
  // Otherwise it searches, and a hit becomes the hint's most recent index.
  // Sets `*from_hint` to whether a hint answered. Writes only `*hint` and
  // `*from_hint`.
  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus FindHinted(A addr, size_t len,
                                                   BusHint* hint, A* base,
                                                   const D** device,
                                                   bool* from_hint) const {
    Value access_last;
    const IoStatus shape_ok =
        range_search_internal::CheckAccessShape(addr, len, &access_last);
    if (ABSL_PREDICT_FALSE(shape_ok != IoStatus::kOk)) return shape_ok;
    const size_t h0 = hint->recent[0];
    size_t i;
    if (Holds(h0, addr.value(), access_last)) {
      i = h0;
      *from_hint = true;
    } else if (const size_t h1 = hint->recent[1];
               Holds(h1, addr.value(), access_last)) {
      i = h1;
      hint->recent[0] = h1;
      hint->recent[1] = h0;
      *from_hint = true;
    } else {
      i = Search(addr.value());
      *from_hint = false;
      if (ABSL_PREDICT_FALSE(i == shape.n || slots[i].last < access_last)) {
        return IoStatus::kDeviceNotFound;
      }
      hint->recent[1] = h0;
      hint->recent[0] = i;
    }
    *base = A(bases[i]);
    *device = slots[i].device;
    return IoStatus::kOk;
  }

 private:
  // The floor of `x` (BTreeFloor()), with the slots of the leaf prefetched
  // as soon as the leaf is known (LeafPrefetch).
  ABSL_ATTRIBUTE_ALWAYS_INLINE size_t Search(Value x) const {
    using range_search_internal::DirectProbe;
    using range_search_internal::LeafPrefetch;
    return range_search_internal::BTreeFloor<Value, DirectProbe>(
        nodes, shape, x, LeafPrefetch<Value, Slot>{slots, shape.n});
  }
  // Whether range `i` of this snapshot exists and holds [first, last].
  ABSL_ATTRIBUTE_ALWAYS_INLINE bool Holds(size_t i, Value first,
                                          Value last) const {
    return i < shape.n && bases[i] <= first && last <= slots[i].last;
  }
};

class RangeTable;

// Frees a snapshot made by RangeTable::Build().
struct RangeTableDeleter {
  void operator()(RangeTable* t) const;
};
using RangeTablePtr = std::unique_ptr<RangeTable, RangeTableDeleter>;

// RangeTable
//
// The snapshot of both buses. Build() allocates it in one block.
class RangeTable {
 public:
  using PioTable = BusTable<PioAddress, DevicePio>;
  using MmioTable = BusTable<MmioAddress, DeviceMmio>;

  // RangeTable::Build()
  //
  // A snapshot of the two master buses, in O(n). Its block comes from a small
  // process-wide cache of freed snapshot blocks when one fits (range_table.cc,
  // BlockCache), so a publish writes into memory already mapped in. Throws
  // std::bad_alloc on allocation failure, and changes nothing then.
  static RangeTablePtr Build(
      const Bus<PioAddress, std::shared_ptr<DevicePio>>& pio,
      const Bus<MmioAddress, std::shared_ptr<DeviceMmio>>& mmio);

  const PioTable& pio() const { return pio_; }
  const MmioTable& mmio() const { return mmio_; }

  // The size of the block, header included.
  size_t bytes() const { return bytes_; }

 private:
  friend struct RangeTableDeleter;
  RangeTable() = default;

  PioTable pio_;
  MmioTable mmio_;
  size_t bytes_ = 0;
  size_t capacity_ = 0;  // of the block: bytes_ or more
  const struct SnapshotAllocator* allocator_ = nullptr;  // null: BlockCache
};

// SnapshotAllocator, SetSnapshotAllocatorForTesting()
//
// Where Build() gets the block of a snapshot: by default, aligned operator
// new. Tests and benchmarks install their own to place snapshots at chosen
// addresses (right before a guard page, or before never-touched memory).
// `allocate(bytes)` returns 64-byte aligned memory or throws std::bad_alloc;
// `deallocate(p, bytes)` frees it. The allocator must outlive every snapshot
// built while it was installed (each snapshot remembers its own). Installing
// one is not synchronized with Build(): do it while no manager changes.
struct SnapshotAllocator {
  void* (*allocate)(size_t bytes);
  void (*deallocate)(void* p, size_t bytes);
};
void SetSnapshotAllocatorForTesting(const SnapshotAllocator* allocator);

}  // namespace internal
}  // namespace vm_device

#endif  // VM_DEVICE_SRC_INTERNAL_RANGE_TABLE_H_
