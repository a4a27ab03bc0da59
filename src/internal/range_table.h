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
// * One snapshot holds both buses: per bus, the range bases in Eytzinger
//   (breadth-first) order and, beside them in the same order, {last address,
//   device pointer} slots. A lookup walks the implicit tree of bases with
//   conditional moves and prefetches (the only array a search walks: 4096 PIO
//   bases are 8 KiB, 4096 MMIO bases 32 KiB), then reads one slot. At most
//   floor(log2 n) + 1 steps, no pointer chasing, no allocation, no writes.
//   Against a plain binary search of the sorted bases, the hot top of the
//   tree shares a few cache lines and the deep levels are prefetched.
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
// thread-local counter update; the search takes floor(log2 n) + 1 steps;
// nothing loops on other threads. The device handler itself is the device's
// business (a `LockedDevice` blocks on its own lock). Commit: blocking (the
// writer mutex), O(n + k) for a batch of k changes on n ranges; never waits for
// a grace period (reclamation is queued for the reclaimer thread), so it is safe inside a
// handler.
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

// BusTable
//
// One bus of a snapshot: `n` ranges in Eytzinger order (range_search.h):
// `keys[k]` is the base of the k-th node, `slots[k]` its last address and
// device, for k in [1, n]; index 0 is unused.
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

  const Value* keys = nullptr;
  const Slot* slots = nullptr;
  size_t n = 0;
  size_t levels = 0;  // range_search_internal::EytzingerLevels(n)

  // BusTable::Locate()
  //
  // The node of the range that holds `addr`, or 0.
  ABSL_ATTRIBUTE_ALWAYS_INLINE size_t Locate(A addr) const {
    const size_t k =
        range_search_internal::EytzingerFloor(keys, n, levels, addr.value());
    return (k != 0 && addr.value() <= slots[k].last) ? k : 0;
  }

  // BusTable::RangeAt()
  //
  // The range of node `k` (1 <= k <= n).
  BusRange<A> RangeAt(size_t k) const {
    return range_search_internal::RangeFactory::FromBounds<A>(keys[k],
                                                              slots[k].last);
  }

  // BusTable::Find()
  //
  // The access check of `Bus::CheckAccess()` against this snapshot. On kOk,
  // `*base` and `*device` are the matching range's base and (tagged, see
  // Slot) device.
  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus Find(A addr, size_t len, A* base,
                                             const D** device) const {
    Value access_last;
    const IoStatus shape =
        range_search_internal::CheckAccessShape(addr, len, &access_last);
    if (ABSL_PREDICT_FALSE(shape != IoStatus::kOk)) return shape;
    const size_t k =
        range_search_internal::EytzingerFloor(keys, n, levels, addr.value());
    if (ABSL_PREDICT_FALSE(k == 0 || slots[k].last < access_last)) {
      return IoStatus::kDeviceNotFound;
    }
    *base = A(keys[k]);
    *device = slots[k].device;
    return IoStatus::kOk;
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
  // A snapshot of the two master buses. Throws std::bad_alloc on allocation
  // failure, and changes nothing then.
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
};

}  // namespace internal
}  // namespace vm_device

#endif  // VM_DEVICE_SRC_INTERNAL_RANGE_TABLE_H_
