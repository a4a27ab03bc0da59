// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The benchmark engines' registration paths and the shared sink device.

#include "bench/engines.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vm_device {
namespace bench {
namespace {

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

thread_local CallRecord tls_last_call;
thread_local uint64_t tls_sink;

template <typename A>
absl::StatusOr<BusRange<A>> MakeRange(uint64_t base, uint64_t size) {
  using V = typename A::Value;
  if (base > A::kMax || size > A::kMax) {
    return absl::InvalidArgumentError(
        absl::StrFormat("range base 0x%x size 0x%x does not fit the %s bus",
                        base, size, A::kBusName));
  }
  return BusRange<A>::Create(A(static_cast<V>(base)), static_cast<V>(size));
}

template <typename A>
absl::Status NotFound(A addr) {
  return absl::NotFoundError(
      absl::StrFormat("no %s range holds address 0x%x", A::kBusName,
                      static_cast<uint64_t>(addr.value())));
}

template <typename A>
absl::Status Overlap(BusRange<A> range) {
  return absl::AlreadyExistsError(
      absl::StrCat(range.ToString(), " overlaps a registered range"));
}

// Adds every range of `ranges` to `engine` one by one.
template <typename Engine>
absl::Status AddEach(Engine& engine, absl::Span<const RangeSpec> ranges) {
  for (const RangeSpec& r : ranges) {
    if (absl::Status s = engine.Add(r); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

const CallRecord& LastCall() { return tls_last_call; }
void ClearLastCall() { tls_last_call = CallRecord(); }

// -----------------------------------------------------------------------------
// SinkDevice
// -----------------------------------------------------------------------------

void SinkDevice::PioRead(PioAddress base, PioAddressOffset offset,
                         absl::Span<uint8_t> data) const {
  std::memset(data.data(), id_, data.size());
  tls_last_call = {this,         BusKind::kPio, false,
                   base.value(), offset,        data.size()};
}

void SinkDevice::PioWrite(PioAddress base, PioAddressOffset offset,
                          absl::Span<const uint8_t> data) const {
  tls_sink += data[0];
  tls_last_call = {this,         BusKind::kPio, true,
                   base.value(), offset,        data.size()};
}

void SinkDevice::MmioRead(MmioAddress base, MmioAddressOffset offset,
                          absl::Span<uint8_t> data) const {
  std::memset(data.data(), id_, data.size());
  tls_last_call = {this,         BusKind::kMmio, false,
                   base.value(), offset,         data.size()};
}

void SinkDevice::MmioWrite(MmioAddress base, MmioAddressOffset offset,
                           absl::Span<const uint8_t> data) const {
  tls_sink += data[0];
  tls_last_call = {this,         BusKind::kMmio, true,
                   base.value(), offset,         data.size()};
}

// -----------------------------------------------------------------------------
// RcuEngine
// -----------------------------------------------------------------------------

absl::Status RcuEngine::Add(const RangeSpec& r) {
  if (r.bus == BusKind::kMmio) {
    auto range = MakeRange<MmioAddress>(r.base, r.size);
    if (!range.ok()) return range.status();
    return manager_.RegisterMmio(*range, r.device);
  }
  auto range = MakeRange<PioAddress>(r.base, r.size);
  if (!range.ok()) return range.status();
  return manager_.RegisterPio(*range, r.device);
}

absl::Status RcuEngine::Remove(BusKind bus, uint64_t addr) {
  if (bus == BusKind::kMmio) {
    return manager_.DeregisterMmio(MmioAddress(addr)).status();
  }
  return manager_.DeregisterPio(PioAddress(static_cast<uint16_t>(addr)))
      .status();
}

absl::Status RcuEngine::AddAll(absl::Span<const RangeSpec> ranges) {
  IoBatch batch;
  for (const RangeSpec& r : ranges) {
    if (r.bus == BusKind::kMmio) {
      auto range = MakeRange<MmioAddress>(r.base, r.size);
      if (!range.ok()) return range.status();
      batch.AddMmio(*range, r.device);
    } else {
      auto range = MakeRange<PioAddress>(r.base, r.size);
      if (!range.ok()) return range.status();
      batch.AddPio(*range, r.device);
    }
  }
  return manager_.Commit(std::move(batch)).status();
}

// -----------------------------------------------------------------------------
// RcuLockedEngine, BankedMutDevice
// -----------------------------------------------------------------------------

namespace {

// `r` with its device wrapped as a LockedDevice of its own.
template <typename Batch>
absl::Status AddLocked(const RangeSpec& r, Batch add) {
  if (r.device == nullptr) return absl::InvalidArgumentError("null device");
  auto device = MakeLocked<MutSinkDevice>(r.device->id());
  if (r.bus == BusKind::kMmio) {
    auto range = MakeRange<MmioAddress>(r.base, r.size);
    if (!range.ok()) return range.status();
    return add(*range, std::shared_ptr<DeviceMmio>(device));
  }
  auto range = MakeRange<PioAddress>(r.base, r.size);
  if (!range.ok()) return range.status();
  return add(*range, std::shared_ptr<DevicePio>(device));
}

}  // namespace

absl::Status RcuLockedEngine::Add(const RangeSpec& r) {
  IoManager& m = rcu_.manager();
  return AddLocked(
      r, Overloaded{[&](MmioRange range, std::shared_ptr<DeviceMmio> d) {
                      return m.RegisterMmio(range, std::move(d));
                    },
                    [&](PioRange range, std::shared_ptr<DevicePio> d) {
                      return m.RegisterPio(range, std::move(d));
                    }});
}

absl::Status RcuLockedEngine::Remove(BusKind bus, uint64_t addr) {
  return rcu_.Remove(bus, addr);
}

absl::Status RcuLockedEngine::AddAll(absl::Span<const RangeSpec> ranges) {
  IoBatch batch;
  for (const RangeSpec& r : ranges) {
    absl::Status s = AddLocked(
        r, Overloaded{[&](MmioRange range, std::shared_ptr<DeviceMmio> d) {
                        batch.AddMmio(range, std::move(d));
                        return absl::OkStatus();
                      },
                      [&](PioRange range, std::shared_ptr<DevicePio> d) {
                        batch.AddPio(range, std::move(d));
                        return absl::OkStatus();
                      }});
    if (!s.ok()) return s;
  }
  return rcu_.manager().Commit(std::move(batch)).status();
}

void BankedMutDevice::MmioRead(MmioAddress, MmioAddressOffset offset,
                               absl::Span<uint8_t> data) {
  const uint64_t reg = banks_[(offset / kBankBytes) % kShards]
                           .regs[(offset % kBankBytes) / 8 % 8];
  std::memcpy(data.data(), &reg, std::min(data.size(), sizeof(reg)));
}

void BankedMutDevice::MmioWrite(MmioAddress, MmioAddressOffset offset,
                                absl::Span<const uint8_t> data) {
  uint64_t reg = 0;
  std::memcpy(&reg, data.data(), std::min(data.size(), sizeof(reg)));
  banks_[(offset / kBankBytes) % kShards].regs[(offset % kBankBytes) / 8 % 8] =
      reg;
}

// -----------------------------------------------------------------------------
// MapBus, SortedBus
// -----------------------------------------------------------------------------

namespace engines_internal {

template <typename A, typename D>
absl::Status MapBus<A, D>::Add(BusRange<A> range, std::shared_ptr<D> device) {
  if (device == nullptr) return absl::InvalidArgumentError("null device");
  // The first range starting after `range.base()`, and the one before it.
  auto next = map_.upper_bound(range.base().value());
  if (next != map_.end() && next->first <= range.last().value()) {
    return Overlap(range);
  }
  if (next != map_.begin()) {
    auto prev = std::prev(next);
    if (prev->second.last >= range.base().value()) return Overlap(range);
  }
  map_.emplace_hint(next, range.base().value(),
                    Entry{range.last().value(), std::move(device)});
  return absl::OkStatus();
}

template <typename A, typename D>
absl::Status MapBus<A, D>::Remove(A addr) {
  auto it = map_.upper_bound(addr.value());
  if (it == map_.begin()) return NotFound(addr);
  --it;
  if (it->second.last < addr.value()) return NotFound(addr);
  map_.erase(it);
  return absl::OkStatus();
}

template <typename A, typename D>
absl::Status SortedBus<A, D>::Add(BusRange<A> range,
                                  std::shared_ptr<D> device) {
  if (device == nullptr) return absl::InvalidArgumentError("null device");
  const Value base = range.base().value();
  const size_t at = static_cast<size_t>(
      std::upper_bound(bases_.begin(), bases_.end(), base) - bases_.begin());
  if (at < bases_.size() && bases_[at] <= range.last().value()) {
    return Overlap(range);
  }
  if (at > 0 && slots_[at - 1].last >= base) return Overlap(range);
  bases_.insert(bases_.begin() + at, base);
  slots_.insert(slots_.begin() + at, Slot{range.last().value(), device.get()});
  owners_.insert(owners_.begin() + at, std::move(device));
  Relayout();
  return absl::OkStatus();
}

template <typename A, typename D>
absl::Status SortedBus<A, D>::Remove(A addr) {
  const size_t n = bases_.size();
  const size_t i =
      range_search_internal::FindFloor(bases_.data(), n, addr.value());
  if (i == n || slots_[i].last < addr.value()) return NotFound(addr);
  bases_.erase(bases_.begin() + i);
  slots_.erase(slots_.begin() + i);
  owners_.erase(owners_.begin() + i);
  Relayout();
  return absl::OkStatus();
}

template <typename A, typename D>
void SortedBus<A, D>::Relayout() {
  const size_t n = bases_.size();
  auto bytes = [](size_t b) { return (b + 63) / 64 * 64; };
  keys_mem_.reset(
      ::operator new(bytes((n + 1) * sizeof(Value)), std::align_val_t(64)));
  slots_mem_.reset(::operator new(bytes((n + 1) * sizeof(typename Table::Slot)),
                                  std::align_val_t(64)));
  auto* k = static_cast<Value*>(keys_mem_.get());
  auto* s = static_cast<typename Table::Slot*>(slots_mem_.get());
  k[0] = 0;
  s[0] = {0, nullptr};
  range_search_internal::ForEachEytzingerSlot(n, [&](size_t node, size_t i) {
    k[node] = bases_[i];
    s[node] = {slots_[i].last, slots_[i].device};
  });
  view_ = Table{k, s, n, range_search_internal::EytzingerLevels(n)};
}

template class MapBus<PioAddress, DevicePio>;
template class MapBus<MmioAddress, DeviceMmio>;
template class SortedBus<PioAddress, DevicePio>;
template class SortedBus<MmioAddress, DeviceMmio>;

}  // namespace engines_internal

// -----------------------------------------------------------------------------
// The map and array engines
// -----------------------------------------------------------------------------

namespace {

// Adds `r` to whichever of `pio` / `mmio` it belongs to.
template <typename PioBus, typename MmioBus>
absl::Status AddTo(const RangeSpec& r, PioBus& pio, MmioBus& mmio) {
  if (r.bus == BusKind::kMmio) {
    auto range = MakeRange<MmioAddress>(r.base, r.size);
    if (!range.ok()) return range.status();
    return mmio.Add(*range, r.device);
  }
  auto range = MakeRange<PioAddress>(r.base, r.size);
  if (!range.ok()) return range.status();
  return pio.Add(*range, r.device);
}

template <typename PioBus, typename MmioBus>
absl::Status RemoveFrom(BusKind bus, uint64_t addr, PioBus& pio,
                        MmioBus& mmio) {
  if (bus == BusKind::kMmio) return mmio.Remove(MmioAddress(addr));
  return pio.Remove(PioAddress(static_cast<uint16_t>(addr)));
}

}  // namespace

absl::Status RwLockMapEngine::Add(const RangeSpec& r) {
  std::unique_lock lock(r.bus == BusKind::kMmio ? mmio_mu_ : pio_mu_);
  return AddTo(r, pio_, mmio_);
}

absl::Status RwLockMapEngine::Remove(BusKind bus, uint64_t addr) {
  std::unique_lock lock(bus == BusKind::kMmio ? mmio_mu_ : pio_mu_);
  return RemoveFrom(bus, addr, pio_, mmio_);
}

absl::Status RwLockMapEngine::AddAll(absl::Span<const RangeSpec> ranges) {
  return AddEach(*this, ranges);
}

absl::Status MutexMapEngine::Add(const RangeSpec& r) {
  std::lock_guard lock(mu_);
  return AddTo(r, pio_, mmio_);
}

absl::Status MutexMapEngine::Remove(BusKind bus, uint64_t addr) {
  std::lock_guard lock(mu_);
  return RemoveFrom(bus, addr, pio_, mmio_);
}

absl::Status MutexMapEngine::AddAll(absl::Span<const RangeSpec> ranges) {
  return AddEach(*this, ranges);
}

absl::Status UnsynchronizedEngine::Add(const RangeSpec& r) {
  return AddTo(r, pio_, mmio_);
}

absl::Status UnsynchronizedEngine::Remove(BusKind bus, uint64_t addr) {
  return RemoveFrom(bus, addr, pio_, mmio_);
}

absl::Status UnsynchronizedEngine::AddAll(absl::Span<const RangeSpec> ranges) {
  return AddEach(*this, ranges);
}

}  // namespace bench
}  // namespace vm_device
