// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Synchronize() and ~IoManager destroy what is still queued for the
// reclaimer on the calling thread (src/internal/rcu.h, WaitForRetired). These
// tests check, with many threads at once (writers, readers dispatching, and
// the reclaimer thread competing for the same queue), that each still
// returns only after everything retired before it was destroyed, that no
// device is destroyed while a handler runs. (A destructor run inside
// Synchronize() that calls Synchronize(): misbehaving_device_test.cc.)

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

PioRange Pio(uint16_t base, uint16_t size) {
  return *PioRange::Create(PioAddress(base), size);
}

// Marks its flag when destroyed; a handler checks the flag is still clear.
class Tracked final : public DevicePio {
 public:
  Tracked(std::atomic<bool>* destroyed, std::atomic<int>* bad)
      : destroyed_(destroyed), bad_(bad) {}
  ~Tracked() override { destroyed_->store(true, std::memory_order_release); }
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) const override {
    if (destroyed_->load(std::memory_order_acquire)) bad_->fetch_add(1);
    for (uint8_t& b : data) b = 0x5a;
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {
    if (destroyed_->load(std::memory_order_acquire)) bad_->fetch_add(1);
  }

 private:
  std::atomic<bool>* destroyed_;
  std::atomic<int>* bad_;
};

// Writers register, deregister and Synchronize() on one manager while
// readers dispatch to every writer's address: after each Synchronize() the
// device that writer deregistered before it is gone, and no handler ever ran
// on a destroyed device.
TEST(ReclaimDrain, SynchronizeReturnsAfterEarlierRetirementsWithManyThreads) {
  constexpr int kWriters = 4;
  constexpr int kReaders = 4;
  constexpr int kRounds = 300;
  IoManager m;
  std::atomic<int> bad{0};
  std::atomic<int> not_destroyed{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&] {
      uint8_t buf[2];
      while (!stop.load(std::memory_order_relaxed)) {
        for (int w = 0; w < kWriters; ++w) {
          (void)m.PioRead(PioAddress(uint16_t(0x100 * (w + 1))),
                          absl::MakeSpan(buf));
        }
      }
    });
  }
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      const uint16_t base = uint16_t(0x100 * (w + 1));
      for (int i = 0; i < kRounds; ++i) {
        auto destroyed = std::make_unique<std::atomic<bool>>(false);
        ASSERT_TRUE(
            m.RegisterPio(Pio(base, 2),
                          std::make_shared<Tracked>(destroyed.get(), &bad))
                .ok());
        // Drop the returned reference: the retired snapshot holds the last.
        ASSERT_TRUE(m.DeregisterPio(PioAddress(base)).ok());
        ASSERT_TRUE(m.Synchronize().ok());
        if (!destroyed->load(std::memory_order_acquire)) {
          not_destroyed.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : writers) t.join();
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(not_destroyed.load(), 0);
  EXPECT_EQ(bad.load(), 0);
}

// Many threads, each with managers of its own that it destroys while the
// others retire and drain: when ~IoManager returns, every device its changes
// retired is destroyed. (The managers are constructed up front on this
// thread: Abseil's deadlock detector, uninstrumented in Debian's build, shows
// TSan a false race when many threads construct managers at once.)
TEST(ReclaimDrain, DestructorReturnsAfterItsRetirementsWithManyThreads) {
  constexpr int kThreads = 8;
  constexpr int kManagers = 60;
  std::vector<std::unique_ptr<IoManager>> managers;
  for (int i = 0; i < kThreads * kManagers; ++i) {
    managers.push_back(std::make_unique<IoManager>());
  }
  std::atomic<int> bad{0};
  std::atomic<int> not_destroyed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kManagers; ++i) {
        std::unique_ptr<IoManager> m = std::move(managers[t * kManagers + i]);
        std::vector<std::unique_ptr<std::atomic<bool>>> flags;
        for (int k = 0; k < 8; ++k) {
          flags.push_back(std::make_unique<std::atomic<bool>>(false));
          ASSERT_TRUE(m->RegisterPio(Pio(uint16_t(0x10 * k), 4),
                                     std::make_shared<Tracked>(
                                         flags.back().get(), &bad))
                          .ok());
        }
        for (int k = 0; k < 8; k += 2) {
          ASSERT_TRUE(m->DeregisterPio(PioAddress(uint16_t(0x10 * k))).ok());
        }
        uint8_t buf[1];
        (void)m->PioRead(PioAddress(0x10), absl::MakeSpan(buf));
        m.reset();
        for (const auto& f : flags) {
          if (!f->load(std::memory_order_acquire)) not_destroyed.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(not_destroyed.load(), 0);
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace vm_device
