// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// //bench:read_side: the two pieces of a dispatch, timed apart.
//
//   bazel run //bench:read_side
//
//   BM_ReadSection              entering and leaving one RCU read-side
//                               critical section (internal::ReadSection: the
//                               registration check plus liburcu memb's
//                               read_lock / read_unlock), nothing inside.
//   BM_Search/<layout>/<cache>/keys:<n>
//                               one search of n sorted range bases for a
//                               random address inside them, for the three
//                               layouts of include/vm_device/internal/
//                               range_search.h:
//                                 binary     FindFloor over the sorted array
//                                 eytzinger  EytzingerFloor (breadth-first)
//                                 btree      BTreeFloor, one 64-byte node per
//                                            layer (the RCU table's layout)
//                               64-bit (MMIO) keys, and `btree_pio` with
//                               16-bit (PIO) keys, 32 per node.
//                               cache:
//                                 hot      the table stays cached; addresses
//                                          come from a stream generated
//                                          before timing and consecutive
//                                          searches are independent, so this
//                                          is throughput on a hot table.
//                                 evicted  before each search, every cache
//                                          line of the table is flushed
//                                          (clflush, untimed); each search is
//                                          timed alone with a pair of clock
//                                          reads, whose calibrated cost is
//                                          subtracted. Models a dispatch after
//                                          the guest ran long enough to push
//                                          the table out of every cache: the
//                                          latency of the search's chain of
//                                          dependent misses. Counter p50_ns:
//                                          the median search (the mean, in
//                                          the Time column, counts the
//                                          searches a loaded machine
//                                          preempted).
//
// README.md quotes these figures for the cost of the read side and for the
// choice of search layout.

#include <emmintrin.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "src/internal/rcu.h"
#include "vm_device/internal/range_search.h"

namespace vm_device {
namespace {

using Clock = std::chrono::steady_clock;
namespace rs = range_search_internal;

void BM_ReadSection(benchmark::State& state) {
  internal::EnsureRegistered();
  for (auto _ : state) {
    internal::ReadSection read_side;
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_ReadSection);

template <typename T>
T* AlignedArray(size_t n) {
  return static_cast<T*>(
      ::operator new((n * sizeof(T) + 63) / 64 * 64, std::align_val_t(64)));
}
struct AlignedDelete {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t(64)); }
};

// n range bases `stride` apart, in sorted, Eytzinger and B+-tree order
// (64-byte aligned, as in the RCU table), and a stream of addresses inside
// the ranges.
template <typename V>
struct Keys {
  explicit Keys(size_t n, uint64_t stride)
      : n(n), levels(rs::EytzingerLevels(n)), shape(rs::BTreeShape::For<V>(n)) {
    sorted.reset(AlignedArray<V>(n));
    for (size_t i = 0; i < n; ++i) sorted.get()[i] = static_cast<V>(i * stride);
    eytzinger.reset(AlignedArray<V>(n + 1));
    eytzinger.get()[0] = 0;
    rs::ForEachEytzingerSlot(n, [&](size_t node, size_t i) {
      eytzinger.get()[node] = sorted.get()[i];
    });
    btree.reset(AlignedArray<V>(shape.nodes * rs::kKeysPerNode<V>));
    rs::FillBTree(shape, sorted.get(), btree.get());
    std::mt19937_64 rng(1);
    for (auto& a : stream) {
      a = static_cast<V>(sorted.get()[rng() % n] + rng() % (stride / 2));
    }
  }

  size_t n;
  size_t levels;
  rs::BTreeShape shape;
  std::unique_ptr<V, AlignedDelete> sorted, eytzinger, btree;
  std::vector<V> stream = std::vector<V>(1 << 16);
};

enum class Layout { kBinary, kEytzinger, kBTree };

template <typename V, Layout kLayout>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline size_t Search(const Keys<V>& k, V x) {
  if constexpr (kLayout == Layout::kBinary) {
    return rs::FindFloor(k.sorted.get(), k.n, x);
  } else if constexpr (kLayout == Layout::kEytzinger) {
    return rs::EytzingerFloor(k.eytzinger.get(), k.n, k.levels, x);
  } else {
    return rs::BTreeFloor(k.btree.get(), k.shape, x);
  }
}

template <typename V, Layout kLayout>
void Flush(const Keys<V>& k) {
  const char* p;
  size_t bytes;
  if constexpr (kLayout == Layout::kBinary) {
    p = reinterpret_cast<const char*>(k.sorted.get());
    bytes = k.n * sizeof(V);
  } else if constexpr (kLayout == Layout::kEytzinger) {
    p = reinterpret_cast<const char*>(k.eytzinger.get());
    bytes = (k.n + 1) * sizeof(V);
  } else {
    p = reinterpret_cast<const char*>(k.btree.get());
    bytes = k.shape.nodes * 64;
  }
  for (size_t i = 0; i < bytes; i += 64) _mm_clflush(p + i);
  _mm_mfence();
}

template <typename V, Layout kLayout>
void BM_SearchHot(benchmark::State& state) {
  const Keys<V> keys(static_cast<size_t>(state.range(0)),
                     sizeof(V) == 2 ? 2 : 0x2000);
  size_t i = 0;
  for (auto _ : state) {
    size_t r = Search<V, kLayout>(keys, keys.stream[i]);
    benchmark::DoNotOptimize(r);
    i = (i + 1) & (keys.stream.size() - 1);
  }
}

double clock_pair_ns = 0;

template <typename V, Layout kLayout>
void BM_SearchEvicted(benchmark::State& state) {
  const Keys<V> keys(static_cast<size_t>(state.range(0)),
                     sizeof(V) == 2 ? 2 : 0x2000);
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(state.max_iterations));
  size_t i = 0;
  for (auto _ : state) {
    Flush<V, kLayout>(keys);
    const V x = keys.stream[i];
    const auto t0 = Clock::now();
    size_t r = Search<V, kLayout>(keys, x);
    benchmark::DoNotOptimize(r);
    const auto t1 = Clock::now();
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    samples.push_back(std::max(0.0, ns - clock_pair_ns));
    state.SetIterationTime(samples.back() * 1e-9);
    i = (i + 1) & (keys.stream.size() - 1);
  }
  // The median: a search preempted on a loaded machine moves the mean only.
  if (!samples.empty()) {
    std::nth_element(samples.begin(), samples.begin() + samples.size() / 2,
                     samples.end());
    state.counters["p50_ns"] = samples[samples.size() / 2];
  }
}

void Register() {
  std::vector<int64_t> counts = {16, 256, 4096, 65536};
  auto add = [&](const char* name, auto hot, auto evicted,
                 const std::vector<int64_t>& ns) {
    for (int64_t n : ns) {
      benchmark::RegisterBenchmark(
          (std::string("BM_Search/") + name + "/hot").c_str(), hot)
          ->ArgName("keys")
          ->Arg(n);
    }
    for (int64_t n : ns) {
      benchmark::RegisterBenchmark(
          (std::string("BM_Search/") + name + "/evicted").c_str(), evicted)
          ->ArgName("keys")
          ->Arg(n)
          ->UseManualTime()
          ->Iterations(n >= 65536 ? 2000 : 20000);
    }
  };
  add("binary", BM_SearchHot<uint64_t, Layout::kBinary>,
      BM_SearchEvicted<uint64_t, Layout::kBinary>, counts);
  add("eytzinger", BM_SearchHot<uint64_t, Layout::kEytzinger>,
      BM_SearchEvicted<uint64_t, Layout::kEytzinger>, counts);
  add("btree", BM_SearchHot<uint64_t, Layout::kBTree>,
      BM_SearchEvicted<uint64_t, Layout::kBTree>, counts);
  // PIO: at most 32,768 ranges two ports apart fit the 16-bit space.
  add("eytzinger_pio", BM_SearchHot<uint16_t, Layout::kEytzinger>,
      BM_SearchEvicted<uint16_t, Layout::kEytzinger>, {16, 256, 4096, 32768});
  add("btree_pio", BM_SearchHot<uint16_t, Layout::kBTree>,
      BM_SearchEvicted<uint16_t, Layout::kBTree>, {16, 256, 4096, 32768});
}

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

}  // namespace
}  // namespace vm_device

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  vm_device::clock_pair_ns = vm_device::CalibrateClockPair();
  std::printf("clock pair overhead subtracted from evicted searches: %.1f ns\n",
              vm_device::clock_pair_ns);
  vm_device::Register();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
