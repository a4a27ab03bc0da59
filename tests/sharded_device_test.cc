// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of ShardedDevice<T>: routing by T::ShardOf, mutual exclusion per
// shard, parallelism across shards (a test that fails, after a timeout, if two
// different shards are ever serialized), re-entry on one shard, and the
// one-shard and all-shard control plane.

#include "vm_device/sharded_device.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/config.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kBase = 0xd0000000;
constexpr uint64_t kBankSize = 0x100;

// Spins (yielding) until `flag` is set or `timeout` passes; whether it was.
bool WaitFor(const std::atomic<bool>& flag, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!flag.load(std::memory_order_acquire)) {
    if (Clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Four banks of kBankSize bytes. Each bank counts its writes twice, in two
// plain (non-atomic) fields: only the shard's lock keeps them equal and exact,
// and ThreadSanitizer reports a race if two handlers of one bank overlap.
// Write value 0x77 makes the handler meet the handler of another bank
// (see DifferentShardsRunInParallel).
class Banks : public MutDeviceMmio {
 public:
  static constexpr size_t kShards = 4;

  size_t ShardOf(MmioAddress, MmioAddressOffset offset, size_t) const {
    return misroute ? kShards : offset / kBankSize;
  }

  void MmioRead(MmioAddress, MmioAddressOffset offset,
                absl::Span<uint8_t> data) override {
    Bank& b = banks[offset / kBankSize];
    std::fill(data.begin(), data.end(), static_cast<uint8_t>(b.writes_a));
  }
  void MmioWrite(MmioAddress, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) override {
    const size_t i = offset / kBankSize;
    Bank& b = banks[i];
    if (b.inside.fetch_add(1) != 0) b.overlapped = true;
    b.writes_a = b.writes_a + 1;
    if (data[0] == 0x77) Meet(i);
    if (data[0] == 0x55 && io != nullptr) Nested(i);
    b.writes_b = b.writes_b + 1;
    b.inside.fetch_sub(1);
  }

  // Rendezvous of the handlers of banks 0 and 1: each announces that it is
  // inside its shard and waits for the other to be inside its own. Only
  // possible if the two shards' handlers run at the same time.
  void Meet(size_t i) {
    arrived[i].store(true, std::memory_order_release);
    met[i] = WaitFor(arrived[1 - i], meet_timeout);
  }

  // Bank i's handler dispatching to bank `nested_target` of the same device.
  void Nested(size_t) {
    const uint64_t addr = kBase + nested_target * kBankSize;
    nested_status = io->MmioRead(MmioAddress(addr), absl::MakeSpan(nested));
  }

  struct alignas(ABSL_CACHELINE_SIZE) Bank {
    uint64_t writes_a = 0;
    uint64_t writes_b = 0;
    std::atomic<int> inside{0};
    std::atomic<bool> overlapped{false};
  };
  Bank banks[kShards];

  bool misroute = false;
  std::atomic<bool> arrived[2] = {false, false};
  bool met[2] = {false, false};
  std::chrono::milliseconds meet_timeout{10000};

  const IoManager* io = nullptr;
  uint64_t nested_target = 0;
  uint8_t nested[4] = {};
  IoStatus nested_status = IoStatus::kDeviceNotFound;
};

struct Fixture {
  Fixture() : dev(MakeSharded<Banks>()) {
    EXPECT_TRUE(
        io.RegisterMmio(*MmioRange::Create(MmioAddress(kBase), 4 * kBankSize),
                        dev)
            .ok());
  }
  IoStatus Write(size_t bank, uint8_t v, uint64_t off = 0) {
    const uint8_t b[4] = {v, 0, 0, 0};
    return io.MmioWrite(MmioAddress(kBase + bank * kBankSize + off), b);
  }
  IoManager io;
  std::shared_ptr<ShardedDevice<Banks>> dev;
};

TEST(ShardedDevice, LocksAreOnCacheLinesOfTheirOwn) {
  EXPECT_EQ(alignof(ShardedDevice<Banks>), ABSL_CACHELINE_SIZE);
  EXPECT_EQ(sizeof(ShardedDevice<Banks>) % ABSL_CACHELINE_SIZE, 0u);
  // Four lock lines, plus the counters, plus the device.
  EXPECT_GE(sizeof(ShardedDevice<Banks>),
            4 * ABSL_CACHELINE_SIZE + sizeof(Banks));
  EXPECT_EQ(ShardedDevice<Banks>::kShards, 4u);
}

TEST(ShardedDevice, RoutesEachAccessToItsShard) {
  Fixture f;
  for (size_t bank = 0; bank < 4; ++bank) {
    for (size_t k = 0; k <= bank; ++k) {
      ASSERT_EQ(f.Write(bank, 1, 4 * k), IoStatus::kOk);
    }
  }
  ASSERT_TRUE(f.dev
                  ->WithAllShards([](Banks& d) {
                    for (size_t i = 0; i < 4; ++i) {
                      EXPECT_EQ(d.banks[i].writes_a, i + 1);
                      EXPECT_EQ(d.banks[i].writes_b, i + 1);
                    }
                  })
                  .ok());
  uint8_t r[2] = {};
  ASSERT_EQ(
      f.io.MmioRead(MmioAddress(kBase + 2 * kBankSize + 8), absl::MakeSpan(r)),
      IoStatus::kOk);
  EXPECT_EQ(r[0], 3);
}

TEST(ShardedDevice, MutualExclusionPerShard) {
  Fixture f;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 4000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&f, t] {
      // Two threads per bank.
      for (int i = 0; i < kPerThread; ++i) {
        if (f.Write(t % 4, 1, 4 * (i % 8)) != IoStatus::kOk) return;
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(f.dev
                  ->WithAllShards([](Banks& d) {
                    for (const auto& b : d.banks) {
                      EXPECT_EQ(b.writes_a, 2u * kPerThread);
                      EXPECT_EQ(b.writes_b, 2u * kPerThread);
                      EXPECT_FALSE(b.overlapped.load());
                    }
                  })
                  .ok());
  EXPECT_EQ(f.dev->refused_reentrant_accesses(), 0u);
  EXPECT_EQ(f.dev->refused_busy_accesses(), 0u);
}

// Fails (after meet_timeout, never a hang) if the handlers of shards 0 and 1
// cannot be inside their shards at the same time.
TEST(ShardedDevice, DifferentShardsRunInParallel) {
  Fixture f;
  std::thread t0([&] { EXPECT_EQ(f.Write(0, 0x77), IoStatus::kOk); });
  std::thread t1([&] { EXPECT_EQ(f.Write(1, 0x77), IoStatus::kOk); });
  t0.join();
  t1.join();
  ASSERT_TRUE(f.dev
                  ->WithAllShards([](Banks& d) {
                    EXPECT_TRUE(d.met[0]) << "shard 0 never saw shard 1 inside";
                    EXPECT_TRUE(d.met[1]) << "shard 1 never saw shard 0 inside";
                  })
                  .ok());
}

// The same rendezvous where the device is one lock: it must fail, which shows
// that the test above can fail.
TEST(ShardedDevice, TheParallelismTestFailsWhenShardsAreSerialized) {
  struct OneBank : Banks {
    // Both accesses map to shard 0; the handlers still see banks 0 and 1.
    size_t ShardOf(MmioAddress, MmioAddressOffset, size_t) const { return 0; }
  };
  static_assert(OneBank::kShards == 4);
  IoManager io;
  auto dev = MakeSharded<OneBank>();
  ASSERT_TRUE(dev->WithAllShards([](OneBank& d) {
                   d.meet_timeout = std::chrono::milliseconds(200);
                 })
                  .ok());
  ASSERT_TRUE(io.RegisterMmio(
                    *MmioRange::Create(MmioAddress(kBase), 4 * kBankSize), dev)
                  .ok());
  auto write = [&](size_t bank) {
    const uint8_t b[1] = {0x77};
    EXPECT_EQ(io.MmioWrite(MmioAddress(kBase + bank * kBankSize), b),
              IoStatus::kOk);
  };
  std::thread t0(write, 0), t1(write, 1);
  t0.join();
  t1.join();
  ASSERT_TRUE(dev->WithAllShards([](OneBank& d) {
                   // The first one in timed out waiting; the second found the
                   // first's flag already set, after the first had left.
                   EXPECT_FALSE(d.met[0] && d.met[1]);
                 })
                  .ok());
}

TEST(ShardedDevice, ReentryOnTheSameShardIsRefused) {
  Fixture f;
  ASSERT_TRUE(f.dev
                  ->WithShard(0,
                              [&](Banks& d) {
                                d.io = &f.io;
                                d.nested_target = 0;
                              })
                  .ok());
  ASSERT_EQ(f.Write(0, 0x55), IoStatus::kOk);  // no deadlock
  EXPECT_EQ(f.dev->refused_reentrant_accesses(), 1u);
  ASSERT_TRUE(f.dev
                  ->WithShard(0,
                              [](Banks& d) {
                                EXPECT_EQ(d.nested_status, IoStatus::kOk);
                                EXPECT_EQ(d.nested[0], 0xff);  // open bus
                                EXPECT_EQ(d.nested[3], 0xff);
                                EXPECT_EQ(d.banks[0].writes_b, 1u);
                              })
                  .ok());
}

TEST(ShardedDevice, AnotherShardOfTheSameDeviceIsReachable) {
  Fixture f;
  ASSERT_TRUE(f.Write(2, 1) == IoStatus::kOk);
  ASSERT_TRUE(f.dev
                  ->WithShard(0,
                              [&](Banks& d) {
                                d.io = &f.io;
                                d.nested_target = 2;
                              })
                  .ok());
  ASSERT_EQ(f.Write(0, 0x55), IoStatus::kOk);
  EXPECT_EQ(f.dev->refused_reentrant_accesses(), 0u);
  EXPECT_EQ(f.dev->refused_busy_accesses(), 0u);
  ASSERT_TRUE(f.dev
                  ->WithShard(0,
                              [](Banks& d) {
                                EXPECT_EQ(d.nested[0], 1);  // bank 2's count
                              })
                  .ok());
}

TEST(ShardedDevice, WithShardHoldsThatShardOnly) {
  Fixture f;
  std::atomic<bool> other_done{false}, same_done{false};
  std::thread other, same;
  ASSERT_TRUE(f.dev
                  ->WithShard(1,
                              [&](Banks&) {
                                other = std::thread([&] {
                                  EXPECT_EQ(f.Write(0, 1), IoStatus::kOk);
                                  other_done.store(true);
                                });
                                same = std::thread([&] {
                                  EXPECT_EQ(f.Write(1, 1), IoStatus::kOk);
                                  same_done.store(true);
                                });
                                // Shard 0 is not held: its write completes.
                                EXPECT_TRUE(WaitFor(other_done,
                                                    std::chrono::seconds(10)));
                                std::this_thread::sleep_for(
                                    std::chrono::milliseconds(30));
                                EXPECT_FALSE(same_done.load());
                              })
                  .ok());
  other.join();
  same.join();
  EXPECT_TRUE(same_done.load());
}

TEST(ShardedDevice, WithAllShardsExcludesEveryShard) {
  Fixture f;
  std::atomic<int> done{0};
  std::vector<std::thread> writers;
  ASSERT_TRUE(f.dev
                  ->WithAllShards([&](Banks& d) {
                    for (size_t bank = 0; bank < 4; ++bank) {
                      writers.emplace_back([&, bank] {
                        EXPECT_EQ(f.Write(bank, 1), IoStatus::kOk);
                        done.fetch_add(1);
                      });
                    }
                    std::this_thread::sleep_for(std::chrono::milliseconds(50));
                    EXPECT_EQ(done.load(), 0);
                    for (const auto& b : d.banks) EXPECT_EQ(b.writes_a, 0u);
                  })
                  .ok());
  for (auto& t : writers) t.join();
  EXPECT_EQ(done.load(), 4);
}

// Control-plane callers taking every shard, racing each other and vCPUs that
// each take one shard: all shards are taken in one order, so nothing
// deadlocks, and every snapshot is consistent (writes_a == writes_b in every
// bank, which holds only between handlers).
TEST(ShardedDevice, AllShardControlPlaneNeverDeadlocksAndSeesWholeStates) {
  Fixture f;
  std::atomic<bool> stop{false};
  std::vector<std::thread> vcpus;
  for (int t = 0; t < 4; ++t) {
    vcpus.emplace_back([&, t] {
      int i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        EXPECT_EQ(f.Write((t + i++) % 4, 1), IoStatus::kOk);
      }
    });
  }
  std::vector<std::thread> control;
  std::atomic<int> inconsistent{0};
  for (int c = 0; c < 2; ++c) {
    control.emplace_back([&] {
      for (int k = 0; k < 1000; ++k) {
        absl::Status s = f.dev->WithAllShards([&](Banks& d) {
          for (const auto& b : d.banks) {
            if (b.writes_a != b.writes_b) inconsistent.fetch_add(1);
          }
        });
        EXPECT_TRUE(s.ok()) << s;
        absl::Status one = f.dev->WithShard(k % 4, [&](Banks& d) {
          const auto& b = d.banks[k % 4];
          if (b.writes_a != b.writes_b) inconsistent.fetch_add(1);
        });
        EXPECT_TRUE(one.ok()) << one;
      }
    });
  }
  for (auto& t : control) t.join();
  stop.store(true);
  for (auto& t : vcpus) t.join();
  EXPECT_EQ(inconsistent.load(), 0);
}

TEST(ShardedDevice, ControlPlaneReentryIsRefusedWithAStatus) {
  Fixture f;
  absl::Status inner_same, inner_all, inner_other;
  ASSERT_TRUE(f.dev
                  ->WithShard(2,
                              [&](Banks&) {
                                inner_same = f.dev->WithShard(2, [](Banks&) {});
                                inner_all = f.dev->WithAllShards([](Banks&) {});
                                inner_other =
                                    f.dev->WithShard(3, [](Banks&) {});
                              })
                  .ok());
  EXPECT_EQ(inner_same.code(), absl::StatusCode::kFailedPrecondition)
      << inner_same;
  EXPECT_EQ(inner_all.code(), absl::StatusCode::kFailedPrecondition)
      << inner_all;
  EXPECT_TRUE(inner_other.ok()) << inner_other;  // nested, and free

  absl::Status from_all;
  ASSERT_TRUE(f.dev
                  ->WithAllShards([&](Banks&) {
                    from_all = f.dev->WithShard(0, [](Banks&) {});
                  })
                  .ok());
  EXPECT_EQ(from_all.code(), absl::StatusCode::kFailedPrecondition);
  // A dispatch from inside the control plane is refused, not a deadlock.
  ASSERT_TRUE(
      f.dev
          ->WithShard(1,
                      [&](Banks&) { EXPECT_EQ(f.Write(1, 1), IoStatus::kOk); })
          .ok());
  EXPECT_EQ(f.dev->refused_reentrant_accesses(), 1u);
}

TEST(ShardedDevice, BadShardsAreRefusedNotCrashes) {
  Fixture f;
  absl::Status s = f.dev->WithShard(4, [](Banks&) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("shard 4"), absl::string_view::npos) << s;
  absl::StatusOr<int> v = f.dev->WithShard(99, [](Banks&) { return 1; });
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(f.dev->WithAllShards([](Banks& d) { d.misroute = true; }).ok());
  uint8_t r[2] = {1, 1};
  EXPECT_EQ(f.io.MmioRead(MmioAddress(kBase), absl::MakeSpan(r)),
            IoStatus::kOk);
  EXPECT_EQ(r[0], 0xff);
  EXPECT_EQ(f.Write(0, 1), IoStatus::kOk);
  EXPECT_EQ(f.dev->misrouted_accesses(), 2u);
  ASSERT_TRUE(
      f.dev->WithAllShards([](Banks& d) { EXPECT_EQ(d.banks[0].writes_a, 0u); })
          .ok());
}

TEST(ShardedDevice, SynchronizeUnderAShardLockIsRefused) {
  Fixture f;
  absl::Status s;
  ASSERT_TRUE(
      f.dev->WithShard(0, [&](Banks&) { s = f.io.Synchronize(); }).ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(f.io.Synchronize().ok());
}

// The README's example ("Mut devices: locks, shards and chains"), as written.
struct Uart4 : vm_device::MutDevicePio {
  static constexpr size_t kShards = 4;
  size_t ShardOf(vm_device::PioAddress, vm_device::PioAddressOffset off,
                 size_t) const {
    return off / 8;
  }
  void PioRead(vm_device::PioAddress, vm_device::PioAddressOffset off,
               absl::Span<uint8_t> data) override {
    data[0] = ports[off / 8].regs[off % 8];
  }
  void PioWrite(vm_device::PioAddress, vm_device::PioAddressOffset off,
                absl::Span<const uint8_t> data) override {
    ports[off / 8].regs[off % 8] = data[0];
  }
  struct alignas(ABSL_CACHELINE_SIZE) Port {
    uint8_t regs[8] = {};
  };
  Port ports[4];
};

TEST(ShardedDevice, ReadmeExample) {
  vm_device::IoManager manager;
  auto uart = vm_device::MakeSharded<Uart4>();
  absl::Status s = manager.RegisterPio(
      *vm_device::PioRange::Create(vm_device::PioAddress(0x3f8), 32), uart);
  ASSERT_TRUE(s.ok()) << s;
  const uint8_t lcr_value[1] = {0x83};
  ASSERT_EQ(manager.PioWrite(PioAddress(0x3f8 + 2 * 8 + 3), lcr_value),
            IoStatus::kOk);
  absl::StatusOr<uint8_t> lcr =
      uart->WithShard(2, [](Uart4& u) { return u.ports[2].regs[3]; });
  ASSERT_TRUE(lcr.ok());
  EXPECT_EQ(*lcr, 0x83);
  absl::Status reset = uart->WithAllShards([](Uart4& u) {
    for (auto& p : u.ports) p = Uart4::Port();
  });
  EXPECT_TRUE(reset.ok());
  uint8_t r[1] = {1};
  ASSERT_EQ(manager.PioRead(PioAddress(0x3f8 + 2 * 8 + 3), absl::MakeSpan(r)),
            IoStatus::kOk);
  EXPECT_EQ(r[0], 0);
  auto rtc = vm_device::MakeLocked<Uart4>();
  absl::StatusOr<uint8_t> reg0 =
      rtc->WithLock([](Uart4& u) { return u.ports[0].regs[0]; });
  EXPECT_EQ(reg0.value(), 0);
}

}  // namespace
}  // namespace vm_device
