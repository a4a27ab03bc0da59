// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// The program every consumer project under tests/consumers/ builds against an
// installed (or, for Bazel, an external-repository) vm_device: it uses only
// the public API, as a hypervisor would.
//
// It registers a Mut device behind a LockedDevice on a PIO range and a shared
// (internally synchronized) device on an MMIO range, dispatches from 4
// threads, and checks every result: each access returns kOk, reads see what
// the device answers, no write is lost (the locked device's plain counter and
// the shared device's atomic one both reach 4 x kAccesses), and an unmapped
// address is kDeviceNotFound. Exits 0 and prints "ok" only if all hold.

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "vm_device/vm_device.h"

namespace {

constexpr int kThreads = 4;
constexpr int kAccesses = 20000;

// A device written for one caller at a time: a plain counter, made safe by
// LockedDevice's per-device lock.
struct CounterPio : vm_device::MutDevicePio {
  uint64_t writes = 0;
  void PioRead(vm_device::PioAddress, vm_device::PioAddressOffset offset,
               absl::Span<uint8_t> data) override {
    for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t(offset + i);
  }
  void PioWrite(vm_device::PioAddress, vm_device::PioAddressOffset,
                absl::Span<const uint8_t>) override {
    ++writes;  // not atomic: the lock is what keeps it exact
  }
};

// A shared device: safe for concurrent calls on its own.
struct CounterMmio : vm_device::DeviceMmio {
  mutable std::atomic<uint64_t> writes{0};
  void MmioRead(vm_device::MmioAddress, vm_device::MmioAddressOffset offset,
                absl::Span<uint8_t> data) const override {
    for (size_t i = 0; i < data.size(); ++i)
      data[i] = uint8_t(0xa0 + offset + i);
  }
  void MmioWrite(vm_device::MmioAddress, vm_device::MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {
    writes.fetch_add(1, std::memory_order_relaxed);  // a count, nothing ordered
  }
};

int Fail(const char* what) {
  std::fprintf(stderr, "FAIL: %s\n", what);
  return 1;
}

}  // namespace

int main() {
  if (std::strcmp(vm_device::VersionString(), VM_DEVICE_VERSION_STRING) != 0) {
    return Fail("library version differs from the headers'");
  }
  vm_device::IoManager manager;
  auto pio_range = vm_device::PioRange::Create(vm_device::PioAddress(0x3f8), 8);
  auto mmio_range =
      vm_device::MmioRange::Create(vm_device::MmioAddress(0xfeb00000), 0x1000);
  if (!pio_range.ok() || !mmio_range.ok()) return Fail("range creation");
  auto locked = vm_device::MakeLocked<CounterPio>();
  auto shared = std::make_shared<CounterMmio>();
  if (!manager.RegisterPio(*pio_range, locked).ok()) return Fail("RegisterPio");
  if (!manager.RegisterMmio(*mmio_range, shared).ok()) {
    return Fail("RegisterMmio");
  }

  std::atomic<int> errors{0};  // relaxed: read after join()
  std::vector<std::thread> vcpus;
  for (int t = 0; t < kThreads; ++t) {
    vcpus.emplace_back([&manager, &errors] {
      vm_device::VcpuThread rcu_reader;
      const uint8_t byte[1] = {1};
      for (int i = 0; i < kAccesses; ++i) {
        uint8_t in[2] = {0, 0};
        bool ok = manager.PioWrite(vm_device::PioAddress(0x3f8), byte) ==
                      vm_device::IoStatus::kOk &&
                  manager.PioRead(vm_device::PioAddress(0x3fa), in) ==
                      vm_device::IoStatus::kOk &&
                  in[0] == 2 && in[1] == 3 &&
                  manager.MmioWrite(vm_device::MmioAddress(0xfeb00010), byte) ==
                      vm_device::IoStatus::kOk &&
                  manager.MmioRead(vm_device::MmioAddress(0xfeb00004), in) ==
                      vm_device::IoStatus::kOk &&
                  in[0] == 0xa4 && in[1] == 0xa5;
        if (!ok) errors.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  for (auto& t : vcpus) t.join();

  if (errors.load(std::memory_order_relaxed) != 0) {
    return Fail("a dispatch returned an error or wrong data");
  }
  const absl::StatusOr<uint64_t> pio_writes =
      locked->WithLock([](CounterPio& d) { return d.writes; });
  if (!pio_writes.ok()) return Fail("WithLock refused from the main thread");
  const uint64_t expected = uint64_t{kThreads} * kAccesses;
  if (*pio_writes != expected) return Fail("LockedDevice lost writes");
  if (shared->writes.load() != expected)
    return Fail("shared device lost writes");
  uint8_t none[1];
  if (manager.PioRead(vm_device::PioAddress(0x80), none) !=
      vm_device::IoStatus::kDeviceNotFound) {
    return Fail("an unmapped port did not answer kDeviceNotFound");
  }
  std::printf(
      "ok: vm_device %s, %d threads x %d accesses, %llu writes per device\n",
      vm_device::VersionString(), kThreads, kAccesses,
      static_cast<unsigned long long>(expected));
  return 0;
}
