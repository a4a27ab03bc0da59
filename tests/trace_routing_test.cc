// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Routes every access of a real guest's trace (tests/data/qemu-q35-linux61)
// through IoManager, with one recording device per device of the recorded
// map, and checks that each access reaches the device the trace names, at the
// base of the range holding it and the right offset, with its data.
//
// One kind of row cannot reach its device, by the crate's rules: an access
// that runs past the end of the range holding its first byte. The recorded
// map has 25,843 of them, all 4-byte accesses to PCI port 0xcf8: QEMU's flat
// view splits the 4-port pci-conf-idx region into [0xcf8], [0xcfa, 0xcfb]
// around lpc-reset-control at 0xcf9, and an IoManager range never spans two
// ranges. Those rows must answer kDeviceNotFound, like the '-' rows.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "tools/trace_format.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

using trace::Access;
using trace::BusKind;
using trace::DeviceMap;
using trace::Dispatch;
using trace::MapRange;

constexpr char kMapPath[] = "tests/data/qemu-q35-linux61/devices.tsv";
constexpr char kTracePath[] = "tests/data/qemu-q35-linux61/trace.tsv.gz";

// What the device saw of the last access made by the current thread.
struct Observation {
  int device = -1;
  BusKind bus = BusKind::kPio;
  bool write = false;
  uint64_t base = 0;
  uint64_t offset = 0;
  size_t size = 0;
  uint64_t data = 0;  // a write's bytes, little-endian
};

// Each replaying thread points this at its own Observation.
thread_local Observation* tls_observation = nullptr;

// The byte a device answers at position `i` of a read.
uint8_t ReadByte(int device, size_t i) {
  return static_cast<uint8_t>(0x5a ^ (device * 7) ^ (i * 31));
}

// A device on both buses that counts its accesses (atomically) and records
// the last one into the calling thread's Observation.
class RecordingDevice final : public DevicePio, public DeviceMmio {
 public:
  explicit RecordingDevice(int id) : id_(id) {}

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    Record(BusKind::kPio, false, base.value(), offset, data);
    Fill(data);
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const override {
    Record(BusKind::kPio, true, base.value(), offset, data);
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    Record(BusKind::kMmio, false, base.value(), offset, data);
    Fill(data);
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override {
    Record(BusKind::kMmio, true, base.value(), offset, data);
  }

  uint64_t calls() const { return calls_.load(std::memory_order_relaxed); }

 private:
  void Record(BusKind bus, bool write, uint64_t base, uint64_t offset,
              absl::Span<const uint8_t> data) const {
    // relaxed: a count, read after the replaying threads are joined.
    calls_.fetch_add(1, std::memory_order_relaxed);
    Observation* o = tls_observation;
    if (o == nullptr) return;
    o->device = id_;
    o->bus = bus;
    o->write = write;
    o->base = base;
    o->offset = offset;
    o->size = data.size();
    o->data = 0;
    if (write) {
      for (size_t i = 0; i < data.size() && i < 8; ++i) {
        o->data |= uint64_t{data[i]} << (8 * i);
      }
    }
  }

  void Fill(absl::Span<uint8_t> data) const {
    for (size_t i = 0; i < data.size(); ++i) data[i] = ReadByte(id_, i);
  }

  const int id_;
  mutable std::atomic<uint64_t> calls_{0};
};

// What the dispatch of one access should do, worked out from the map alone.
struct Expected {
  IoStatus status;
  uint64_t base;  // when kOk: `first` of the range holding addr
};

struct Replay {
  DeviceMap map;
  std::vector<Access> accesses;
  std::vector<Expected> expected;
  std::vector<uint64_t> expected_calls;  // per device
  IoManager manager;
  std::vector<std::shared_ptr<RecordingDevice>> devices;
};

// Loads the data once for the whole test binary; registers every device.
Replay& TheReplay() {
  static Replay* const replay = [] {
    auto* r = new Replay;
    absl::StatusOr<DeviceMap> map =
        trace::LoadDeviceMap(trace::ResolveDataPath(kMapPath));
    EXPECT_TRUE(map.ok()) << map.status();
    if (!map.ok()) return r;
    r->map = *std::move(map);
    absl::StatusOr<std::vector<Access>> accesses =
        trace::LoadTrace(trace::ResolveDataPath(kTracePath), r->map);
    EXPECT_TRUE(accesses.ok()) << accesses.status();
    if (!accesses.ok()) return r;
    r->accesses = *std::move(accesses);

    for (size_t i = 0; i < r->map.names.size(); ++i) {
      r->devices.push_back(
          std::make_shared<RecordingDevice>(static_cast<int>(i)));
    }
    std::map<std::string, int> index;
    for (size_t i = 0; i < r->map.names.size(); ++i) {
      index[r->map.names[i]] = static_cast<int>(i);
    }
    for (const MapRange& range : r->map.ranges) {
      const std::shared_ptr<RecordingDevice>& dev =
          r->devices[index.at(range.name)];
      const uint64_t size = range.last - range.first + 1;
      absl::Status s;
      if (range.bus == BusKind::kPio) {
        absl::StatusOr<PioRange> pr =
            PioRange::Create(PioAddress(static_cast<uint16_t>(range.first)),
                             static_cast<PioAddressOffset>(size));
        s = pr.ok() ? r->manager.RegisterPio(*pr, dev) : pr.status();
      } else {
        absl::StatusOr<MmioRange> mr =
            MmioRange::Create(MmioAddress(range.first), size);
        s = mr.ok() ? r->manager.RegisterMmio(*mr, dev) : mr.status();
      }
      EXPECT_TRUE(s.ok()) << "line " << range.line << ": " << s;
    }

    const trace::RangeLookup lookup(r->map);
    r->expected_calls.assign(r->map.names.size(), 0);
    r->expected.reserve(r->accesses.size());
    for (const Access& a : r->accesses) {
      Expected e{IoStatus::kDeviceNotFound, 0};
      if (a.device >= 0) {
        const MapRange* range = lookup.Find(a.bus, a.addr);
        // The loader checked that the named device owns the range.
        if (range != nullptr && a.addr + a.size - 1 <= range->last) {
          e = Expected{IoStatus::kOk, range->first};
          ++r->expected_calls[a.device];
        }
      }
      r->expected.push_back(e);
    }
    return r;
  }();
  return *replay;
}

// Problems found by one replaying thread: a count and the first few.
struct Failures {
  uint64_t count = 0;
  std::vector<std::string> first;
  void Add(size_t row, const Access& a, const std::string& what) {
    if (++count <= 10) {
      first.push_back(
          absl::StrFormat("row %d (vcpu %d, %s %s 0x%x size %d): %s", row,
                          a.vcpu, a.bus == BusKind::kPio ? "pio" : "mmio",
                          a.write ? "w" : "r", a.addr, a.size, what));
    }
  }
};

// Replays `rows` (indices into the trace) in order on this thread, checking
// each against its expected outcome.
Failures ReplayRows(const Replay& r, absl::Span<const size_t> rows) {
  VcpuThread rcu_reader;
  Observation obs;
  tls_observation = &obs;
  Failures f;
  uint8_t buf[8];
  for (const size_t i : rows) {
    const Access& a = r.accesses[i];
    const Expected& e = r.expected[i];
    obs = Observation{};
    const IoStatus s = Dispatch(r.manager, a, buf);
    if (s != e.status) {
      f.Add(i, a,
            absl::StrCat("status ", std::string(IoStatusName(s)), ", expected ",
                         std::string(IoStatusName(e.status))));
      continue;
    }
    if (s != IoStatus::kOk) {
      if (obs.device != -1) f.Add(i, a, "a device was called");
      continue;
    }
    if (obs.device != a.device) {
      f.Add(i, a,
            absl::StrCat("reached device ", obs.device, ", expected ", a.device,
                         " (", r.map.names[a.device], ")"));
      continue;
    }
    if (obs.bus != a.bus || obs.write != a.write || obs.size != a.size) {
      f.Add(i, a, "wrong bus, direction or size");
    }
    if (obs.base != e.base || obs.offset != a.addr - e.base) {
      f.Add(i, a,
            absl::StrFormat("base 0x%x offset 0x%x, expected 0x%x 0x%x",
                            obs.base, obs.offset, e.base, a.addr - e.base));
    }
    if (a.write) {
      const uint64_t mask =
          a.size == 8 ? ~uint64_t{0} : (uint64_t{1} << (8 * a.size)) - 1;
      if (obs.data != (a.value & mask)) f.Add(i, a, "write data differs");
    } else {
      for (size_t k = 0; k < a.size; ++k) {
        if (buf[k] != ReadByte(a.device, k)) {
          f.Add(i, a, "read data differs");
          break;
        }
      }
    }
  }
  tls_observation = nullptr;
  return f;
}

void ExpectNoFailures(const Failures& f) {
  EXPECT_EQ(f.count, 0u);
  for (const std::string& s : f.first) ADD_FAILURE() << s;
}

std::vector<uint64_t> Calls(const Replay& r) {
  std::vector<uint64_t> calls;
  for (const auto& d : r.devices) calls.push_back(d->calls());
  return calls;
}

TEST(TraceRouting, TraceHasTheRecordedMix) {
  const Replay& r = TheReplay();
  ASSERT_EQ(r.accesses.size(), 410519u);
  size_t mmio = 0;
  size_t no_device = 0;
  size_t spans_range_end = 0;
  for (size_t i = 0; i < r.accesses.size(); ++i) {
    const Access& a = r.accesses[i];
    if (a.bus == BusKind::kMmio) ++mmio;
    if (a.device < 0) ++no_device;
    if (a.device >= 0 && r.expected[i].status != IoStatus::kOk) {
      ++spans_range_end;
      EXPECT_EQ(a.addr, 0xcf8u);
      EXPECT_EQ(a.size, 4);
      EXPECT_EQ(r.map.names[a.device], "pci-conf-idx");
    }
  }
  EXPECT_EQ(mmio, 325504u);
  EXPECT_EQ(r.accesses.size() - mmio, 85015u);
  EXPECT_EQ(no_device, 3289u);
  EXPECT_EQ(spans_range_end, 25843u);
  EXPECT_EQ(r.map.ranges.size(), 74u);
}

TEST(TraceRouting, EveryAccessReachesTheNamedDeviceInOrder) {
  Replay& r = TheReplay();
  ASSERT_FALSE(r.accesses.empty());
  const std::vector<uint64_t> before = Calls(r);
  std::vector<size_t> rows(r.accesses.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = i;
  ExpectNoFailures(ReplayRows(r, rows));
  const std::vector<uint64_t> after = Calls(r);
  for (size_t d = 0; d < r.devices.size(); ++d) {
    EXPECT_EQ(after[d] - before[d], r.expected_calls[d]) << r.map.names[d];
  }
}

// The whole trace, one thread per vCPU value, each in trace order. Under
// --config=tsan this pass takes about 2 s on 2 cores (the whole binary about
// 7-9 s), so it is not thinned out under the sanitizers.
TEST(TraceRouting, EachVcpuOnItsOwnThreadReachesTheNamedDevices) {
  Replay& r = TheReplay();
  ASSERT_FALSE(r.accesses.empty());
  std::map<int32_t, std::vector<size_t>> by_vcpu;  // rows, in trace order
  for (size_t i = 0; i < r.accesses.size(); ++i) {
    by_vcpu[r.accesses[i].vcpu].push_back(i);
  }
  ASSERT_EQ(by_vcpu.size(), 5u);  // vCPUs 0..3 and -1 (devices)
  std::vector<uint64_t> expected_calls(r.devices.size(), 0);
  for (const auto& [vcpu, rows] : by_vcpu) {
    for (const size_t i : rows) {
      if (r.expected[i].status == IoStatus::kOk) {
        ++expected_calls[r.accesses[i].device];
      }
    }
  }

  const std::vector<uint64_t> before = Calls(r);
  std::vector<Failures> failures(by_vcpu.size());
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  const int n = static_cast<int>(by_vcpu.size());
  int t = 0;
  for (const auto& [vcpu, rows] : by_vcpu) {
    threads.emplace_back([&r, &rows = rows, &ready, n, out = &failures[t]] {
      // Start together so that the vCPUs really overlap.
      ready.fetch_add(1);
      while (ready.load() < n) std::this_thread::yield();
      *out = ReplayRows(r, rows);
    });
    ++t;
  }
  for (std::thread& th : threads) th.join();
  for (const Failures& f : failures) ExpectNoFailures(f);
  const std::vector<uint64_t> after = Calls(r);
  for (size_t d = 0; d < r.devices.size(); ++d) {
    EXPECT_EQ(after[d] - before[d], expected_calls[d]) << r.map.names[d];
  }
}

}  // namespace
}  // namespace vm_device
