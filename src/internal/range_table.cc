// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// RangeTable: building the immutable two-bus snapshot in one aligned block.

#include "src/internal/range_table.h"

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

template <typename T>
size_t ArrayBytes(size_t n) {
  return RoundUp(n * sizeof(T));
}

// The slot's device pointer: the device, with its dispatch tag (device.h) in
// the low bits (a device is at least 8-byte aligned: it has a vtable pointer).
template <typename D>
const D* TaggedDevice(const D& device) {
  static_assert(alignof(D) > kDispatchTagMask);
  return reinterpret_cast<const D*>(reinterpret_cast<uintptr_t>(&device) |
                                    DispatchTagAccess::Of(device));
}

// Lays a master bus out in Eytzinger order into the arrays at `keys` and
// `slots` (n + 1 elements each; element 0 unused).
template <typename A, typename D>
void Fill(const Bus<A, std::shared_ptr<D>>& bus, BusTable<A, D>* table,
          unsigned char* keys, unsigned char* slots) {
  using Table = BusTable<A, D>;
  auto* k = reinterpret_cast<typename Table::Value*>(keys);
  auto* s = reinterpret_cast<typename Table::Slot*>(slots);
  new (&k[0]) typename Table::Value(0);
  new (&s[0]) typename Table::Slot{0, nullptr};
  range_search_internal::ForEachEytzingerSlot(
      bus.size(), [&](size_t node, size_t i) {
        const BusEntry<A, const std::shared_ptr<D>> e = bus.At(i);
        new (&k[node]) typename Table::Value(e.range.base().value());
        new (&s[node]) typename Table::Slot{e.range.last().value(),
                                            TaggedDevice(**e.device)};
      });
  table->keys = k;
  table->slots = s;
  table->n = bus.size();
  table->levels = range_search_internal::EytzingerLevels(bus.size());
}

}  // namespace

RangeTablePtr RangeTable::Build(
    const Bus<PioAddress, std::shared_ptr<DevicePio>>& pio,
    const Bus<MmioAddress, std::shared_ptr<DeviceMmio>>& mmio) {
  const size_t header = RoundUp(sizeof(RangeTable));
  // n + 1 elements per array: Eytzinger index 0 is unused.
  const size_t pio_bases = ArrayBytes<PioTable::Value>(pio.size() + 1);
  const size_t pio_slots = ArrayBytes<PioTable::Slot>(pio.size() + 1);
  const size_t mmio_bases = ArrayBytes<MmioTable::Value>(mmio.size() + 1);
  const size_t mmio_slots = ArrayBytes<MmioTable::Slot>(mmio.size() + 1);
  const size_t total = header + pio_bases + pio_slots + mmio_bases + mmio_slots;

  auto* block = static_cast<unsigned char*>(
      ::operator new(total, std::align_val_t(kAlign)));
  auto* table = new (block) RangeTable();
  table->bytes_ = total;
  unsigned char* p = block + header;
  Fill(pio, &table->pio_, p, p + pio_bases);
  p += pio_bases + pio_slots;
  Fill(mmio, &table->mmio_, p, p + mmio_bases);  // neither Fill throws
  return RangeTablePtr(table);
}

void RangeTableDeleter::operator()(RangeTable* t) const {
  // Every member and array element is trivially destructible.
  t->~RangeTable();
  ::operator delete(static_cast<void*>(t), std::align_val_t(kAlign));
}

}  // namespace internal
}  // namespace vm_device
