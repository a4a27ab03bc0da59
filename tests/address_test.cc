// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of PioAddress / MmioAddress: the crate's test_address_ops for both
// buses, plus the printing, ordering and type-safety this port adds.

#include "vm_device/address.h"

#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <type_traits>

#include "gtest/gtest.h"

namespace vm_device {
namespace {

template <typename A>
class AddressTest : public testing::Test {};

using AddressTypes = testing::Types<PioAddress, MmioAddress>;
TYPED_TEST_SUITE(AddressTest, AddressTypes);

// The crate's test_address_ops, once per bus.
TYPED_TEST(AddressTest, ArithmeticMatchesTheCrate) {
  using A = TypeParam;
  using V = typename A::Value;
  const A zero(0);
  const A five = zero + V{5};

  EXPECT_GT(five, zero);
  EXPECT_EQ(five - zero, V{5});
  EXPECT_EQ(five.value(), V{5});
  ASSERT_TRUE(zero.CheckedAdd(5).has_value());
  EXPECT_EQ(*zero.CheckedAdd(5), five);

  const std::optional<A> max = zero.CheckedAdd(std::numeric_limits<V>::max());
  ASSERT_TRUE(max.has_value());
  EXPECT_EQ(max->value(), std::numeric_limits<V>::max());
  EXPECT_EQ(max->CheckedAdd(1), std::nullopt);
}

TYPED_TEST(AddressTest, CheckedAddStopsExactlyAtTheTopAddress) {
  using A = TypeParam;
  using V = typename A::Value;
  constexpr V kMax = std::numeric_limits<V>::max();
  EXPECT_EQ(A::kMax, kMax);

  EXPECT_EQ(A(kMax).CheckedAdd(0), A(kMax));
  EXPECT_EQ(A(kMax - 1).CheckedAdd(1), A(kMax));
  EXPECT_EQ(A(kMax - 1).CheckedAdd(2), std::nullopt);
  EXPECT_EQ(A(1).CheckedAdd(kMax), std::nullopt);
  EXPECT_EQ(A(0x10).CheckedAdd(kMax - 0x10), A(kMax));
  EXPECT_EQ(A(0x10).CheckedAdd(kMax - 0xf), std::nullopt);
}

TYPED_TEST(AddressTest, DefaultIsZero) {
  using A = TypeParam;
  EXPECT_EQ(A().value(), 0u);
  EXPECT_EQ(A(), A(0));
}

TYPED_TEST(AddressTest, SubtractionIsTheDistanceUp) {
  using A = TypeParam;
  using V = typename A::Value;
  EXPECT_EQ(A(0x3fd) - A(0x3f8), V{5});
  EXPECT_EQ(A(0x3f8) - A(0x3f8), V{0});
  EXPECT_EQ(A(A::kMax) - A(0), A::kMax);
}

TYPED_TEST(AddressTest, OrderingFollowsTheValue) {
  using A = TypeParam;
  const A a(1), b(2), top(A::kMax);
  EXPECT_LT(a, b);
  EXPECT_LE(a, a);
  EXPECT_GT(top, b);
  EXPECT_GE(b, a);
  EXPECT_NE(a, b);
  EXPECT_EQ(a, A(1));
  EXPECT_TRUE((a <=> b) < 0);
  EXPECT_TRUE((b <=> a) > 0);
  EXPECT_TRUE((a <=> A(1)) == 0);
}

TEST(Address, PrintsTypeNameAndHexValue) {
  std::ostringstream os;
  os << PioAddress(0x3f8) << " " << MmioAddress(0xfee00000) << " "
     << PioAddress(0) << " " << MmioAddress(MmioAddress::kMax);
  EXPECT_EQ(os.str(),
            "PioAddress(0x3f8) MmioAddress(0xfee00000) PioAddress(0x0) "
            "MmioAddress(0xffffffffffffffff)");
}

TEST(Address, PrintingRestoresStreamFlags) {
  std::ostringstream os;
  os << PioAddress(0x10) << " " << 10;
  EXPECT_EQ(os.str(), "PioAddress(0x10) 10");
}

TEST(Address, HasTheWidthOfItsBus) {
  static_assert(std::is_same_v<PioAddress::Value, uint16_t>);
  static_assert(std::is_same_v<MmioAddress::Value, uint64_t>);
  static_assert(std::is_same_v<PioAddressOffset, uint16_t>);
  static_assert(std::is_same_v<MmioAddressOffset, uint64_t>);
  EXPECT_EQ(PioAddress::kMax, 0xffffu);
  EXPECT_EQ(MmioAddress::kMax, 0xffffffffffffffffu);
  EXPECT_STREQ(PioAddress::kBusName, "PIO");
  EXPECT_STREQ(MmioAddress::kBusName, "MMIO");
}

TEST(Address, TypesDoNotMixOrConvertImplicitly) {
  static_assert(!std::is_convertible_v<PioAddress, MmioAddress>);
  static_assert(!std::is_convertible_v<MmioAddress, PioAddress>);
  static_assert(!std::is_convertible_v<uint16_t, PioAddress>);
  static_assert(!std::is_convertible_v<uint64_t, MmioAddress>);
  static_assert(std::is_trivially_copyable_v<PioAddress>);
  static_assert(std::is_trivially_copyable_v<MmioAddress>);
  // Usable in constant expressions.
  static_assert((PioAddress(0x3f8) + PioAddressOffset{5}).value() == 0x3fd);
  static_assert(!PioAddress(0xffff).CheckedAdd(1).has_value());
  SUCCEED();
}

}  // namespace
}  // namespace vm_device
