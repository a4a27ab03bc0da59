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
// A trace that changes the map (map/unmap rows, tests/data/qemu-q35-hotplug)
// is replayed against a live IoManager while a writer thread applies the
// changes (tools/hotplug_replay.h), in one of two modes:
//
//   --mode=ordered (default)  every access after the changes before it and
//       before those after it; the accesses between two bursts of changes run
//       concurrently on all threads; each must reach exactly the device object
//       of the mapping holding its address at its row.
//   --mode=racing  the threads replay flat out while the writer applies the
//       bursts forward, then backward, ... until the threads are done; each
//       access must reach a device whose mapping held it at some moment of
//       the dispatch (publish stamps, as the stress test checks).
//   --commit=burst|change  one IoBatch commit per burst (default) or one
//       Register/Deregister call per change row.
//   --change_interval_us N  racing: the writer sleeps N us after each commit.
//
// Both print the lines above plus the writer's commits, the devices destroyed
// while one of their handlers ran and the devices leaked; racing mode adds the
// p50/p99 dispatch latency of the accesses that overlapped a commit. Example:
//
//   bazel run //tools:replay -- --mode=racing
//       --map tests/data/qemu-q35-hotplug/devices.tsv
//       --trace tests/data/qemu-q35-hotplug/trace.tsv.gz
//
// Exit status: 0 when every access went where expected; 1 when some access
// was misrouted or unexpectedly found no device (or, with changes, a writer
// call failed or a device was destroyed while running or leaked); 2 for bad
// input files (the loader's message names the file and line) or a bad flag
// value. (An unknown flag is absl's business: it exits 1.)

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
#include "tools/hotplug_replay.h"
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

ABSL_FLAG(std::string, mode, "ordered",
          "with map changes: 'ordered' (each access between the changes "
          "around it) or 'racing' (changes at the writer's pace)");
ABSL_FLAG(std::string, commit, "burst",
          "with map changes: 'burst' (one commit per burst of changes) or "
          "'change' (one call per change row)");
ABSL_FLAG(int64_t, change_interval_us, 0,
          "racing: the writer sleeps this many microseconds after each commit");

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

// Replays a trace with map changes (tools/hotplug_replay.h) and prints the
// result.
int ReplayChanges(const std::string& map_path, const std::string& trace_path,
                  const ChangeTrace& t, int threads_flag,
                  const HotplugReplayOptions& options) {
  const std::vector<std::vector<size_t>> rows =
      threads_flag == 0 ? RowsPerVcpu(t.accesses)
                        : RowsRoundRobin(t.accesses.size(), threads_flag);
  absl::StatusOr<HotplugReplayResult> r = ReplayWithChanges(t, rows, options);
  if (!r.ok()) {
    std::fprintf(stderr, "replay: %s: %s\n", map_path.c_str(),
                 std::string(r.status().message()).c_str());
    return kExitBadInput;
  }
  const bool racing = options.mode == ReplayMode::kRacing;
  const bool per_change = options.commit == CommitGranularity::kChange;
  absl::PrintF("map: %s (%d ranges, %d devices)\n", map_path, t.map_ranges,
               t.names.size());
  absl::PrintF("trace: %s (%d map/unmap rows in %d bursts)\n", trace_path,
               t.changes.size(), Bursts(t).size());
  absl::PrintF("mode: %s (%s)\n", racing ? "racing" : "ordered",
               per_change ? "one call per change" : "one commit per burst");
  absl::PrintF("threads: %d (%s)\n", rows.size(),
               threads_flag == 0 ? "one per vCPU" : "rows round-robin");
  absl::PrintF("accesses: %d\n", r->accesses);
  if (racing) {
    absl::PrintF(
        "routed to a device whose range held the address during the "
        "dispatch: %d\n",
        r->routed);
    absl::PrintF(
        "\"no device\", correctly (no range held the whole access "
        "throughout): %d\n",
        r->no_device);
  } else {
    absl::PrintF("routed to the named device: %d\n", r->routed);
    absl::PrintF(
        "\"no device\" expected: %d (%d '-' rows, %d running past their "
        "range's end)\n",
        r->no_device, r->no_device_dash, r->no_device_past_end);
  }
  absl::PrintF("\"no device\" unexpected: %d\n", r->unexpected);
  absl::PrintF("misrouted: %d\n", r->misrouted);
  absl::PrintF("writer: %d changes in %d commits%s, %d failed\n", r->changes,
               r->commits,
               racing ? absl::StrFormat(", %d complete passes", r->passes)
                      : std::string(),
               r->writer_errors);
  absl::PrintF("devices built: %d\n", r->devices_built);
  absl::PrintF("destroyed while running: %d\n", r->destroyed_while_running);
  absl::PrintF("handler on a destroyed device: %d\n",
               r->handler_on_dead_device);
  absl::PrintF("leaked: %d\n", r->leaked);
  absl::PrintF("ns per access: %.1f\n", r->ns_per_access);
  if (racing) {
    absl::PrintF(
        "latency of accesses overlapping a commit: %d accesses, p50 %.0f ns, "
        "p99 %.0f ns (all accesses: p50 %.0f ns, p99 %.0f ns)\n",
        r->overlapped, r->overlapped_p50_ns, r->overlapped_p99_ns,
        r->all_p50_ns, r->all_p99_ns);
  }
  for (const std::string& p : r->problems) {
    absl::FPrintF(stderr, "replay: %s\n", p);
  }
  return r->ok() ? 0 : kExitMismatch;
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
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const std::string commit = absl::GetFlag(FLAGS_commit);
  const int64_t interval_us = absl::GetFlag(FLAGS_change_interval_us);
  if (mode != "ordered" && mode != "racing") {
    std::fprintf(stderr,
                 "replay: --mode must be 'ordered' or 'racing', not '%s'\n",
                 mode.c_str());
    return kExitBadInput;
  }
  if (commit != "burst" && commit != "change") {
    std::fprintf(stderr,
                 "replay: --commit must be 'burst' or 'change', not '%s'\n",
                 commit.c_str());
    return kExitBadInput;
  }
  if (interval_us < 0 || interval_us > 1000000) {
    std::fprintf(stderr,
                 "replay: --change_interval_us must be 0..1000000, not %lld\n",
                 static_cast<long long>(interval_us));
    return kExitBadInput;
  }
  absl::StatusOr<ChangeTrace> change_trace = LoadChangeTrace(trace_path, *map);
  if (!change_trace.ok()) {
    std::fprintf(stderr, "replay: %s\n",
                 std::string(change_trace.status().message()).c_str());
    return kExitBadInput;
  }
  if (!change_trace->changes.empty() || mode == "racing") {
    HotplugReplayOptions options;
    options.mode =
        mode == "racing" ? ReplayMode::kRacing : ReplayMode::kOrdered;
    options.commit = commit == "change" ? CommitGranularity::kChange
                                        : CommitGranularity::kBurst;
    options.change_interval_us = interval_us;
    return ReplayChanges(map_path, trace_path, *change_trace, threads_flag,
                         options);
  }
  const std::vector<Access>* accesses = &change_trace->accesses;

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
      "  replay [--map DEVICES.tsv] [--trace TRACE.tsv.gz] [--threads N]\n"
      "         [--mode=ordered|racing] [--commit=burst|change]\n"
      "         [--change_interval_us N]");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "replay: unexpected argument '%s'\n", rest[1]);
    return 2;
  }
  return vm_device::trace::Main();
}
