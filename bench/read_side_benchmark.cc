// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// //bench:read_side: the two pieces of a dispatch, timed apart.
//
//   bazel run //bench:read_side
//
//   BM_ReadSection              entering and leaving one RCU read-side
//                               critical section (internal::ReadSection: the
//                               registration check plus liburcu memb's
//                               read_lock / read_unlock), nothing inside.
//   BM_Search/<layout>/keys:<n> one search of n sorted 64-bit range bases for
//                               a random address, for the two layouts of
//                               include/vm_device/internal/range_search.h:
//                               `binary` (FindFloor over the sorted array) and
//                               `eytzinger` (EytzingerFloor, the RCU table's).
//                               Addresses come from a stream generated before
//                               timing; consecutive searches are independent,
//                               so this measures throughput on a hot table.
//
// README.md quotes these figures for the cost of the read side and for the
// choice of search layout.

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

void BM_ReadSection(benchmark::State& state) {
  internal::EnsureRegistered();
  for (auto _ : state) {
    internal::ReadSection read_side;
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_ReadSection);

// n range bases 8 KiB apart, in sorted and in Eytzinger order (64-byte
// aligned, as in the RCU table), and a stream of addresses inside them.
struct Keys {
  explicit Keys(size_t n)
      : n(n), levels(range_search_internal::EytzingerLevels(n)) {
    for (size_t i = 0; i < n; ++i) sorted.push_back(0x10000000 + i * 0x2000);
    eytzinger = static_cast<uint64_t*>(::operator new(
        ((n + 1) * sizeof(uint64_t) + 63) / 64 * 64, std::align_val_t(64)));
    eytzinger[0] = 0;
    range_search_internal::ForEachEytzingerSlot(
        n, [&](size_t node, size_t i) { eytzinger[node] = sorted[i]; });
    std::mt19937_64 rng(1);
    for (auto& a : stream) a = sorted[rng() % n] + rng() % 0x1000;
  }
  ~Keys() { ::operator delete(eytzinger, std::align_val_t(64)); }

  size_t n;
  size_t levels;
  std::vector<uint64_t> sorted;
  uint64_t* eytzinger;
  std::vector<uint64_t> stream = std::vector<uint64_t>(1 << 16);
};

void BM_SearchBinary(benchmark::State& state) {
  const Keys keys(static_cast<size_t>(state.range(0)));
  size_t i = 0;
  for (auto _ : state) {
    size_t r = range_search_internal::FindFloor(keys.sorted.data(), keys.n,
                                                keys.stream[i]);
    benchmark::DoNotOptimize(r);
    i = (i + 1) & (keys.stream.size() - 1);
  }
}
BENCHMARK(BM_SearchBinary)
    ->Name("BM_Search/binary")
    ->ArgName("keys")
    ->Arg(16)
    ->Arg(256)
    ->Arg(4096);

void BM_SearchEytzinger(benchmark::State& state) {
  const Keys keys(static_cast<size_t>(state.range(0)));
  size_t i = 0;
  for (auto _ : state) {
    size_t r = range_search_internal::EytzingerFloor(
        keys.eytzinger, keys.n, keys.levels, keys.stream[i]);
    benchmark::DoNotOptimize(r);
    i = (i + 1) & (keys.stream.size() - 1);
  }
}
BENCHMARK(BM_SearchEytzinger)
    ->Name("BM_Search/eytzinger")
    ->ArgName("keys")
    ->Arg(16)
    ->Arg(256)
    ->Arg(4096);

}  // namespace
}  // namespace vm_device

BENCHMARK_MAIN();
