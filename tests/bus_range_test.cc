// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of BusRange: the crate's test_bus_range (construction limits, the
// overlap table, base-only comparison) plus Contains, ToString and the
// messages of the port's checked factory.

#include "vm_device/bus_range.h"

#include <cstdint>
#include <limits>
#include <sstream>
#include <tuple>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "vm_device/address.h"

namespace vm_device {
namespace {

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

TEST(BusRange, ZeroSizeIsInvalidArgumentNamingTheBase) {
  absl::StatusOr<MmioRange> r = MmioRange::Create(MmioAddress(0), 0);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("size 0"), std::string::npos)
      << r.status();
  EXPECT_NE(r.status().message().find("base 0x0"), std::string::npos)
      << r.status();

  absl::StatusOr<PioRange> p = PioRange::Create(PioAddress(0x3f8), 0);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("PIO"), std::string::npos) << p.status();
  EXPECT_NE(p.status().message().find("0x3f8"), std::string::npos)
      << p.status();
}

TEST(BusRange, MmioSizeLimitsMatchTheCrate) {
  absl::StatusOr<MmioRange> a = MmioRange::Create(MmioAddress(0), kU64Max);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->last(), MmioAddress(kU64Max - 1));

  absl::StatusOr<MmioRange> b = MmioRange::Create(MmioAddress(1), kU64Max);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->last(), MmioAddress(kU64Max));

  absl::StatusOr<MmioRange> c = MmioRange::Create(MmioAddress(2), kU64Max);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("base 0x2"), std::string::npos)
      << c.status();
  EXPECT_NE(c.status().message().find("size 0xffffffffffffffff"),
            std::string::npos)
      << c.status();
  EXPECT_NE(c.status().message().find("MMIO"), std::string::npos) << c.status();
}

TEST(BusRange, PioRangeMayEndAtTheTopPort) {
  absl::StatusOr<PioRange> top = PioRange::Create(PioAddress(0xfff0), 0x10);
  ASSERT_TRUE(top.ok()) << top.status();
  EXPECT_EQ(top->last(), PioAddress(0xffff));

  absl::StatusOr<PioRange> over = PioRange::Create(PioAddress(0xfff1), 0x10);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(over.status().message().find("base 0xfff1"), std::string::npos)
      << over.status();
  EXPECT_NE(over.status().message().find("size 0x10"), std::string::npos)
      << over.status();
}

TEST(BusRange, IsValidAndInvalidRangeErrorAgreeWithCreate) {
  const std::tuple<uint16_t, uint16_t> cases[] = {
      {0, 0},      {0, 1},      {0, 0xffff},    {1, 0xffff},   {2, 0xffff},
      {0xffff, 1}, {0xffff, 2}, {0xfff0, 0x10}, {0xfff1, 0x10}};
  for (const auto& [base, size] : cases) {
    SCOPED_TRACE(testing::Message() << "base " << base << " size " << size);
    absl::StatusOr<PioRange> r = PioRange::Create(PioAddress(base), size);
    EXPECT_EQ(PioRange::IsValid(PioAddress(base), size), r.ok());
    if (!r.ok()) {
      EXPECT_EQ(r.status(),
                PioRange::InvalidRangeError(PioAddress(base), size));
    }
  }
}

TEST(BusRange, AccessorsOfAFiveByteRange) {
  absl::StatusOr<MmioRange> r = MmioRange::Create(MmioAddress(0), 5);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->base(), MmioAddress(0));
  EXPECT_EQ(r->size(), 5u);
  EXPECT_EQ(r->last(), MmioAddress(4));
  EXPECT_LT(r->base(), r->last());
}

TEST(BusRange, UnitRangeHoldsOneAddressAnywhere) {
  const MmioRange zero = MmioRange::Unit(MmioAddress(0));
  EXPECT_EQ(zero.last(), zero.base());
  EXPECT_EQ(zero.size(), 1u);

  const PioRange top = PioRange::Unit(PioAddress(0xffff));
  EXPECT_EQ(top.base(), PioAddress(0xffff));
  EXPECT_EQ(top.last(), PioAddress(0xffff));
  EXPECT_TRUE(top.Contains(PioAddress(0xffff)));
  EXPECT_FALSE(top.Contains(PioAddress(0xfffe)));

  const MmioRange mtop = MmioRange::Unit(MmioAddress(kU64Max));
  EXPECT_EQ(mtop.last(), MmioAddress(kU64Max));
  static_assert(PioRange::Unit(PioAddress(3)).last() == PioAddress(3));
}

// The crate's overlap table for a = [10, 19].
TEST(BusRange, OverlapTableOfTheCrate) {
  const MmioRange a = *MmioRange::Create(MmioAddress(10), 10);
  struct Row {
    uint64_t base;
    uint64_t size;
    bool overlaps;
  };
  const Row rows[] = {
      {0, 5, false}, {0, 10, false}, {5, 5, false},  {0, 11, true},
      {5, 6, true},  {5, 10, true},  {11, 15, true}, {5, 35, true},
      {19, 1, true}, {19, 10, true}, {20, 1, false}, {30, 10, false},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(testing::Message()
                 << "(" << row.base << ", " << row.size << ")");
    const MmioRange b = *MmioRange::Create(MmioAddress(row.base), row.size);
    EXPECT_EQ(a.Overlaps(b), row.overlaps);
    EXPECT_EQ(b.Overlaps(a), row.overlaps);  // symmetric
  }
  EXPECT_TRUE(a.Overlaps(a));
}

TEST(BusRange, OverlapAtTheTopOfTheAddressSpace) {
  const PioRange top = *PioRange::Create(PioAddress(0xfff0), 0x10);
  EXPECT_TRUE(top.Overlaps(PioRange::Unit(PioAddress(0xffff))));
  EXPECT_FALSE(top.Overlaps(PioRange::Unit(PioAddress(0xffef))));
  const PioRange whole = *PioRange::Create(PioAddress(0), 0xffff);
  EXPECT_TRUE(whole.Overlaps(PioRange::Unit(PioAddress(0xfffe))));
  EXPECT_FALSE(whole.Overlaps(PioRange::Unit(PioAddress(0xffff))));
}

TEST(BusRange, ContainsIsInclusiveOfBothEnds) {
  const PioRange r = *PioRange::Create(PioAddress(0x3f8), 8);
  EXPECT_FALSE(r.Contains(PioAddress(0x3f7)));
  EXPECT_TRUE(r.Contains(PioAddress(0x3f8)));
  EXPECT_TRUE(r.Contains(PioAddress(0x3fd)));
  EXPECT_TRUE(r.Contains(PioAddress(0x3ff)));
  EXPECT_FALSE(r.Contains(PioAddress(0x400)));
}

// The crate's comparison quirk: ranges compare by base only.
TEST(BusRange, EqualityAndOrderingLookAtTheBaseOnly) {
  const MmioRange a = *MmioRange::Create(MmioAddress(5), 1);
  const MmioRange b = *MmioRange::Create(MmioAddress(5), 100);
  EXPECT_TRUE(a == b);
  EXPECT_TRUE((a <=> b) == 0);
  EXPECT_TRUE((a <=> b) == std::strong_ordering::equal);
  EXPECT_NE(a.size(), b.size());

  const MmioRange c = MmioRange::Unit(MmioAddress(6));
  EXPECT_TRUE(a != c);
  EXPECT_TRUE((a <=> c) == std::strong_ordering::less);
  EXPECT_TRUE((c <=> a) == std::strong_ordering::greater);
  EXPECT_LT(b, c);  // larger size, smaller base: still less
  EXPECT_LE(a, b);
  EXPECT_GE(a, b);
}

TEST(BusRange, ToStringShowsBusAndInclusiveBounds) {
  EXPECT_EQ(PioRange::Create(PioAddress(0x3f8), 8)->ToString(),
            "PIO [0x3f8, 0x3ff]");
  EXPECT_EQ(MmioRange::Create(MmioAddress(0xfed00000), 0x400)->ToString(),
            "MMIO [0xfed00000, 0xfed003ff]");
  EXPECT_EQ(PioRange::Unit(PioAddress(0)).ToString(), "PIO [0x0, 0x0]");

  std::ostringstream os;
  os << MmioRange::Unit(MmioAddress(kU64Max));
  EXPECT_EQ(os.str(), "MMIO [0xffffffffffffffff, 0xffffffffffffffff]");
}

}  // namespace
}  // namespace vm_device
