// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: bench/engines.h
// -----------------------------------------------------------------------------
//
// The dispatch engines that //bench:dispatch runs side by side, and the device
// they all call. Test-only; not part of the library.
//
//   * `RcuEngine`: this library's `IoManager` (wait-free, RCU-published table).
//   * `RwLockMapEngine`: one `std::map<base, {last, device}>` per bus under a
//     `std::shared_mutex`, read-locked per access: the shape of
//     cloud-hypervisor's `Bus` (`RwLock<BTreeMap>`).
//   * `MutexMapEngine`: the same maps under one `std::mutex`: an I/O manager
//     shared behind one Mutex, as Firecracker and rust-vmm users do.
//   * `RcuLockedEngine` ("rcu_locked"): `RcuEngine` with every range's device
//     a `LockedDevice<MutSinkDevice>` of its own: the cost of the `Mut`
//     adapter's per-device lock on top of `rcu`.
//   * `UnsynchronizedEngine`: immutable sorted arrays searched with the same
//     `range_search_internal` arithmetic as the RCU table, and no
//     synchronization at all. The floor: no correct concurrent engine beats
//     it. Changing it while another thread dispatches is a data race.
//   * `DirectIndexEngine` ("direct_index"): no search at all, for evenly
//     spaced ranges only: the range index is arithmetic on the address, then
//     one load of the device pointer. The floor of any lookup, against which
//     the cost of the n devices' own cache misses is visible.
//
// Every engine routes exactly like `IoManager`: the same access-shape checks
// (`CheckAccessShape`), the same "whole access inside one range" rule, the
// same overlap refusal on registration (tests/bench_engines_test.cc checks
// this). Every engine calls the same `SinkDevice`, whose handlers do the same
// trivial work with no shared write, so only lookup and synchronization differ.
// For the same reason every engine's dispatch is one out-of-line call, as a
// call into IoManager (a compiled library) is: the other engines' Read() and
// Write() are ABSL_ATTRIBUTE_NOINLINE, so the benchmark loop cannot fold their
// search into itself while IoManager's stays behind a call.
//
// Thread safety: `Read()`/`Write()` are safe concurrently with each other on
// every engine, and with `Add()`/`Remove()` on all but `UnsynchronizedEngine`
// and `DirectIndexEngine`.

#ifndef VM_DEVICE_BENCH_ENGINES_H_
#define VM_DEVICE_BENCH_ENGINES_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "src/internal/range_table.h"
#include "vm_device/address.h"
#include "vm_device/bus.h"
#include "vm_device/bus_range.h"
#include "vm_device/device.h"
#include "vm_device/internal/range_search.h"
#include "vm_device/io_manager.h"
#include "vm_device/io_status.h"
#include "vm_device/locked_device.h"
#include "vm_device/sharded_device.h"

namespace vm_device {
namespace bench {

// BusKind
//
// Which address space an access or a range is on.
enum class BusKind : uint8_t { kPio, kMmio };

// CallRecord
//
// What the last handler call on this thread saw. Thread-local, so recording
// it writes nothing shared.
struct CallRecord {
  const void* device = nullptr;
  BusKind bus = BusKind::kMmio;
  bool write = false;
  uint64_t base = 0;
  uint64_t offset = 0;
  size_t size = 0;
};

// LastCall(), ClearLastCall()
//
// The calling thread's record of its last handler call.
const CallRecord& LastCall();
void ClearLastCall();

// SinkDevice
//
// The device every engine calls, on both buses. A read fills the caller's
// buffer with the device's id; a write folds `data[0]` into a thread-local
// sink. Both record the call in the thread's `CallRecord`. Neither touches
// memory shared between threads, so the handler costs the same on every
// engine and at every thread count.
class SinkDevice final : public DevicePio, public DeviceMmio {
 public:
  explicit SinkDevice(uint8_t id) : id_(id) {}

  uint8_t id() const { return id_; }

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override;
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const override;
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override;
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override;

 private:
  const uint8_t id_;
};

// RangeSpec
//
// One range to register: `size` addresses from `base` on `bus`.
struct RangeSpec {
  BusKind bus;
  uint64_t base;
  uint64_t size;
  std::shared_ptr<SinkDevice> device;
};

// Access
//
// One access of a workload: `size` bytes at `addr` on `bus`.
struct Access {
  uint64_t addr;
  uint32_t size;
  BusKind bus;
  bool write;
};

// ---------------------------------------------------------------------------
// RcuEngine
// ---------------------------------------------------------------------------

class RcuEngine {
 public:
  static constexpr absl::string_view kName = "rcu";
  static constexpr bool kConcurrentChanges = true;

  // RcuEngine::Add(), Remove()
  //
  // Register / deregister (the range holding `addr`), as IoManager does.
  absl::Status Add(const RangeSpec& r);
  absl::Status Remove(BusKind bus, uint64_t addr);

  // RcuEngine::AddAll()
  //
  // Registers every range of `ranges` in one IoBatch.
  absl::Status AddAll(absl::Span<const RangeSpec> ranges);

  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus Read(BusKind bus, uint64_t addr,
                                             absl::Span<uint8_t> data) const {
    if (bus == BusKind::kMmio)
      return manager_.MmioRead(MmioAddress(addr), data);
    return manager_.PioRead(PioAddress(static_cast<uint16_t>(addr)), data);
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus
  Write(BusKind bus, uint64_t addr, absl::Span<const uint8_t> data) const {
    if (bus == BusKind::kMmio) {
      return manager_.MmioWrite(MmioAddress(addr), data);
    }
    return manager_.PioWrite(PioAddress(static_cast<uint16_t>(addr)), data);
  }

  IoManager& manager() { return manager_; }

  // RcuEngine::SetDispatchHints()
  //
  // IoManager::SetDispatchHints().
  void SetDispatchHints(bool enabled) { manager_.SetDispatchHints(enabled); }

 private:
  IoManager manager_;
};

// ---------------------------------------------------------------------------
// RcuLockedEngine, and the devices of the Mut-adapter benchmarks
// ---------------------------------------------------------------------------

// MutSinkDevice
//
// `SinkDevice`'s work as a device written for one caller at a time
// (`MutDevicePio`/`MutDeviceMmio`), to be wrapped in a `LockedDevice`. Its
// handlers are `SinkDevice`'s, called directly, so `rcu_locked` and `rcu`
// differ by the adapter (lock, re-entry record) alone.
class MutSinkDevice final : public MutDevicePio, public MutDeviceMmio {
 public:
  explicit MutSinkDevice(uint8_t id) : sink_(id) {}

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) override {
    sink_.PioRead(base, offset, data);
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) override {
    sink_.PioWrite(base, offset, data);
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) override {
    sink_.MmioRead(base, offset, data);
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) override {
    sink_.MmioWrite(base, offset, data);
  }

 private:
  SinkDevice sink_;
};

// RcuLockedEngine
//
// `RcuEngine` where each registered range gets a new
// `LockedDevice<MutSinkDevice>` (with the id of the range's `SinkDevice`),
// so that no two ranges share a lock.
class RcuLockedEngine {
 public:
  static constexpr absl::string_view kName = "rcu_locked";
  static constexpr bool kConcurrentChanges = true;

  absl::Status Add(const RangeSpec& r);
  absl::Status Remove(BusKind bus, uint64_t addr);
  absl::Status AddAll(absl::Span<const RangeSpec> ranges);

  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus Read(BusKind bus, uint64_t addr,
                                             absl::Span<uint8_t> data) const {
    return rcu_.Read(bus, addr, data);
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus
  Write(BusKind bus, uint64_t addr, absl::Span<const uint8_t> data) const {
    return rcu_.Write(bus, addr, data);
  }

  IoManager& manager() { return rcu_.manager(); }

 private:
  RcuEngine rcu_;
};

// BankedMutDevice
//
// The device of BM_Sharded: `kShards` independent register banks of
// `kBankBytes` bytes of MMIO each, written for one caller at a time. Each
// bank is eight 64-bit registers on a cache line of its own; a write stores
// into the register it addresses, a read returns it. `ShardOf` maps an access
// to its bank, so `ShardedDevice` gives each bank its own lock; wrapped in a
// `LockedDevice` it has one lock for all banks.
class BankedMutDevice final : public MutDeviceMmio {
 public:
  static constexpr size_t kShards = 4;
  static constexpr uint64_t kBankBytes = 0x1000;

  size_t ShardOf(MmioAddress, MmioAddressOffset offset, size_t) const {
    return static_cast<size_t>(offset / kBankBytes);
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) override;
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) override;

 private:
  struct alignas(ABSL_CACHELINE_SIZE) Bank {
    uint64_t regs[8] = {};
  };
  Bank banks_[kShards];
};

// ---------------------------------------------------------------------------
// The ordered-map engines
// ---------------------------------------------------------------------------

namespace engines_internal {

// MapBus
//
// One bus as `std::map<base, {last, device}>`. Not synchronized: the engines
// below wrap it in their locks.
template <typename A, typename D>
class MapBus {
 public:
  using Address = A;
  using Device = D;
  using Value = typename A::Value;

  absl::Status Add(BusRange<A> range, std::shared_ptr<D> device);
  absl::Status Remove(A addr);

  // MapBus::Find()
  //
  // IoManager's access check: kOk and the range's base and device when one
  // range holds the whole access.
  ABSL_ATTRIBUTE_ALWAYS_INLINE IoStatus Find(A addr, size_t len, A* base,
                                             const D** device) const {
    Value access_last;
    const IoStatus shape =
        range_search_internal::CheckAccessShape(addr, len, &access_last);
    if (ABSL_PREDICT_FALSE(shape != IoStatus::kOk)) return shape;
    auto it = map_.upper_bound(addr.value());
    if (ABSL_PREDICT_FALSE(it == map_.begin()))
      return IoStatus::kDeviceNotFound;
    --it;
    if (ABSL_PREDICT_FALSE(it->second.last < access_last)) {
      return IoStatus::kDeviceNotFound;
    }
    *base = A(it->first);
    *device = it->second.device.get();
    return IoStatus::kOk;
  }

 private:
  struct Entry {
    Value last;
    std::shared_ptr<D> device;
  };
  std::map<Value, Entry> map_;
};

// DispatchOn()
//
// Finds the range of `bus` holding an access of `data.size()` bytes at `addr`
// and calls the device's handler `kHandler` (e.g. &DeviceMmio::MmioRead) on
// it. Shared by the non-RCU engines; the same steps as IoManager's dispatch.
template <auto kHandler, typename Bus, typename Data>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline IoStatus DispatchOn(const Bus& bus,
                                                        uint64_t addr,
                                                        Data data) {
  using A = typename Bus::Address;
  const A a(static_cast<typename A::Value>(addr));
  A base;
  const typename Bus::Device* device;
  const IoStatus s = bus.Find(a, data.size(), &base, &device);
  if (ABSL_PREDICT_FALSE(s != IoStatus::kOk)) return s;
  (device->*kHandler)(base, a - base, data);
  return IoStatus::kOk;
}

}  // namespace engines_internal

// RwLockMapEngine
//
// A `std::map` per bus, each under its own `std::shared_mutex`: readers take
// the read lock for the lookup and the handler call, writers the write lock.
class RwLockMapEngine {
 public:
  static constexpr absl::string_view kName = "rwlock_map";
  static constexpr bool kConcurrentChanges = true;

  absl::Status Add(const RangeSpec& r);
  absl::Status Remove(BusKind bus, uint64_t addr);
  absl::Status AddAll(absl::Span<const RangeSpec> ranges);

  ABSL_ATTRIBUTE_NOINLINE IoStatus Read(BusKind bus, uint64_t addr,
                                        absl::Span<uint8_t> data) const {
    if (bus == BusKind::kMmio) {
      std::shared_lock lock(mmio_mu_);
      return engines_internal::DispatchOn<&DeviceMmio::MmioRead>(mmio_, addr,
                                                                 data);
    }
    std::shared_lock lock(pio_mu_);
    return engines_internal::DispatchOn<&DevicePio::PioRead>(pio_, addr, data);
  }
  ABSL_ATTRIBUTE_NOINLINE IoStatus Write(BusKind bus, uint64_t addr,
                                         absl::Span<const uint8_t> data) const {
    if (bus == BusKind::kMmio) {
      std::shared_lock lock(mmio_mu_);
      return engines_internal::DispatchOn<&DeviceMmio::MmioWrite>(mmio_, addr,
                                                                  data);
    }
    std::shared_lock lock(pio_mu_);
    return engines_internal::DispatchOn<&DevicePio::PioWrite>(pio_, addr, data);
  }

 private:
  mutable std::shared_mutex pio_mu_;
  engines_internal::MapBus<PioAddress, DevicePio> pio_;
  mutable std::shared_mutex mmio_mu_;
  engines_internal::MapBus<MmioAddress, DeviceMmio> mmio_;
};

// MutexMapEngine
//
// Both maps under one `std::mutex`, held for the lookup and the handler call.
class MutexMapEngine {
 public:
  static constexpr absl::string_view kName = "mutex_map";
  static constexpr bool kConcurrentChanges = true;

  absl::Status Add(const RangeSpec& r);
  absl::Status Remove(BusKind bus, uint64_t addr);
  absl::Status AddAll(absl::Span<const RangeSpec> ranges);

  ABSL_ATTRIBUTE_NOINLINE IoStatus Read(BusKind bus, uint64_t addr,
                                        absl::Span<uint8_t> data) const {
    std::lock_guard lock(mu_);
    if (bus == BusKind::kMmio) {
      return engines_internal::DispatchOn<&DeviceMmio::MmioRead>(mmio_, addr,
                                                                 data);
    }
    return engines_internal::DispatchOn<&DevicePio::PioRead>(pio_, addr, data);
  }
  ABSL_ATTRIBUTE_NOINLINE IoStatus Write(BusKind bus, uint64_t addr,
                                         absl::Span<const uint8_t> data) const {
    std::lock_guard lock(mu_);
    if (bus == BusKind::kMmio) {
      return engines_internal::DispatchOn<&DeviceMmio::MmioWrite>(mmio_, addr,
                                                                  data);
    }
    return engines_internal::DispatchOn<&DevicePio::PioWrite>(pio_, addr, data);
  }

 private:
  mutable std::mutex mu_;
  engines_internal::MapBus<PioAddress, DevicePio> pio_;
  engines_internal::MapBus<MmioAddress, DeviceMmio> mmio_;
};

// UnsynchronizedEngine
//
// IoManager's snapshot and dispatch steps without the RCU read side. Add /
// Remove rebuild the snapshot in place: they must not run while any thread
// dispatches.
class UnsynchronizedEngine {
 public:
  static constexpr absl::string_view kName = "unsynchronized";
  static constexpr bool kConcurrentChanges = false;

  UnsynchronizedEngine();

  absl::Status Add(const RangeSpec& r);
  absl::Status Remove(BusKind bus, uint64_t addr);
  // One rebuild for all of `ranges`.
  absl::Status AddAll(absl::Span<const RangeSpec> ranges);

  ABSL_ATTRIBUTE_NOINLINE IoStatus Read(BusKind bus, uint64_t addr,
                                        absl::Span<uint8_t> data) const;
  ABSL_ATTRIBUTE_NOINLINE IoStatus Write(BusKind bus, uint64_t addr,
                                         absl::Span<const uint8_t> data) const;

  // UnsynchronizedEngine::SetDispatchHints()
  //
  // As IoManager::SetDispatchHints(). Not synchronized with dispatch.
  void SetDispatchHints(bool enabled) { hints_ = enabled; }

  // UnsynchronizedEngine::CountHintHits()
  //
  // Replays `stream` in order through the dispatch's hinted search
  // (BusTable::FindHinted(), with fresh hints, as one thread that starts
  // dispatching now), calling no device, and returns how many accesses a
  // hint answered.
  size_t CountHintHits(absl::Span<const Access> stream) const;

 private:
  Bus<PioAddress, std::shared_ptr<DevicePio>> pio_;
  Bus<MmioAddress, std::shared_ptr<DeviceMmio>> mmio_;
  internal::RangeTablePtr table_;
  bool hints_ = true;
};

// DirectIndexEngine
//
// Not a design anyone could ship: the floor of every lookup, for maps of
// evenly spaced MMIO ranges only (the uniform workload's). The range of an
// address is computed by arithmetic, (addr - first base) >> log2(stride), and
// its device pointer is one 8-byte load from a dense array; then the access
// is checked against the range and the device called, as the other engines
// do. No search could do less, so `direct_index` at n ranges against `rcu`
// at 16 is the least that any lookup could score on a "rcu n / 16 ranges"
// ratio on this machine: what remains is the device call and the cache misses
// of the n devices and their pointers. It is built once per cell and never
// changed: Add() appends the next range of the sequence only, and Remove()
// refuses with kUnimplemented (no workload removes from it). Not thread-safe
// for changes.
class DirectIndexEngine {
 public:
  static constexpr absl::string_view kName = "direct_index";
  static constexpr bool kConcurrentChanges = false;

  // DirectIndexEngine::Add()
  //
  // Appends `r`: the first range, or the next of the sequence (same size,
  // same power-of-two stride, which the second range sets). Anything else is
  // kInvalidArgument, naming the range.
  absl::Status Add(const RangeSpec& r);
  absl::Status Remove(BusKind bus, uint64_t addr);
  absl::Status AddAll(absl::Span<const RangeSpec> ranges);

  ABSL_ATTRIBUTE_NOINLINE IoStatus Read(BusKind bus, uint64_t addr,
                                        absl::Span<uint8_t> data) const;
  ABSL_ATTRIBUTE_NOINLINE IoStatus Write(BusKind bus, uint64_t addr,
                                         absl::Span<const uint8_t> data) const;

 private:
  // The access check: on kOk, `*index` is the range holding
  // [addr, addr + len).
  IoStatus Locate(uint64_t addr, size_t len, size_t* index) const;
  // Read() and Write(): the check, then `kHandler` of the range's device.
  template <auto kHandler, typename Data>
  IoStatus Call(BusKind bus, uint64_t addr, Data data) const;

  uint64_t first_ = 0;
  uint64_t size_ = 0;
  unsigned shift_ = 0;  // log2(stride); 0 until a second range
  std::vector<const DeviceMmio*> devices_;
  std::vector<std::shared_ptr<DeviceMmio>> owners_;
};

// Dispatch()
//
// Performs `a` on `engine`, reading into / writing from `buf` (at least
// `a.size` bytes).
template <typename Engine>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline IoStatus Dispatch(const Engine& engine,
                                                      const Access& a,
                                                      uint8_t* buf) {
  if (a.write) {
    return engine.Write(a.bus, a.addr, absl::Span<const uint8_t>(buf, a.size));
  }
  return engine.Read(a.bus, a.addr, absl::Span<uint8_t>(buf, a.size));
}

}  // namespace bench
}  // namespace vm_device

#endif  // VM_DEVICE_BENCH_ENGINES_H_
