// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: sharded_device.h
// -----------------------------------------------------------------------------
//
// `ShardedDevice<T>` is `LockedDevice<T>` (locked_device.h) with one lock per
// independent register bank of `T` instead of one per device: accesses to
// different banks run in parallel on different vCPUs, accesses to one bank
// one at a time. For devices written for one caller at a time whose register
// file splits into banks that share no state: the per-queue notify registers
// of a virtio device, the per-port registers of a multi-port UART, per-vCPU
// pages (a local APIC-like page per vCPU).
//
// What `T` provides, besides `MutDevicePio` and/or `MutDeviceMmio`:
//
//   // The number of shards (banks), 1 to 64.
//   static constexpr size_t kShards = 4;
//
//   // The shard an access belongs to (one overload per bus T implements).
//   // Called concurrently, without any lock, before the handler: it must
//   // depend only on its arguments and on state that never changes while
//   // the device is registered. An index >= kShards refuses the access
//   // (counted by misrouted_accesses()), it never crashes.
//   size_t ShardOf(MmioAddress base, MmioAddressOffset offset,
//                  size_t size) const;
//   size_t ShardOf(PioAddress base, PioAddressOffset offset,
//                  size_t size) const;
//
// and the contract that makes the parallelism safe: a handler called for an
// access of shard i touches only shard i's state (and constant state). State
// shared by all banks (a device status register, a reset) belongs to the
// control plane: `WithAllShards()`. Keep each bank's state on cache lines of
// its own (alignas(ABSL_CACHELINE_SIZE)), or the banks share lines and slow
// each other down even though their locks do not.
//
// Example (a 4-port UART, one 8-byte register bank per port):
//
//   struct Uart4 : vm_device::MutDevicePio {
//     static constexpr size_t kShards = 4;
//     size_t ShardOf(vm_device::PioAddress, vm_device::PioAddressOffset off,
//                    size_t) const { return off / 8; }
//     void PioRead(...) override;   // touches ports[off / 8] only
//     void PioWrite(...) override;  // touches ports[off / 8] only
//     struct alignas(ABSL_CACHELINE_SIZE) Port { uint8_t regs[8]; };
//     Port ports[4];
//   };
//   auto uart = vm_device::MakeSharded<Uart4>();
//   absl::Status s = manager.RegisterPio(*vm_device::PioRange::Create(
//       vm_device::PioAddress(0x3f8), 32), uart);
//   absl::StatusOr<uint8_t> lcr =
//       uart->WithShard(2, [](Uart4& u) { return u.ports[2].regs[3]; });
//   absl::Status reset =
//       uart->WithAllShards([](Uart4& u) { u = Uart4(); });
//
// Locks. Each shard's lock is a `device_lock_internal::DeviceLock` padded to
// a cache line of its own. A dispatch takes one shard's lock; `WithShard(i)`
// takes shard i's; `WithAllShards()` takes every shard's, always in index
// order, so two control-plane callers (and a control-plane caller and the
// vCPUs, which take one lock each) never deadlock on each other.
//
// Re-entry and chains: as LockedDevice's (see locked_device.h), per shard. A
// thread that holds shard i and reaches shard i again is refused at once
// (refused_reentrant_accesses(), or kFailedPrecondition from the control
// plane); a thread holding all shards is refused on any of them. A thread
// holding shard i that reaches shard j != i of the same device, or another
// device, waits at most 10 ms and is then refused (refused_busy_accesses(),
// kUnavailable): two handlers of shards i and j reaching each other's shard
// never deadlock. IoManager::Synchronize() under a shard lock is refused.
//
// Thread safety: the `DevicePio`/`DeviceMmio` handlers may be called
// concurrently from any number of threads; `T`'s handlers run one at a time
// per shard, and concurrently across shards. `WithShard()` /
// `WithAllShards()` give the control plane exclusive access to one shard /
// the whole device.
// Progress: blocking (a futex lock per shard; a nested acquisition waits at
// most 10 ms).
// Memory ordering: everything a handler of shard i (or a control-plane `f`
// holding shard i) did is visible to the next one to run on shard i.
// Lifetime: `T` lives inside the adapter and dies with it.

#ifndef VM_DEVICE_SHARDED_DEVICE_H_
#define VM_DEVICE_SHARDED_DEVICE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/config.h"
#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "vm_device/address.h"
#include "vm_device/device.h"
#include "vm_device/internal/device_lock.h"
#include "vm_device/locked_device.h"

namespace vm_device {

template <typename T>
class alignas(ABSL_CACHELINE_SIZE) ShardedDevice final
    : public locked_device_internal::PioFacet<
          ShardedDevice<T>, std::is_base_of_v<MutDevicePio, T>>,
      public locked_device_internal::MmioFacet<
          ShardedDevice<T>, std::is_base_of_v<MutDeviceMmio, T>> {
  static_assert(std::is_base_of_v<MutDevicePio, T> ||
                    std::is_base_of_v<MutDeviceMmio, T>,
                "ShardedDevice<T> needs T to implement MutDevicePio and/or "
                "MutDeviceMmio");

 public:
  // ShardedDevice::kShards
  //
  // T's number of shards.
  static constexpr size_t kShards = T::kShards;
  static_assert(kShards >= 1 && kShards <= 64,
                "T::kShards must be between 1 and 64");

  // ShardedDevice::ShardedDevice()
  //
  // Builds the wrapped device in place from `args`.
  template <typename... Args>
  explicit ShardedDevice(std::in_place_t, Args &&...args)
      : device_(std::forward<Args>(args)...) {}

  // Takes over `device`.
  explicit ShardedDevice(T device) : device_(std::move(device)) {}

  ShardedDevice(const ShardedDevice &) = delete;
  ShardedDevice &operator=(const ShardedDevice &) = delete;

  // ShardedDevice::WithShard()
  //
  // Runs `f(T&)` holding shard `shard`'s lock; `f` may touch that shard's
  // state only. Returns absl::Status when `f` returns void, else
  // absl::StatusOr of what `f` returns (not a reference). Errors, without
  // calling `f`: kInvalidArgument, naming it, for `shard >= kShards`;
  // kFailedPrecondition when this thread already holds that shard (or all);
  // kUnavailable when this thread holds another device lock and the shard
  // stayed busy for 10 ms.
  template <typename F>
  locked_device_internal::ControlResult<F, T> WithShard(size_t shard, F &&f) {
    if (shard >= kShards) {
      return absl::InvalidArgumentError(
          absl::StrCat("ShardedDevice::WithShard: shard ", shard,
                       " does not exist (the device has ", kShards, ")"));
    }
    return locked_device_internal::CallLocked(&shards_[shard], 1, device_,
                                              std::forward<F>(f),
                                              "ShardedDevice::WithShard");
  }

  // ShardedDevice::WithAllShards()
  //
  // Runs `f(T&)` holding every shard's lock (taken in index order): exclusive
  // access to the whole device, as LockedDevice::WithLock() gives. Errors as
  // WithShard()'s (kFailedPrecondition when this thread holds any shard).
  template <typename F>
  locked_device_internal::ControlResult<F, T> WithAllShards(F &&f) {
    return locked_device_internal::CallLocked(&shards_[0], kShards, device_,
                                              std::forward<F>(f),
                                              "ShardedDevice::WithAllShards");
  }

  // ShardedDevice::refused_reentrant_accesses()
  //
  // Accesses refused because their thread already held their shard.
  uint64_t refused_reentrant_accesses() const {
    // relaxed: a statistic; it orders nothing.
    return refused_.reentrant.load(std::memory_order_relaxed);
  }

  // ShardedDevice::refused_busy_accesses()
  //
  // Accesses refused because their thread held another device lock and the
  // shard stayed busy for 10 ms (or the thread held too many).
  uint64_t refused_busy_accesses() const {
    // relaxed: a statistic; it orders nothing.
    return refused_.busy.load(std::memory_order_relaxed);
  }

  // ShardedDevice::misrouted_accesses()
  //
  // Accesses refused because T::ShardOf() returned kShards or more.
  uint64_t misrouted_accesses() const {
    // relaxed: a statistic; it orders nothing.
    return refused_.misrouted.load(std::memory_order_relaxed);
  }

 private:
  template <typename, bool>
  friend class locked_device_internal::PioFacet;
  template <typename, bool>
  friend class locked_device_internal::MmioFacet;

  struct alignas(ABSL_CACHELINE_SIZE) PaddedLock
      : device_lock_internal::DeviceLock {};
  static_assert(sizeof(PaddedLock) == ABSL_CACHELINE_SIZE,
                "one shard lock per cache line");

  template <typename A, typename O, typename Call>
  ABSL_ATTRIBUTE_ALWAYS_INLINE void Run(A base, O offset, size_t size,
                                        Call &&call,
                                        absl::Span<uint8_t> read_data) const {
    const size_t shard =
        static_cast<const T &>(device_).ShardOf(base, offset, size);
    if (ABSL_PREDICT_FALSE(shard >= kShards)) {
      locked_device_internal::RefuseAccess(
          read_data, locked_device_internal::Refusal::kMisrouted, refused_);
      return;
    }
    locked_device_internal::RunLocked(&shards_[shard], 1, device_, call,
                                      read_data, refused_);
  }

  // Layout: the facets' vtable pointers (read only) on the first line, then
  // one line per shard lock, the device, and the refusal counters (cold).
  mutable PaddedLock shards_[kShards];
  // Shard i of it is guarded by shards_[i] (T's contract; see the file
  // comment).
  mutable T device_;
  mutable locked_device_internal::RefusalCounters refused_;
};

// MakeSharded()
//
// `std::make_shared<ShardedDevice<T>>(std::in_place, args...)`.
template <typename T, typename... Args>
std::shared_ptr<ShardedDevice<T>> MakeSharded(Args &&...args) {
  return std::make_shared<ShardedDevice<T>>(std::in_place,
                                            std::forward<Args>(args)...);
}

}  // namespace vm_device

#endif  // VM_DEVICE_SHARDED_DEVICE_H_
