// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: io_manager.h
// -----------------------------------------------------------------------------
//
// `IoManager` routes every guest port-I/O and MMIO access to the device that
// owns the address. vCPU threads dispatch through it concurrently, without
// locks, while the VMM (or a device handler) registers and deregisters
// devices.
//
// Example (the crate's log device):
//
//   struct LogDevice : vm_device::MutDevicePio {
//     void PioRead(vm_device::PioAddress base, vm_device::PioAddressOffset off,
//                  absl::Span<uint8_t>) override { ... }
//     void PioWrite(vm_device::PioAddress base, vm_device::PioAddressOffset
//     off,
//                   absl::Span<const uint8_t> data) override { ... }
//   };
//
//   vm_device::IoManager manager;
//   auto range = vm_device::PioRange::Create(vm_device::PioAddress(0), 10);
//   absl::Status s = manager.RegisterPio(*range,
//                                        vm_device::MakeLocked<LogDevice>());
//   const uint8_t ok[] = {'o', 'k'};
//   vm_device::IoStatus r = manager.PioWrite(vm_device::PioAddress(0), ok);
//
// How it works
// ------------
// The two buses are one immutable, sorted snapshot published through a single
// pointer with liburcu (memb flavour). A dispatch enters an RCU read-side
// critical section, loads the pointer, finds the range (the thread's dispatch
// hints, checked against the snapshot, or a B+-tree search of one cache line
// per layer), calls the
// device and leaves: no lock, no atomic read-modify-write, no store to shared
// memory, no allocation, no reference count. Writers are serialized by one
// writer mutex; each change builds a new snapshot and publishes it with one
// pointer store; the old snapshot, and every device it alone still points
// at, is destroyed after an RCU grace period, on the library's reclaimer
// thread. See src/internal/range_table.h for the design note.
//
// Why memb: its read side is a thread-local counter update with no barrier
// instruction (the writer pays with membarrier), and unlike QSBR it asks
// nothing of vCPU threads between exits: they may block in KVM_RUN for as
// long as they like without reporting quiescent states.
//
// vCPU threads
// ------------
// Every thread that dispatches, visits (Visit*) or calls Synchronize()
// is registered with liburcu on its first such call, and unregistered when it
// exits: by a pthread key destructor, which glibc runs after all of the
// thread's C++ thread_local destructors, so per-thread objects whose
// destructors dispatch, visit or call Synchronize() are fine and the thread
// still exits unregistered (tests/thread_exit_test.cc). To control this
// explicitly (say, to register before the first VM exit), hold a `VcpuThread`
// (vcpu_thread.h) for the thread's life. Nothing else is asked of vCPU
// threads.
//
// Thread safety: every method may be called concurrently with every other,
// from any thread, except the destructor (no other call may be running or
// start). Dispatch methods are `const` and never block (wait-free).
// Registration methods are serialized by the writer mutex.
//
// Progress:
//   Pio/MmioRead/Write, Visit*Device  wait-free (plus the handler's own cost)
//   Visit*Ranges                      wait-free, O(ranges) (plus `f`'s cost)
//   Register*/Deregister*/Move*/Commit blocking: writer mutex; never waits
//                                     for a grace period; time below
//   Pio/MmioDevice, stats             blocking: writer mutex
//   Synchronize                       blocking: waits for a grace period
//
// Time of a change of k ranges on n registered ones (all under the writer
// mutex): O(n) to build the new snapshot, plus, per change, an insertion into
// or an erase from the sorted master arrays, which moves every range above it:
// O(k * (n + k)) in the worst case. A single registration is O(n). A change
// moves only the ranges above its address, so a batch whose adds come in
// ascending address order above every registered range, or whose removals
// go from the top down, is O(n + k log n); adds in descending order and
// removals in ascending order are the worst case (README.md, "Reliability
// II", has BM_Register's figures for ascending, descending and random order).
//
// Memory ordering: a change is visible to every dispatch that starts after
// (happens-after) the registration call returned. A dispatch racing with a
// change sees the buses entirely before or entirely after it. Anything the
// VMM wrote before registering a device is visible to that device's handlers.
//
// Handlers and re-entry: handlers run inside the dispatching thread's
// read-side critical section. A handler may dispatch (nested sections are
// fine), register, deregister and move ranges (a PCI config write that moves
// a BAR does this): none of those wait for a grace period, so none can
// deadlock on its own read section. The one thing a handler must not call is
// `Synchronize()`; it is refused with kFailedPrecondition instead of
// deadlocking.
//
// Misbehaving handlers, and what the manager does (tests/
// misbehaving_device_test.cc checks each):
//   * throws: propagate. The read-side section is left, the exception reaches
//     the dispatch's caller, a LockedDevice's lock is released, and the
//     manager is unchanged (changes the handler committed before throwing
//     stay: each registration call is its own transaction).
//   * takes long: nothing else waits. Other vCPUs keep dispatching, to other
//     devices and (for shared devices) to this one; registration and
//     deregistration, even of this device, return at once; only
//     Synchronize() and the reclamation of retired snapshots wait.
//   * dispatches to itself: a shared device re-enters (nested read sections);
//     a LockedDevice refuses the nested access (reads see all-ones, writes are
//     dropped, refused_reentrant_accesses() counts it; the nested dispatch
//     still returns kOk: it did reach the device) instead of deadlocking.
//   * registers, deregisters or moves ranges, its own included: allowed, in
//     one publish each, visible at once to later dispatches on every thread;
//     a device that deregisters itself stays alive until its handlers return.
//   * calls Synchronize(): refused with kFailedPrecondition, at once. So is
//     Synchronize() from a device destructor that runs on the library's
//     reclaimer thread (the usual place) or inside another thread's
//     Synchronize() or ~IoManager (which destroy what is still queued
//     themselves); a destructor that runs elsewhere
//     (the caller held the last reference) and outside any handler is an
//     ordinary caller, and waits.
//
// Out of memory (std::bad_alloc) in a registration call: the manager is
// never left half-changed and nothing is freed early. The call either
// throws std::bad_alloc with the manager unchanged (the master copy and the
// published snapshot both as before), or returns exactly what it would have
// returned with memory to spare: the change applied and OK, or the same
// error code with nothing changed, whose message may then be empty (an error
// message that cannot be allocated is dropped, never the error). Nothing
// after the publish allocates, so a published change is never reported as a
// failure. tests/io_manager_alloc_failure_test.cc fails every allocation of
// every registration path in turn and checks all of this.
//
// Slow handlers: a handler that takes long (or blocks) delays nothing but the
// reclamation of what was retired meanwhile: other vCPUs keep dispatching, and
// registration never waits for it. `Synchronize()` does wait for it.
//
// Lifetime: the manager holds a `shared_ptr` to each registered device and
// drops it only after a grace period has passed since the device's last
// range was deregistered, so a device is never destroyed while a vCPU is in
// one of its handlers. Deregistration also hands the caller a `shared_ptr`.
// Devices are destroyed on the library's reclaimer thread unless the caller
// holds the last reference, or unless a thread in `Synchronize()` or
// `~IoManager` gets to them first: those destroy what is still queued
// themselves, after a grace period, instead of waking the reclaimer and
// waiting for it (README.md, "Fuzzer throughput"). `Synchronize()` waits for
// all of that.
//
// Differences from the crate (rust-vmm vm-device 0.1):
//   * Registration is safe while vCPUs dispatch, with no outer lock.
//   * Multi-range registration (resources, batches) is all-or-nothing: if one
//     range fails, nothing is published and the manager is unchanged. (The
//     crate leaves the ranges registered before the failing one in place.)
//   * A zero-sized or overflowing resource range is an error naming the
//     resource, not a panic; a null device is refused.
//   * Deregistering an address that no range holds is kNotFound, not None.
//   * Re-entering a `LockedDevice` from its own handler is refused, not a
//     deadlock, and a handler that throws never poisons a lock.

#ifndef VM_DEVICE_IO_MANAGER_H_
#define VM_DEVICE_IO_MANAGER_H_

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/config.h"
#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "vm_device/address.h"
#include "vm_device/bus.h"
#include "vm_device/bus_range.h"
#include "vm_device/device.h"
#include "vm_device/export.h"
#include "vm_device/io_status.h"
#include "vm_device/resources.h"

namespace vm_device {
namespace internal {
class RangeTable;
}  // namespace internal

// IoBatch
//
// A list of changes that `IoManager::Commit()` applies in order, all or
// nothing, and publishes at once: registering many devices with one publish
// instead of one each, or moving a range (remove, then add at the new base)
// with no moment where neither the old nor the new range is mapped.
//
// Example (a BAR move):
//
//   vm_device::IoBatch batch;
//   batch.RemoveMmio(old_bar_base);
//   batch.AddMmio(new_bar_range, device);
//   absl::StatusOr<vm_device::IoBatch::Removed> r =
//   manager.Commit(std::move(batch));
//
// Thread safety: a plain value; build it on one thread.
class VM_DEVICE_EXPORT IoBatch {
 public:
  // IoBatch::Removed
  //
  // The ranges a committed batch removed, with their devices, in order.
  struct Removed {
    std::vector<std::pair<PioRange, std::shared_ptr<DevicePio>>> pio;
    std::vector<std::pair<MmioRange, std::shared_ptr<DeviceMmio>>> mmio;
  };

  // IoBatch::AddPio(), IoBatch::AddMmio()
  //
  // Registers `device` on `range`.
  IoBatch& AddPio(PioRange range, std::shared_ptr<DevicePio> device);
  IoBatch& AddMmio(MmioRange range, std::shared_ptr<DeviceMmio> device);

  // IoBatch::RemovePio(), IoBatch::RemoveMmio()
  //
  // Deregisters the range holding `addr` (any address inside it). The commit
  // fails with kNotFound if no range holds `addr` at that point of the batch.
  IoBatch& RemovePio(PioAddress addr);
  IoBatch& RemoveMmio(MmioAddress addr);

  // IoBatch::size(), IoBatch::empty()
  //
  // The number of changes.
  size_t size() const { return ops_.size(); }
  bool empty() const { return ops_.empty(); }

 private:
  friend class IoManager;

  struct AddPioOp {
    PioRange range;
    std::shared_ptr<DevicePio> device;
  };
  struct AddMmioOp {
    MmioRange range;
    std::shared_ptr<DeviceMmio> device;
  };
  struct RemovePioOp {
    PioAddress addr;
    bool must_exist;
  };
  struct RemoveMmioOp {
    MmioAddress addr;
    bool must_exist;
  };
  using Op = std::variant<AddPioOp, AddMmioOp, RemovePioOp, RemoveMmioOp>;

  std::vector<Op> ops_;
};

// IoManagerStats
//
// Writer-side counters, for monitoring and benchmarks.
struct IoManagerStats {
  size_t pio_ranges = 0;  // ranges registered on each bus now
  size_t mmio_ranges = 0;
  uint64_t publishes = 0;     // snapshots published since construction
  size_t snapshot_bytes = 0;  // size of the current snapshot, header included
};

class VM_DEVICE_EXPORT IoManager {
 public:
  IoManager();
  // Destroys the manager. REQUIRES: no call on it is running or will start.
  // Waits for a grace period if any change was made, so that every snapshot
  // and device it retired is released before it returns. Must not be called
  // inside a handler. It does not hold the writer mutex while it waits: a
  // retired device's destructor (run by the reclaimer meanwhile, or by this
  // thread: it destroys what is still queued itself) may still call stats()
  // or Deregister*() on the manager being destroyed.
  ~IoManager();

  IoManager(const IoManager&) = delete;
  IoManager& operator=(const IoManager&) = delete;

  // ---------------------------------------------------------------------------
  // Dispatch (the vCPU hot path)
  // ---------------------------------------------------------------------------

  // IoManager::PioRead(), PioWrite(), MmioRead(), MmioWrite()
  //
  // Dispatches an access of `data.size()` bytes at `addr` to the device whose
  // range holds the whole access, calling it with `(range base, addr - base,
  // data)`. Returns kOk when a device was called, otherwise why not (see
  // io_status.h) without calling any device. Ranges with access rules
  // (access_rules.h) or doorbells (doorbell.h) may also answer
  // kAccessRuleViolation or kDoorbellUnmatched; a doorbell ring is kOk.
  //
  // Wait-free, allocation-free; may be called from a handler. Handler
  // exceptions propagate.
  IoStatus PioRead(PioAddress addr, absl::Span<uint8_t> data) const;
  IoStatus PioWrite(PioAddress addr, absl::Span<const uint8_t> data) const;
  IoStatus MmioRead(MmioAddress addr, absl::Span<uint8_t> data) const;
  IoStatus MmioWrite(MmioAddress addr, absl::Span<const uint8_t> data) const;

  // ---------------------------------------------------------------------------
  // Lookup
  // ---------------------------------------------------------------------------

  // IoManager::VisitPioDevice(), VisitMmioDevice()
  //
  // Calls `f(range, device)` with the range holding `addr` and its device,
  // inside a read-side critical section (the device stays alive during the
  // call; do not keep the reference). Returns false, without calling `f`, if
  // no range holds `addr`. Wait-free and allocation-free, like dispatch.
  bool VisitPioDevice(
      PioAddress addr,
      absl::FunctionRef<void(const PioRange&, const DevicePio&)> f) const;
  bool VisitMmioDevice(
      MmioAddress addr,
      absl::FunctionRef<void(const MmioRange&, const DeviceMmio&)> f) const;

  // IoManager::VisitPioRanges(), VisitMmioRanges()
  //
  // Calls `f(range, device)` for every range of the bus in address order, all
  // from one published snapshot, inside one read-side critical section (the
  // devices stay alive during the call; do not keep the references), and
  // returns how many ranges it visited. The device map a VMM prints for
  // debugging (QEMU's `info mtree`), from any thread, while writers change
  // it: a writer that publishes meanwhile is not waited for and does not
  // show. Wait-free and allocation-free apart from `f`; may be called from a
  // handler. `f` must not call Synchronize() (nor anything that waits for a
  // grace period), and should be short: retired memory is freed only after
  // the visit ends.
  size_t VisitPioRanges(
      absl::FunctionRef<void(const PioRange&, const DevicePio&)> f) const;
  size_t VisitMmioRanges(
      absl::FunctionRef<void(const MmioRange&, const DeviceMmio&)> f) const;

  // IoManager::PioDevice(), MmioDevice()
  //
  // The range holding `addr` and a reference to its device, or nullopt.
  // Control plane: takes the writer mutex and a reference count.
  std::optional<std::pair<PioRange, std::shared_ptr<DevicePio>>> PioDevice(
      PioAddress addr) const;
  std::optional<std::pair<MmioRange, std::shared_ptr<DeviceMmio>>> MmioDevice(
      MmioAddress addr) const;

  // ---------------------------------------------------------------------------
  // Registration
  // ---------------------------------------------------------------------------

  // IoManager::RegisterPio(), RegisterMmio()
  //
  // Maps `range` to `device`. Errors: kInvalidArgument for a null device;
  // kAlreadyExists, naming both ranges, if `range` overlaps a registered
  // range. One device may be registered on many ranges.
  absl::Status RegisterPio(PioRange range, std::shared_ptr<DevicePio> device);
  absl::Status RegisterMmio(MmioRange range,
                            std::shared_ptr<DeviceMmio> device);

  // IoManager::DeregisterPio(), DeregisterMmio()
  //
  // Removes the range holding `addr` (any address inside it) and returns it
  // with its device. kNotFound, naming the address, if no range holds it.
  // The device's handlers may still be running on other vCPUs when this
  // returns; call Synchronize() to wait for them.
  absl::StatusOr<std::pair<PioRange, std::shared_ptr<DevicePio>>> DeregisterPio(
      PioAddress addr);
  absl::StatusOr<std::pair<MmioRange, std::shared_ptr<DeviceMmio>>>
  DeregisterMmio(MmioAddress addr);

  // IoManager::MovePio(), MoveMmio()
  //
  // Moves the range holding `addr` to start at `new_base`, same size, same
  // device, in one publish: every dispatch sees the range at the old base or
  // at the new one, never at neither. Errors: kNotFound (no range holds
  // `addr`), kInvalidArgument (the moved range would pass the top of the
  // address space), kAlreadyExists (it would overlap another range). On error
  // nothing changes.
  absl::Status MovePio(PioAddress addr, PioAddress new_base);
  absl::Status MoveMmio(MmioAddress addr, MmioAddress new_base);

  // IoManager::Commit()
  //
  // Applies `batch` in order, all or nothing, with one publish. On error
  // (the first failing change, named with its position in the batch) the
  // manager is unchanged. Returns what the batch removed.
  absl::StatusOr<IoBatch::Removed> Commit(IoBatch batch);

  // ---------------------------------------------------------------------------
  // Resources
  // ---------------------------------------------------------------------------

  // IoManager::RegisterPioResources(), RegisterMmioResources()
  //
  // Registers `device` on every PIO (resp. MMIO) address range of
  // `resources`, in one publish; other resources are skipped. All or
  // nothing. Errors name the resource by its index: kInvalidArgument for a
  // zero-sized or overflowing range or a null device, kAlreadyExists for an
  // overlap (with a registered range or another resource of the list).
  absl::Status RegisterPioResources(std::shared_ptr<DevicePio> device,
                                    absl::Span<const Resource> resources);
  absl::Status RegisterMmioResources(std::shared_ptr<DeviceMmio> device,
                                     absl::Span<const Resource> resources);

  // IoManager::RegisterResources()
  //
  // Registers `device` on every MMIO and PIO address range of `resources`, in
  // one publish, all or nothing. `T` implements DevicePio, DeviceMmio or both;
  // a range on a bus the device does not implement is kInvalidArgument.
  template <typename T>
  absl::Status RegisterResources(std::shared_ptr<T> device,
                                 absl::Span<const Resource> resources) {
    static_assert(
        std::is_base_of_v<DevicePio, T> || std::is_base_of_v<DeviceMmio, T>,
        "RegisterResources needs a DevicePio and/or DeviceMmio");
    std::shared_ptr<DevicePio> pio;
    std::shared_ptr<DeviceMmio> mmio;
    if constexpr (std::is_base_of_v<DevicePio, T>) pio = device;
    if constexpr (std::is_base_of_v<DeviceMmio, T>) mmio = device;
    return RegisterResourcesImpl(std::move(pio), std::move(mmio), resources,
                                 /*want_pio=*/true, /*want_mmio=*/true);
  }

  // IoManager::DeregisterResources()
  //
  // For each PIO and MMIO address range of `resources`, in order, removes the
  // range holding its base (the size is not looked at, as in the crate), all
  // in one publish. Returns how many ranges were removed; bases that no range
  // holds are skipped.
  size_t DeregisterResources(absl::Span<const Resource> resources);

  // ---------------------------------------------------------------------------
  // Reclamation and introspection
  // ---------------------------------------------------------------------------

  // IoManager::Synchronize()
  //
  // Waits until every dispatch that was running when it was called has
  // returned, and every device and snapshot retired before the call has been
  // released. After it returns, no handler of a range deregistered before the
  // call runs again. What is still queued for the reclaimer it destroys on
  // the calling thread (device destructors included) rather than wake the
  // reclaimer thread and wait for it. Cost: two grace periods plus those
  // destructors. kFailedPrecondition (without waiting) when called from a
  // handler or where retired objects are being destroyed (the reclaimer
  // thread, or a device destructor run inside Synchronize() or ~IoManager),
  // where it would wait for itself, and
  // while the thread holds a LockedDevice/ShardedDevice lock (inside
  // WithLock()), where a vCPU waiting for that lock would never return.
  // Registers the calling thread with liburcu (until it exits) if it is not
  // registered yet, like a dispatch.
  absl::Status Synchronize() const;

  // IoManager::stats()
  //
  // Writer-side counters.
  IoManagerStats stats() const;

  // IoManager::SetDispatchHints(), dispatch_hints()
  //
  // Dispatch hints (on by default): each dispatching thread remembers, in
  // thread-local memory, its last two hits on each bus of the manager it last
  // dispatched on, and tries them before searching. A hint is used only when,
  // in the snapshot the dispatch loaded, it names a range holding the whole
  // access, so routing is the same with hints on or off; only the time
  // differs (guests tend to hit the same device again). Turning them off is
  // for measuring. Safe to call at any time from any thread; dispatches that
  // start after the call returns see the new setting.
  void SetDispatchHints(bool enabled);
  bool dispatch_hints() const;

 private:
  absl::Status RegisterResourcesImpl(std::shared_ptr<DevicePio> pio,
                                     std::shared_ptr<DeviceMmio> mmio,
                                     absl::Span<const Resource> resources,
                                     bool want_pio, bool want_mmio);

  // Applies and publishes `batch`; see Commit(). On error, `*failed` (if not
  // null) is the index of the change that failed.
  absl::StatusOr<IoBatch::Removed> CommitLocked(IoBatch& batch, size_t* failed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(writer_mu_);

  // The published snapshot. Read by every dispatch, written by Commit under
  // writer_mu_; alone on its cache line so that writer activity on the
  // members below never evicts it from the readers' caches.
  alignas(ABSL_CACHELINE_SIZE) std::atomic<const internal::RangeTable*> table_;
  // SetDispatchHints(); read by every dispatch, beside table_.
  std::atomic<bool> hints_{true};

  alignas(ABSL_CACHELINE_SIZE) mutable absl::Mutex writer_mu_;
  // The writers' master copy of each bus; table_ is built from these.
  Bus<PioAddress, std::shared_ptr<DevicePio>> pio_bus_
      ABSL_GUARDED_BY(writer_mu_);
  Bus<MmioAddress, std::shared_ptr<DeviceMmio>> mmio_bus_
      ABSL_GUARDED_BY(writer_mu_);
  uint64_t publishes_ ABSL_GUARDED_BY(writer_mu_) = 0;
};

// PioManager, MmioManager
//
// What the crate's `PioManager` / `MmioManager` traits promise, as concepts,
// for code that is generic over managers. `IoManager` models both.
template <typename M>
concept PioManager = requires(M& m, const M& cm, PioAddress a, PioRange r,
                              std::shared_ptr<DevicePio> d,
                              absl::Span<uint8_t> in,
                              absl::Span<const uint8_t> out) {
  { cm.PioRead(a, in) } -> std::same_as<IoStatus>;
  { cm.PioWrite(a, out) } -> std::same_as<IoStatus>;
  {cm.PioDevice(a)};
  { m.RegisterPio(r, d) } -> std::same_as<absl::Status>;
  {m.DeregisterPio(a)};
};

template <typename M>
concept MmioManager = requires(M& m, const M& cm, MmioAddress a, MmioRange r,
                               std::shared_ptr<DeviceMmio> d,
                               absl::Span<uint8_t> in,
                               absl::Span<const uint8_t> out) {
  { cm.MmioRead(a, in) } -> std::same_as<IoStatus>;
  { cm.MmioWrite(a, out) } -> std::same_as<IoStatus>;
  {cm.MmioDevice(a)};
  { m.RegisterMmio(r, d) } -> std::same_as<absl::Status>;
  {m.DeregisterMmio(a)};
};

static_assert(PioManager<IoManager> && MmioManager<IoManager>);

}  // namespace vm_device

#endif  // VM_DEVICE_IO_MANAGER_H_
