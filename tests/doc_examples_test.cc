// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The crate's other doc examples, in C++: a shared device with its own lock
// on each bus (DevicePio / DeviceMmio), an exclusive device on each bus
// (MutDevicePio / MutDeviceMmio), and the two device_manager examples that
// register a no-op device on both buses, by range and through resources.

#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

// A 32-bit register read back little-endian, written from the first byte.
// Shared devices guard it with a lock of their own.
class SharedPioDevice final : public DevicePio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) const override {
    if (data.size() > 4) return;
    absl::MutexLock l(&mu_);
    for (size_t i = 0; i < data.size(); ++i) data[i] = config_ >> (8 * i);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t> data) const override {
    absl::MutexLock l(&mu_);
    config_ = data[0];
  }

 private:
  mutable absl::Mutex mu_;
  mutable uint32_t config_ ABSL_GUARDED_BY(mu_) = 0x1234;
};

class SharedMmioDevice final : public DeviceMmio {
 public:
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) const override {
    if (data.size() > 4) return;
    absl::MutexLock l(&mu_);
    for (size_t i = 0; i < data.size(); ++i) data[i] = config_ >> (8 * i);
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t> data) const override {
    absl::MutexLock l(&mu_);
    config_ = data[0];
  }

 private:
  mutable absl::Mutex mu_;
  mutable uint32_t config_ ABSL_GUARDED_BY(mu_) = 0x1234;
};

// The same register for one caller at a time: a plain field.
class ExclusivePioDevice final : public MutDevicePio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) override {
    if (data.size() > 4) return;
    for (size_t i = 0; i < data.size(); ++i) data[i] = config_ >> (8 * i);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t> data) override {
    config_ = data[0];
  }

 private:
  uint32_t config_ = 0x1234;
};

class ExclusiveMmioDevice final : public MutDeviceMmio {
 public:
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) override {
    if (data.size() > 4) return;
    for (size_t i = 0; i < data.size(); ++i) data[i] = config_ >> (8 * i);
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t> data) override {
    config_ = data[0];
  }

 private:
  uint32_t config_ = 0x1234;
};

TEST(DocExamples, SharedPioDeviceWithItsOwnLock) {
  const SharedPioDevice dev;  // const: handlers may run concurrently
  uint8_t data[2] = {};
  dev.PioRead(PioAddress(0x60), 0, absl::MakeSpan(data));
  EXPECT_THAT(data, testing::ElementsAre(0x34, 0x12));
  const uint8_t byte[] = {0x7f};
  dev.PioWrite(PioAddress(0x60), 0, byte);
  dev.PioRead(PioAddress(0x60), 0, absl::MakeSpan(data));
  EXPECT_THAT(data, testing::ElementsAre(0x7f, 0));
}

TEST(DocExamples, SharedMmioDeviceWithItsOwnLock) {
  IoManager io;
  ASSERT_TRUE(io.RegisterMmio(*MmioRange::Create(MmioAddress(0x1000), 4),
                              std::make_shared<SharedMmioDevice>())
                  .ok());
  uint8_t data[4] = {};
  ASSERT_EQ(io.MmioRead(MmioAddress(0x1000), absl::MakeSpan(data)),
            IoStatus::kOk);
  EXPECT_THAT(data, testing::ElementsAre(0x34, 0x12, 0, 0));
  const uint8_t byte[] = {0x7f};
  ASSERT_EQ(io.MmioWrite(MmioAddress(0x1000), byte), IoStatus::kOk);
  ASSERT_EQ(io.MmioRead(MmioAddress(0x1000), absl::MakeSpan(data, 1)),
            IoStatus::kOk);
  EXPECT_EQ(data[0], 0x7f);
}

TEST(DocExamples, ExclusivePioDevice) {
  ExclusivePioDevice dev;
  uint8_t data[2] = {};
  dev.PioRead(PioAddress(0x60), 0, absl::MakeSpan(data));
  EXPECT_THAT(data, testing::ElementsAre(0x34, 0x12));
  const uint8_t byte[] = {0x01};
  dev.PioWrite(PioAddress(0x60), 0, byte);
  dev.PioRead(PioAddress(0x60), 0, absl::MakeSpan(data));
  EXPECT_THAT(data, testing::ElementsAre(0x01, 0));
}

TEST(DocExamples, ExclusiveMmioDeviceRegisteredThroughLockedDevice) {
  IoManager io;
  ASSERT_TRUE(io.RegisterMmio(*MmioRange::Create(MmioAddress(0x1000), 4),
                              MakeLocked<ExclusiveMmioDevice>())
                  .ok());
  ASSERT_TRUE(io.RegisterPio(*PioRange::Create(PioAddress(0x60), 4),
                             MakeLocked<ExclusivePioDevice>())
                  .ok());
  const uint8_t byte[] = {0x02};
  ASSERT_EQ(io.MmioWrite(MmioAddress(0x1000), byte), IoStatus::kOk);
  uint8_t data[2] = {};
  ASSERT_EQ(io.MmioRead(MmioAddress(0x1000), absl::MakeSpan(data)),
            IoStatus::kOk);
  EXPECT_THAT(data, testing::ElementsAre(0x02, 0));
  ASSERT_EQ(io.PioRead(PioAddress(0x60), absl::MakeSpan(data)), IoStatus::kOk);
  EXPECT_THAT(data, testing::ElementsAre(0x34, 0x12));
}

// The device_manager examples' device: on both buses, doing nothing.
class NoopDevice final : public DevicePio, public DeviceMmio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t>) const override {}
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {}
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t>) const override {}
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {}
};

TEST(DocExamples, NoopDeviceOnBothBusesByRange) {
  IoManager manager;
  auto device = std::make_shared<NoopDevice>();
  const uint8_t ok[] = {'o', 'k'};
  EXPECT_EQ(manager.PioWrite(PioAddress(0), ok), IoStatus::kDeviceNotFound);
  ASSERT_TRUE(
      manager.RegisterPio(*PioRange::Create(PioAddress(0), 10), device).ok());
  ASSERT_TRUE(
      manager.RegisterMmio(*MmioRange::Create(MmioAddress(0), 10), device)
          .ok());
  EXPECT_EQ(manager.PioWrite(PioAddress(0), ok), IoStatus::kOk);
  EXPECT_EQ(manager.MmioWrite(MmioAddress(0), ok), IoStatus::kOk);
}

TEST(DocExamples, NoopDeviceOnBothBusesThroughResources) {
  IoManager manager;
  auto device = std::make_shared<NoopDevice>();
  const Resource resources[] = {PioAddressRange{0, 10},
                                MmioAddressRange{0, 10}};
  ASSERT_TRUE(manager.RegisterPioResources(device, resources).ok());
  ASSERT_TRUE(manager.RegisterMmioResources(device, resources).ok());
  const uint8_t ok[] = {'o', 'k'};
  EXPECT_EQ(manager.PioWrite(PioAddress(0), ok), IoStatus::kOk);
  EXPECT_EQ(manager.MmioWrite(MmioAddress(0), ok), IoStatus::kOk);
  EXPECT_EQ(manager.DeregisterResources(resources), 2u);
  EXPECT_EQ(manager.PioWrite(PioAddress(0), ok), IoStatus::kDeviceNotFound);
}

}  // namespace
}  // namespace vm_device
