// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Concurrency stress tests of IoManager: 2 x cores vCPU threads dispatch
// without pause while a writer registers, deregisters and moves devices, and
// a device that moves its own range from inside its handler.
//
// Every access is checked exactly (see tests/hotplug_harness.h): it reached a
// device that was registered on a window holding the address at some moment
// of the access, or "no device" when, at some moment, none was. Devices count
// handlers in flight; none may be destroyed while one runs, and every device
// the test built is destroyed once the test drops it and synchronizes.
//
// VM_DEVICE_STRESS_SECONDS sets each test's run time (default 3 s).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "tests/hotplug_harness.h"
#include "vm_device/vcpu_thread.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

using hotplug_harness::Clock;
using hotplug_harness::Failures;
using hotplug_harness::Harness;
using hotplug_harness::SecondsFromEnv;
using hotplug_harness::SlotLog;

double StressSeconds() { return SecondsFromEnv("VM_DEVICE_STRESS_SECONDS", 3); }

int ReaderThreads() {
  return 2 *
         static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
}

TEST(IoManagerStress, AccessesReachOwnersWhileWriterChangesDevices) {
  auto manager = std::make_unique<IoManager>();
  Harness h(manager.get(), /*seed=*/20240601);
  std::atomic<bool> stop{false};

  std::vector<std::thread> readers;
  for (int i = 0; i < ReaderThreads(); ++i) {
    readers.emplace_back([&, i] {
      VcpuThread rcu;
      std::mt19937_64 rng(1000 + i);
      while (!stop.load(std::memory_order_relaxed)) h.Access(rng);
    });
  }
  std::thread writer([&] {
    std::mt19937_64 rng(7);
    while (!stop.load(std::memory_order_relaxed)) {
      std::lock_guard<std::mutex> l(h.mu);
      switch (rng() % 5) {
        case 0:
        case 1:
          h.OpRegister(rng);
          break;
        case 2:
          h.OpDeregister(rng);
          break;
        case 3:
          h.OpMove(rng, /*two_step=*/false);
          break;
        case 4:
          h.OpMove(rng, /*two_step=*/true);
          break;
      }
    }
  });

  std::this_thread::sleep_for(std::chrono::duration<double>(StressSeconds()));
  stop = true;
  writer.join();
  for (auto& t : readers) t.join();

  h.TearDown();
  ASSERT_TRUE(manager->Synchronize().ok());
  const auto& c = h.counters();
  const auto& a = h.accesses();
  std::printf(
      "accesses %llu (routed %llu, no device %llu), changes %llu, devices "
      "built %llu\n",
      static_cast<unsigned long long>(a.total.load()),
      static_cast<unsigned long long>(a.routed.load()),
      static_cast<unsigned long long>(a.no_device.load()),
      static_cast<unsigned long long>(h.changes()),
      static_cast<unsigned long long>(c.constructed.load()));

  EXPECT_EQ(h.failures().count(), 0u) << h.failures().first();
  EXPECT_EQ(a.misrouted.load(), 0u);
  EXPECT_EQ(a.wrong_no_device.load(), 0u);
  EXPECT_EQ(a.total.load(), a.routed.load() + a.no_device.load());
  // The run must have exercised both outcomes and many changes.
  EXPECT_GT(a.routed.load(), 1000u);
  EXPECT_GT(a.no_device.load(), 1000u);
  EXPECT_GT(h.changes(), 100u);
  EXPECT_EQ(c.destroyed_in_handler.load(), 0u);
  EXPECT_EQ(c.handler_on_dead_device.load(), 0u);
  EXPECT_EQ(c.destroyed.load(), c.constructed.load());
  EXPECT_EQ(c.destroyed.load(), h.released());
  EXPECT_EQ(manager->stats().pio_ranges, 0u);
  EXPECT_EQ(manager->stats().mmio_ranges, 0u);
}

// A device that knows whether it is alive, for readers that hold it only
// through a visit.
class AliveDevice final : public DeviceMmio {
 public:
  explicit AliveDevice(int id) : id_(id) {}
  ~AliveDevice() override { alive_.store(false, std::memory_order_relaxed); }
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) const override {
    std::fill(data.begin(), data.end(), 0);
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {}
  // relaxed: a reader inside its read-side section must never see false
  // (the destructor runs only after the grace period); TSan checks the
  // ordering through the grace period itself.
  bool alive() const { return alive_.load(std::memory_order_relaxed); }
  int id() const { return id_; }

 private:
  const int id_;
  std::atomic<bool> alive_{true};
};

// Visit*Ranges walks one whole snapshot: while a writer adds and removes a
// group of ranges in single batches (one publish each) and moves one range,
// every visit sees the stable ranges, the group all there or all gone, bases
// in order without overlap, and only live devices.
TEST(IoManagerStress, VisitRangesSeesWholeSnapshotsWhileWriterChurns) {
  constexpr int kStable = 64, kGroup = 8;
  auto manager = std::make_unique<IoManager>();
  for (int i = 0; i < kStable; ++i) {
    auto r = MmioRange::Create(MmioAddress(0x10000ull * i), 0x100);
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE(
        manager->RegisterMmio(*r, std::make_shared<AliveDevice>(i)).ok());
  }
  // The range the writer moves, there before any reader starts.
  auto mover = MmioRange::Create(MmioAddress(0x8000), 0x10);
  ASSERT_TRUE(mover.ok());
  ASSERT_TRUE(manager
                  ->RegisterMmio(*mover,
                                 std::make_shared<AliveDevice>(kStable + kGroup))
                  .ok());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> visits{0}, bad{0}, with_group{0};

  std::vector<std::thread> readers;
  for (int t = 0; t < ReaderThreads(); ++t) {
    readers.emplace_back([&] {
      VcpuThread rcu;
      while (!stop.load(std::memory_order_relaxed)) {
        uint64_t prev_last = 0;
        bool first = true, ok = true;
        int stable = 0, group = 0, moving = 0;
        const size_t n = manager->VisitMmioRanges(
            [&](const MmioRange& r, const DeviceMmio& d) {
              const auto& dev = static_cast<const AliveDevice&>(d);
              if (!dev.alive()) ok = false;
              if (!first && r.base().value() <= prev_last) ok = false;
              first = false;
              prev_last = r.last().value();
              if (dev.id() < kStable) {
                ok = ok && r.base().value() == 0x10000ull * dev.id();
                ++stable;
              } else if (dev.id() < kStable + kGroup) {
                ++group;
              } else {
                ++moving;
              }
            });
        if (!ok || stable != kStable || (group != 0 && group != kGroup) ||
            moving != 1 || n != size_t(stable + group + moving)) {
          if (bad.fetch_add(1, std::memory_order_relaxed) < 5) {
            std::printf("bad visit: ok %d stable %d group %d moving %d n %zu\n",
                        ok, stable, group, moving, n);
          }
        }
        if (group == kGroup) with_group.fetch_add(1, std::memory_order_relaxed);
        visits.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::thread writer([&] {
    uint64_t at = 0x8000;
    bool added = false;
    for (uint64_t round = 0; !stop.load(std::memory_order_relaxed); ++round) {
      IoBatch batch;
      for (int g = 0; g < kGroup; ++g) {
        const uint64_t base = 0x10000ull * (2 * g + 1) + 0x1000;
        if (added) {
          batch.RemoveMmio(MmioAddress(base));
        } else {
          // A new device each time: the removed ones die after a grace
          // period while readers may still be visiting them.
          batch.AddMmio(*MmioRange::Create(MmioAddress(base), 0x100),
                        std::make_shared<AliveDevice>(kStable + g));
        }
      }
      ASSERT_TRUE(manager->Commit(std::move(batch)).ok());
      added = !added;
      const uint64_t to = 0x8000 + 0x10000ull * ((round + 1) % kStable);
      ASSERT_TRUE(manager->MoveMmio(MmioAddress(at), MmioAddress(to)).ok());
      at = to;
    }
  });

  std::this_thread::sleep_for(std::chrono::duration<double>(StressSeconds()));
  stop = true;
  writer.join();
  for (auto& t : readers) t.join();
  ASSERT_TRUE(manager->Synchronize().ok());
  std::printf("visits %llu (%llu with the group), changes published %llu\n",
              static_cast<unsigned long long>(visits.load()),
              static_cast<unsigned long long>(with_group.load()),
              static_cast<unsigned long long>(manager->stats().publishes));
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(visits.load(), 100u);
  EXPECT_GT(with_group.load(), 0u);
  EXPECT_LT(with_group.load(), visits.load());
}

// What the last SelfMovingDevice handler call on this thread saw.
struct MoverCall {
  int calls = 0;
  uint64_t base = 0;
  uint64_t offset = 0;
};
thread_local MoverCall tls_mover_call;

// A BAR-like device: a write of `k` at offset 0 moves its range to window
// `k`, from inside the handler, on the vCPU thread that wrote.
class SelfMovingDevice final : public DeviceMmio {
 public:
  static constexpr int kWindows = 8;
  static constexpr uint64_t kSize = 0x100;
  static uint64_t Base(int k) { return 0x10000 + 0x1000 * uint64_t(k); }

  SelfMovingDevice(IoManager* manager, Clock* clock,
                   std::vector<std::unique_ptr<SlotLog>>* logs,
                   Failures* failures)
      : manager_(manager), clock_(clock), logs_(logs), failures_(failures) {}

  int current() const { return current_.load(); }
  uint64_t moves() const { return moves_.load(); }

  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    Record(base, offset);
    std::fill(data.begin(), data.end(), uint8_t{0x5a});
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override {
    Record(base, offset);
    if (offset != 0 || data.empty()) return;
    const int from = current_.load();
    const int to = data[0] % kWindows;
    if (base.value() != Base(from)) {
      failures_->Add("the mover's write reached a stale base");
      return;
    }
    if (to == from || (*logs_)[to]->full()) return;
    (*logs_)[from]->BeginDeregister(*clock_);
    (*logs_)[to]->BeginRegister(*clock_, 1);
    // Inside this thread's read-side section: must neither deadlock nor wait.
    const absl::Status s = manager_->MoveMmio(MmioAddress(base.value() + 3),
                                              MmioAddress(Base(to)));
    (*logs_)[from]->EndDeregister(*clock_);
    (*logs_)[to]->EndRegister(*clock_);
    if (!s.ok()) failures_->Add("MoveMmio from the handler: " + s.ToString());
    current_.store(to);
    moves_.fetch_add(1);
  }

 private:
  static void Record(MmioAddress base, MmioAddressOffset offset) {
    ++tls_mover_call.calls;
    tls_mover_call.base = base.value();
    tls_mover_call.offset = offset;
  }

  IoManager* const manager_;
  Clock* const clock_;
  std::vector<std::unique_ptr<SlotLog>>* const logs_;
  Failures* const failures_;
  mutable std::atomic<int> current_{0};
  mutable std::atomic<uint64_t> moves_{0};
};

TEST(IoManagerStress, HandlerMovesItsOwnRangeWhileOthersDispatch) {
  IoManager manager;
  Clock clock;
  Failures failures;
  std::vector<std::unique_ptr<SlotLog>> logs;
  for (int k = 0; k < SelfMovingDevice::kWindows; ++k) {
    logs.push_back(std::make_unique<SlotLog>(1 << 16));
  }
  auto dev =
      std::make_shared<SelfMovingDevice>(&manager, &clock, &logs, &failures);
  logs[0]->BeginRegister(clock, 1);
  ASSERT_TRUE(manager
                  .RegisterMmio(
                      *MmioRange::Create(MmioAddress(SelfMovingDevice::Base(0)),
                                         SelfMovingDevice::kSize),
                      dev)
                  .ok());
  logs[0]->EndRegister(clock);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> routed{0}, no_device{0}, bad{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < ReaderThreads(); ++i) {
    readers.emplace_back([&, i] {
      VcpuThread rcu;
      std::mt19937_64 rng(77 + i);
      while (!stop.load(std::memory_order_relaxed)) {
        const int k = static_cast<int>(rng() % SelfMovingDevice::kWindows);
        const uint64_t off = 8 + rng() % (SelfMovingDevice::kSize - 16);
        uint8_t buf[4] = {0};
        tls_mover_call = MoverCall{};
        const uint64_t t0 = clock.Now();
        const IoStatus s =
            (rng() & 1) != 0
                ? manager.MmioRead(MmioAddress(SelfMovingDevice::Base(k) + off),
                                   absl::MakeSpan(buf))
                : manager.MmioWrite(
                      MmioAddress(SelfMovingDevice::Base(k) + off), buf);
        const uint64_t t1 = clock.Now();
        const MoverCall c = tls_mover_call;
        if (s == IoStatus::kOk) {
          routed.fetch_add(1, std::memory_order_relaxed);
          if (c.calls != 1 || c.base != SelfMovingDevice::Base(k) ||
              c.offset != off || !logs[k]->MayHaveRouted(1, t0, t1)) {
            bad.fetch_add(1);
            failures.Add(absl::StrFormat(
                "access at window %d routed to base 0x%x offset 0x%x (calls "
                "%d) outside its registration",
                k, c.base, c.offset, c.calls));
          }
        } else if (s == IoStatus::kDeviceNotFound) {
          no_device.fetch_add(1, std::memory_order_relaxed);
          if (c.calls != 0 || logs[k]->CertainlyPublished(t0, t1)) {
            bad.fetch_add(1);
            failures.Add(absl::StrFormat(
                "access at window %d: no device, but the range was there "
                "throughout",
                k));
          }
        } else {
          bad.fetch_add(1);
          failures.Add("unexpected status");
        }
      }
    });
  }
  // The "guest kernel": reprograms the BAR through the device itself.
  std::thread mover([&] {
    VcpuThread rcu;
    std::mt19937_64 rng(5);
    while (!stop.load(std::memory_order_relaxed)) {
      const int cur = dev->current();
      const uint8_t next[1] = {
          static_cast<uint8_t>(rng() % SelfMovingDevice::kWindows)};
      const IoStatus s =
          manager.MmioWrite(MmioAddress(SelfMovingDevice::Base(cur)), next);
      if (s != IoStatus::kOk) failures.Add("the mover lost its own device");
    }
  });

  std::this_thread::sleep_for(std::chrono::duration<double>(StressSeconds()));
  stop = true;
  mover.join();
  for (auto& t : readers) t.join();

  EXPECT_EQ(failures.count(), 0u) << failures.first();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(dev->moves(), 100u);
  EXPECT_GT(routed.load(), 1000u);
  EXPECT_GT(no_device.load(), 1000u);
  // The range is where the last move put it, and nowhere else.
  const int last = dev->current();
  for (int k = 0; k < SelfMovingDevice::kWindows; ++k) {
    auto found = manager.MmioDevice(MmioAddress(SelfMovingDevice::Base(k) + 1));
    if (k == last) {
      ASSERT_TRUE(found.has_value());
      EXPECT_EQ(found->first.base().value(), SelfMovingDevice::Base(k));
      EXPECT_EQ(found->first.size(), SelfMovingDevice::kSize);
      EXPECT_EQ(found->second.get(), dev.get());
    } else {
      EXPECT_FALSE(found.has_value()) << "window " << k;
    }
  }
  EXPECT_EQ(manager.stats().mmio_ranges, 1u);
  // One reference here, one in the manager; none leaked by the moves.
  ASSERT_TRUE(manager.Synchronize().ok());
  EXPECT_EQ(dev.use_count(), 2);
  ASSERT_TRUE(
      manager.DeregisterMmio(MmioAddress(SelfMovingDevice::Base(last))).ok());
  ASSERT_TRUE(manager.Synchronize().ok());
  EXPECT_EQ(dev.use_count(), 1);
}

}  // namespace
}  // namespace vm_device
