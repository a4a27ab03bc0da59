// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// RangeTable: building the immutable two-bus snapshot in one aligned block.

#include "src/internal/range_table.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "vm_device/internal/annotated_mutex_lock.h"

#if defined(__has_include)
#if __has_include(<sanitizer/asan_interface.h>)
#include <sanitizer/asan_interface.h>
#endif
#endif
#ifndef ASAN_POISON_MEMORY_REGION
#define ASAN_POISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

namespace vm_device {
namespace internal {
namespace {

constexpr size_t kAlign = 64;  // a cache line

constexpr size_t RoundUp(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

// BlockCache
//
// Snapshot blocks that were freed, kept for the next Build(): a publish then
// writes into memory that is mapped in (and often still cached) instead of
// fresh pages, whose page faults cost more than the copy itself (a publish
// into 4096 ranges spent about a third of its time in page faults). At most
// kMaxBlocks blocks of at most kMaxBlockBytes each are kept, shared by all
// managers of the process. Writer side only (Build, and the deleter on the
// reclaimer thread): a mutex is fine here (annotated, so that TSan sees the
// hand-over of a block from the reclaimer to the next Build). Under
// AddressSanitizer a cached block is poisoned, so a stray read of a freed
// snapshot is still reported.
class BlockCache {
 public:
  static constexpr size_t kMaxBlocks = 4;
  static constexpr size_t kMaxBlockBytes = size_t{64} << 20;

  // A block of at least `bytes` (and at most twice that), 64-byte aligned,
  // and its capacity. Throws std::bad_alloc.
  std::pair<void*, size_t> Take(size_t bytes) {
    {
      sync_internal::AnnotatedMutexLock lock(&mu_);
      size_t best = count_;
      for (size_t i = 0; i < count_; ++i) {
        const size_t c = blocks_[i].capacity;
        if (c >= bytes && c <= 2 * bytes &&
            (best == count_ || c < blocks_[best].capacity)) {
          best = i;
        }
      }
      if (best != count_) {
        const Block b = blocks_[best];
        blocks_[best] = blocks_[--count_];
        ASAN_UNPOISON_MEMORY_REGION(b.p, b.capacity);
        return {b.p, b.capacity};
      }
    }
    const size_t capacity = (bytes + kPage - 1) / kPage * kPage;
    return {::operator new(capacity, std::align_val_t(kAlign)), capacity};
  }

  // Keeps the block `p` of `capacity` bytes, or frees it.
  void Give(void* p, size_t capacity) {
    if (capacity <= kMaxBlockBytes) {
      sync_internal::AnnotatedMutexLock lock(&mu_);
      if (count_ < kMaxBlocks) {
        ASAN_POISON_MEMORY_REGION(p, capacity);
        blocks_[count_++] = Block{p, capacity};
        return;
      }
    }
    ::operator delete(p, std::align_val_t(kAlign));
  }

 private:
  static constexpr size_t kPage = 4096;
  struct Block {
    void* p;
    size_t capacity;
  };
  absl::Mutex mu_;
  Block blocks_[kMaxBlocks] ABSL_GUARDED_BY(mu_) = {};
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

// Never destroyed: the reclaimer thread may free snapshots during exit.
BlockCache& Blocks() {
  static BlockCache* cache = new BlockCache;
  return *cache;
}

// The slot's device pointer: the device, with its dispatch tag (device.h) in
// the low bits (a device is at least 8-byte aligned: it has a vtable pointer).
template <typename D>
const D* TaggedDevice(const D& device) {
  static_assert(alignof(D) > kDispatchTagMask);
  return reinterpret_cast<const D*>(reinterpret_cast<uintptr_t>(&device) |
                                    DispatchTagAccess::Of(device));
}

// The installed allocator, or null. relaxed: installed only while no manager
// changes (SetSnapshotAllocatorForTesting), so no ordering is needed.
std::atomic<const SnapshotAllocator*> snapshot_allocator{nullptr};

// The bytes of one bus's arrays: the tree's nodes, then the slots.
template <typename Table>
size_t TableBytes(const range_search_internal::BTreeShape& shape) {
  return shape.nodes * kAlign + RoundUp(shape.n * sizeof(typename Table::Slot));
}

// Lays a master bus out at `p` (TableBytes() bytes, 64-byte aligned).
template <typename A, typename D>
void Fill(const Bus<A, std::shared_ptr<D>>& bus,
          const range_search_internal::BTreeShape& shape, BusTable<A, D>* table,
          unsigned char* p) {
  using Table = BusTable<A, D>;
  using Value = typename Table::Value;
  static_assert(range_search_internal::kKeysPerNode<Value> * sizeof(Value) ==
                kAlign);
  auto* nodes = reinterpret_cast<Value*>(p);
  auto* slots =
      reinterpret_cast<typename Table::Slot*>(p + shape.nodes * kAlign);
  // One pass over the master bus fills the leaf layer (the sorted bases) and
  // the slots; the padding, then the layers above, come from the leaves.
  // Every key of every node is written.
  Value* leaves = shape.n == 0
                      ? nodes
                      : nodes + size_t{shape.offset[shape.height - 1]} *
                                    range_search_internal::kKeysPerNode<Value>;
  size_t i = 0;
  bus.ForEach([&](const BusRange<A>& range, const std::shared_ptr<D>& device) {
    new (&leaves[i]) Value(range.base().value());
    new (&slots[i]) typename Table::Slot{range.last().value(),
                                             TaggedDevice(*device)};
    ++i;
  });
  if (shape.n != 0) {
    const size_t leaf_keys = size_t{shape.count[shape.height - 1]} *
                             range_search_internal::kKeysPerNode<Value>;
    for (size_t j = shape.n; j < leaf_keys; ++j) {
      new (&leaves[j]) Value(std::numeric_limits<Value>::max());
    }
  }
  range_search_internal::FillBTreeInner(shape, nodes);
  table->nodes = nodes;
  table->bases = leaves;
  table->slots = slots;
  table->shape = shape;
}

}  // namespace

void SetSnapshotAllocatorForTesting(const SnapshotAllocator* allocator) {
  snapshot_allocator.store(allocator, std::memory_order_relaxed);
}

RangeTablePtr RangeTable::Build(
    const Bus<PioAddress, std::shared_ptr<DevicePio>>& pio,
    const Bus<MmioAddress, std::shared_ptr<DeviceMmio>>& mmio) {
  using range_search_internal::BTreeShape;
  const BTreeShape pio_shape = BTreeShape::For<PioTable::Value>(pio.size());
  const BTreeShape mmio_shape = BTreeShape::For<MmioTable::Value>(mmio.size());
  const size_t header = RoundUp(sizeof(RangeTable));
  const size_t pio_bytes = TableBytes<PioTable>(pio_shape);
  const size_t mmio_bytes = TableBytes<MmioTable>(mmio_shape);
  const size_t total = header + pio_bytes + mmio_bytes;

  const SnapshotAllocator* allocator =
      snapshot_allocator.load(std::memory_order_relaxed);
  unsigned char* block;
  size_t capacity = total;
  if (allocator != nullptr) {
    block = static_cast<unsigned char*>(allocator->allocate(total));
  } else {
    auto [p, c] = Blocks().Take(total);
    block = static_cast<unsigned char*>(p);
    capacity = c;
  }
  auto* table = new (block) RangeTable();
  table->bytes_ = total;
  table->capacity_ = capacity;
  table->allocator_ = allocator;
  unsigned char* p = block + header;
  Fill(pio, pio_shape, &table->pio_, p);
  Fill(mmio, mmio_shape, &table->mmio_, p + pio_bytes);  // no Fill throws
  return RangeTablePtr(table);
}

void RangeTableDeleter::operator()(RangeTable* t) const {
  // Every member and array element is trivially destructible.
  const SnapshotAllocator* allocator = t->allocator_;
  const size_t bytes = t->bytes_;
  const size_t capacity = t->capacity_;
  t->~RangeTable();
  if (allocator != nullptr) {
    allocator->deallocate(t, bytes);
  } else {
    Blocks().Give(t, capacity);
  }
}

}  // namespace internal
}  // namespace vm_device
