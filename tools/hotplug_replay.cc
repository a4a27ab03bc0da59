// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#include "tools/hotplug_replay.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "vm_device/vm_device.h"

namespace vm_device::trace {
namespace {

constexpr uint64_t kUnset = ~uint64_t{0};
constexpr size_t kMaxProblems = 10;

using SteadyClock = std::chrono::steady_clock;

// What the last handler call on this thread saw.
struct Observation {
  int calls = 0;
  int32_t range = -1;  // the mapping of the device called
  uint64_t serial = 0;
  BusKind bus = BusKind::kPio;
  uint64_t base = 0;
  uint64_t offset = 0;
  size_t len = 0;
};

thread_local Observation* tls_observation = nullptr;

// Device lifetimes, counted by all devices of one replay.
struct DeviceCounters {
  // relaxed: counts, read after every thread has joined and the manager
  // (with the reclaimer's work) is gone.
  std::atomic<uint64_t> built{0};
  std::atomic<uint64_t> destroyed{0};
  std::atomic<uint64_t> destroyed_while_running{0};
  std::atomic<uint64_t> handler_on_dead_device{0};
};

// The device object of one mapping; see the header comment.
class ReplayDevice final : public DevicePio, public DeviceMmio {
 public:
  static constexpr uint64_t kAlive = 0x5eb1a1fe5eb1a1feull;
  static constexpr uint64_t kDead = 0xdeadde1ddeadde1dull;

  ReplayDevice(DeviceCounters* counters, int32_t range, uint64_t serial)
      : counters_(counters), range_(range), serial_(serial) {
    counters_->built.fetch_add(1, std::memory_order_relaxed);
  }
  ~ReplayDevice() override {
    // seq_cst: pairs with the handlers' seq_cst increments; a handler that
    // entered before this destructor started is seen here.
    if (in_flight_.load() != 0) {
      counters_->destroyed_while_running.fetch_add(1,
                                                   std::memory_order_relaxed);
    }
    // relaxed: a poison value; a handler running after this is a bug the
    // check in Enter() (and ASan) reports.
    magic_.store(kDead, std::memory_order_relaxed);
    counters_->destroyed.fetch_add(1, std::memory_order_relaxed);
  }

  uint64_t serial() const { return serial_; }

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    Enter(BusKind::kPio, base.value(), offset, data.size());
    std::fill(data.begin(), data.end(), static_cast<uint8_t>(serial_));
    Leave();
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const override {
    Enter(BusKind::kPio, base.value(), offset, data.size());
    Leave();
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    Enter(BusKind::kMmio, base.value(), offset, data.size());
    std::fill(data.begin(), data.end(), static_cast<uint8_t>(serial_));
    Leave();
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override {
    Enter(BusKind::kMmio, base.value(), offset, data.size());
    Leave();
  }

 private:
  void Enter(BusKind bus, uint64_t base, uint64_t offset, size_t len) const {
    // relaxed: see the destructor.
    if (magic_.load(std::memory_order_relaxed) != kAlive) {
      counters_->handler_on_dead_device.fetch_add(1, std::memory_order_relaxed);
    }
    // seq_cst: see the destructor.
    in_flight_.fetch_add(1);
    if (Observation* o = tls_observation) {
      ++o->calls;
      o->range = range_;
      o->serial = serial_;
      o->bus = bus;
      o->base = base;
      o->offset = offset;
      o->len = len;
    }
  }
  // seq_cst: see the destructor.
  void Leave() const { in_flight_.fetch_sub(1); }

  DeviceCounters* const counters_;
  const int32_t range_;
  const uint64_t serial_;
  std::atomic<uint64_t> magic_{kAlive};
  mutable std::atomic<int> in_flight_{0};
};

// One time a mapping was live: its device's serial and the writer's stamps.
struct Incarnation {
  uint64_t serial;
  uint64_t start;                 // before the publishing call
  uint64_t reg_done = kUnset;     // after it returned
  uint64_t dereg_begin = kUnset;  // before the unpublishing call
  uint64_t end = kUnset;          // after it returned
};

// One change to apply: map or unmap mapping `range`.
struct Op {
  int32_t range;
  bool map;
};

// The problems found, capped.
void AddProblem(std::vector<std::string>& problems, std::string what) {
  if (problems.size() < kMaxProblems) problems.push_back(std::move(what));
}

std::string DescribeAccess(size_t row, const Access& a) {
  return absl::StrFormat("access %d (vcpu %d, %s %s 0x%x size %d)", row, a.vcpu,
                         a.bus == BusKind::kPio ? "pio" : "mmio",
                         a.write ? "w" : "r", a.addr, a.size);
}

// Whether mapping `r` holds all of access `a`.
bool Holds(const MapRange& r, const Access& a) {
  return r.bus == a.bus && a.addr >= r.first && a.addr <= r.last &&
         uint64_t{a.size} - 1 <= r.last - a.addr;
}

// Whether what the handler saw matches access `a` on mapping `r`, and a
// read's data came from the device called.
bool ShapeMatches(const Observation& o, const MapRange& r, const Access& a,
                  const uint8_t* buf) {
  if (o.calls != 1 || o.bus != a.bus || o.len != a.size || o.base != r.first ||
      o.offset != a.addr - r.first || !Holds(r, a)) {
    return false;
  }
  if (!a.write) {
    for (size_t i = 0; i < a.size; ++i) {
      if (buf[i] != static_cast<uint8_t>(o.serial)) return false;
    }
  }
  return true;
}

// The writer: owns the manager's changes, the stamps and the logs. Only the
// writer thread calls its methods while the replay runs; the logs are read
// after it has joined (ordered mode's readers also read `serial_of`, between
// barriers).
class Writer {
 public:
  Writer(const ChangeTrace& t, IoManager& manager, DeviceCounters& counters,
         CommitGranularity commit)
      : serial_of(t.ranges.size(), 0),
        t_(t),
        manager_(manager),
        counters_(counters),
        commit_(commit),
        log_(t.ranges.size()),
        live_(t.ranges.size(), nullptr) {}

  // The initial map, in one batch.
  absl::Status MapInitial() {
    std::vector<Op> ops;
    for (size_t r = 0; r < t_.map_ranges; ++r) {
      ops.push_back(Op{static_cast<int32_t>(r), true});
    }
    const uint64_t errors = errors_;
    ApplyBatch(ops);
    if (errors_ != errors) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot register the initial map: ",
                       problems.empty() ? std::string("?") : problems.back()));
    }
    commit_stamps.clear();
    commits = 0;
    return absl::OkStatus();
  }

  // Applies burst `b` forward (as recorded) or backward (undoing it).
  void ApplyBurst(const Burst& b, bool forward) {
    std::vector<Op> ops;
    if (forward) {
      for (size_t i = b.begin; i < b.end; ++i) {
        ops.push_back(Op{t_.changes[i].range, t_.changes[i].map});
      }
    } else {
      for (size_t i = b.end; i-- > b.begin;) {
        ops.push_back(Op{t_.changes[i].range, !t_.changes[i].map});
      }
    }
    changes += ops.size();
    if (commit_ == CommitGranularity::kBurst) {
      ApplyBatch(ops);
    } else {
      for (const Op& op : ops) ApplyBatch(absl::MakeConstSpan(&op, 1));
    }
  }

  uint64_t Now() const { return clock_.load(); }
  uint64_t errors() const { return errors_; }
  const std::vector<std::vector<Incarnation>>& log() const { return log_; }

  // Read by ordered-mode readers between barriers: the serial of the device
  // now mapped on each mapping (0: none).
  std::vector<uint64_t> serial_of;
  // [first stamp, last stamp] of each publishing call, in order.
  std::vector<std::pair<uint64_t, uint64_t>> commit_stamps;
  uint64_t commits = 0;
  uint64_t changes = 0;
  std::vector<std::string> problems;

 private:
  // seq_cst: the stamps and the readers' t0/t1 loads form one total order
  // (tests/hotplug_harness.h explains the check).
  uint64_t Stamp() { return clock_.fetch_add(1); }

  void Error(std::string what) {
    ++errors_;
    AddProblem(problems, absl::StrCat("writer: ", what));
  }

  // Applies `ops` with one publishing call: a single change through
  // Register*/Deregister*, several through one IoBatch.
  void ApplyBatch(absl::Span<const Op> ops) {
    std::vector<std::shared_ptr<ReplayDevice>> fresh(ops.size());
    // The device object each unmap must remove (a mapping may be mapped
    // earlier in the same batch).
    std::vector<const void*> expected(ops.size(), nullptr);
    const std::vector<const void*> saved_live = [&] {
      std::vector<const void*> v;
      for (const Op& op : ops) v.push_back(live_[op.range]);
      return v;
    }();
    IoBatch batch;
    bool ok = true;
    uint64_t first_stamp = kUnset;
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      const MapRange& r = t_.ranges[op.range];
      const uint64_t stamp = Stamp();
      if (first_stamp == kUnset) first_stamp = stamp;
      if (op.map) {
        if (live_[op.range] != nullptr) {
          ok = false;
          Error(absl::StrCat("map of mapping ", op.range, ", already mapped"));
          continue;
        }
        fresh[i] = std::make_shared<ReplayDevice>(&counters_, op.range,
                                                  next_serial_++);
        log_[op.range].push_back(Incarnation{fresh[i]->serial(), stamp});
        live_[op.range] = dynamic_cast<const void*>(fresh[i].get());
        if (ops.size() > 1) {
          absl::Status s = Add(batch, r, fresh[i]);
          if (!s.ok()) {
            ok = false;
            Error(s.ToString());
          }
        }
      } else {
        if (live_[op.range] == nullptr) {
          ok = false;
          Error(absl::StrCat("unmap of mapping ", op.range, ", not mapped"));
          continue;
        }
        expected[i] = live_[op.range];
        live_[op.range] = nullptr;
        log_[op.range].back().dereg_begin = stamp;
        if (ops.size() > 1) {
          if (r.bus == BusKind::kPio) {
            batch.RemovePio(PioAddress(static_cast<uint16_t>(r.first)));
          } else {
            batch.RemoveMmio(MmioAddress(r.first));
          }
        }
      }
    }
    if (!ok) {
      // Nothing is applied.
    } else if (ops.size() == 1) {
      ok = ApplyOne(ops[0], fresh[0], expected[0]);
    } else {
      absl::StatusOr<IoBatch::Removed> removed =
          manager_.Commit(std::move(batch));
      if (!removed.ok()) {
        ok = false;
        Error(removed.status().ToString());
      } else {
        CheckRemoved(ops, expected, *removed);
      }
    }
    if (!ok) {
      // All or nothing: undo the bookkeeping, last op first.
      for (size_t i = ops.size(); i-- > 0;) {
        std::vector<Incarnation>& log = log_[ops[i].range];
        if (ops[i].map && fresh[i] != nullptr) {
          log.pop_back();
        } else if (!ops[i].map && expected[i] != nullptr) {
          log.back().dereg_begin = kUnset;
        }
        live_[ops[i].range] = saved_live[i];
      }
      return;
    }
    uint64_t last_stamp = first_stamp;
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      last_stamp = Stamp();
      // Stamp the incarnation this op began: for a map, the one with its
      // device (a later unmap in the batch may have made it not the last).
      if (op.map) {
        for (size_t j = log_[op.range].size(); j-- > 0;) {
          if (log_[op.range][j].serial == fresh[i]->serial()) {
            log_[op.range][j].reg_done = last_stamp;
            break;
          }
        }
      } else {
        log_[op.range].back().end = last_stamp;
      }
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      serial_of[ops[i].range] =
          live_[ops[i].range] == nullptr ? 0 : log_[ops[i].range].back().serial;
    }
    commit_stamps.emplace_back(first_stamp, last_stamp);
    ++commits;
    // `fresh` goes out of scope: the manager holds the only references.
  }

  static absl::Status Add(IoBatch& batch, const MapRange& r,
                          std::shared_ptr<ReplayDevice> dev) {
    const uint64_t size = r.last - r.first + 1;
    if (r.bus == BusKind::kPio) {
      absl::StatusOr<PioRange> range =
          PioRange::Create(PioAddress(static_cast<uint16_t>(r.first)),
                           static_cast<PioAddressOffset>(size));
      if (!range.ok() || size > 0xffff) {
        return absl::InvalidArgumentError(
            absl::StrCat("pio range at 0x", absl::Hex(r.first), " of ", size,
                         " bytes cannot be registered"));
      }
      batch.AddPio(*range, std::move(dev));
    } else {
      absl::StatusOr<MmioRange> range =
          MmioRange::Create(MmioAddress(r.first), size);
      if (!range.ok()) return range.status();
      batch.AddMmio(*range, std::move(dev));
    }
    return absl::OkStatus();
  }

  // One change, through RegisterPio/Mmio or DeregisterPio/Mmio. False (and
  // an error counted) when the manager refused it.
  bool ApplyOne(const Op& op, std::shared_ptr<ReplayDevice> dev,
                const void* expected) {
    const MapRange& r = t_.ranges[op.range];
    const uint64_t size = r.last - r.first + 1;
    if (op.map) {
      IoBatch one;
      absl::Status s = Add(one, r, dev);
      if (s.ok()) {
        if (r.bus == BusKind::kPio) {
          s = manager_.RegisterPio(
              *PioRange::Create(PioAddress(static_cast<uint16_t>(r.first)),
                                static_cast<PioAddressOffset>(size)),
              dev);
        } else {
          s = manager_.RegisterMmio(
              *MmioRange::Create(MmioAddress(r.first), size), dev);
        }
      }
      if (!s.ok()) Error(s.ToString());
      return s.ok();
    }
    if (r.bus == BusKind::kPio) {
      auto got =
          manager_.DeregisterPio(PioAddress(static_cast<uint16_t>(r.first)));
      if (!got.ok()) {
        Error(got.status().ToString());
        return false;
      }
      CheckOneRemoved(op, got->first.base().value(), got->first.size(),
                      dynamic_cast<const void*>(got->second.get()), expected);
    } else {
      auto got = manager_.DeregisterMmio(MmioAddress(r.first));
      if (!got.ok()) {
        Error(got.status().ToString());
        return false;
      }
      CheckOneRemoved(op, got->first.base().value(), got->first.size(),
                      dynamic_cast<const void*>(got->second.get()), expected);
    }
    return true;
  }

  void CheckOneRemoved(const Op& op, uint64_t base, uint64_t size,
                       const void* device, const void* expected) {
    const MapRange& r = t_.ranges[op.range];
    if (base != r.first || size != r.last - r.first + 1 || device != expected) {
      Error(absl::StrFormat(
          "unmapping [0x%x, 0x%x] '%s' removed base 0x%x size %d, %s device",
          r.first, r.last, r.name, base, size,
          device == expected ? "the right" : "another"));
    }
  }

  void CheckRemoved(absl::Span<const Op> ops,
                    const std::vector<const void*>& expected_devices,
                    const IoBatch::Removed& removed) {
    size_t pio = 0, mmio = 0;
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      if (op.map) continue;
      const MapRange& r = t_.ranges[op.range];
      const void* expected = expected_devices[i];
      if (r.bus == BusKind::kPio) {
        if (pio >= removed.pio.size()) return Error("batch removed too little");
        const auto& [range, dev] = removed.pio[pio++];
        CheckOneRemoved(op, range.base().value(), range.size(),
                        dynamic_cast<const void*>(dev.get()), expected);
      } else {
        if (mmio >= removed.mmio.size()) {
          return Error("batch removed too little");
        }
        const auto& [range, dev] = removed.mmio[mmio++];
        CheckOneRemoved(op, range.base().value(), range.size(),
                        dynamic_cast<const void*>(dev.get()), expected);
      }
    }
  }

  const ChangeTrace& t_;
  IoManager& manager_;
  DeviceCounters& counters_;
  const CommitGranularity commit_;
  std::atomic<uint64_t> clock_{1};
  uint64_t next_serial_ = 1;
  uint64_t errors_ = 0;
  std::vector<std::vector<Incarnation>> log_;  // per mapping
  // The device object mapped on each mapping now (not owned), to check what
  // an unmap returns.
  std::vector<const void*> live_;
};

// ---------------------------------------------------------------------------
// Ordered mode
// ---------------------------------------------------------------------------

struct ThreadCounts {
  uint64_t routed = 0;
  uint64_t no_device = 0;
  uint64_t no_device_dash = 0;
  uint64_t no_device_past_end = 0;
  uint64_t unexpected = 0;
  uint64_t misrouted = 0;
  std::vector<std::string> problems;
};

// Replays rows[*cursor..] below `end` (an access index) on this thread.
void OrderedStretch(const ChangeTrace& t, const IoManager& manager,
                    const std::vector<uint64_t>& serial_of,
                    const std::vector<size_t>& rows, size_t end, size_t* cursor,
                    ThreadCounts& c) {
  Observation obs;
  tls_observation = &obs;
  uint8_t buf[8];
  for (; *cursor < rows.size() && rows[*cursor] < end; ++*cursor) {
    const size_t i = rows[*cursor];
    const Access& a = t.accesses[i];
    int32_t want = a.range;
    if (want >= 0 && !Holds(t.ranges[want], a)) want = -1;
    obs = Observation{};
    const IoStatus s = Dispatch(manager, a, buf);
    if (s != IoStatus::kOk) {
      if (want >= 0 || s != IoStatus::kDeviceNotFound) {
        ++c.unexpected;
        AddProblem(c.problems,
                   absl::StrCat(DescribeAccess(i, a), ": ",
                                std::string(IoStatusName(s)), ", expected ",
                                want < 0 ? std::string("no device")
                                         : t.ranges[want].name));
      } else if (obs.calls != 0) {
        ++c.misrouted;
        AddProblem(c.problems, absl::StrCat(DescribeAccess(i, a),
                                            ": a device ran on no device"));
      } else {
        ++c.no_device;
        ++(a.device < 0 ? c.no_device_dash : c.no_device_past_end);
      }
      continue;
    }
    if (want >= 0 && obs.range == want && obs.serial == serial_of[want] &&
        ShapeMatches(obs, t.ranges[want], a, buf)) {
      ++c.routed;
      continue;
    }
    ++c.misrouted;
    AddProblem(
        c.problems,
        absl::StrFormat(
            "%s: reached %s (mapping %d, serial %d, base 0x%x, offset 0x%x), "
            "expected %s",
            DescribeAccess(i, a),
            obs.range < 0 ? std::string("nothing") : t.ranges[obs.range].name,
            obs.range, obs.serial, obs.base, obs.offset,
            want < 0
                ? std::string("no device")
                : absl::StrFormat("'%s' at 0x%x (mapping %d, serial %d)",
                                  t.ranges[want].name, t.ranges[want].first,
                                  want, serial_of[want])));
  }
  tls_observation = nullptr;
}

void Merge(const ThreadCounts& c, HotplugReplayResult& r) {
  r.routed += c.routed;
  r.no_device += c.no_device;
  r.no_device_dash += c.no_device_dash;
  r.no_device_past_end += c.no_device_past_end;
  r.unexpected += c.unexpected;
  r.misrouted += c.misrouted;
  for (const std::string& p : c.problems) AddProblem(r.problems, p);
}

double ReplayOrdered(const ChangeTrace& t, const IoManager& manager,
                     Writer& writer, absl::Span<const std::vector<size_t>> rows,
                     HotplugReplayResult& result) {
  const std::vector<Burst> bursts = Bursts(t);
  const size_t n = rows.size();
  std::vector<ThreadCounts> counts(n);
  // Phases: start; then per stretch k: [threads replay] arrive (A); and,
  // unless k is the last stretch, [writer applies burst k] arrive (B).
  std::barrier sync(static_cast<std::ptrdiff_t>(n + 1));
  std::vector<std::thread> threads;
  for (size_t k = 0; k < n; ++k) {
    threads.emplace_back([&, k] {
      VcpuThread rcu_reader;
      sync.arrive_and_wait();  // start
      size_t cursor = 0;
      for (size_t s = 0; s <= bursts.size(); ++s) {
        const size_t end =
            s < bursts.size() ? bursts[s].before : t.accesses.size();
        OrderedStretch(t, manager, writer.serial_of, rows[k], end, &cursor,
                       counts[k]);
        sync.arrive_and_wait();                         // A
        if (s < bursts.size()) sync.arrive_and_wait();  // B
      }
    });
  }
  sync.arrive_and_wait();  // start
  const auto start = SteadyClock::now();
  for (size_t s = 0; s <= bursts.size(); ++s) {
    sync.arrive_and_wait();  // A: stretch s done everywhere
    if (s < bursts.size()) {
      writer.ApplyBurst(bursts[s], /*forward=*/true);
      sync.arrive_and_wait();  // B: burst s applied
    }
  }
  const auto stop = SteadyClock::now();
  for (std::thread& th : threads) th.join();
  for (const ThreadCounts& c : counts) Merge(c, result);
  result.passes = 1;
  return std::chrono::duration<double, std::nano>(stop - start).count();
}

// ---------------------------------------------------------------------------
// Racing mode
// ---------------------------------------------------------------------------

// What one access recorded, checked after the threads have joined.
struct Record {
  uint64_t t0;
  uint64_t t1;
  uint64_t serial;
  float latency_ns;
  int32_t range;
  IoStatus status;
  bool shape_ok;
};

// Replays `rows` flat out into `out` (already sized, one per row).
void RacingRows(const ChangeTrace& t, const IoManager& manager,
                const Writer& writer, const std::vector<size_t>& rows,
                std::vector<Record>& out) {
  Observation obs;
  tls_observation = &obs;
  uint8_t buf[8];
  for (size_t k = 0; k < rows.size(); ++k) {
    const Access& a = t.accesses[rows[k]];
    obs = Observation{};
    const uint64_t t0 = writer.Now();
    const auto l0 = SteadyClock::now();
    const IoStatus s = Dispatch(manager, a, buf);
    const auto l1 = SteadyClock::now();
    const uint64_t t1 = writer.Now();
    Record& r = out[k];
    r.t0 = t0;
    r.t1 = t1;
    r.serial = obs.serial;
    r.latency_ns = static_cast<float>(
        std::chrono::duration<double, std::nano>(l1 - l0).count());
    r.range = obs.calls > 0 ? obs.range : -1;
    r.status = s;
    r.shape_ok =
        obs.calls == 0 ||
        (obs.range >= 0 && ShapeMatches(obs, t.ranges[obs.range], a, buf));
  }
  tls_observation = nullptr;
}

// The incarnation of `log` with device `serial`, or null.
const Incarnation* FindSerial(const std::vector<Incarnation>& log,
                              uint64_t serial) {
  auto it = std::lower_bound(
      log.begin(), log.end(), serial,
      [](const Incarnation& i, uint64_t s) { return i.serial < s; });
  return it != log.end() && it->serial == serial ? &*it : nullptr;
}

// Whether some incarnation of `log` was certainly published throughout
// [t0, t1): the latest one published before t0 was not yet being unmapped at
// t1. (A mapping's incarnations do not overlap: each is unmapped before the
// next is mapped.)
bool CertainlyPublished(const std::vector<Incarnation>& log, uint64_t t0,
                        uint64_t t1) {
  auto it = std::lower_bound(
      log.begin(), log.end(), t0,
      [](const Incarnation& i, uint64_t t) { return i.start < t; });
  if (it == log.begin()) return false;
  --it;  // the latest that started before t0
  if (it->reg_done == kUnset || it->reg_done >= t0) return false;
  return it->dereg_begin == kUnset || it->dereg_begin >= t1;
}

double Percentile(std::vector<float>& v, double q) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * v.size()));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k),
                   v.end());
  return v[k];
}

double ReplayRacing(const ChangeTrace& t, const IoManager& manager,
                    Writer& writer, absl::Span<const std::vector<size_t>> rows,
                    const HotplugReplayOptions& options,
                    HotplugReplayResult& result) {
  const std::vector<Burst> bursts = Bursts(t);
  const size_t n = rows.size();
  std::vector<std::vector<Record>> records(n);
  // seq_cst (default): start flag and finish count, off the measured path.
  std::atomic<size_t> ready{0};
  std::atomic<bool> go{false};
  std::atomic<size_t> finished{0};
  std::vector<std::thread> threads;
  for (size_t k = 0; k < n; ++k) {
    threads.emplace_back([&, k] {
      // Registered with RCU, and the records' pages touched, before timing.
      VcpuThread rcu_reader;
      records[k].assign(rows[k].size(), Record{});
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      RacingRows(t, manager, writer, rows[k], records[k]);
      finished.fetch_add(1);
    });
  }
  while (ready.load() < n) std::this_thread::yield();
  std::thread writer_thread([&] {
    bool forward = true;
    uint64_t passes = 0;
    const int min_passes = std::max(0, options.min_passes);
    auto readers_done = [&] { return finished.load() == n; };
    while (!bursts.empty() &&
           (passes < static_cast<uint64_t>(min_passes) || !readers_done())) {
      bool complete = true;
      for (size_t k = 0; k < bursts.size(); ++k) {
        const Burst& b = bursts[forward ? k : bursts.size() - 1 - k];
        writer.ApplyBurst(b, forward);
        if (options.change_interval_us > 0) {
          std::this_thread::sleep_for(
              std::chrono::microseconds(options.change_interval_us));
        }
        if (passes >= static_cast<uint64_t>(min_passes) && readers_done()) {
          complete = k + 1 == bursts.size();
          break;
        }
      }
      if (complete) {
        ++passes;
        forward = !forward;
      }
    }
    result.passes = passes;
  });
  const auto start = SteadyClock::now();
  go.store(true);
  for (std::thread& th : threads) th.join();
  const auto stop = SteadyClock::now();
  writer_thread.join();

  // The checks.
  const auto& log = writer.log();
  const auto& commits = writer.commit_stamps;
  std::vector<float> all, overlapped;
  all.reserve(t.accesses.size());
  for (size_t k = 0; k < n; ++k) {
    for (size_t j = 0; j < rows[k].size(); ++j) {
      const size_t i = rows[k][j];
      const Access& a = t.accesses[i];
      const Record& r = records[k][j];
      all.push_back(r.latency_ns);
      // Overlapped a commit: the first commit ending at or after t0 began
      // before t1.
      auto c = std::lower_bound(commits.begin(), commits.end(), r.t0,
                                [](const std::pair<uint64_t, uint64_t>& c,
                                   uint64_t t0) { return c.second < t0; });
      if (c != commits.end() && c->first < r.t1) {
        overlapped.push_back(r.latency_ns);
      }
      if (r.status == IoStatus::kOk) {
        const Incarnation* inc =
            r.range >= 0 ? FindSerial(log[r.range], r.serial) : nullptr;
        if (r.range >= 0 && r.shape_ok && inc != nullptr && inc->start < r.t1 &&
            (inc->end == kUnset || inc->end >= r.t0)) {
          ++result.routed;
        } else {
          ++result.misrouted;
          AddProblem(
              result.problems,
              absl::StrFormat(
                  "%s: reached %s (mapping %d, serial %d)%s during [%d, %d)",
                  DescribeAccess(i, a),
                  r.range < 0 ? std::string("nothing") : t.ranges[r.range].name,
                  r.range, r.serial,
                  !r.shape_ok ? " at the wrong base, offset, size or data"
                              : ", which was not mapped",
                  r.t0, r.t1));
        }
        continue;
      }
      bool certain = false;
      for (size_t m = 0; m < t.ranges.size() && !certain; ++m) {
        if (Holds(t.ranges[m], a) && CertainlyPublished(log[m], r.t0, r.t1)) {
          certain = true;
          AddProblem(
              result.problems,
              absl::StrFormat("%s: %s although '%s' [0x%x, 0x%x] was "
                              "mapped throughout [%d, %d)",
                              DescribeAccess(i, a), IoStatusName(r.status),
                              t.ranges[m].name, t.ranges[m].first,
                              t.ranges[m].last, r.t0, r.t1));
        }
      }
      if (r.range >= 0) {
        ++result.misrouted;
        AddProblem(
            result.problems,
            absl::StrCat(DescribeAccess(i, a), ": a device ran on no device"));
      } else if (certain || r.status != IoStatus::kDeviceNotFound) {
        ++result.unexpected;
      } else {
        ++result.no_device;
      }
    }
  }
  result.overlapped = overlapped.size();
  result.overlapped_p50_ns = Percentile(overlapped, 0.50);
  result.overlapped_p99_ns = Percentile(overlapped, 0.99);
  result.all_p50_ns = Percentile(all, 0.50);
  result.all_p99_ns = Percentile(all, 0.99);
  return std::chrono::duration<double, std::nano>(stop - start).count();
}

}  // namespace

std::vector<std::vector<size_t>> RowsPerVcpu(const std::vector<Access>& a) {
  std::map<int32_t, size_t> thread_of_vcpu;
  for (const Access& x : a) thread_of_vcpu.emplace(x.vcpu, 0);
  std::vector<std::vector<size_t>> rows;
  for (auto& entry : thread_of_vcpu) {
    entry.second = rows.size();
    rows.emplace_back();
  }
  for (size_t i = 0; i < a.size(); ++i) {
    rows[thread_of_vcpu[a[i].vcpu]].push_back(i);
  }
  return rows;
}

std::vector<std::vector<size_t>> RowsRoundRobin(size_t accesses, int threads) {
  std::vector<std::vector<size_t>> rows(
      static_cast<size_t>(std::max(threads, 1)));
  for (size_t i = 0; i < accesses; ++i) rows[i % rows.size()].push_back(i);
  return rows;
}

absl::StatusOr<HotplugReplayResult> ReplayWithChanges(
    const ChangeTrace& t, absl::Span<const std::vector<size_t>> rows,
    const HotplugReplayOptions& options) {
  HotplugReplayResult result;
  result.accesses = t.accesses.size();
  result.threads = rows.size();
  DeviceCounters counters;
  {
    auto manager = std::make_unique<IoManager>();
    Writer writer(t, *manager, counters, options.commit);
    if (absl::Status s = writer.MapInitial(); !s.ok()) return s;
    const double ns =
        options.mode == ReplayMode::kOrdered
            ? ReplayOrdered(t, *manager, writer, rows, result)
            : ReplayRacing(t, *manager, writer, rows, options, result);
    result.ns_per_access =
        t.accesses.empty() ? 0.0 : ns / static_cast<double>(t.accesses.size());
    result.commits = writer.commits;
    result.changes = writer.changes;
    result.writer_errors = writer.errors();
    for (const std::string& p : writer.problems) AddProblem(result.problems, p);
    // Destroying the manager waits for a grace period and releases every
    // device it still holds or had retired.
    manager.reset();
  }
  // relaxed: every device thread has joined; the manager's destructor has
  // waited for the reclaimer.
  result.devices_built = counters.built.load(std::memory_order_relaxed);
  result.leaked =
      result.devices_built - counters.destroyed.load(std::memory_order_relaxed);
  result.destroyed_while_running =
      counters.destroyed_while_running.load(std::memory_order_relaxed);
  result.handler_on_dead_device =
      counters.handler_on_dead_device.load(std::memory_order_relaxed);
  return result;
}

}  // namespace vm_device::trace
