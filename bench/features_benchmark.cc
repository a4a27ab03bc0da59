// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// //bench:dispatch, the benchmarks of the opt-in features (access_info.h,
// access_rules.h, doorbell.h). Registered statically; see the list at the top
// of dispatch_benchmark.cc.
//
//   BM_Feature/<device>/threads:<t>
//     16 MMIO ranges of 4 KiB, all with the same kind of device; each thread
//     replays a fixed stream of 4-byte reads and writes at addresses uniform
//     over the ranges (4-byte aligned). <device>:
//       plain      a device with the crate's handlers (what every existing
//                  device is; compare with the same benchmark built from a
//                  revision without the features to see what they cost it)
//       with_info  the same device as a DeviceMmioWithInfo (gets vCPU id and
//                  address)
//       ruled      the plain device behind access rules that every access of
//                  the stream passes (min 1, max 8, alignment 4)
//   BM_Doorbell/<how>/threads:<t>
//     every thread writes the same 4-byte value to the same 4-byte MMIO
//     register, which rings one shared eventfd (nobody reads it during the
//     run; its counter is reset between runs). <how>:
//       doorbell       registered with MakeMmioDoorbell (size 4, value 1):
//                      the bus matches the write and writes the eventfd
//       device_eventfd a shared DeviceMmio that matches the same way and
//                      writes the eventfd itself
//       null_device    a shared DeviceMmio that does nothing (the dispatch
//                      without any eventfd write, for scale)

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "absl/types/span.h"
#include "benchmark/benchmark.h"
#include "vm_device/access_info.h"
#include "vm_device/access_rules.h"
#include "vm_device/doorbell.h"
#include "vm_device/io_manager.h"
#include "vm_device/vcpu_thread.h"

namespace vm_device {
namespace bench {
namespace {

constexpr uint64_t kBase = 0xc0000000;
constexpr uint64_t kRangeSize = 0x1000;
constexpr uint64_t kStride = 0x2000;
constexpr int kRanges = 16;
constexpr size_t kStream = size_t{1} << 14;

// The same work as the dispatch benchmark's sink: reads answer a constant,
// writes are dropped.
class Sink final : public DeviceMmio {
 public:
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) const override {
    std::memset(data.data(), 0x5a, data.size());
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {}
};

class InfoSink final : public DeviceMmioWithInfo {
 public:
  void MmioReadWithInfo(const MmioAccessInfo& a,
                        absl::Span<uint8_t> data) const override {
    benchmark::DoNotOptimize(a.vcpu);
    std::memset(data.data(), 0x5a, data.size());
  }
  void MmioWriteWithInfo(const MmioAccessInfo& a,
                         absl::Span<const uint8_t>) const override {
    benchmark::DoNotOptimize(a.vcpu);
  }
};

enum class Kind { kPlain, kWithInfo, kRuled };

IoManager& FeatureManager(Kind kind) {
  static IoManager* managers[3] = {};
  IoManager*& io = managers[static_cast<int>(kind)];
  if (io != nullptr) return *io;
  io = new IoManager;
  std::shared_ptr<DeviceMmio> dev;
  switch (kind) {
    case Kind::kPlain:
      dev = std::make_shared<Sink>();
      break;
    case Kind::kWithInfo:
      dev = std::make_shared<InfoSink>();
      break;
    case Kind::kRuled:
      dev = *MmioWithAccessRules(std::make_shared<Sink>(),
                                 {.min_size = 1, .max_size = 8,
                                  .alignment = 4});
      break;
  }
  for (int i = 0; i < kRanges; ++i) {
    if (!io->RegisterMmio(*MmioRange::Create(MmioAddress(kBase + i * kStride),
                                             kRangeSize),
                          dev)
             .ok()) {
      std::abort();
    }
  }
  return *io;
}

std::vector<uint64_t> Stream(int thread) {
  std::mt19937_64 rng(1234 + thread);
  std::vector<uint64_t> s(kStream);
  for (auto& a : s) {
    const uint64_t range = rng() % kRanges;
    a = kBase + range * kStride + (rng() % (kRangeSize / 4)) * 4;
  }
  return s;
}

void BM_Feature(benchmark::State& state, Kind kind) {
  const IoManager& io = FeatureManager(kind);
  const std::vector<uint64_t> stream = Stream(state.thread_index());
  VcpuThread vcpu(static_cast<uint32_t>(state.thread_index()));
  alignas(8) uint8_t buf[4] = {1, 0, 0, 0};
  size_t pos = 0;
  bool write = false;
  for (auto _ : state) {
    const MmioAddress a(stream[pos]);
    if (++pos == kStream) pos = 0;
    IoStatus s = write ? io.MmioWrite(a, buf) : io.MmioRead(a, buf);
    write = !write;
    benchmark::DoNotOptimize(s);
  }
  state.SetItemsProcessed(state.iterations());
}

// The doorbell benchmarks' shared eventfd.
int BellFd() {
  static const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  return fd;
}

// Matches like the doorbell (4 bytes, value 1) and writes the eventfd.
class EventFdDevice final : public DeviceMmio {
 public:
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) const override {
    std::memset(data.data(), 0xff, data.size());
  }
  void MmioWrite(MmioAddress, MmioAddressOffset offset,
                 absl::Span<const uint8_t> data) const override {
    if (offset != 0 || data.size() != 4) return;
    uint32_t v;
    std::memcpy(&v, data.data(), 4);
    if (v != 1) return;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(BellFd(), &one, sizeof(one));
  }
};

enum class Bell { kDoorbell, kDeviceEventFd, kNullDevice };

IoManager& BellManager(Bell how) {
  static IoManager* managers[3] = {};
  IoManager*& io = managers[static_cast<int>(how)];
  if (io != nullptr) return *io;
  io = new IoManager;
  std::shared_ptr<DeviceMmio> dev;
  switch (how) {
    case Bell::kDoorbell:
      dev = *MakeMmioDoorbell(BellFd(), {.size = 4, .value = 1});
      break;
    case Bell::kDeviceEventFd:
      dev = std::make_shared<EventFdDevice>();
      break;
    case Bell::kNullDevice:
      dev = std::make_shared<Sink>();
      break;
  }
  if (!io->RegisterMmio(*MmioRange::Create(MmioAddress(kBase), 4), dev).ok()) {
    std::abort();
  }
  return *io;
}

void BM_Doorbell(benchmark::State& state, Bell how) {
  const IoManager& io = BellManager(how);
  VcpuThread vcpu(static_cast<uint32_t>(state.thread_index()));
  const uint8_t ring[4] = {1, 0, 0, 0};
  for (auto _ : state) {
    IoStatus s = io.MmioWrite(MmioAddress(kBase), ring);
    benchmark::DoNotOptimize(s);
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    uint64_t drained = 0;
    [[maybe_unused]] ssize_t r = ::read(BellFd(), &drained, sizeof(drained));
  }
}

void Register() {
  struct F {
    const char* name;
    Kind kind;
  };
  for (F f : {F{"plain", Kind::kPlain}, F{"with_info", Kind::kWithInfo},
              F{"ruled", Kind::kRuled}}) {
    for (int t : {1, 2}) {
      benchmark::RegisterBenchmark(
          (std::string("BM_Feature/") + f.name).c_str(),
          [kind = f.kind](benchmark::State& s) { BM_Feature(s, kind); })
          ->Threads(t)
          ->UseRealTime();
    }
  }
  struct B {
    const char* name;
    Bell how;
  };
  for (B b : {B{"doorbell", Bell::kDoorbell},
              B{"device_eventfd", Bell::kDeviceEventFd},
              B{"null_device", Bell::kNullDevice}}) {
    for (int t : {1, 2, 4}) {
      benchmark::RegisterBenchmark(
          (std::string("BM_Doorbell/") + b.name).c_str(),
          [how = b.how](benchmark::State& s) { BM_Doorbell(s, how); })
          ->Threads(t)
          ->UseRealTime();
    }
  }
}

const bool registered = (Register(), true);

}  // namespace
}  // namespace bench
}  // namespace vm_device
