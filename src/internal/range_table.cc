// RangeTable: building the immutable two-bus snapshot in one aligned block.

#include "src/internal/range_table.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

namespace vm_device {
namespace internal {
namespace {

constexpr size_t kAlign = 64;  // a cache line

constexpr size_t RoundUp(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

// The installed allocator, or null. relaxed: installed only while no manager
// changes (SetSnapshotAllocatorForTesting), so no ordering is needed.
std::atomic<const SnapshotAllocator*> snapshot_allocator{nullptr};

// The bases of a master bus, indexable in sorted order.
template <typename A, typename D>
struct SortedBases {
  const Bus<A, std::shared_ptr<D>>& bus;
  typename A::Value operator[](size_t i) const {
    return bus.At(i).range.base().value();
  }
};

// The bytes of one bus's arrays: the tree's nodes, then the slots.
template <typename Table>
size_t TableBytes(const range_search_internal::BTreeShape& shape) {
  return shape.nodes * kAlign + RoundUp(shape.n * sizeof(typename Table::Slot));
}

// Lays a master bus out at `p` (TableBytes() bytes, 64-byte aligned).
template <typename A, typename D>
void Fill(const Bus<A, std::shared_ptr<D>>& bus,
          const range_search_internal::BTreeShape& shape,
          BusTable<A, D>* table, unsigned char* p) {
  using Table = BusTable<A, D>;
  using Value = typename Table::Value;
  static_assert(range_search_internal::kKeysPerNode<Value> * sizeof(Value) ==
                kAlign);
  auto* nodes = reinterpret_cast<Value*>(p);
  auto* slots =
      reinterpret_cast<typename Table::Slot*>(p + shape.nodes * kAlign);
  // FillBTree() writes every key of every node, padding included.
  range_search_internal::FillBTree(shape, SortedBases<A, D>{bus}, nodes);
  for (size_t i = 0; i < shape.n; ++i) {
    const BusEntry<A, const std::shared_ptr<D>> e = bus.At(i);
    new (&slots[i]) typename Table::Slot{e.range.last().value(), e.device->get()};
  }
  table->nodes = nodes;
  table->bases = shape.n == 0 ? nodes : shape.Leaves(nodes);
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
  auto* block = static_cast<unsigned char*>(
      allocator != nullptr ? allocator->allocate(total)
                           : ::operator new(total, std::align_val_t(kAlign)));
  auto* table = new (block) RangeTable();
  table->bytes_ = total;
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
  t->~RangeTable();
  if (allocator != nullptr) {
    allocator->deallocate(t, bytes);
  } else {
    ::operator delete(static_cast<void*>(t), std::align_val_t(kAlign));
  }
}

}  // namespace internal
}  // namespace vm_device
