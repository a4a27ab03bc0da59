#include <cstdint>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

struct Counter : MutDevicePio {
  int writes = 0;
  void PioRead(PioAddress, PioAddressOffset, absl::Span<uint8_t> d) override {
    for (auto& b : d) b = 7;
  }
  void PioWrite(PioAddress, PioAddressOffset, absl::Span<const uint8_t>) override {
    ++writes;
  }
};

TEST(Smoke, RegisterDispatchDeregister) {
  IoManager m;
  auto dev = MakeLocked<Counter>();
  ASSERT_TRUE(m.RegisterPio(*PioRange::Create(PioAddress(0x10), 8), dev).ok());
  std::vector<uint8_t> buf(2);
  EXPECT_EQ(m.PioWrite(PioAddress(0x12), buf), IoStatus::kOk);
  EXPECT_EQ(m.PioRead(PioAddress(0x16), absl::MakeSpan(buf)), IoStatus::kOk);
  EXPECT_EQ(buf[0], 7);
  EXPECT_EQ(m.PioRead(PioAddress(0x17), absl::MakeSpan(buf)), IoStatus::kDeviceNotFound);
  EXPECT_EQ(dev->WithLock([](Counter& c) { return c.writes; }), 1);
  auto r = m.DeregisterPio(PioAddress(0x13));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first.base(), PioAddress(0x10));
  EXPECT_TRUE(m.Synchronize().ok());
}

}  // namespace
}  // namespace vm_device
