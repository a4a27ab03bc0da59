// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: resources.h
// -----------------------------------------------------------------------------
//
// Device resources and their constraints, as the crate models them:
//
//   1. A VMM builds a device and asks it what it needs: `ResourceConstraint`s
//      (a PIO or MMIO window of some size and alignment, a legacy IRQ, MSI
//      vectors, KVM memory slots).
//   2. The VMM's allocator (not part of this library) turns them into
//      `Resource`s: concrete address ranges, IRQ numbers, slots, a MAC address.
//   3. The device gets its `DeviceResources`, and the VMM registers it on the
//      buses with `IoManager::RegisterResources()`.
//
// These are plain data: nothing here validates sizes, alignments or windows
// (the crate does not either). Address ranges are checked when they are
// registered (io_manager.h), where a zero-sized or overflowing range is an
// error naming the resource, never a crash.
//
// Example:
//
//   vm_device::DeviceResources res;
//   res.Append(vm_device::PioAddressRange{0x3f8, 8});
//   res.Append(vm_device::LegacyIrq{4});
//   res.GetLegacyIrq();              // 4
//   res.GetPioAddressRanges();       // {{0x3f8, 8}}
//
// Thread safety: values, like standard containers.
// Progress, memory ordering: not applicable (no concurrency).
// Lifetime: value semantics; `GetAllResources()` views storage that lives as
// long as the `DeviceResources` and its next `Append()`.

#ifndef VM_DEVICE_RESOURCES_H_
#define VM_DEVICE_RESOURCES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/types/span.h"
#include "vm_device/export.h"

namespace vm_device {

// -----------------------------------------------------------------------------
// Constraints
// -----------------------------------------------------------------------------

// PioAddressConstraint
//
// A request for `size` ports, aligned to `align`, optionally inside the
// inclusive window `range` = {min, max}.
struct PioAddressConstraint {
  std::optional<std::pair<uint16_t, uint16_t>> range;
  uint16_t align = 1;
  uint16_t size = 0;
  friend bool operator==(const PioAddressConstraint&,
                         const PioAddressConstraint&) = default;
};

// MmioAddressConstraint
//
// A request for `size` bytes of MMIO space, aligned to `align`, optionally
// inside the inclusive window `range` = {min, max}.
struct MmioAddressConstraint {
  std::optional<std::pair<uint64_t, uint64_t>> range;
  uint64_t align = 0x1000;
  uint64_t size = 0;
  friend bool operator==(const MmioAddressConstraint&,
                         const MmioAddressConstraint&) = default;
};

// LegacyIrqConstraint
//
// A legacy (INTx) interrupt; `irq` is a pre-chosen line to reserve, if any.
struct LegacyIrqConstraint {
  std::optional<uint32_t> irq;
  friend bool operator==(const LegacyIrqConstraint&,
                         const LegacyIrqConstraint&) = default;
};

// PciMsiIrqConstraint, PciMsixIrqConstraint, GenericIrqConstraint
//
// `size` interrupt vectors of each kind.
struct PciMsiIrqConstraint {
  uint32_t size = 0;
  friend bool operator==(const PciMsiIrqConstraint&,
                         const PciMsiIrqConstraint&) = default;
};
struct PciMsixIrqConstraint {
  uint32_t size = 0;
  friend bool operator==(const PciMsixIrqConstraint&,
                         const PciMsixIrqConstraint&) = default;
};
struct GenericIrqConstraint {
  uint32_t size = 0;
  friend bool operator==(const GenericIrqConstraint&,
                         const GenericIrqConstraint&) = default;
};

// KvmMemSlotConstraint
//
// `size` KVM memory slots; `slot` is the first slot index wanted, if any.
struct KvmMemSlotConstraint {
  std::optional<uint32_t> slot;
  uint32_t size = 0;
  friend bool operator==(const KvmMemSlotConstraint&,
                         const KvmMemSlotConstraint&) = default;
};

// ResourceConstraint
//
// One thing a device asks for. Build it with the functions below or as a
// literal of one of the structs.
using ResourceConstraint =
    std::variant<PioAddressConstraint, MmioAddressConstraint,
                 LegacyIrqConstraint, PciMsiIrqConstraint, PciMsixIrqConstraint,
                 GenericIrqConstraint, KvmMemSlotConstraint>;

// NewPioConstraint()
//
// `size` ports anywhere, alignment 1.
VM_DEVICE_EXPORT ResourceConstraint NewPioConstraint(uint16_t size);

// PioWithConstraints()
//
// `size` ports aligned to `align`, inside `range` if given.
VM_DEVICE_EXPORT ResourceConstraint PioWithConstraints(
    uint16_t size, std::optional<std::pair<uint16_t, uint16_t>> range,
    uint16_t align);

// NewMmioConstraint()
//
// `size` bytes of MMIO anywhere, aligned to a 4 KiB page (0x1000).
VM_DEVICE_EXPORT ResourceConstraint NewMmioConstraint(uint64_t size);

// MmioWithConstraints()
//
// `size` bytes aligned to `align`, inside `range` if given.
VM_DEVICE_EXPORT ResourceConstraint MmioWithConstraints(
    uint64_t size, std::optional<std::pair<uint64_t, uint64_t>> range,
    uint64_t align);

// NewLegacyIrqConstraint()
//
// A legacy IRQ, `irq` if given.
VM_DEVICE_EXPORT ResourceConstraint
NewLegacyIrqConstraint(std::optional<uint32_t> irq);

// NewKvmMemSlotConstraint()
//
// `size` KVM memory slots starting at `slot` if given. (Size first, as in the
// crate.)
VM_DEVICE_EXPORT ResourceConstraint
NewKvmMemSlotConstraint(uint32_t size, std::optional<uint32_t> slot);

// -----------------------------------------------------------------------------
// Resources
// -----------------------------------------------------------------------------

// PioAddressRange, MmioAddressRange
//
// An allocated address window: `size` addresses from `base`.
struct PioAddressRange {
  uint16_t base = 0;
  uint16_t size = 0;
  friend bool operator==(const PioAddressRange&,
                         const PioAddressRange&) = default;
};
struct MmioAddressRange {
  uint64_t base = 0;
  uint64_t size = 0;
  friend bool operator==(const MmioAddressRange&,
                         const MmioAddressRange&) = default;
};

// LegacyIrq
//
// An allocated legacy IRQ line.
struct LegacyIrq {
  uint32_t irq = 0;
  friend bool operator==(const LegacyIrq&, const LegacyIrq&) = default;
};

// MsiIrqType
//
// The kind of message-signalled interrupt.
enum class MsiIrqType : uint8_t { kPciMsi, kPciMsix, kGenericMsi };

// MsiIrq
//
// `size` allocated vectors of kind `type` starting at `base`.
struct MsiIrq {
  MsiIrqType type = MsiIrqType::kPciMsi;
  uint32_t base = 0;
  uint32_t size = 0;
  friend bool operator==(const MsiIrq&, const MsiIrq&) = default;
};

// MacAddress
//
// A network device's MAC address, as text. (The crate spells this variant
// `MacAddresss`.)
struct MacAddress {
  std::string address;
  friend bool operator==(const MacAddress&, const MacAddress&) = default;
};

// KvmMemSlot
//
// An allocated KVM memory slot index.
struct KvmMemSlot {
  uint32_t slot = 0;
  friend bool operator==(const KvmMemSlot&, const KvmMemSlot&) = default;
};

// Resource
//
// One allocated resource.
using Resource = std::variant<PioAddressRange, MmioAddressRange, LegacyIrq,
                              MsiIrq, MacAddress, KvmMemSlot>;

// DeviceResources
//
// The resources allocated to one device, in the order they were appended
// (duplicates allowed). Getters for address ranges and KVM slots return every
// match in order; getters for the legacy IRQ, each MSI kind and the MAC
// address return the first match.
class VM_DEVICE_EXPORT DeviceResources {
 public:
  DeviceResources() = default;

  // DeviceResources::Append()
  //
  // Adds `resource` at the end.
  void Append(Resource resource) { resources_.push_back(std::move(resource)); }

  // DeviceResources::GetPioAddressRanges()
  //
  // Every PIO range, as {base, size}, in order.
  std::vector<std::pair<uint16_t, uint16_t>> GetPioAddressRanges() const;

  // DeviceResources::GetMmioAddressRanges()
  //
  // Every MMIO range, as {base, size}, in order.
  std::vector<std::pair<uint64_t, uint64_t>> GetMmioAddressRanges() const;

  // DeviceResources::GetLegacyIrq()
  //
  // The first legacy IRQ.
  std::optional<uint32_t> GetLegacyIrq() const;

  // DeviceResources::GetPciMsiIrqs(), GetPciMsixIrqs(), GetGenericMsiIrqs()
  //
  // The first MSI block of each kind, as {base, size}.
  std::optional<std::pair<uint32_t, uint32_t>> GetPciMsiIrqs() const;
  std::optional<std::pair<uint32_t, uint32_t>> GetPciMsixIrqs() const;
  std::optional<std::pair<uint32_t, uint32_t>> GetGenericMsiIrqs() const;

  // DeviceResources::GetKvmMemSlots()
  //
  // Every KVM slot index, in order (not sorted).
  std::vector<uint32_t> GetKvmMemSlots() const;

  // DeviceResources::GetMacAddress()
  //
  // A copy of the first MAC address.
  std::optional<std::string> GetMacAddress() const;

  // DeviceResources::GetAllResources()
  //
  // Every resource, in order.
  absl::Span<const Resource> GetAllResources() const { return resources_; }

  friend bool operator==(const DeviceResources&,
                         const DeviceResources&) = default;

 private:
  std::optional<std::pair<uint32_t, uint32_t>> FirstMsi(MsiIrqType type) const;

  std::vector<Resource> resources_;
};

}  // namespace vm_device

#endif  // VM_DEVICE_RESOURCES_H_
