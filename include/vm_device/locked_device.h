// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: locked_device.h
// -----------------------------------------------------------------------------
//
// `LockedDevice<T>` makes a device written for one caller at a time (a
// `MutDevicePio` and/or `MutDeviceMmio`) shareable between vCPU threads: it
// implements `DevicePio` / `DeviceMmio` (whichever `T` implements) by taking a
// lock of its own around each call. It is the C++ counterpart of the crate's
// `Mutex<T>` adapter, and the simple default; a device with independent
// register banks can take one lock per bank instead (sharded_device.h).
//
// One lock per device, never one global lock: two vCPUs touching two
// different devices never contend. Each `LockedDevice` is aligned to, and
// fills whole, cache lines (`ABSL_CACHELINE_SIZE`), so no two devices' locks
// share a cache line and one device's lock traffic never slows another's.
// The lock is the library's own one-word futex lock
// (internal/device_lock.h), not an absl::Mutex: its cost does not depend on
// process-wide settings of a dependency (Debian's Abseil, built without
// NDEBUG, runs absl::Mutex's deadlock detector through one process-wide lock
// on every Lock(), which made two vCPUs on two different devices contend).
//
// Example (the crate's log device):
//
//   struct LogDevice : vm_device::MutDevicePio { ... };
//   auto dev = vm_device::MakeLocked<LogDevice>();
//   absl::Status s = manager.RegisterPio(range, dev);
//   absl::StatusOr<int> lines =
//       dev->WithLock([](LogDevice& d) { return d.lines; });
//
// Re-entry and chains of devices
// ------------------------------
// Every thread knows which device locks it holds (a thread-local record; see
// internal/device_lock.h). With that:
//
//   * Re-entry: a handler that, on its own thread, reaches its own device
//     again (directly, through another device, or a dispatch made inside
//     `WithLock()`) would deadlock on a non-recursive lock. The nested access
//     is refused at once instead: a read returns all-ones bytes (the value of
//     an open bus), a write is dropped, `refused_reentrant_accesses()` counts
//     it, and the outer access carries on. The nested dispatch itself reports
//     IoStatus::kOk (it did reach a device); the counter is how to tell.
//     `WithLock()` called where the lock is already held returns
//     kFailedPrecondition without calling `f`.
//   * Cross-device chains: a handler of device A that reaches device B (a
//     DMA-ish write, a PCI host bridge forwarding to a function) takes B's
//     lock while holding A's. Policy: refusal after a bounded wait. A thread
//     that already holds a device lock waits at most 10 ms
//     (`device_lock_internal::kNestedLockWaitNs`) for another one; if it is
//     still busy, the nested access is refused as above, counted by
//     `refused_busy_accesses()` (a nested `WithLock()` returns kUnavailable).
//     So A->B on one vCPU while B->A on another never deadlocks and never
//     aborts: after at most 10 ms at least one of the two nested accesses is
//     refused, and both vCPUs carry on. A thread that holds no device lock
//     (every plain dispatch, the control plane) waits as long as it takes.
//
//   Trade-off. Lock ordering cannot work here: A's lock is already held when
//   its handler finds out that it needs B. Deferral cannot answer a read.
//   Refusal never hangs, at two costs: a nested access to a device that
//   another thread keeps busy for more than 10 ms (a slow handler, a
//   preempted holder) is refused even though no cycle exists; and a real
//   cycle costs the vCPUs in it up to 10 ms. Chains that must not be refused
//   should not hold the first lock: make the first device shared (implement
//   DevicePio/DeviceMmio with its own finer locking) or shard it.
//
// IoManager::Synchronize() called while the thread holds a device lock (in a
// handler, or inside `WithLock()`) is refused with kFailedPrecondition: a
// vCPU waiting for that lock inside its read-side section would never let the
// grace period end.
//
// Exceptions. A handler that throws releases the lock on the way out; the
// exception reaches the caller of the dispatch (see io_manager.h).
//
// Thread safety: the `DevicePio`/`DeviceMmio` handlers may be called
// concurrently from any number of threads; they run `T`'s handlers one at a
// time. `WithLock()` gives the control plane the same exclusive access.
// Progress: blocking (one futex lock per device; a nested acquisition waits
// at most 10 ms).
// Memory ordering: everything a handler (or `WithLock()`'s `f`) did is
// visible to the next one to run (the lock's release/acquire).
// Lifetime: `T` lives inside the adapter and dies with it.

#ifndef VM_DEVICE_LOCKED_DEVICE_H_
#define VM_DEVICE_LOCKED_DEVICE_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/config.h"
#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "vm_device/address.h"
#include "vm_device/device.h"
#include "vm_device/internal/device_lock.h"

namespace vm_device {

namespace locked_device_internal {

// The facets call `Self::Run(base, offset, size, call, read_data)`, which
// picks the lock (for a sharded device, from the access) and runs `call(T&)`.
template <typename Self, bool kEnabled>
class PioFacet {};

template <typename Self>
class PioFacet<Self, true> : public DevicePio {
 public:
  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const final {
    static_cast<const Self *>(this)->Run(
        base, offset, data.size(),
        [&](auto &dev) { dev.PioRead(base, offset, data); }, data);
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const final {
    static_cast<const Self *>(this)->Run(
        base, offset, data.size(),
        [&](auto &dev) { dev.PioWrite(base, offset, data); },
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
    static_cast<const Self *>(this)->Run(
        base, offset, data.size(),
        [&](auto &dev) { dev.MmioRead(base, offset, data); }, data);
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const final {
    static_cast<const Self *>(this)->Run(
        base, offset, data.size(),
        [&](auto &dev) { dev.MmioWrite(base, offset, data); },
        absl::Span<uint8_t>());
  }
};

// Refused-access counters of one adapter. Statistics: relaxed RMWs, touched
// only on the (cold) refusal path.
struct RefusalCounters {
  std::atomic<uint64_t> reentrant{0};
  std::atomic<uint64_t> busy{0};
  std::atomic<uint64_t> misrouted{0};
};

enum class Refusal : uint8_t { kReentrant, kBusy, kMisrouted };

// Refuses a dispatched access: all-ones for a read, nothing for a write.
ABSL_ATTRIBUTE_COLD ABSL_ATTRIBUTE_NOINLINE inline void RefuseAccess(
    absl::Span<uint8_t> read_data, Refusal why, RefusalCounters &counters) {
  std::fill(read_data.begin(), read_data.end(), uint8_t{0xff});
  // relaxed: statistics; they order nothing.
  switch (why) {
    case Refusal::kReentrant:
      counters.reentrant.fetch_add(1, std::memory_order_relaxed);
      break;
    case Refusal::kBusy:
      counters.busy.fetch_add(1, std::memory_order_relaxed);
      break;
    case Refusal::kMisrouted:
      counters.misrouted.fetch_add(1, std::memory_order_relaxed);
      break;
  }
}

// Takes `n` locks from `first` for a dispatched access and runs `call(dev)`,
// or refuses the access.
template <typename L, typename D, typename Call>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void RunLocked(
    L *first, size_t n, D &dev, Call &call, absl::Span<uint8_t> read_data,
    RefusalCounters &counters) {
  device_lock_internal::ChainHold hold(first, n);
  if (ABSL_PREDICT_FALSE(hold.result() !=
                         device_lock_internal::Acquired::kOk)) {
    RefuseAccess(read_data,
                 hold.result() == device_lock_internal::Acquired::kReentrant
                     ? Refusal::kReentrant
                     : Refusal::kBusy,
                 counters);
    return;
  }
  call(dev);
}

// What WithLock() and friends return for `f(T&)`: absl::Status when `f`
// returns void, absl::StatusOr<R> otherwise.
template <typename F, typename T>
using ControlResult =
    std::conditional_t<std::is_void_v<std::invoke_result_t<F, T &>>,
                       absl::Status,
                       absl::StatusOr<std::invoke_result_t<F, T &>>>;

ABSL_ATTRIBUTE_COLD ABSL_ATTRIBUTE_NOINLINE inline absl::Status ControlRefusal(
    device_lock_internal::Acquired why, absl::string_view what) {
  switch (why) {
    case device_lock_internal::Acquired::kReentrant:
      return absl::FailedPreconditionError(absl::StrCat(
          what,
          ": this thread already holds that lock (called from the device's "
          "own handler, or inside WithLock()); waiting would deadlock"));
    case device_lock_internal::Acquired::kBusy:
      return absl::UnavailableError(absl::StrCat(
          what,
          ": this thread holds another device's lock, and this one stayed "
          "busy for 10 ms (a cycle of devices reaching each other?)"));
    case device_lock_internal::Acquired::kTooDeep:
      return absl::ResourceExhaustedError(
          absl::StrCat(what, ": this thread already holds ",
                       device_lock_internal::kMaxHeldLocks, " device locks"));
    case device_lock_internal::Acquired::kOk:
      break;
  }
  return absl::InternalError(absl::StrCat(what, ": not refused"));
}

// Takes `n` locks from `first` for the control plane and returns `f(dev)`,
// or the refusal as a status.
template <typename L, typename D, typename F>
ControlResult<F, D> CallLocked(L *first, size_t n, D &dev, F &&f,
                               absl::string_view what) {
  using R = std::invoke_result_t<F, D &>;
  static_assert(!std::is_reference_v<R>,
                "WithLock(f): f must not return a reference (it would "
                "outlive the lock); return a value or a pointer");
  device_lock_internal::ChainHold hold(first, n);
  if (hold.result() != device_lock_internal::Acquired::kOk) {
    return ControlRefusal(hold.result(), what);
  }
  if constexpr (std::is_void_v<R>) {
    std::forward<F>(f)(dev);
    return absl::OkStatus();
  } else {
    return ControlResult<F, D>(std::forward<F>(f)(dev));
  }
}

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
  explicit LockedDevice(std::in_place_t, Args &&...args)
      : device_(std::forward<Args>(args)...) {}

  // Takes over `device`.
  explicit LockedDevice(T device) : device_(std::move(device)) {}

  LockedDevice(const LockedDevice &) = delete;
  LockedDevice &operator=(const LockedDevice &) = delete;

  // LockedDevice::WithLock()
  //
  // Runs `f(T&)` with the device's lock held: how the control plane
  // (snapshot, reset, inspection) reaches the device while vCPUs may be
  // dispatching to it. Returns absl::Status when `f` returns void, else
  // absl::StatusOr of what `f` returns (not a reference). Refused, without
  // calling `f`, with kFailedPrecondition when this thread already holds the
  // lock (from the device's own handler, or WithLock() inside WithLock()),
  // and with kUnavailable when this thread holds another device's lock and
  // this one stayed busy for 10 ms (see the file comment). A thread that
  // holds no device lock waits for the lock as long as it takes.
  template <typename F>
  locked_device_internal::ControlResult<F, T> WithLock(F &&f) {
    return locked_device_internal::CallLocked(
        &lock_, 1, device_, std::forward<F>(f), "LockedDevice::WithLock");
  }

  // LockedDevice::refused_reentrant_accesses()
  //
  // How many nested accesses from a thread already holding this device's
  // lock were refused (see the file comment).
  uint64_t refused_reentrant_accesses() const {
    // relaxed: a statistic; it orders nothing.
    return refused_.reentrant.load(std::memory_order_relaxed);
  }

  // LockedDevice::refused_busy_accesses()
  //
  // How many accesses from a thread holding another device's lock were
  // refused because this device's lock stayed busy for 10 ms (or the thread
  // held too many device locks already).
  uint64_t refused_busy_accesses() const {
    // relaxed: a statistic; it orders nothing.
    return refused_.busy.load(std::memory_order_relaxed);
  }

 private:
  template <typename, bool>
  friend class locked_device_internal::PioFacet;
  template <typename, bool>
  friend class locked_device_internal::MmioFacet;

  // Runs `call(device_)` under the lock, or refuses the access.
  template <typename A, typename O, typename Call>
  ABSL_ATTRIBUTE_ALWAYS_INLINE void Run(A, O, size_t, Call &&call,
                                        absl::Span<uint8_t> read_data) const {
    locked_device_internal::RunLocked(&lock_, 1, device_, call, read_data,
                                      refused_);
  }

  // Layout: the facets' vtable pointers, the lock and the start of the device
  // share the first cache line, so a dispatch to a small device touches one
  // line; the refusal counters (cold) come last.
  mutable device_lock_internal::DeviceLock lock_;
  // Guarded by lock_ (taken through AcquireChain, which the thread-safety
  // analysis cannot follow).
  mutable T device_;
  mutable locked_device_internal::RefusalCounters refused_;
};

// MakeLocked()
//
// `std::make_shared<LockedDevice<T>>(std::in_place, args...)`: the usual way
// to make a `Mut` device registrable.
template <typename T, typename... Args>
std::shared_ptr<LockedDevice<T>> MakeLocked(Args &&...args) {
  return std::make_shared<LockedDevice<T>>(std::in_place,
                                           std::forward<Args>(args)...);
}

}  // namespace vm_device

#endif  // VM_DEVICE_LOCKED_DEVICE_H_
