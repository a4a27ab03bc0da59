// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: tests/hotplug_harness.h
// -----------------------------------------------------------------------------
//
// Shared machinery of the concurrency tests (io_manager_stress_test,
// hotplug_soak_test): tracked devices, a global sequence clock, per-window
// registration logs and the exact routing checks built on them.
//
// The checks
// ----------
// Every event that matters is stamped from one global seq_cst counter
// (`Clock`). A writer stamps, for each (device, window) registration: `start`
// (before the register call), `reg_done` (after it returned), `dereg_begin`
// (before the deregister/move call) and `end` (after it returned). A reader
// loads the clock before (t0) and after (t1) each access. Loads return "the
// next stamp to be handed out", so `stamp < t` exactly when the stamp was
// taken before the load in the single total order of seq_cst operations.
//
//   * An access routed to device `d` at window `w` is correct iff some
//     registration of `d` on `w` has start < t1 and end >= t0 (the range may
//     have been published at some moment during the access).
//   * A kDeviceNotFound is correct iff no window fully holding the access had
//     a registration with reg_done < t0 and dereg_begin >= t1 (that is, was
//     certainly published for the whole access).
//
// A stamp is written as "pending, take the stamp, store it": a reader that
// sees the field still unset knows the stamp will be later than its load; a
// reader that sees "pending" waits (a few instructions; writers never wait for
// readers). So both checks are exact, with no window of doubt.
//
// Devices count handler entries and exits; the destructor records any
// handler still running and poisons a magic field that every handler checks
// on entry (a use after free also trips ASan).

#ifndef VM_DEVICE_TESTS_HOTPLUG_HARNESS_H_
#define VM_DEVICE_TESTS_HOTPLUG_HARNESS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace hotplug_harness {

// Reads a positive number of seconds from the environment, else `fallback`.
inline double SecondsFromEnv(const char* name, double fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const double s = std::strtod(v, nullptr);
  return s > 0 ? s : fallback;
}

// Failures recorded by any thread; the test asserts none at the end.
class Failures {
 public:
  void Add(const std::string& what) {
    if (count_.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> l(mu_);
      first_ = what;
    }
  }
  uint64_t count() const { return count_.load(); }
  std::string first() const {
    std::lock_guard<std::mutex> l(mu_);
    return first_;
  }

 private:
  std::atomic<uint64_t> count_{0};
  mutable std::mutex mu_;
  std::string first_;
};

// The global sequence clock.
class Clock {
 public:
  static constexpr uint64_t kUnset = ~uint64_t{0};
  static constexpr uint64_t kPending = ~uint64_t{0} - 1;

  // The next stamp to be handed out (readers: t0 and t1).
  uint64_t Now() const { return next_.load(); }

  // Stamps `field`: pending, take a stamp, store it.
  void Stamp(std::atomic<uint64_t>& field) {
    field.store(kPending);
    field.store(next_.fetch_add(1));
  }

  // The value of a stamped field; kUnset means "after this read".
  static uint64_t Read(const std::atomic<uint64_t>& field) {
    uint64_t v;
    while ((v = field.load()) == kPending) std::this_thread::yield();
    return v;
  }

 private:
  std::atomic<uint64_t> next_{1};
};

// The registrations of one (logical device, window) slot, oldest first. One
// writer appends (under the caller's own lock); any thread reads.
class SlotLog {
 public:
  explicit SlotLog(size_t capacity)
      : entries_(new Entry[capacity]), capacity_(capacity) {}

  bool full() const { return count_.load() == capacity_; }

  // Writer: a registration of device `serial` starts / is done.
  void BeginRegister(Clock& clock, uint64_t serial) {
    const size_t i = count_.load();
    entries_[i].serial.store(serial);
    count_.store(i + 1);
    clock.Stamp(entries_[i].start);
  }
  void EndRegister(Clock& clock) { clock.Stamp(Last().reg_done); }
  void BeginDeregister(Clock& clock) { clock.Stamp(Last().dereg_begin); }
  void EndDeregister(Clock& clock) { clock.Stamp(Last().end); }

  // Reader: whether device `serial` may have been published on this slot at
  // some moment of [t0, t1).
  bool MayHaveRouted(uint64_t serial, uint64_t t0, uint64_t t1) const {
    for (size_t i = count_.load(); i-- > 0;) {
      const Entry& e = entries_[i];
      const uint64_t start = Clock::Read(e.start);
      if (start == Clock::kUnset || start >= t1) continue;  // after the access
      const uint64_t end = Clock::Read(e.end);
      if (end != Clock::kUnset && end < t0) return false;  // before it
      if (e.serial.load() == serial) return true;
    }
    return false;
  }

  // Reader: whether some registration was certainly published during all of
  // [t0, t1), so that "no device" would be wrong.
  bool CertainlyPublished(uint64_t t0, uint64_t t1) const {
    for (size_t i = count_.load(); i-- > 0;) {
      const Entry& e = entries_[i];
      const uint64_t start = Clock::Read(e.start);
      if (start == Clock::kUnset || start >= t0) continue;
      // The latest registration that began before t0; older ones ended
      // before it began.
      const uint64_t done = Clock::Read(e.reg_done);
      if (done == Clock::kUnset || done >= t0) return false;
      const uint64_t db = Clock::Read(e.dereg_begin);
      return db == Clock::kUnset || db >= t1;
    }
    return false;
  }

 private:
  struct Entry {
    std::atomic<uint64_t> serial{0};
    std::atomic<uint64_t> start{Clock::kUnset};
    std::atomic<uint64_t> reg_done{Clock::kUnset};
    std::atomic<uint64_t> dereg_begin{Clock::kUnset};
    std::atomic<uint64_t> end{Clock::kUnset};
  };
  Entry& Last() { return entries_[count_.load() - 1]; }

  std::unique_ptr<Entry[]> entries_;
  const size_t capacity_;
  std::atomic<size_t> count_{0};
};

enum class BusKind { kPio, kMmio };

// What the last handler call on this thread saw.
struct CallRecord {
  int calls = 0;
  const void* device = nullptr;
  uint64_t serial = 0;
  int index = -1;
  BusKind bus = BusKind::kPio;
  uint64_t base = 0;
  uint64_t offset = 0;
  size_t len = 0;
};
inline thread_local CallRecord tls_call;
inline thread_local uint64_t tls_spin;

// Counts devices built and destroyed, and lifetime violations.
struct DeviceCounters {
  std::atomic<uint64_t> constructed{0};
  std::atomic<uint64_t> destroyed{0};
  std::atomic<uint64_t> destroyed_in_handler{0};
  std::atomic<uint64_t> handler_on_dead_device{0};
  std::atomic<uint64_t> next_serial{1};
};

// A device on both buses that records every call and checks its own life.
class TrackedDevice final : public DevicePio, public DeviceMmio {
 public:
  static constexpr uint64_t kAlive = 0xa11fe5a11fe5a11full;
  static constexpr uint64_t kDead = 0xdeadde1ddeadde1dull;

  TrackedDevice(DeviceCounters* counters, int index)
      : counters_(counters),
        index_(index),
        serial_(counters->next_serial.fetch_add(1)) {
    counters_->constructed.fetch_add(1);
  }
  ~TrackedDevice() override {
    if (in_flight_.load() != 0) counters_->destroyed_in_handler.fetch_add(1);
    magic_.store(kDead);
    counters_->destroyed.fetch_add(1);
  }

  uint64_t serial() const { return serial_; }
  int index() const { return index_; }
  uint64_t handler_calls() const { return calls_.load(); }

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    Handle(BusKind::kPio, base.value(), offset, data.size());
    for (uint8_t& b : data) b = static_cast<uint8_t>(serial_);
    Leave();
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const override {
    Handle(BusKind::kPio, base.value(), offset, data.size());
    Leave();
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    Handle(BusKind::kMmio, base.value(), offset, data.size());
    for (uint8_t& b : data) b = static_cast<uint8_t>(serial_);
    Leave();
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override {
    Handle(BusKind::kMmio, base.value(), offset, data.size());
    Leave();
  }

 private:
  void Handle(BusKind bus, uint64_t base, uint64_t offset, size_t len) const {
    if (magic_.load(std::memory_order_relaxed) != kAlive) {
      counters_->handler_on_dead_device.fetch_add(1);
    }
    in_flight_.fetch_add(1);
    calls_.fetch_add(1, std::memory_order_relaxed);
    CallRecord& r = tls_call;
    ++r.calls;
    r.device = this;
    r.serial = serial_;
    r.index = index_;
    r.bus = bus;
    r.base = base;
    r.offset = offset;
    r.len = len;
    // Stay a little, so that writers get to retire the device meanwhile.
    for (int i = 0; i < 16; ++i) tls_spin = tls_spin * 31 + i;
  }
  void Leave() const { in_flight_.fetch_sub(1); }

  DeviceCounters* const counters_;
  const int index_;
  const uint64_t serial_;
  std::atomic<uint64_t> magic_{kAlive};
  mutable std::atomic<int> in_flight_{0};
  mutable std::atomic<uint64_t> calls_{0};
};

// A window a logical device may be registered on.
struct Window {
  uint64_t base;
  uint64_t size;
  uint64_t last() const { return base + (size - 1); }
  bool Holds(uint64_t addr, size_t len) const {
    return addr >= base && addr <= last() && len >= 1 &&
           len - 1 <= last() - addr;
  }
  bool Overlaps(const Window& o) const {
    return !(base > o.last() || last() < o.base);
  }
};

// An access the readers make, with the slots whose window holds all of it.
struct Probe {
  uint64_t addr;
  size_t len;
  std::vector<int> full_slots;
};

// Access statistics.
struct AccessCounts {
  std::atomic<uint64_t> total{0};
  std::atomic<uint64_t> routed{0};
  std::atomic<uint64_t> no_device{0};
  std::atomic<uint64_t> misrouted{0};
  std::atomic<uint64_t> wrong_no_device{0};
};

// The layout, logs, devices and the writers' model of one test run.
//
// `kDevices` logical devices; each has `kWindows` windows per bus, all of one
// size, placed at random in a small region of each bus (the MMIO region ends
// at the top of the address space, and one window ends exactly there) so that
// windows of different devices overlap and an address passes from device to
// device over time. Writers call the Op* methods under `mu`; readers call
// Access() with no lock.
class Harness {
 public:
  static constexpr int kDevices = 12;
  static constexpr int kWindows = 3;
  static constexpr int kSlotsPerBus = kDevices * kWindows;

  Harness(IoManager* manager, uint64_t seed, size_t log_capacity = 1 << 13)
      : manager_(manager) {
    std::mt19937_64 rng(seed);
    for (int bus = 0; bus < 2; ++bus) {
      const uint64_t region = bus == 0 ? 0x1000 : ~uint64_t{0} - 0x7fff;
      const uint64_t span = 0x400;
      for (int d = 0; d < kDevices; ++d) {
        const uint64_t size = uint64_t{8} << (d % 4);  // 8..64
        for (int w = 0; w < kWindows; ++w) {
          // MMIO windows are spread 16 times wider; the region is 32 times
          // `span` long, so every window ends inside it.
          const uint64_t offset = rng() % (span - size + 1);
          uint64_t base = region + (bus == 0 ? offset : offset * 16);
          if (bus == 1 && d == 0 && w == 0) base = ~uint64_t{0} - size + 1;
          windows_[bus].push_back(Window{base, size});
          logs_[bus].push_back(std::make_unique<SlotLog>(log_capacity));
        }
      }
      // Probes: window edges, accesses crossing them, and random points.
      std::vector<std::pair<uint64_t, size_t>> points;
      for (const Window& win : windows_[bus]) {
        for (size_t len : {1, 2, 4, 8}) {
          points.push_back({win.base, len});
          if (win.last() >= len - 1)
            points.push_back({win.last() - (len - 1), len});
          points.push_back({win.last(), len});  // crosses out unless len 1
          if (win.base > 0) points.push_back({win.base - 1, len});
        }
      }
      for (int i = 0; i < 256; ++i) {
        const uint64_t extent = bus == 0 ? span : span * 32;
        points.push_back({region + rng() % extent, size_t{1} << (rng() % 4)});
      }
      for (const auto& [addr, len] : points) {
        if (len - 1 > (bus == 0 ? 0xffffu : ~uint64_t{0}) - addr) continue;
        Probe p{addr, len, {}};
        for (int s = 0; s < kSlotsPerBus; ++s) {
          if (windows_[bus][s].Holds(addr, len)) p.full_slots.push_back(s);
        }
        probes_[bus].push_back(std::move(p));
      }
    }
    for (int d = 0; d < kDevices; ++d) {
      devices_[d] = std::make_shared<TrackedDevice>(&counters_, d);
    }
    for (auto& bus : registered_) bus.fill(false);
  }

  DeviceCounters& counters() { return counters_; }
  const Window& window(int bus, int slot) const { return windows_[bus][slot]; }
  AccessCounts& accesses() { return accesses_; }
  Failures& failures() { return failures_; }
  uint64_t released() const { return released_; }
  uint64_t changes() const { return changes_.load(); }
  std::mutex mu;  // serializes the test's writers (not the readers)

  // ---------------------------------------------------------------------------
  // Readers
  // ---------------------------------------------------------------------------

  // One random access, checked.
  void Access(std::mt19937_64& rng) {
    const int bus = static_cast<int>(rng() & 1);
    const Probe& p = probes_[bus][rng() % probes_[bus].size()];
    const bool write = (rng() & 2) != 0;
    uint8_t buf[8] = {0};
    const absl::Span<uint8_t> data(buf, p.len);
    tls_call = CallRecord{};
    const uint64_t t0 = clock_.Now();
    IoStatus s;
    if (bus == 0) {
      const PioAddress a(static_cast<uint16_t>(p.addr));
      s = write ? manager_->PioWrite(a, data) : manager_->PioRead(a, data);
    } else {
      const MmioAddress a(p.addr);
      s = write ? manager_->MmioWrite(a, data) : manager_->MmioRead(a, data);
    }
    const uint64_t t1 = clock_.Now();
    accesses_.total.fetch_add(1, std::memory_order_relaxed);
    const CallRecord r = tls_call;
    if (s == IoStatus::kOk) {
      accesses_.routed.fetch_add(1, std::memory_order_relaxed);
      if (!CheckRouted(bus, p, r, write, buf, t0, t1)) {
        accesses_.misrouted.fetch_add(1);
      }
    } else if (s == IoStatus::kDeviceNotFound) {
      accesses_.no_device.fetch_add(1, std::memory_order_relaxed);
      if (r.calls != 0) failures_.Add("a device was called on kDeviceNotFound");
      for (int slot : p.full_slots) {
        if (logs_[bus][slot]->CertainlyPublished(t0, t1)) {
          accesses_.wrong_no_device.fetch_add(1);
          failures_.Add(absl::StrFormat(
              "bus %d addr 0x%x len %d: kDeviceNotFound although slot %d was "
              "registered throughout [%d, %d)",
              bus, p.addr, p.len, slot, t0, t1));
        }
      }
    } else {
      failures_.Add(absl::StrFormat("bus %d addr 0x%x len %d: status %s", bus,
                                    p.addr, p.len, IoStatusName(s)));
    }
  }

  // ---------------------------------------------------------------------------
  // Writers (hold `mu`)
  // ---------------------------------------------------------------------------

  // Registers a random free window of a random device, if one fits.
  void OpRegister(std::mt19937_64& rng) {
    const int bus = static_cast<int>(rng() & 1);
    const int slot = static_cast<int>(rng() % kSlotsPerBus);
    if (registered_[bus][slot] || !Fits(bus, slot, -1) ||
        logs_[bus][slot]->full()) {
      return;
    }
    TrackedDevice* dev = devices_[slot / kWindows].get();
    SlotLog& log = *logs_[bus][slot];
    const Window& w = windows_[bus][slot];
    log.BeginRegister(clock_, dev->serial());
    absl::Status st;
    if (bus == 0) {
      st = manager_->RegisterPio(
          *PioRange::Create(PioAddress(static_cast<uint16_t>(w.base)),
                            static_cast<uint16_t>(w.size)),
          devices_[slot / kWindows]);
    } else {
      st = manager_->RegisterMmio(
          *MmioRange::Create(MmioAddress(w.base), w.size),
          devices_[slot / kWindows]);
    }
    log.EndRegister(clock_);
    if (!st.ok()) failures_.Add("register failed: " + st.ToString());
    registered_[bus][slot] = true;
    changes_.fetch_add(1, std::memory_order_relaxed);
  }

  // Deregisters a random registered slot, by a random address inside it.
  // When the device has no range left, the test drops its reference and
  // builds a fresh device for the index.
  void OpDeregister(std::mt19937_64& rng) {
    const int bus = static_cast<int>(rng() & 1);
    const int slot = RandomRegistered(rng, bus);
    if (slot < 0) return;
    const int d = slot / kWindows;
    const Window& w = windows_[bus][slot];
    const uint64_t addr = w.base + rng() % w.size;
    SlotLog& log = *logs_[bus][slot];
    log.BeginDeregister(clock_);
    const void* got = nullptr;
    uint64_t got_base = 0, got_size = 0;
    absl::Status st;
    if (bus == 0) {
      auto r = manager_->DeregisterPio(PioAddress(static_cast<uint16_t>(addr)));
      st = r.status();
      if (r.ok()) {
        got = dynamic_cast<const void*>(r->second.get());
        got_base = r->first.base().value();
        got_size = r->first.size();
      }
    } else {
      auto r = manager_->DeregisterMmio(MmioAddress(addr));
      st = r.status();
      if (r.ok()) {
        got = dynamic_cast<const void*>(r->second.get());
        got_base = r->first.base().value();
        got_size = r->first.size();
      }
    }
    log.EndDeregister(clock_);
    registered_[bus][slot] = false;
    changes_.fetch_add(1, std::memory_order_relaxed);
    if (!st.ok()) {
      failures_.Add("deregister failed: " + st.ToString());
    } else if (got != static_cast<const void*>(devices_[d].get()) ||
               got_base != w.base || got_size != w.size) {
      failures_.Add("deregister returned the wrong range or device");
    }
    MaybeReplace(d);
  }

  // Moves a registered slot to another window of the same device: with
  // Move* (one publish) or, when `two_step`, deregister then register.
  void OpMove(std::mt19937_64& rng, bool two_step) {
    const int bus = static_cast<int>(rng() & 1);
    const int from = RandomRegistered(rng, bus);
    if (from < 0) return;
    const int d = from / kWindows;
    const int to = d * kWindows + static_cast<int>(rng() % kWindows);
    if (to == from || registered_[bus][to] || !Fits(bus, to, from) ||
        logs_[bus][to]->full()) {
      return;
    }
    const Window& wf = windows_[bus][from];
    const Window& wt = windows_[bus][to];
    const uint64_t addr = wf.base + rng() % wf.size;
    SlotLog& lf = *logs_[bus][from];
    SlotLog& lt = *logs_[bus][to];
    if (two_step) {
      // Deregister, then register: a moment with neither.
      lf.BeginDeregister(clock_);
      bool ok =
          bus == 0
              ? manager_->DeregisterPio(PioAddress(static_cast<uint16_t>(addr)))
                    .ok()
              : manager_->DeregisterMmio(MmioAddress(addr)).ok();
      lf.EndDeregister(clock_);
      lt.BeginRegister(clock_, devices_[d]->serial());
      if (bus == 0) {
        ok &= manager_
                  ->RegisterPio(*PioRange::Create(
                                    PioAddress(static_cast<uint16_t>(wt.base)),
                                    static_cast<uint16_t>(wt.size)),
                                devices_[d])
                  .ok();
      } else {
        ok &= manager_
                  ->RegisterMmio(
                      *MmioRange::Create(MmioAddress(wt.base), wt.size),
                      devices_[d])
                  .ok();
      }
      lt.EndRegister(clock_);
      if (!ok) failures_.Add("two-step move failed");
    } else {
      lf.BeginDeregister(clock_);
      lt.BeginRegister(clock_, devices_[d]->serial());
      const absl::Status st =
          bus == 0
              ? manager_->MovePio(PioAddress(static_cast<uint16_t>(addr)),
                                  PioAddress(static_cast<uint16_t>(wt.base)))
              : manager_->MoveMmio(MmioAddress(addr), MmioAddress(wt.base));
      lf.EndDeregister(clock_);
      lt.EndRegister(clock_);
      if (!st.ok()) failures_.Add("move failed: " + st.ToString());
    }
    registered_[bus][from] = false;
    registered_[bus][to] = true;
    changes_.fetch_add(1, std::memory_order_relaxed);
  }

  // Deregisters everything, drops the test's references and counts them.
  void TearDown() {
    std::lock_guard<std::mutex> l(mu);
    for (int bus = 0; bus < 2; ++bus) {
      for (int slot = 0; slot < kSlotsPerBus; ++slot) {
        if (!registered_[bus][slot]) continue;
        const Window& w = windows_[bus][slot];
        logs_[bus][slot]->BeginDeregister(clock_);
        const bool ok =
            bus == 0
                ? manager_
                      ->DeregisterPio(PioAddress(static_cast<uint16_t>(w.base)))
                      .ok()
                : manager_->DeregisterMmio(MmioAddress(w.base)).ok();
        logs_[bus][slot]->EndDeregister(clock_);
        if (!ok) failures_.Add("teardown deregister failed");
        registered_[bus][slot] = false;
      }
    }
    for (auto& dev : devices_) {
      if (dev != nullptr) ++released_;
      dev.reset();
    }
  }

 private:
  // Whether `slot` fits among the registered slots of `bus`, ignoring
  // `except` (the slot a move vacates).
  bool Fits(int bus, int slot, int except) const {
    for (int s = 0; s < kSlotsPerBus; ++s) {
      if (s != except && registered_[bus][s] &&
          windows_[bus][s].Overlaps(windows_[bus][slot])) {
        return false;
      }
    }
    return true;
  }

  int RandomRegistered(std::mt19937_64& rng, int bus) const {
    const int start = static_cast<int>(rng() % kSlotsPerBus);
    for (int i = 0; i < kSlotsPerBus; ++i) {
      const int s = (start + i) % kSlotsPerBus;
      if (registered_[bus][s]) return s;
    }
    return -1;
  }

  // Replaces device `d` by a fresh one if none of its windows is registered.
  void MaybeReplace(int d) {
    for (int bus = 0; bus < 2; ++bus) {
      for (int w = 0; w < kWindows; ++w) {
        if (registered_[bus][d * kWindows + w]) return;
      }
    }
    devices_[d] = std::make_shared<TrackedDevice>(&counters_, d);
    ++released_;
  }

  bool CheckRouted(int bus, const Probe& p, const CallRecord& r, bool write,
                   const uint8_t* buf, uint64_t t0, uint64_t t1) {
    if (r.calls != 1 || r.index < 0 ||
        r.bus != (bus == 0 ? BusKind::kPio : BusKind::kMmio) ||
        r.len != p.len) {
      failures_.Add(absl::StrFormat(
          "bus %d addr 0x%x: kOk but %d handler calls (bus %d, len %d)", bus,
          p.addr, r.calls, static_cast<int>(r.bus), r.len));
      return false;
    }
    int slot = -1;
    for (int w = 0; w < kWindows; ++w) {
      if (windows_[bus][r.index * kWindows + w].base == r.base) {
        slot = r.index * kWindows + w;
      }
    }
    if (slot < 0 || !windows_[bus][slot].Holds(p.addr, p.len) ||
        r.offset != p.addr - r.base) {
      failures_.Add(absl::StrFormat(
          "bus %d addr 0x%x len %d routed to device %d at base 0x%x offset "
          "0x%x: not one of its windows holding the access",
          bus, p.addr, p.len, r.index, r.base, r.offset));
      return false;
    }
    if (!write) {
      for (size_t i = 0; i < p.len; ++i) {
        if (buf[i] != static_cast<uint8_t>(r.serial)) {
          failures_.Add("read data does not come from the device called");
          return false;
        }
      }
    }
    if (!logs_[bus][slot]->MayHaveRouted(r.serial, t0, t1)) {
      failures_.Add(absl::StrFormat(
          "bus %d addr 0x%x len %d routed to device #%d (index %d) at base "
          "0x%x, which was not registered there during [%d, %d)",
          bus, p.addr, p.len, r.serial, r.index, r.base, t0, t1));
      return false;
    }
    return true;
  }

  IoManager* const manager_;
  Clock clock_;
  DeviceCounters counters_;
  AccessCounts accesses_;
  Failures failures_;
  std::vector<Window> windows_[2];
  std::vector<std::unique_ptr<SlotLog>> logs_[2];
  std::vector<Probe> probes_[2];
  std::shared_ptr<TrackedDevice> devices_[kDevices];
  std::array<bool, kSlotsPerBus> registered_[2];
  uint64_t released_ = 0;
  std::atomic<uint64_t> changes_{0};
};

}  // namespace hotplug_harness
}  // namespace vm_device

#endif  // VM_DEVICE_TESTS_HOTPLUG_HARNESS_H_
