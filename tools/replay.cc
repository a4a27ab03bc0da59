// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// replay: routes a recorded access trace through IoManager and says whether
// every access reached the device the trace names.
//
//   bazel run //tools:replay -- [--map DEVICES.tsv] [--trace TRACE.tsv.gz]
//                               [--threads N]
//
// Registers one recording device per device name of the map, on all of its
// ranges, then replays the trace: each vCPU's accesses on a thread of its own
// (in trace order), or, with --threads N, row i on thread i % N. With no
// flags it replays the recorded QEMU q35 trace of tests/data/.
//
// An access is expected to reach the device its row names, at the base of
// the map range holding its address, unless the row says `-` or the access
// runs past the end of that range (no IoManager range spans two): those are
// expected to find no device.
//
// Output: accesses; routed to the named device; "no device" expected;
// "no device" unexpected; misrouted (reached another device, another base or
// offset, or a device where none was expected); ns per access (wall time of
// the replay phase over all threads / accesses, checks included).
//
// Exit status: 0 when every access went where expected; 1 when some access
// was misrouted or unexpectedly found no device; 2 for bad input files (the
// loader's message names the file and line) or a bad --threads value. (An
// unknown flag is absl's business: it exits 1.)

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "tools/trace_format.h"
#include "vm_device/vm_device.h"

ABSL_FLAG(std::string, map, "tests/data/qemu-q35-linux61/devices.tsv",
          "device map (devices.tsv format); a workspace-relative path is "
          "also looked up in the runfiles and the workspace");
ABSL_FLAG(std::string, trace, "tests/data/qemu-q35-linux61/trace.tsv.gz",
          "access trace (trace.tsv format, plain or gzip'd)");
ABSL_FLAG(int, threads, 0,
          "replay threads, rows spread round-robin; 0: one thread per vCPU "
          "value of the trace, each replaying that vCPU's rows");

namespace vm_device::trace {
namespace {

constexpr int kExitMismatch = 1;
constexpr int kExitBadInput = 2;

// What the device saw of the current thread's last access.
struct Observation {
  int device = -1;
  uint64_t base = 0;
  uint64_t offset = 0;
};

thread_local Observation* tls_observation = nullptr;

// Records every access it gets into the calling thread's Observation.
class RecordingDevice final : public DevicePio, public DeviceMmio {
 public:
  explicit RecordingDevice(int id) : id_(id) {}

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    Record(base.value(), offset);
    std::fill(data.begin(), data.end(), uint8_t{0});
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t>) const override {
    Record(base.value(), offset);
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    Record(base.value(), offset);
    std::fill(data.begin(), data.end(), uint8_t{0});
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t>) const override {
    Record(base.value(), offset);
  }

 private:
  void Record(uint64_t base, uint64_t offset) const {
    if (Observation* o = tls_observation) *o = Observation{id_, base, offset};
  }

  const int id_;
};

// Where an access should go: a device and range base, or nowhere.
struct Expected {
  int32_t device;  // -1: no device
  uint64_t base;
};

struct Counts {
  uint64_t routed = 0;
  uint64_t no_device_expected = 0;
  uint64_t no_device_unexpected = 0;
  uint64_t misrouted = 0;
  std::vector<std::string> problems;  // the first few, for stderr

  void Problem(const Access& a, size_t row, const std::string& what) {
    if (problems.size() < 10) {
      problems.push_back(
          absl::StrFormat("row %d: vcpu %d %s %s 0x%x size %d: %s", row, a.vcpu,
                          a.bus == BusKind::kPio ? "pio" : "mmio",
                          a.write ? "w" : "r", a.addr, a.size, what));
    }
  }
};

void ReplayRows(const IoManager& manager, const DeviceMap& map,
                const std::vector<Access>& accesses,
                const std::vector<Expected>& expected,
                const std::vector<size_t>& rows, Counts* counts) {
  Observation obs;
  tls_observation = &obs;
  uint8_t buf[8];
  for (const size_t i : rows) {
    const Access& a = accesses[i];
    const Expected& e = expected[i];
    obs.device = -1;
    const IoStatus s = Dispatch(manager, a, buf);
    if (s != IoStatus::kOk) {
      if (e.device < 0) {
        ++counts->no_device_expected;
      } else {
        ++counts->no_device_unexpected;
        counts->Problem(a, i,
                        absl::StrCat(std::string(IoStatusName(s)),
                                     ", expected ", map.names[e.device]));
      }
    } else if (obs.device == e.device && obs.base == e.base &&
               obs.offset == a.addr - e.base) {
      ++counts->routed;
    } else {
      ++counts->misrouted;
      counts->Problem(
          a, i,
          absl::StrFormat("reached %s (base 0x%x, offset 0x%x), expected %s",
                          obs.device < 0 ? "nothing" : map.names[obs.device],
                          obs.base, obs.offset,
                          e.device < 0
                              ? std::string("no device")
                              : absl::StrFormat("%s at base 0x%x",
                                                map.names[e.device], e.base)));
    }
  }
  tls_observation = nullptr;
}

absl::Status Register(IoManager& manager, const DeviceMap& map) {
  std::map<std::string, std::shared_ptr<RecordingDevice>> devices;
  for (size_t i = 0; i < map.names.size(); ++i) {
    devices[map.names[i]] =
        std::make_shared<RecordingDevice>(static_cast<int>(i));
  }
  for (const MapRange& r : map.ranges) {
    const std::shared_ptr<RecordingDevice>& dev = devices.at(r.name);
    // `last - first + 1` cannot be 0 here: a range of the whole MMIO space
    // fails below (BusRange cannot hold it), as it should.
    const uint64_t size = r.last - r.first + 1;
    absl::Status s;
    if (r.bus == BusKind::kPio) {
      absl::StatusOr<PioRange> range =
          PioRange::Create(PioAddress(static_cast<uint16_t>(r.first)),
                           static_cast<PioAddressOffset>(size));
      s = range.ok() ? manager.RegisterPio(*range, dev) : range.status();
    } else {
      absl::StatusOr<MmioRange> range =
          MmioRange::Create(MmioAddress(r.first), size);
      s = range.ok() ? manager.RegisterMmio(*range, dev) : range.status();
    }
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("range of line ", r.line, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

int Main() {
  const std::string map_path = ResolveDataPath(absl::GetFlag(FLAGS_map));
  const std::string trace_path = ResolveDataPath(absl::GetFlag(FLAGS_trace));
  const int threads_flag = absl::GetFlag(FLAGS_threads);
  if (threads_flag < 0 || threads_flag > 1024) {
    std::fprintf(stderr, "replay: --threads must be 0..1024, not %d\n",
                 threads_flag);
    return kExitBadInput;
  }

  absl::StatusOr<DeviceMap> map = LoadDeviceMap(map_path);
  if (!map.ok()) {
    std::fprintf(stderr, "replay: %s\n",
                 std::string(map.status().message()).c_str());
    return kExitBadInput;
  }
  absl::StatusOr<std::vector<Access>> accesses = LoadTrace(trace_path, *map);
  if (!accesses.ok()) {
    std::fprintf(stderr, "replay: %s\n",
                 std::string(accesses.status().message()).c_str());
    return kExitBadInput;
  }

  IoManager manager;
  if (absl::Status s = Register(manager, *map); !s.ok()) {
    std::fprintf(stderr, "replay: %s: %s\n", map_path.c_str(),
                 std::string(s.message()).c_str());
    return kExitBadInput;
  }

  // Expected outcomes, from the map alone.
  const RangeLookup lookup(*map);
  std::vector<Expected> expected;
  expected.reserve(accesses->size());
  uint64_t dash_rows = 0;
  uint64_t past_range_end = 0;
  for (const Access& a : *accesses) {
    Expected e{-1, 0};
    if (a.device < 0) {
      ++dash_rows;
    } else if (const MapRange* r = lookup.Find(a.bus, a.addr);
               r != nullptr && a.addr + a.size - 1 <= r->last) {
      e = Expected{a.device, r->first};
    } else {
      ++past_range_end;
    }
    expected.push_back(e);
  }

  // Rows per thread.
  std::vector<std::vector<size_t>> rows;
  std::string how;
  if (threads_flag == 0) {
    std::map<int32_t, size_t> thread_of_vcpu;
    for (const Access& a : *accesses) thread_of_vcpu.emplace(a.vcpu, 0);
    for (auto& entry : thread_of_vcpu) {
      entry.second = rows.size();
      rows.emplace_back();
    }
    for (size_t i = 0; i < accesses->size(); ++i) {
      rows[thread_of_vcpu[(*accesses)[i].vcpu]].push_back(i);
    }
    how = "one per vCPU";
  } else {
    rows.resize(threads_flag);
    for (size_t i = 0; i < accesses->size(); ++i) {
      rows[i % threads_flag].push_back(i);
    }
    how = "rows round-robin";
  }

  // Replay: every thread registers with RCU, then all start together.
  std::vector<Counts> counts(rows.size());
  std::atomic<size_t> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < rows.size(); ++t) {
    threads.emplace_back([&, t] {
      VcpuThread rcu_reader;
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      ReplayRows(manager, *map, *accesses, expected, rows[t], &counts[t]);
    });
  }
  while (ready.load() < threads.size()) std::this_thread::yield();
  const auto start = std::chrono::steady_clock::now();
  go.store(true);
  for (std::thread& th : threads) th.join();
  const auto stop = std::chrono::steady_clock::now();

  Counts total;
  for (const Counts& c : counts) {
    total.routed += c.routed;
    total.no_device_expected += c.no_device_expected;
    total.no_device_unexpected += c.no_device_unexpected;
    total.misrouted += c.misrouted;
    for (const std::string& p : c.problems) {
      if (total.problems.size() < 10) total.problems.push_back(p);
    }
  }
  const double ns =
      std::chrono::duration<double, std::nano>(stop - start).count();
  const size_t n = accesses->size();

  absl::PrintF("map: %s (%d ranges, %d devices)\n", map_path,
               map->ranges.size(), map->names.size());
  absl::PrintF("trace: %s\n", trace_path);
  absl::PrintF("threads: %d (%s)\n", rows.size(), how);
  absl::PrintF("accesses: %d\n", n);
  absl::PrintF("routed to the named device: %d\n", total.routed);
  absl::PrintF(
      "\"no device\" expected: %d (%d '-' rows, %d running past their "
      "range's end)\n",
      total.no_device_expected, dash_rows, past_range_end);
  absl::PrintF("\"no device\" unexpected: %d\n", total.no_device_unexpected);
  absl::PrintF("misrouted: %d\n", total.misrouted);
  absl::PrintF("ns per access: %.1f\n", n == 0 ? 0.0 : ns / n);
  for (const std::string& p : total.problems) {
    absl::FPrintF(stderr, "replay: %s\n", p);
  }
  return total.misrouted == 0 && total.no_device_unexpected == 0
             ? 0
             : kExitMismatch;
}

}  // namespace
}  // namespace vm_device::trace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Replays a recorded device-access trace through vm_device::IoManager.\n"
      "  replay [--map DEVICES.tsv] [--trace TRACE.tsv.gz] [--threads N]");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "replay: unexpected argument '%s'\n", rest[1]);
    return 2;
  }
  return vm_device::trace::Main();
}
