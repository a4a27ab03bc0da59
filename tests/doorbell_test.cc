// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Tests of eventfd doorbells (doorbell.h), with real eventfds: what rings and
// what does not, the fallback device, validation, batches, moves and
// resources, the eventfd's lifetime, and 4 vCPU threads ringing while an I/O
// thread drains the eventfd.

#include "vm_device/doorbell.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

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

// An eventfd for one test, closed at the end.
class EventFd {
 public:
  EventFd() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    EXPECT_GE(fd_, 0);
  }
  ~EventFd() { close(fd_); }
  int fd() const { return fd_; }
  // The count since the last Take() (0 if none).
  uint64_t Take() const {
    uint64_t v = 0;
    return read(fd_, &v, sizeof(v)) == sizeof(v) ? v : 0;
  }

 private:
  int fd_;
};

// Counts reads and writes that reach it.
class Fallback final : public DevicePio, public DeviceMmio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) const override {
    OnRead(data);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {
    writes.fetch_add(1, std::memory_order_relaxed);
  }
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) const override {
    OnRead(data);
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {
    writes.fetch_add(1, std::memory_order_relaxed);
  }
  mutable std::atomic<int64_t> reads{0}, writes{0};

 private:
  void OnRead(absl::Span<uint8_t> data) const {
    reads.fetch_add(1, std::memory_order_relaxed);
    for (auto& b : data) b = 0x42;
  }
};

size_t OpenFds() {
  size_t n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return 0;
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

TEST(Doorbell, AnyWriteAtTheBaseRingsAndRunsNoDevice) {
  EventFd efd;
  IoManager io;
  auto fb = std::make_shared<Fallback>();
  auto bell = MakeMmioDoorbell(efd.fd(), {}, fb);
  ASSERT_TRUE(bell.ok()) << bell.status();
  ASSERT_TRUE(io.RegisterMmio(Mmio(0xd0000050, 4), *bell).ok());
  const uint8_t w4[4] = {1, 0, 0, 0}, w1[1] = {9};
  EXPECT_EQ(io.MmioWrite(MmioAddress(0xd0000050), w4), IoStatus::kOk);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0xd0000050), w1), IoStatus::kOk);
  EXPECT_EQ(efd.Take(), 2u);
  EXPECT_EQ(fb->writes.load(), 0);
  // Not at the base: the fallback, no ring.
  EXPECT_EQ(io.MmioWrite(MmioAddress(0xd0000051), w1), IoStatus::kOk);
  EXPECT_EQ(efd.Take(), 0u);
  EXPECT_EQ(fb->writes.load(), 1);
  // Reads go to the fallback.
  uint8_t r[4] = {};
  EXPECT_EQ(io.MmioRead(MmioAddress(0xd0000050), r), IoStatus::kOk);
  EXPECT_EQ(r[0], 0x42);
  EXPECT_EQ(fb->reads.load(), 1);
  EXPECT_EQ(efd.Take(), 0u);
}

TEST(Doorbell, DatamatchOnSizeAndValue) {
  EventFd efd;
  IoManager io;
  auto bell = MakePioDoorbell(efd.fd(), {.size = 2, .value = 0x1234});
  ASSERT_TRUE(bell.ok()) << bell.status();
  ASSERT_TRUE(io.RegisterPio(Pio(0xc050, 2), *bell).ok());
  const uint8_t match[2] = {0x34, 0x12}, other[2] = {0x12, 0x34};
  const uint8_t narrow[1] = {0x34};
  EXPECT_EQ(io.PioWrite(PioAddress(0xc050), match), IoStatus::kOk);
  EXPECT_EQ(io.PioWrite(PioAddress(0xc050), other),
            IoStatus::kDoorbellUnmatched);
  EXPECT_EQ(io.PioWrite(PioAddress(0xc050), narrow),
            IoStatus::kDoorbellUnmatched);
  uint8_t r[2] = {7, 7};
  EXPECT_EQ(io.PioRead(PioAddress(0xc050), r), IoStatus::kDoorbellUnmatched);
  EXPECT_EQ(r[0], 7);  // nothing wrote the buffer
  EXPECT_EQ(efd.Take(), 1u);
}

TEST(Doorbell, SizeOnlyAndAnyOffset) {
  EventFd efd;
  IoManager io;
  auto bell =
      MakeMmioDoorbell(efd.fd(), {.size = 4, .any_offset = true}, nullptr);
  ASSERT_TRUE(bell.ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 0x100), *bell).ok());
  const uint8_t w4[4] = {}, w2[2] = {};
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), w4), IoStatus::kOk);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x10fc), w4), IoStatus::kOk);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), w2),
            IoStatus::kDoorbellUnmatched);
  EXPECT_EQ(efd.Take(), 2u);
}

TEST(Doorbell, EightByteValueMatch) {
  EventFd efd;
  IoManager io;
  ASSERT_TRUE(
      io.RegisterMmio(Mmio(0x1000, 8),
                      *MakeMmioDoorbell(efd.fd(), {.size = 8,
                                                   .value = 0x8877665544332211}))
          .ok());
  const uint8_t w[8] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88};
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), w), IoStatus::kOk);
  EXPECT_EQ(efd.Take(), 1u);
}

TEST(Doorbell, BadInputIsRefusedNamingIt) {
  EventFd efd;
  auto r = MakeMmioDoorbell(-1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(r.status()), HasSubstr("eventfd -1"));

  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  r = MakeMmioDoorbell(fds[0]);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(r.status()),
              HasSubstr(std::to_string(fds[0]) + " is not an eventfd"));
  const int closed = fds[1];
  close(fds[0]);
  close(fds[1]);
  r = MakeMmioDoorbell(closed);
  EXPECT_THAT(Msg(r.status()), HasSubstr("not an open file descriptor"));

  r = MakeMmioDoorbell(efd.fd(), {.size = 9});
  EXPECT_THAT(Msg(r.status()), HasSubstr("match size 9 is above 8"));
  r = MakeMmioDoorbell(efd.fd(), {.size = 3, .value = 1});
  EXPECT_THAT(Msg(r.status()), HasSubstr("1, 2, 4 or 8, not 3"));
  r = MakeMmioDoorbell(efd.fd(), {.value = 1});
  EXPECT_THAT(Msg(r.status()), HasSubstr("not 0"));
  auto p = MakePioDoorbell(efd.fd(), {.size = 1, .value = 0x100});
  EXPECT_THAT(Msg(p.status()),
              HasSubstr("match value 0x100 does not fit in 1 bytes"));
}

TEST(Doorbell, KeepsItsOwnDuplicateOfTheEventfdUntilReclaimed) {
  const size_t before = OpenFds();
  int raw = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(raw, 0);
  const int reader = dup(raw);
  {
    IoManager io;
    auto bell = MakeMmioDoorbell(raw);
    ASSERT_TRUE(bell.ok());
    close(raw);  // the caller's copy may go
    ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 4), *bell).ok());
    bell->reset();
    const uint8_t w[4] = {};
    EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), w), IoStatus::kOk);
    uint64_t v = 0;
    EXPECT_EQ(read(reader, &v, 8), 8);
    EXPECT_EQ(v, 1u);
    ASSERT_TRUE(io.DeregisterMmio(MmioAddress(0x1000)).ok());
    ASSERT_TRUE(io.Synchronize().ok());
    // Deregistered, a grace period passed, nobody holds it: closed.
  }
  close(reader);
  EXPECT_EQ(OpenFds(), before);
}

TEST(Doorbell, DoorbellsTakePartInBatchesMovesAndResources) {
  EventFd efd;
  IoManager io;
  auto fb = std::make_shared<Fallback>();
  std::shared_ptr<DeviceMmio> bell =
      *MakeMmioDoorbell(efd.fd(), {.size = 4}, fb);
  const uint8_t w[4] = {};

  IoBatch batch;
  batch.AddMmio(Mmio(0x1000, 4), bell).AddMmio(Mmio(0x2000, 0x100), fb);
  ASSERT_TRUE(io.Commit(std::move(batch)).ok());
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), w), IoStatus::kOk);
  EXPECT_EQ(efd.Take(), 1u);

  ASSERT_TRUE(io.MoveMmio(MmioAddress(0x1000), MmioAddress(0x3000)).ok());
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), w), IoStatus::kDeviceNotFound);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x3000), w), IoStatus::kOk);
  EXPECT_EQ(efd.Take(), 1u);

  // A failing batch changes nothing (the doorbell stays where it was).
  IoBatch bad;
  bad.RemoveMmio(MmioAddress(0x3000))
      .AddMmio(Mmio(0x2000, 4), bell);  // overlaps the fallback's range
  EXPECT_FALSE(io.Commit(std::move(bad)).ok());
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x3000), w), IoStatus::kOk);
  EXPECT_EQ(efd.Take(), 1u);
  EXPECT_EQ(io.MmioDevice(MmioAddress(0x3000))->second, bell);

  std::vector<Resource> res = {MmioAddressRange{0x5000, 4},
                               MmioAddressRange{0x6000, 4}};
  ASSERT_TRUE(io.RegisterMmioResources(bell, res).ok());
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x5000), w), IoStatus::kOk);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x6000), w), IoStatus::kOk);
  EXPECT_EQ(efd.Take(), 2u);
  EXPECT_EQ(io.DeregisterResources(res), 2u);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x5000), w), IoStatus::kDeviceNotFound);
  EXPECT_EQ(fb->writes.load(), 0);
}

TEST(Doorbell, AccessRulesOnADoorbellComeFirst) {
  EventFd efd;
  IoManager io;
  auto fb = std::make_shared<Fallback>();
  auto bell = *MakeMmioDoorbell(efd.fd(), {}, fb);  // any size rings
  auto ruled = MmioWithAccessRules(bell, {.min_size = 2, .max_size = 2});
  ASSERT_TRUE(ruled.ok());
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 2), *ruled).ok());
  const uint8_t w1[1] = {}, w2[2] = {};
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), w1),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(io.MmioWrite(MmioAddress(0x1000), w2), IoStatus::kOk);
  uint8_t r1[1];
  EXPECT_EQ(io.MmioRead(MmioAddress(0x1000), r1),
            IoStatus::kAccessRuleViolation);
  EXPECT_EQ(efd.Take(), 1u);
  EXPECT_EQ(fb->reads.load() + fb->writes.load(), 0);
}

TEST(Doorbell, DirectCallsRingToo) {
  EventFd efd;
  std::shared_ptr<DevicePio> bell = *MakePioDoorbell(efd.fd(), {.size = 1});
  const uint8_t w[1] = {1};
  bell->PioWrite(PioAddress(0x10), 0, w);
  uint8_t r[1] = {0};
  bell->PioRead(PioAddress(0x10), 0, r);  // no fallback: open bus
  EXPECT_EQ(r[0], 0xff);
  EXPECT_EQ(efd.Take(), 1u);
}

// The test: 4 vCPU threads ring a doorbell backed by a real eventfd
// while an I/O thread drains it. Each thread also makes non-matching writes
// (wrong value, wrong size) and reads, some to a doorbell with a fallback,
// some to one without. The counts the I/O thread reads add up to the
// matching rings exactly (so every ring was observed and no non-matching
// write signalled); the fallback saw exactly the non-matching accesses. A
// writer moves the first doorbell between two addresses meanwhile.
TEST(Doorbell, FourVcpusRingWhileAnIoThreadDrains) {
  constexpr int kThreads = 4;
  constexpr int kIters = 20000;
  EventFd efd;
  IoManager io;
  auto fb = std::make_shared<Fallback>();
  std::shared_ptr<DeviceMmio> bell =
      *MakeMmioDoorbell(efd.fd(), {.size = 4, .value = 1}, fb);
  std::shared_ptr<DevicePio> bare =
      *MakePioDoorbell(efd.fd(), {.size = 2, .value = 0});
  ASSERT_TRUE(io.RegisterMmio(Mmio(0x10000, 4), bell).ok());
  ASSERT_TRUE(io.RegisterPio(Pio(0xc000, 2), bare).ok());

  std::atomic<int> running{kThreads};
  std::atomic<uint64_t> drained{0};
  std::thread io_thread([&] {
    pollfd p{efd.fd(), POLLIN, 0};
    for (;;) {
      const bool last = running.load(std::memory_order_acquire) == 0;
      if (poll(&p, 1, 10) > 0) drained.fetch_add(efd.Take());
      if (last) {
        drained.fetch_add(efd.Take());
        return;
      }
    }
  });
  std::atomic<bool> stop{false};
  std::thread mover([&] {
    bool at_a = true;
    while (!stop.load(std::memory_order_relaxed)) {
      ASSERT_TRUE(io.MoveMmio(MmioAddress(at_a ? 0x10000 : 0x20000),
                              MmioAddress(at_a ? 0x20000 : 0x10000))
                      .ok());
      at_a = !at_a;
    }
  });

  std::atomic<int64_t> rings{0}, unmatched_ok{0}, bare_unmatched{0},
      unexpected{0};
  std::vector<std::thread> vcpus;
  for (int t = 0; t < kThreads; ++t) {
    vcpus.emplace_back([&, t] {
      VcpuThread vcpu(t);
      const uint8_t ring[4] = {1, 0, 0, 0}, wrong_value[4] = {2, 0, 0, 0};
      const uint8_t wrong_size[2] = {1, 0}, bare_ring[2] = {0, 0},
                    bare_wrong[2] = {0, 1};
      for (int i = 0; i < kIters; ++i) {
        const MmioAddress a((i + t) & 1 ? 0x10000 : 0x20000);
        IoStatus s;
        switch (i % 6) {
          case 0:
          case 1:
            s = io.MmioWrite(a, ring);
            if (s == IoStatus::kOk) rings.fetch_add(1);
            break;
          case 2:
            s = io.MmioWrite(a, wrong_value);
            if (s == IoStatus::kOk) unmatched_ok.fetch_add(1);
            break;
          case 3:
            s = io.MmioWrite(a, wrong_size);
            if (s == IoStatus::kOk) unmatched_ok.fetch_add(1);
            break;
          case 4:
            s = io.PioWrite(PioAddress(0xc000), bare_ring);
            if (s == IoStatus::kOk) rings.fetch_add(1);
            break;
          default:
            s = io.PioWrite(PioAddress(0xc000), bare_wrong);
            if (s == IoStatus::kDoorbellUnmatched) {
              bare_unmatched.fetch_add(1);
              s = IoStatus::kOk;
            }
            break;
        }
        if (s != IoStatus::kOk && s != IoStatus::kDeviceNotFound) {
          unexpected.fetch_add(1);
        }
      }
      running.fetch_sub(1, std::memory_order_release);
    });
  }
  for (auto& v : vcpus) v.join();
  stop.store(true);
  mover.join();
  io_thread.join();
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_GT(rings.load(), kThreads * kIters / 6);
  EXPECT_EQ(drained.load(), static_cast<uint64_t>(rings.load()));
  EXPECT_EQ(fb->writes.load(), unmatched_ok.load());
  EXPECT_EQ(fb->reads.load(), 0);
  EXPECT_EQ(bare_unmatched.load(), kThreads * (kIters / 6));
}

// Doorbells are created and retired (each with its own eventfd duplicate)
// while 4 vCPUs ring: every kOk ring is counted on the eventfd, and once a
// grace period has passed every duplicate is closed (ASan/TSan see no use of
// a closed descriptor or freed doorbell).
TEST(Doorbell, ReplacingADoorbellWhileVcpusRingClosesEveryDuplicate) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  const size_t fds_before = OpenFds();
  {
    EventFd efd;
    IoManager io;
    ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 4),
                                *MakeMmioDoorbell(efd.fd(), {.size = 4}))
                    .ok());
    std::atomic<bool> stop{false};
    std::atomic<int64_t> rings{0}, unexpected{0};
    std::vector<std::thread> vcpus;
    for (int t = 0; t < kThreads; ++t) {
      vcpus.emplace_back([&, t] {
        VcpuThread vcpu(t);
        const uint8_t w[4] = {};
        while (!stop.load(std::memory_order_relaxed)) {
          const IoStatus s = io.MmioWrite(MmioAddress(0x1000), w);
          if (s == IoStatus::kOk) {
            rings.fetch_add(1, std::memory_order_relaxed);
          } else if (s != IoStatus::kDeviceNotFound) {
            unexpected.fetch_add(1, std::memory_order_relaxed);
          }
        }
      });
    }
    for (int i = 0; i < kRounds; ++i) {
      // Replace the doorbell in one publish (never unmapped), or remove it
      // and add a new one in two.
      auto bell = MakeMmioDoorbell(efd.fd(), {.size = 4});
      ASSERT_TRUE(bell.ok());
      if (i % 2 == 0) {
        IoBatch b;
        b.RemoveMmio(MmioAddress(0x1000)).AddMmio(Mmio(0x1000, 4), *bell);
        ASSERT_TRUE(io.Commit(std::move(b)).ok());
      } else {
        ASSERT_TRUE(io.DeregisterMmio(MmioAddress(0x1000)).ok());
        ASSERT_TRUE(io.RegisterMmio(Mmio(0x1000, 4), *bell).ok());
      }
    }
    stop.store(true);
    for (auto& v : vcpus) v.join();
    ASSERT_TRUE(io.DeregisterMmio(MmioAddress(0x1000)).ok());
    ASSERT_TRUE(io.Synchronize().ok());
    EXPECT_EQ(unexpected.load(), 0);
    EXPECT_EQ(efd.Take(), static_cast<uint64_t>(rings.load()));
    EXPECT_EQ(OpenFds(), fds_before + 1);  // only `efd` itself
  }
  EXPECT_EQ(OpenFds(), fds_before);
}

}  // namespace
}  // namespace vm_device
