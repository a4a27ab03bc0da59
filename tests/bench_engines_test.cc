// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The four benchmark engines of //bench:engines must route every access the
// way IoManager does: same status, same device, same range base and offset.
// Each engine is checked against a brute-force model of the routing rules.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "bench/engines.h"
#include "gtest/gtest.h"
#include "vm_device/io_status.h"

namespace vm_device {
namespace bench {
namespace {

constexpr uint64_t kPioMax = std::numeric_limits<uint16_t>::max();
constexpr uint64_t kMmioMax = std::numeric_limits<uint64_t>::max();

struct Expected {
  IoStatus status;
  const SinkDevice* device = nullptr;
  uint64_t base = 0;
};

// The routing rules, by brute force over the registered ranges.
Expected Model(const std::vector<RangeSpec>& ranges, const Access& a) {
  const uint64_t max = a.bus == BusKind::kPio ? kPioMax : kMmioMax;
  if (a.bus == BusKind::kPio && a.size > kPioMax) {
    return {IoStatus::kInvalidAccessLength};
  }
  if (a.size == 0 || a.size - 1 > max - a.addr)
    return {IoStatus::kInvalidRange};
  const uint64_t last = a.addr + (a.size - 1);
  for (const RangeSpec& r : ranges) {
    if (r.bus != a.bus) continue;
    const uint64_t r_last = r.base + (r.size - 1);
    if (r.base <= a.addr && a.addr <= r_last) {
      if (last > r_last) return {IoStatus::kDeviceNotFound};
      return {IoStatus::kOk, r.device.get(), r.base};
    }
  }
  return {IoStatus::kDeviceNotFound};
}

struct Engines {
  RcuEngine rcu;
  RwLockMapEngine rwlock_map;
  MutexMapEngine mutex_map;
  UnsynchronizedEngine unsynchronized;

  template <typename F>
  void ForEach(F&& f) {
    f(rcu);
    f(rwlock_map);
    f(mutex_map);
    f(unsynchronized);
  }
};

// A map with adjacent ranges, one-address ranges, ranges at the top of each
// bus, a device on several ranges, and random MMIO ranges.
std::vector<RangeSpec> TestMap() {
  std::vector<RangeSpec> map;
  uint8_t id = 1;
  auto dev = [&id] { return std::make_shared<SinkDevice>(id++); };
  auto shared = dev();
  map.push_back({BusKind::kPio, 0x0, 1, dev()});
  map.push_back({BusKind::kPio, 0x1, 7, dev()});
  map.push_back({BusKind::kPio, 0x3f8, 8, dev()});
  map.push_back({BusKind::kPio, 0xcf8, 4, shared});
  map.push_back({BusKind::kPio, 0xcfc, 4, shared});
  map.push_back({BusKind::kPio, 0xfff0, 0x10, dev()});
  map.push_back({BusKind::kMmio, 0x1000, 0x1000, dev()});
  map.push_back({BusKind::kMmio, 0x2000, 1, shared});
  map.push_back({BusKind::kMmio, 0xfed00000, 0x400, dev()});
  map.push_back({BusKind::kMmio, 0xfee00000, 0x100000, dev()});
  map.push_back({BusKind::kMmio, 0xfffffffffffff000, 0x1000, dev()});
  std::mt19937_64 rng(7);
  for (int i = 0; i < 64; ++i) {
    // Disjoint slots of 1 MiB from 4 GiB up; random size inside each.
    const uint64_t base =
        (uint64_t{1} << 32) + uint64_t(i) * 0x100000 + (rng() % 0x80000);
    map.push_back({BusKind::kMmio, base, 1 + rng() % 0x10000, dev()});
  }
  return map;
}

// Accesses at and around every range's edges, plus random ones.
std::vector<Access> Probes(const std::vector<RangeSpec>& map) {
  const uint32_t sizes[] = {0, 1, 2, 3, 4, 8, 0x1000, 0x10000};
  std::vector<Access> out;
  std::mt19937_64 rng(11);
  for (const RangeSpec& r : map) {
    const uint64_t max = r.bus == BusKind::kPio ? kPioMax : kMmioMax;
    const uint64_t last = r.base + (r.size - 1);
    const uint64_t edges[] = {r.base - 1, r.base,   r.base + 1, last - 1,
                              last,       last + 1, last - 3,   last - 7};
    for (uint64_t addr : edges) {
      addr &= max;  // wraps below 0 / above the top, as the bus would
      for (uint32_t size : sizes) {
        out.push_back({addr, size, r.bus, (rng() & 1) != 0});
      }
    }
  }
  for (int i = 0; i < 2000; ++i) {
    const BusKind bus = (rng() & 1) ? BusKind::kPio : BusKind::kMmio;
    uint64_t addr;
    if (bus == BusKind::kPio) {
      addr = rng() & kPioMax;
    } else {
      // Mostly near the registered MMIO ranges.
      addr =
          (rng() & 1) ? (uint64_t{1} << 32) + rng() % (64 * 0x100000) : rng();
    }
    out.push_back({addr, sizes[1 + rng() % 5], bus, (rng() & 1) != 0});
  }
  return out;
}

struct Tally {
  int ok = 0, not_found = 0, invalid = 0;
};

// Dispatches every probe on `engine` and checks it against the model.
template <typename Engine>
Tally CheckRouting(const Engine& engine, const std::vector<RangeSpec>& map,
                   const std::vector<Access>& probes) {
  Tally tally;
  std::vector<uint8_t> buf(0x10000 + 16, 0xaa);
  for (const Access& a : probes) {
    const Expected want = Model(map, a);
    ClearLastCall();
    buf[0] = 0xaa;
    const IoStatus got = Dispatch(engine, a, buf.data());
    SCOPED_TRACE(testing::Message()
                 << Engine::kName << " bus=" << int(a.bus) << " addr=0x"
                 << std::hex << a.addr << " size=0x" << a.size);
    EXPECT_EQ(got, want.status);
    const CallRecord& call = LastCall();
    if (want.status != IoStatus::kOk) {
      EXPECT_EQ(call.device, nullptr) << "a device was called";
      if (want.status == IoStatus::kDeviceNotFound) {
        ++tally.not_found;
      } else {
        ++tally.invalid;
      }
      continue;
    }
    ++tally.ok;
    EXPECT_EQ(call.device, static_cast<const void*>(want.device));
    EXPECT_EQ(call.bus, a.bus);
    EXPECT_EQ(call.write, a.write);
    EXPECT_EQ(call.base, want.base);
    EXPECT_EQ(call.offset, a.addr - want.base);
    EXPECT_EQ(call.size, a.size);
    if (!a.write) {
      EXPECT_EQ(buf[0], want.device->id());
    }
  }
  return tally;
}

TEST(BenchEngines, AllEnginesRouteLikeTheModel) {
  const std::vector<RangeSpec> map = TestMap();
  const std::vector<Access> probes = Probes(map);
  Engines engines;
  ASSERT_TRUE(engines.rcu.AddAll(map).ok());
  ASSERT_TRUE(engines.rwlock_map.AddAll(map).ok());
  ASSERT_TRUE(engines.mutex_map.AddAll(map).ok());
  ASSERT_TRUE(engines.unsynchronized.AddAll(map).ok());
  std::optional<Tally> first;
  engines.ForEach([&](auto& engine) {
    const Tally t = CheckRouting(engine, map, probes);
    // Every kind of outcome was exercised, and identically on each engine.
    EXPECT_GT(t.ok, 500);
    EXPECT_GT(t.not_found, 500);
    EXPECT_GT(t.invalid, 50);
    if (!first) first = t;
    EXPECT_EQ(t.ok, first->ok);
    EXPECT_EQ(t.not_found, first->not_found);
  });
  EXPECT_GT(probes.size(), 3000u);
}

TEST(BenchEngines, AllEnginesRouteLikeTheModelAfterChanges) {
  std::vector<RangeSpec> map = TestMap();
  Engines engines;
  engines.ForEach([&](auto& engine) {
    for (const RangeSpec& r : map) ASSERT_TRUE(engine.Add(r).ok());
  });
  // Remove every third range, by an address inside it (its last one).
  std::vector<RangeSpec> kept;
  for (size_t i = 0; i < map.size(); ++i) {
    if (i % 3 != 0) {
      kept.push_back(map[i]);
      continue;
    }
    const uint64_t last = map[i].base + (map[i].size - 1);
    engines.ForEach([&](auto& engine) {
      EXPECT_TRUE(engine.Remove(map[i].bus, last).ok()) << engine.kName;
      EXPECT_EQ(engine.Remove(map[i].bus, last).code(),
                absl::StatusCode::kNotFound)
          << engine.kName;
    });
  }
  const std::vector<Access> probes = Probes(map);  // probe the removed too
  engines.ForEach([&](auto& engine) {
    const Tally t = CheckRouting(engine, kept, probes);
    EXPECT_GT(t.ok, 300);
  });
}

TEST(BenchEngines, AllEnginesRefuseOverlaps) {
  const std::vector<RangeSpec> map = TestMap();
  Engines engines;
  auto dev = std::make_shared<SinkDevice>(99);
  const RangeSpec clashes[] = {
      {BusKind::kPio, 0x3f0, 9, dev},           // ends on 0x3f8
      {BusKind::kPio, 0x3ff, 1, dev},           // last address of a range
      {BusKind::kPio, 0xcfa, 4, dev},           // straddles two ranges
      {BusKind::kMmio, 0x1800, 1, dev},         // inside
      {BusKind::kMmio, 0x0, 0x100000000, dev},  // covers several
  };
  const RangeSpec fits[] = {
      {BusKind::kPio, 0x8, 0x3f0, dev},    // fills the gap exactly
      {BusKind::kMmio, 0x2001, 1, dev},    // adjacent above
      {BusKind::kMmio, 0x0, 0x1000, dev},  // adjacent below
  };
  engines.ForEach([&](auto& engine) {
    ASSERT_TRUE(engine.AddAll(map).ok());
    for (const RangeSpec& r : clashes) {
      EXPECT_EQ(engine.Add(r).code(), absl::StatusCode::kAlreadyExists)
          << engine.kName << " 0x" << std::hex << r.base;
    }
    for (const RangeSpec& r : fits) {
      EXPECT_TRUE(engine.Add(r).ok())
          << engine.kName << " 0x" << std::hex << r.base;
    }
  });
}

// rcu_locked (every range a LockedDevice of its own) routes as rcu does and
// calls the same work.
TEST(BenchEngines, RcuLockedRoutesLikeRcuWithALockPerRange) {
  const std::vector<RangeSpec> map = TestMap();
  const std::vector<Access> probes = Probes(map);
  RcuEngine rcu;
  RcuLockedEngine locked;
  ASSERT_TRUE(rcu.AddAll(map).ok());
  ASSERT_TRUE(locked.AddAll(map).ok());
  std::vector<uint8_t> a(0x10000 + 16), b(0x10000 + 16);
  int ok = 0;
  for (const Access& p : probes) {
    a[0] = b[0] = 0xaa;
    ClearLastCall();
    const IoStatus want = Dispatch(rcu, p, a.data());
    const CallRecord want_call = LastCall();
    ClearLastCall();
    const IoStatus got = Dispatch(locked, p, b.data());
    const CallRecord& got_call = LastCall();
    SCOPED_TRACE(testing::Message() << "addr=0x" << std::hex << p.addr);
    ASSERT_EQ(got, want);
    if (want != IoStatus::kOk) continue;
    ++ok;
    EXPECT_EQ(got_call.base, want_call.base);
    EXPECT_EQ(got_call.offset, want_call.offset);
    EXPECT_EQ(got_call.size, want_call.size);
    EXPECT_EQ(got_call.write, want_call.write);
    if (!p.write) EXPECT_EQ(b[0], a[0]);
  }
  EXPECT_GT(ok, 500);
  // 0xcf8 and 0xcfc share a SinkDevice; they get a lock (device) each.
  auto d1 = locked.manager().PioDevice(PioAddress(0xcf8));
  auto d2 = locked.manager().PioDevice(PioAddress(0xcfc));
  ASSERT_TRUE(d1.has_value() && d2.has_value());
  EXPECT_NE(d1->second.get(), d2->second.get());
}

// direct_index (the floor of any lookup) takes evenly spaced MMIO ranges
// only, and on those routes like the model: edges, gaps, accesses that run
// past a range, below the first and above the last range.
TEST(BenchEngines, DirectIndexRoutesEvenlySpacedRangesLikeTheModel) {
  for (uint64_t size : {uint64_t{1}, uint64_t{0x1000}, uint64_t{0x2000}}) {
    std::vector<RangeSpec> map;
    for (int i = 0; i < 64; ++i) {
      map.push_back({BusKind::kMmio, 0xc0000000 + uint64_t(i) * 0x2000, size,
                     std::make_shared<SinkDevice>(static_cast<uint8_t>(i))});
    }
    DirectIndexEngine engine;
    ASSERT_TRUE(engine.AddAll(map).ok());
    std::vector<Access> probes = Probes(map);
    probes.erase(
        std::remove_if(probes.begin(), probes.end(),
                       [](const Access& a) { return a.bus != BusKind::kMmio; }),
        probes.end());
    const Tally t = CheckRouting(engine, map, probes);
    EXPECT_GT(t.ok, 100) << size;
    EXPECT_GT(t.not_found, 100) << size;
    EXPECT_GT(t.invalid, 10) << size;
  }
  // One range: no stride yet.
  DirectIndexEngine one;
  const std::vector<RangeSpec> single = {
      {BusKind::kMmio, 0x1000, 0x100, std::make_shared<SinkDevice>(1)}};
  ASSERT_TRUE(one.AddAll(single).ok());
  const Tally t = CheckRouting(one, single, Probes(single));
  EXPECT_GT(t.ok, 10);
  EXPECT_GT(t.not_found, 10);
}

TEST(BenchEngines, DirectIndexRefusesMapsItCannotIndex) {
  auto dev = std::make_shared<SinkDevice>(1);
  const RangeSpec first = {BusKind::kMmio, 0x10000, 0x1000, dev};
  const std::vector<std::vector<RangeSpec>> bad = {
      {{BusKind::kPio, 0x3f8, 8, dev}},                 // PIO
      {first, {BusKind::kMmio, 0x13000, 0x1000, dev}},  // stride 0x3000
      {first, {BusKind::kMmio, 0x10800, 0x1000, dev}},  // overlaps
      {first, {BusKind::kMmio, 0x8000, 0x1000, dev}},   // below
      {first, {BusKind::kMmio, 0x12000, 0x800, dev}},   // other size
      {first,
       {BusKind::kMmio, 0x12000, 0x1000, dev},
       {BusKind::kMmio, 0x16000, 0x1000, dev}},             // skips one
      {{BusKind::kMmio, 0x1000, 0, dev}},                   // empty
      {{BusKind::kMmio, 0xfffffffffffff000, 0x2000, dev}},  // wraps
  };
  for (const auto& map : bad) {
    DirectIndexEngine engine;
    const absl::Status s = engine.AddAll(map);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("base 0x"), absl::string_view::npos) << s;
  }
  DirectIndexEngine engine;
  ASSERT_TRUE(engine.Add(first).ok());
  EXPECT_EQ(engine.Remove(BusKind::kMmio, 0x10000).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(engine.Add({BusKind::kMmio, 0x12000, 0x1000, nullptr}).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bench
}  // namespace vm_device
