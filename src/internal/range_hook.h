// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: src/internal/range_hook.h
// -----------------------------------------------------------------------------
//
// `PioHook` / `MmioHook`: the device object behind a range registered with
// access rules (access_rules.h) and/or as a doorbell (doorbell.h). It is an
// ordinary `DevicePio` / `DeviceMmio` to the writer side, so it goes through
// registration, batches, moves, resources and retirement like any device,
// and the rules and the doorbell travel with it. Its dispatch tag
// (kDispatchHook) sends the bus's dispatch to `Read()` / `Write()` below,
// which return an IoStatus; its crate-signature handlers (for direct calls,
// e.g. through `IoManager::PioDevice()`) run the same code and turn a refusal
// into an open-bus answer (reads of all ones, writes dropped).
//
// Thread safety: immutable after construction; any number of threads.
// Progress: Read()/Write() are wait-free apart from the eventfd write(2) of a
// ring (which does not block unless the eventfd's counter is saturated at
// 2^64 - 2 and the eventfd is blocking) and the device's own handler.

#ifndef VM_DEVICE_SRC_INTERNAL_RANGE_HOOK_H_
#define VM_DEVICE_SRC_INTERNAL_RANGE_HOOK_H_

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/types/span.h"
#include "vm_device/address.h"
#include "vm_device/device.h"
#include "vm_device/io_status.h"

namespace vm_device {
namespace internal {

// An owned file descriptor (a dup of the caller's eventfd), closed when the
// last hook using it is destroyed: after a grace period once its range is
// gone, so no vCPU can still write to it (or to a reused number).
class OwnedFd {
 public:
  explicit OwnedFd(int fd) : fd_(fd) {}
  ~OwnedFd() { ::close(fd_); }
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// HookConfig
//
// What a hook checks. Validated by the factories (access_rules.cc,
// doorbell.cc) before a hook is built.
struct HookConfig {
  // Access rules (checked first, on every access).
  bool has_rules = false;
  uint32_t min_size = 1;
  uint32_t max_size = 0;   // 0: no maximum
  uint32_t alignment = 1;  // power of two; applies to the offset in the range
  bool natural_alignment = false;  // offset % size == 0
  // Doorbell (a write that matches rings `eventfd`).
  std::shared_ptr<const OwnedFd> eventfd;  // null: not a doorbell
  uint32_t match_size = 0;                 // 0: any size
  bool match_value = false;
  uint64_t value = 0;
  bool any_offset = false;  // false: only writes at offset 0 ring

  ABSL_ATTRIBUTE_ALWAYS_INLINE bool Allows(uint64_t offset,
                                           size_t size) const {
    if (!has_rules) return true;
    return size >= min_size && (max_size == 0 || size <= max_size) &&
           (offset & (alignment - 1)) == 0 &&
           (!natural_alignment || offset % size == 0);
  }

  ABSL_ATTRIBUTE_ALWAYS_INLINE bool Rings(
      uint64_t offset, absl::Span<const uint8_t> data) const {
    if (eventfd == nullptr) return false;
    if (!any_offset && offset != 0) return false;
    if (match_size != 0 && data.size() != match_size) return false;
    if (!match_value) return true;
    uint64_t v = 0;  // little-endian, whatever the host's byte order
    for (size_t i = data.size(); i-- > 0;) v = (v << 8) | data[i];
    return v == value;
  }

  // Adds one to the eventfd's counter.
  void Ring() const {
    const uint64_t one = 1;
    // The result is not looked at: an eventfd write of 1 fails only when the
    // counter is saturated (EAGAIN on a non-blocking eventfd), and then the
    // reader has a non-zero count to act on anyway.
    [[maybe_unused]] ssize_t r = ::write(eventfd->get(), &one, sizeof(one));
  }
};

// HookCore
//
// The bus-independent part of a hook: its config and the device behind it
// (the ruled device, or the doorbell's fallback; may be null for a doorbell).
template <typename A, typename D>
class HookCore {
 public:
  using Value = typename A::Value;

  HookCore(HookConfig config, std::shared_ptr<D> device)
      : config_(std::move(config)), device_(std::move(device)) {}

  const HookConfig& config() const { return config_; }
  const std::shared_ptr<D>& device() const { return device_; }

  // HookCore::Read(), HookCore::Write()
  //
  // One access through the hook: kAccessRuleViolation, a ring (writes),
  // the device, or kDoorbellUnmatched.
  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus Read(A base, Value offset,
                                             absl::Span<uint8_t> data) const {
    if (!config_.Allows(offset, data.size())) {
      return IoStatus::kAccessRuleViolation;
    }
    if (device_ == nullptr) return IoStatus::kDoorbellUnmatched;
    CallRead(*device_, base, offset, data);
    return IoStatus::kOk;
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus
  Write(A base, Value offset, absl::Span<const uint8_t> data) const {
    if (!config_.Allows(offset, data.size())) {
      return IoStatus::kAccessRuleViolation;
    }
    if (config_.Rings(offset, data)) {
      config_.Ring();
      return IoStatus::kOk;
    }
    if (device_ == nullptr) return IoStatus::kDoorbellUnmatched;
    CallWrite(*device_, base, offset, data);
    return IoStatus::kOk;
  }

 private:
  static void CallRead(const DevicePio& d, PioAddress b, PioAddressOffset o,
                       absl::Span<uint8_t> data) {
    d.PioRead(b, o, data);
  }
  static void CallWrite(const DevicePio& d, PioAddress b, PioAddressOffset o,
                        absl::Span<const uint8_t> data) {
    d.PioWrite(b, o, data);
  }
  static void CallRead(const DeviceMmio& d, MmioAddress b, MmioAddressOffset o,
                       absl::Span<uint8_t> data) {
    d.MmioRead(b, o, data);
  }
  static void CallWrite(const DeviceMmio& d, MmioAddress b,
                        MmioAddressOffset o, absl::Span<const uint8_t> data) {
    d.MmioWrite(b, o, data);
  }

  const HookConfig config_;
  const std::shared_ptr<D> device_;
};

// PioHook, MmioHook
//
// The hook as a device of each bus.
class PioHook final : public DevicePio,
                      public HookCore<PioAddress, DevicePio> {
 public:
  using HookCore::HookCore;

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    if (Read(base, offset, data) != IoStatus::kOk) {
      std::fill(data.begin(), data.end(), 0xff);
    }
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const override {
    static_cast<void>(Write(base, offset, data));
  }

 private:
  uintptr_t BusDispatchTag() const override { return kDispatchHook; }
};

class MmioHook final : public DeviceMmio,
                       public HookCore<MmioAddress, DeviceMmio> {
 public:
  using HookCore::HookCore;

  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    if (Read(base, offset, data) != IoStatus::kOk) {
      std::fill(data.begin(), data.end(), 0xff);
    }
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override {
    static_cast<void>(Write(base, offset, data));
  }

 private:
  uintptr_t BusDispatchTag() const override { return kDispatchHook; }
};

// The hook behind `device`, or null if it is not one.
inline const PioHook* AsHook(const DevicePio& device) {
  return DispatchTagAccess::Of(device) == kDispatchHook
             ? static_cast<const PioHook*>(&device)
             : nullptr;
}
inline const MmioHook* AsHook(const DeviceMmio& device) {
  return DispatchTagAccess::Of(device) == kDispatchHook
             ? static_cast<const MmioHook*>(&device)
             : nullptr;
}

}  // namespace internal
}  // namespace vm_device

#endif  // VM_DEVICE_SRC_INTERNAL_RANGE_HOOK_H_
