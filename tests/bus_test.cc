// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of the generic Bus<A, D>: the crate's test_bus, the access-check
// edge cases its probes established, and what the port adds (ForEach,
// Overlapping, overlap messages, move-only handles).

#include "vm_device/bus.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "vm_device/address.h"
#include "vm_device/bus_range.h"
#include "vm_device/io_status.h"

namespace vm_device {
namespace {

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

MmioRange Mmio(uint64_t base, uint64_t size) {
  absl::StatusOr<MmioRange> r = MmioRange::Create(MmioAddress(base), size);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

PioRange Pio(uint16_t base, uint16_t size) {
  absl::StatusOr<PioRange> r = PioRange::Create(PioAddress(base), size);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

// The crate's test_bus, step by step.
TEST(Bus, CrateTestBus) {
  MmioBus<uint8_t> bus;
  const MmioRange range = Mmio(10, 10);

  EXPECT_EQ(bus.size(), 0u);
  EXPECT_TRUE(bus.empty());
  ASSERT_TRUE(bus.Register(range, 1).ok());
  EXPECT_EQ(bus.size(), 1u);
  EXPECT_FALSE(bus.empty());

  // Just outside the range.
  EXPECT_EQ(bus.Device(MmioAddress(9)), std::nullopt);
  EXPECT_EQ(bus.DeviceMut(MmioAddress(9)), std::nullopt);
  EXPECT_EQ(bus.Device(MmioAddress(20)), std::nullopt);
  EXPECT_EQ(bus.DeviceMut(MmioAddress(20)), std::nullopt);

  for (uint64_t offset = 0; offset < 10; ++offset) {
    const MmioAddress addr(10 + offset);
    SCOPED_TRACE(testing::Message() << addr);
    auto entry = bus.Device(addr);
    ASSERT_TRUE(entry.has_value());
    EXPECT_EQ(entry->range.base(), range.base());
    EXPECT_EQ(entry->range.size(), range.size());
    EXPECT_EQ(*entry->device, 1);
    auto mut_entry = bus.DeviceMut(addr);
    ASSERT_TRUE(mut_entry.has_value());
    EXPECT_EQ(mut_entry->range.size(), range.size());
    EXPECT_EQ(*mut_entry->device, 1);

    for (uint64_t start = 0; start < offset; ++start) {
      std::optional<BusEntry<MmioAddress, const uint8_t>> hit;
      EXPECT_EQ(bus.CheckAccess(MmioAddress(10 + start), offset - start, &hit),
                IoStatus::kOk)
          << "start " << start;
      ASSERT_TRUE(hit.has_value());
      EXPECT_EQ(hit->range.base(), range.base());
      EXPECT_EQ(hit->range.size(), range.size());
      EXPECT_EQ(*hit->device, 1);
    }
  }

  // The same range again, and ranges that overlap it.
  absl::Status again = bus.Register(range, 1);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
  for (const auto& [base, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {1, 10}, {19, 10}, {1, 119}}) {
    SCOPED_TRACE(testing::Message() << "(" << base << ", " << size << ")");
    EXPECT_EQ(bus.Register(Mmio(base, size), 1).code(),
              absl::StatusCode::kAlreadyExists);
    EXPECT_EQ(bus.CheckAccess(MmioAddress(base), size),
              IoStatus::kDeviceNotFound);
  }
  EXPECT_EQ(bus.size(), 1u);

  // An adjacent range, registered and deregistered by each of its addresses.
  const MmioRange next = Mmio(20, 5);
  EXPECT_EQ(bus.CheckAccess(next.base(), next.size()),
            IoStatus::kDeviceNotFound);
  for (uint64_t a = 20; a < 25; ++a) {
    SCOPED_TRACE(testing::Message() << "deregister at " << a);
    ASSERT_TRUE(bus.Register(next, 2).ok());
    EXPECT_EQ(bus.size(), 2u);
    auto gone = bus.Deregister(MmioAddress(a));
    ASSERT_TRUE(gone.has_value());
    EXPECT_EQ(gone->first, next);
    EXPECT_EQ(gone->first.size(), next.size());
    EXPECT_EQ(gone->second, 2);
    EXPECT_EQ(bus.size(), 1u);
    EXPECT_EQ(bus.Deregister(MmioAddress(a)), std::nullopt);
  }

  // An access that spans two adjacent ranges is refused, even when both
  // ranges belong to the same device.
  ASSERT_TRUE(bus.Register(next, 1).ok());
  EXPECT_EQ(bus.CheckAccess(MmioAddress(10), 11), IoStatus::kDeviceNotFound);
  EXPECT_EQ(bus.CheckAccess(MmioAddress(19), 2), IoStatus::kDeviceNotFound);
  EXPECT_EQ(bus.CheckAccess(MmioAddress(10), 10), IoStatus::kOk);
  EXPECT_EQ(bus.CheckAccess(MmioAddress(20), 5), IoStatus::kOk);

  PioBus<uint8_t> pio_bus;
  ASSERT_TRUE(pio_bus.Register(Pio(10, 10), 1).ok());
  EXPECT_EQ(
      pio_bus.CheckAccess(PioAddress(10), std::numeric_limits<size_t>::max()),
      IoStatus::kInvalidAccessLength);
}

TEST(Bus, OverlapErrorNamesBothRanges) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(0x3f8, 8), 1).ok());
  absl::Status s = bus.Register(Pio(0x3fc, 8), 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(s.message().find("PIO [0x3fc, 0x403]"), std::string::npos) << s;
  EXPECT_NE(s.message().find("PIO [0x3f8, 0x3ff]"), std::string::npos) << s;
}

TEST(Bus, FailedRegisterLeavesTheBusUnchanged) {
  MmioBus<int> bus;
  ASSERT_TRUE(bus.Register(Mmio(0x1000, 0x100), 1).ok());
  ASSERT_TRUE(bus.Register(Mmio(0x2000, 0x100), 2).ok());
  EXPECT_FALSE(bus.Register(Mmio(0x10ff, 0xf02), 3).ok());  // touches both
  EXPECT_EQ(bus.size(), 2u);
  EXPECT_EQ(*bus.Device(MmioAddress(0x10ff))->device, 1);
  EXPECT_EQ(*bus.Device(MmioAddress(0x2000))->device, 2);
  EXPECT_EQ(bus.Device(MmioAddress(0x1800)), std::nullopt);
}

TEST(Bus, RangesMayFillAGapExactly) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(10, 10), 1).ok());
  ASSERT_TRUE(bus.Register(Pio(30, 10), 3).ok());
  EXPECT_EQ(bus.Register(Pio(19, 11), 9).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(bus.Register(Pio(20, 11), 9).code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(bus.Register(Pio(20, 10), 2).ok());
  EXPECT_EQ(bus.size(), 3u);
  for (uint16_t a = 10; a < 40; ++a) {
    EXPECT_EQ(*bus.Device(PioAddress(a))->device, 1 + (a - 10) / 10) << a;
  }
  // Still one access per range.
  EXPECT_EQ(bus.CheckAccess(PioAddress(18), 4), IoStatus::kDeviceNotFound);
}

TEST(Bus, DeregisterByInteriorAddressReturnsTheWholeRange) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(0x10, 8), 7).ok());
  auto gone = bus.Deregister(PioAddress(0x15));
  ASSERT_TRUE(gone.has_value());
  EXPECT_EQ(gone->first.base(), PioAddress(0x10));
  EXPECT_EQ(gone->first.size(), 8u);
  EXPECT_EQ(gone->second, 7);
  EXPECT_TRUE(bus.empty());
  EXPECT_EQ(bus.Deregister(PioAddress(0x10)), std::nullopt);
}

TEST(Bus, DeviceMutChangesTheStoredHandle) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(0x60, 1), 1).ok());
  ASSERT_TRUE(bus.Register(Pio(0x64, 1), 2).ok());
  *bus.DeviceMut(PioAddress(0x64))->device = 42;
  EXPECT_EQ(*bus.Device(PioAddress(0x64))->device, 42);
  EXPECT_EQ(*bus.Device(PioAddress(0x60))->device, 1);
}

TEST(Bus, ZeroLengthAccessIsInvalidRangeMappedOrNot) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(0x10, 8), 1).ok());
  EXPECT_EQ(bus.CheckAccess(PioAddress(0x10), 0), IoStatus::kInvalidRange);
  EXPECT_EQ(bus.CheckAccess(PioAddress(0x100), 0), IoStatus::kInvalidRange);
  MmioBus<int> mmio;
  EXPECT_EQ(mmio.CheckAccess(MmioAddress(0), 0), IoStatus::kInvalidRange);
}

// Length fits the size type (1), then the access is a valid range (2), then
// one range holds it (3).
TEST(Bus, CheckAccessChecksLengthThenShapeThenLookup) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(0x10, 8), 1).ok());
  // 1 before 2 and 3: unmapped and overflowing, but the length is the error.
  EXPECT_EQ(bus.CheckAccess(PioAddress(0xffff), 65536),
            IoStatus::kInvalidAccessLength);
  EXPECT_EQ(bus.CheckAccess(PioAddress(0x10), 65536),
            IoStatus::kInvalidAccessLength);
  EXPECT_EQ(
      bus.CheckAccess(PioAddress(0x10), std::numeric_limits<size_t>::max()),
      IoStatus::kInvalidAccessLength);
  // 2 before 3: the largest length that fits, but it runs past 0xffff.
  EXPECT_EQ(bus.CheckAccess(PioAddress(0x10), 65535), IoStatus::kInvalidRange);
  EXPECT_EQ(bus.CheckAccess(PioAddress(0x500), 0xfb01),
            IoStatus::kInvalidRange);
  // 65535 bytes from 0 fits the address space; there is just no device.
  EXPECT_EQ(bus.CheckAccess(PioAddress(0), 65535), IoStatus::kDeviceNotFound);
}

TEST(Bus, AccessMustFitInsideTheRange) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(0x10, 8), 1).ok());  // [0x10, 0x17]
  EXPECT_EQ(bus.CheckAccess(PioAddress(0x16), 4), IoStatus::kDeviceNotFound);
  EXPECT_EQ(bus.CheckAccess(PioAddress(0x0e), 4), IoStatus::kDeviceNotFound);
  std::optional<BusEntry<PioAddress, const int>> hit;
  ASSERT_EQ(bus.CheckAccess(PioAddress(0x14), 4, &hit), IoStatus::kOk);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->range.base(), PioAddress(0x10));
  EXPECT_EQ(PioAddress(0x14) - hit->range.base(), 4);
  EXPECT_EQ(*hit->device, 1);
}

TEST(Bus, CheckAccessLeavesEntryAloneOnFailure) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(0x10, 8), 1).ok());
  std::optional<BusEntry<PioAddress, const int>> hit;
  EXPECT_EQ(bus.CheckAccess(PioAddress(0x20), 1, &hit),
            IoStatus::kDeviceNotFound);
  EXPECT_FALSE(hit.has_value());
}

TEST(Bus, MmioAccessAtTheLastByteOfARange) {
  MmioBus<int> bus;
  ASSERT_TRUE(bus.Register(Mmio(0x1000, 0x100), 1).ok());  // [0x1000, 0x10ff]
  std::optional<BusEntry<MmioAddress, const int>> hit;
  ASSERT_EQ(bus.CheckAccess(MmioAddress(0x10ff), 1, &hit), IoStatus::kOk);
  EXPECT_EQ(MmioAddress(0x10ff) - hit->range.base(), 255u);
  EXPECT_EQ(bus.CheckAccess(MmioAddress(0x10ff), 2), IoStatus::kDeviceNotFound);
}

TEST(Bus, TopOfTheMmioSpace) {
  MmioBus<int> bus;
  EXPECT_EQ(bus.CheckAccess(MmioAddress(kU64Max), 2), IoStatus::kInvalidRange);
  ASSERT_TRUE(bus.Register(Mmio(kU64Max - 0xf, 0x10), 1).ok());
  EXPECT_EQ(bus.CheckAccess(MmioAddress(kU64Max), 1), IoStatus::kOk);
  EXPECT_EQ(bus.CheckAccess(MmioAddress(kU64Max - 0xf), 0x10), IoStatus::kOk);
  EXPECT_EQ(bus.CheckAccess(MmioAddress(kU64Max), 2), IoStatus::kInvalidRange);
  EXPECT_EQ(bus.CheckAccess(MmioAddress(kU64Max - 0xf), 0x11),
            IoStatus::kInvalidRange);
  ASSERT_TRUE(bus.Device(MmioAddress(kU64Max)).has_value());
  EXPECT_EQ(bus.Device(MmioAddress(kU64Max))->range.last(),
            MmioAddress(kU64Max));
  EXPECT_EQ(bus.Device(MmioAddress(kU64Max - 0x10)), std::nullopt);
}

TEST(Bus, TopPortAcceptsOneByteOnly) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(PioRange::Unit(PioAddress(0xffff)), 1).ok());
  EXPECT_EQ(bus.CheckAccess(PioAddress(0xffff), 1), IoStatus::kOk);
  EXPECT_EQ(bus.CheckAccess(PioAddress(0xffff), 2), IoStatus::kInvalidRange);
  EXPECT_EQ(*bus.Device(PioAddress(0xffff))->device, 1);
  EXPECT_EQ(bus.Device(PioAddress(0xfffe)), std::nullopt);
  // A range ending at the top next to it.
  ASSERT_TRUE(bus.Register(Pio(0xfff0, 0xf), 2).ok());
  EXPECT_EQ(bus.Register(Pio(0xfff0, 0x10), 3).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(Bus, AddressZeroAndEmptyBus) {
  PioBus<int> bus;
  EXPECT_EQ(bus.Device(PioAddress(0)), std::nullopt);
  EXPECT_EQ(bus.CheckAccess(PioAddress(0), 1), IoStatus::kDeviceNotFound);
  EXPECT_EQ(bus.Deregister(PioAddress(0)), std::nullopt);
  ASSERT_TRUE(bus.Register(PioRange::Unit(PioAddress(0)), 5).ok());
  EXPECT_EQ(*bus.Device(PioAddress(0))->device, 5);
  EXPECT_EQ(bus.Device(PioAddress(1)), std::nullopt);
}

TEST(Bus, ForEachVisitsRangesInAddressOrder) {
  PioBus<int> bus;
  ASSERT_TRUE(bus.Register(Pio(0x60, 1), 3).ok());
  ASSERT_TRUE(bus.Register(Pio(0x20, 2), 1).ok());
  ASSERT_TRUE(bus.Register(Pio(0x40, 4), 2).ok());
  std::vector<std::pair<uint16_t, int>> seen;
  bus.ForEach([&](const PioRange& r, const int& d) {
    seen.emplace_back(r.base().value(), d);
  });
  EXPECT_EQ(seen, (std::vector<std::pair<uint16_t, int>>{
                      {0x20, 1}, {0x40, 2}, {0x60, 3}}));
}

TEST(Bus, OverlappingFindsTheClashingRange) {
  MmioBus<int> bus;
  ASSERT_TRUE(bus.Register(Mmio(0x1000, 0x1000), 1).ok());
  ASSERT_TRUE(bus.Register(Mmio(0x3000, 0x1000), 2).ok());
  EXPECT_EQ(bus.Overlapping(Mmio(0x2000, 0x1000)), std::nullopt);
  std::optional<MmioRange> left = bus.Overlapping(Mmio(0x1fff, 2));
  ASSERT_TRUE(left.has_value());
  EXPECT_EQ(left->base(), MmioAddress(0x1000));
  std::optional<MmioRange> right = bus.Overlapping(Mmio(0x2000, 0x1001));
  ASSERT_TRUE(right.has_value());
  EXPECT_EQ(right->base(), MmioAddress(0x3000));
  std::optional<MmioRange> inside = bus.Overlapping(Mmio(0x3100, 1));
  ASSERT_TRUE(inside.has_value());
  EXPECT_EQ(inside->base(), MmioAddress(0x3000));
}

TEST(Bus, HoldsMoveOnlyHandles) {
  PioBus<std::unique_ptr<int>> bus;
  ASSERT_TRUE(bus.Register(Pio(0x10, 4), std::make_unique<int>(1)).ok());
  EXPECT_FALSE(bus.Register(Pio(0x12, 4), std::make_unique<int>(2)).ok());
  EXPECT_EQ(**bus.Device(PioAddress(0x13))->device, 1);
  auto gone = bus.Deregister(PioAddress(0x11));
  ASSERT_TRUE(gone.has_value());
  ASSERT_NE(gone->second, nullptr);
  EXPECT_EQ(*gone->second, 1);
}

TEST(Bus, CopiesAreIndependent) {
  PioBus<int> a;
  ASSERT_TRUE(a.Register(Pio(0x10, 4), 1).ok());
  PioBus<int> b = a;
  ASSERT_TRUE(b.Register(Pio(0x20, 4), 2).ok());
  ASSERT_TRUE(a.Deregister(PioAddress(0x10)).has_value());
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(b.size(), 2u);
  EXPECT_EQ(*b.Device(PioAddress(0x10))->device, 1);
}

// Many ranges registered in random order: every address finds its own range
// (exercises the binary search at every size up to 256).
TEST(Bus, ManyRangesInRandomOrder) {
  MmioBus<int> bus;
  std::vector<int> order(256);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(12345);
  std::shuffle(order.begin(), order.end(), rng);
  // Range i is [i * 0x100 + 0x10, i * 0x100 + 0x8f]; gaps between.
  for (size_t k = 0; k < order.size(); ++k) {
    const int i = order[k];
    ASSERT_TRUE(bus.Register(Mmio(i * 0x100 + 0x10, 0x80), i).ok());
    for (size_t j = 0; j <= k; ++j) {
      const int r = order[j];
      ASSERT_EQ(*bus.Device(MmioAddress(r * 0x100 + 0x10))->device, r);
      ASSERT_EQ(*bus.Device(MmioAddress(r * 0x100 + 0x8f))->device, r);
      ASSERT_EQ(bus.Device(MmioAddress(r * 0x100 + 0x90)), std::nullopt);
      ASSERT_EQ(bus.Device(MmioAddress(r * 0x100 + 0x0f)), std::nullopt);
    }
  }
  EXPECT_EQ(bus.size(), 256u);
  std::shuffle(order.begin(), order.end(), rng);
  for (int i : order) {
    auto gone = bus.Deregister(MmioAddress(i * 0x100 + 0x40));
    ASSERT_TRUE(gone.has_value());
    EXPECT_EQ(gone->second, i);
    EXPECT_EQ(bus.Device(MmioAddress(i * 0x100 + 0x40)), std::nullopt);
  }
  EXPECT_TRUE(bus.empty());
}

}  // namespace
}  // namespace vm_device
