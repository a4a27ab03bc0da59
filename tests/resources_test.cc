// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of the resources module: the crate's tests 8-17 on its fixture, its
// probe with duplicate resources, and the constraint constructors.

#include "vm_device/resources.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "gtest/gtest.h"

namespace vm_device {
namespace {

constexpr char kMac[] = "00:08:63:66:86:88";

// The crate's fixture.
DeviceResources CrateFixture() {
  DeviceResources res;
  res.Append(PioAddressRange{0, 5});
  res.Append(MmioAddressRange{0x1234'5678, 0x8765'4321});
  res.Append(LegacyIrq{0x168});
  res.Append(MsiIrq{MsiIrqType::kPciMsi, 0x6666, 0x8888});
  res.Append(MsiIrq{MsiIrqType::kPciMsix, 0x8888, 0x16666});
  res.Append(MsiIrq{MsiIrqType::kGenericMsi, 0x16688, 0x16888});
  res.Append(MacAddress{kMac});
  res.Append(KvmMemSlot{0x100});
  return res;
}

TEST(DeviceResources, GetPioAddressRanges) {
  const std::vector<std::pair<uint16_t, uint16_t>> pio =
      CrateFixture().GetPioAddressRanges();
  ASSERT_EQ(pio.size(), 1u);
  EXPECT_EQ(pio[0], std::make_pair(uint16_t{0}, uint16_t{5}));
}

TEST(DeviceResources, GetMmioAddressRanges) {
  const std::vector<std::pair<uint64_t, uint64_t>> mmio =
      CrateFixture().GetMmioAddressRanges();
  ASSERT_EQ(mmio.size(), 1u);
  EXPECT_EQ(mmio[0],
            std::make_pair(uint64_t{0x1234'5678}, uint64_t{0x8765'4321}));
}

TEST(DeviceResources, GetLegacyIrq) {
  EXPECT_EQ(CrateFixture().GetLegacyIrq(), 0x168u);
}

TEST(DeviceResources, GetPciMsiIrqs) {
  EXPECT_EQ(CrateFixture().GetPciMsiIrqs(),
            std::make_pair(uint32_t{0x6666}, uint32_t{0x8888}));
}

TEST(DeviceResources, GetPciMsixIrqs) {
  EXPECT_EQ(CrateFixture().GetPciMsixIrqs(),
            std::make_pair(uint32_t{0x8888}, uint32_t{0x16666}));
}

TEST(DeviceResources, GetGenericMsiIrqs) {
  EXPECT_EQ(CrateFixture().GetGenericMsiIrqs(),
            std::make_pair(uint32_t{0x16688}, uint32_t{0x16888}));
}

TEST(DeviceResources, GetMacAddress) {
  EXPECT_EQ(CrateFixture().GetMacAddress(), std::string(kMac));
}

TEST(DeviceResources, GetKvmMemSlots) {
  EXPECT_EQ(CrateFixture().GetKvmMemSlots(), std::vector<uint32_t>{0x100});
}

TEST(DeviceResources, GetAllResourcesKeepsAppendOrder) {
  const DeviceResources res = CrateFixture();
  absl::Span<const Resource> all = res.GetAllResources();
  ASSERT_EQ(all.size(), 8u);
  EXPECT_EQ(all[0], Resource(PioAddressRange{0, 5}));
  EXPECT_EQ(all[1], Resource(MmioAddressRange{0x1234'5678, 0x8765'4321}));
  EXPECT_EQ(all[2], Resource(LegacyIrq{0x168}));
  EXPECT_TRUE(std::holds_alternative<MsiIrq>(all[3]));
  EXPECT_EQ(std::get<MsiIrq>(all[4]).type, MsiIrqType::kPciMsix);
  EXPECT_EQ(std::get<MsiIrq>(all[5]).base, 0x16688u);
  EXPECT_EQ(all[6], Resource(MacAddress{kMac}));
  EXPECT_EQ(all[7], Resource(KvmMemSlot{0x100}));
}

// The crate's probe: ranges and slots give every match in order; the legacy
// IRQ, each MSI kind and the MAC the first match.
TEST(DeviceResources, DuplicatesRangesAllOthersFirst) {
  DeviceResources res;
  res.Append(LegacyIrq{1});
  res.Append(LegacyIrq{2});
  res.Append(PioAddressRange{1, 0});
  res.Append(PioAddressRange{2, 3});
  res.Append(MsiIrq{MsiIrqType::kPciMsi, 1, 2});
  res.Append(MsiIrq{MsiIrqType::kPciMsi, 3, 4});
  res.Append(KvmMemSlot{3});
  res.Append(KvmMemSlot{1});

  EXPECT_EQ(res.GetLegacyIrq(), 1u);
  EXPECT_EQ(res.GetPioAddressRanges(),
            (std::vector<std::pair<uint16_t, uint16_t>>{{1, 0}, {2, 3}}));
  EXPECT_EQ(res.GetPciMsiIrqs(), std::make_pair(uint32_t{1}, uint32_t{2}));
  EXPECT_EQ(res.GetPciMsixIrqs(), std::nullopt);
  EXPECT_EQ(res.GetKvmMemSlots(), (std::vector<uint32_t>{3, 1}));
  EXPECT_EQ(res.GetMacAddress(), std::nullopt);
  EXPECT_EQ(res.GetAllResources().size(), 8u);
}

TEST(DeviceResources, MoreDuplicates) {
  DeviceResources res;
  res.Append(MmioAddressRange{0x2000, 0x10});
  res.Append(MacAddress{"first"});
  res.Append(MsiIrq{MsiIrqType::kGenericMsi, 7, 1});
  res.Append(MmioAddressRange{0x1000, 0x10});
  res.Append(MacAddress{"second"});
  res.Append(MsiIrq{MsiIrqType::kGenericMsi, 9, 1});
  res.Append(MsiIrq{MsiIrqType::kPciMsix, 5, 6});
  EXPECT_EQ(res.GetMmioAddressRanges(),
            (std::vector<std::pair<uint64_t, uint64_t>>{{0x2000, 0x10},
                                                        {0x1000, 0x10}}));
  EXPECT_EQ(res.GetMacAddress(), "first");
  EXPECT_EQ(res.GetGenericMsiIrqs(), std::make_pair(uint32_t{7}, uint32_t{1}));
  EXPECT_EQ(res.GetPciMsixIrqs(), std::make_pair(uint32_t{5}, uint32_t{6}));
  EXPECT_EQ(res.GetPciMsiIrqs(), std::nullopt);
}

TEST(DeviceResources, EmptyHasNothing) {
  const DeviceResources res;
  EXPECT_TRUE(res.GetPioAddressRanges().empty());
  EXPECT_TRUE(res.GetMmioAddressRanges().empty());
  EXPECT_EQ(res.GetLegacyIrq(), std::nullopt);
  EXPECT_EQ(res.GetPciMsiIrqs(), std::nullopt);
  EXPECT_EQ(res.GetPciMsixIrqs(), std::nullopt);
  EXPECT_EQ(res.GetGenericMsiIrqs(), std::nullopt);
  EXPECT_TRUE(res.GetKvmMemSlots().empty());
  EXPECT_EQ(res.GetMacAddress(), std::nullopt);
  EXPECT_TRUE(res.GetAllResources().empty());
}

TEST(DeviceResources, ValueSemantics) {
  DeviceResources a = CrateFixture();
  DeviceResources b = a;
  EXPECT_EQ(a, b);
  b.Append(KvmMemSlot{0x200});
  EXPECT_FALSE(a == b);
  EXPECT_EQ(a.GetKvmMemSlots(), std::vector<uint32_t>{0x100});
  EXPECT_EQ(b.GetKvmMemSlots(), (std::vector<uint32_t>{0x100, 0x200}));
}

// Resources are plain data: nothing is validated when they are stored.
TEST(DeviceResources, StoresInvalidRangesUnchecked) {
  DeviceResources res;
  res.Append(PioAddressRange{0xffff, 0});
  res.Append(MmioAddressRange{0xffff'ffff'ffff'ffff, 2});
  EXPECT_EQ(res.GetPioAddressRanges(),
            (std::vector<std::pair<uint16_t, uint16_t>>{{0xffff, 0}}));
  EXPECT_EQ(res.GetMmioAddressRanges().size(), 1u);
}

// The crate's test_resource_constraint.
TEST(ResourceConstraint, ConstructorsMatchTheCrate) {
  EXPECT_EQ(std::get<PioAddressConstraint>(NewPioConstraint(2)),
            (PioAddressConstraint{std::nullopt, 1, 2}));

  const auto pio = std::get<PioAddressConstraint>(
      PioWithConstraints(2, std::make_pair(uint16_t{15}, uint16_t{16}), 2));
  EXPECT_EQ(pio.range, std::make_pair(uint16_t{15}, uint16_t{16}));
  EXPECT_EQ(pio.align, 2);
  EXPECT_EQ(pio.size, 2);

  EXPECT_EQ(std::get<MmioAddressConstraint>(NewMmioConstraint(0x2000)),
            (MmioAddressConstraint{std::nullopt, 0x1000, 0x2000}));

  const auto mmio = std::get<MmioAddressConstraint>(MmioWithConstraints(
      0x2000, std::make_pair(uint64_t{0}, uint64_t{0x2000}), 0x2000));
  EXPECT_EQ(mmio.range, std::make_pair(uint64_t{0}, uint64_t{0x2000}));
  EXPECT_EQ(mmio.align, 0x2000u);
  EXPECT_EQ(mmio.size, 0x2000u);

  const auto irq = std::get<LegacyIrqConstraint>(NewLegacyIrqConstraint(0x123));
  EXPECT_EQ(irq.irq, 0x123u);
  EXPECT_EQ(
      std::get<LegacyIrqConstraint>(NewLegacyIrqConstraint(std::nullopt)).irq,
      std::nullopt);

  // Size first, then slot, as in the crate.
  const auto slot =
      std::get<KvmMemSlotConstraint>(NewKvmMemSlotConstraint(0x1000, 0x2000));
  EXPECT_EQ(slot.slot, 0x2000u);
  EXPECT_EQ(slot.size, 0x1000u);
}

TEST(ResourceConstraint, DefaultsOfTheStructs) {
  EXPECT_EQ(PioAddressConstraint{}.align, 1);
  EXPECT_EQ(PioAddressConstraint{}.size, 0);
  EXPECT_EQ(PioAddressConstraint{}.range, std::nullopt);
  EXPECT_EQ(MmioAddressConstraint{}.align, 0x1000u);
  EXPECT_EQ(MmioAddressConstraint{}.size, 0u);
  EXPECT_EQ(LegacyIrqConstraint{}.irq, std::nullopt);
  EXPECT_EQ(KvmMemSlotConstraint{}.slot, std::nullopt);
  EXPECT_EQ(PciMsiIrqConstraint{}.size, 0u);
  // The constructors with no window agree with the struct defaults.
  EXPECT_EQ(std::get<PioAddressConstraint>(NewPioConstraint(0)),
            PioAddressConstraint{});
  EXPECT_EQ(std::get<MmioAddressConstraint>(NewMmioConstraint(0)),
            MmioAddressConstraint{});
}

TEST(ResourceConstraint, IrqVectorKindsAreLiterals) {
  const ResourceConstraint c[] = {
      PciMsiIrqConstraint{4}, PciMsixIrqConstraint{8}, GenericIrqConstraint{2}};
  EXPECT_EQ(std::get<PciMsiIrqConstraint>(c[0]).size, 4u);
  EXPECT_EQ(std::get<PciMsixIrqConstraint>(c[1]).size, 8u);
  EXPECT_EQ(std::get<GenericIrqConstraint>(c[2]).size, 2u);
  EXPECT_NE(c[0], ResourceConstraint(PciMsixIrqConstraint{4}));
}

// No validation: zero sizes, odd alignments and reversed windows are kept.
TEST(ResourceConstraint, NothingIsValidated) {
  const auto pio = std::get<PioAddressConstraint>(
      PioWithConstraints(0, std::make_pair(uint16_t{9}, uint16_t{1}), 3));
  EXPECT_EQ(pio, (PioAddressConstraint{std::make_pair(uint16_t{9}, uint16_t{1}),
                                       3, 0}));
  const auto mmio =
      std::get<MmioAddressConstraint>(MmioWithConstraints(7, std::nullopt, 0));
  EXPECT_EQ(mmio.align, 0u);
  EXPECT_EQ(mmio.size, 7u);
}

}  // namespace
}  // namespace vm_device
