// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The cross-device policy of LockedDevice (locked_device.h): a handler that
// reaches another locked device while holding its own lock, on one thread and
// on two vCPUs at once (A->B while B->A), WithLock() re-entry, and
// Synchronize() inside WithLock(). Nothing here may hang or abort: every wait
// in these tests has a timeout, so a failure is a failure.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

bool WaitFor(const std::atomic<bool>& flag, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!flag.load(std::memory_order_acquire)) {
    if (Clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// A device at one port whose write (value 1) reads the port `peer`, after
// optionally meeting the other device's handler (both inside their own
// locks, which is what turns A->B / B->A into a cycle).
class Linked final : public MutDevicePio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) override {
    ++reads;
    std::fill(data.begin(), data.end(), id);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t> data) override {
    ++writes;
    if (data[0] != 1 || io == nullptr) return;
    if (inside != nullptr) {
      inside->store(true, std::memory_order_release);
      met = WaitFor(*other_inside, std::chrono::seconds(10));
    }
    const auto t = Clock::now();
    peer_status = io->PioRead(PioAddress(peer), absl::MakeSpan(peer_value));
    nested_ms = MsSince(t);
  }

  uint8_t id = 0;
  const IoManager* io = nullptr;
  uint16_t peer = 0;
  std::atomic<bool>* inside = nullptr;
  const std::atomic<bool>* other_inside = nullptr;

  int reads = 0;
  int writes = 0;
  bool met = false;
  IoStatus peer_status = IoStatus::kDeviceNotFound;
  uint8_t peer_value[1] = {0};
  double nested_ms = 0;
};

struct Pair {
  Pair() : a(MakeLocked<Linked>()), b(MakeLocked<Linked>()) {
    EXPECT_TRUE(io.RegisterPio(PioRange::Unit(PioAddress(0xa0)), a).ok());
    EXPECT_TRUE(io.RegisterPio(PioRange::Unit(PioAddress(0xb0)), b).ok());
    Link(*a, 0xa, 0xb0);
    Link(*b, 0xb, 0xa0);
  }
  void Link(LockedDevice<Linked>& d, uint8_t id, uint16_t peer) {
    EXPECT_TRUE(d.WithLock([&](Linked& l) {
                   l.id = id;
                   l.io = &io;
                   l.peer = peer;
                 }).ok());
  }
  IoStatus Kick(uint16_t port) const {
    const uint8_t one[1] = {1};
    return io.PioWrite(PioAddress(port), one);
  }
  IoManager io;
  std::shared_ptr<LockedDevice<Linked>> a, b;
};

// One thread: A reaches B, and later B reaches A. Never at the same time, so
// both succeed (absl::Mutex's deadlock detector aborted the process here).
TEST(LockedDeviceChain, OppositeOrdersOnOneThreadBothSucceed) {
  Pair p;
  ASSERT_EQ(p.Kick(0xa0), IoStatus::kOk);
  ASSERT_EQ(p.Kick(0xb0), IoStatus::kOk);
  EXPECT_EQ(p.a->WithLock([](Linked& l) { return l.peer_value[0]; }).value(),
            0xb);
  EXPECT_EQ(p.b->WithLock([](Linked& l) { return l.peer_value[0]; }).value(),
            0xa);
  EXPECT_EQ(p.a->refused_busy_accesses() + p.b->refused_busy_accesses(), 0u);
  EXPECT_EQ(
      p.a->refused_reentrant_accesses() + p.b->refused_reentrant_accesses(),
      0u);
}

// Two vCPUs: A->B while B->A, both handlers inside their own locks before
// either reaches for the other's. A real ABBA cycle: it must end, within the
// bounded wait, with a nested access refused, and both vCPUs must go on.
TEST(LockedDeviceChain, CycleOnTwoVcpusEndsWithARefusalNotAHang) {
  Pair p;
  std::atomic<bool> in_a{false}, in_b{false};
  ASSERT_TRUE(p.a->WithLock([&](Linked& l) {
                   l.inside = &in_a;
                   l.other_inside = &in_b;
                 })
                  .ok());
  ASSERT_TRUE(p.b->WithLock([&](Linked& l) {
                   l.inside = &in_b;
                   l.other_inside = &in_a;
                 })
                  .ok());
  const auto t = Clock::now();
  std::thread vcpu0([&] { EXPECT_EQ(p.Kick(0xa0), IoStatus::kOk); });
  std::thread vcpu1([&] { EXPECT_EQ(p.Kick(0xb0), IoStatus::kOk); });
  vcpu0.join();
  vcpu1.join();
  EXPECT_LT(MsSince(t), 5000.0);
  const auto a = p.a->WithLock([](Linked& l) {
                      return std::make_pair(l.met, l.peer_value[0]);
                    })
                     .value();
  const auto b = p.b->WithLock([](Linked& l) {
                      return std::make_pair(l.met, l.peer_value[0]);
                    })
                     .value();
  EXPECT_TRUE(a.first && b.first) << "the handlers never overlapped";
  // At least one nested read was refused (all-ones); a side not refused read
  // its peer's id.
  const uint64_t refused =
      p.a->refused_busy_accesses() + p.b->refused_busy_accesses();
  EXPECT_GE(refused, 1u);
  EXPECT_TRUE(a.second == 0xff || b.second == 0xff);
  EXPECT_TRUE(a.second == 0xff || a.second == 0xb);
  EXPECT_TRUE(b.second == 0xff || b.second == 0xa);
  EXPECT_EQ(
      p.a->refused_reentrant_accesses() + p.b->refused_reentrant_accesses(),
      0u);
  // Both locks are free again: the control plane and plain dispatches work.
  uint8_t r[1] = {};
  EXPECT_EQ(p.io.PioRead(PioAddress(0xa0), absl::MakeSpan(r)), IoStatus::kOk);
  EXPECT_EQ(r[0], 0xa);
}

// No cycle, the other device just busy for a short while: the nested access
// waits for it and succeeds.
TEST(LockedDeviceChain, NestedAccessWaitsForABrieflyBusyDevice) {
  Pair p;
  absl::Notification holding, release;
  std::thread control([&] {
    EXPECT_TRUE(p.b->WithLock([&](Linked&) {
                     holding.Notify();
                     release.WaitForNotificationWithTimeout(
                         absl::Milliseconds(2));
                   })
                    .ok());
  });
  holding.WaitForNotification();
  ASSERT_EQ(p.Kick(0xa0), IoStatus::kOk);
  control.join();
  EXPECT_EQ(p.a->WithLock([](Linked& l) { return l.peer_value[0]; }).value(),
            0xb);
  EXPECT_EQ(p.b->refused_busy_accesses(), 0u);
}

// The documented cost of the policy: no cycle, but the other device is held
// for longer than the bound, so the nested access is refused after ~10 ms.
TEST(LockedDeviceChain, NestedAccessToALongBusyDeviceIsRefusedAfterTheBound) {
  Pair p;
  absl::Notification holding, release;
  std::thread control([&] {
    EXPECT_TRUE(p.b->WithLock([&](Linked&) {
                     holding.Notify();
                     release.WaitForNotificationWithTimeout(absl::Seconds(10));
                   })
                    .ok());
  });
  holding.WaitForNotification();
  ASSERT_EQ(p.Kick(0xa0), IoStatus::kOk);
  release.Notify();
  control.join();
  const auto [value, ms] =
      p.a->WithLock([](Linked& l) {
           return std::make_pair(l.peer_value[0], l.nested_ms);
         })
          .value();
  EXPECT_EQ(value, 0xff);
  EXPECT_EQ(p.b->refused_busy_accesses(), 1u);
  EXPECT_GE(ms, 9.0);
  EXPECT_LT(ms, 5000.0);
  // A plain (not nested) dispatch waits as long as it takes: served now.
  ASSERT_EQ(p.Kick(0xa0), IoStatus::kOk);
  EXPECT_EQ(p.a->WithLock([](Linked& l) { return l.peer_value[0]; }).value(),
            0xb);
}

TEST(LockedDeviceChain, WithLockReentryIsRefusedWithAStatus) {
  Pair p;
  absl::Status inner;
  absl::StatusOr<int> inner_value;
  absl::Status other;
  ASSERT_TRUE(p.a->WithLock([&](Linked&) {
                   inner = p.a->WithLock([](Linked&) {});
                   inner_value =
                       p.a->WithLock([](Linked& l) { return l.writes; });
                   other = p.b->WithLock([](Linked&) {});  // nested, free: ok
                 })
                  .ok());
  EXPECT_EQ(inner.code(), absl::StatusCode::kFailedPrecondition) << inner;
  EXPECT_EQ(inner_value.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(other.ok()) << other;
}

TEST(LockedDeviceChain, DispatchToItselfInsideWithLockIsRefused) {
  Pair p;
  ASSERT_TRUE(p.a->WithLock([&](Linked&) {
                   uint8_t r[1] = {0};
                   EXPECT_EQ(p.io.PioRead(PioAddress(0xa0), absl::MakeSpan(r)),
                             IoStatus::kOk);
                   EXPECT_EQ(r[0], 0xff);
                 })
                  .ok());
  EXPECT_EQ(p.a->refused_reentrant_accesses(), 1u);
  EXPECT_EQ(p.a->WithLock([](Linked& l) { return l.reads; }).value(), 0);
}

// Synchronize() inside WithLock() while a vCPU waits for that lock inside its
// read-side section: refused at once instead of deadlocking.
TEST(LockedDeviceChain, SynchronizeInsideWithLockIsRefusedNotAHang) {
  Pair p;
  std::atomic<bool> vcpu_done{false};
  std::thread vcpu;
  absl::Status sync;
  double sync_ms = 0;
  ASSERT_TRUE(p.a->WithLock([&](Linked&) {
                   vcpu = std::thread([&] {
                     uint8_t r[1];
                     EXPECT_EQ(
                         p.io.PioRead(PioAddress(0xa0), absl::MakeSpan(r)),
                         IoStatus::kOk);
                     vcpu_done.store(true);
                   });
                   std::this_thread::sleep_for(std::chrono::milliseconds(20));
                   const auto t = Clock::now();
                   sync = p.io.Synchronize();
                   sync_ms = MsSince(t);
                 })
                  .ok());
  vcpu.join();
  EXPECT_TRUE(vcpu_done.load());
  EXPECT_EQ(sync.code(), absl::StatusCode::kFailedPrecondition) << sync;
  EXPECT_LT(sync_ms, 1000.0);
  EXPECT_TRUE(p.io.Synchronize().ok());
}

// A chain longer than the per-thread limit is refused at the limit.
class Hop final : public MutDevicePio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) override {
    std::fill(data.begin(), data.end(), 0x11);
  }
  void PioWrite(PioAddress base, PioAddressOffset,
                absl::Span<const uint8_t> data) override {
    reached = true;
    const uint8_t b[1] = {data[0]};
    (void)io->PioWrite(PioAddress(base.value() + 1), b);
  }
  const IoManager* io = nullptr;
  bool reached = false;
};

TEST(LockedDeviceChain, ChainsDeeperThanTheLimitAreRefused) {
  IoManager io;
  std::vector<std::shared_ptr<LockedDevice<Hop>>> hops;
  constexpr int kHops = device_lock_internal::kMaxHeldLocks + 4;
  for (int i = 0; i < kHops; ++i) {
    hops.push_back(MakeLocked<Hop>());
    ASSERT_TRUE(hops.back()->WithLock([&](Hop& h) { h.io = &io; }).ok());
    ASSERT_TRUE(
        io.RegisterPio(PioRange::Unit(PioAddress(0x100 + i)), hops.back())
            .ok());
  }
  const uint8_t b[1] = {1};
  ASSERT_EQ(io.PioWrite(PioAddress(0x100), b), IoStatus::kOk);
  for (int i = 0; i < kHops; ++i) {
    const bool reached =
        hops[i]->WithLock([](Hop& h) { return h.reached; }).value();
    EXPECT_EQ(reached, i < device_lock_internal::kMaxHeldLocks) << i;
  }
  EXPECT_EQ(hops[device_lock_internal::kMaxHeldLocks]->refused_busy_accesses(),
            1u);
}

// A device that counts its writes in a plain field (exact only under its
// lock) and forwards every write with a non-zero hop count to a pseudo-random
// other device of the ring, while holding its own lock.
class RingNode final : public MutDevicePio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) override {
    std::fill(data.begin(), data.end(), 0x5a);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t> data) override {
    if (inside.fetch_add(1) != 0) overlapped = true;
    writes = writes + 1;
    if (data[0] > 0) {
      // Let another vCPU run while this lock is held, so chains cross.
      std::this_thread::yield();
      const uint8_t next[2] = {static_cast<uint8_t>(data[0] - 1), data[1]};
      const uint16_t to = static_cast<uint16_t>(
          kRingBase + 2 * ((index + 1 + data[1] % 3) % kRing));
      EXPECT_EQ(io->PioWrite(PioAddress(to), next), IoStatus::kOk);
    }
    inside.fetch_sub(1);
  }
  static constexpr int kRing = 4;
  static constexpr uint16_t kRingBase = 0x200;
  const IoManager* io = nullptr;
  int index = 0;
  uint64_t writes = 0;
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
};

// Many vCPUs sending chains of 1 to 3 hops around a ring of locked devices in
// every direction at once: cycles form all the time. Nothing may hang (every
// chain ends), each device's writes stay exact (mutual exclusion), and every
// hop either ran or was counted as refused.
TEST(LockedDeviceChain, ManyVcpusWithCrossingChainsNeverHang) {
  IoManager io;
  std::vector<std::shared_ptr<LockedDevice<RingNode>>> ring;
  for (int i = 0; i < RingNode::kRing; ++i) {
    ring.push_back(MakeLocked<RingNode>());
    ASSERT_TRUE(ring.back()
                    ->WithLock([&](RingNode& n) {
                      n.io = &io;
                      n.index = i;
                    })
                    .ok());
    ASSERT_TRUE(io.RegisterPio(*PioRange::Create(
                                   PioAddress(RingNode::kRingBase + 2 * i), 2),
                               ring.back())
                    .ok());
  }
  constexpr int kThreads = 8;
  constexpr int kChainsPerThread = 100;
  std::atomic<uint64_t> hops_sent{0};
  const auto t = Clock::now();
  std::vector<std::thread> vcpus;
  for (int v = 0; v < kThreads; ++v) {
    vcpus.emplace_back([&, v] {
      for (int k = 0; k < kChainsPerThread; ++k) {
        const uint8_t hops = static_cast<uint8_t>(1 + (v + k) % 3);
        const uint8_t w[2] = {hops, static_cast<uint8_t>(v * 7 + k)};
        ASSERT_EQ(io.PioWrite(PioAddress(RingNode::kRingBase +
                                         2 * ((v + k) % RingNode::kRing)),
                              w),
                  IoStatus::kOk);
        hops_sent.fetch_add(1 + hops);
      }
    });
  }
  for (auto& th : vcpus) th.join();
  const double ms = MsSince(t);
  uint64_t ran = 0, refused = 0, reentrant = 0;
  for (auto& d : ring) {
    ran += d->WithLock([](RingNode& n) {
              EXPECT_FALSE(n.overlapped.load());
              return n.writes;
            }).value();
    refused += d->refused_busy_accesses();
    reentrant += d->refused_reentrant_accesses();
  }
  // A refused hop ends its chain: the hops after it were never sent.
  EXPECT_LE(ran + refused + reentrant, hops_sent.load());
  EXPECT_GE(ran, uint64_t{kThreads} * kChainsPerThread);  // every first hop
  EXPECT_LT(ms, 50000.0);
  std::printf(
      "%d vCPUs, %d chains each: %.0f ms, %llu hops ran, %llu "
      "refused busy, %llu refused re-entrant\n",
      kThreads, kChainsPerThread, ms, static_cast<unsigned long long>(ran),
      static_cast<unsigned long long>(refused),
      static_cast<unsigned long long>(reentrant));
}

}  // namespace
}  // namespace vm_device
