// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Hotplug soak: 2 x cores vCPU threads dispatch without pause while one
// hotplug thread registers and deregisters devices and another moves ranges
// (deregister then register at another base, and MovePio/MoveMmio), for a
// bounded time. Every access is accounted for and checked exactly (see
// tests/hotplug_harness.h); at the end every device the test released is
// destroyed, none while a handler ran, and nothing leaks (ASan/LSan).
//
// Run time: --soak_seconds=N, else VM_DEVICE_SOAK_SECONDS, else 10 s. CI runs
// it under the sanitizers with --test_env=VM_DEVICE_SOAK_SECONDS=30; for a
// long soak: bazel test //tests:hotplug_soak_test --config=tsan \
//   --test_env=VM_DEVICE_SOAK_SECONDS=3600 --test_timeout=4000

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/hotplug_harness.h"
#include "vm_device/vcpu_thread.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

using hotplug_harness::Harness;
using hotplug_harness::SecondsFromEnv;

double g_soak_seconds = 0;  // from --soak_seconds, if given

double SoakSeconds() {
  if (g_soak_seconds > 0) return g_soak_seconds;
  return SecondsFromEnv("VM_DEVICE_SOAK_SECONDS", 10);
}

TEST(HotplugSoak, EveryAccessAccountedForAndEveryDeviceReleased) {
  auto manager = std::make_unique<IoManager>();
  // Logs sized for long soaks; a full log only stops that window's changes.
  Harness h(manager.get(), /*seed=*/0x50a4, /*log_capacity=*/1 << 14);
  std::atomic<bool> stop{false};
  const int readers_n =
      2 * static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));

  std::vector<std::thread> threads;
  for (int i = 0; i < readers_n; ++i) {
    threads.emplace_back([&, i] {
      VcpuThread rcu;
      std::mt19937_64 rng(0x5eed + i);
      while (!stop.load(std::memory_order_relaxed)) h.Access(rng);
    });
  }
  std::atomic<uint64_t> hotplug_ops{0}, move_ops{0};
  // The hotplug thread: registers and deregisters (dropping devices whose
  // last range went, and building new ones).
  threads.emplace_back([&] {
    std::mt19937_64 rng(11);
    while (!stop.load(std::memory_order_relaxed)) {
      {
        std::lock_guard<std::mutex> l(h.mu);
        if (rng() % 2 == 0) {
          h.OpRegister(rng);
        } else {
          h.OpDeregister(rng);
        }
      }
      hotplug_ops.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::yield();
    }
  });
  // The mover: BAR reprogramming, both ways.
  threads.emplace_back([&] {
    std::mt19937_64 rng(13);
    while (!stop.load(std::memory_order_relaxed)) {
      {
        std::lock_guard<std::mutex> l(h.mu);
        h.OpMove(rng, /*two_step=*/(rng() & 1) != 0);
      }
      move_ops.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::yield();
    }
  });

  std::this_thread::sleep_for(std::chrono::duration<double>(SoakSeconds()));
  stop = true;
  for (auto& t : threads) t.join();

  h.TearDown();
  ASSERT_TRUE(manager->Synchronize().ok());
  const auto& c = h.counters();
  const auto& a = h.accesses();
  std::printf(
      "soak %.0f s: accesses %llu = routed %llu + no device %llu; misrouted "
      "%llu; changes %llu; devices built %llu, released %llu, destroyed "
      "%llu\n",
      SoakSeconds(), static_cast<unsigned long long>(a.total.load()),
      static_cast<unsigned long long>(a.routed.load()),
      static_cast<unsigned long long>(a.no_device.load()),
      static_cast<unsigned long long>(a.misrouted.load()),
      static_cast<unsigned long long>(h.changes()),
      static_cast<unsigned long long>(c.constructed.load()),
      static_cast<unsigned long long>(h.released()),
      static_cast<unsigned long long>(c.destroyed.load()));

  EXPECT_EQ(h.failures().count(), 0u) << h.failures().first();
  EXPECT_EQ(a.total.load(), a.routed.load() + a.no_device.load());
  EXPECT_EQ(a.misrouted.load(), 0u);
  EXPECT_EQ(a.wrong_no_device.load(), 0u);
  EXPECT_GT(a.routed.load(), 0u);
  EXPECT_GT(a.no_device.load(), 0u);
  EXPECT_GT(hotplug_ops.load(), 10u);
  EXPECT_GT(move_ops.load(), 10u);
  EXPECT_EQ(c.destroyed_in_handler.load(), 0u);
  EXPECT_EQ(c.handler_on_dead_device.load(), 0u);
  EXPECT_EQ(c.destroyed.load(), h.released());
  EXPECT_EQ(c.destroyed.load(), c.constructed.load());
  const IoManagerStats st = manager->stats();
  EXPECT_EQ(st.pio_ranges + st.mmio_ranges, 0u);
  manager.reset();  // nothing left for LeakSanitizer
}

}  // namespace
}  // namespace vm_device

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--soak_seconds=", 15) == 0) {
      vm_device::g_soak_seconds = std::strtod(argv[i] + 15, nullptr);
    }
  }
  return RUN_ALL_TESTS();
}
