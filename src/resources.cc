// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Device resources and constraints: constructors and DeviceResources getters.

#include "vm_device/resources.h"

#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace vm_device {

ResourceConstraint NewPioConstraint(uint16_t size) {
  return PioAddressConstraint{std::nullopt, /*align=*/1, size};
}

ResourceConstraint PioWithConstraints(
    uint16_t size, std::optional<std::pair<uint16_t, uint16_t>> range,
    uint16_t align) {
  return PioAddressConstraint{range, align, size};
}

ResourceConstraint NewMmioConstraint(uint64_t size) {
  return MmioAddressConstraint{std::nullopt, /*align=*/0x1000, size};
}

ResourceConstraint MmioWithConstraints(
    uint64_t size, std::optional<std::pair<uint64_t, uint64_t>> range,
    uint64_t align) {
  return MmioAddressConstraint{range, align, size};
}

ResourceConstraint NewLegacyIrqConstraint(std::optional<uint32_t> irq) {
  return LegacyIrqConstraint{irq};
}

ResourceConstraint NewKvmMemSlotConstraint(uint32_t size,
                                           std::optional<uint32_t> slot) {
  return KvmMemSlotConstraint{slot, size};
}

std::vector<std::pair<uint16_t, uint16_t>>
DeviceResources::GetPioAddressRanges() const {
  std::vector<std::pair<uint16_t, uint16_t>> out;
  for (const Resource& r : resources_) {
    if (const auto* p = std::get_if<PioAddressRange>(&r)) {
      out.emplace_back(p->base, p->size);
    }
  }
  return out;
}

std::vector<std::pair<uint64_t, uint64_t>>
DeviceResources::GetMmioAddressRanges() const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const Resource& r : resources_) {
    if (const auto* m = std::get_if<MmioAddressRange>(&r)) {
      out.emplace_back(m->base, m->size);
    }
  }
  return out;
}

std::optional<uint32_t> DeviceResources::GetLegacyIrq() const {
  for (const Resource& r : resources_) {
    if (const auto* irq = std::get_if<LegacyIrq>(&r)) return irq->irq;
  }
  return std::nullopt;
}

std::optional<std::pair<uint32_t, uint32_t>> DeviceResources::FirstMsi(
    MsiIrqType type) const {
  for (const Resource& r : resources_) {
    const auto* msi = std::get_if<MsiIrq>(&r);
    if (msi != nullptr && msi->type == type) {
      return std::make_pair(msi->base, msi->size);
    }
  }
  return std::nullopt;
}

std::optional<std::pair<uint32_t, uint32_t>> DeviceResources::GetPciMsiIrqs()
    const {
  return FirstMsi(MsiIrqType::kPciMsi);
}

std::optional<std::pair<uint32_t, uint32_t>> DeviceResources::GetPciMsixIrqs()
    const {
  return FirstMsi(MsiIrqType::kPciMsix);
}

std::optional<std::pair<uint32_t, uint32_t>>
DeviceResources::GetGenericMsiIrqs() const {
  return FirstMsi(MsiIrqType::kGenericMsi);
}

std::vector<uint32_t> DeviceResources::GetKvmMemSlots() const {
  std::vector<uint32_t> out;
  for (const Resource& r : resources_) {
    if (const auto* s = std::get_if<KvmMemSlot>(&r)) out.push_back(s->slot);
  }
  return out;
}

std::optional<std::string> DeviceResources::GetMacAddress() const {
  for (const Resource& r : resources_) {
    if (const auto* mac = std::get_if<MacAddress>(&r)) return mac->address;
  }
  return std::nullopt;
}

}  // namespace vm_device
