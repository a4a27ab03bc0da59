// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of IoManager: the crate's device_manager tests (4-7) adapted to the
// port's API, and what the port adds or changes: all-or-nothing multi-range
// registration, batches, moves, lookups, Synchronize() and device lifetime.

#include "vm_device/io_manager.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// The message as a std::string, for the gmock string matchers (absl's
// string_view is its own type in this Abseil build).
std::string Msg(const absl::Status& s) { return std::string(s.message()); }

PioRange Pio(uint16_t base, uint16_t size) {
  absl::StatusOr<PioRange> r = PioRange::Create(PioAddress(base), size);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

MmioRange Mmio(uint64_t base, uint64_t size) {
  absl::StatusOr<MmioRange> r = MmioRange::Create(MmioAddress(base), size);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

// The crate's DummyDevice: a 32-bit little-endian config register on both
// buses, written for one caller at a time.
class ConfigDevice final : public MutDevicePio, public MutDeviceMmio {
 public:
  explicit ConfigDevice(uint32_t config) : config_(config) {}
  uint32_t config() const { return config_; }

  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) override {
    Read(data);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t> data) override {
    Write(data);
  }
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) override {
    Read(data);
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t> data) override {
    Write(data);
  }

 private:
  void Read(absl::Span<uint8_t> data) const {
    for (size_t i = 0; i < data.size(); ++i) {
      data[i] = i < 4 ? static_cast<uint8_t>(config_ >> (8 * i)) : 0;
    }
  }
  void Write(absl::Span<const uint8_t> data) {
    uint32_t v = 0;
    for (size_t i = 0; i < std::min<size_t>(data.size(), 4); ++i) {
      v |= uint32_t{data[i]} << (8 * i);
    }
    config_ = v;
  }

  uint32_t config_;
};

uint32_t ConfigOf(LockedDevice<ConfigDevice>& dev) {
  return dev.WithLock([](ConfigDevice& d) { return d.config(); }).value();
}

// One access as a device saw it.
struct Access {
  bool mmio;
  bool write;
  uint64_t base;
  uint64_t offset;
  std::vector<uint8_t> data;  // written bytes, or a read's size in zeros
  friend bool operator==(const Access&, const Access&) = default;
};

// A shared device on both buses that logs every access, answers reads with
// 0xa0, 0xa1, ... and counts its destruction.
class Recorder final : public DevicePio, public DeviceMmio {
 public:
  explicit Recorder(std::atomic<int>* destroyed = nullptr)
      : destroyed_(destroyed) {}
  ~Recorder() override {
    if (destroyed_ != nullptr) destroyed_->fetch_add(1);
  }

  void PioRead(PioAddress base, PioAddressOffset offset,
               absl::Span<uint8_t> data) const override {
    Log(false, false, base.value(), offset, data);
    Fill(data);
  }
  void PioWrite(PioAddress base, PioAddressOffset offset,
                absl::Span<const uint8_t> data) const override {
    Log(false, true, base.value(), offset, data);
  }
  void MmioRead(MmioAddress base, MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    Log(true, false, base.value(), offset, data);
    Fill(data);
  }
  void MmioWrite(MmioAddress base, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override {
    Log(true, true, base.value(), offset, data);
  }

  std::vector<Access> log() const {
    absl::MutexLock l(&mu_);
    return log_;
  }

 private:
  static void Fill(absl::Span<uint8_t> data) {
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0xa0 + i;
  }
  void Log(bool mmio, bool write, uint64_t base, uint64_t offset,
           absl::Span<const uint8_t> data) const {
    absl::MutexLock l(&mu_);
    log_.push_back(Access{mmio, write, base, offset,
                          write ? std::vector<uint8_t>(data.begin(), data.end())
                                : std::vector<uint8_t>(data.size(), 0)});
  }

  std::atomic<int>* destroyed_;
  mutable absl::Mutex mu_;
  mutable std::vector<Access> log_ ABSL_GUARDED_BY(mu_);
};

// A device on the PIO bus only.
class PioOnly final : public DevicePio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) const override {
    std::fill(data.begin(), data.end(), 0x55);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {}
};

bool PioMapped(const IoManager& m, uint16_t addr) {
  return m.PioDevice(PioAddress(addr)).has_value();
}
bool MmioMapped(const IoManager& m, uint64_t addr) {
  return m.MmioDevice(MmioAddress(addr)).has_value();
}

// -----------------------------------------------------------------------------
// The crate's device_manager tests
// -----------------------------------------------------------------------------

TEST(IoManager, RegisterDeregisterDeviceIo) {
  IoManager io;
  auto dummy = MakeLocked<ConfigDevice>(0);
  const Resource resources[] = {
      MmioAddressRange{0x1234'5678, 0x8765'4321},
      LegacyIrq{4},
      PioAddressRange{0x40, 4},
  };
  ASSERT_TRUE(io.RegisterMmioResources(dummy, resources).ok());
  ASSERT_TRUE(io.RegisterPioResources(dummy, resources).ok());
  EXPECT_TRUE(MmioMapped(io, 0x1234'5678 + 0x8765'4320));
  EXPECT_TRUE(PioMapped(io, 0x43));
  EXPECT_EQ(io.DeregisterResources(resources), 2u);
  EXPECT_FALSE(MmioMapped(io, 0x1234'5678));
  EXPECT_FALSE(PioMapped(io, 0x40));
}

TEST(IoManager, MmioReadWrite) {
  IoManager io;
  auto dummy = MakeLocked<ConfigDevice>(0x1234);
  const MmioRange range = Mmio(0x1234'5678, 0x8765'4321);
  ASSERT_TRUE(io.RegisterMmio(range, dummy).ok());

  uint8_t data[4] = {0, 0, 0, 0};
  ASSERT_EQ(io.MmioRead(range.base(), absl::MakeSpan(data)), IoStatus::kOk);
  EXPECT_THAT(data, testing::ElementsAre(0x34, 0x12, 0, 0));
  const MmioAddress past = range.base() + range.size();
  EXPECT_EQ(io.MmioRead(past, absl::MakeSpan(data)), IoStatus::kDeviceNotFound);

  const uint8_t zeros[4] = {0, 0, 0, 0};
  ASSERT_EQ(io.MmioWrite(range.base(), zeros), IoStatus::kOk);
  EXPECT_EQ(ConfigOf(*dummy), 0u);
  EXPECT_EQ(io.MmioWrite(past, zeros), IoStatus::kDeviceNotFound);
}

TEST(IoManager, PioReadWrite) {
  IoManager io;
  auto dummy = MakeLocked<ConfigDevice>(0x1234);
  const PioRange range = Pio(0x40, 4);
  ASSERT_TRUE(io.RegisterPio(range, dummy).ok());

  uint8_t data[4] = {0, 0, 0, 0};
  ASSERT_EQ(io.PioRead(range.base(), absl::MakeSpan(data)), IoStatus::kOk);
  EXPECT_THAT(data, testing::ElementsAre(0x34, 0x12, 0, 0));
  const PioAddress past = range.base() + range.size();
  EXPECT_EQ(io.PioRead(past, absl::MakeSpan(data)), IoStatus::kDeviceNotFound);

  const uint8_t zeros[4] = {0, 0, 0, 0};
  ASSERT_EQ(io.PioWrite(range.base(), zeros), IoStatus::kOk);
  EXPECT_EQ(ConfigOf(*dummy), 0u);
  EXPECT_EQ(io.PioWrite(past, zeros), IoStatus::kDeviceNotFound);
}

// The crate's test_error_code, adapted: errors are absl::Status with the
// specific code and a message naming what clashed.
TEST(IoManager, OverlapIsAlreadyExistsNamingBothRanges) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x40, 4), dev).ok());
  absl::Status s = io.RegisterPio(Pio(0x42, 4), dev);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Msg(s), HasSubstr("PIO [0x42, 0x45]"));
  EXPECT_THAT(Msg(s), HasSubstr("PIO [0x40, 0x43]"));

  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x1000), dev).ok());
  s = io.RegisterMmio(Mmio(0x1000, 1), dev);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Msg(s), HasSubstr("MMIO [0x1000, 0x1fff]"));
}

// -----------------------------------------------------------------------------
// Dispatch
// -----------------------------------------------------------------------------

TEST(IoManager, DispatchPassesRangeBaseOffsetAndData) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x3f8, 8), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0xfed0'0000, 0x400), dev).ok());

  const uint8_t out[] = {1, 2};
  EXPECT_EQ(io.PioWrite(PioAddress(0x3fa), out), IoStatus::kOk);
  uint8_t in[3] = {};
  EXPECT_EQ(io.PioRead(PioAddress(0x3fc), absl::MakeSpan(in)), IoStatus::kOk);
  EXPECT_THAT(in, testing::ElementsAre(0xa0, 0xa1, 0xa2));
  const uint8_t word[] = {9, 8, 7, 6};
  EXPECT_EQ(io.MmioWrite(MmioAddress(0xfed0'03fc), word), IoStatus::kOk);
  uint8_t byte[1] = {};
  EXPECT_EQ(io.MmioRead(MmioAddress(0xfed0'0000), absl::MakeSpan(byte)),
            IoStatus::kOk);

  EXPECT_EQ(dev->log(), (std::vector<Access>{
                            {false, true, 0x3f8, 2, {1, 2}},
                            {false, false, 0x3f8, 4, {0, 0, 0}},
                            {true, true, 0xfed0'0000, 0x3fc, {9, 8, 7, 6}},
                            {true, false, 0xfed0'0000, 0, {0}},
                        }));
}

TEST(IoManager, FailedDispatchCallsNoDevice) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x10, 8), dev).ok());  // [0x10, 0x17]
  ASSERT_TRUE(io.RegisterPio(Pio(0x18, 8), dev).ok());  // adjacent
  ASSERT_TRUE(io.RegisterPio(PioRange::Unit(PioAddress(0xffff)), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(kU64Max - 0xff, 0x100), dev).ok());

  std::vector<uint8_t> big(65536);
  uint8_t four[4] = {0x11, 0x22, 0x33, 0x44};
  EXPECT_EQ(io.PioRead(PioAddress(0x10), absl::Span<uint8_t>()),
            IoStatus::kInvalidRange);
  EXPECT_EQ(io.PioWrite(PioAddress(0x500), absl::Span<const uint8_t>()),
            IoStatus::kInvalidRange);
  EXPECT_EQ(io.MmioRead(MmioAddress(0x500), absl::Span<uint8_t>()),
            IoStatus::kInvalidRange);
  EXPECT_EQ(io.PioRead(PioAddress(0x10), absl::MakeSpan(big)),
            IoStatus::kInvalidAccessLength);
  EXPECT_EQ(io.PioWrite(PioAddress(0x10), big), IoStatus::kInvalidAccessLength);
  EXPECT_EQ(
      io.PioWrite(PioAddress(0x10), absl::MakeConstSpan(big.data(), 65535)),
      IoStatus::kInvalidRange);
  EXPECT_EQ(io.PioRead(PioAddress(0xffff), absl::MakeSpan(four, 2)),
            IoStatus::kInvalidRange);
  EXPECT_EQ(io.MmioRead(MmioAddress(kU64Max), absl::MakeSpan(four, 2)),
            IoStatus::kInvalidRange);
  EXPECT_EQ(io.PioRead(PioAddress(0x16), absl::MakeSpan(four)),
            IoStatus::kDeviceNotFound);  // spans two ranges of one device
  EXPECT_EQ(io.PioWrite(PioAddress(0x0f), four), IoStatus::kDeviceNotFound);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0), four), IoStatus::kDeviceNotFound);
  EXPECT_TRUE(dev->log().empty());
  EXPECT_THAT(four, testing::ElementsAre(0x11, 0x22, 0x33, 0x44));

  // The edges that do work.
  EXPECT_EQ(io.PioRead(PioAddress(0xffff), absl::MakeSpan(four, 1)),
            IoStatus::kOk);
  EXPECT_EQ(io.MmioRead(MmioAddress(kU64Max), absl::MakeSpan(four, 1)),
            IoStatus::kOk);
  EXPECT_EQ(io.PioRead(PioAddress(0x14), absl::MakeSpan(four)), IoStatus::kOk);
  EXPECT_EQ(dev->log(), (std::vector<Access>{
                            {false, false, 0xffff, 0, {0}},
                            {true, false, kU64Max - 0xff, 0xff, {0}},
                            {false, false, 0x10, 4, {0, 0, 0, 0}},
                        }));
}

TEST(IoManager, OneDeviceOnSeveralRangesSeesEachBase) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0xc000'0000, 0x1000), dev).ok());  // BAR0
  ASSERT_TRUE(io.RegisterMmio(Mmio(0xc000'1000, 0x1000), dev).ok());  // BAR1
  const uint8_t b[] = {1};
  EXPECT_EQ(io.MmioWrite(MmioAddress(0xc000'0010), b), IoStatus::kOk);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0xc000'1010), b), IoStatus::kOk);
  EXPECT_EQ(dev->log(), (std::vector<Access>{
                            {true, true, 0xc000'0000, 0x10, {1}},
                            {true, true, 0xc000'1000, 0x10, {1}},
                        }));
}

TEST(IoManager, TheTwoBusesAreIndependent) {
  IoManager io;
  auto on_pio = std::make_shared<Recorder>();
  auto on_mmio = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x1000, 0x10), on_pio).ok());
  EXPECT_FALSE(MmioMapped(io, 0x1000));
  const uint8_t b[] = {7};
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), b), IoStatus::kDeviceNotFound);

  // The same numbers on the other bus do not clash.
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x10), on_mmio).ok());
  EXPECT_EQ(io.PioWrite(PioAddress(0x1004), b), IoStatus::kOk);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1008), b), IoStatus::kOk);
  EXPECT_EQ(on_pio->log(),
            (std::vector<Access>{{false, true, 0x1000, 4, {7}}}));
  EXPECT_EQ(on_mmio->log(),
            (std::vector<Access>{{true, true, 0x1000, 8, {7}}}));

  ASSERT_TRUE(io.DeregisterPio(PioAddress(0x1000)).ok());
  EXPECT_TRUE(MmioMapped(io, 0x1000));
  EXPECT_EQ(io.PioWrite(PioAddress(0x1004), b), IoStatus::kDeviceNotFound);
}

// -----------------------------------------------------------------------------
// Registration
// -----------------------------------------------------------------------------

TEST(IoManager, DeregisterReturnsRangeAndDevice) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 5), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0xe000, 0x100), dev).ok());

  auto pio = io.DeregisterPio(PioAddress(0x63));
  ASSERT_TRUE(pio.ok()) << pio.status();
  EXPECT_EQ(pio->first.base(), PioAddress(0x60));
  EXPECT_EQ(pio->first.size(), 5u);
  EXPECT_EQ(pio->second.get(), static_cast<DevicePio*>(dev.get()));

  auto again = io.DeregisterPio(PioAddress(0x63));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(again.status()), HasSubstr("0x63"));

  auto mmio = io.DeregisterMmio(MmioAddress(0xe0ff));
  ASSERT_TRUE(mmio.ok()) << mmio.status();
  EXPECT_EQ(mmio->first.base(), MmioAddress(0xe000));
  EXPECT_EQ(mmio->first.size(), 0x100u);
  EXPECT_EQ(mmio->second.get(), static_cast<DeviceMmio*>(dev.get()));
  auto missing = io.DeregisterMmio(MmioAddress(0xe100));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(missing.status()), HasSubstr("MMIO"));
  EXPECT_THAT(Msg(missing.status()), HasSubstr("0xe100"));
}

TEST(IoManager, NullDeviceIsRefused) {
  IoManager io;
  EXPECT_EQ(io.RegisterPio(Pio(0x60, 1), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(io.RegisterMmio(Mmio(0x60, 1), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  const Resource res[] = {PioAddressRange{0x60, 1}};
  absl::Status s = io.RegisterPioResources(nullptr, res);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("resource #0"));
  IoBatch batch;
  batch.AddMmio(Mmio(0x60, 1), nullptr);
  EXPECT_EQ(io.Commit(std::move(batch)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(PioMapped(io, 0x60));
  EXPECT_FALSE(MmioMapped(io, 0x60));
  EXPECT_EQ(io.stats().publishes, 0u);
}

TEST(IoManager, RegisterFromADifferentThreadIsSeenByLaterDispatch) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  std::thread t([&] { ASSERT_TRUE(io.RegisterPio(Pio(0x70, 2), dev).ok()); });
  t.join();
  const uint8_t b[] = {3};
  EXPECT_EQ(io.PioWrite(PioAddress(0x71), b), IoStatus::kOk);
  EXPECT_EQ(dev->log().size(), 1u);
}

// -----------------------------------------------------------------------------
// Resources
// -----------------------------------------------------------------------------

// The crate's probe, where the crate leaves MMIO 0x1000 and PIO 0x50
// registered. Here nothing of the failed call is.
TEST(IoManager, RegisterResourcesIsAllOrNothing) {
  IoManager io;
  auto existing = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x100, 4), existing).ok());
  const uint64_t publishes = io.stats().publishes;

  auto dev = std::make_shared<Recorder>();
  const Resource resources[] = {
      MmioAddressRange{0x1000, 0x10},
      PioAddressRange{0x50, 4},
      PioAddressRange{0x102, 4},
      PioAddressRange{0x200, 4},
  };
  absl::Status s = io.RegisterResources(dev, resources);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Msg(s), StartsWith("resource #2: "));
  EXPECT_THAT(Msg(s), HasSubstr("PIO [0x100, 0x103]"));

  EXPECT_FALSE(MmioMapped(io, 0x1000));
  EXPECT_FALSE(PioMapped(io, 0x50));
  EXPECT_FALSE(PioMapped(io, 0x200));
  EXPECT_EQ(io.PioDevice(PioAddress(0x102))->second.get(),
            static_cast<DevicePio*>(existing.get()));
  EXPECT_EQ(io.stats().pio_ranges, 1u);
  EXPECT_EQ(io.stats().mmio_ranges, 0u);
  EXPECT_EQ(io.stats().publishes, publishes);

  // Without the clash, all four go in, in one publish.
  const Resource fixed[] = {
      MmioAddressRange{0x1000, 0x10},
      PioAddressRange{0x50, 4},
      PioAddressRange{0x104, 4},
      PioAddressRange{0x200, 4},
  };
  ASSERT_TRUE(io.RegisterResources(dev, fixed).ok());
  EXPECT_TRUE(MmioMapped(io, 0x100f));
  EXPECT_TRUE(PioMapped(io, 0x53));
  EXPECT_TRUE(PioMapped(io, 0x107));
  EXPECT_TRUE(PioMapped(io, 0x203));
  EXPECT_EQ(io.stats().publishes, publishes + 1);
}

TEST(IoManager, InvalidResourceRangeIsAnErrorNamingIt) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  const Resource zero_size[] = {
      PioAddressRange{0x10, 4},
      LegacyIrq{5},
      PioAddressRange{0x20, 0},
  };
  absl::Status s = io.RegisterPioResources(dev, zero_size);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("resource #2"));
  EXPECT_THAT(Msg(s), HasSubstr("0x20"));
  EXPECT_FALSE(PioMapped(io, 0x10));

  const Resource overflowing[] = {MmioAddressRange{kU64Max, 2}};
  s = io.RegisterMmioResources(dev, overflowing);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("resource #0"));

  const Resource mixed[] = {
      MmioAddressRange{0x1000, 0x10},
      PioAddressRange{0xfffe, 4},
  };
  s = io.RegisterResources(dev, mixed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("resource #1"));
  EXPECT_FALSE(MmioMapped(io, 0x1000));
  EXPECT_EQ(io.stats().publishes, 0u);
}

TEST(IoManager, OverlapInsideTheResourceListIsAlreadyExists) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  const Resource resources[] = {
      MmioAddressRange{0x1000, 0x100},
      MmioAddressRange{0x2000, 0x100},
      MmioAddressRange{0x10ff, 0x10},
  };
  absl::Status s = io.RegisterMmioResources(dev, resources);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Msg(s), HasSubstr("resource #2"));
  EXPECT_EQ(io.stats().mmio_ranges, 0u);
}

TEST(IoManager, RegisterResourcesRefusesABusTheDeviceLacks) {
  IoManager io;
  auto dev = std::make_shared<PioOnly>();
  const Resource resources[] = {
      PioAddressRange{0x60, 1},
      MmioAddressRange{0x1000, 0x10},
  };
  absl::Status s = io.RegisterResources(dev, resources);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("resource #1"));
  EXPECT_THAT(Msg(s), HasSubstr("DeviceMmio"));
  EXPECT_FALSE(PioMapped(io, 0x60));

  // PIO ranges alone are fine for a PIO-only device.
  const Resource pio_only[] = {PioAddressRange{0x60, 1}, LegacyIrq{1}};
  ASSERT_TRUE(io.RegisterResources(dev, pio_only).ok());
  uint8_t b[1] = {};
  EXPECT_EQ(io.PioRead(PioAddress(0x60), absl::MakeSpan(b)), IoStatus::kOk);
  EXPECT_EQ(b[0], 0x55);
}

TEST(IoManager, ResourcesOfOtherKindsAreSkipped) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  const Resource resources[] = {
      LegacyIrq{4}, MsiIrq{MsiIrqType::kPciMsix, 1, 2}, MacAddress{"x"},
      KvmMemSlot{1}, PioAddressRange{0x60, 1}};
  ASSERT_TRUE(io.RegisterMmioResources(dev, resources).ok());
  EXPECT_EQ(io.stats().publishes, 0u);  // nothing to register
  ASSERT_TRUE(io.RegisterPioResources(dev, resources).ok());
  EXPECT_EQ(io.stats().pio_ranges, 1u);
  EXPECT_EQ(io.stats().mmio_ranges, 0u);

  DeviceResources all;
  for (const Resource& r :
       {Resource(MmioAddressRange{0x1000, 0x10}), Resource(LegacyIrq{4})}) {
    all.Append(r);
  }
  ASSERT_TRUE(io.RegisterResources(dev, all.GetAllResources()).ok());
  EXPECT_TRUE(MmioMapped(io, 0x1000));
}

// The size of a resource is ignored, an interior base removes the range
// holding it (whatever its device), and missing ones are skipped.
TEST(IoManager, DeregisterResourcesCountsWhatItRemoved) {
  IoManager io;
  auto a = std::make_shared<Recorder>();
  auto b = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x100, 8), a).ok());
  ASSERT_TRUE(io.RegisterPio(Pio(0x200, 4), a).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x1000), b).ok());

  const Resource resources[] = {
      PioAddressRange{0x104, 1},         // interior: removes [0x100, 0x107]
      LegacyIrq{4},                      // skipped
      MmioAddressRange{0x1000, 0xdead},  // size ignored
      PioAddressRange{0x300, 4},         // nothing there
      PioAddressRange{0x102, 4},         // already removed above
  };
  EXPECT_EQ(io.DeregisterResources(resources), 2u);
  EXPECT_FALSE(PioMapped(io, 0x100));
  EXPECT_FALSE(PioMapped(io, 0x107));
  EXPECT_FALSE(MmioMapped(io, 0x1000));
  EXPECT_TRUE(PioMapped(io, 0x200));
  EXPECT_EQ(io.DeregisterResources(resources), 0u);
  const uint64_t publishes = io.stats().publishes;
  EXPECT_EQ(io.DeregisterResources({}), 0u);
  EXPECT_EQ(io.stats().publishes, publishes);
}

// -----------------------------------------------------------------------------
// Batches and moves
// -----------------------------------------------------------------------------

TEST(IoManager, CommitAppliesABatchInOnePublish) {
  IoManager io;
  auto old_dev = std::make_shared<Recorder>();
  auto new_dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), old_dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100), old_dev).ok());
  const uint64_t publishes = io.stats().publishes;

  IoBatch batch;
  batch.RemovePio(PioAddress(0x62))
      .AddPio(Pio(0x60, 4), new_dev)  // the same range, a new device
      .AddPio(Pio(0x70, 2), new_dev)
      .RemoveMmio(MmioAddress(0x10ff))
      .AddMmio(Mmio(0x2000, 0x10), new_dev);
  EXPECT_EQ(batch.size(), 5u);
  absl::StatusOr<IoBatch::Removed> removed = io.Commit(std::move(batch));
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(io.stats().publishes, publishes + 1);

  ASSERT_EQ(removed->pio.size(), 1u);
  EXPECT_EQ(removed->pio[0].first.base(), PioAddress(0x60));
  EXPECT_EQ(removed->pio[0].first.size(), 4u);
  EXPECT_EQ(removed->pio[0].second.get(),
            static_cast<DevicePio*>(old_dev.get()));
  ASSERT_EQ(removed->mmio.size(), 1u);
  EXPECT_EQ(removed->mmio[0].first.base(), MmioAddress(0x1000));
  EXPECT_EQ(removed->mmio[0].first.size(), 0x100u);

  EXPECT_EQ(io.PioDevice(PioAddress(0x60))->second.get(),
            static_cast<DevicePio*>(new_dev.get()));
  EXPECT_TRUE(PioMapped(io, 0x71));
  EXPECT_FALSE(MmioMapped(io, 0x1000));
  EXPECT_TRUE(MmioMapped(io, 0x200f));
}

TEST(IoManager, FailedCommitChangesNothingAndNamesTheChange) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100), dev).ok());
  const IoManagerStats before = io.stats();

  IoBatch batch;
  batch.AddPio(Pio(0x80, 4), dev)
      .RemoveMmio(MmioAddress(0x1000))
      .AddPio(Pio(0x62, 1), dev);  // overlaps 0x60
  absl::StatusOr<IoBatch::Removed> r = io.Commit(std::move(batch));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Msg(r.status()), StartsWith("change 3 of 3: "));

  EXPECT_FALSE(PioMapped(io, 0x80));
  EXPECT_TRUE(MmioMapped(io, 0x1000));
  EXPECT_EQ(io.MmioDevice(MmioAddress(0x1000))->first.size(), 0x100u);
  EXPECT_TRUE(PioMapped(io, 0x60));
  EXPECT_EQ(io.stats().publishes, before.publishes);
  EXPECT_EQ(io.stats().pio_ranges, before.pio_ranges);
  EXPECT_EQ(io.stats().mmio_ranges, before.mmio_ranges);

  IoBatch missing;
  missing.AddPio(Pio(0x80, 4), dev).RemovePio(PioAddress(0x90));
  r = io.Commit(std::move(missing));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(r.status()), StartsWith("change 2 of 2: "));
  EXPECT_THAT(Msg(r.status()), HasSubstr("0x90"));
  EXPECT_FALSE(PioMapped(io, 0x80));

  // A removal earlier in the same batch does not count twice.
  IoBatch twice;
  twice.RemovePio(PioAddress(0x60)).RemovePio(PioAddress(0x61));
  r = io.Commit(std::move(twice));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(PioMapped(io, 0x60));
  EXPECT_EQ(io.stats().publishes, before.publishes);
}

TEST(IoManager, BatchChangesApplyInOrder) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  IoBatch add_then_remove;
  add_then_remove.AddPio(Pio(0x60, 4), dev).RemovePio(PioAddress(0x63));
  absl::StatusOr<IoBatch::Removed> r = io.Commit(std::move(add_then_remove));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->pio.size(), 1u);
  EXPECT_EQ(r->pio[0].first.base(), PioAddress(0x60));
  EXPECT_FALSE(PioMapped(io, 0x60));

  IoBatch remove_first;  // fails: nothing there yet
  remove_first.RemovePio(PioAddress(0x63)).AddPio(Pio(0x60, 4), dev);
  EXPECT_EQ(io.Commit(std::move(remove_first)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(PioMapped(io, 0x60));
}

TEST(IoManager, EmptyBatchPublishesNothing) {
  IoManager io;
  IoBatch batch;
  EXPECT_TRUE(batch.empty());
  absl::StatusOr<IoBatch::Removed> r = io.Commit(std::move(batch));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->pio.empty());
  EXPECT_TRUE(r->mmio.empty());
  EXPECT_EQ(io.stats().publishes, 0u);
}

TEST(IoManager, MovePioKeepsSizeAndDevice) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x100, 8), dev).ok());
  const uint64_t publishes = io.stats().publishes;
  ASSERT_TRUE(io.MovePio(PioAddress(0x103), PioAddress(0x200)).ok());
  EXPECT_EQ(io.stats().publishes, publishes + 1);
  EXPECT_FALSE(PioMapped(io, 0x100));
  auto entry = io.PioDevice(PioAddress(0x207));
  ASSERT_TRUE(entry.has_value());
  EXPECT_EQ(entry->first.base(), PioAddress(0x200));
  EXPECT_EQ(entry->first.size(), 8u);
  EXPECT_EQ(entry->second.get(), static_cast<DevicePio*>(dev.get()));
  const uint8_t b[] = {1};
  EXPECT_EQ(io.PioWrite(PioAddress(0x201), b), IoStatus::kOk);
  EXPECT_EQ(dev->log(), (std::vector<Access>{{false, true, 0x200, 1, {1}}}));

  // Onto part of its own old place.
  ASSERT_TRUE(io.MovePio(PioAddress(0x200), PioAddress(0x204)).ok());
  EXPECT_FALSE(PioMapped(io, 0x203));
  EXPECT_TRUE(PioMapped(io, 0x20b));
}

TEST(IoManager, FailedMoveChangesNothing) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x100, 8), dev).ok());
  ASSERT_TRUE(io.RegisterPio(Pio(0x200, 8), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x1000), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x4000, 0x1000), dev).ok());
  const uint64_t publishes = io.stats().publishes;

  absl::Status s = io.MovePio(PioAddress(0x108), PioAddress(0x300));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  s = io.MovePio(PioAddress(0x100), PioAddress(0xfff9));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("PIO [0x100, 0x107]"));
  s = io.MovePio(PioAddress(0x100), PioAddress(0x1fc));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);

  EXPECT_EQ(io.MoveMmio(MmioAddress(0x3000), MmioAddress(0x8000)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(
      io.MoveMmio(MmioAddress(0x1000), MmioAddress(kU64Max - 0xffe)).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(io.MoveMmio(MmioAddress(0x1800), MmioAddress(0x4fff)).code(),
            absl::StatusCode::kAlreadyExists);

  EXPECT_EQ(io.stats().publishes, publishes);
  EXPECT_EQ(io.PioDevice(PioAddress(0x100))->first.size(), 8u);
  EXPECT_EQ(io.MmioDevice(MmioAddress(0x1000))->first.size(), 0x1000u);
  EXPECT_FALSE(PioMapped(io, 0x1fc));
  EXPECT_FALSE(MmioMapped(io, 0x8000));

  // Up to the top of the MMIO space is fine.
  ASSERT_TRUE(
      io.MoveMmio(MmioAddress(0x1000), MmioAddress(kU64Max - 0xfff)).ok());
  EXPECT_TRUE(MmioMapped(io, kU64Max));
  EXPECT_FALSE(MmioMapped(io, 0x1000));
}

TEST(IoManager, ChangesFromSeveralThreadsWhileDispatching) {
  IoManager io;
  ASSERT_TRUE(io.RegisterPio(Pio(0xf000, 1), std::make_shared<PioOnly>()).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> misses{0};
  std::thread vcpu([&] {
    const uint8_t b[] = {1};
    while (!stop.load()) {
      if (io.PioWrite(PioAddress(0xf000), b) != IoStatus::kOk) ++misses;
    }
  });
  auto churn = [&](uint16_t first) {
    auto dev = std::make_shared<Recorder>();
    for (int round = 0; round < 3; ++round) {
      for (uint16_t i = 0; i < 100; ++i) {
        ASSERT_TRUE(io.RegisterPio(Pio(first + 4 * i, 4), dev).ok());
      }
      ASSERT_TRUE(
          io.MovePio(PioAddress(first), PioAddress(first + 0x400)).ok());
      ASSERT_TRUE(io.DeregisterPio(PioAddress(first + 0x400)).ok());
      for (uint16_t i = 1; i < 100; ++i) {
        ASSERT_TRUE(io.DeregisterPio(PioAddress(first + 4 * i + 3)).ok());
      }
    }
  };
  std::thread w1(churn, 0x1000), w2(churn, 0x2000);
  w1.join();
  w2.join();
  stop = true;
  vcpu.join();
  EXPECT_EQ(misses.load(), 0);
  EXPECT_EQ(io.stats().pio_ranges, 1u);
  EXPECT_EQ(io.stats().publishes, 1u + 2 * 3 * (100 + 1 + 100));
  EXPECT_TRUE(io.Synchronize().ok());
}

// -----------------------------------------------------------------------------
// Lookup
// -----------------------------------------------------------------------------

TEST(IoManager, DeviceLookupsReturnRangeAndDevice) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x10), dev).ok());

  auto pio = io.PioDevice(PioAddress(0x63));
  ASSERT_TRUE(pio.has_value());
  EXPECT_EQ(pio->first.base(), PioAddress(0x60));
  EXPECT_EQ(pio->first.size(), 4u);
  EXPECT_EQ(pio->second.get(), static_cast<DevicePio*>(dev.get()));
  EXPECT_EQ(io.PioDevice(PioAddress(0x64)), std::nullopt);

  auto mmio = io.MmioDevice(MmioAddress(0x1000));
  ASSERT_TRUE(mmio.has_value());
  EXPECT_EQ(mmio->first.size(), 0x10u);
  EXPECT_EQ(mmio->second.get(), static_cast<DeviceMmio*>(dev.get()));
  EXPECT_EQ(io.MmioDevice(MmioAddress(0xfff)), std::nullopt);
}

TEST(IoManager, VisitCallsBackOnlyOnAHit) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), dev).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x10), dev).ok());

  int calls = 0;
  EXPECT_TRUE(io.VisitPioDevice(
      PioAddress(0x62), [&](const PioRange& r, const DevicePio& d) {
        ++calls;
        EXPECT_EQ(r.base(), PioAddress(0x60));
        EXPECT_EQ(r.size(), 4u);
        EXPECT_EQ(&d, static_cast<const DevicePio*>(dev.get()));
      }));
  EXPECT_TRUE(io.VisitMmioDevice(
      MmioAddress(0x100f), [&](const MmioRange& r, const DeviceMmio& d) {
        ++calls;
        EXPECT_EQ(r.base(), MmioAddress(0x1000));
        EXPECT_EQ(r.size(), 0x10u);
        EXPECT_EQ(&d, static_cast<const DeviceMmio*>(dev.get()));
      }));
  EXPECT_EQ(calls, 2);
  EXPECT_FALSE(io.VisitPioDevice(
      PioAddress(0x5f), [&](const PioRange&, const DevicePio&) { ++calls; }));
  EXPECT_FALSE(io.VisitMmioDevice(
      MmioAddress(0x1010),
      [&](const MmioRange&, const DeviceMmio&) { ++calls; }));
  EXPECT_EQ(calls, 2);
}

TEST(IoManager, VisitRangesWalksEveryRangeInAddressOrder) {
  IoManager io;
  EXPECT_EQ(io.VisitPioRanges([](const PioRange&, const DevicePio&) {
    ADD_FAILURE() << "an empty bus has no range";
  }), 0u);
  auto a = std::make_shared<Recorder>();
  auto b = std::make_shared<Recorder>();
  // Registered out of order; visited in address order.
  ASSERT_TRUE(io.RegisterPio(Pio(0x70, 2), b).ok());
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), a).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x2000, 0x10), a).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x10), b).ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x3000, 0x1), b).ok());

  std::vector<std::pair<uint64_t, uint64_t>> pio;
  std::vector<const DevicePio*> pio_devices;
  EXPECT_EQ(io.VisitPioRanges([&](const PioRange& r, const DevicePio& d) {
    pio.emplace_back(r.base().value(), r.size());
    pio_devices.push_back(&d);
  }), 2u);
  EXPECT_EQ(pio, (std::vector<std::pair<uint64_t, uint64_t>>{{0x60, 4},
                                                             {0x70, 2}}));
  EXPECT_EQ(pio_devices, (std::vector<const DevicePio*>{a.get(), b.get()}));

  std::vector<uint64_t> mmio;
  std::vector<const DeviceMmio*> mmio_devices;
  EXPECT_EQ(io.VisitMmioRanges([&](const MmioRange& r, const DeviceMmio& d) {
    mmio.push_back(r.base().value());
    mmio_devices.push_back(&d);
  }), 3u);
  EXPECT_EQ(mmio, (std::vector<uint64_t>{0x1000, 0x2000, 0x3000}));
  EXPECT_EQ(mmio_devices,
            (std::vector<const DeviceMmio*>{b.get(), a.get(), b.get()}));

  // A deregistered range is gone from the next visit.
  ASSERT_TRUE(io.DeregisterMmio(MmioAddress(0x2000)).ok());
  mmio.clear();
  EXPECT_EQ(io.VisitMmioRanges([&](const MmioRange& r, const DeviceMmio&) {
    mmio.push_back(r.base().value());
  }), 2u);
  EXPECT_EQ(mmio, (std::vector<uint64_t>{0x1000, 0x3000}));
}

// -----------------------------------------------------------------------------
// Handlers that call back into the manager
// -----------------------------------------------------------------------------

// A PIO device whose write handler runs a callback (on the manager).
class Hook final : public DevicePio {
 public:
  explicit Hook(std::function<void()> on_write)
      : on_write_(std::move(on_write)) {}
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) const override {
    std::fill(data.begin(), data.end(), 0);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {
    on_write_();
  }

 private:
  std::function<void()> on_write_;
};

TEST(IoManager, SynchronizeWorksFromPlainThreads) {
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), dev).ok());
  EXPECT_TRUE(io.Synchronize().ok());
  absl::Status from_thread = absl::UnknownError("not run");
  std::thread t([&] { from_thread = io.Synchronize(); });
  t.join();
  EXPECT_TRUE(from_thread.ok()) << from_thread;
}

TEST(IoManager, SynchronizeInsideAHandlerIsRefused) {
  IoManager io;
  absl::Status inside = absl::UnknownError("not run");
  auto dev = std::make_shared<Hook>([&] { inside = io.Synchronize(); });
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 1), dev).ok());
  const uint8_t b[] = {1};
  ASSERT_EQ(io.PioWrite(PioAddress(0x60), b), IoStatus::kOk);
  EXPECT_EQ(inside.code(), absl::StatusCode::kFailedPrecondition) << inside;

  absl::Status in_visit = absl::UnknownError("not run");
  EXPECT_TRUE(io.VisitPioDevice(
      PioAddress(0x60),
      [&](const PioRange&, const DevicePio&) { in_visit = io.Synchronize(); }));
  EXPECT_EQ(in_visit.code(), absl::StatusCode::kFailedPrecondition);
  // Outside again, it works.
  EXPECT_TRUE(io.Synchronize().ok());
}

// A PCI-style BAR move: the device's own handler moves its range.
TEST(IoManager, HandlerMayMoveItsOwnRangeAndRegisterOthers) {
  IoManager io;
  auto other = std::make_shared<Recorder>();
  absl::Status moved = absl::UnknownError("not run");
  absl::Status registered = absl::UnknownError("not run");
  auto dev = std::make_shared<Hook>([&] {
    moved = io.MovePio(PioAddress(0x60), PioAddress(0x80));
    registered = io.RegisterPio(Pio(0x90, 1), other);
  });
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), dev).ok());
  const uint8_t b[] = {1};
  ASSERT_EQ(io.PioWrite(PioAddress(0x61), b), IoStatus::kOk);
  EXPECT_TRUE(moved.ok()) << moved;
  EXPECT_TRUE(registered.ok()) << registered;
  EXPECT_FALSE(PioMapped(io, 0x60));
  EXPECT_TRUE(PioMapped(io, 0x83));
  EXPECT_EQ(io.PioWrite(PioAddress(0x90), b), IoStatus::kOk);
  EXPECT_EQ(other->log().size(), 1u);
}

// -----------------------------------------------------------------------------
// Device lifetime
// -----------------------------------------------------------------------------

TEST(IoManager, DeviceDiesOnlyAfterDeregistrationAndSynchronize) {
  std::atomic<int> destroyed{0};
  IoManager io;
  {
    auto dev = std::make_shared<Recorder>(&destroyed);
    ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), dev).ok());
    ASSERT_TRUE(io.RegisterPio(Pio(0x70, 4), dev).ok());
  }
  ASSERT_TRUE(io.Synchronize().ok());
  EXPECT_EQ(destroyed.load(), 0);  // the manager holds it

  // Still registered on 0x70: alive after one range goes.
  ASSERT_TRUE(io.DeregisterPio(PioAddress(0x60)).ok());
  ASSERT_TRUE(io.Synchronize().ok());
  EXPECT_EQ(destroyed.load(), 0);
  const uint8_t b[] = {1};
  EXPECT_EQ(io.PioWrite(PioAddress(0x72), b), IoStatus::kOk);

  ASSERT_TRUE(io.DeregisterPio(PioAddress(0x73)).ok());  // result dropped
  ASSERT_TRUE(io.Synchronize().ok());
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(IoManager, DeregisteredDeviceOutlivesARunningHandler) {
  std::atomic<int> destroyed{0};
  IoManager io;
  absl::Notification entered, release;

  class Blocking final : public DevicePio {
   public:
    Blocking(std::atomic<int>* destroyed, absl::Notification* entered,
             absl::Notification* release)
        : destroyed_(destroyed), entered_(entered), release_(release) {}
    ~Blocking() override { destroyed_->fetch_add(1); }
    void PioRead(PioAddress, PioAddressOffset,
                 absl::Span<uint8_t> data) const override {
      std::fill(data.begin(), data.end(), 0);
    }
    void PioWrite(PioAddress, PioAddressOffset,
                  absl::Span<const uint8_t>) const override {
      entered_->Notify();
      release_->WaitForNotification();
      writes_.fetch_add(1);  // touches the device after the deregistration
    }

   private:
    std::atomic<int>* destroyed_;
    absl::Notification* entered_;
    absl::Notification* release_;
    mutable std::atomic<int> writes_{0};
  };

  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 1), std::make_shared<Blocking>(
                                               &destroyed, &entered, &release))
                  .ok());
  std::thread vcpu([&] {
    const uint8_t b[] = {1};
    EXPECT_EQ(io.PioWrite(PioAddress(0x60), b), IoStatus::kOk);
  });
  entered.WaitForNotification();
  ASSERT_TRUE(io.DeregisterPio(PioAddress(0x60)).ok());  // result dropped
  // New dispatches no longer see it...
  const uint8_t b[] = {2};
  EXPECT_EQ(io.PioWrite(PioAddress(0x60), b), IoStatus::kDeviceNotFound);
  // ...but the handler still running keeps it alive.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(destroyed.load(), 0);
  release.Notify();
  vcpu.join();
  ASSERT_TRUE(io.Synchronize().ok());
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(IoManager, DestructionReleasesEveryDevice) {
  std::atomic<int> destroyed{0};
  {
    IoManager io;
    auto a = std::make_shared<Recorder>(&destroyed);
    auto b = std::make_shared<Recorder>(&destroyed);
    ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), a).ok());
    ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 4), b).ok());
    ASSERT_TRUE(io.RegisterPio(Pio(0x70, 4), b).ok());
    ASSERT_TRUE(io.DeregisterPio(PioAddress(0x60)).ok());
  }
  EXPECT_EQ(destroyed.load(), 2);
}

TEST(IoManager, CallerHoldingTheDeregisteredDeviceKeepsItAlive) {
  std::atomic<int> destroyed{0};
  IoManager io;
  ASSERT_TRUE(
      io.RegisterPio(Pio(0x60, 4), std::make_shared<Recorder>(&destroyed))
          .ok());
  auto gone = io.DeregisterPio(PioAddress(0x60));
  ASSERT_TRUE(gone.ok());
  ASSERT_TRUE(io.Synchronize().ok());
  EXPECT_EQ(destroyed.load(), 0);
  uint8_t b[1];
  gone->second->PioRead(PioAddress(0x60), 0, absl::MakeSpan(b));  // usable
  gone->second.reset();
  EXPECT_EQ(destroyed.load(), 1);
}

// -----------------------------------------------------------------------------
// Statistics and concepts
// -----------------------------------------------------------------------------

TEST(IoManager, StatsCountRangesAndPublishes) {
  IoManager io;
  IoManagerStats s = io.stats();
  EXPECT_EQ(s.pio_ranges, 0u);
  EXPECT_EQ(s.mmio_ranges, 0u);
  EXPECT_EQ(s.publishes, 0u);
  EXPECT_GT(s.snapshot_bytes, 0u);
  const size_t empty_bytes = s.snapshot_bytes;

  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 4), dev).ok());
  ASSERT_FALSE(io.RegisterPio(Pio(0x60, 4), dev).ok());  // no publish
  const Resource res[] = {MmioAddressRange{0x1000, 1},
                          MmioAddressRange{0x2000, 1},
                          PioAddressRange{0x70, 1}};
  ASSERT_TRUE(io.RegisterResources(dev, res).ok());  // one publish
  s = io.stats();
  EXPECT_EQ(s.pio_ranges, 2u);
  EXPECT_EQ(s.mmio_ranges, 2u);
  EXPECT_EQ(s.publishes, 2u);
  // Arrays are padded to whole cache lines: a few ranges may fit the padding.
  EXPECT_GE(s.snapshot_bytes, empty_bytes);

  ASSERT_TRUE(io.DeregisterMmio(MmioAddress(0x2000)).ok());
  ASSERT_FALSE(io.DeregisterMmio(MmioAddress(0x2000)).ok());  // no publish
  s = io.stats();
  EXPECT_EQ(s.mmio_ranges, 1u);
  EXPECT_EQ(s.publishes, 3u);

  // 64 more MMIO ranges (24 bytes each, base and slot) need more lines.
  IoBatch batch;
  for (uint64_t i = 0; i < 64; ++i) {
    batch.AddMmio(*MmioRange::Create(MmioAddress(0x10000 + i * 0x10), 0x10),
                  dev);
  }
  ASSERT_TRUE(io.Commit(std::move(batch)).ok());
  s = io.stats();
  EXPECT_EQ(s.mmio_ranges, 65u);
  EXPECT_EQ(s.publishes, 4u);
  EXPECT_GE(s.snapshot_bytes, empty_bytes + 64 * 24);
}

template <typename M>
requires PioManager<M> && MmioManager<M> IoStatus PokeBoth(M& m, uint16_t port,
                                                           uint64_t gpa,
                                                           uint8_t value) {
  const uint8_t b[] = {value};
  const IoStatus s = m.PioWrite(PioAddress(port), b);
  if (s != IoStatus::kOk) return s;
  return m.MmioWrite(MmioAddress(gpa), b);
}

TEST(IoManager, ModelsThePioAndMmioManagerConcepts) {
  static_assert(PioManager<IoManager>);
  static_assert(MmioManager<IoManager>);
  static_assert(!PioManager<int>);
  static_assert(!MmioManager<PioBus<int>>);
  IoManager io;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(io.RegisterPio(Pio(0x60, 1), dev).ok());
  EXPECT_EQ(PokeBoth(io, 0x60, 0x1000, 5), IoStatus::kDeviceNotFound);
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 1), dev).ok());
  EXPECT_EQ(PokeBoth(io, 0x60, 0x1000, 5), IoStatus::kOk);
  EXPECT_EQ(dev->log().size(), 3u);
}

// Issue 8: a null device is refused by every resources call, whatever the
// list holds, and the error says so.
TEST(IoManager, ResourcesRefuseANullDeviceWhateverTheList) {
  IoManager io;
  const std::vector<Resource> none;
  const std::vector<Resource> mmio = {Resource(MmioAddressRange{0x1000, 8})};
  for (const absl::Status& s :
       {io.RegisterPioResources(nullptr, none),
        io.RegisterMmioResources(nullptr, none),
        io.RegisterResources(std::shared_ptr<Recorder>(), none),
        io.RegisterResources(std::shared_ptr<Recorder>(), mmio),
        io.RegisterResources(std::shared_ptr<PioOnly>(), mmio)}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("null device"));
  }
  EXPECT_EQ(io.stats().publishes, 0u);
}

// A device that calls back into its manager from its destructor.
class CallsBackWhenDestroyed final : public DevicePio {
 public:
  explicit CallsBackWhenDestroyed(IoManager* io, std::atomic<int>* calls)
      : io_(io), calls_(calls) {}
  ~CallsBackWhenDestroyed() override {
    (void)io_->stats();
    (void)io_->DeregisterPio(PioAddress(0x70));  // kNotFound; must not hang
    calls_->fetch_add(1);
  }
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t>) const override {}
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {}

 private:
  IoManager* io_;
  std::atomic<int>* calls_;
};

// Issue 8: ~IoManager waits for the reclaimer without the writer mutex, so a
// retired device whose destructor calls stats() or Deregister*() on the
// manager being destroyed does not hang it.
TEST(IoManager, DestructorWaitsWithoutTheWriterMutex) {
  std::atomic<bool> done{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 2000 && !done.load(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!done.load()) {
      std::fprintf(stderr, "~IoManager hung (writer mutex held?)\n");
      std::abort();
    }
  });
  std::atomic<int> calls{0};
  for (int round = 0; round < 20; ++round) {
    auto* io = new IoManager();
    ASSERT_TRUE(io->RegisterPio(
                      Pio(0x60, 4),
                      std::make_shared<CallsBackWhenDestroyed>(io, &calls))
                    .ok());
    ASSERT_TRUE(io->DeregisterPio(PioAddress(0x60)).ok());  // retired
    delete io;  // the device is destroyed during the destructor's wait
  }
  done.store(true);
  watchdog.join();
  EXPECT_EQ(calls.load(), 20);
}

}  // namespace
}  // namespace vm_device
