// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of opt-in access information (access_info.h): the vCPU id from
// VcpuThread, the full address, what a non-vCPU thread reports, and that
// plain devices are dispatched exactly as before.

#include "vm_device/access_info.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

PioRange Pio(uint16_t base, uint16_t size) {
  return *PioRange::Create(PioAddress(base), size);
}

MmioRange Mmio(uint64_t base, uint64_t size) {
  return *MmioRange::Create(MmioAddress(base), size);
}

// Records the last access info it saw; reads answer the vCPU id.
class Recorder final : public DevicePioWithInfo, public DeviceMmioWithInfo {
 public:
  struct Seen {
    uint64_t address = 0, base = 0, offset = 0;
    uint32_t vcpu = 0;
    bool write = false;
    int calls = 0;
  };
  Seen seen() const {
    absl::MutexLock l(&mu_);
    return seen_;
  }

  void PioReadWithInfo(const PioAccessInfo& a,
                       absl::Span<uint8_t> data) const override {
    Record(a.address.value(), a.base.value(), a.offset, a.vcpu, false);
    Answer(a.vcpu, data);
  }
  void PioWriteWithInfo(const PioAccessInfo& a,
                        absl::Span<const uint8_t>) const override {
    Record(a.address.value(), a.base.value(), a.offset, a.vcpu, true);
  }
  void MmioReadWithInfo(const MmioAccessInfo& a,
                        absl::Span<uint8_t> data) const override {
    Record(a.address.value(), a.base.value(), a.offset, a.vcpu, false);
    Answer(a.vcpu, data);
  }
  void MmioWriteWithInfo(const MmioAccessInfo& a,
                         absl::Span<const uint8_t>) const override {
    Record(a.address.value(), a.base.value(), a.offset, a.vcpu, true);
  }

 private:
  static void Answer(uint32_t vcpu, absl::Span<uint8_t> data) {
    for (size_t i = 0; i < data.size() && i < 4; ++i) {
      data[i] = static_cast<uint8_t>(vcpu >> (8 * i));
    }
  }
  void Record(uint64_t address, uint64_t base, uint64_t offset, uint32_t vcpu,
              bool write) const {
    absl::MutexLock l(&mu_);
    seen_.address = address;
    seen_.base = base;
    seen_.offset = offset;
    seen_.vcpu = vcpu;
    seen_.write = write;
    ++seen_.calls;
  }
  mutable absl::Mutex mu_;
  mutable Seen seen_ ABSL_GUARDED_BY(mu_);
};

// A plain device (crate signature) that counts its calls.
class Plain final : public DeviceMmio {
 public:
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) const override {
    calls.fetch_add(1, std::memory_order_relaxed);
    for (auto& b : data) b = 0x5a;
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {
    calls.fetch_add(1, std::memory_order_relaxed);
  }
  mutable std::atomic<int> calls{0};
};

uint32_t Le32(const uint8_t* p) {
  return p[0] | p[1] << 8 | p[2] << 16 | uint32_t(p[3]) << 24;
}

TEST(AccessInfo, NonVcpuThreadReportsNoVcpu) {
  EXPECT_EQ(CurrentVcpuId(), kNoVcpu);
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100), dev).ok());
  uint8_t v[4] = {};
  ASSERT_EQ(io.MmioRead(MmioAddress(0x1010), v), IoStatus::kOk);
  EXPECT_EQ(Le32(v), kNoVcpu);
  EXPECT_EQ(dev->seen().vcpu, kNoVcpu);
  VcpuThread registered_only;  // registers, declares no id
  EXPECT_EQ(CurrentVcpuId(), kNoVcpu);
}

TEST(AccessInfo, HandlerSeesVcpuIdAndFullAddressOnBothBuses) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0xfee00000, 0x1000), dev).ok());
  ASSERT_TRUE(io.RegisterPio(Pio(0x3f8, 8), dev).ok());
  VcpuThread vcpu(7);
  EXPECT_EQ(CurrentVcpuId(), 7u);

  const uint8_t w[4] = {1, 2, 3, 4};
  ASSERT_EQ(io.MmioWrite(MmioAddress(0xfee00020), w), IoStatus::kOk);
  Recorder::Seen s = dev->seen();
  EXPECT_EQ(s.address, 0xfee00020u);
  EXPECT_EQ(s.base, 0xfee00000u);
  EXPECT_EQ(s.offset, 0x20u);
  EXPECT_EQ(s.vcpu, 7u);
  EXPECT_TRUE(s.write);

  uint8_t r[2] = {};
  ASSERT_EQ(io.PioRead(PioAddress(0x3fd), r), IoStatus::kOk);
  s = dev->seen();
  EXPECT_EQ(s.address, 0x3fdu);
  EXPECT_EQ(s.base, 0x3f8u);
  EXPECT_EQ(s.offset, 5u);
  EXPECT_EQ(s.vcpu, 7u);
  EXPECT_FALSE(s.write);
  EXPECT_EQ(r[0], 7);
  EXPECT_EQ(s.calls, 2);
}

// An exclusive device under LockedDevice asks CurrentVcpuId() itself.
TEST(AccessInfo, LockedDeviceHandlersReadCurrentVcpuId) {
  class Banked final : public MutDeviceMmio {
   public:
    void MmioRead(MmioAddress, MmioAddressOffset,
                  absl::Span<uint8_t> data) override {
      for (auto& b : data) b = static_cast<uint8_t>(CurrentVcpuId());
    }
    void MmioWrite(MmioAddress, MmioAddressOffset,
                   absl::Span<const uint8_t>) override {}
  };
  IoManager io;
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x10), MakeLocked<Banked>()).ok());
  std::vector<std::thread> vcpus;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    vcpus.emplace_back([&, t] {
      VcpuThread vcpu(t);
      for (int i = 0; i < 1000; ++i) {
        uint8_t v[2] = {};
        if (io.MmioRead(MmioAddress(0x1004), v) != IoStatus::kOk || v[0] != t ||
            v[1] != t) {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& v : vcpus) v.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(AccessInfo, NestedVcpuThreadRestoresThePreviousId) {
  VcpuThread outer(1);
  {
    VcpuThread inner(2);
    EXPECT_EQ(CurrentVcpuId(), 2u);
    {
      VcpuThread no_id;
      EXPECT_EQ(CurrentVcpuId(), 2u);
    }
  }
  EXPECT_EQ(CurrentVcpuId(), 1u);
}

TEST(AccessInfo, DirectCallThroughTheCrateSignatureBuildsTheSameInfo) {
  auto dev = std::make_shared<Recorder>();
  VcpuThread vcpu(3);
  const DeviceMmio& as_crate = *dev;
  const uint8_t w[1] = {9};
  as_crate.MmioWrite(MmioAddress(0x2000), 0x44, w);
  const Recorder::Seen s = dev->seen();
  EXPECT_EQ(s.address, 0x2044u);
  EXPECT_EQ(s.base, 0x2000u);
  EXPECT_EQ(s.offset, 0x44u);
  EXPECT_EQ(s.vcpu, 3u);
}

TEST(AccessInfo, LookupsHandBackTheDeviceItself) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  auto plain = std::make_shared<Plain>();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x2000, 0x100), plain).ok());
  const DeviceMmio* seen = nullptr;
  ASSERT_TRUE(io.VisitMmioDevice(
      MmioAddress(0x1004),
      [&](const MmioRange&, const DeviceMmio& d) { seen = &d; }));
  EXPECT_EQ(seen, static_cast<const DeviceMmio*>(dev.get()));
  ASSERT_TRUE(io.VisitMmioDevice(
      MmioAddress(0x2004),
      [&](const MmioRange&, const DeviceMmio& d) { seen = &d; }));
  EXPECT_EQ(seen, plain.get());
  EXPECT_EQ(io.MmioDevice(MmioAddress(0x1000))->second.get(),
            static_cast<DeviceMmio*>(dev.get()));
}

TEST(AccessInfo, PlainDevicesAreUnchangedBesideInfoDevices) {
  IoManager io;
  auto plain = std::make_shared<Plain>();
  auto info = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100), plain).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x2000, 0x100), info).ok());
  uint8_t v[4] = {};
  ASSERT_EQ(io.MmioRead(MmioAddress(0x1000), v), IoStatus::kOk);
  EXPECT_EQ(v[0], 0x5a);
  EXPECT_EQ(plain->calls.load(), 1);
  EXPECT_EQ(info->seen().calls, 0);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x20ff), v), IoStatus::kDeviceNotFound);
}

TEST(AccessInfo, InfoReachesADeviceBehindAccessRules) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  auto ruled = MmioWithAccessRules(dev, {.min_size = 4, .max_size = 4});
  ASSERT_TRUE(ruled.ok()) << ruled.status();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100), *ruled).ok());
  VcpuThread vcpu(5);
  uint8_t v[4] = {};
  ASSERT_EQ(io.MmioRead(MmioAddress(0x1008), v), IoStatus::kOk);
  EXPECT_EQ(dev->seen().vcpu, 5u);
  EXPECT_EQ(dev->seen().address, 0x1008u);
}

// Many vCPU threads, each with its own id, hit one shared info device and a
// per-thread range while a writer moves a range and registers/deregisters a
// spare one: every access reports the dispatching thread's id.
TEST(AccessInfo, ManyVcpusEachSeeTheirOwnIdUnderChurn) {
  constexpr int kThreads = 8;
  constexpr int kIters = 20000;
  IoManager io;

  class Checker final : public DeviceMmioWithInfo {
   public:
    void MmioReadWithInfo(const MmioAccessInfo& a,
                          absl::Span<uint8_t> data) const override {
      for (auto& b : data) b = static_cast<uint8_t>(a.vcpu);
      if (a.address.value() != a.base.value() + a.offset) {
        bad.fetch_add(1, std::memory_order_relaxed);
      }
    }
    void MmioWriteWithInfo(const MmioAccessInfo& a,
                           absl::Span<const uint8_t> data) const override {
      if (data.size() != 1 || data[0] != a.vcpu) {
        bad.fetch_add(1, std::memory_order_relaxed);
      }
      if (a.address.value() != a.base.value() + a.offset) {
        bad.fetch_add(1, std::memory_order_relaxed);
      }
    }
    mutable std::atomic<int> bad{0};
  };
  auto dev = std::make_shared<Checker>();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x10000, 0x1000), dev).ok());
  auto spare = std::make_shared<Plain>();

  std::atomic<bool> stop{false};
  std::thread writer([&] {
    bool mapped = false;
    while (!stop.load(std::memory_order_relaxed)) {
      if (mapped) {
        ASSERT_TRUE(io.DeregisterMmio(MmioAddress(0x20000)).ok());
      } else {
        ASSERT_TRUE(io.RegisterMmio(Mmio(0x20000, 0x100), spare).ok());
      }
      mapped = !mapped;
    }
  });
  std::atomic<int> wrong_id{0};
  std::vector<std::thread> vcpus;
  for (int t = 0; t < kThreads; ++t) {
    vcpus.emplace_back([&, t] {
      VcpuThread vcpu(t);
      for (int i = 0; i < kIters; ++i) {
        uint8_t r[1] = {0xee};
        const uint64_t addr = 0x10000 + (i * 8 + t) % 0x1000;
        if (io.MmioRead(MmioAddress(addr), r) != IoStatus::kOk ||
            r[0] != t) {
          wrong_id.fetch_add(1, std::memory_order_relaxed);
        }
        const uint8_t w[1] = {static_cast<uint8_t>(t)};
        if (io.MmioWrite(MmioAddress(addr), w) != IoStatus::kOk) {
          wrong_id.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  for (auto& v : vcpus) v.join();
  stop.store(true);
  writer.join();
  EXPECT_EQ(wrong_id.load(), 0);
  EXPECT_EQ(dev->bad.load(), 0);
}

}  // namespace
}  // namespace vm_device
