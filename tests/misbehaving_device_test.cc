// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Devices that misbehave: handlers that throw, that take long, and that call
// back into the manager (dispatch to themselves, register, deregister or move
// themselves, Synchronize). For each, what the library does, and that the
// manager stays usable and is changed only by what the handler itself asked.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

PioRange Pio(uint16_t base, uint16_t size) {
  return *PioRange::Create(PioAddress(base), size);
}
MmioRange Mmio(uint64_t base, uint64_t size) {
  return *MmioRange::Create(MmioAddress(base), size);
}

// A shared device whose handlers run a hook (or do nothing), counting calls
// and its own life.
class HookDevice final : public DevicePio, public DeviceMmio {
 public:
  using Hook = std::function<void(uint64_t base, uint64_t offset,
                                  absl::Span<uint8_t> data)>;

  explicit HookDevice(Hook hook = nullptr,
                      std::atomic<int>* destroyed = nullptr)
      : hook_(std::move(hook)), destroyed_(destroyed) {}
  ~HookDevice() override {
    alive_ = false;
    if (destroyed_ != nullptr) destroyed_->fetch_add(1);
  }

  int calls() const { return calls_.load(); }
  int max_depth() const { return max_depth_.load(); }

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    Run(base.value(), offset, data);
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const override {
    Run(base.value(), offset, absl::Span<uint8_t>());
    (void)data;
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    Run(base.value(), offset, data);
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t>) const override {
    Run(base.value(), offset, absl::Span<uint8_t>());
  }

  // Whether the device was alive at the end of every handler.
  bool alive_in_handlers() const { return alive_in_handlers_.load(); }

 private:
  void Run(uint64_t base, uint64_t offset, absl::Span<uint8_t> data) const {
    struct Depth {
      std::atomic<int>& d;
      explicit Depth(std::atomic<int>& d) : d(d) { d.fetch_add(1); }
      ~Depth() { d.fetch_sub(1); }
    } depth(depth_);
    calls_.fetch_add(1);
    int seen = depth_.load(), max = max_depth_.load();
    while (seen > max && !max_depth_.compare_exchange_weak(max, seen)) {
    }
    if (hook_) hook_(base, offset, data);
    if (!alive_) alive_in_handlers_ = false;
  }

  Hook hook_;
  std::atomic<int>* destroyed_;
  bool alive_ = true;
  mutable std::atomic<int> calls_{0};
  mutable std::atomic<int> depth_{0};
  mutable std::atomic<int> max_depth_{0};
  mutable std::atomic<bool> alive_in_handlers_{true};
};

// ---------------------------------------------------------------------------
// Handlers that throw
// ---------------------------------------------------------------------------

TEST(MisbehavingDevice, ThrowingHandlerPropagatesAndLeavesManagerUnchanged) {
  IoManager m;
  auto thrower =
      std::make_shared<HookDevice>([](uint64_t, uint64_t, absl::Span<uint8_t>) {
        throw std::runtime_error("device fault");
      });
  auto good = std::make_shared<HookDevice>();
  ASSERT_TRUE(m.RegisterPio(Pio(0x10, 4), thrower).ok());
  ASSERT_TRUE(m.RegisterMmio(Mmio(0x1000, 0x10), thrower).ok());
  ASSERT_TRUE(m.RegisterPio(Pio(0x20, 4), good).ok());
  const IoManagerStats before = m.stats();

  uint8_t buf[2] = {0};
  EXPECT_THROW((void)m.PioWrite(PioAddress(0x11), buf), std::runtime_error);
  EXPECT_THROW((void)m.PioRead(PioAddress(0x10), absl::MakeSpan(buf)),
               std::runtime_error);
  EXPECT_THROW((void)m.MmioWrite(MmioAddress(0x1004), buf), std::runtime_error);
  EXPECT_THROW((void)m.MmioRead(MmioAddress(0x1000), absl::MakeSpan(buf)),
               std::runtime_error);

  // The read-side section was left: Synchronize would be refused (or wait
  // for itself) otherwise.
  EXPECT_TRUE(m.Synchronize().ok());
  const IoManagerStats after = m.stats();
  EXPECT_EQ(after.pio_ranges, before.pio_ranges);
  EXPECT_EQ(after.mmio_ranges, before.mmio_ranges);
  EXPECT_EQ(after.publishes, before.publishes);
  EXPECT_EQ(m.PioWrite(PioAddress(0x21), buf), IoStatus::kOk);
  EXPECT_EQ(good->calls(), 1);
  EXPECT_EQ(thrower->calls(), 4);
  // Still registered, still throwing; other threads are not affected.
  std::thread other([&] {
    EXPECT_THROW((void)m.PioWrite(PioAddress(0x12), buf), std::runtime_error);
    EXPECT_EQ(m.PioRead(PioAddress(0x22), absl::MakeSpan(buf)), IoStatus::kOk);
  });
  other.join();
  EXPECT_TRUE(m.DeregisterPio(PioAddress(0x13)).ok());
}

struct ThrowingMut : MutDevicePio {
  int writes = 0;
  void PioRead(PioAddress, PioAddressOffset, absl::Span<uint8_t> d) override {
    for (uint8_t& b : d) b = 0x42;
  }
  void PioWrite(PioAddress, PioAddressOffset off,
                absl::Span<const uint8_t>) override {
    ++writes;
    if (off == 0) throw std::logic_error("bad register");
  }
};

TEST(MisbehavingDevice, ThrowingLockedDeviceReleasesItsLock) {
  IoManager m;
  auto dev = MakeLocked<ThrowingMut>();
  ASSERT_TRUE(m.RegisterPio(Pio(0x40, 8), dev).ok());
  const uint8_t w[1] = {1};
  EXPECT_THROW((void)m.PioWrite(PioAddress(0x40), w), std::logic_error);
  // Same thread: the lock is free and the thread is not taken for its owner
  // (a re-entrant access would be refused with 0xff).
  uint8_t r[1] = {0};
  EXPECT_EQ(m.PioRead(PioAddress(0x41), absl::MakeSpan(r)), IoStatus::kOk);
  EXPECT_EQ(r[0], 0x42);
  EXPECT_EQ(dev->refused_reentrant_accesses(), 0u);
  // Another thread: not blocked on a lock left held.
  std::thread other(
      [&] { EXPECT_EQ(m.PioWrite(PioAddress(0x42), w), IoStatus::kOk); });
  other.join();
  EXPECT_EQ(dev->WithLock([](ThrowingMut& d) { return d.writes; }).value(), 2);
  EXPECT_TRUE(m.Synchronize().ok());
}

// ---------------------------------------------------------------------------
// Handlers that take long
// ---------------------------------------------------------------------------

// The slow handler blocks until the test releases it (or 10 s pass), so the
// measurements below overlap it by construction, however loaded the machine:
// anything that waited for that handler would take about 10 s, and the
// bounds (2 s) tell that apart from a slow machine.
TEST(MisbehavingDevice, SlowHandlerDelaysNeitherOtherDevicesNorWriters) {
  constexpr double kBoundMs = 2000;
  IoManager m;
  absl::Notification entered;
  absl::Notification release;
  std::atomic<bool> in_slow{false};
  auto slow = std::make_shared<HookDevice>(
      [&](uint64_t, uint64_t, absl::Span<uint8_t>) {
        in_slow = true;
        entered.Notify();
        release.WaitForNotificationWithTimeout(absl::Seconds(10));
        in_slow = false;
      });
  auto fast = std::make_shared<HookDevice>();
  ASSERT_TRUE(m.RegisterMmio(Mmio(0x1000, 0x100), slow).ok());
  ASSERT_TRUE(m.RegisterMmio(Mmio(0x2000, 0x100), fast).ok());

  std::thread vcpu0([&] {
    uint8_t b[4];
    EXPECT_EQ(m.MmioRead(MmioAddress(0x1000), absl::MakeSpan(b)),
              IoStatus::kOk);
  });
  entered.WaitForNotification();

  // Another vCPU on another device: each access is fast.
  double worst_dispatch_ms = 0;
  std::thread vcpu1([&] {
    uint8_t b[4];
    for (int i = 0; i < 200; ++i) {
      const auto t = Clock::now();
      EXPECT_EQ(m.MmioRead(MmioAddress(0x2004), absl::MakeSpan(b)),
                IoStatus::kOk);
      worst_dispatch_ms = std::max(worst_dispatch_ms, MsSince(t));
    }
  });
  vcpu1.join();

  // The writer: registers and even deregisters the slow device's own range
  // while its handler runs. Neither waits for the reader.
  auto t = Clock::now();
  ASSERT_TRUE(m.RegisterMmio(Mmio(0x3000, 0x100), fast).ok());
  const double register_ms = MsSince(t);
  t = Clock::now();
  auto gone = m.DeregisterMmio(MmioAddress(0x1010));
  const double deregister_ms = MsSince(t);
  ASSERT_TRUE(gone.ok());
  const bool overlapped = in_slow.load();
  release.Notify();

  // Synchronize does wait: the slow handler has returned when it does.
  EXPECT_TRUE(m.Synchronize().ok());
  EXPECT_FALSE(in_slow.load());
  vcpu0.join();

  std::printf(
      "worst other-device dispatch %.3f ms, register %.3f ms, "
      "deregister %.3f ms, during a handler blocked until released\n",
      worst_dispatch_ms, register_ms, deregister_ms);
  EXPECT_TRUE(overlapped) << "the handler returned before it was released";
  EXPECT_LT(worst_dispatch_ms, kBoundMs);
  EXPECT_LT(register_ms, kBoundMs);
  EXPECT_LT(deregister_ms, kBoundMs);
  EXPECT_EQ(fast->calls(), 200);
}

// ---------------------------------------------------------------------------
// Handlers that call back into the manager
// ---------------------------------------------------------------------------

struct SelfCaller : MutDevicePio {
  IoManager* manager = nullptr;
  uint8_t nested_read = 0;
  IoStatus nested_status = IoStatus::kInvalidRange;
  void PioRead(PioAddress, PioAddressOffset, absl::Span<uint8_t> d) override {
    for (uint8_t& b : d) b = 0x11;
  }
  void PioWrite(PioAddress base, PioAddressOffset,
                absl::Span<const uint8_t>) override {
    uint8_t b[1] = {0};
    nested_status =
        manager->PioRead(PioAddress(base.value() + 1), absl::MakeSpan(b));
    nested_read = b[0];
  }
};

TEST(MisbehavingDevice, LockedDeviceDispatchingToItselfIsRefusedNotDeadlocked) {
  IoManager m;
  auto dev = MakeLocked<SelfCaller>();
  EXPECT_TRUE(dev->WithLock([&](SelfCaller& d) { d.manager = &m; }).ok());
  ASSERT_TRUE(m.RegisterPio(Pio(0x60, 4), dev).ok());
  const uint8_t w[1] = {0};
  EXPECT_EQ(m.PioWrite(PioAddress(0x60), w), IoStatus::kOk);
  // The nested access reached the adapter (kOk), which refused it: open-bus
  // bytes, counted; the outer access completed.
  EXPECT_EQ(
      dev->WithLock([](SelfCaller& d) { return d.nested_status; }).value(),
      IoStatus::kOk);
  EXPECT_EQ(dev->WithLock([](SelfCaller& d) { return d.nested_read; }).value(),
            0xff);
  EXPECT_EQ(dev->refused_reentrant_accesses(), 1u);
  // Unchanged and usable.
  uint8_t r[1] = {0};
  EXPECT_EQ(m.PioRead(PioAddress(0x61), absl::MakeSpan(r)), IoStatus::kOk);
  EXPECT_EQ(r[0], 0x11);
  EXPECT_EQ(m.stats().pio_ranges, 1u);
}

TEST(MisbehavingDevice, SharedDeviceDispatchingToItselfNests) {
  IoManager m;
  std::shared_ptr<HookDevice> dev;
  dev = std::make_shared<HookDevice>(
      [&m](uint64_t base, uint64_t offset, absl::Span<uint8_t> data) {
        if (offset == 0) {  // a write at 0 reads offset 1 of itself
          uint8_t b[1] = {0};
          EXPECT_EQ(m.PioRead(PioAddress(static_cast<uint16_t>(base + 1)),
                              absl::MakeSpan(b)),
                    IoStatus::kOk);
          EXPECT_EQ(b[0], 0x77);
        } else {
          for (uint8_t& x : data) x = 0x77;
        }
      });
  ASSERT_TRUE(m.RegisterPio(Pio(0x70, 4), dev).ok());
  const uint8_t w[1] = {0};
  EXPECT_EQ(m.PioWrite(PioAddress(0x70), w), IoStatus::kOk);
  EXPECT_EQ(dev->calls(), 2);
  EXPECT_EQ(dev->max_depth(), 2);
  EXPECT_TRUE(m.Synchronize().ok());  // both sections were left
}

TEST(MisbehavingDevice, HandlerRegistersANewDeviceVisibleAtOnce) {
  IoManager m;
  auto added = std::make_shared<HookDevice>();
  IoStatus nested = IoStatus::kInvalidRange;
  absl::Status reg;
  auto dev = std::make_shared<HookDevice>(
      [&](uint64_t, uint64_t, absl::Span<uint8_t>) {
        reg = m.RegisterMmio(Mmio(0x9000, 0x10), added);
        // The handler's own thread sees its change at once.
        const uint8_t b[1] = {0};
        nested = m.MmioWrite(MmioAddress(0x9001), b);
      });
  ASSERT_TRUE(m.RegisterMmio(Mmio(0x8000, 0x10), dev).ok());
  const uint8_t w[1] = {0};
  EXPECT_EQ(m.MmioWrite(MmioAddress(0x8000), w), IoStatus::kOk);
  EXPECT_TRUE(reg.ok()) << reg;
  EXPECT_EQ(nested, IoStatus::kOk);
  EXPECT_EQ(added->calls(), 1);
  EXPECT_EQ(m.stats().mmio_ranges, 2u);
  // A second write tries again: refused (overlap), manager unchanged.
  EXPECT_EQ(m.MmioWrite(MmioAddress(0x8000), w), IoStatus::kOk);
  EXPECT_EQ(reg.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(m.stats().mmio_ranges, 2u);
}

TEST(MisbehavingDevice, HandlerDeregistersItselfAndStaysAliveUntilItReturns) {
  std::atomic<int> destroyed{0};
  IoManager m;
  absl::StatusOr<std::pair<PioRange, std::shared_ptr<DevicePio>>> gone =
      absl::UnknownError("not called");
  const void* self = nullptr;
  IoStatus after_in_handler = IoStatus::kOk;
  {
    auto dev = std::make_shared<HookDevice>(
        [&](uint64_t, uint64_t, absl::Span<uint8_t>) {
          gone = m.DeregisterPio(PioAddress(0x82));
          // Drop the reference the manager handed back: the retired snapshot
          // still keeps the device alive for this handler.
          if (gone.ok()) gone->second.reset();
          const uint8_t b[1] = {0};
          after_in_handler = m.PioWrite(PioAddress(0x81), b);
        },
        &destroyed);
    self = dev.get();
    ASSERT_TRUE(m.RegisterPio(Pio(0x80, 4), dev).ok());
  }  // the manager holds the only reference now
  const uint8_t w[1] = {0};
  EXPECT_EQ(m.PioWrite(PioAddress(0x80), w), IoStatus::kOk);
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->first.base(), PioAddress(0x80));
  EXPECT_EQ(after_in_handler, IoStatus::kDeviceNotFound);
  EXPECT_EQ(m.PioWrite(PioAddress(0x80), w), IoStatus::kDeviceNotFound);
  EXPECT_EQ(m.stats().pio_ranges, 0u);
  ASSERT_TRUE(m.Synchronize().ok());
  EXPECT_EQ(destroyed.load(), 1);  // released after the grace period
  (void)self;
}

TEST(MisbehavingDevice, HandlerMovesItself) {
  IoManager m;
  absl::Status moved;
  IoStatus old_addr = IoStatus::kOk, new_addr = IoStatus::kDeviceNotFound;
  auto dev = std::make_shared<HookDevice>(
      [&](uint64_t base, uint64_t offset, absl::Span<uint8_t>) {
        if (base != 0xa000 || offset != 0) return;
        moved = m.MoveMmio(MmioAddress(0xa008), MmioAddress(0xb000));
        uint8_t b[1];
        old_addr = m.MmioRead(MmioAddress(0xa004), absl::MakeSpan(b));
        new_addr = m.MmioRead(MmioAddress(0xb004), absl::MakeSpan(b));
      });
  ASSERT_TRUE(m.RegisterMmio(Mmio(0xa000, 0x10), dev).ok());
  const uint8_t w[1] = {0};
  EXPECT_EQ(m.MmioWrite(MmioAddress(0xa000), w), IoStatus::kOk);
  EXPECT_TRUE(moved.ok()) << moved;
  EXPECT_EQ(old_addr, IoStatus::kDeviceNotFound);
  EXPECT_EQ(new_addr, IoStatus::kOk);
  auto at = m.MmioDevice(MmioAddress(0xb00f));
  ASSERT_TRUE(at.has_value());
  EXPECT_EQ(at->first.base(), MmioAddress(0xb000));
  EXPECT_EQ(at->first.size(), 0x10u);
  EXPECT_EQ(at->second.get(), dev.get());
  EXPECT_FALSE(m.MmioDevice(MmioAddress(0xa000)).has_value());
  EXPECT_EQ(m.stats().mmio_ranges, 1u);
}

TEST(MisbehavingDevice, SynchronizeInHandlerIsRefusedWithoutWaiting) {
  IoManager m;
  absl::Status shared_status, locked_status;
  double ms = 1e9;
  auto dev = std::make_shared<HookDevice>(
      [&](uint64_t, uint64_t, absl::Span<uint8_t>) {
        const auto t = Clock::now();
        shared_status = m.Synchronize();
        ms = MsSince(t);
      });
  ASSERT_TRUE(m.RegisterPio(Pio(0x90, 2), dev).ok());
  struct SyncMut : MutDevicePio {
    IoManager* m = nullptr;
    absl::Status* out = nullptr;
    void PioRead(PioAddress, PioAddressOffset, absl::Span<uint8_t>) override {}
    void PioWrite(PioAddress, PioAddressOffset,
                  absl::Span<const uint8_t>) override {
      *out = m->Synchronize();
    }
  };
  auto locked = MakeLocked<SyncMut>();
  EXPECT_TRUE(locked
                  ->WithLock([&](SyncMut& d) {
                    d.m = &m;
                    d.out = &locked_status;
                  })
                  .ok());
  ASSERT_TRUE(m.RegisterPio(Pio(0x92, 2), locked).ok());
  const uint8_t w[1] = {0};
  EXPECT_EQ(m.PioWrite(PioAddress(0x90), w), IoStatus::kOk);
  EXPECT_EQ(m.PioWrite(PioAddress(0x92), w), IoStatus::kOk);
  EXPECT_EQ(shared_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(locked_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_LT(ms, 100.0);
  EXPECT_TRUE(m.Synchronize().ok());  // fine again outside
  EXPECT_EQ(m.stats().pio_ranges, 2u);
}

// A device whose destructor calls Synchronize: refused where retired objects
// are being destroyed (the reclaimer thread, or a thread inside
// Synchronize()/~IoManager), not a wait for itself.
class SyncOnDestroy final : public DevicePio {
 public:
  SyncOnDestroy(const IoManager* m, absl::Status* out) : m_(m), out_(out) {}
  ~SyncOnDestroy() override { *out_ = m_->Synchronize(); }
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t>) const override {}
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {}

 private:
  const IoManager* m_;
  absl::Status* out_;
};

TEST(MisbehavingDevice, SynchronizeInDestructorOnReclaimThreadIsRefused) {
  IoManager m;
  absl::Status in_destructor = absl::UnknownError("not destroyed");
  ASSERT_TRUE(m.RegisterPio(Pio(0xa0, 1),
                            std::make_shared<SyncOnDestroy>(&m, &in_destructor))
                  .ok());
  // Drop the returned reference at once: the manager's retired snapshot holds
  // the last one, released on the reclaimer thread.
  ASSERT_TRUE(m.DeregisterPio(PioAddress(0xa0)).ok());
  ASSERT_TRUE(m.Synchronize().ok());
  EXPECT_EQ(in_destructor.code(), absl::StatusCode::kFailedPrecondition)
      << in_destructor;
}

// The same device, destroyed inside this thread's Synchronize() (which
// destroys what is still queued itself): refused at once, not a wait for
// itself.
TEST(MisbehavingDevice, SynchronizeFromADestructorRunByADrainIsRefused) {
  IoManager m;
  for (int i = 0; i < 50; ++i) {
    absl::Status in_destructor = absl::UnknownError("not destroyed");
    ASSERT_TRUE(m.RegisterPio(Pio(0xa0, 1), std::make_shared<SyncOnDestroy>(
                                                 &m, &in_destructor))
                    .ok());
    ASSERT_TRUE(m.DeregisterPio(PioAddress(0xa0)).ok());
    ASSERT_TRUE(m.Synchronize().ok());
    EXPECT_EQ(in_destructor.code(), absl::StatusCode::kFailedPrecondition)
        << in_destructor;
  }
}

}  // namespace
}  // namespace vm_device
