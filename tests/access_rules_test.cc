// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of per-range access rules (access_rules.h): validation, refusals that
// never reach the device, and rules that travel with the range through
// moves, batches and resources, under concurrent dispatch.

#include "vm_device/access_rules.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

PioRange Pio(uint16_t base, uint16_t size) {
  return *PioRange::Create(PioAddress(base), size);
}

MmioRange Mmio(uint64_t base, uint64_t size) {
  return *MmioRange::Create(MmioAddress(base), size);
}

// Counts the accesses that reach it; reads answer 0x5a.
class Counter final : public DevicePio, public DeviceMmio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) const override {
    Hit(data);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {
    calls.fetch_add(1, std::memory_order_relaxed);
  }
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) const override {
    Hit(data);
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {
    calls.fetch_add(1, std::memory_order_relaxed);
  }
  mutable std::atomic<int64_t> calls{0};

 private:
  void Hit(absl::Span<uint8_t> data) const {
    calls.fetch_add(1, std::memory_order_relaxed);
    for (auto& b : data) b = 0x5a;
  }
};

TEST(AccessRules, InvalidRulesAreRefusedNamingTheField) {
  EXPECT_TRUE(ValidateAccessRules({}).ok());
  absl::Status s = ValidateAccessRules({.min_size = 0});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("min_size is 0"));
  s = ValidateAccessRules({.min_size = 4, .max_size = 2});
  EXPECT_THAT(Msg(s), HasSubstr("max_size 2 is below min_size 4"));
  s = ValidateAccessRules({.alignment = 3});
  EXPECT_THAT(Msg(s), HasSubstr("alignment 3 is not a power of two"));
  s = ValidateAccessRules({.alignment = 0});
  EXPECT_THAT(Msg(s), HasSubstr("alignment 0"));

  auto dev = std::make_shared<Counter>();
  auto r = MmioWithAccessRules(dev, {.alignment = 6});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(r.status()), HasSubstr("MmioWithAccessRules: access rules"));
  auto p = PioWithAccessRules(nullptr, {});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(p.status()), HasSubstr("null device"));
}

TEST(AccessRules, SizeRulesRefuseWithoutCallingTheDevice) {
  IoManager io;
  auto dev = std::make_shared<Counter>();
  auto ruled = PioWithAccessRules(dev, {.min_size = 1, .max_size = 1});
  ASSERT_TRUE(ruled.ok());
  ASSERT_TRUE(io.RegisterPio(Pio(0x3f8, 8), *ruled).ok());
  uint8_t one[1] = {}, two[2] = {0, 0};
  EXPECT_EQ(io.PioRead(PioAddress(0x3f9), one), IoStatus::kOk);
  EXPECT_EQ(one[0], 0x5a);
  EXPECT_EQ(io.PioRead(PioAddress(0x3f8), two), IoStatus::kAccessRuleViolation);
  EXPECT_EQ(two[0], 0);  // untouched: the device never saw it
  EXPECT_EQ(io.PioWrite(PioAddress(0x3f8), two),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(dev->calls.load(), 1);
  // The shape checks still come first.
  EXPECT_EQ(io.PioRead(PioAddress(0x3f8), absl::Span<uint8_t>()),
            IoStatus::kInvalidRange);
  EXPECT_EQ(io.PioRead(PioAddress(0x3ff), two), IoStatus::kDeviceNotFound);
}

TEST(AccessRules, MinimumSizeAndMaximumOnly) {
  IoManager io;
  auto dev = std::make_shared<Counter>();
  ASSERT_TRUE(
      io.RegisterMmio(Mmio(0x1000, 0x100),
                      *MmioWithAccessRules(dev, {.min_size = 2}))
          .ok());
  uint8_t b[8] = {};
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1000), absl::MakeSpan(b, 1)),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1000), absl::MakeSpan(b, 8)),
            IoStatus::kOk);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1001), absl::MakeSpan(b, 3)),
            IoStatus::kOk);  // no alignment rule
  EXPECT_EQ(dev->calls.load(), 2);
}

TEST(AccessRules, AlignmentIsOfTheOffsetInTheRange) {
  IoManager io;
  auto dev = std::make_shared<Counter>();
  // Base 0x1002: offset 0 is address 0x1002.
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1002, 0x100),
                              *MmioWithAccessRules(dev, {.alignment = 4}))
                  .ok());
  uint8_t b[4] = {};
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1002), b), IoStatus::kOk);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1006), absl::MakeSpan(b, 1)),
            IoStatus::kOk);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1004), b),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1003), absl::MakeSpan(b, 1)),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(dev->calls.load(), 2);
}

TEST(AccessRules, NaturalAlignment) {
  IoManager io;
  auto dev = std::make_shared<Counter>();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100),
                              *MmioWithAccessRules(
                                  dev, {.max_size = 4,
                                        .natural_alignment = true}))
                  .ok());
  uint8_t b[8] = {};
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1003), absl::MakeSpan(b, 1)),
            IoStatus::kOk);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1002), absl::MakeSpan(b, 2)),
            IoStatus::kOk);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1002), absl::MakeSpan(b, 4)),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1008), absl::MakeSpan(b, 8)),
            IoStatus::kAccessRuleViolation);  // above max_size
  EXPECT_EQ(dev->calls.load(), 2);
}

TEST(AccessRules, DirectCallsOfTheRuledDeviceAnswerOpenBus) {
  auto dev = std::make_shared<Counter>();
  std::shared_ptr<DeviceMmio> ruled = *MmioWithAccessRules(dev, {.max_size = 1});
  uint8_t b[2] = {0, 0};
  ruled->MmioRead(MmioAddress(0), 0, b);
  EXPECT_EQ(b[0], 0xff);
  EXPECT_EQ(b[1], 0xff);
  ruled->MmioRead(MmioAddress(0), 0, absl::MakeSpan(b, 1));
  EXPECT_EQ(b[0], 0x5a);
  EXPECT_EQ(dev->calls.load(), 1);
}

TEST(AccessRules, NewRulesReplaceOldOnes) {
  IoManager io;
  auto dev = std::make_shared<Counter>();
  auto first = *MmioWithAccessRules(dev, {.max_size = 1});
  auto second = *MmioWithAccessRules(first, {.min_size = 4});
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100), second).ok());
  uint8_t b[4] = {};
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1000), b), IoStatus::kOk);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1000), absl::MakeSpan(b, 1)),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(dev->calls.load(), 1);
}

TEST(AccessRules, RulesTravelThroughMovesBatchesAndResources) {
  IoManager io;
  auto dev = std::make_shared<Counter>();
  std::shared_ptr<DeviceMmio> ruled = *MmioWithAccessRules(dev, {.min_size = 4});
  uint8_t one[1] = {}, four[4] = {};

  // A batch.
  IoBatch batch;
  batch.AddMmio(Mmio(0x1000, 0x100), ruled);
  ASSERT_TRUE(io.Commit(std::move(batch)).ok());
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1000), one),
            IoStatus::kAccessRuleViolation);

  // A move.
  ASSERT_TRUE(io.MoveMmio(MmioAddress(0x1000), MmioAddress(0x8000)).ok());
  EXPECT_EQ(io.MmioRead(MmioAddress(0x8000), one),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x8000), four), IoStatus::kOk);

  // A BAR move as a batch (remove, then add what was removed elsewhere).
  IoBatch bar;
  bar.RemoveMmio(MmioAddress(0x8000));
  bar.AddMmio(Mmio(0x9000, 0x100), io.MmioDevice(MmioAddress(0x8000))->second);
  ASSERT_TRUE(io.Commit(std::move(bar)).ok());
  EXPECT_EQ(io.MmioRead(MmioAddress(0x9004), one),
            IoStatus::kAccessRuleViolation);

  // Deregistering hands back the ruled device.
  auto gone = io.DeregisterMmio(MmioAddress(0x9000));
  ASSERT_TRUE(gone.ok());
  EXPECT_EQ(gone->second, ruled);

  // Resources.
  std::vector<Resource> res = {MmioAddressRange{0xa000, 0x100},
                               MmioAddressRange{0xb000, 0x100}};
  ASSERT_TRUE(io.RegisterMmioResources(ruled, res).ok());
  EXPECT_EQ(io.MmioRead(MmioAddress(0xb010), one),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(io.MmioRead(MmioAddress(0xa010), four), IoStatus::kOk);
  EXPECT_EQ(dev->calls.load(), 2);
}

TEST(AccessRules, RangesWithoutRulesBesideRuledOnesAreUntouched) {
  IoManager io;
  auto plain = std::make_shared<Counter>();
  auto ruled_dev = std::make_shared<Counter>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 1), plain).ok());
  ASSERT_TRUE(io.RegisterPio(
                    Pio(0x64, 1), *PioWithAccessRules(ruled_dev, {.max_size = 1}))
                  .ok());
  uint8_t b[1] = {};
  EXPECT_EQ(io.PioRead(PioAddress(0x60), b), IoStatus::kOk);
  EXPECT_EQ(io.PioRead(PioAddress(0x64), b), IoStatus::kOk);
  EXPECT_EQ(plain->calls.load(), 1);
  EXPECT_EQ(ruled_dev->calls.load(), 1);
}

// 4 vCPU threads make allowed and violating accesses to a ruled range that a
// writer moves back and forth (MoveMmio and a remove+add batch). Every kOk
// reached the device, no violation did, and no status other than kOk,
// kAccessRuleViolation or (at the address the range just left)
// kDeviceNotFound appears.
TEST(AccessRules, ConcurrentAccessesWhileTheRangeMoves) {
  constexpr int kThreads = 4;
  constexpr int kIters = 20000;
  IoManager io;
  auto dev = std::make_shared<Counter>();
  std::shared_ptr<DeviceMmio> ruled =
      *MmioWithAccessRules(dev, {.min_size = 4, .max_size = 4, .alignment = 4});
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x10000, 0x1000), ruled).ok());

  std::atomic<bool> stop{false};
  std::thread writer([&] {
    bool at_a = true;
    int n = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const uint64_t from = at_a ? 0x10000 : 0x20000;
      const uint64_t to = at_a ? 0x20000 : 0x10000;
      if (++n % 2 == 0) {
        ASSERT_TRUE(io.MoveMmio(MmioAddress(from), MmioAddress(to)).ok());
      } else {
        IoBatch b;
        b.RemoveMmio(MmioAddress(from)).AddMmio(Mmio(to, 0x1000), ruled);
        ASSERT_TRUE(io.Commit(std::move(b)).ok());
      }
      at_a = !at_a;
    }
  });
  std::atomic<int64_t> oks{0}, violations{0}, unexpected{0};
  std::vector<std::thread> vcpus;
  for (int t = 0; t < kThreads; ++t) {
    vcpus.emplace_back([&, t] {
      VcpuThread vcpu(t);
      for (int i = 0; i < kIters; ++i) {
        const uint64_t base = (i & 1) ? 0x10000 : 0x20000;
        uint8_t b[4] = {};
        const bool bad = (i % 3) == 0;
        const uint64_t addr = base + (bad ? 2 : 8);
        const IoStatus s =
            (i & 2) ? io.MmioRead(MmioAddress(addr), b)
                    : io.MmioWrite(MmioAddress(addr), b);
        if (s == IoStatus::kOk && !bad) {
          oks.fetch_add(1, std::memory_order_relaxed);
        } else if (s == IoStatus::kAccessRuleViolation && bad) {
          violations.fetch_add(1, std::memory_order_relaxed);
        } else if (s != IoStatus::kDeviceNotFound) {
          unexpected.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  for (auto& v : vcpus) v.join();
  stop.store(true);
  writer.join();
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_EQ(dev->calls.load(), oks.load());
  EXPECT_GT(oks.load() + violations.load(), 0);
}

}  // namespace
}  // namespace vm_device
