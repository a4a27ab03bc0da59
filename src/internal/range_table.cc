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

constexpr size_t RoundUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

template <typename T>
size_t ArrayBytes(size_t n) {
  return RoundUp(n * sizeof(T));
}

// Copies a master bus into the arrays at `bases` and `slots`.
template <typename A, typename D>
void Fill(const Bus<A, std::shared_ptr<D>>& bus, BusTable<A, D>* table,
          unsigned char* bases, unsigned char* slots) {
  using Table = BusTable<A, D>;
  auto* b = reinterpret_cast<typename Table::Value*>(bases);
  auto* s = reinterpret_cast<typename Table::Slot*>(slots);
  size_t i = 0;
  bus.ForEach([&](const BusRange<A>& range, const std::shared_ptr<D>& dev) {
    new (&b[i]) typename Table::Value(range.base().value());
    new (&s[i]) typename Table::Slot{range.last().value(), dev.get()};
    ++i;
  });
  table->bases = b;
  table->slots = s;
  table->n = i;
}

}  // namespace

RangeTablePtr RangeTable::Build(
    const Bus<PioAddress, std::shared_ptr<DevicePio>>& pio,
    const Bus<MmioAddress, std::shared_ptr<DeviceMmio>>& mmio) {
  const size_t header = RoundUp(sizeof(RangeTable));
  const size_t pio_bases = ArrayBytes<PioTable::Value>(pio.size());
  const size_t pio_slots = ArrayBytes<PioTable::Slot>(pio.size());
  const size_t mmio_bases = ArrayBytes<MmioTable::Value>(mmio.size());
  const size_t mmio_slots = ArrayBytes<MmioTable::Slot>(mmio.size());
  const size_t total = header + pio_bases + pio_slots + mmio_bases + mmio_slots;

  auto* block = static_cast<unsigned char*>(
      ::operator new(total, std::align_val_t(kAlign)));
  auto* table = new (block) RangeTable();
  table->bytes_ = total;
  unsigned char* p = block + header;
  Fill(pio, &table->pio_, p, p + pio_bases);
  p += pio_bases + pio_slots;
  Fill(mmio, &table->mmio_, p, p + mmio_bases);
  return RangeTablePtr(table);
}

void RangeTableDeleter::operator()(RangeTable* t) const {
  // Every member and array element is trivially destructible.
  t->~RangeTable();
  ::operator delete(static_cast<void*>(t), std::align_val_t(kAlign));
}

}  // namespace internal
}  // namespace vm_device
