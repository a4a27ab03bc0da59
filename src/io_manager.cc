// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// IoManager: wait-free dispatch over the RCU-published RangeTable, and the
// writer side that edits the master buses, publishes and retires.

#include "vm_device/io_manager.h"

#include <cstddef>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/config.h"
#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "src/internal/range_hook.h"
#include "src/internal/range_table.h"
#include "src/internal/rcu.h"
#include "vm_device/access_info.h"
#include "vm_device/internal/annotated_mutex_lock.h"
#include "vm_device/internal/device_lock.h"

namespace vm_device {
namespace {

using internal::RangeTable;

using WriterLock = sync_internal::AnnotatedMutexLock;

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

// A snapshot that was replaced, with the devices whose ranges the change
// removed, destroyed together after a grace period.
struct RetiredSnapshot final : internal::Retired {
  internal::RangeTablePtr table;
  std::vector<std::shared_ptr<const void>> devices;
};

absl::Status Prefixed(const absl::Status& s, absl::string_view prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

// `s` with the prefix `make_prefix()` returns, or `s` unchanged if building
// the message runs out of memory: error statuses are built after every
// change has been undone, and out of memory there must not hide what
// happened (the code stays truthful).
template <typename F>
absl::Status PrefixedOrBare(const absl::Status& s, F make_prefix) {
  try {
    return Prefixed(s, make_prefix());
  } catch (const std::bad_alloc&) {
    return s;
  }
}

// The messages below use absl::StrCat, never absl::StrFormat: out of memory
// inside StrFormat terminates the process (Debian's Abseil lets no exception
// out of it); inside StrCat it throws std::bad_alloc, which the callers turn
// into a status with the right code and no message.
template <typename A>
absl::Status NoRangeHolds(A addr) {
  return absl::NotFoundError(
      absl::StrCat("no ", A::kBusName, " range holds address 0x",
                   absl::Hex(static_cast<uint64_t>(addr.value()))));
}

template <typename A>
absl::Status NullDevice(const BusRange<A>& range) {
  return absl::InvalidArgumentError(
      absl::StrCat("null device for ", range.ToString()));
}

}  // namespace

// -----------------------------------------------------------------------------
// IoBatch
// -----------------------------------------------------------------------------

IoBatch& IoBatch::AddPio(PioRange range, std::shared_ptr<DevicePio> device) {
  ops_.push_back(AddPioOp{range, std::move(device)});
  return *this;
}

IoBatch& IoBatch::AddMmio(MmioRange range, std::shared_ptr<DeviceMmio> device) {
  ops_.push_back(AddMmioOp{range, std::move(device)});
  return *this;
}

IoBatch& IoBatch::RemovePio(PioAddress addr) {
  ops_.push_back(RemovePioOp{addr, /*must_exist=*/true});
  return *this;
}

IoBatch& IoBatch::RemoveMmio(MmioAddress addr) {
  ops_.push_back(RemoveMmioOp{addr, /*must_exist=*/true});
  return *this;
}

// -----------------------------------------------------------------------------
// Construction
// -----------------------------------------------------------------------------

IoManager::IoManager() {
  // Now, so that retiring after a publish cannot fail (rcu.h).
  internal::StartReclaimer();
  // In the body: the buses are declared after table_.
  WriterLock lock(&writer_mu_);
  // relaxed: no other thread can see the manager before it is constructed.
  table_.store(RangeTable::Build(pio_bus_, mmio_bus_).release(),
               std::memory_order_relaxed);
}

IoManager::~IoManager() {
  bool changed;
  {
    WriterLock lock(&writer_mu_);
    changed = publishes_ > 0;
  }
  // Without the writer mutex: a retired device's destructor, run by the
  // reclaimer meanwhile, may still call stats() or Deregister*() on this
  // manager (the manager is whole until the wait returns).
  if (changed && !internal::InReadSection() && !internal::OnReclaimThread()) {
    // Release what earlier changes retired before the manager is gone.
    internal::WaitForRetired();
  }
  // No dispatch may run now (REQUIRES), so nobody can hold the current
  // snapshot: free it at once.
  WriterLock lock(&writer_mu_);
  internal::RangeTableDeleter()(
      const_cast<RangeTable*>(table_.load(std::memory_order_relaxed)));
}

// -----------------------------------------------------------------------------
// Dispatch
// -----------------------------------------------------------------------------
//
// Each dispatch: enter the read side (a thread-local counter), one acquire
// load of the root pointer, the search, the device call, leave. The acquire
// load pairs with the release store in CommitLocked(): everything written
// into the snapshot before it was published is visible here (A.2 in
// range_table.h). On x86 and arm64 an acquire load is a plain load (arm64:
// LDAR), and it writes nothing.

namespace internal {

// Dispatch to a tagged slot (device.h, range_table.h): a Device*WithInfo or a
// range hook (access rules, doorbell). Out of line, so that the dispatch of a
// plain device pays one test of the tag bits and nothing else; wait-free
// apart from the handler and a doorbell's eventfd write(2).
template <auto kHandler>
struct TaggedOps;

template <>
struct TaggedOps<&DevicePio::PioRead> {
  using Info = DevicePioWithInfo;
  using Hook = PioHook;
  static void WithInfo(const Info& d, const PioAccessInfo& a,
                       absl::Span<uint8_t> data) {
    d.PioReadWithInfo(a, data);
  }
  static IoStatus Hooked(const Hook& h, PioAddress b, PioAddressOffset o,
                         absl::Span<uint8_t> data) {
    return h.Read(b, o, data);
  }
};

template <>
struct TaggedOps<&DevicePio::PioWrite> {
  using Info = DevicePioWithInfo;
  using Hook = PioHook;
  static void WithInfo(const Info& d, const PioAccessInfo& a,
                       absl::Span<const uint8_t> data) {
    d.PioWriteWithInfo(a, data);
  }
  static IoStatus Hooked(const Hook& h, PioAddress b, PioAddressOffset o,
                         absl::Span<const uint8_t> data) {
    return h.Write(b, o, data);
  }
};

template <>
struct TaggedOps<&DeviceMmio::MmioRead> {
  using Info = DeviceMmioWithInfo;
  using Hook = MmioHook;
  static void WithInfo(const Info& d, const MmioAccessInfo& a,
                       absl::Span<uint8_t> data) {
    d.MmioReadWithInfo(a, data);
  }
  static IoStatus Hooked(const Hook& h, MmioAddress b, MmioAddressOffset o,
                         absl::Span<uint8_t> data) {
    return h.Read(b, o, data);
  }
};

template <>
struct TaggedOps<&DeviceMmio::MmioWrite> {
  using Info = DeviceMmioWithInfo;
  using Hook = MmioHook;
  static void WithInfo(const Info& d, const MmioAccessInfo& a,
                       absl::Span<const uint8_t> data) {
    d.MmioWriteWithInfo(a, data);
  }
  static IoStatus Hooked(const Hook& h, MmioAddress b, MmioAddressOffset o,
                         absl::Span<const uint8_t> data) {
    return h.Write(b, o, data);
  }
};

template <auto kHandler, typename D, typename A, typename Data>
ABSL_ATTRIBUTE_NOINLINE IoStatus DispatchTagged(const D* tagged, A base,
                                                A addr, Data data) {
  using Ops = TaggedOps<kHandler>;
  const uintptr_t bits = reinterpret_cast<uintptr_t>(tagged);
  const D* device = reinterpret_cast<const D*>(bits & ~kDispatchTagMask);
  if ((bits & kDispatchTagMask) == kDispatchWithInfo) {
    Ops::WithInfo(static_cast<const typename Ops::Info&>(*device),
                  {addr, base, addr - base, CurrentVcpuId()}, data);
    return IoStatus::kOk;
  }
  return Ops::Hooked(static_cast<const typename Ops::Hook&>(*device), base,
                     addr - base, data);
}

// The device of a slot, without its tag.
template <typename D>
const D& Untagged(const D* tagged) {
  return *reinterpret_cast<const D*>(reinterpret_cast<uintptr_t>(tagged) &
                                     ~kDispatchTagMask);
}

}  // namespace internal

namespace {

// ThreadHints
//
// The calling thread's dispatch hints (range_table.h, BusHint) for the manager
// it last dispatched on. Thread-local: no other thread reads or writes it. A
// thread that alternates between managers starts afresh at each switch (still
// correct, only slower). The indices are checked against the loaded snapshot
// before use, so hints left by a destroyed manager, or by one whose address a
// new manager reuses, are harmless.
struct ThreadHints {
  const IoManager* owner = nullptr;
  internal::BusHint pio;
  internal::BusHint mmio;
};
constinit thread_local ThreadHints tls_hints;

// One dispatch on the bus `kBus` of the snapshot, with the hints `kHint` of
// that bus, calling the handler `kHandler` of the device found. Template
// arguments, so that each of the four public functions compiles to one
// straight-line body.
template <auto kBus, auto kHint, auto kHandler, typename A, typename Data>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline IoStatus Dispatch(
    const IoManager* self, const std::atomic<const RangeTable*>& root,
    const std::atomic<bool>& hints, A addr, Data data) {
  internal::ReadSection read_side;
  A base;
  typename std::remove_cvref_t<decltype((std::declval<const RangeTable&>().*
                                         kBus)())>::Device const* device;
  // acquire: pairs with the release store in CommitLocked() (A.2).
  const auto& table = (root.load(std::memory_order_acquire)->*kBus)();
  IoStatus s;
  // relaxed: a setting, read without ordering; either value routes the same.
  if (ABSL_PREDICT_TRUE(hints.load(std::memory_order_relaxed))) {
    ThreadHints& mine = tls_hints;
    if (ABSL_PREDICT_FALSE(mine.owner != self)) {
      mine = ThreadHints{self, {}, {}};
    }
    bool from_hint;
    s = table.FindHinted(addr, data.size(), &(mine.*kHint), &base, &device,
                         &from_hint);
  } else {
    s = table.Find(addr, data.size(), &base, &device);
  }
  if (ABSL_PREDICT_FALSE(s != IoStatus::kOk)) return s;
  // A tagged slot (access info, rules, doorbell): out of line.
  if (ABSL_PREDICT_FALSE(reinterpret_cast<uintptr_t>(device) &
                         internal::kDispatchTagMask)) {
    return internal::DispatchTagged<kHandler>(device, base, addr, data);
  }
  (device->*kHandler)(base, addr - base, data);
  return IoStatus::kOk;
}

}  // namespace

IoStatus IoManager::PioRead(PioAddress addr, absl::Span<uint8_t> data) const {
  return Dispatch<&RangeTable::pio, &ThreadHints::pio, &DevicePio::PioRead>(
      this, table_, hints_, addr, data);
}

IoStatus IoManager::PioWrite(PioAddress addr,
                             absl::Span<const uint8_t> data) const {
  return Dispatch<&RangeTable::pio, &ThreadHints::pio, &DevicePio::PioWrite>(
      this, table_, hints_, addr, data);
}

IoStatus IoManager::MmioRead(MmioAddress addr, absl::Span<uint8_t> data) const {
  return Dispatch<&RangeTable::mmio, &ThreadHints::mmio, &DeviceMmio::MmioRead>(
      this, table_, hints_, addr, data);
}

IoStatus IoManager::MmioWrite(MmioAddress addr,
                              absl::Span<const uint8_t> data) const {
  return Dispatch<&RangeTable::mmio, &ThreadHints::mmio,
                  &DeviceMmio::MmioWrite>(this, table_, hints_, addr, data);
}

void IoManager::SetDispatchHints(bool enabled) {
  // relaxed: a setting; no data is published with it.
  hints_.store(enabled, std::memory_order_relaxed);
}

bool IoManager::dispatch_hints() const {
  // relaxed: see SetDispatchHints().
  return hints_.load(std::memory_order_relaxed);
}

// -----------------------------------------------------------------------------
// Lookup
// -----------------------------------------------------------------------------

namespace {

template <typename Table, typename A, typename F>
bool Visit(const Table& table, A addr, F f) {
  const size_t i = table.Locate(addr);
  if (i == table.size()) return false;
  f(table.RangeAt(i), internal::Untagged(table.slots[i].device));
  return true;
}

template <typename Table, typename F>
size_t VisitAll(const Table& table, F f) {
  for (size_t i = 0; i < table.size(); ++i) {
    f(table.RangeAt(i), internal::Untagged(table.slots[i].device));
  }
  return table.size();
}

}  // namespace

size_t IoManager::VisitPioRanges(
    absl::FunctionRef<void(const PioRange&, const DevicePio&)> f) const {
  internal::ReadSection read_side;
  // acquire: pairs with the release store in CommitLocked() (A.2).
  return VisitAll(table_.load(std::memory_order_acquire)->pio(), f);
}

size_t IoManager::VisitMmioRanges(
    absl::FunctionRef<void(const MmioRange&, const DeviceMmio&)> f) const {
  internal::ReadSection read_side;
  // acquire: pairs with the release store in CommitLocked() (A.2).
  return VisitAll(table_.load(std::memory_order_acquire)->mmio(), f);
}

bool IoManager::VisitPioDevice(
    PioAddress addr,
    absl::FunctionRef<void(const PioRange&, const DevicePio&)> f) const {
  internal::ReadSection read_side;
  // acquire: pairs with the release store in CommitLocked() (A.2).
  return Visit(table_.load(std::memory_order_acquire)->pio(), addr, f);
}

bool IoManager::VisitMmioDevice(
    MmioAddress addr,
    absl::FunctionRef<void(const MmioRange&, const DeviceMmio&)> f) const {
  internal::ReadSection read_side;
  // acquire: pairs with the release store in CommitLocked() (A.2).
  return Visit(table_.load(std::memory_order_acquire)->mmio(), addr, f);
}

std::optional<std::pair<PioRange, std::shared_ptr<DevicePio>>>
IoManager::PioDevice(PioAddress addr) const {
  WriterLock lock(&writer_mu_);
  auto entry = pio_bus_.Device(addr);
  if (!entry) return std::nullopt;
  return std::make_pair(entry->range, *entry->device);
}

std::optional<std::pair<MmioRange, std::shared_ptr<DeviceMmio>>>
IoManager::MmioDevice(MmioAddress addr) const {
  WriterLock lock(&writer_mu_);
  auto entry = mmio_bus_.Device(addr);
  if (!entry) return std::nullopt;
  return std::make_pair(entry->range, *entry->device);
}

// -----------------------------------------------------------------------------
// Writer side
// -----------------------------------------------------------------------------

namespace {

// What CommitLocked must undo if a later change of the batch fails.
struct Undo {
  enum Kind { kAddedPio, kAddedMmio, kRemovedPio, kRemovedMmio } kind;
  size_t index;  // kAdded*: the op that added; kRemoved*: index into Removed
};

// Why a change of a batch failed, recorded without allocating: the change
// is undone first, and only then is the error message (which allocates, and
// may throw std::bad_alloc) built from it, by Describe().
struct Failure {
  enum Kind { kNone, kNullDevice, kOverlap, kNotFound } kind = kNone;
  std::variant<std::monostate, PioRange, MmioRange> clash;  // kOverlap
  bool ok() const { return kind == kNone; }
};

// Applies one add of a batch. The overlap check comes first so that a
// refused device stays in the batch (see the rollback in CommitLocked).
// Never allocates (room reserved) and never throws.
template <typename A, typename D, typename Op>
Failure Add(Bus<A, std::shared_ptr<D>>& bus, Op& op, Undo undo_record,
            std::vector<Undo>& undo) {
  if (op.device == nullptr) return {Failure::kNullDevice, {}};
  if (std::optional<BusRange<A>> clash = bus.Overlapping(op.range)) {
    return {Failure::kOverlap, *clash};
  }
  // Cannot fail now (no overlap, room reserved), so op.device is not lost.
  bus.Register(op.range, std::move(op.device)).IgnoreError();
  undo.push_back(undo_record);
  return {};
}

// The error status of the change `op` (one alternative of IoBatch::Op) that
// failed with `f`. If the message cannot be allocated, the status has the
// right code and no message.
template <typename Op>
absl::Status Describe(const Op& op, const Failure& f) {
  const absl::StatusCode code = f.kind == Failure::kNotFound
                                    ? absl::StatusCode::kNotFound
                                : f.kind == Failure::kOverlap
                                    ? absl::StatusCode::kAlreadyExists
                                    : absl::StatusCode::kInvalidArgument;
  try {
    if constexpr (requires { op.device; }) {
      using A = typename decltype(op.range)::Address;
      if (f.kind == Failure::kNullDevice) return NullDevice(op.range);
      return Bus<A, int>::OverlapError(op.range,
                                       std::get<BusRange<A>>(f.clash));
    } else {
      return NoRangeHolds(op.addr);
    }
  } catch (const std::bad_alloc&) {
    return absl::Status(code, "");  // a message-less status never allocates
  }
}

}  // namespace

absl::StatusOr<IoBatch::Removed> IoManager::CommitLocked(IoBatch& batch,
                                                         size_t* failed) {
  IoBatch::Removed removed;
  if (batch.ops_.empty()) return removed;

  // Room for every add up front, so that neither applying nor undoing a
  // change allocates inside the buses (a rollback cannot fail).
  size_t pio_adds = 0, mmio_adds = 0;
  for (const IoBatch::Op& op : batch.ops_) {
    pio_adds += std::holds_alternative<IoBatch::AddPioOp>(op);
    mmio_adds += std::holds_alternative<IoBatch::AddMmioOp>(op);
  }
  pio_bus_.Reserve(pio_bus_.size() + pio_adds);
  mmio_bus_.Reserve(mmio_bus_.size() + mmio_adds);
  std::vector<Undo> undo;
  undo.reserve(batch.ops_.size());
  removed.pio.reserve(batch.ops_.size() - pio_adds - mmio_adds);
  removed.mmio.reserve(batch.ops_.size() - pio_adds - mmio_adds);

  auto rollback = [&] {
    for (auto it = undo.rbegin(); it != undo.rend(); ++it) {
      switch (it->kind) {
        case Undo::kAddedPio: {
          // The device goes back into the batch: destroyed by the caller
          // after the writer mutex is released, never under it.
          auto& op = std::get<IoBatch::AddPioOp>(batch.ops_[it->index]);
          op.device = std::move(pio_bus_.Deregister(op.range.base())->second);
          break;
        }
        case Undo::kAddedMmio: {
          auto& op = std::get<IoBatch::AddMmioOp>(batch.ops_[it->index]);
          op.device = std::move(mmio_bus_.Deregister(op.range.base())->second);
          break;
        }
        case Undo::kRemovedPio: {
          auto& [range, dev] = removed.pio[it->index];
          // Cannot fail: the range was there, and what replaced it is undone.
          pio_bus_.Register(range, std::move(dev)).IgnoreError();
          break;
        }
        case Undo::kRemovedMmio: {
          auto& [range, dev] = removed.mmio[it->index];
          mmio_bus_.Register(range, std::move(dev)).IgnoreError();
          break;
        }
      }
    }
  };

  // From here until the publish, anything that leaves this function (an
  // error return or an exception: std::bad_alloc from Build() or from the
  // retirement record) undoes every change applied so far, so the master copy
  // always matches the published snapshot.
  absl::Cleanup undo_on_exit = rollback;

  const size_t n = batch.ops_.size();
  for (size_t i = 0; i < n; ++i) {
    const Failure f = std::visit(
        Overloaded{
            [&](IoBatch::AddPioOp& op) -> Failure {
              return Add(pio_bus_, op, Undo{Undo::kAddedPio, i}, undo);
            },
            [&](IoBatch::AddMmioOp& op) -> Failure {
              return Add(mmio_bus_, op, Undo{Undo::kAddedMmio, i}, undo);
            },
            [&](IoBatch::RemovePioOp& op) -> Failure {
              auto gone = pio_bus_.Deregister(op.addr);
              if (!gone) {
                return op.must_exist ? Failure{Failure::kNotFound, {}}
                                     : Failure{};
              }
              undo.push_back({Undo::kRemovedPio, removed.pio.size()});
              removed.pio.push_back(std::move(*gone));
              return {};
            },
            [&](IoBatch::RemoveMmioOp& op) -> Failure {
              auto gone = mmio_bus_.Deregister(op.addr);
              if (!gone) {
                return op.must_exist ? Failure{Failure::kNotFound, {}}
                                     : Failure{};
              }
              undo.push_back({Undo::kRemovedMmio, removed.mmio.size()});
              removed.mmio.push_back(std::move(*gone));
              return {};
            },
        },
        batch.ops_[i]);
    if (!f.ok()) {
      // Undo first, then build the message: nothing that can throw runs
      // while the master copy differs from the published snapshot.
      std::move(undo_on_exit).Cancel();
      rollback();
      if (failed != nullptr) *failed = i;
      return std::visit([&](const auto& op) { return Describe(op, f); },
                        batch.ops_[i]);
    }
  }
  if (undo.empty()) return removed;  // nothing changed: nothing to publish

  // Everything that can fail comes before the publish; a throw here runs the
  // rollback (undo_on_exit).
  internal::RangeTablePtr fresh = RangeTable::Build(pio_bus_, mmio_bus_);
  auto retired = std::make_unique<RetiredSnapshot>();
  retired->devices.reserve(removed.pio.size() + removed.mmio.size());
  for (const auto& [range, dev] : removed.pio) retired->devices.push_back(dev);
  for (const auto& [range, dev] : removed.mmio) retired->devices.push_back(dev);
  std::move(undo_on_exit).Cancel();

  // Nothing below allocates or throws: the change is published and retired
  // whole, or (above) not at all.
  // relaxed: table_ is stored only here, under writer_mu_, which this thread
  // holds; the load reads this thread's (or a previous holder's) store.
  const RangeTable* old = table_.load(std::memory_order_relaxed);
  // release: publishes the fully built snapshot; pairs with the acquire loads
  // in the dispatch and visit paths (A.2).
  table_.store(fresh.release(), std::memory_order_release);
  retired->table.reset(const_cast<RangeTable*>(old));
  ++publishes_;
  // The old snapshot and the removed devices go after a grace period (C.1).
  // Never waits, so this is safe inside a handler's read-side section; never
  // allocates or throws (an intrusive queue, reclaimer started by the
  // constructor), so the published change is never reported as an exception
  // and nothing is freed without its grace period.
  internal::Retire(std::move(retired));
  return removed;
}

absl::StatusOr<IoBatch::Removed> IoManager::Commit(IoBatch batch) {
  WriterLock lock(&writer_mu_);
  size_t failed = 0;
  absl::StatusOr<IoBatch::Removed> r = CommitLocked(batch, &failed);
  if (r.ok() || batch.size() == 1) return r;
  return PrefixedOrBare(r.status(), [&] {
    return absl::StrCat("change ", failed + 1, " of ", batch.size(), ": ");
  });
}

absl::Status IoManager::RegisterPio(PioRange range,
                                    std::shared_ptr<DevicePio> device) {
  IoBatch batch;
  batch.AddPio(range, std::move(device));
  WriterLock lock(&writer_mu_);
  return CommitLocked(batch, nullptr).status();
}

absl::Status IoManager::RegisterMmio(MmioRange range,
                                     std::shared_ptr<DeviceMmio> device) {
  IoBatch batch;
  batch.AddMmio(range, std::move(device));
  WriterLock lock(&writer_mu_);
  return CommitLocked(batch, nullptr).status();
}

absl::StatusOr<std::pair<PioRange, std::shared_ptr<DevicePio>>>
IoManager::DeregisterPio(PioAddress addr) {
  IoBatch batch;
  batch.RemovePio(addr);
  WriterLock lock(&writer_mu_);
  absl::StatusOr<IoBatch::Removed> r = CommitLocked(batch, nullptr);
  if (!r.ok()) return r.status();
  return std::move(r->pio.front());
}

absl::StatusOr<std::pair<MmioRange, std::shared_ptr<DeviceMmio>>>
IoManager::DeregisterMmio(MmioAddress addr) {
  IoBatch batch;
  batch.RemoveMmio(addr);
  WriterLock lock(&writer_mu_);
  absl::StatusOr<IoBatch::Removed> r = CommitLocked(batch, nullptr);
  if (!r.ok()) return r.status();
  return std::move(r->mmio.front());
}

namespace {

// The batch that moves the range of `bus` holding `addr` to `new_base`.
template <typename A, typename D, typename AddFn>
absl::StatusOr<IoBatch> MoveBatch(const Bus<A, std::shared_ptr<D>>& bus, A addr,
                                  A new_base, AddFn add) {
  auto entry = bus.Device(addr);
  if (!entry) return NoRangeHolds(addr);
  absl::StatusOr<BusRange<A>> moved =
      BusRange<A>::Create(new_base, entry->range.size());
  if (!moved.ok()) {
    return PrefixedOrBare(moved.status(), [&] {
      return absl::StrCat("cannot move ", entry->range.ToString(), ": ");
    });
  }
  IoBatch batch;
  add(batch, addr, *moved, *entry->device);
  return batch;
}

}  // namespace

absl::Status IoManager::MovePio(PioAddress addr, PioAddress new_base) {
  WriterLock lock(&writer_mu_);
  absl::StatusOr<IoBatch> batch =
      MoveBatch(pio_bus_, addr, new_base,
                [](IoBatch& b, PioAddress from, PioRange to,
                   const std::shared_ptr<DevicePio>& dev) {
                  b.RemovePio(from).AddPio(to, dev);
                });
  if (!batch.ok()) return batch.status();
  absl::StatusOr<IoBatch::Removed> r = CommitLocked(*batch, nullptr);
  if (!r.ok()) {
    return PrefixedOrBare(r.status(), [] { return "cannot move: "; });
  }
  return absl::OkStatus();
}

absl::Status IoManager::MoveMmio(MmioAddress addr, MmioAddress new_base) {
  WriterLock lock(&writer_mu_);
  absl::StatusOr<IoBatch> batch =
      MoveBatch(mmio_bus_, addr, new_base,
                [](IoBatch& b, MmioAddress from, MmioRange to,
                   const std::shared_ptr<DeviceMmio>& dev) {
                  b.RemoveMmio(from).AddMmio(to, dev);
                });
  if (!batch.ok()) return batch.status();
  absl::StatusOr<IoBatch::Removed> r = CommitLocked(*batch, nullptr);
  if (!r.ok()) {
    return PrefixedOrBare(r.status(), [] { return "cannot move: "; });
  }
  return absl::OkStatus();
}

// -----------------------------------------------------------------------------
// Resources
// -----------------------------------------------------------------------------

absl::Status IoManager::RegisterPioResources(
    std::shared_ptr<DevicePio> device, absl::Span<const Resource> resources) {
  return RegisterResourcesImpl(std::move(device), nullptr, resources,
                               /*want_pio=*/true, /*want_mmio=*/false);
}

absl::Status IoManager::RegisterMmioResources(
    std::shared_ptr<DeviceMmio> device, absl::Span<const Resource> resources) {
  return RegisterResourcesImpl(nullptr, std::move(device), resources,
                               /*want_pio=*/false, /*want_mmio=*/true);
}

absl::Status IoManager::RegisterResourcesImpl(
    std::shared_ptr<DevicePio> pio, std::shared_ptr<DeviceMmio> mmio,
    absl::Span<const Resource> resources, bool want_pio, bool want_mmio) {
  // No device pointer for either bus: the caller's pointer was null.
  const bool null_device = pio == nullptr && mmio == nullptr;
  // The batch, MMIO ranges first then PIO ranges (the crate's order), and
  // for each change the index of the resource it came from.
  IoBatch batch;
  std::vector<size_t> origin;
  auto describe = [](size_t i, const auto& r, const char* bus) {
    return absl::StrCat("resource #", i, " (", bus, " base 0x",
                        absl::Hex(static_cast<uint64_t>(r.base)), " size 0x",
                        absl::Hex(static_cast<uint64_t>(r.size)), "): ");
  };
  if (want_mmio) {
    for (size_t i = 0; i < resources.size(); ++i) {
      const auto* r = std::get_if<MmioAddressRange>(&resources[i]);
      if (r == nullptr) continue;
      absl::StatusOr<MmioRange> range =
          MmioRange::Create(MmioAddress(r->base), r->size);
      if (!range.ok()) {
        return Prefixed(range.status(), describe(i, *r, "MMIO"));
      }
      if (mmio == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(describe(i, *r, "MMIO"),
                         null_device ? "null device"
                                     : "the device does not implement DeviceMmio"));
      }
      batch.AddMmio(*range, mmio);
      origin.push_back(i);
    }
  }
  if (want_pio) {
    for (size_t i = 0; i < resources.size(); ++i) {
      const auto* r = std::get_if<PioAddressRange>(&resources[i]);
      if (r == nullptr) continue;
      absl::StatusOr<PioRange> range =
          PioRange::Create(PioAddress(r->base), r->size);
      if (!range.ok()) {
        return Prefixed(range.status(), describe(i, *r, "PIO"));
      }
      if (pio == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(describe(i, *r, "PIO"),
                         null_device ? "null device"
                                     : "the device does not implement DevicePio"));
      }
      batch.AddPio(*range, pio);
      origin.push_back(i);
    }
  }
  if (batch.empty()) {
    // Nothing to register; a null device is still refused.
    if (null_device) {
      return absl::InvalidArgumentError(
          "null device (and no address range to register it on)");
    }
    return absl::OkStatus();
  }

  WriterLock lock(&writer_mu_);
  size_t failed = 0;
  absl::StatusOr<IoBatch::Removed> r = CommitLocked(batch, &failed);
  if (r.ok()) return absl::OkStatus();
  return PrefixedOrBare(r.status(), [&] {
    return absl::StrCat("resource #", origin[failed], ": ");
  });
}

size_t IoManager::DeregisterResources(absl::Span<const Resource> resources) {
  IoBatch batch;
  for (const Resource& res : resources) {
    if (const auto* p = std::get_if<PioAddressRange>(&res)) {
      batch.ops_.push_back(
          IoBatch::RemovePioOp{PioAddress(p->base), /*must_exist=*/false});
    } else if (const auto* m = std::get_if<MmioAddressRange>(&res)) {
      batch.ops_.push_back(
          IoBatch::RemoveMmioOp{MmioAddress(m->base), /*must_exist=*/false});
    }
  }
  WriterLock lock(&writer_mu_);
  absl::StatusOr<IoBatch::Removed> r = CommitLocked(batch, nullptr);
  // Lenient removals cannot fail; only std::bad_alloc (thrown) could.
  return r.ok() ? r->pio.size() + r->mmio.size() : 0;
}

// -----------------------------------------------------------------------------
// Reclamation and introspection
// -----------------------------------------------------------------------------

absl::Status IoManager::Synchronize() const {
  if (internal::InReadSection()) {
    return absl::FailedPreconditionError(
        "IoManager::Synchronize called inside a read-side critical section "
        "(from a device handler?): it would wait for itself");
  }
  if (device_lock_internal::HeldDepth() != 0) {
    return absl::FailedPreconditionError(
        "IoManager::Synchronize called while this thread holds a device lock "
        "(in a LockedDevice/ShardedDevice handler or WithLock()): a vCPU "
        "waiting for that lock would never let the grace period end");
  }
  if (internal::OnReclaimThread()) {
    return absl::FailedPreconditionError(
        "IoManager::Synchronize called on the RCU reclaimer thread (from a "
        "device destructor?): it would wait for itself");
  }
  internal::WaitForReaders();
  internal::WaitForRetired();
  return absl::OkStatus();
}

IoManagerStats IoManager::stats() const {
  WriterLock lock(&writer_mu_);
  IoManagerStats s;
  s.pio_ranges = pio_bus_.size();
  s.mmio_ranges = mmio_bus_.size();
  s.publishes = publishes_;
  s.snapshot_bytes = table_.load(std::memory_order_relaxed)->bytes();
  return s;
}

}  // namespace vm_device
