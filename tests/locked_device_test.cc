// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of LockedDevice<T>: forwarding, the interfaces it implements, its
// cache-line layout, mutual exclusion, refusal of re-entrant accesses and
// exception safety (the port's answer to the crate's Mutex<T> adapter, which
// deadlocks on re-entry and panics on a poisoned lock).

#include "vm_device/locked_device.h"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

// What a device saw last.
struct Seen {
  uint64_t base = 0;
  uint64_t offset = 0;
  std::vector<uint8_t> data;
  int reads = 0;
  int writes = 0;
};

class PioDev : public MutDevicePio {
 public:
  PioDev() = default;
  explicit PioDev(int tag) : tag(tag) {}
  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) override {
    seen = {base.value(), offset, {}, seen.reads + 1, seen.writes};
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0x10 + i;
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) override {
    seen = {base.value(),
            offset,
            {data.begin(), data.end()},
            seen.reads,
            seen.writes + 1};
  }
  int tag = 0;
  Seen seen;
};

class MmioDev : public MutDeviceMmio {
 public:
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) override {
    seen = {base.value(), offset, {}, seen.reads + 1, seen.writes};
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0x20 + i;
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) override {
    seen = {base.value(),
            offset,
            {data.begin(), data.end()},
            seen.reads,
            seen.writes + 1};
  }
  Seen seen;
};

class BothDev : public PioDev, public MmioDev {};

TEST(LockedDevice, ForwardsBaseOffsetAndDataToT) {
  auto dev = MakeLocked<BothDev>();
  const DevicePio& pio = *dev;
  const DeviceMmio& mmio = *dev;

  const uint8_t out[] = {1, 2, 3};
  pio.PioWrite(PioAddress(0x3f8), 3, out);
  EXPECT_TRUE(dev->WithLock([](BothDev& d) {
                   const Seen& s = d.PioDev::seen;
                   EXPECT_EQ(s.base, 0x3f8u);
                   EXPECT_EQ(s.offset, 3u);
                   EXPECT_EQ(s.data, (std::vector<uint8_t>{1, 2, 3}));
                   EXPECT_EQ(s.writes, 1);
                 })
                  .ok());
  uint8_t in[2] = {};
  pio.PioRead(PioAddress(0x60), 1, absl::MakeSpan(in));
  EXPECT_THAT(in, testing::ElementsAre(0x10, 0x11));

  mmio.MmioWrite(MmioAddress(0xfee0'0000), 0x30, out);
  mmio.MmioRead(MmioAddress(0xfed0'0000), 0x8, absl::MakeSpan(in));
  EXPECT_THAT(in, testing::ElementsAre(0x20, 0x21));
  EXPECT_TRUE(dev->WithLock([](BothDev& d) {
                   const Seen& s = d.MmioDev::seen;
                   EXPECT_EQ(s.base, 0xfed0'0000u);
                   EXPECT_EQ(s.offset, 0x8u);
                   EXPECT_EQ(s.writes, 1);
                   EXPECT_EQ(s.reads, 1);
                   EXPECT_EQ(d.PioDev::seen.reads, 1);
                 })
                  .ok());
}

TEST(LockedDevice, ImplementsOnlyTheInterfacesOfT) {
  static_assert(std::is_base_of_v<DevicePio, LockedDevice<PioDev>>);
  static_assert(!std::is_base_of_v<DeviceMmio, LockedDevice<PioDev>>);
  static_assert(std::is_base_of_v<DeviceMmio, LockedDevice<MmioDev>>);
  static_assert(!std::is_base_of_v<DevicePio, LockedDevice<MmioDev>>);
  static_assert(std::is_base_of_v<DevicePio, LockedDevice<BothDev>>);
  static_assert(std::is_base_of_v<DeviceMmio, LockedDevice<BothDev>>);
  // Shareable only: not a Mut device itself.
  static_assert(!std::is_base_of_v<MutDevicePio, LockedDevice<PioDev>>);
  static_assert(!std::is_copy_constructible_v<LockedDevice<PioDev>>);

  IoManager io;
  auto pio_only = MakeLocked<PioDev>();
  const Resource both[] = {PioAddressRange{0x60, 1},
                           MmioAddressRange{0x1000, 1}};
  EXPECT_EQ(io.RegisterResources(pio_only, both).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(io.RegisterResources(MakeLocked<BothDev>(), both).ok());
}

TEST(LockedDevice, FillsWholeCacheLines) {
  static_assert(alignof(LockedDevice<PioDev>) >= 64);
  static_assert(sizeof(LockedDevice<PioDev>) % 64 == 0);
  static_assert(alignof(LockedDevice<BothDev>) >= 64);
  static_assert(sizeof(LockedDevice<BothDev>) % 64 == 0);

  std::vector<std::shared_ptr<LockedDevice<PioDev>>> devs;
  std::set<uintptr_t> lines;
  for (int i = 0; i < 64; ++i) {
    devs.push_back(MakeLocked<PioDev>(i));
    const auto addr = reinterpret_cast<uintptr_t>(devs.back().get());
    EXPECT_EQ(addr % alignof(LockedDevice<PioDev>), 0u) << i;
    // Every line the adapter covers is its own.
    for (size_t off = 0; off < sizeof(LockedDevice<PioDev>); off += 64) {
      EXPECT_TRUE(lines.insert((addr + off) / 64).second) << i;
    }
  }
  EXPECT_EQ(lines.size(), 64 * (sizeof(LockedDevice<PioDev>) / 64));
}

TEST(LockedDevice, ConstructsInPlaceOrFromAValue) {
  LockedDevice<PioDev> from_value(PioDev(5));
  EXPECT_EQ(from_value.WithLock([](PioDev& d) { return d.tag; }).value(), 5);
  LockedDevice<PioDev> in_place(std::in_place, 7);
  EXPECT_EQ(in_place.WithLock([](PioDev& d) { return d.tag; }).value(), 7);
  EXPECT_EQ(
      MakeLocked<PioDev>(9)->WithLock([](PioDev& d) { return d.tag; }).value(),
      9);
}

TEST(LockedDevice, WithLockGivesMutableAccess) {
  auto dev = MakeLocked<PioDev>(1);
  EXPECT_TRUE(dev->WithLock([](PioDev& d) { d.tag = 42; }).ok());
  EXPECT_EQ(dev->WithLock([](PioDev& d) { return d.tag; }).value(), 42);
  int* ptr = dev->WithLock([](PioDev& d) { return &d.tag; }).value();
  EXPECT_EQ(ptr, dev->WithLock([](PioDev& d) { return &d.tag; }).value());
}

// A device whose handler would lose updates, or notice a second caller
// inside, if two calls ever overlapped.
class Tally final : public MutDevicePio {
 public:
  void PioRead(PioAddress, PioAddressOffset, absl::Span<uint8_t>) override {}
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) override {
    if (inside_.fetch_add(1) != 0) overlapped_ = true;
    const uint64_t v = count_;
    if (v % 64 == 0) std::this_thread::yield();  // widen the window
    count_ = v + 1;  // not atomic: only the lock keeps this exact
    inside_.fetch_sub(1);
  }
  uint64_t count() const { return count_; }
  bool overlapped() const { return overlapped_.load(); }

 private:
  uint64_t count_ = 0;
  std::atomic<int> inside_{0};
  std::atomic<bool> overlapped_{false};
};

TEST(LockedDevice, SerializesHandlersAcrossThreads) {
  IoManager io;
  auto dev = MakeLocked<Tally>();
  ASSERT_TRUE(io.RegisterPio(*PioRange::Create(PioAddress(0x80), 4), dev).ok());
  constexpr int kPerThread = 20000;
  auto hammer = [&] {
    const uint8_t b[] = {1};
    for (int i = 0; i < kPerThread; ++i) {
      if (io.PioWrite(PioAddress(0x80 + i % 4), b) != IoStatus::kOk) return;
    }
  };
  std::thread t1(hammer), t2(hammer);
  t1.join();
  t2.join();
  EXPECT_EQ(dev->WithLock([](Tally& t) { return t.count(); }).value(),
            2u * kPerThread);
  EXPECT_FALSE(dev->WithLock([](Tally& t) { return t.overlapped(); }).value());
  EXPECT_EQ(dev->refused_reentrant_accesses(), 0u);
}

// A device whose write handler dispatches back to its own addresses.
class SelfCaller final : public MutDevicePio {
 public:
  explicit SelfCaller(const IoManager* io) : io_(io) {}
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) override {
    ++reads;
    std::fill(data.begin(), data.end(), 0x42);
  }
  void PioWrite(PioAddress base, PioAddressOffset,
                absl::Span<const uint8_t>) override {
    ++writes;
    nested_read_status =
        io_->PioRead(base + PioAddressOffset{1}, absl::MakeSpan(nested_read));
    const uint8_t b[] = {9};
    nested_write_status = io_->PioWrite(base, b);
  }
  int reads = 0;
  int writes = 0;
  uint8_t nested_read[2] = {0, 0};
  IoStatus nested_read_status = IoStatus::kDeviceNotFound;
  IoStatus nested_write_status = IoStatus::kDeviceNotFound;

 private:
  const IoManager* io_;
};

TEST(LockedDevice, RefusesReentryFromItsOwnHandler) {
  IoManager io;
  auto dev = MakeLocked<SelfCaller>(&io);
  ASSERT_TRUE(io.RegisterPio(*PioRange::Create(PioAddress(0x70), 4), dev).ok());
  const uint8_t b[] = {1};
  ASSERT_EQ(io.PioWrite(PioAddress(0x70), b), IoStatus::kOk);  // no deadlock
  EXPECT_EQ(dev->refused_reentrant_accesses(), 2u);
  EXPECT_TRUE(dev->WithLock([](SelfCaller& d) {
                   EXPECT_EQ(d.writes, 1);  // the nested write was dropped
                   EXPECT_EQ(d.reads,
                             0);  // and the nested read never reached it
                   EXPECT_THAT(d.nested_read, testing::ElementsAre(0xff, 0xff));
                   EXPECT_EQ(d.nested_read_status, IoStatus::kOk);
                   EXPECT_EQ(d.nested_write_status, IoStatus::kOk);
                 })
                  .ok());

  // Outside its handler, the same thread is served normally.
  uint8_t in[1] = {};
  ASSERT_EQ(io.PioRead(PioAddress(0x71), absl::MakeSpan(in)), IoStatus::kOk);
  EXPECT_EQ(in[0], 0x42);
  EXPECT_EQ(dev->refused_reentrant_accesses(), 2u);
}

// A device whose write handler dispatches to another address.
class Forwarder final : public MutDevicePio {
 public:
  Forwarder(const IoManager* io, uint16_t target) : io_(io), target_(target) {}
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) override {
    std::fill(data.begin(), data.end(), 0x33);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t> data) override {
    ++writes;
    if (data[0] == 0) return;
    const uint8_t next[] = {static_cast<uint8_t>(data[0] - 1)};
    EXPECT_EQ(io_->PioWrite(PioAddress(target_), next), IoStatus::kOk);
  }
  int writes = 0;

 private:
  const IoManager* io_;
  uint16_t target_;
};

TEST(LockedDevice, RefusesReentryThroughAnotherDevice) {
  IoManager io;
  auto a = MakeLocked<Forwarder>(&io, 0x91);
  auto b = MakeLocked<Forwarder>(&io, 0x90);
  ASSERT_TRUE(io.RegisterPio(PioRange::Unit(PioAddress(0x90)), a).ok());
  ASSERT_TRUE(io.RegisterPio(PioRange::Unit(PioAddress(0x91)), b).ok());
  const uint8_t hops[] = {5};  // a -> b -> a (refused)
  ASSERT_EQ(io.PioWrite(PioAddress(0x90), hops), IoStatus::kOk);
  EXPECT_EQ(a->WithLock([](Forwarder& f) { return f.writes; }).value(), 1);
  EXPECT_EQ(b->WithLock([](Forwarder& f) { return f.writes; }).value(), 1);
  EXPECT_EQ(a->refused_reentrant_accesses(), 1u);
  EXPECT_EQ(b->refused_reentrant_accesses(), 0u);
}

// A device whose write handler blocks until released.
class Gate final : public MutDevicePio {
 public:
  Gate(absl::Notification* entered, absl::Notification* release)
      : entered_(entered), release_(release) {}
  void PioRead(PioAddress, PioAddressOffset, absl::Span<uint8_t>) override {}
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t> data) override {
    if (data[0] == 1) {
      entered_->Notify();
      release_->WaitForNotification();
    }
    ++writes;
  }
  int writes = 0;

 private:
  absl::Notification* entered_;
  absl::Notification* release_;
};

TEST(LockedDevice, OtherThreadsWaitInsteadOfBeingRefused) {
  IoManager io;
  absl::Notification entered, release;
  auto dev = MakeLocked<Gate>(&entered, &release);
  ASSERT_TRUE(io.RegisterPio(PioRange::Unit(PioAddress(0x60)), dev).ok());
  std::thread holder([&] {
    const uint8_t b[] = {1};
    EXPECT_EQ(io.PioWrite(PioAddress(0x60), b), IoStatus::kOk);
  });
  entered.WaitForNotification();
  std::atomic<bool> second_done{false};
  std::thread waiter([&] {
    const uint8_t b[] = {2};
    EXPECT_EQ(io.PioWrite(PioAddress(0x60), b), IoStatus::kOk);
    second_done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_FALSE(second_done.load());  // blocked on the lock
  release.Notify();
  holder.join();
  waiter.join();
  EXPECT_TRUE(second_done.load());
  EXPECT_EQ(dev->WithLock([](Gate& g) { return g.writes; }).value(), 2);
  EXPECT_EQ(dev->refused_reentrant_accesses(), 0u);
}

class Thrower final : public MutDevicePio, public MutDeviceMmio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) override {
    std::fill(data.begin(), data.end(), 0x77);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t> data) override {
    if (data[0] == 0xee) throw std::runtime_error("device fault");
    ++writes;
  }
  void MmioRead(MmioAddress, MmioAddressOffset, absl::Span<uint8_t>) override {
    throw std::runtime_error("mmio fault");
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) override {}
  int writes = 0;
};

TEST(LockedDevice, ThrowingHandlerReleasesTheLockAndReachesTheCaller) {
  IoManager io;
  auto dev = MakeLocked<Thrower>();
  ASSERT_TRUE(io.RegisterPio(PioRange::Unit(PioAddress(0x60)), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(MmioRange::Unit(MmioAddress(0x1000)), dev).ok());

  const uint8_t bad[] = {0xee};
  EXPECT_THROW((void)io.PioWrite(PioAddress(0x60), bad), std::runtime_error);
  uint8_t in[1] = {};
  EXPECT_THROW((void)io.MmioRead(MmioAddress(0x1000), absl::MakeSpan(in)),
               std::runtime_error);

  // The lock is free, and this thread is not taken for its holder.
  const uint8_t good[] = {1};
  EXPECT_EQ(io.PioWrite(PioAddress(0x60), good), IoStatus::kOk);
  EXPECT_EQ(io.PioRead(PioAddress(0x60), absl::MakeSpan(in)), IoStatus::kOk);
  EXPECT_EQ(in[0], 0x77);
  EXPECT_EQ(dev->refused_reentrant_accesses(), 0u);
  EXPECT_EQ(dev->WithLock([](Thrower& t) { return t.writes; }).value(), 1);

  // Another thread can take the lock too.
  std::thread other(
      [&] { EXPECT_EQ(io.PioWrite(PioAddress(0x60), good), IoStatus::kOk); });
  other.join();
  EXPECT_EQ(dev->WithLock([](Thrower& t) { return t.writes; }).value(), 2);

  // The manager is unchanged and usable: the read-side section was left
  // (Synchronize would be refused inside one).
  EXPECT_TRUE(io.Synchronize().ok());
  EXPECT_EQ(io.stats().pio_ranges, 1u);
  EXPECT_TRUE(io.DeregisterPio(PioAddress(0x60)).ok());
  EXPECT_TRUE(io.RegisterPio(PioRange::Unit(PioAddress(0x61)), dev).ok());
  EXPECT_EQ(io.PioWrite(PioAddress(0x61), good), IoStatus::kOk);

  // Called directly, the exception comes straight through as well.
  const DevicePio& direct = *dev;
  EXPECT_THROW(direct.PioWrite(PioAddress(0x60), 0, bad), std::runtime_error);
  EXPECT_EQ(dev->WithLock([](Thrower& t) { return t.writes; }).value(), 3);
}

}  // namespace
}  // namespace vm_device
