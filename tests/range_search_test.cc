// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The search arithmetic shared by Bus<A, D> and the RCU range table:
// FindFloor() on sorted keys and EytzingerFloor() on the same keys laid out
// by ForEachEytzingerSlot() must give the same answer for every table size
// and every probe, including both ends of the key type.

#include "vm_device/internal/range_search.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vm_device {
namespace {

using range_search_internal::EytzingerFloor;
using range_search_internal::EytzingerLevels;
using range_search_internal::FindFloor;
using range_search_internal::ForEachEytzingerSlot;

TEST(RangeSearch, EytzingerLevelsCountsCompleteLevels) {
  EXPECT_EQ(EytzingerLevels(0), 0u);
  EXPECT_EQ(EytzingerLevels(1), 1u);
  EXPECT_EQ(EytzingerLevels(2), 1u);
  EXPECT_EQ(EytzingerLevels(3), 2u);
  EXPECT_EQ(EytzingerLevels(6), 2u);
  EXPECT_EQ(EytzingerLevels(7), 3u);
  EXPECT_EQ(EytzingerLevels(4095), 12u);
  EXPECT_EQ(EytzingerLevels(4096), 12u);
}

TEST(RangeSearch, EveryNodeVisitedOnceInSortedOrder) {
  for (size_t n = 0; n < 100; ++n) {
    std::vector<int> seen(n + 1, 0);
    size_t expected_sorted = 0;
    ForEachEytzingerSlot(n, [&](size_t node, size_t sorted) {
      ASSERT_GE(node, 1u);
      ASSERT_LE(node, n);
      EXPECT_EQ(sorted, expected_sorted++);
      ++seen[node];
    });
    EXPECT_EQ(expected_sorted, n);
    for (size_t k = 1; k <= n; ++k) EXPECT_EQ(seen[k], 1) << "n=" << n;
  }
}

// Checks EytzingerFloor against FindFloor on `sorted` for the probes.
template <typename V>
void ExpectSameFloors(const std::vector<V>& sorted,
                      const std::vector<V>& probes) {
  const size_t n = sorted.size();
  std::vector<V> eytz(n + 1, 0);
  std::vector<size_t> rank(n + 1, 0);
  ForEachEytzingerSlot(n, [&](size_t node, size_t i) {
    eytz[node] = sorted[i];
    rank[node] = i;
  });
  const size_t levels = EytzingerLevels(n);
  for (V x : probes) {
    const size_t f = FindFloor(sorted.data(), n, x);
    const size_t e = EytzingerFloor(eytz.data(), n, levels, x);
    if (f == n) {
      EXPECT_EQ(e, 0u) << "n=" << n << " x=" << uint64_t{x};
    } else {
      ASSERT_NE(e, 0u) << "n=" << n << " x=" << uint64_t{x};
      EXPECT_EQ(rank[e], f) << "n=" << n << " x=" << uint64_t{x};
    }
  }
}

TEST(RangeSearch, EytzingerMatchesBinarySearchForEverySize) {
  std::mt19937_64 rng(7);
  for (size_t n = 0; n <= 300; ++n) {
    std::vector<uint64_t> sorted;
    uint64_t next = 5;
    for (size_t i = 0; i < n; ++i) {
      sorted.push_back(next);
      next += 1 + rng() % 9;
    }
    std::vector<uint64_t> probes = {
        0, 4, 5, 6, next, next + 1, std::numeric_limits<uint64_t>::max()};
    for (uint64_t s : sorted) {
      probes.push_back(s);
      probes.push_back(s - 1);
      probes.push_back(s + 1);
    }
    ExpectSameFloors(sorted, probes);
  }
}

TEST(RangeSearch, EytzingerHandlesKeysAtBothEndsOfTheType) {
  const std::vector<uint16_t> pio = {0, 1, 0x3f8, 0xfffe, 0xffff};
  ExpectSameFloors<uint16_t>(pio, {0, 1, 2, 0x3f7, 0x3f8, 0xfffe, 0xffff});
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  const std::vector<uint64_t> mmio = {0, max - 1, max};
  ExpectSameFloors<uint64_t>(mmio, {0, 1, max - 2, max - 1, max});
}

TEST(RangeSearch, LargeTablesUseThePrefetchingPathCorrectly) {
  std::mt19937_64 rng(11);
  for (size_t n : {31u, 32u, 33u, 127u, 128u, 1000u, 4096u, 5000u}) {
    std::vector<uint64_t> sorted;
    uint64_t next = rng() % 100;
    for (size_t i = 0; i < n; ++i) {
      sorted.push_back(next);
      next += 1 + rng() % 1000;
    }
    std::vector<uint64_t> probes;
    for (int i = 0; i < 5000; ++i) probes.push_back(rng() % (next + 10));
    ExpectSameFloors(sorted, probes);
    std::vector<uint16_t> small;
    for (size_t i = 0; i < n && i < 60000; ++i)
      small.push_back(uint16_t(i * 13 % 65536));
    std::sort(small.begin(), small.end());
    small.erase(std::unique(small.begin(), small.end()), small.end());
    std::vector<uint16_t> pprobes;
    for (int i = 0; i < 5000; ++i) pprobes.push_back(uint16_t(rng()));
    ExpectSameFloors(small, pprobes);
  }
}

}  // namespace
}  // namespace vm_device
