// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The benchmark engines' registration paths and the shared sink device.

#include "bench/engines.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <type_traits>
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

template class MapBus<PioAddress, DevicePio>;
template class MapBus<MmioAddress, DeviceMmio>;

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

// -----------------------------------------------------------------------------
// UnsynchronizedEngine
// -----------------------------------------------------------------------------

namespace {

// The calling thread's hints for the UnsynchronizedEngine it last used: the
// same scheme as IoManager's (io_manager.cc, ThreadHints).
struct EngineHints {
  const UnsynchronizedEngine* owner = nullptr;
  internal::BusHint pio;
  internal::BusHint mmio;
};
constinit thread_local EngineHints tls_engine_hints;

template <typename Bus>
absl::Status RegisterOn(Bus& bus, const RangeSpec& r) {
  using A = typename Bus::Address;
  auto range = MakeRange<A>(r.base, r.size);
  if (!range.ok()) return range.status();
  if (r.device == nullptr) return absl::InvalidArgumentError("null device");
  return bus.Register(*range, r.device);
}

// IoManager's Dispatch() (io_manager.cc) without the read side.
template <auto kBus, auto kHint, auto kHandler, typename A, typename Data>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline IoStatus EngineDispatch(
    const UnsynchronizedEngine* self, const internal::RangeTable& root,
    bool hints, uint64_t address, Data data) {
  const A addr(static_cast<typename A::Value>(address));
  A base;
  typename std::remove_cvref_t<decltype((root.*kBus)())>::Device const* device;
  const auto& table = (root.*kBus)();
  IoStatus s;
  if (ABSL_PREDICT_TRUE(hints)) {
    EngineHints& mine = tls_engine_hints;
    if (ABSL_PREDICT_FALSE(mine.owner != self)) mine = EngineHints{self};
    bool from_hint;
    s = table.FindHinted(addr, data.size(), &(mine.*kHint), &base, &device,
                         &from_hint);
  } else {
    s = table.Find(addr, data.size(), &base, &device);
  }
  if (ABSL_PREDICT_FALSE(s != IoStatus::kOk)) return s;
  (device->*kHandler)(base, addr - base, data);
  return IoStatus::kOk;
}

}  // namespace

UnsynchronizedEngine::UnsynchronizedEngine()
    : table_(internal::RangeTable::Build(pio_, mmio_)) {}

absl::Status UnsynchronizedEngine::Add(const RangeSpec& r) {
  absl::Status s =
      r.bus == BusKind::kMmio ? RegisterOn(mmio_, r) : RegisterOn(pio_, r);
  if (s.ok()) table_ = internal::RangeTable::Build(pio_, mmio_);
  return s;
}

absl::Status UnsynchronizedEngine::Remove(BusKind bus, uint64_t addr) {
  bool gone;
  if (bus == BusKind::kMmio) {
    gone = mmio_.Deregister(MmioAddress(addr)).has_value();
    if (!gone) return NotFound(MmioAddress(addr));
  } else {
    const PioAddress a(static_cast<uint16_t>(addr));
    gone = pio_.Deregister(a).has_value();
    if (!gone) return NotFound(a);
  }
  table_ = internal::RangeTable::Build(pio_, mmio_);
  return absl::OkStatus();
}

absl::Status UnsynchronizedEngine::AddAll(absl::Span<const RangeSpec> ranges) {
  absl::Status s;
  for (const RangeSpec& r : ranges) {
    s = r.bus == BusKind::kMmio ? RegisterOn(mmio_, r) : RegisterOn(pio_, r);
    if (!s.ok()) break;
  }
  table_ = internal::RangeTable::Build(pio_, mmio_);
  return s;
}

IoStatus UnsynchronizedEngine::Read(BusKind bus, uint64_t addr,
                                    absl::Span<uint8_t> data) const {
  using internal::RangeTable;
  if (bus == BusKind::kMmio) {
    return EngineDispatch<&RangeTable::mmio, &EngineHints::mmio,
                          &DeviceMmio::MmioRead, MmioAddress>(
        this, *table_, hints_, addr, data);
  }
  return EngineDispatch<&RangeTable::pio, &EngineHints::pio,
                        &DevicePio::PioRead, PioAddress>(this, *table_, hints_,
                                                         addr, data);
}

IoStatus UnsynchronizedEngine::Write(BusKind bus, uint64_t addr,
                                     absl::Span<const uint8_t> data) const {
  using internal::RangeTable;
  if (bus == BusKind::kMmio) {
    return EngineDispatch<&RangeTable::mmio, &EngineHints::mmio,
                          &DeviceMmio::MmioWrite, MmioAddress>(
        this, *table_, hints_, addr, data);
  }
  return EngineDispatch<&RangeTable::pio, &EngineHints::pio,
                        &DevicePio::PioWrite, PioAddress>(this, *table_, hints_,
                                                          addr, data);
}

size_t UnsynchronizedEngine::CountHintHits(
    absl::Span<const Access> stream) const {
  internal::BusHint pio_hint, mmio_hint;
  size_t hits = 0;
  for (const Access& a : stream) {
    bool from_hint = false;
    if (a.bus == BusKind::kMmio) {
      MmioAddress base;
      const DeviceMmio* device;
      (void)table_->mmio().FindHinted(MmioAddress(a.addr), a.size, &mmio_hint,
                                      &base, &device, &from_hint);
    } else {
      PioAddress base;
      const DevicePio* device;
      (void)table_->pio().FindHinted(PioAddress(static_cast<uint16_t>(a.addr)),
                                     a.size, &pio_hint, &base, &device,
                                     &from_hint);
    }
    hits += from_hint;
  }
  return hits;
}

// -----------------------------------------------------------------------------
// DirectIndexEngine
// -----------------------------------------------------------------------------

absl::Status DirectIndexEngine::Add(const RangeSpec& r) {
  const auto refuse = [&r](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "direct_index takes evenly spaced MMIO ranges only: base 0x%x size "
        "0x%x %s",
        r.base, r.size, why));
  };
  if (r.bus != BusKind::kMmio) return refuse("is not MMIO");
  if (r.device == nullptr) return absl::InvalidArgumentError("null device");
  if (r.size == 0 || r.size - 1 > MmioAddress::kMax - r.base) {
    return refuse("is not a valid range");
  }
  const size_t n = devices_.size();
  if (n == 0) {
    first_ = r.base;
    size_ = r.size;
  } else if (r.size != size_) {
    return refuse("differs in size from the first range");
  } else if (n == 1) {
    const uint64_t stride = r.base - first_;
    if (r.base <= first_ || stride < size_ || (stride & (stride - 1)) != 0) {
      return refuse("is not a power-of-two stride above the first range");
    }
    shift_ = static_cast<unsigned>(__builtin_ctzll(stride));
  } else if (r.base - first_ != (uint64_t{n} << shift_) || r.base < first_) {
    return refuse("is not the next range of the sequence");
  }
  devices_.push_back(r.device.get());
  owners_.push_back(r.device);
  return absl::OkStatus();
}

absl::Status DirectIndexEngine::Remove(BusKind, uint64_t) {
  return absl::UnimplementedError("direct_index cannot remove ranges");
}

absl::Status DirectIndexEngine::AddAll(absl::Span<const RangeSpec> ranges) {
  for (const RangeSpec& r : ranges) {
    if (absl::Status s = Add(r); !s.ok()) return s;
  }
  return absl::OkStatus();
}

IoStatus DirectIndexEngine::Locate(uint64_t addr, size_t len,
                                   size_t* index) const {
  MmioAddress::Value last;
  const IoStatus shape =
      range_search_internal::CheckAccessShape(MmioAddress(addr), len, &last);
  if (ABSL_PREDICT_FALSE(shape != IoStatus::kOk)) return shape;
  // Below the first base, the difference wraps to a huge index.
  const uint64_t off = addr - first_;
  const uint64_t i =
      shift_ == 0 ? (off < size_ ? 0 : devices_.size()) : off >> shift_;
  const uint64_t in = off - (i << shift_);
  if (ABSL_PREDICT_FALSE(i >= devices_.size() || in > size_ - 1 ||
                         last - addr > size_ - 1 - in)) {
    return IoStatus::kDeviceNotFound;
  }
  *index = static_cast<size_t>(i);
  return IoStatus::kOk;
}

template <auto kHandler, typename Data>
IoStatus DirectIndexEngine::Call(BusKind bus, uint64_t addr, Data data) const {
  size_t i;
  if (ABSL_PREDICT_FALSE(bus != BusKind::kMmio)) {
    return IoStatus::kDeviceNotFound;
  }
  const IoStatus s = Locate(addr, data.size(), &i);
  if (ABSL_PREDICT_FALSE(s != IoStatus::kOk)) return s;
  const uint64_t base = first_ + (uint64_t{i} << shift_);
  (devices_[i]->*kHandler)(MmioAddress(base), addr - base, data);
  return IoStatus::kOk;
}

IoStatus DirectIndexEngine::Read(BusKind bus, uint64_t addr,
                                 absl::Span<uint8_t> data) const {
  return Call<&DeviceMmio::MmioRead>(bus, addr, data);
}

IoStatus DirectIndexEngine::Write(BusKind bus, uint64_t addr,
                                  absl::Span<const uint8_t> data) const {
  return Call<&DeviceMmio::MmioWrite>(bus, addr, data);
}

}  // namespace bench
}  // namespace vm_device
