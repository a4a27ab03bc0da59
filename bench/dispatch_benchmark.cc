// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// //bench:dispatch: how long one dispatch takes from N vCPU threads, for this
// library's IoManager and for the designs other VMMs ship.
//
//   bazel run //bench:dispatch
//   bazel run //bench:dispatch -- --benchmark_filter=uniform
//       --benchmark_out=/tmp/dispatch.json --benchmark_out_format=json
//   bazel run //tools:plot_dispatch -- /tmp/dispatch.json /tmp/dispatch.png
//
// Benchmarks (names read as a table):
//
//   BM_Dispatch/<engine>/<workload>/ranges:<n>/threads:<t>
//     engine:   rcu, rwlock_map, mutex_map, unsynchronized (bench/engines.h);
//               direct_index (uniform and cold, 1 and 2 threads): no
//               search, the floor of any lookup (DirectIndexEngine)
//     workload: uniform     n MMIO ranges of 4 KiB; each thread replays its
//                           own stream of 4-byte reads and writes at addresses
//                           uniform over the ranges, generated before timing
//                           (seeded by the thread index).
//               churn       uniform, plus one writer thread registering and
//                           deregistering a spare range flat out, all run long.
//               churn_1khz  the same at 1,000 changes per second.
//               trace       the real map and accesses of
//                           tests/data/qemu-q35-linux61, one thread per vCPU.
//                           Counter hint_hit_rate (rcu, unsynchronized): the
//                           share of the accesses a dispatch hint answered,
//                           from replaying each vCPU's stream through the
//                           dispatch's own hinted search, untimed.
//               trace_nohints  the same with dispatch hints turned off
//                           (IoManager::SetDispatchHints(false)); rcu and
//                           unsynchronized only.
//               cold        uniform, but before each dispatch the thread
//                           reads one word of every cache line of a 2 MiB
//                           buffer (twice this machine's L2), so the table
//                           and the handler's code are pushed out of L1/L2
//                           like after a stretch of guest execution. Each
//                           dispatch is timed alone (clock pair subtracted);
//                           ns_per_dispatch is the median, p99_ns the tail.
//                           Fixed iterations (3000 per thread); rcu and
//                           unsynchronized, 1 and 2 threads.
//               edge        uniform, with every snapshot placed so that it
//                           ends at a page boundary followed by 4 MiB of
//                           mapped, never-touched memory
//                           (SetSnapshotAllocatorForTesting): any prefetch
//                           or load past the snapshot pays a failed page walk
//                           here on every run, not by the chance of where
//                           malloc put it. rcu and unsynchronized, 1 thread.
//   BM_Publish/rcu/ranges:<n>
//     one change (registering, then deregistering, a spare range) on a
//     manager holding n ranges; time per change (us_per_change: the mean;
//     p50_us: the median, which a preempted change on a loaded machine does
//     not move).
//               trace_hotplug  the accesses of tests/data/qemu-q35-hotplug,
//                           one thread per vCPU, while a writer replays its
//                           recorded map changes (BAR sizing, PCIe hotplug)
//                           flat out, one Add/Remove call per change: forward
//                           through the bursts, then backward, and so on
//                           (rcu, rwlock_map, mutex_map; n = the start map).
//               trace_hotplug_1khz  the same at 1,000 changes per second.
//     engine rcu_locked: rcu with every range's device a LockedDevice of its
//                    own (uniform, trace and own_device workloads only).
//               own_device  uniform, but the ranges are dealt out to the
//                           threads: with S = the largest thread count run
//                           (the cores, at most 16), thread i touches only
//                           the ranges r with r % S == i, at any thread count.
//                           Each thread works on devices no other thread
//                           touches, as vCPUs driving devices of their own
//                           (per-vCPU timers, per-queue notify pages), and its
//                           working set is the same at 1 thread as at S.
//                           rcu and rcu_locked; ranges 16, 256, 4096;
//                           threads up to S.
//   BM_Sharded/<one_lock|sharded>/shards:4/threads:<t>
//     one device with 4 register banks (bench/engines.h BankedMutDevice)
//     behind a LockedDevice (one_lock) or a ShardedDevice (sharded, a lock
//     per bank), in an IoManager; thread i writes 4-byte registers of bank
//     i % 4 only. t = 1, 2, 4.
//   BM_Sharded/<one_lock|sharded>/same_shard/threads:<t>
//     the same, every thread writing bank 0.
//   BM_Register/rcu/<one_by_one|batch>/ranges:<n>
//     registering n ranges into an empty IoManager, one call per range or as
//     one IoBatch (IoManager::Commit), in ascending address order.
//   BM_Register/rcu/<one_by_one|batch>_<descending|random>/ranges:<n>
//     the same ranges in descending address order (each insertion moves
//     every range registered so far: the worst case) or in a random order
//     (fixed seed).
//   BM_Feature/<plain|with_info|ruled>/threads:<t>
//   BM_Doorbell/<doorbell|device_eventfd|null_device>/threads:<t>
//     the opt-in features (access info, access rules, eventfd doorbells);
//     see bench/features_benchmark.cc.
//
// Counters:
//   ns_per_dispatch  wall time per dispatch as one thread sees it: each thread
//                    times its own run (from the start of its first dispatch
//                    to the end of its last sampled one, divided by the
//                    dispatches in between); the counter is the mean over the
//                    threads. With more threads than cores it includes the time
//                    a thread waits for a core.
//   items_per_second dispatches per second, all threads together.
//   p50_ns, p99_ns   sampled latency: every 64th dispatch is timed with a pair
//                    of steady_clock reads; the cost of an empty pair
//                    (calibrated at start-up, printed) is subtracted. Samples
//                    of all threads are merged.
//   cpu_share        the share of its timed loop's wall time each thread
//                    spent on a CPU (thread CPU time / wall time, mean over
//                    the threads): below 1 when threads outnumber free CPUs,
//                    or a churn writer takes CPU time from the readers.
//   writer_changes   churn: registrations plus deregistrations the writer made
//                    while the readers ran; changes_per_s is that per second.
//   ns_per_range, bytes_per_range (BM_Register): time per registered range,
//                    and IoManagerStats::snapshot_bytes / n.
//
// Google Benchmark 1.7.1 appends "/real_time" (or "/manual_time") before
// "/threads:<t>" in its own names; the reports of this binary drop it, so the
// console, JSON and CSV show the names above. --benchmark_filter still matches
// the library's names: filter on "rcu/uniform/ranges:16/" rather than on
// "ranges:16/threads:2".
//
// tools/bench_spread.sh runs this binary N times in fresh processes and
// prints per-cell min/max and the targets of issue 9 per run.
//
// Defaults: --benchmark_min_time=0.05 (any flag given overrides it), every
// benchmark; about 35 s on 2 cores. The run ends with a summary.
// Order: the cells of each ratio run next to each other (uniform by thread
// count, then range count, then engine; see RegisterAll()).
// --pin_threads=true|false (default true): benchmark thread i runs its timed
// loop pinned to the (i mod n)-th CPU of the process's CPU set, so the cells
// of a ratio run on the same CPUs (see ScopedCpuPin); false leaves placement
// to the scheduler.

#include <sched.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "bench/engines.h"
#include "benchmark/benchmark.h"
#include "src/internal/range_table.h"
#include "tools/trace_format.h"
#include "vm_device/io_manager.h"
#include "vm_device/locked_device.h"
#include "vm_device/sharded_device.h"

namespace vm_device {
namespace bench {
namespace {

using Clock = std::chrono::steady_clock;

// The engines that have dispatch hints (rcu, unsynchronized).
template <typename Engine>
concept HasHints = requires(Engine& e) {
  e.SetDispatchHints(false);
};

double TraceHintHitRate();
std::string DispatchName(absl::string_view engine, absl::string_view workload,
                         int ranges);

constexpr size_t kStreamLength = size_t{1} << 14;  // accesses per thread
constexpr uint64_t kSampleMask = 63;               // time every 64th
constexpr uint64_t kMmioBase = 0xc0000000;
constexpr uint64_t kRangeSize = 0x1000;
constexpr uint64_t kRangeStride = 0x2000;  // ranges with gaps between them

const int kRangeCounts[] = {1, 16, 256, 4096, 65536};
const int kChurnRangeCounts[] = {16, 4096};

// The cost of an empty pair of steady_clock reads, subtracted from samples.
double clock_pair_ns = 0;

double CalibrateClockPair() {
  std::vector<int64_t> d(20000);
  for (auto& x : d) {
    const auto t0 = Clock::now();
    const auto t1 = Clock::now();
    x = std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
  }
  std::nth_element(d.begin(), d.begin() + d.size() / 2, d.end());
  return static_cast<double>(d[d.size() / 2]);
}

// ---------------------------------------------------------------------------
// Workload data, built on first use and kept (shared by every engine).
// ---------------------------------------------------------------------------

std::vector<RangeSpec> UniformMap(int n) {
  std::vector<RangeSpec> map;
  map.reserve(n);
  for (int i = 0; i < n; ++i) {
    map.push_back({BusKind::kMmio, kMmioBase + uint64_t(i) * kRangeStride,
                   kRangeSize,
                   std::make_shared<SinkDevice>(static_cast<uint8_t>(i))});
  }
  return map;
}

// The range the churn writer adds and removes: above all the others.
RangeSpec SpareRange(int n) {
  static const auto* device =
      new std::shared_ptr<SinkDevice>(std::make_shared<SinkDevice>(0xee));
  return {BusKind::kMmio, kMmioBase + uint64_t(n + 16) * kRangeStride,
          kRangeSize, *device};
}

std::vector<Access> UniformStream(int n, int thread) {
  std::mt19937_64 rng(0x5eed0000u + static_cast<uint64_t>(thread));
  std::vector<Access> s(kStreamLength);
  for (Access& a : s) {
    const uint64_t range = rng() % static_cast<uint64_t>(n);
    const uint64_t offset = (rng() % (kRangeSize / 4)) * 4;
    a = {kMmioBase + range * kRangeStride + offset, 4, BusKind::kMmio,
         (rng() & 1) != 0};
  }
  return s;
}

const std::vector<RangeSpec>& CachedMap(int n) {
  static absl::Mutex mu;
  static auto* cache = new std::map<int, std::vector<RangeSpec>>;
  absl::MutexLock lock(&mu);
  auto it = cache->find(n);
  if (it == cache->end()) it = cache->emplace(n, UniformMap(n)).first;
  return it->second;
}

// The stream `make(n, thread)`, built on first use and kept; one cache per
// generator.
const std::vector<Access>& CachedStream(
    int n, int thread, std::vector<Access> (*make)(int n, int thread)) {
  static absl::Mutex mu;
  static auto* cache =
      new std::map<std::tuple<void*, int, int>,
                   std::unique_ptr<std::vector<Access>>>;
  absl::MutexLock lock(&mu);
  auto& slot = (*cache)[{reinterpret_cast<void*>(make), n, thread}];
  if (slot == nullptr) {
    slot = std::make_unique<std::vector<Access>>(make(n, thread));
  }
  return *slot;
}

const std::vector<Access>& CachedStream(int n, int thread) {
  return CachedStream(n, thread, UniformStream);
}

// One engine of each type per range count, never destroyed.
template <typename Engine>
Engine& CachedEngine(int n) {
  static absl::Mutex mu;
  static auto* cache = new std::map<int, Engine*>;
  absl::MutexLock lock(&mu);
  Engine*& e = (*cache)[n];
  if (e == nullptr) {
    e = new Engine;
    const absl::Status s = e->AddAll(CachedMap(n));
    if (!s.ok()) {
      std::fprintf(stderr, "building %s: %s\n",
                   std::string(Engine::kName).c_str(), s.ToString().c_str());
      std::abort();
    }
  }
  return *e;
}

// The recorded workload: the device map (one SinkDevice per device name) and
// each vCPU's accesses in the guest's order. Accesses made by devices
// (vcpu -1, MSI writes) are folded into vCPU 0's stream, in trace order.
struct TraceWorkload {
  std::vector<RangeSpec> map;
  std::vector<std::vector<Access>> streams;  // [vcpu]
  size_t accesses = 0;
};

const char kTraceMap[] = "tests/data/qemu-q35-linux61/devices.tsv";
const char kTraceFile[] = "tests/data/qemu-q35-linux61/trace.tsv.gz";

absl::StatusOr<TraceWorkload> LoadTraceWorkload() {
  namespace trace = vm_device::trace;
  absl::StatusOr<trace::DeviceMap> map =
      trace::LoadDeviceMap(trace::ResolveDataPath(kTraceMap));
  if (!map.ok()) return map.status();
  absl::StatusOr<std::vector<trace::Access>> accesses =
      trace::LoadTrace(trace::ResolveDataPath(kTraceFile), *map);
  if (!accesses.ok()) return accesses.status();
  TraceWorkload w;
  std::vector<std::shared_ptr<SinkDevice>> devices;
  for (size_t i = 0; i < map->names.size(); ++i) {
    devices.push_back(std::make_shared<SinkDevice>(static_cast<uint8_t>(i)));
  }
  for (const trace::MapRange& r : map->ranges) {
    auto name = std::find(map->names.begin(), map->names.end(), r.name);
    w.map.push_back(
        {r.bus == trace::BusKind::kPio ? BusKind::kPio : BusKind::kMmio,
         r.first, r.last - r.first + 1,
         devices[static_cast<size_t>(name - map->names.begin())]});
  }
  for (const trace::Access& a : *accesses) {
    const size_t vcpu = a.vcpu < 0 ? 0 : static_cast<size_t>(a.vcpu);
    if (w.streams.size() <= vcpu) w.streams.resize(vcpu + 1);
    w.streams[vcpu].push_back(
        {a.addr, a.size,
         a.bus == trace::BusKind::kPio ? BusKind::kPio : BusKind::kMmio,
         a.write});
    ++w.accesses;
  }
  return w;
}

// Loaded once, at registration; null when the data could not be read.
const TraceWorkload* trace_workload = nullptr;

template <typename Engine>
Engine& CachedTraceEngine() {
  static Engine* e = [] {
    auto* engine = new Engine;
    const absl::Status s = engine->AddAll(trace_workload->map);
    if (!s.ok()) {
      std::fprintf(stderr, "building %s for the trace: %s\n",
                   std::string(Engine::kName).c_str(), s.ToString().c_str());
      std::abort();
    }
    return engine;
  }();
  return *e;
}

// ---------------------------------------------------------------------------
// The measured loop, and merging the threads' results.
// ---------------------------------------------------------------------------

// What the threads of one run hand to thread 0 after their timed loop.
class RunResults {
 public:
  // Thread 0, before the timed loop (no other thread touches this then: they
  // only Add() after the loop's end barrier).
  void Reset(int threads) {
    absl::MutexLock lock(&mu_);
    expected_ = threads;
    arrived_ = 0;
    ns_per_dispatch_sum_ = 0;
    cpu_share_sum_ = 0;
    samples_.clear();
  }

  // One thread's result: its ns per dispatch, its sampled latencies, and the
  // share of its timed loop's wall time it spent on a CPU.
  void Add(double ns_per_dispatch, absl::Span<const float> samples,
           double cpu_share) {
    absl::MutexLock lock(&mu_);
    ++arrived_;
    ns_per_dispatch_sum_ += ns_per_dispatch;
    cpu_share_sum_ += cpu_share;
    samples_.insert(samples_.end(), samples.begin(), samples.end());
  }

  // Thread 0: waits for every thread to Add(), then sets the counters. Only
  // thread 0 sets them, so Google Benchmark's sum over threads is this value.
  void Publish(benchmark::State& state) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &RunResults::AllArrived));
    state.counters["ns_per_dispatch"] = ns_per_dispatch_sum_ / expected_;
    state.counters["cpu_share"] = cpu_share_sum_ / expected_;
    if (!samples_.empty()) {
      state.counters["p50_ns"] = Percentile(0.50);
      state.counters["p99_ns"] = Percentile(0.99);
    }
  }

 private:
  bool AllArrived() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return arrived_ >= expected_;
  }
  double Percentile(double q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const size_t k =
        std::min(samples_.size() - 1, static_cast<size_t>(q * samples_.size()));
    std::nth_element(samples_.begin(), samples_.begin() + k, samples_.end());
    return samples_[k];
  }

  absl::Mutex mu_;
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
  double ns_per_dispatch_sum_ ABSL_GUARDED_BY(mu_) = 0;
  double cpu_share_sum_ ABSL_GUARDED_BY(mu_) = 0;
  int expected_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<float> samples_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------
// Benchmark threads on fixed CPUs.
// ---------------------------------------------------------------------------
//
// The two vCPUs of a shared VM are often not equally fast (the host's load on
// each; README "Steady dispatch"), and the scheduler moves the main thread
// between them from one benchmark to the next, so the two cells of a ratio
// (rcu and unsynchronized at 1 thread, say) could run on different vCPUs.
// With --pin_threads=true (the default) benchmark thread i runs its timed
// loop pinned to the (i mod n)-th CPU the process may use, so every cell of a
// run puts thread 0 on the same CPU, and thread i never migrates. The pin is
// taken just before the timed loop and dropped after it: threads started
// outside the loops (churn and hotplug writers, the library's reclaimer)
// inherit the process's whole CPU set, as without pinning.

bool pin_threads = true;
cpu_set_t process_cpus;  // the CPU set at start-up; read-only after Main()
std::vector<int> process_cpu_list;

class ScopedCpuPin {
 public:
  explicit ScopedCpuPin(int thread_index) {
    if (!pin_threads || process_cpu_list.empty()) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(process_cpu_list[static_cast<size_t>(thread_index) %
                             process_cpu_list.size()],
            &one);
    pinned_ = sched_setaffinity(0, sizeof(one), &one) == 0;
  }
  ~ScopedCpuPin() {
    if (pinned_) sched_setaffinity(0, sizeof(process_cpus), &process_cpus);
  }
  ScopedCpuPin(const ScopedCpuPin&) = delete;
  ScopedCpuPin& operator=(const ScopedCpuPin&) = delete;

 private:
  bool pinned_ = false;
};

// Runs `state`'s iterations over `stream` (cycled) on `engine` and hands the
// thread's timings to `results`.
// The calling thread's CPU time, in ns.
double ThreadCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

template <typename Engine>
void DispatchLoop(benchmark::State& state, const Engine& engine,
                  absl::Span<const Access> stream, RunResults& results) {
  const ScopedCpuPin pin(state.thread_index());
  std::vector<float> samples;
  samples.reserve(static_cast<size_t>(state.max_iterations / 64 + 2));
  alignas(64) uint8_t buf[64] = {1};
  const size_t n = stream.size();
  size_t pos = 0;
  uint64_t i = 0;
  uint64_t last_sampled = 0;
  Clock::time_point first, last_end;
  const double cpu_start = ThreadCpuNs();
  const auto wall_start = Clock::now();
  for (auto _ : state) {
    const Access& a = stream[pos];
    if (++pos == n) pos = 0;
    if ((i & kSampleMask) == 0) {
      const auto t0 = Clock::now();
      IoStatus s = Dispatch(engine, a, buf);
      const auto t1 = Clock::now();
      benchmark::DoNotOptimize(s);
      if (i == 0) first = t0;
      last_end = t1;
      last_sampled = i;
      const double ns =
          std::chrono::duration<double, std::nano>(t1 - t0).count();
      samples.push_back(static_cast<float>(std::max(0.0, ns - clock_pair_ns)));
    } else {
      IoStatus s = Dispatch(engine, a, buf);
      benchmark::DoNotOptimize(s);
    }
    ++i;
  }
  const double cpu_ns = ThreadCpuNs() - cpu_start;
  const double loop_ns =
      std::chrono::duration<double, std::nano>(Clock::now() - wall_start)
          .count();
  state.SetItemsProcessed(state.iterations());
  const double wall =
      std::chrono::duration<double, std::nano>(last_end - first).count();
  results.Add(wall / static_cast<double>(last_sampled + 1), samples,
              loop_ns > 0 ? std::min(1.0, cpu_ns / loop_ns) : 1.0);
}

// ---------------------------------------------------------------------------
// The churn writer.
// ---------------------------------------------------------------------------

template <typename Engine>
class ChurnWriter {
 public:
  // changes_per_s == 0: flat out.
  ChurnWriter(Engine& engine, RangeSpec spare, int changes_per_s)
      : engine_(engine), spare_(std::move(spare)), rate_(changes_per_s) {
    start_ = Clock::now();
    thread_ = std::thread([this] { Run(); });
  }

  // Stops and joins the writer; returns {changes, seconds}.
  std::pair<uint64_t, double> Stop() {
    stop_.store(true, std::memory_order_relaxed);
    thread_.join();
    const double s =
        std::chrono::duration<double>(Clock::now() - start_).count();
    return {changes_, s};
  }

 private:
  void Run() {
    auto next = Clock::now();
    const auto period = rate_ > 0 ? std::chrono::nanoseconds(1000000000 / rate_)
                                  : std::chrono::nanoseconds(0);
    bool added = false;
    while (!stop_.load(std::memory_order_relaxed)) {
      const absl::Status s =
          added ? engine_.Remove(spare_.bus, spare_.base) : engine_.Add(spare_);
      if (!s.ok()) {
        std::fprintf(stderr, "churn writer: %s\n", s.ToString().c_str());
        std::abort();
      }
      added = !added;
      ++changes_;
      if (rate_ > 0) {
        next += period;
        std::this_thread::sleep_until(next);
      }
    }
    // Leave the engine as it was.
    if (added && !engine_.Remove(spare_.bus, spare_.base).ok()) std::abort();
  }

  Engine& engine_;
  const RangeSpec spare_;
  const int rate_;
  Clock::time_point start_;
  std::atomic<bool> stop_{false};
  uint64_t changes_ = 0;  // written by the writer, read after join
  std::thread thread_;
};

// ---------------------------------------------------------------------------
// Benchmark bodies.
// ---------------------------------------------------------------------------

template <typename Engine>
void BM_Uniform(benchmark::State& state, int ranges, RunResults* results) {
  const Engine& engine = CachedEngine<Engine>(ranges);
  const std::vector<Access>& stream =
      CachedStream(ranges, state.thread_index());
  if (state.thread_index() == 0) results->Reset(state.threads());
  DispatchLoop(state, engine, stream, *results);
  if (state.thread_index() == 0) results->Publish(state);
}

std::vector<int> ThreadCounts();

// The own_device workload (see the file comment): the thread counts it runs
// at; the largest is also the number of shares the ranges are dealt into.
std::vector<int> OwnDeviceThreadCounts() {
  const int cores =
      static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> t;
  for (int x : ThreadCounts()) {
    if (x <= std::min(cores, 16)) t.push_back(x);
  }
  if (t.size() < 2) t.push_back(2);  // a one-core machine still runs 2
  return t;
}
int OwnDeviceShares() { return OwnDeviceThreadCounts().back(); }
const int kOwnDeviceRangeCounts[] = {16, 256, 4096};

// Thread `thread`'s accesses: 4-byte reads and writes uniform over the
// ranges r < n with r % OwnDeviceShares() == thread.
std::vector<Access> OwnDeviceStream(int n, int thread) {
  const uint64_t shares = static_cast<uint64_t>(OwnDeviceShares());
  const uint64_t mine =
      (static_cast<uint64_t>(n) - static_cast<uint64_t>(thread) + shares - 1) /
      shares;
  std::mt19937_64 rng(0x0d0e0000u + static_cast<uint64_t>(thread));
  std::vector<Access> s(kStreamLength);
  for (Access& a : s) {
    const uint64_t range =
        static_cast<uint64_t>(thread) + shares * (rng() % mine);
    const uint64_t offset = (rng() % (kRangeSize / 4)) * 4;
    a = {kMmioBase + range * kRangeStride + offset, 4, BusKind::kMmio,
         (rng() & 1) != 0};
  }
  return s;
}

const std::vector<Access>& CachedOwnDeviceStream(int n, int thread) {
  return CachedStream(n, thread, OwnDeviceStream);
}

template <typename Engine>
void BM_OwnDevice(benchmark::State& state, int ranges, RunResults* results) {
  const Engine& engine = CachedEngine<Engine>(ranges);
  const std::vector<Access>& stream =
      CachedOwnDeviceStream(ranges, state.thread_index());
  if (state.thread_index() == 0) results->Reset(state.threads());
  DispatchLoop(state, engine, stream, *results);
  if (state.thread_index() == 0) results->Publish(state);
}

template <typename Engine>
void BM_Churn(benchmark::State& state, int ranges, int changes_per_s,
              RunResults* results) {
  Engine& engine = CachedEngine<Engine>(ranges);
  const std::vector<Access>& stream =
      CachedStream(ranges, state.thread_index());
  std::unique_ptr<ChurnWriter<Engine>> writer;
  if (state.thread_index() == 0) {
    results->Reset(state.threads());
    // Started before the start barrier of the timed loop, stopped after its
    // end barrier: it runs for all of every reader's timed loop.
    writer = std::make_unique<ChurnWriter<Engine>>(engine, SpareRange(ranges),
                                                   changes_per_s);
  }
  DispatchLoop(state, engine, stream, *results);
  if (state.thread_index() == 0) {
    const auto [changes, seconds] = writer->Stop();
    results->Publish(state);
    state.counters["writer_changes"] = static_cast<double>(changes);
    state.counters["changes_per_s"] = changes / seconds;
  }
}

template <typename Engine>
void BM_Trace(benchmark::State& state, RunResults* results) {
  const Engine& engine = CachedTraceEngine<Engine>();
  const std::vector<Access>& stream =
      trace_workload->streams[static_cast<size_t>(state.thread_index())];
  if (state.thread_index() == 0) results->Reset(state.threads());
  DispatchLoop(state, engine, stream, *results);
  if (state.thread_index() == 0) {
    results->Publish(state);
    if (HasHints<Engine>) state.counters["hint_hit_rate"] = TraceHintHitRate();
  }
}

// ---------------------------------------------------------------------------
// Hints on and off, cold caches, snapshots before untouched memory, publishes.
// ---------------------------------------------------------------------------

// The trace engine with dispatch hints off (a separate instance).
template <typename Engine>
Engine& CachedTraceEngineNoHints() {
  static Engine* e = [] {
    auto* engine = new Engine;
    engine->SetDispatchHints(false);
    const absl::Status s = engine->AddAll(trace_workload->map);
    if (!s.ok()) std::abort();
    return engine;
  }();
  return *e;
}

// The share of the trace's accesses that a dispatch hint answers: each vCPU's
// stream replayed in order through the hinted search of the same snapshot
// (UnsynchronizedEngine builds it with RangeTable::Build, as IoManager does).
double TraceHintHitRate() {
  static const double rate = [] {
    const UnsynchronizedEngine& e = CachedTraceEngine<UnsynchronizedEngine>();
    size_t hits = 0, total = 0;
    for (const auto& stream : trace_workload->streams) {
      hits += e.CountHintHits(stream);
      total += stream.size();
    }
    return total == 0 ? 0.0 : static_cast<double>(hits) / total;
  }();
  return rate;
}

template <typename Engine>
void BM_TraceNoHints(benchmark::State& state, RunResults* results) {
  const Engine& engine = CachedTraceEngineNoHints<Engine>();
  const std::vector<Access>& stream =
      trace_workload->streams[static_cast<size_t>(state.thread_index())];
  if (state.thread_index() == 0) results->Reset(state.threads());
  DispatchLoop(state, engine, stream, *results);
  if (state.thread_index() == 0) results->Publish(state);
}

// BM_Trace and BM_TraceNoHints as cell bodies (the range count is the
// recorded map's).
template <typename Engine>
void TraceBody(benchmark::State& state, int, RunResults* results) {
  BM_Trace<Engine>(state, results);
}
template <typename Engine>
void TraceNoHintsBody(benchmark::State& state, int, RunResults* results) {
  BM_TraceNoHints<Engine>(state, results);
}

// The buffer the cold workload reads between dispatches: twice the L2 of the
// machine this was tuned on (1 MiB). Read-only after construction.
constexpr size_t kColdBytes = size_t{2} << 20;
const uint64_t* ColdBuffer() {
  static const uint64_t* buf = [] {
    auto* b = new uint64_t[kColdBytes / sizeof(uint64_t)];
    for (size_t i = 0; i < kColdBytes / sizeof(uint64_t); ++i) b[i] = i;
    return b;
  }();
  return buf;
}

// Reads one word of every cache line of the cold buffer.
ABSL_ATTRIBUTE_NOINLINE uint64_t TouchColdBuffer(const uint64_t* buf) {
  uint64_t sum = 0;
  for (size_t i = 0; i < kColdBytes / sizeof(uint64_t); i += 8) sum += buf[i];
  return sum;
}

template <typename Engine>
void BM_Cold(benchmark::State& state, int ranges, RunResults* results) {
  const Engine& engine = CachedEngine<Engine>(ranges);
  const std::vector<Access>& stream =
      CachedStream(ranges, state.thread_index());
  const uint64_t* cold = ColdBuffer();
  if (state.thread_index() == 0) results->Reset(state.threads());
  std::vector<float> samples;
  samples.reserve(static_cast<size_t>(state.max_iterations));
  alignas(64) uint8_t buf[64] = {1};
  size_t pos = 0;
  const ScopedCpuPin pin(state.thread_index());
  const double cpu_start = ThreadCpuNs();
  const auto wall_start = Clock::now();
  for (auto _ : state) {
    benchmark::DoNotOptimize(TouchColdBuffer(cold));
    const Access& a = stream[pos];
    if (++pos == stream.size()) pos = 0;
    const auto t0 = Clock::now();
    IoStatus s = Dispatch(engine, a, buf);
    const auto t1 = Clock::now();
    benchmark::DoNotOptimize(s);
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    samples.push_back(static_cast<float>(std::max(0.0, ns - clock_pair_ns)));
  }
  const double cpu_ns = ThreadCpuNs() - cpu_start;
  const double loop_ns =
      std::chrono::duration<double, std::nano>(Clock::now() - wall_start)
          .count();
  state.SetItemsProcessed(state.iterations());
  // The median of this thread's dispatches; RunResults averages the threads.
  std::vector<float> sorted = samples;
  std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2,
                   sorted.end());
  results->Add(sorted.empty() ? 0.0 : sorted[sorted.size() / 2], samples,
               loop_ns > 0 ? std::min(1.0, cpu_ns / loop_ns) : 1.0);
  if (state.thread_index() == 0) results->Publish(state);
}

// Snapshots placed right before never-touched memory: each block ends at a
// page boundary and is followed by kUntouched bytes mapped but never read or
// written, so their pages are not present.
constexpr size_t kUntouched = size_t{4} << 20;

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

void* EdgeAllocate(size_t bytes) {
  const size_t page = PageSize();
  const size_t inner = (bytes + page - 1) / page * page;
  void* m = mmap(nullptr, inner + kUntouched, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t end = reinterpret_cast<uintptr_t>(m) + inner;
  return reinterpret_cast<void*>((end - bytes) & ~uintptr_t{63});
}

void EdgeDeallocate(void* p, size_t bytes) {
  const size_t page = PageSize();
  const size_t inner = (bytes + page - 1) / page * page;
  // The block starts less than a page (plus alignment) into the mapping.
  const uintptr_t end =
      (reinterpret_cast<uintptr_t>(p) + bytes + page - 1) / page * page;
  munmap(reinterpret_cast<void*>(end - inner), inner + kUntouched);
}

const internal::SnapshotAllocator kEdgeAllocator = {&EdgeAllocate,
                                                    &EdgeDeallocate};

// One engine per range count whose snapshots are all placed at the edge.
template <typename Engine>
Engine& CachedEdgeEngine(int n) {
  static absl::Mutex mu;
  static auto* cache = new std::map<int, Engine*>;
  absl::MutexLock lock(&mu);
  Engine*& e = (*cache)[n];
  if (e == nullptr) {
    // Nothing else builds snapshots while the benchmark registers or runs
    // this body's setup (benchmarks run one at a time).
    internal::SetSnapshotAllocatorForTesting(&kEdgeAllocator);
    e = new Engine;
    const absl::Status s = e->AddAll(CachedMap(n));
    internal::SetSnapshotAllocatorForTesting(nullptr);
    if (!s.ok()) std::abort();
  }
  return *e;
}

template <typename Engine>
void BM_Edge(benchmark::State& state, int ranges, RunResults* results) {
  const Engine& engine = CachedEdgeEngine<Engine>(ranges);
  const std::vector<Access>& stream =
      CachedStream(ranges, state.thread_index());
  if (state.thread_index() == 0) results->Reset(state.threads());
  DispatchLoop(state, engine, stream, *results);
  if (state.thread_index() == 0) results->Publish(state);
}

// One change on a manager of `ranges` ranges: register a spare range, or
// deregister it, alternately; each change timed alone.
void BM_Publish(benchmark::State& state, int ranges) {
  RcuEngine& engine = CachedEngine<RcuEngine>(ranges);
  const RangeSpec spare = SpareRange(ranges);
  bool added = false;
  double total_s = 0;
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(state.max_iterations));
  for (auto _ : state) {
    const auto t0 = Clock::now();
    const absl::Status s =
        added ? engine.Remove(spare.bus, spare.base) : engine.Add(spare);
    const auto t1 = Clock::now();
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
    added = !added;
    const double secs = std::chrono::duration<double>(t1 - t0).count();
    state.SetIterationTime(secs);
    total_s += secs;
    samples.push_back(secs * 1e6);
  }
  if (added && !engine.Remove(spare.bus, spare.base).ok()) std::abort();
  state.counters["us_per_change"] =
      total_s * 1e6 / std::max<int64_t>(1, state.iterations());
  if (!samples.empty()) {
    std::nth_element(samples.begin(), samples.begin() + samples.size() / 2,
                     samples.end());
    state.counters["p50_us"] = samples[samples.size() / 2];
  }
}

// Registration into an empty IoManager, timed per iteration by hand. One
// manager serves the whole run: after each timed registration, one untimed
// batch removes every range again. (Destroying a manager per iteration would
// wait for an RCU barrier each time, which dominates the run's wall time.)
// The order BM_Register registers the ranges in.
enum class RegisterOrder { kAscending, kDescending, kRandom };

void BM_Register(benchmark::State& state, int ranges, bool batch,
                 RegisterOrder order = RegisterOrder::kAscending) {
  std::vector<RangeSpec> map = CachedMap(ranges);  // ascending bases
  if (order == RegisterOrder::kDescending) {
    std::reverse(map.begin(), map.end());
  } else if (order == RegisterOrder::kRandom) {
    std::mt19937_64 rng(ranges);
    std::shuffle(map.begin(), map.end(), rng);
  }
  RcuEngine engine;
  double total_s = 0;
  size_t bytes = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    absl::Status s;
    if (batch) {
      s = engine.AddAll(map);
    } else {
      for (const RangeSpec& r : map) s.Update(engine.Add(r));
    }
    const auto t1 = Clock::now();
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
    const double secs = std::chrono::duration<double>(t1 - t0).count();
    state.SetIterationTime(secs);
    total_s += secs;
    bytes = engine.manager().stats().snapshot_bytes;
    // Untimed; from the top down, so that each removal moves nothing.
    std::vector<uint64_t> bases;
    for (const RangeSpec& r : map) bases.push_back(r.base);
    std::sort(bases.rbegin(), bases.rend());
    IoBatch clear;
    for (uint64_t base : bases) clear.RemoveMmio(MmioAddress(base));
    s = engine.manager().Commit(std::move(clear)).status();
    if (!s.ok() || engine.manager().stats().mmio_ranges != 0) {
      state.SkipWithError(("clearing: " + s.ToString()).c_str());
      break;
    }
  }
  const double per_iter = total_s / std::max<int64_t>(1, state.iterations());
  state.counters["ns_per_range"] = per_iter * 1e9 / ranges;
  state.counters["ms_total"] = per_iter * 1e3;
  state.counters["bytes_per_range"] = static_cast<double>(bytes) / ranges;
}

// ---------------------------------------------------------------------------
// Registration of the benchmarks.
// ---------------------------------------------------------------------------

std::vector<int> ThreadCounts() {
  std::vector<int> t = {1, 2, 4, 8};
  const int limit =
      2 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int x = 16; x <= limit; x *= 2) t.push_back(x);
  if (limit > 8 && t.back() != limit) t.push_back(limit);
  return t;
}

std::vector<int> ChurnThreadCounts() {
  const int cores =
      static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> t = {1};
  if (cores > 1) t.push_back(cores);
  return t;
}

std::string DispatchName(absl::string_view engine, absl::string_view workload,
                         int ranges) {
  return absl::StrCat("BM_Dispatch/", engine, "/", workload,
                      "/ranges:", ranges);
}

// The body of one BM_Dispatch cell: the state, the range count, and the
// cell's own RunResults.
using CellBody = void (*)(benchmark::State&, int, RunResults*);

// Registers BM_Dispatch/<engine>/<workload>/ranges:<ranges> at `threads`
// threads, timed in real time, running `body`.
benchmark::internal::Benchmark* RegisterCell(absl::string_view engine,
                                             absl::string_view workload,
                                             int ranges, int threads,
                                             CellBody body) {
  auto* results = new RunResults;
  return benchmark::RegisterBenchmark(
             DispatchName(engine, workload, ranges).c_str(),
             [body, ranges, results](benchmark::State& s) {
               body(s, ranges, results);
             })
      ->Threads(threads)
      ->UseRealTime();
}

// The trace workloads: the recorded map, one thread per vCPU.
void RegisterTraceCell(absl::string_view engine, absl::string_view workload,
                       CellBody body) {
  if (trace_workload == nullptr) return;
  RegisterCell(engine, workload, static_cast<int>(trace_workload->map.size()),
               static_cast<int>(trace_workload->streams.size()), body);
}

// BM_Dispatch/<engine>/churn and /churn_1khz.
template <typename Engine>
void RegisterChurn() {
  if constexpr (Engine::kConcurrentChanges) {
    for (int rate : {0, 1000}) {
      for (int ranges : kChurnRangeCounts) {
        for (int threads : ChurnThreadCounts()) {
          auto* results = new RunResults;
          benchmark::RegisterBenchmark(
              DispatchName(Engine::kName, rate == 0 ? "churn" : "churn_1khz",
                           ranges)
                  .c_str(),
              [ranges, rate, results](benchmark::State& s) {
                BM_Churn<Engine>(s, ranges, rate, results);
              })
              ->Threads(threads)
              ->UseRealTime();
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Mut devices: BM_Sharded.
// ---------------------------------------------------------------------------

constexpr uint64_t kBankedBase = 0xe0000000;

// An IoManager holding one BankedMutDevice, behind one lock or a lock per
// bank; one of each, never destroyed.
const RcuEngine& BankedEngine(bool sharded) {
  static RcuEngine* engines[2] = {nullptr, nullptr};
  static absl::Mutex mu;
  absl::MutexLock lock(&mu);
  RcuEngine*& e = engines[sharded];
  if (e == nullptr) {
    e = new RcuEngine;
    std::shared_ptr<DeviceMmio> device;
    if (sharded) {
      device = MakeSharded<BankedMutDevice>();
    } else {
      device = MakeLocked<BankedMutDevice>();
    }
    const absl::Status s = e->manager().RegisterMmio(
        *MmioRange::Create(
            MmioAddress(kBankedBase),
            BankedMutDevice::kShards * BankedMutDevice::kBankBytes),
        std::move(device));
    if (!s.ok()) {
      std::fprintf(stderr, "building the banked device: %s\n",
                   s.ToString().c_str());
      std::abort();
    }
  }
  return *e;
}

// 4-byte writes to the registers of `bank`, in a seeded random order.
const std::vector<Access>& BankStream(int bank) {
  static absl::Mutex mu;
  static auto* cache = new std::map<int, std::vector<Access>>;
  absl::MutexLock lock(&mu);
  auto it = cache->find(bank);
  if (it == cache->end()) {
    std::mt19937_64 rng(0xba4c0000u + static_cast<uint64_t>(bank));
    std::vector<Access> s(kStreamLength);
    for (Access& a : s) {
      a = {kBankedBase + uint64_t(bank) * BankedMutDevice::kBankBytes +
               (rng() % 8) * 8,
           4, BusKind::kMmio, true};
    }
    it = cache->emplace(bank, std::move(s)).first;
  }
  return it->second;
}

void BM_Sharded(benchmark::State& state, bool sharded, bool same_shard,
                RunResults* results) {
  const RcuEngine& engine = BankedEngine(sharded);
  const std::vector<Access>& stream =
      BankStream(same_shard ? 0
                            : state.thread_index() %
                                  static_cast<int>(BankedMutDevice::kShards));
  if (state.thread_index() == 0) results->Reset(state.threads());
  DispatchLoop(state, engine, stream, *results);
  if (state.thread_index() == 0) results->Publish(state);
}

const int kShardedThreads[] = {1, 2, 4};

// BM_Sharded.
void RegisterSharded() {
  for (bool same_shard : {false, true}) {
    for (bool sharded : {false, true}) {
      for (int threads : kShardedThreads) {
        auto* results = new RunResults;
        benchmark::RegisterBenchmark(
            absl::StrCat("BM_Sharded/", sharded ? "sharded" : "one_lock",
                         same_shard ? "/same_shard" : "/shards:4")
                .c_str(),
            [sharded, same_shard, results](benchmark::State& s) {
              BM_Sharded(s, sharded, same_shard, results);
            })
            ->Threads(threads)
            ->UseRealTime();
      }
    }
  }
}

// ---------------------------------------------------------------------------
// trace_hotplug: the recorded accesses of tests/data/qemu-q35-hotplug while a
// writer replays the recorded device-map changes (BAR sizing, PCIe hotplug).
// ---------------------------------------------------------------------------

// The initial map, each vCPU's accesses (vcpu -1 folded into vCPU 0, as in
// `trace`), and the change sequence as bursts of (mapping, map/unmap).
struct HotplugWorkload {
  std::vector<RangeSpec> mappings;  // every mapping of the run
  size_t initial = 0;               // mappings[0, initial) are the start map
  struct Change {
    size_t mapping;
    bool map;
  };
  std::vector<std::vector<Change>> bursts;
  std::vector<std::vector<Access>> streams;  // [vcpu]
};

const char kHotplugMap[] = "tests/data/qemu-q35-hotplug/devices.tsv";
const char kHotplugTrace[] = "tests/data/qemu-q35-hotplug/trace.tsv.gz";

absl::StatusOr<HotplugWorkload> LoadHotplugWorkload() {
  namespace trace = vm_device::trace;
  absl::StatusOr<trace::DeviceMap> map =
      trace::LoadDeviceMap(trace::ResolveDataPath(kHotplugMap));
  if (!map.ok()) return map.status();
  absl::StatusOr<trace::ChangeTrace> t =
      trace::LoadChangeTrace(trace::ResolveDataPath(kHotplugTrace), *map);
  if (!t.ok()) return t.status();
  HotplugWorkload w;
  w.initial = t->map_ranges;
  for (size_t i = 0; i < t->ranges.size(); ++i) {
    const trace::MapRange& r = t->ranges[i];
    w.mappings.push_back(
        {r.bus == trace::BusKind::kPio ? BusKind::kPio : BusKind::kMmio,
         r.first, r.last - r.first + 1,
         std::make_shared<SinkDevice>(static_cast<uint8_t>(i))});
  }
  for (const trace::Burst& b : trace::Bursts(*t)) {
    w.bursts.emplace_back();
    for (size_t i = b.begin; i < b.end; ++i) {
      w.bursts.back().push_back(
          {static_cast<size_t>(t->changes[i].range), t->changes[i].map});
    }
  }
  for (const trace::Access& a : t->accesses) {
    const size_t vcpu = a.vcpu < 0 ? 0 : static_cast<size_t>(a.vcpu);
    if (w.streams.size() <= vcpu) w.streams.resize(vcpu + 1);
    w.streams[vcpu].push_back(
        {a.addr, a.size,
         a.bus == trace::BusKind::kPio ? BusKind::kPio : BusKind::kMmio,
         a.write});
  }
  return w;
}

// Loaded once, at registration; null when the data could not be read.
const HotplugWorkload* hotplug_workload = nullptr;

// One engine per type for the whole run, and where its writer stopped in the
// change sequence: the next run's writer goes on from there, so the engine
// always holds a map the guest really had.
template <typename Engine>
struct HotplugEngine {
  Engine engine;
  size_t next_burst = 0;
  bool forward = true;
};

template <typename Engine>
HotplugEngine<Engine>& CachedHotplugEngine() {
  static HotplugEngine<Engine>* e = [] {
    auto* h = new HotplugEngine<Engine>;
    const absl::Status s = h->engine.AddAll(absl::MakeConstSpan(
        hotplug_workload->mappings.data(), hotplug_workload->initial));
    if (!s.ok()) {
      std::fprintf(stderr, "building %s for trace_hotplug: %s\n",
                   std::string(Engine::kName).c_str(), s.ToString().c_str());
      std::abort();
    }
    return h;
  }();
  return *e;
}

// Replays the change sequence, one Add()/Remove() call per change, flat out
// or at `changes_per_s`: forward through the bursts, then backward (undoing
// each), and so on, until stopped (between bursts).
template <typename Engine>
class HotplugWriter {
 public:
  HotplugWriter(HotplugEngine<Engine>& h, int changes_per_s)
      : h_(h), rate_(changes_per_s) {
    start_ = Clock::now();
    thread_ = std::thread([this] { Run(); });
  }

  // Stops and joins the writer; returns {changes, seconds}.
  std::pair<uint64_t, double> Stop() {
    // relaxed: a stop request; join() orders the rest.
    stop_.store(true, std::memory_order_relaxed);
    thread_.join();
    const double s =
        std::chrono::duration<double>(Clock::now() - start_).count();
    return {changes_, s};
  }

 private:
  void Run() {
    const auto& bursts = hotplug_workload->bursts;
    const auto& mappings = hotplug_workload->mappings;
    auto next = Clock::now();
    const auto period = rate_ > 0 ? std::chrono::nanoseconds(1000000000 / rate_)
                                  : std::chrono::nanoseconds(0);
    // relaxed: see Stop().
    while (!stop_.load(std::memory_order_relaxed) && !bursts.empty()) {
      const std::vector<HotplugWorkload::Change>& burst = bursts[h_.next_burst];
      for (size_t k = 0; k < burst.size(); ++k) {
        const HotplugWorkload::Change& c =
            burst[h_.forward ? k : burst.size() - 1 - k];
        const RangeSpec& r = mappings[c.mapping];
        const absl::Status s = c.map == h_.forward
                                   ? h_.engine.Add(r)
                                   : h_.engine.Remove(r.bus, r.base);
        if (!s.ok()) {
          std::fprintf(stderr, "trace_hotplug writer: %s\n",
                       s.ToString().c_str());
          std::abort();
        }
        ++changes_;
        if (rate_ > 0) {
          next += period;
          std::this_thread::sleep_until(next);
        }
      }
      if (h_.forward) {
        if (++h_.next_burst == bursts.size()) {
          h_.forward = false;
          --h_.next_burst;
        }
      } else if (h_.next_burst == 0) {
        h_.forward = true;
      } else {
        --h_.next_burst;
      }
    }
  }

  HotplugEngine<Engine>& h_;
  const int rate_;
  Clock::time_point start_;
  std::atomic<bool> stop_{false};
  uint64_t changes_ = 0;  // written by the writer, read after join
  std::thread thread_;
};

template <typename Engine>
void BM_TraceHotplug(benchmark::State& state, int changes_per_s,
                     RunResults* results) {
  HotplugEngine<Engine>& h = CachedHotplugEngine<Engine>();
  const std::vector<Access>& stream =
      hotplug_workload->streams[static_cast<size_t>(state.thread_index())];
  std::unique_ptr<HotplugWriter<Engine>> writer;
  if (state.thread_index() == 0) {
    results->Reset(state.threads());
    // As in BM_Churn: runs for all of every reader's timed loop.
    writer = std::make_unique<HotplugWriter<Engine>>(h, changes_per_s);
  }
  DispatchLoop(state, h.engine, stream, *results);
  if (state.thread_index() == 0) {
    const auto [changes, seconds] = writer->Stop();
    results->Publish(state);
    state.counters["writer_changes"] = static_cast<double>(changes);
    state.counters["changes_per_s"] = changes / seconds;
  }
}

// BM_Dispatch/<engine>/trace_hotplug[_1khz]/ranges:<start map>/threads:<t>,
// t = the trace's vCPUs.
template <typename Engine>
void RegisterTraceHotplug() {
  if (hotplug_workload == nullptr) return;
  for (int rate : {0, 1000}) {
    auto* results = new RunResults;
    benchmark::RegisterBenchmark(
        DispatchName(Engine::kName,
                     rate == 0 ? "trace_hotplug" : "trace_hotplug_1khz",
                     static_cast<int>(hotplug_workload->initial))
            .c_str(),
        [rate, results](benchmark::State& s) {
          BM_TraceHotplug<Engine>(s, rate, results);
        })
        ->Threads(static_cast<int>(hotplug_workload->streams.size()))
        ->UseRealTime();
  }
}

void LoadHotplugWorkloadOnce() {
  if (absl::StatusOr<HotplugWorkload> w = LoadHotplugWorkload(); w.ok()) {
    hotplug_workload = new HotplugWorkload(*std::move(w));
  } else {
    std::fprintf(stderr, "no trace_hotplug workload: %s\n",
                 w.status().ToString().c_str());
  }
}

void RegisterAll() {
  if (absl::StatusOr<TraceWorkload> w = LoadTraceWorkload(); w.ok()) {
    trace_workload = new TraceWorkload(*std::move(w));
  } else {
    std::fprintf(stderr, "no trace workload: %s\n",
                 w.status().ToString().c_str());
  }
  // Google Benchmark runs benchmarks in registration order. The cells of
  // every ratio the summary and the targets take (one engine against
  // another on one cell; one range count against another at one thread
  // count) are registered next to each other, by thread count, then range
  // count, then engine, so that both sides of a ratio are measured within a
  // second or two of each other: on a shared VM the machine's speed drifts
  // over the minute a run takes.
  for (int threads : ThreadCounts()) {
    for (int ranges : kRangeCounts) {
      if (threads <= 2) {
        RegisterCell(DirectIndexEngine::kName, "uniform", ranges, threads,
                     &BM_Uniform<DirectIndexEngine>);
      }
      RegisterCell(UnsynchronizedEngine::kName, "uniform", ranges, threads,
                   &BM_Uniform<UnsynchronizedEngine>);
      RegisterCell(RcuEngine::kName, "uniform", ranges, threads,
                   &BM_Uniform<RcuEngine>);
      if (threads == 1 && ranges >= 16 && ranges != 256) {  // 16, 4096, 65536
        RegisterCell(UnsynchronizedEngine::kName, "edge", ranges, 1,
                     &BM_Edge<UnsynchronizedEngine>);
        RegisterCell(RcuEngine::kName, "edge", ranges, 1, &BM_Edge<RcuEngine>);
      }
      RegisterCell(RwLockMapEngine::kName, "uniform", ranges, threads,
                   &BM_Uniform<RwLockMapEngine>);
      RegisterCell(MutexMapEngine::kName, "uniform", ranges, threads,
                   &BM_Uniform<MutexMapEngine>);
      RegisterCell(RcuLockedEngine::kName, "uniform", ranges, threads,
                   &BM_Uniform<RcuLockedEngine>);
    }
  }
  // Cold: each dispatch timed alone, a fixed number of them.
  for (int threads : {1, 2}) {
    for (int ranges : kRangeCounts) {
      RegisterCell(DirectIndexEngine::kName, "cold", ranges, threads,
                   &BM_Cold<DirectIndexEngine>)
          ->Iterations(3000);
      RegisterCell(UnsynchronizedEngine::kName, "cold", ranges, threads,
                   &BM_Cold<UnsynchronizedEngine>)
          ->Iterations(3000);
      RegisterCell(RcuEngine::kName, "cold", ranges, threads,
                   &BM_Cold<RcuEngine>)
          ->Iterations(3000);
    }
  }
  for (int threads : OwnDeviceThreadCounts()) {
    for (int ranges : kOwnDeviceRangeCounts) {
      RegisterCell(RcuEngine::kName, "own_device", ranges, threads,
                   &BM_OwnDevice<RcuEngine>);
      RegisterCell(RcuLockedEngine::kName, "own_device", ranges, threads,
                   &BM_OwnDevice<RcuLockedEngine>);
    }
  }
  RegisterTraceCell(UnsynchronizedEngine::kName, "trace",
                    &TraceBody<UnsynchronizedEngine>);
  RegisterTraceCell(UnsynchronizedEngine::kName, "trace_nohints",
                    &TraceNoHintsBody<UnsynchronizedEngine>);
  RegisterTraceCell(RcuEngine::kName, "trace", &TraceBody<RcuEngine>);
  RegisterTraceCell(RcuEngine::kName, "trace_nohints",
                    &TraceNoHintsBody<RcuEngine>);
  RegisterTraceCell(RwLockMapEngine::kName, "trace",
                    &TraceBody<RwLockMapEngine>);
  RegisterTraceCell(MutexMapEngine::kName, "trace", &TraceBody<MutexMapEngine>);
  RegisterTraceCell(RcuLockedEngine::kName, "trace",
                    &TraceBody<RcuLockedEngine>);
  RegisterChurn<RcuEngine>();
  RegisterChurn<RwLockMapEngine>();
  RegisterChurn<MutexMapEngine>();
  RegisterSharded();
  for (int ranges : {16, 4096, 65536}) {
    benchmark::RegisterBenchmark(
        absl::StrCat("BM_Publish/rcu/ranges:", ranges).c_str(),
        [ranges](benchmark::State& s) { BM_Publish(s, ranges); })
        ->UseManualTime()
        ->Iterations(ranges >= 65536 ? 200 : 2000)
        ->Unit(benchmark::kMicrosecond);
  }
  LoadHotplugWorkloadOnce();
  RegisterTraceHotplug<RcuEngine>();
  RegisterTraceHotplug<RwLockMapEngine>();
  RegisterTraceHotplug<MutexMapEngine>();
  for (bool batch : {false, true}) {
    for (int ranges : {16, 64, 256, 1024, 4096}) {
      benchmark::RegisterBenchmark(
          absl::StrCat("BM_Register/rcu/", batch ? "batch" : "one_by_one",
                       "/ranges:", ranges)
              .c_str(),
          [ranges, batch](benchmark::State& s) {
            BM_Register(s, ranges, batch);
          })
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  // The same, in descending and in random address order (issue 8: a batch's
  // cost depends on its order; see io_manager.h, "Time of a change").
  for (bool batch : {false, true}) {
    for (RegisterOrder order :
         {RegisterOrder::kDescending, RegisterOrder::kRandom}) {
      for (int ranges : {256, 4096}) {
        benchmark::RegisterBenchmark(
            absl::StrCat("BM_Register/rcu/", batch ? "batch" : "one_by_one",
                         order == RegisterOrder::kDescending ? "_descending"
                                                             : "_random",
                         "/ranges:", ranges)
                .c_str(),
            [ranges, batch, order](benchmark::State& s) {
              BM_Register(s, ranges, batch, order);
            })
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Reporting: the names without "/real_time", and the summary.
// ---------------------------------------------------------------------------

// Forwards to `inner` with "/real_time" and "/manual_time" dropped from the
// names; keeps a copy of every run when `keep` is set.
class NameReporter : public benchmark::BenchmarkReporter {
 public:
  NameReporter(benchmark::BenchmarkReporter* inner, std::vector<Run>* keep)
      : inner_(inner), keep_(keep) {}

  bool ReportContext(const Context& context) override {
    inner_->SetOutputStream(&GetOutputStream());
    inner_->SetErrorStream(&GetErrorStream());
    return inner_->ReportContext(context);
  }
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> renamed = runs;
    for (Run& r : renamed) r.run_name.time_type.clear();
    if (keep_ != nullptr)
      keep_->insert(keep_->end(), renamed.begin(), renamed.end());
    inner_->ReportRuns(renamed);
  }
  void Finalize() override { inner_->Finalize(); }

 private:
  benchmark::BenchmarkReporter* inner_;
  std::vector<Run>* keep_;
};

// The results of the runs, by name.
class Results {
 public:
  explicit Results(const std::vector<benchmark::BenchmarkReporter::Run>& runs) {
    for (const auto& r : runs) {
      // With --benchmark_repetitions, the mean of the repetitions (the
      // "mean" aggregate, alone or with the repetitions, is the same mean).
      const bool mean =
          r.run_type == benchmark::BenchmarkReporter::Run::RT_Aggregate &&
          r.aggregate_name == "mean";
      if ((r.run_type != benchmark::BenchmarkReporter::Run::RT_Iteration &&
           !mean) ||
          r.error_occurred) {
        continue;
      }
      auto& m = by_name_[absl::StrCat(r.run_name.function_name,
                                      "/threads:", r.threads)];
      for (const auto& [k, c] : r.counters) {
        auto& [sum, n] = m[k];
        sum += c.value;
        ++n;
      }
    }
  }

  // The counter, or -1 when that benchmark did not run.
  double Get(absl::string_view engine, absl::string_view workload, int ranges,
             int threads, const char* counter = "ns_per_dispatch") const {
    return Find(absl::StrCat(DispatchName(engine, workload, ranges),
                             "/threads:", threads),
                counter);
  }
  double Find(const std::string& name, const char* counter) const {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return -1;
    auto c = it->second.find(counter);
    return c == it->second.end() ? -1 : c->second.first / c->second.second;
  }
  bool empty() const { return by_name_.empty(); }

 private:
  std::map<std::string, std::map<std::string, std::pair<double, int>>> by_name_;
};

const char* Verdict(bool ok) { return ok ? "ok" : "MISSED"; }

void PrintSummary(const Results& r) {
  if (r.empty()) return;
  const char* engines[] = {"direct_index", "unsynchronized", "rcu",
                           "rwlock_map", "mutex_map"};
  const std::vector<int> threads = ThreadCounts();
  std::printf(
      "\nSummary: uniform workload, ns per dispatch per thread "
      "(x ratio to unsynchronized)\n");
  std::printf("clock pair overhead subtracted from p50/p99 samples: %.1f ns\n",
              clock_pair_ns);
  double worst_rcu_ratio = 0;
  std::string worst_where;
  for (int ranges : kRangeCounts) {
    if (r.Get("unsynchronized", "uniform", ranges, 1) < 0 &&
        r.Get("rcu", "uniform", ranges, 1) < 0) {
      continue;
    }
    std::printf("\nranges:%-5d", ranges);
    for (int t : threads)
      std::printf("  %16s", absl::StrCat("threads:", t).c_str());
    std::printf("\n");
    for (const char* e : engines) {
      std::printf("%-15s", e);
      for (int t : threads) {
        const double v = r.Get(e, "uniform", ranges, t);
        const double floor = r.Get("unsynchronized", "uniform", ranges, t);
        if (v < 0) {
          std::printf("  %16s", "-");
        } else if (floor > 0) {
          std::printf("  %7.1f (%5.2fx)", v, v / floor);
          if (absl::string_view(e) == "rcu" && v / floor > worst_rcu_ratio) {
            worst_rcu_ratio = v / floor;
            worst_where = absl::StrCat("ranges:", ranges, " threads:", t);
          }
        } else {
          std::printf("  %16.1f", v);
        }
      }
      std::printf("\n");
    }
  }

  std::printf("\nTargets (ratios within this run):\n");
  if (worst_rcu_ratio > 0) {
    std::printf(
        "  rcu / unsynchronized, worst case:        %5.2fx at %s"
        "  (target <= 1.3x: %s)\n",
        worst_rcu_ratio, worst_where.c_str(), Verdict(worst_rcu_ratio <= 1.3));
  }
  for (int ranges : kRangeCounts) {
    const double rcu = r.Get("rcu", "uniform", ranges, 2);
    const double rw = r.Get("rwlock_map", "uniform", ranges, 2);
    if (rcu <= 0 || rw <= 0) continue;
    std::string by_threads;
    for (int t : threads) {
      const double a = r.Get("rcu", "uniform", ranges, t);
      const double b = r.Get("rwlock_map", "uniform", ranges, t);
      if (a > 0 && b > 0) {
        absl::StrAppend(&by_threads, absl::StrFormat(" t%d:%.1fx", t, b / a));
      }
    }
    std::printf(
        "  rwlock_map / rcu at 2 threads, ranges:%-4d %5.2fx"
        "  (target >= 3x: %s); by threads:%s\n",
        ranges, rw / rcu, Verdict(rw / rcu >= 3), by_threads.c_str());
  }
  for (int ranges : kChurnRangeCounts) {
    for (int t : ChurnThreadCounts()) {
      const double base = r.Get("rcu", "uniform", ranges, t);
      const double churn = r.Get("rcu", "churn", ranges, t);
      const double slow = r.Get("rcu", "churn_1khz", ranges, t);
      if (base <= 0 || churn <= 0) continue;
      // The readers' share of the wall time on a CPU: below 1 when the
      // writer (and the reclaimer) take CPU time from them. The ratio per
      // CPU-second is what is left once that time-sharing is taken out.
      const double share = r.Get("rcu", "churn", ranges, t, "cpu_share");
      const double base_share = r.Get("rcu", "uniform", ranges, t, "cpu_share");
      std::printf(
          "  rcu churn / no churn, ranges:%-4d threads:%d  flat out %5.2fx"
          " (%.0f changes/s; target <= 1.5x: %s), 1 kHz %5.2fx;"
          " readers on a CPU %.0f%% of the time, flat out per CPU-second "
          "%5.2fx\n",
          ranges, t, churn / base,
          r.Get("rcu", "churn", ranges, t, "changes_per_s"),
          Verdict(churn / base <= 1.5), slow > 0 ? slow / base : 0.0,
          100 * share,
          base_share > 0 ? churn * share / (base * base_share) : 0.0);
    }
  }
  {
    std::string line;
    bool ok = true;
    for (int t : threads) {
      const double a = r.Get("rcu", "uniform", 4096, t);
      const double b = r.Get("rcu", "uniform", 16, t);
      if (a > 0 && b > 0) {
        absl::StrAppend(&line, absl::StrFormat(" t%d:%.2fx", t, a / b));
        ok = ok && a / b <= 2;
      }
    }
    if (!line.empty()) {
      std::printf("  rcu 4096 / 16 ranges:%s  (target <= 2x: %s)\n",
                  line.c_str(), Verdict(ok));
    }
  }
  for (const char* mode : {"one_by_one", "batch"}) {
    std::string line;
    for (int n : {16, 256, 4096}) {
      const std::string name =
          absl::StrCat("BM_Register/rcu/", mode, "/ranges:", n, "/threads:1");
      const double ns = r.Find(name, "ns_per_range");
      if (ns < 0) continue;
      absl::StrAppend(
          &line,
          absl::StrFormat(" n=%d: %.3f ms (%.0f ns/range, %.1f B/range);", n,
                          r.Find(name, "ms_total"), ns,
                          r.Find(name, "bytes_per_range")));
    }
    if (line.empty()) continue;
    const double ms =
        r.Find(absl::StrCat("BM_Register/rcu/", mode, "/ranges:4096/threads:1"),
               "ms_total");
    const bool batch = absl::string_view(mode) == "batch";
    std::printf("  register %-10s%s  (target 4096 < %s: %s)\n", mode,
                line.c_str(), batch ? "10 ms" : "1 s",
                ms < 0 ? "not run" : Verdict(ms < (batch ? 10 : 1000)));
  }
  {
    std::string line;
    for (const char* e : engines) {
      if (trace_workload == nullptr) break;
      const double v =
          r.Get(e, "trace", static_cast<int>(trace_workload->map.size()),
                static_cast<int>(trace_workload->streams.size()));
      if (v > 0) absl::StrAppend(&line, absl::StrFormat(" %s %.1f;", e, v));
    }
    if (!line.empty()) {
      std::printf(
          "  trace (%zu accesses, one thread per vCPU), ns per "
          "dispatch:%s\n",
          trace_workload->accesses, line.c_str());
    }
  }
}

// The targets of issue 9, as ratios within this run (tools/bench_spread.sh
// checks them over many runs).
void PrintIssue9Targets(const Results& r) {
  std::printf("\nIssue 9 targets (ratios within this run):\n");
  for (const char* workload : {"uniform", "cold"}) {
    double worst = 0;
    std::string where, line;
    for (int ranges : kRangeCounts) {
      for (int t : {1, 2}) {
        const double a = r.Get("rcu", workload, ranges, t);
        const double b = r.Get("unsynchronized", workload, ranges, t);
        if (a <= 0 || b <= 0) continue;
        absl::StrAppend(&line,
                        absl::StrFormat(" %d/t%d:%.2f", ranges, t, a / b));
        if (a / b > worst) {
          worst = a / b;
          where = absl::StrCat("ranges:", ranges, " threads:", t);
        }
      }
    }
    if (worst > 0) {
      std::printf(
          "  %-7s rcu / unsynchronized, worst %5.2fx at %s (target <= 1.2x: "
          "%s);%s\n",
          workload, worst, where.c_str(), Verdict(worst <= 1.2), line.c_str());
    }
    for (const auto& [big, limit] : {std::pair<int, double>{4096, 1.5},
                                     std::pair<int, double>{65536, 2}}) {
      std::string l;
      bool ok = true;
      for (int t : {1, 2}) {
        const double a = r.Get("rcu", workload, big, t);
        const double b = r.Get("rcu", workload, 16, t);
        if (a <= 0 || b <= 0) continue;
        absl::StrAppend(&l, absl::StrFormat(" t%d:%.2fx", t, a / b));
        ok = ok && a / b <= limit;
      }
      if (!l.empty()) {
        std::printf("  %-7s rcu %d / 16 ranges:%s (target <= %.1fx: %s)\n",
                    workload, big, l.c_str(), limit, Verdict(ok));
      }
      // The same ratio with no search at all at `big` ranges: the least any
      // lookup could score here (the devices' and pointers' own misses).
      std::string f;
      bool reachable = true;
      for (int t : {1, 2}) {
        const double a = r.Get("direct_index", workload, big, t);
        const double b = r.Get("rcu", workload, 16, t);
        if (a <= 0 || b <= 0) continue;
        absl::StrAppend(&f, absl::StrFormat(" t%d:%.2fx", t, a / b));
        reachable = reachable && a / b <= limit;
      }
      if (!f.empty()) {
        std::printf("  %-7s   floor: direct_index %d / rcu 16 ranges:%s (%s)\n",
                    workload, big, f.c_str(),
                    reachable ? "a search could meet the target"
                              : "above the target with no search at all");
      }
    }
  }
  if (trace_workload != nullptr) {
    const int n = static_cast<int>(trace_workload->map.size());
    const int t = static_cast<int>(trace_workload->streams.size());
    for (const char* e : {"rcu", "unsynchronized"}) {
      const double on = r.Get(e, "trace", n, t);
      const double off = r.Get(e, "trace_nohints", n, t);
      if (on <= 0 || off <= 0) continue;
      std::printf(
          "  trace %-14s hints off / on: %.1f / %.1f ns = %5.2fx (target >= "
          "1.3x: %s); hint hit rate %.1f%%\n",
          e, off, on, off / on, Verdict(off / on >= 1.3),
          100 * TraceHintHitRate());
    }
  }
  for (int ranges : {16, 4096, 65536}) {
    const std::string name =
        absl::StrCat("BM_Publish/rcu/ranges:", ranges, "/threads:1");
    const double us = r.Find(name, "us_per_change");
    if (us < 0) continue;
    const double p50 = r.Find(name, "p50_us");
    std::printf(
        "  publish one change into %d ranges: mean %.1f us, median %.1f us%s\n",
        ranges, us, p50,
        ranges == 4096
            ? absl::StrFormat(" (target <= 20 us: %s)", Verdict(us <= 20))
                  .c_str()
            : "");
  }
  for (int ranges : {16, 4096, 65536}) {
    for (const char* e : {"rcu", "unsynchronized"}) {
      const double edge = r.Get(e, "edge", ranges, 1);
      const double base = r.Get(e, "uniform", ranges, 1);
      if (edge <= 0 || base <= 0) continue;
      std::printf(
          "  %-14s snapshot before untouched memory / anywhere, ranges:%-5d "
          "%5.2fx\n",
          e, ranges, edge / base);
    }
  }
}

// A table of rcu_locked's ns per dispatch on `workload`, each cell with its
// ratio to rcu in the same run.
void PrintLockedTable(const Results& r, const char* workload,
                      absl::Span<const int> range_counts,
                      const std::vector<int>& threads) {
  std::printf("%-12s", "");
  for (int t : threads)
    std::printf("  %16s", absl::StrCat("threads:", t).c_str());
  std::printf("\n");
  for (int ranges : range_counts) {
    std::printf("%-12s", absl::StrCat("ranges:", ranges).c_str());
    for (int t : threads) {
      const double v = r.Get("rcu_locked", workload, ranges, t);
      const double base = r.Get("rcu", workload, ranges, t);
      if (v < 0) {
        std::printf("  %16s", "-");
      } else if (base > 0) {
        std::printf("  %7.1f (%5.2fx)", v, v / base);
      } else {
        std::printf("  %16.1f", v);
      }
    }
    std::printf("\n");
  }
}

// The Mut-device part of the summary: rcu_locked against rcu, sharded
// against one_lock, and the issue's targets.
void PrintMutSummary(const Results& r) {
  const std::vector<int> threads = ThreadCounts();
  bool any = false;
  for (int ranges : kRangeCounts)
    any |= r.Get("rcu_locked", "uniform", ranges, 1) > 0;
  if (any) {
    std::printf(
        "\nMut devices: uniform workload, rcu_locked ns per dispatch per "
        "thread (x ratio to rcu)\n");
    PrintLockedTable(r, "uniform", kRangeCounts, threads);
    std::printf(
        "  (uniform: every thread touches every device, so each lock's cache "
        "line moves\n   between cores; the targets below are on own_device)\n");
    for (int ranges : {256, 4096}) {
      const double t1 = r.Get("rcu_locked", "uniform", ranges, 1);
      const double t2 = r.Get("rcu_locked", "uniform", ranges, 2);
      if (t1 <= 0 || t2 <= 0) continue;
      std::printf(
          "  uniform rcu_locked 2 threads / 1 thread, ranges:%-4d: %5.2fx; "
          "p50 %.0f / %.0f ns\n",
          ranges, t2 / t1, r.Get("rcu_locked", "uniform", ranges, 2, "p50_ns"),
          r.Get("rcu_locked", "uniform", ranges, 1, "p50_ns"));
    }
  }
  const std::vector<int> own_threads = OwnDeviceThreadCounts();
  if (r.Get("rcu_locked", "own_device", 16, 1) > 0) {
    std::printf(
        "\nMut devices: own_device workload (each thread its own devices), "
        "rcu_locked ns per\ndispatch per thread (x ratio to rcu)\n");
    PrintLockedTable(r, "own_device", kOwnDeviceRangeCounts, own_threads);
    std::printf("\nMut-device targets (ratios within this run):\n");
    double worst = 0;
    std::string worst_where;
    for (int ranges : kOwnDeviceRangeCounts) {
      for (int t : own_threads) {
        const double v = r.Get("rcu_locked", "own_device", ranges, t);
        const double base = r.Get("rcu", "own_device", ranges, t);
        if (v > 0 && base > 0 && v / base > worst) {
          worst = v / base;
          worst_where = absl::StrCat("ranges:", ranges, " threads:", t);
        }
      }
    }
    if (worst > 0) {
      std::printf(
          "  own_device rcu_locked / rcu, worst cell: %5.2fx at %s"
          "  (target <= 1.5x: %s)\n",
          worst, worst_where.c_str(), Verdict(worst <= 1.5));
    }
    for (int ranges : kOwnDeviceRangeCounts) {
      const double t1 = r.Get("rcu_locked", "own_device", ranges, 1);
      const double t2 = r.Get("rcu_locked", "own_device", ranges, 2);
      if (t1 <= 0 || t2 <= 0) continue;
      std::printf(
          "  own_device rcu_locked 2 threads / 1 thread, ranges:%-4d: %5.2fx  "
          "(target <= 1.2x: %s); p50 %.0f / %.0f ns\n",
          ranges, t2 / t1, Verdict(t2 / t1 <= 1.2),
          r.Get("rcu_locked", "own_device", ranges, 2, "p50_ns"),
          r.Get("rcu_locked", "own_device", ranges, 1, "p50_ns"));
    }
  }
  auto sharded_ns = [&](const char* mode, const char* shape, int t) {
    return r.Find(absl::StrCat("BM_Sharded/", mode, "/", shape, "/threads:", t),
                  "ns_per_dispatch");
  };
  if (sharded_ns("sharded", "shards:4", 1) > 0) {
    std::printf(
        "\nBM_Sharded: ns per dispatch per thread, sharded (x ratio to "
        "one_lock)\n");
    for (const char* shape : {"shards:4", "same_shard"}) {
      std::printf("  %-11s", shape);
      for (int t : kShardedThreads) {
        const double s = sharded_ns("sharded", shape, t);
        const double o = sharded_ns("one_lock", shape, t);
        if (s > 0 && o > 0) {
          std::printf("  t%d: %6.1f vs %6.1f (%5.2fx)", t, s, o, s / o);
        }
      }
      std::printf("\n");
    }
    const double s1 = sharded_ns("sharded", "shards:4", 1);
    const double s2 = sharded_ns("sharded", "shards:4", 2);
    if (s1 > 0 && s2 > 0) {
      // p50 too: on a loaded machine the wall-clock counter includes time
      // spent descheduled, the sampled median mostly does not.
      const auto p50 = [&](int t) {
        return r.Find(absl::StrCat("BM_Sharded/sharded/shards:4/threads:", t),
                      "p50_ns");
      };
      std::printf(
          "  sharded shards:4, 2 threads (a bank each) / 1 thread: %5.2fx  "
          "(target <= 1.2x: %s); p50 %.0f / %.0f ns\n",
          s2 / s1, Verdict(s2 / s1 <= 1.2), p50(2), p50(1));
    }
  }
  if (trace_workload != nullptr) {
    const int n = static_cast<int>(trace_workload->map.size());
    const int t = static_cast<int>(trace_workload->streams.size());
    const double locked = r.Get("rcu_locked", "trace", n, t);
    const double rcu = r.Get("rcu", "trace", n, t);
    if (locked > 0 && rcu > 0) {
      // Not a target: in the trace three of the four vCPUs spend about half
      // their accesses on one device (hpet), so its lock is truly contended.
      std::printf(
          "  trace, rcu_locked / rcu: %.1f / %.1f ns = %5.2fx  (informative: "
          "hpet is shared by all vCPUs)\n",
          locked, rcu, locked / rcu);
    }
  }
}

// The value of --<name>=... in argv, or "" when absent.
std::string FlagValue(int argc, char** argv, absl::string_view name) {
  const std::string prefix = absl::StrCat("--", name, "=");
  std::string value;
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], prefix)) value = argv[i] + prefix.size();
  }
  return value;
}

int Main(int argc, char** argv) {
  // Defaults first, so that the caller's flags override them. --pin_threads
  // is this binary's own flag, not passed on.
  std::vector<char*> args = {argv[0],
                             const_cast<char*>("--benchmark_min_time=0.05")};
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], "--pin_threads=")) {
      const absl::string_view v = argv[i] + std::strlen("--pin_threads=");
      if (v != "true" && v != "false") {
        std::fprintf(stderr, "--pin_threads: expected true or false, got %s\n",
                     argv[i]);
        return 1;
      }
      pin_threads = v == "true";
      continue;
    }
    args.push_back(argv[i]);
  }
  CPU_ZERO(&process_cpus);
  if (sched_getaffinity(0, sizeof(process_cpus), &process_cpus) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &process_cpus)) process_cpu_list.push_back(c);
    }
  }
  std::printf("benchmark threads pinned to CPUs (thread i on the i mod n-th "
              "of %zu): %s\n",
              process_cpu_list.size(), pin_threads ? "yes" : "no");
  args.push_back(nullptr);
  int n = static_cast<int>(args.size()) - 1;
  const std::string out = FlagValue(argc, argv, "benchmark_out");
  const std::string out_format = FlagValue(argc, argv, "benchmark_out_format");

  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;

  clock_pair_ns = CalibrateClockPair();
  RegisterAll();

  std::vector<benchmark::BenchmarkReporter::Run> runs;
  NameReporter display(benchmark::CreateDefaultDisplayReporter(), &runs);
  std::unique_ptr<benchmark::BenchmarkReporter> file_inner;
  std::unique_ptr<NameReporter> file;
  if (!out.empty()) {
    if (out_format == "console") {
      file_inner = std::make_unique<benchmark::ConsoleReporter>(
          benchmark::ConsoleReporter::OO_None);
    } else {
      file_inner = std::make_unique<benchmark::JSONReporter>();
    }
    // csv (deprecated in 1.7.1): the library's own reporter, names unchanged.
    if (out_format != "csv") {
      file = std::make_unique<NameReporter>(file_inner.get(), nullptr);
    }
  }
  benchmark::RunSpecifiedBenchmarks(&display, file.get());
  std::fflush(stdout);
  std::cout.flush();
  {
    const Results results(runs);
    PrintSummary(results);
    PrintIssue9Targets(results);
    PrintMutSummary(results);
  }
  std::fflush(stdout);
  benchmark::Shutdown();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vm_device

int main(int argc, char** argv) { return vm_device::bench::Main(argc, argv); }
