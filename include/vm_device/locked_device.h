// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: locked_device.h
// -----------------------------------------------------------------------------
//
// `LockedDevice<T>` makes a device written for one caller at a time (a
// `MutDevicePio` and/or `MutDeviceMmio`) shareable between vCPU threads: it
// implements `DevicePio` / `DeviceMmio` (whichever `T` implements) by taking a
// lock of its own around each call. It is the C++ counterpart of the crate's
// `Mutex<T>` adapter.
//
// One lock per device, never one global lock: two vCPUs touching two
// different devices never contend. Each `LockedDevice` is aligned to, and
// fills whole, cache lines (`ABSL_CACHELINE_SIZE`), so no two devices' locks
// share a cache line and one device's lock traffic never slows another's.
//
// Example (the crate's log device):
//
//   struct LogDevice : vm_device::MutDevicePio { ... };
//   auto dev = vm_device::MakeLocked<LogDevice>();
//   absl::Status s = manager.RegisterPio(range, dev);
//
// Re-entrancy. A handler that, on its own thread, reaches its own device again
// (dispatches to an address of the same device, directly or through another
// device) would deadlock on a non-recursive lock. The adapter detects that case
// instead: the nested access is refused (a read returns all-ones bytes, the
// value of an open bus; a write is dropped), `refused_reentrant_accesses()`
// counts it, and the outer access carries on. The nested dispatch itself
// reports IoStatus::kOk (it did reach a device); the counter is how to tell.
// Accesses from other threads just wait for the lock, as they should.
//
// Exceptions. A handler that throws releases the lock on the way out; the
// exception reaches the caller of the dispatch (see io_manager.h).
//
// Thread safety: the `DevicePio`/`DeviceMmio` handlers may be called
// concurrently from any number of threads; they run `T`'s handlers one at a
// time. `WithLock()` gives the control plane the same exclusive access.
// Progress: blocking (one absl::Mutex per device).
// Memory ordering: everything a handler did is visible to the next handler
// to run (the lock's acquire/release).
// Lifetime: `T` lives inside the adapter and dies with it.

#ifndef VM_DEVICE_LOCKED_DEVICE_H_
#define VM_DEVICE_LOCKED_DEVICE_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "absl/base/config.h"
#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "vm_device/address.h"
#include "vm_device/device.h"
#include "vm_device/internal/annotated_mutex_lock.h"

namespace vm_device {

template <typename T>
class LockedDevice;

namespace locked_device_internal {

// A distinct address per live thread, cheaper than std::this_thread::get_id().
inline const void* CurrentThreadTag() {
  static thread_local const char tag = 0;
  return &tag;
}

template <typename Self, bool kEnabled>
class PioFacet {};

template <typename Self>
class PioFacet<Self, true> : public DevicePio {
 public:
  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const final {
    static_cast<const Self*>(this)->Run(
        [&](auto& dev) { dev.PioRead(base, offset, data); }, data);
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const final {
    static_cast<const Self*>(this)->Run(
        [&](auto& dev) { dev.PioWrite(base, offset, data); },
        absl::Span<uint8_t>());
  }
};

template <typename Self, bool kEnabled>
class MmioFacet {};

template <typename Self>
class MmioFacet<Self, true> : public DeviceMmio {
 public:
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const final {
    static_cast<const Self*>(this)->Run(
        [&](auto& dev) { dev.MmioRead(base, offset, data); }, data);
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const final {
    static_cast<const Self*>(this)->Run(
        [&](auto& dev) { dev.MmioWrite(base, offset, data); },
        absl::Span<uint8_t>());
  }
};

}  // namespace locked_device_internal

template <typename T>
class alignas(ABSL_CACHELINE_SIZE) LockedDevice final
    : public locked_device_internal::PioFacet<
          LockedDevice<T>, std::is_base_of_v<MutDevicePio, T>>,
      public locked_device_internal::MmioFacet<
          LockedDevice<T>, std::is_base_of_v<MutDeviceMmio, T>> {
  static_assert(std::is_base_of_v<MutDevicePio, T> ||
                    std::is_base_of_v<MutDeviceMmio, T>,
                "LockedDevice<T> needs T to implement MutDevicePio and/or "
                "MutDeviceMmio");

 public:
  // LockedDevice::LockedDevice()
  //
  // Builds the wrapped device in place from `args`.
  template <typename... Args>
  explicit LockedDevice(std::in_place_t, Args&&... args)
      : device_(std::forward<Args>(args)...) {}

  // Takes over `device`.
  explicit LockedDevice(T device) : device_(std::move(device)) {}

  LockedDevice(const LockedDevice&) = delete;
  LockedDevice& operator=(const LockedDevice&) = delete;

  // LockedDevice::WithLock()
  //
  // Runs `f(T&)` with the device's lock held and returns what it returns:
  // how the control plane (snapshot, reset, inspection) reaches the device
  // while vCPUs may be dispatching to it. Must not be called from one of this
  // device's own handlers (it would deadlock).
  template <typename F>
  decltype(auto) WithLock(F&& f) {
    sync_internal::AnnotatedMutexLock lock(&mu_);
    return std::forward<F>(f)(device_);
  }

  // LockedDevice::refused_reentrant_accesses()
  //
  // How many nested accesses from a thread already inside this device's
  // handler were refused (see the file comment).
  uint64_t refused_reentrant_accesses() const {
    // relaxed: a statistic; it orders nothing.
    return refused_.load(std::memory_order_relaxed);
  }

 private:
  template <typename, bool>
  friend class locked_device_internal::PioFacet;
  template <typename, bool>
  friend class locked_device_internal::MmioFacet;

  // Runs `call(device_)` under the lock, or refuses a re-entrant access
  // (filling `read_data` with all-ones).
  template <typename Call>
  void Run(Call&& call, absl::Span<uint8_t> read_data) const {
    const void* self = locked_device_internal::CurrentThreadTag();
    // relaxed: only this thread ever stores `self`, so by coherence it reads
    // back its own latest store; another thread's value (or nullptr) means
    // this thread does not hold the lock.
    if (ABSL_PREDICT_FALSE(owner_.load(std::memory_order_relaxed) == self)) {
      RefuseReentrant(read_data);
      return;
    }
    sync_internal::AnnotatedMutexLock lock(&mu_);
    // relaxed: read only by the check above; the lock orders the rest.
    owner_.store(self, std::memory_order_relaxed);
    struct ClearOwner {
      std::atomic<const void*>& owner;
      ~ClearOwner() { owner.store(nullptr, std::memory_order_relaxed); }
    } clear{owner_};
    call(device_);
  }

  ABSL_ATTRIBUTE_NOINLINE void RefuseReentrant(
      absl::Span<uint8_t> read_data) const {
    std::fill(read_data.begin(), read_data.end(), uint8_t{0xff});
    // relaxed: a statistic; it orders nothing.
    refused_.fetch_add(1, std::memory_order_relaxed);
  }

  mutable absl::Mutex mu_;
  // The thread that holds `mu_`, or nullptr. Written only by the holder.
  mutable std::atomic<const void*> owner_{nullptr};
  mutable std::atomic<uint64_t> refused_{0};
  mutable T device_ ABSL_GUARDED_BY(mu_);
};

// MakeLocked()
//
// `std::make_shared<LockedDevice<T>>(std::in_place, args...)`: the usual way
// to make a `Mut` device registrable.
template <typename T, typename... Args>
std::shared_ptr<LockedDevice<T>> MakeLocked(Args&&... args) {
  return std::make_shared<LockedDevice<T>>(std::in_place,
                                           std::forward<Args>(args)...);
}

}  // namespace vm_device

#endif  // VM_DEVICE_LOCKED_DEVICE_H_
