// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Bus::Reserve grows the capacity geometrically: registering n ranges one at
// a time, with a Reserve(size() + 1) before each (what IoManager's writer does
// for every change), allocates O(log n) times, not once per range. This
// binary counts the calling thread's allocations with a replaced global
// operator new.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "gtest/gtest.h"
#include "vm_device/address.h"
#include "vm_device/bus.h"
#include "vm_device/bus_range.h"

namespace {

constinit thread_local long tls_allocations = 0;

void* Allocate(size_t n) {
  ++tls_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}

}  // namespace

void* operator new(size_t n) { return Allocate(n); }
void* operator new[](size_t n) { return Allocate(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace vm_device {
namespace {

TEST(BusReserve, OneRangeAtATimeAllocatesLogarithmically) {
  constexpr int kRanges = 4096;
  Bus<PioAddress, int> bus;
  const long before = tls_allocations;
  for (int i = 0; i < kRanges; ++i) {
    bus.Reserve(bus.size() + 1);
    const long reserved = tls_allocations;
    ASSERT_TRUE(bus.Register(*PioRange::Create(PioAddress(uint16_t(2 * i)), 1),
                             i)
                    .ok());
    // After Reserve, Register itself never allocates (it cannot fail for
    // lack of memory).
    ASSERT_EQ(tls_allocations, reserved) << "range " << i;
  }
  ASSERT_EQ(bus.size(), size_t{kRanges});
  // Two vectors, each doubling from 1 to 4096: 13 allocations each. One
  // allocation per range and vector (the old exact-size reserve) would be
  // 8192.
  EXPECT_LE(tls_allocations - before, 2 * 14);
}

TEST(BusReserve, ReservesAtLeastWhatIsAsked) {
  Bus<PioAddress, int> bus;
  bus.Reserve(1000);
  const long before = tls_allocations;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(
        bus.Register(*PioRange::Create(PioAddress(uint16_t(i)), 1), i).ok());
  }
  EXPECT_EQ(tls_allocations, before);
}

}  // namespace
}  // namespace vm_device
