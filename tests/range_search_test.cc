// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The search arithmetic shared by Bus<A, D> and the RCU range table:
// FindFloor() on sorted keys, EytzingerFloor() on the same keys laid out by
// ForEachEytzingerSlot(), and BTreeFloor() on the B+-tree FillBTree() builds
// must give the same answer for every table size and every probe, including
// both ends of the key type; and no search may read or prefetch outside its
// array (a recording probe checks every address; arrays placed against
// PROT_NONE pages catch stray loads of the plain search).

#include "vm_device/internal/range_search.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace vm_device {
namespace {

using range_search_internal::BTreeFloor;
using range_search_internal::BTreeShape;
using range_search_internal::EytzingerFloor;
using range_search_internal::EytzingerLevels;
using range_search_internal::FillBTree;
using range_search_internal::FindFloor;
using range_search_internal::ForEachEytzingerSlot;
using range_search_internal::kKeysPerNode;
using range_search_internal::LeafPrefetch;

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

// ---------------------------------------------------------------------------
// The B+-tree
// ---------------------------------------------------------------------------

template <typename V>
std::vector<V> BuildTree(const std::vector<V>& sorted, BTreeShape* shape) {
  *shape = BTreeShape::For<V>(sorted.size());
  std::vector<V> nodes(shape->nodes * kKeysPerNode<V>, 0);
  FillBTree(*shape, sorted, nodes.data());
  return nodes;
}

// Checks BTreeFloor against FindFloor on `sorted` for the probes.
template <typename V>
void ExpectSameBTreeFloors(const std::vector<V>& sorted,
                           const std::vector<V>& probes) {
  BTreeShape shape;
  const std::vector<V> nodes = BuildTree(sorted, &shape);
  const size_t n = sorted.size();
  if (n > 0) {
    const V* leaves = shape.Leaves(nodes.data());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(leaves[i], sorted[i]);
  }
  for (V x : probes) {
    ASSERT_EQ(BTreeFloor(nodes.data(), shape, x),
              FindFloor(sorted.data(), n, x))
        << "n=" << n << " x=" << uint64_t{x};
  }
}

TEST(RangeSearch, BTreeShapeHasOneRootAndPaddedLeaves) {
  EXPECT_EQ(BTreeShape::For<uint64_t>(0).height, 0u);
  const BTreeShape one = BTreeShape::For<uint64_t>(1);
  EXPECT_EQ(one.height, 1u);
  EXPECT_EQ(one.nodes, 1u);
  const BTreeShape s4096 = BTreeShape::For<uint64_t>(4096);
  EXPECT_EQ(s4096.count[0], 1u);
  EXPECT_EQ(s4096.count[s4096.height - 1], 512u);  // 4096 / 8 leaves
  EXPECT_EQ(s4096.height, 4u);                     // 512 -> 57 -> 7 -> 1
  EXPECT_EQ(BTreeShape::For<uint64_t>(65536).height, 6u);
  EXPECT_EQ(BTreeShape::For<uint16_t>(4096).height, 3u);  // 128 -> 4 -> 1
  EXPECT_EQ(BTreeShape::For<uint16_t>(65536).height, 4u);
}

TEST(RangeSearch, BTreeMatchesBinarySearchForEverySize) {
  std::mt19937_64 rng(13);
  for (size_t n = 0; n <= 700; ++n) {
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
    ExpectSameBTreeFloors(sorted, probes);
    std::vector<uint16_t> pio;
    for (uint64_t s : sorted) pio.push_back(static_cast<uint16_t>(s));
    std::vector<uint16_t> pprobes;
    for (uint64_t p : probes) pprobes.push_back(static_cast<uint16_t>(p));
    pprobes.push_back(0xffff);
    ExpectSameBTreeFloors(pio, pprobes);
  }
}

TEST(RangeSearch, BTreeHandlesKeysAtBothEndsOfTheType) {
  // The largest key value is also the padding: x == max must still find the
  // last real key, never a padded one, and never leave the array.
  ExpectSameBTreeFloors<uint16_t>({0, 1, 0x3f8, 0xfffe, 0xffff},
                                  {0, 1, 2, 0x3f7, 0x3f8, 0xfffe, 0xffff});
  ExpectSameBTreeFloors<uint16_t>({7}, {0, 6, 7, 8, 0xffff});
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  ExpectSameBTreeFloors<uint64_t>({0, max - 1, max},
                                  {0, 1, max - 2, max - 1, max});
  for (size_t n : {8u, 9u, 72u, 73u, 648u, 1000u}) {
    std::vector<uint64_t> sorted;
    for (size_t i = 0; i < n; ++i) sorted.push_back(max - (n - 1 - i) * 3);
    ExpectSameBTreeFloors<uint64_t>(
        sorted, {0, max - 1, max, sorted[0], sorted[0] - 1});
    std::vector<uint16_t> pio;
    for (size_t i = 0; i < n; ++i)
      pio.push_back(static_cast<uint16_t>(0xffff - (n - 1 - i)));
    ExpectSameBTreeFloors<uint16_t>(
        pio, {0, 0xfffe, 0xffff, pio[0], static_cast<uint16_t>(pio[0] - 1)});
  }
}

TEST(RangeSearch, BTreeMatchesOnLargeTables) {
  std::mt19937_64 rng(17);
  for (size_t n : {4096u, 5000u, 65536u}) {
    std::vector<uint64_t> sorted;
    uint64_t next = rng() % 100;
    for (size_t i = 0; i < n; ++i) {
      sorted.push_back(next);
      next += 1 + rng() % 1000;
    }
    std::vector<uint64_t> probes;
    for (int i = 0; i < 20000; ++i) probes.push_back(rng() % (next + 10));
    ExpectSameBTreeFloors(sorted, probes);
  }
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<uint16_t> pprobes(all.begin(), all.end());
  ExpectSameBTreeFloors(all, pprobes);
}

// ---------------------------------------------------------------------------
// No access outside the arrays
// ---------------------------------------------------------------------------

// The array a search may touch, and what it touched outside it. One per
// thread; set by ScopedBounds.
struct Bounds {
  const char* lo = nullptr;
  const char* hi = nullptr;  // one past the end
  int accesses = 0;
  std::vector<std::string> outside;
};
thread_local Bounds* tls_bounds = nullptr;

class ScopedBounds {
 public:
  template <typename V>
  ScopedBounds(const V* array, size_t elements) {
    bounds_.lo = reinterpret_cast<const char*>(array);
    bounds_.hi = bounds_.lo + elements * sizeof(V);
    tls_bounds = &bounds_;
  }
  ~ScopedBounds() { tls_bounds = nullptr; }
  const Bounds& bounds() const { return bounds_; }

 private:
  Bounds bounds_;
};

void Touch(const char* what, const void* p, size_t bytes) {
  Bounds& b = *tls_bounds;
  ++b.accesses;
  const char* c = static_cast<const char*>(p);
  if (c < b.lo || c + bytes > b.hi) {
    b.outside.push_back(std::string(what) + " at offset " +
                        std::to_string(c - b.lo) + " (" +
                        std::to_string(bytes) + " bytes)");
  }
}

// CheckingProbe: the searches' Probe, recording every load, node read and
// prefetch, and doing none of the prefetches.
struct CheckingProbe {
  template <typename V>
  static V Load(const V* p) {
    Touch("load", p, sizeof(V));
    return *p;
  }
  static void Prefetch(const void* p) { Touch("prefetch", p, 1); }
  template <size_t kCount, typename V>
  static const V* Node(const V* p) {
    Touch("node", p, kCount * sizeof(V));
    return p;
  }
};

// The Eytzinger search as it was before it clamped its prefetch, kept here
// to show that the checks below catch what it did.
template <typename V, typename Probe>
size_t UnclampedEytzingerFloor(const V* keys, size_t n, size_t levels, V x) {
  constexpr size_t kPerLine = 64 / sizeof(V);
  size_t k = 1;
  size_t floor = 0;
  for (size_t level = 0; level < levels; ++level) {
    Probe::Prefetch(keys + k * kPerLine);
    const bool right = Probe::Load(keys + k) <= x;
    floor = right ? k : floor;
    k = 2 * k + static_cast<size_t>(right);
  }
  const size_t last = k <= n ? k : 0;
  const bool right = last != 0 && Probe::Load(keys + last) <= x;
  return right ? last : floor;
}

struct Tables {
  explicit Tables(size_t n) {
    std::mt19937_64 rng(n);
    uint64_t next = 1 + rng() % 50;
    for (size_t i = 0; i < n; ++i) {
      sorted.push_back(next);
      next += 1 + rng() % 5000;
    }
    eytz.assign(n + 1, 0);
    ForEachEytzingerSlot(
        n, [&](size_t node, size_t i) { eytz[node] = sorted[i]; });
    nodes = BuildTree(sorted, &shape);
    for (int i = 0; i < 3000; ++i) probes.push_back(rng() % (next + 10));
    probes.push_back(0);
    probes.push_back(std::numeric_limits<uint64_t>::max());
    for (uint64_t s : sorted) probes.push_back(s);
  }
  std::vector<uint64_t> sorted, eytz, nodes, probes;
  BTreeShape shape;
};

TEST(RangeSearch, CheckingProbeCatchesAnOutOfBoundsPrefetch) {
  // The test below can fail: the old, unclamped prefetch is caught.
  const Tables t(4096);
  ScopedBounds scope(t.eytz.data(), t.eytz.size());
  for (uint64_t x : t.probes) {
    UnclampedEytzingerFloor<uint64_t, CheckingProbe>(
        t.eytz.data(), t.sorted.size(), EytzingerLevels(t.sorted.size()), x);
  }
  EXPECT_GT(scope.bounds().accesses, 0);
  EXPECT_FALSE(scope.bounds().outside.empty());
}

TEST(RangeSearch, NoSearchTouchesOrPrefetchesOutsideItsArray) {
  for (size_t n : {0u, 1u, 7u, 8u, 9u, 31u, 32u, 33u, 100u, 128u, 1000u, 4095u,
                   4096u, 4097u, 65536u}) {
    const Tables t(n);
    {
      ScopedBounds scope(t.sorted.data(), t.sorted.size());
      for (uint64_t x : t.probes) {
        FindFloor<uint64_t, CheckingProbe>(t.sorted.data(), n, x);
      }
      EXPECT_EQ(scope.bounds().outside, std::vector<std::string>{})
          << "binary, n=" << n;
    }
    {
      ScopedBounds scope(t.eytz.data(), t.eytz.size());
      for (uint64_t x : t.probes) {
        EytzingerFloor<uint64_t, CheckingProbe>(t.eytz.data(), n,
                                                EytzingerLevels(n), x);
      }
      EXPECT_EQ(scope.bounds().outside, std::vector<std::string>{})
          << "eytzinger, n=" << n;
    }
    {
      ScopedBounds scope(t.nodes.data(), t.nodes.size());
      for (uint64_t x : t.probes) {
        EXPECT_EQ(
            (BTreeFloor<uint64_t, CheckingProbe>(t.nodes.data(), t.shape, x)),
            FindFloor(t.sorted.data(), n, x));
      }
      EXPECT_EQ(scope.bounds().outside, std::vector<std::string>{})
          << "btree, n=" << n;
      if (n > 0) {
        EXPECT_GT(scope.bounds().accesses, 0);
      }
    }
    // PIO keys: 32 per node.
    std::vector<uint16_t> pio;
    for (size_t i = 0; i < n && i < 65536; ++i)
      pio.push_back(static_cast<uint16_t>(i));
    BTreeShape shape;
    const std::vector<uint16_t> nodes = BuildTree(pio, &shape);
    ScopedBounds scope(nodes.data(), nodes.size());
    for (uint32_t x = 0; x <= 0xffff; x += 7) {
      BTreeFloor<uint16_t, CheckingProbe>(nodes.data(), shape,
                                          static_cast<uint16_t>(x));
    }
    BTreeFloor<uint16_t, CheckingProbe>(nodes.data(), shape, 0xffff);
    EXPECT_EQ(scope.bounds().outside, std::vector<std::string>{})
        << "btree pio, n=" << n;
  }
}

// The leaf hook sees the leaf that holds the answer, once per search.
TEST(RangeSearch, BTreeCallsTheLeafHookOnceWithTheFloorsLeaf) {
  for (size_t n : {0u, 1u, 7u, 8u, 9u, 72u, 73u, 1000u, 4096u, 65536u}) {
    const Tables t(n);
    for (uint64_t x : t.probes) {
      std::vector<size_t> leaves;
      const size_t floor =
          BTreeFloor<uint64_t>(t.nodes.data(), t.shape, x,
                               [&leaves](size_t k) { leaves.push_back(k); });
      if (n == 0) {
        EXPECT_EQ(leaves.size(), 0u);
        continue;
      }
      ASSERT_EQ(leaves.size(), 1u) << "n=" << n << " x=" << x;
      const size_t want = floor == n ? 0 : floor / kKeysPerNode<uint64_t>;
      EXPECT_EQ(leaves[0], want) << "n=" << n << " x=" << x;
    }
  }
}

// LeafPrefetch prefetches the leaf's entries, never past the last one, and
// only for MMIO keys on arrays of at least kMinBytes.
TEST(RangeSearch, LeafPrefetchStaysInsideTheEntries) {
  struct Entry {
    uint64_t last;
    const void* device;
  };
  static_assert(sizeof(Entry) == 16);
  constexpr size_t kMin = LeafPrefetch<uint64_t, Entry>::kMinBytes;
  for (size_t n : std::initializer_list<size_t>{
           1, 8, 9, 100, kMin / 16 - 1, kMin / 16, kMin / 16 + 1, kMin / 16 + 7,
           4096, 65535, 65536}) {
    std::vector<Entry> entries(n);
    const size_t leaves = (n + 7) / 8;
    ScopedBounds scope(entries.data(), entries.size());
    for (size_t k = 0; k < leaves; ++k) {
      LeafPrefetch<uint64_t, Entry, CheckingProbe>{entries.data(), n}(k);
    }
    EXPECT_EQ(scope.bounds().outside, std::vector<std::string>{}) << n;
    EXPECT_EQ(scope.bounds().accesses,
              n * sizeof(Entry) >= kMin ? static_cast<int>(2 * leaves) : 0)
        << n;
    // PIO: 32 keys a leaf, 512 bytes of entries: no prefetch.
    ScopedBounds pio(entries.data(), entries.size());
    for (size_t k = 0; k < (n + 31) / 32; ++k) {
      LeafPrefetch<uint16_t, Entry, CheckingProbe>{entries.data(), n}(k);
    }
    EXPECT_EQ(pio.bounds().accesses, 0) << n;
  }
}

// `bytes` of memory with a PROT_NONE page right before and right after it:
// a load outside faults. Placed at the end (`at_end`) or the start of its
// pages.
class Fenced {
 public:
  Fenced(size_t bytes, bool at_end) {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    inner_ = (bytes + page_ - 1) / page_ * page_;
    total_ = inner_ + 2 * page_;
    void* m =
        mmap(nullptr, total_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) std::abort();
    base_ = static_cast<char*>(m);
    if (mprotect(base_ + page_, inner_, PROT_READ | PROT_WRITE) != 0) {
      std::abort();
    }
    data_ = at_end ? base_ + page_ + inner_ - bytes : base_ + page_;
  }
  ~Fenced() { munmap(base_, total_); }
  void* data() const { return data_; }

 private:
  size_t page_, inner_, total_;
  char* base_;
  char* data_;
};

TEST(RangeSearch, SearchesRunAgainstGuardPages) {
  for (size_t n : {1u, 8u, 9u, 100u, 4096u, 4097u, 65536u}) {
    const Tables t(n);
    for (bool at_end : {true, false}) {
      const Fenced sorted(n * 8, at_end);
      std::memcpy(sorted.data(), t.sorted.data(), n * 8);
      const Fenced eytz((n + 1) * 8, at_end);
      std::memcpy(eytz.data(), t.eytz.data(), (n + 1) * 8);
      const Fenced nodes(t.nodes.size() * 8, at_end);  // whole nodes: aligned
      std::memcpy(nodes.data(), t.nodes.data(), t.nodes.size() * 8);
      for (uint64_t x : t.probes) {
        const size_t f =
            FindFloor(static_cast<const uint64_t*>(sorted.data()), n, x);
        EytzingerFloor(static_cast<const uint64_t*>(eytz.data()), n,
                       EytzingerLevels(n), x);
        ASSERT_EQ(
            BTreeFloor(static_cast<const uint64_t*>(nodes.data()), t.shape, x),
            f);
      }
    }
  }
}

}  // namespace
}  // namespace vm_device
