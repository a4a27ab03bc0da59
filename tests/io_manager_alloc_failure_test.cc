// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Allocation failure at every allocation point of every registration path.
//
// This binary replaces the global operator new with one that throws
// std::bad_alloc when a per-thread countdown reaches zero. For each
// registration path (a scenario below), a forked child runs, for each k = 1,
// 2, ..., a fresh manager, arms the countdown so that the k-th allocation of
// the calling thread during the operation fails, runs the operation and
// checks:
//
//   * the writers' master copy (PioDevice/MmioDevice) equals the published
//     snapshot (VisitPioDevice/VisitMmioDevice) at every probed address;
//   * the outcome is truthful: OK and the change fully applied; or an error
//     with the code the operation returns without allocation failure, and
//     nothing changed; or std::bad_alloc thrown, and nothing changed;
//   * no mapped device has been destroyed, and a device whose range is
//     removed or moved while a vCPU thread is inside its handler is not
//     destroyed until that handler returns;
//   * dispatch to every probed address still works (a freed device or
//     snapshot there is a heap-use-after-free under ASan, and is caught by
//     the destroyed-device check otherwise);
//   * after Synchronize(), every device that is mapped nowhere and held by
//     nobody has been destroyed (nothing leaked or kept).
//
// k grows until the operation runs to its end without the countdown firing:
// then every allocation point of that path has been made to fail once. The
// process forks before it ever touches the library, so every child starts
// with no reclaimer thread and no registered threads; a crash, a hang (an
// alarm) or a failed check ends the child and names the path and the
// allocation. (One child per path rather than per allocation point: a fork
// costs about a second under ThreadSanitizer.)

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

// -----------------------------------------------------------------------------
// The failing operator new.
// -----------------------------------------------------------------------------

namespace {

// Allocations left before the one that fails; 0 = disarmed. Per thread: only
// the thread that runs the operation counts (not the reclaimer, not the
// reader parked in a handler).
constinit thread_local long tls_countdown = 0;
constinit thread_local bool tls_fired = false;

void MaybeFail() {
  if (tls_countdown > 0 && --tls_countdown == 0) {
    tls_fired = true;
    throw std::bad_alloc();
  }
}

void* Allocate(size_t n) {
  MaybeFail();
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* AllocateAligned(size_t n, std::align_val_t al) {
  MaybeFail();
  const size_t a = static_cast<size_t>(al);
  void* p = std::aligned_alloc(a, (n + a - 1) / a * a);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(size_t n) { return Allocate(n); }
void* operator new[](size_t n) { return Allocate(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  try {
    return Allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  try {
    return Allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(size_t n, std::align_val_t al) {
  return AllocateAligned(n, al);
}
void* operator new[](size_t n, std::align_val_t al) {
  return AllocateAligned(n, al);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, size_t, std::align_val_t) noexcept {
  std::free(p);
}

namespace vm_device {
namespace {

// -----------------------------------------------------------------------------
// Tracked devices.
// -----------------------------------------------------------------------------

constexpr int kMaxDevices = 16;

// Per device index: its addresses as each interface (set at construction,
// never dereferenced by the checks) and whether it was destroyed.
const void* g_pio_addr[kMaxDevices];
const void* g_mmio_addr[kMaxDevices];
std::atomic<bool> g_destroyed[kMaxDevices];
int g_devices = 0;

// The handler a parked reader waits in.
std::atomic<int> g_park_device{-1};
std::atomic<bool> g_parked{false};
std::atomic<bool> g_release{false};

class TrackedDevice final : public DevicePio, public DeviceMmio {
 public:
  explicit TrackedDevice(int index) : index_(index) {
    g_pio_addr[index] = static_cast<const DevicePio*>(this);
    g_mmio_addr[index] = static_cast<const DeviceMmio*>(this);
  }
  ~TrackedDevice() override { g_destroyed[index_].store(true); }

  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) const override {
    Handle(data);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {
    Handle({});
  }
  void MmioRead(MmioAddress, MmioAddressOffset,
                absl::Span<uint8_t> data) const override {
    Handle(data);
  }
  void MmioWrite(MmioAddress, MmioAddressOffset,
                 absl::Span<const uint8_t>) const override {
    Handle({});
  }

 private:
  void Handle(absl::Span<uint8_t> data) const {
    for (uint8_t& b : data) b = static_cast<uint8_t>(index_);
    if (g_park_device.load() == index_ && !g_parked.load()) {
      g_parked.store(true);
      while (!g_release.load()) std::this_thread::yield();
    }
  }

  const int index_;
};

std::shared_ptr<TrackedDevice> NewDevice() {
  const int i = g_devices++;
  if (i >= kMaxDevices) {
    std::fprintf(stderr, "too many devices\n");
    _exit(2);
  }
  return std::make_shared<TrackedDevice>(i);
}

int IndexOf(const void* p, const void* const* table) {
  for (int i = 0; i < g_devices; ++i) {
    if (table[i] == p) return i;
  }
  return p == nullptr ? -1 : -2;  // -2: a device this test never made
}

// -----------------------------------------------------------------------------
// Observing a manager.
// -----------------------------------------------------------------------------

PioRange Pio(uint16_t base, uint16_t size) {
  return *PioRange::Create(PioAddress(base), size);
}
MmioRange Mmio(uint64_t base, uint64_t size) {
  return *MmioRange::Create(MmioAddress(base), size);
}

// What one probe address resolves to on one bus: the range and device index,
// or device -1 for nothing.
struct Hit {
  uint64_t base = 0, last = 0;
  int device = -1;
  bool operator==(const Hit&) const = default;
};

// The probe addresses: around every range any scenario uses.
std::vector<uint64_t> PioProbes() {
  std::vector<uint64_t> v;
  for (uint64_t b : {0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0xfff0}) {
    for (uint64_t d : {0, 1, 7, 8, 15, 16}) v.push_back(b + d);
  }
  v.push_back(0xffff);
  return v;
}
std::vector<uint64_t> MmioProbes() {
  std::vector<uint64_t> v;
  for (uint64_t b : {0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000}) {
    for (uint64_t d : {0, 1, 0xff, 0x100, 0xfff}) v.push_back(b + d);
  }
  return v;
}

// Everything observable about a manager's mapping.
struct State {
  std::vector<Hit> pio, mmio;
  bool operator==(const State&) const = default;
};

// The path and allocation point being tried, for failure messages.
const char* g_scenario = "";
long g_point = 0;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "CHECK FAILED (%s, allocation #%ld failing): %s\n",
               g_scenario, g_point, what.c_str());
  std::fflush(stderr);
  _exit(1);
}

void Check(bool ok, const std::string& what) {
  if (!ok) Fail(what);
}

// The master copy's view (writer mutex) and the snapshot's (dispatch path),
// checked equal; also checks that no mapped device was destroyed, and
// dispatches to every mapped probe.
State Observe(const IoManager& m, const char* when) {
  State master, snapshot;
  for (uint64_t a : PioProbes()) {
    Hit h;
    if (auto e = m.PioDevice(PioAddress(a))) {
      h = {e->first.base().value(), e->first.last().value(),
           IndexOf(e->second.get(), g_pio_addr)};
    }
    master.pio.push_back(h);
    Hit s;
    m.VisitPioDevice(PioAddress(a), [&](const PioRange& r, const DevicePio& d) {
      s = {r.base().value(), r.last().value(), IndexOf(&d, g_pio_addr)};
    });
    snapshot.pio.push_back(s);
  }
  for (uint64_t a : MmioProbes()) {
    Hit h;
    if (auto e = m.MmioDevice(MmioAddress(a))) {
      h = {e->first.base().value(), e->first.last().value(),
           IndexOf(e->second.get(), g_mmio_addr)};
    }
    master.mmio.push_back(h);
    Hit s;
    m.VisitMmioDevice(MmioAddress(a),
                      [&](const MmioRange& r, const DeviceMmio& d) {
                        s = {r.base().value(), r.last().value(),
                             IndexOf(&d, g_mmio_addr)};
                      });
    snapshot.mmio.push_back(s);
  }
  Check(master == snapshot,
        std::string(when) + ": the master copy differs from the snapshot");
  for (const auto* hits : {&snapshot.pio, &snapshot.mmio}) {
    for (const Hit& h : *hits) {
      Check(h.device != -2, std::string(when) + ": unknown device mapped");
      if (h.device >= 0) {
        Check(!g_destroyed[h.device].load(),
              std::string(when) + ": device " + std::to_string(h.device) +
                  " is mapped but destroyed");
      }
    }
  }
  uint8_t byte = 0;
  for (uint64_t a : PioProbes()) {
    (void)m.PioRead(PioAddress(a), absl::MakeSpan(&byte, 1));
  }
  for (uint64_t a : MmioProbes()) {
    (void)m.MmioRead(MmioAddress(a), absl::MakeSpan(&byte, 1));
  }
  return snapshot;
}

// -----------------------------------------------------------------------------
// Scenarios.
// -----------------------------------------------------------------------------

// The standard setup: PIO ranges at 0x10 (device 0), 0x20 (device 1), 0x30
// (device 0); MMIO ranges at 0x1000 (device 2), 0x2000 (device 3).
void Setup(IoManager& m) {
  auto d0 = NewDevice(), d1 = NewDevice(), d2 = NewDevice(),
       d3 = NewDevice();
  Check(m.RegisterPio(Pio(0x10, 8), d0).ok(), "setup");
  Check(m.RegisterPio(Pio(0x20, 8), d1).ok(), "setup");
  Check(m.RegisterPio(Pio(0x30, 8), d0).ok(), "setup");
  Check(m.RegisterMmio(Mmio(0x1000, 0x100), d2).ok(), "setup");
  Check(m.RegisterMmio(Mmio(0x2000, 0x100), d3).ok(), "setup");
}

struct Scenario {
  const char* name;
  // Runs the operation and returns its status. Devices it needs are made
  // before arm() is called; everything from arm() on counts.
  std::function<absl::Status(IoManager&, const std::function<void()>& arm)> op;
  // A PIO address whose handler a reader thread is parked in during the
  // operation (-1: none).
  int park_pio = -1;
};

std::vector<Scenario> Scenarios() {
  using Arm = const std::function<void()>&;
  return {
      {"RegisterPio",
       [](IoManager& m, Arm arm) {
         auto d = NewDevice();
         arm();
         return m.RegisterPio(Pio(0x40, 8), std::move(d));
       }},
      {"RegisterPioOverlap",
       [](IoManager& m, Arm arm) {
         auto d = NewDevice();
         arm();
         return m.RegisterPio(Pio(0x24, 8), std::move(d));
       }},
      {"RegisterMmio",
       [](IoManager& m, Arm arm) {
         auto d = NewDevice();
         arm();
         return m.RegisterMmio(Mmio(0x3000, 0x100), std::move(d));
       }},
      {"RegisterMmioNullDevice",
       [](IoManager& m, Arm arm) {
         arm();
         return m.RegisterMmio(Mmio(0x3000, 0x100), nullptr);
       }},
      {"DeregisterPio",
       [](IoManager& m, Arm arm) {
         arm();
         return m.DeregisterPio(PioAddress(0x22)).status();
       },
       /*park_pio=*/0x20},
      {"DeregisterPioNotFound",
       [](IoManager& m, Arm arm) {
         arm();
         return m.DeregisterPio(PioAddress(0x60)).status();
       }},
      {"DeregisterMmio",
       [](IoManager& m, Arm arm) {
         arm();
         return m.DeregisterMmio(MmioAddress(0x2010)).status();
       }},
      {"MovePio",
       [](IoManager& m, Arm arm) {
         arm();
         return m.MovePio(PioAddress(0x20), PioAddress(0x50));
       },
       /*park_pio=*/0x20},
      {"MovePioOverlap",
       [](IoManager& m, Arm arm) {
         arm();
         return m.MovePio(PioAddress(0x20), PioAddress(0x34));
       },
       /*park_pio=*/0x20},
      {"MovePioPastTheTop",
       [](IoManager& m, Arm arm) {
         arm();
         return m.MovePio(PioAddress(0x20), PioAddress(0xfffc));
       }},
      {"MoveMmioOverlap",
       [](IoManager& m, Arm arm) {
         arm();
         return m.MoveMmio(MmioAddress(0x1000), MmioAddress(0x2080));
       }},
      {"MoveMmio",
       [](IoManager& m, Arm arm) {
         arm();
         return m.MoveMmio(MmioAddress(0x1000), MmioAddress(0x4000));
       }},
      {"Commit",
       [](IoManager& m, Arm arm) {
         auto a = NewDevice(), b = NewDevice();
         IoBatch batch;
         batch.RemovePio(PioAddress(0x20))
             .AddPio(Pio(0x20, 16), a)
             .AddMmio(Mmio(0x5000, 0x100), b)
             .RemoveMmio(MmioAddress(0x1000));
         a.reset();
         b.reset();
         arm();
         return m.Commit(std::move(batch)).status();
       },
       /*park_pio=*/0x20},
      {"CommitFailsAtTheLastChange",
       [](IoManager& m, Arm arm) {
         auto a = NewDevice(), b = NewDevice();
         IoBatch batch;
         batch.RemovePio(PioAddress(0x20))
             .AddPio(Pio(0x50, 8), a)
             .AddMmio(Mmio(0x5000, 0x100), b)
             .AddPio(Pio(0x14, 2), b);  // overlaps 0x10
         a.reset();
         b.reset();
         arm();
         return m.Commit(std::move(batch)).status();
       },
       /*park_pio=*/0x20},
      {"CommitRemoveMissing",
       [](IoManager& m, Arm arm) {
         IoBatch batch;
         batch.RemovePio(PioAddress(0x20)).RemovePio(PioAddress(0x60));
         arm();
         return m.Commit(std::move(batch)).status();
       },
       /*park_pio=*/0x20},
      {"RegisterResources",
       [](IoManager& m, Arm arm) {
         auto d = NewDevice();
         std::vector<Resource> res = {
             Resource(PioAddressRange{0x40, 8}),
             Resource(MmioAddressRange{0x3000, 0x100})};
         arm();
         return m.RegisterResources(std::move(d), res);
       }},
      {"RegisterResourcesGoodThenOverlapping",
       [](IoManager& m, Arm arm) {
         auto d = NewDevice();
         std::vector<Resource> res = {
             Resource(PioAddressRange{0x40, 8}),
             Resource(PioAddressRange{0x2c, 8})};  // overlaps 0x30
         arm();
         return m.RegisterResources(std::move(d), res);
       }},
      {"RegisterPioResources",
       [](IoManager& m, Arm arm) {
         auto d = NewDevice();
         std::vector<Resource> res = {Resource(PioAddressRange{0x40, 8}),
                                      Resource(PioAddressRange{0x50, 8})};
         arm();
         return m.RegisterPioResources(std::move(d), res);
       }},
      {"RegisterMmioResourcesOverlapping",
       [](IoManager& m, Arm arm) {
         auto d = NewDevice();
         std::vector<Resource> res = {
             Resource(MmioAddressRange{0x3000, 0x100}),
             Resource(MmioAddressRange{0x1080, 0x100})};
         arm();
         return m.RegisterMmioResources(std::move(d), res);
       }},
      {"DeregisterResources",
       [](IoManager& m, Arm arm) {
         std::vector<Resource> res = {
             Resource(PioAddressRange{0x20, 8}),
             Resource(MmioAddressRange{0x1000, 0x100}),
             Resource(PioAddressRange{0x60, 8})};
         arm();
         const size_t n = m.DeregisterResources(res);
         return n == 2 ? absl::OkStatus()
                       : absl::InternalError(std::to_string(n));
       },
       /*park_pio=*/0x20},
  };
}

void ResetDevices() {
  for (int i = 0; i < g_devices; ++i) g_destroyed[i].store(false);
  g_devices = 0;
  g_park_device.store(-1);
  g_parked.store(false);
  g_release.store(false);
}

// Runs `sc` with the k-th allocation of the operation failing, and checks.
// Returns whether the countdown fired (false: the operation makes fewer than
// k allocations).
bool RunPoint(const Scenario& sc, long k) {
  g_scenario = sc.name;
  g_point = k;
  ResetDevices();
  // A reference run without allocation failure: the truthful outcome.
  absl::StatusCode expected_code;
  State expected_after;
  {
    IoManager m;
    Setup(m);
    absl::Status s = sc.op(m, [] {});
    expected_code = s.code();
    expected_after = Observe(m, "reference run");
    Check(m.Synchronize().ok(), "Synchronize");
  }
  ResetDevices();

  IoManager m;
  Setup(m);
  const State before = Observe(m, "before");

  // A vCPU thread parked inside the handler of the range being removed.
  std::thread reader;
  int parked_device = -1;
  if (sc.park_pio >= 0) {
    m.VisitPioDevice(PioAddress(sc.park_pio),
                     [&](const PioRange&, const DevicePio& d) {
                       parked_device = IndexOf(&d, g_pio_addr);
                     });
    g_park_device.store(parked_device);
    reader = std::thread([&m, addr = sc.park_pio] {
      uint8_t b;
      (void)m.PioRead(PioAddress(addr), absl::MakeSpan(&b, 1));
    });
    while (!g_parked.load()) std::this_thread::yield();
  }

  std::optional<absl::Status> status;
  bool threw = false;
  tls_fired = false;
  try {
    status = sc.op(m, [k] { tls_countdown = k; });
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  tls_countdown = 0;
  const bool fired = tls_fired;

  if (parked_device >= 0) {
    Check(!g_destroyed[parked_device].load(),
          "a device was destroyed while a handler of it was running");
  }
  const State after = Observe(m, "after");
  if (threw) {
    Check(fired, "std::bad_alloc without an injected failure");
    Check(after == before, "threw std::bad_alloc but the mapping changed");
  } else if (status->ok()) {
    Check(expected_code == absl::StatusCode::kOk,
          "OK, but without allocation failure it fails with " +
              std::string(absl::StatusCodeToString(expected_code)));
    Check(after == expected_after, "OK, but the change is not (all) there");
  } else {
    Check(status->code() == expected_code,
          "untruthful status " + status->ToString() + ", expected code " +
              std::string(absl::StatusCodeToString(expected_code)));
    Check(after == before, "failed (" + status->ToString() +
                               ") but the mapping changed");
  }

  if (reader.joinable()) {
    g_release.store(true);
    reader.join();
  }
  Check(m.Synchronize().ok(), "Synchronize");
  // Everything mapped nowhere is held by nobody now: it must be gone.
  std::vector<bool> mapped(g_devices, false);
  for (const auto* hits : {&after.pio, &after.mmio}) {
    for (const Hit& h : *hits) {
      if (h.device >= 0) mapped[h.device] = true;
    }
  }
  for (int i = 0; i < g_devices; ++i) {
    if (!mapped[i]) {
      Check(g_destroyed[i].load(), "device " + std::to_string(i) +
                                       " is mapped nowhere but still alive");
    }
  }
  return fired;
}

constexpr long kMaxPoints = 400;

// In a forked child: every allocation point of `sc`, in turn. Exit status 0
// and the number of points written to `fd`, or a failure.
[[noreturn]] void ChildMain(const Scenario& sc, int fd) {
  alarm(60);  // a hang (a grace period that never ends) fails the child
  long k = 1;
  while (k <= kMaxPoints && RunPoint(sc, k)) ++k;
  if (k > kMaxPoints) Fail("more allocation points than the test allows");
  const long points = k - 1;
  if (write(fd, &points, sizeof points) != sizeof points) _exit(3);
  _exit(0);
}

// Forks a child for `sc`; returns the number of allocation points, or a
// failure.
::testing::AssertionResult EveryAllocationPoint(const Scenario& sc,
                                                long* points) {
  int fds[2];
  if (pipe(fds) != 0) return ::testing::AssertionFailure() << "pipe failed";
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return ::testing::AssertionFailure() << "fork failed";
  if (pid == 0) {
    close(fds[0]);
    ChildMain(sc, fds[1]);
  }
  close(fds[1]);
  const bool got = read(fds[0], points, sizeof *points) == sizeof *points;
  close(fds[0]);
  int wstatus = 0;
  if (waitpid(pid, &wstatus, 0) != pid) {
    return ::testing::AssertionFailure() << "waitpid failed";
  }
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0 && got) {
    return ::testing::AssertionSuccess();
  }
  auto failure = ::testing::AssertionFailure() << sc.name << ": ";
  if (WIFSIGNALED(wstatus)) {
    return failure << "the child died of signal " << WTERMSIG(wstatus)
                   << (WTERMSIG(wstatus) == SIGALRM ? " (hung)" : "")
                   << " (its stderr above names the allocation)";
  }
  return failure << "the child exited " << WEXITSTATUS(wstatus)
                 << " (its stderr above says why)";
}

TEST(IoManagerAllocationFailure, EveryPointOfEveryRegistrationPath) {
  long total = 0;
  for (const Scenario& sc : Scenarios()) {
    long points = 0;
    EXPECT_TRUE(EveryAllocationPoint(sc, &points));
    std::printf("%-40s %ld allocation points\n", sc.name, points);
    total += points;
  }
  std::printf("%ld allocation points in all\n", total);
  EXPECT_GT(total, 0);
}

}  // namespace
}  // namespace vm_device
