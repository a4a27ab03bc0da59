// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// No dispatch reads outside its snapshot: every snapshot IoManager builds is
// placed (internal::SetSnapshotAllocatorForTesting) so that it ends right at
// a PROT_NONE page and starts right after another one. A dispatch, a lookup
// or a hint check that read a byte before or past the snapshot would fault.
// (Prefetches do not fault: tests/range_search_test.cc checks those with a
// recording probe.)

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "src/internal/range_table.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

size_t Page() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
size_t Inner(size_t bytes) { return (bytes + Page() - 1) / Page() * Page(); }

// [PROT_NONE page][pages holding the block, which ends at their end]
// [PROT_NONE page]. The block starts 64-byte aligned, so up to 63 bytes
// before it are readable; that slack is within its first page.
bool at_end = true;

void* FencedAllocate(size_t bytes) {
  const size_t page = Page(), inner = Inner(bytes);
  void* m = mmap(nullptr, inner + 2 * page, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  char* base = static_cast<char*>(m);
  if (mprotect(base + page, inner, PROT_READ | PROT_WRITE) != 0) std::abort();
  if (!at_end) return base + page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(base + page + inner);
  return reinterpret_cast<void*>((end - bytes) & ~uintptr_t{63});
}

void FencedDeallocate(void* p, size_t bytes) {
  const size_t page = Page();
  const uintptr_t first_page = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  munmap(reinterpret_cast<void*>(first_page - page), Inner(bytes) + 2 * page);
}

const internal::SnapshotAllocator kFenced = {&FencedAllocate,
                                             &FencedDeallocate};

class Sink final : public DeviceMmio, public DevicePio {
 public:
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> d) const override {
    d[0] = 1;
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {}
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> d) const override {
    d[0] = 1;
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {}
};

class SnapshotBounds : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    at_end = GetParam();
    internal::SetSnapshotAllocatorForTesting(&kFenced);
  }
  void TearDown() override {
    internal::SetSnapshotAllocatorForTesting(nullptr);
  }
};

TEST_P(SnapshotBounds, DispatchAndLookupStayInsideTheSnapshot) {
  for (size_t n : {0u, 1u, 7u, 8u, 9u, 31u, 32u, 33u, 300u, 4096u, 5000u}) {
    auto m = std::make_unique<IoManager>();
    auto dev = std::make_shared<Sink>();
    IoBatch batch;
    for (size_t i = 0; i < n; ++i) {
      batch.AddMmio(
          *MmioRange::Create(MmioAddress(0x1000 + i * 0x2000), 0x1000), dev);
      if (i < 30000) {
        batch.AddPio(
            *PioRange::Create(PioAddress(static_cast<uint16_t>(2 * i)), 1),
            dev);
      }
    }
    // The last addresses of both buses too.
    batch.AddMmio(*MmioRange::Create(MmioAddress(~uint64_t{0} - 0xf), 0x10),
                  dev);
    batch.AddPio(*PioRange::Create(PioAddress(0xfff0), 0x10), dev);
    ASSERT_TRUE(m->Commit(std::move(batch)).ok());
    std::mt19937_64 rng(n);
    uint8_t buf[8];
    for (bool hints : {true, false}) {
      m->SetDispatchHints(hints);
      for (int k = 0; k < 4000; ++k) {
        const uint64_t a = k % 7 == 0 ? ~uint64_t{0} - rng() % 64
                                      : rng() % (0x1000 + (n + 2) * 0x2000);
        const IoStatus s = m->MmioRead(MmioAddress(a), absl::MakeSpan(buf, 4));
        EXPECT_TRUE(s == IoStatus::kOk || s == IoStatus::kDeviceNotFound ||
                    s == IoStatus::kInvalidRange);
        const uint16_t p = static_cast<uint16_t>(rng());
        const IoStatus t = m->PioWrite(PioAddress(p), absl::MakeSpan(buf, 1));
        EXPECT_TRUE(t == IoStatus::kOk || t == IoStatus::kDeviceNotFound);
        m->VisitMmioDevice(MmioAddress(a),
                           [](const MmioRange&, const DeviceMmio&) {});
      }
      EXPECT_EQ(
          m->MmioRead(MmioAddress(~uint64_t{0} - 3), absl::MakeSpan(buf, 4)),
          IoStatus::kOk);
      EXPECT_EQ(m->PioRead(PioAddress(0xffff), absl::MakeSpan(buf, 1)),
                IoStatus::kOk);
      EXPECT_EQ(m->MmioRead(MmioAddress(0), absl::MakeSpan(buf, 4)),
                IoStatus::kDeviceNotFound);
    }
    // Hints now name high indices; shrink the table under them to the top
    // ranges, so that a hint checked without its bound would read past it.
    if (n == 0) continue;
    m->SetDispatchHints(true);
    for (size_t k = 0; k < 100; ++k) {
      const uint64_t a = 0x1000 + (n - 1 - k % (n < 4 ? n : 4)) * 0x2000;
      m->MmioRead(MmioAddress(a), absl::MakeSpan(buf, 4));
      m->PioRead(
          PioAddress(static_cast<uint16_t>(2 * (n < 30000 ? n : 30000) - 2)),
          absl::MakeSpan(buf, 1));
    }
    IoBatch shrink;
    for (size_t i = 0; i < n; ++i) {
      shrink.RemoveMmio(MmioAddress(0x1000 + i * 0x2000));
      if (i < 30000) {
        shrink.RemovePio(PioAddress(static_cast<uint16_t>(2 * i)));
      }
    }
    ASSERT_TRUE(m->Commit(std::move(shrink)).ok());
    for (int k = 0; k < 100; ++k) {
      EXPECT_EQ(m->MmioRead(MmioAddress(0x1000 + (n - 1) * 0x2000),
                            absl::MakeSpan(buf, 4)),
                IoStatus::kDeviceNotFound);
      EXPECT_EQ(
          m->MmioRead(MmioAddress(~uint64_t{0} - 3), absl::MakeSpan(buf, 4)),
          IoStatus::kOk);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EndAndStart, SnapshotBounds, ::testing::Bool());

}  // namespace
}  // namespace vm_device
