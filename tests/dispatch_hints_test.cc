// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Dispatch hints (IoManager::SetDispatchHints, src/internal/range_table.h
// BusHint): a dispatching thread's remembered ranges must never route an
// access differently from a search of the snapshot the dispatch loaded.
//
//   * single-threaded: hits, moves, re-registration of another device at the
//     same sorted index, a range split into two, alternating managers, and
//     hints off;
//   * lockstep rounds: a writer moves ranges (so every sorted index shifts)
//     and swaps devices while readers wait; then readers, whose hints point
//     into the previous snapshot, dispatch and must see exactly the new map;
//   * free-running: readers dispatch to a few hot ranges (hints hit) while a
//     writer moves and re-registers them flat out; every access must reach a
//     device that held the address at one of the placements the writer uses,
//     with the right base and offset, or no device.
// Run plain, under TSan and under ASan (CI).

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/barrier.h"
#include "gtest/gtest.h"
#include "vm_device/vcpu_thread.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

// What this thread's last handler call saw.
struct Seen {
  const void* device = nullptr;
  uint64_t base = 0;
  uint64_t offset = 0;
};
thread_local Seen tls_seen;

class Recorder final : public DeviceMmio, public DevicePio {
 public:
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    tls_seen = {this, base.value(), offset};
    data[0] = 1;
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t>) const override {
    tls_seen = {this, base.value(), offset};
  }
  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    tls_seen = {this, base.value(), offset};
    data[0] = 1;
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t>) const override {
    tls_seen = {this, base.value(), offset};
  }
};

MmioRange Mmio(uint64_t base, uint64_t size) {
  return *MmioRange::Create(MmioAddress(base), size);
}
PioRange Pio(uint16_t base, uint16_t size) {
  return *PioRange::Create(PioAddress(base), size);
}

// Reads 4 bytes at `addr`; returns the device called (null if none) and
// checks base and offset against `want_base` when one was called.
const void* ReadAt(const IoManager& m, uint64_t addr) {
  uint8_t buf[4] = {};
  tls_seen = Seen();
  const IoStatus s = m.MmioRead(MmioAddress(addr), absl::MakeSpan(buf));
  if (s != IoStatus::kOk) return nullptr;
  EXPECT_EQ(tls_seen.offset, addr - tls_seen.base);
  return tls_seen.device;
}

TEST(DispatchHints, OnByDefaultAndSwitchable) {
  IoManager m;
  EXPECT_TRUE(m.dispatch_hints());
  m.SetDispatchHints(false);
  EXPECT_FALSE(m.dispatch_hints());
  m.SetDispatchHints(true);
  EXPECT_TRUE(m.dispatch_hints());
}

TEST(DispatchHints, FollowMovesAndReplacedDevices) {
  for (bool hints : {true, false}) {
    IoManager m;
    m.SetDispatchHints(hints);
    auto a = std::make_shared<Recorder>();
    auto b = std::make_shared<Recorder>();
    auto c = std::make_shared<Recorder>();
    ASSERT_TRUE(m.RegisterMmio(Mmio(0x1000, 0x100), a).ok());
    ASSERT_TRUE(m.RegisterMmio(Mmio(0x2000, 0x100), b).ok());
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(ReadAt(m, 0x1010), a.get());  // hint on a's index
      EXPECT_EQ(ReadAt(m, 0x2010), b.get());  // then b's
    }
    // a moves above b: a's old index now holds b, b's holds a.
    ASSERT_TRUE(m.MoveMmio(MmioAddress(0x1000), MmioAddress(0x3000)).ok());
    EXPECT_EQ(ReadAt(m, 0x1010), nullptr);
    EXPECT_EQ(ReadAt(m, 0x2010), b.get());
    EXPECT_EQ(ReadAt(m, 0x3010), a.get());
    EXPECT_EQ(tls_seen.base, 0x3000u);
    // Another device at the very same range and index.
    ASSERT_TRUE(m.DeregisterMmio(MmioAddress(0x2000)).ok());
    ASSERT_TRUE(m.RegisterMmio(Mmio(0x2000, 0x100), c).ok());
    EXPECT_EQ(ReadAt(m, 0x2010), c.get());
    // The hinted range shrinks: an access past its new end finds nothing,
    // and an access straddling the end is refused.
    ASSERT_TRUE(m.DeregisterMmio(MmioAddress(0x2000)).ok());
    ASSERT_TRUE(m.RegisterMmio(Mmio(0x2000, 0x10), c).ok());
    EXPECT_EQ(ReadAt(m, 0x2010), nullptr);
    EXPECT_EQ(ReadAt(m, 0x200e), nullptr);  // 4 bytes cross 0x200f
    EXPECT_EQ(ReadAt(m, 0x200c), c.get());
    // Everything gone.
    ASSERT_TRUE(m.DeregisterMmio(MmioAddress(0x2000)).ok());
    ASSERT_TRUE(m.DeregisterMmio(MmioAddress(0x3000)).ok());
    EXPECT_EQ(ReadAt(m, 0x2010), nullptr);
    EXPECT_EQ(ReadAt(m, 0x3010), nullptr);
  }
}

TEST(DispatchHints, AlternatingManagersAndBuses) {
  IoManager m1, m2;
  auto a = std::make_shared<Recorder>();
  auto b = std::make_shared<Recorder>();
  ASSERT_TRUE(m1.RegisterMmio(Mmio(0x1000, 0x100), a).ok());
  ASSERT_TRUE(m2.RegisterMmio(Mmio(0x1000, 0x100), b).ok());
  ASSERT_TRUE(m2.RegisterMmio(Mmio(0x5000, 0x100), a).ok());
  ASSERT_TRUE(m1.RegisterPio(Pio(0x3f8, 8), b).ok());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(ReadAt(m1, 0x1004), a.get());
    EXPECT_EQ(ReadAt(m2, 0x1004), b.get());
    EXPECT_EQ(ReadAt(m1, 0x5004), nullptr);
    EXPECT_EQ(ReadAt(m2, 0x5004), a.get());
    uint8_t buf[1];
    tls_seen = Seen();
    EXPECT_EQ(m1.PioRead(PioAddress(0x3f9), absl::MakeSpan(buf)),
              IoStatus::kOk);
    EXPECT_EQ(tls_seen.device, b.get());
    EXPECT_EQ(m2.PioRead(PioAddress(0x3f9), absl::MakeSpan(buf)),
              IoStatus::kDeviceNotFound);
  }
}

// The map of round r of the lockstep test: kRanges ranges of 0x100 bytes;
// range i sits at slot (i + r) % kSlots of kSlots slots 0x1000 apart, and
// device (i + r) % kDevices serves it. Every round shifts every sorted index.
constexpr int kRanges = 24;
constexpr int kSlots = 40;
constexpr int kDevices = 5;
constexpr uint64_t kBase = 0x100000;

uint64_t SlotBase(int slot) { return kBase + uint64_t(slot) * 0x1000; }

TEST(DispatchHints, ReadersNeverFollowAHintIntoTheWrongRange) {
  IoManager m;
  std::vector<std::shared_ptr<Recorder>> devices;
  for (int i = 0; i < kDevices; ++i) {
    devices.push_back(std::make_shared<Recorder>());
  }
  auto apply = [&](int round) {
    IoBatch batch;
    if (round > 0) {
      for (int i = 0; i < kRanges; ++i) {
        batch.RemoveMmio(MmioAddress(SlotBase((i + round - 1) % kSlots)));
      }
    }
    for (int i = 0; i < kRanges; ++i) {
      batch.AddMmio(Mmio(SlotBase((i + round) % kSlots), 0x100),
                    devices[(i + round) % kDevices]);
    }
    ASSERT_TRUE(m.Commit(std::move(batch)).ok());
  };
  constexpr int kRounds = 60;
  constexpr int kReaders = 4;
  absl::Barrier* start[kRounds];
  absl::Barrier* done[kRounds];
  for (int r = 0; r < kRounds; ++r) {
    start[r] = new absl::Barrier(kReaders + 1);
    done[r] = new absl::Barrier(kReaders + 1);
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < kReaders; ++t) {
    readers.emplace_back([&, t] {
      VcpuThread rcu;
      std::mt19937_64 rng(t);
      for (int r = 0; r < kRounds; ++r) {
        if (start[r]->Block()) delete start[r];
        // Each slot a few times in a row (hints hit), in random order.
        for (int k = 0; k < 200; ++k) {
          const int slot = static_cast<int>(rng() % kSlots);
          const uint64_t addr = SlotBase(slot) + (rng() % 0x40) * 4;
          // Which range sits at `slot` in round r, if any.
          const int i = ((slot - r) % kSlots + kSlots) % kSlots;
          const void* want =
              i < kRanges ? devices[(i + r) % kDevices].get() : nullptr;
          for (int rep = 0; rep < 3; ++rep) {
            if (ReadAt(m, addr) != want ||
                (want != nullptr && tls_seen.base != SlotBase(slot))) {
              failures.fetch_add(1, std::memory_order_relaxed);
            }
          }
        }
        if (done[r]->Block()) delete done[r];
      }
    });
  }
  for (int r = 0; r < kRounds; ++r) {
    apply(r);
    if (start[r]->Block()) delete start[r];
    if (done[r]->Block()) delete done[r];
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(DispatchHints, HotRangesUnderFlatOutMovesAndReRegistration) {
  // Range i moves between slots 2i and 2i + 1 (its device stays), or is
  // deregistered and registered again with device i's twin. An access to
  // slot s may reach range s / 2's device or twin, based at s, or nothing.
  constexpr int kHot = 6;
  IoManager m;
  std::vector<std::shared_ptr<Recorder>> dev, twin;
  for (int i = 0; i < kHot; ++i) {
    dev.push_back(std::make_shared<Recorder>());
    twin.push_back(std::make_shared<Recorder>());
    ASSERT_TRUE(m.RegisterMmio(Mmio(SlotBase(2 * i), 0x100), dev[i]).ok());
  }
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<uint64_t> hits{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      VcpuThread rcu;
      std::mt19937_64 rng(100 + t);
      uint64_t mine = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const int slot = static_cast<int>(rng() % (2 * kHot));
        const uint64_t addr = SlotBase(slot) + (rng() % 0x40) * 4;
        for (int rep = 0; rep < 8; ++rep) {
          const void* got = ReadAt(m, addr);
          if (got == nullptr) continue;
          ++mine;
          const int i = slot / 2;
          if ((got != dev[i].get() && got != twin[i].get()) ||
              tls_seen.base != SlotBase(slot)) {
            failures.fetch_add(1, std::memory_order_relaxed);
          }
        }
      }
      hits.fetch_add(mine, std::memory_order_relaxed);
    });
  }
  std::thread writer([&] {
    std::mt19937_64 rng(9);
    std::vector<int> at(kHot, 0);  // 0: slot 2i, 1: slot 2i + 1
    std::vector<bool> is_twin(kHot, false);
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < end) {
      const int i = static_cast<int>(rng() % kHot);
      const uint64_t from = SlotBase(2 * i + at[i]);
      if (rng() % 2 == 0) {
        at[i] ^= 1;
        if (!m.MoveMmio(MmioAddress(from), MmioAddress(SlotBase(2 * i + at[i])))
                 .ok()) {
          failures.fetch_add(1000, std::memory_order_relaxed);
        }
      } else {
        is_twin[i] = !is_twin[i];
        IoBatch batch;
        batch.RemoveMmio(MmioAddress(from))
            .AddMmio(Mmio(from, 0x100), is_twin[i] ? twin[i] : dev[i]);
        if (!m.Commit(std::move(batch)).ok()) {
          failures.fetch_add(1000, std::memory_order_relaxed);
        }
      }
    }
    stop.store(true, std::memory_order_relaxed);
  });
  writer.join();
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(hits.load(), 0u);
  EXPECT_GT(m.stats().publishes, 10u);
}

}  // namespace
}  // namespace vm_device
