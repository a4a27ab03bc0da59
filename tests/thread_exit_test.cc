// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Threads whose thread_local destructors use the manager after the library's
// own thread-exit hook could have run: they must not exit still registered
// with liburcu.
//
// The thread constructs a thread_local object before its first dispatch, so
// that the object is destroyed after anything the library set up at that
// dispatch (thread_local destructors run in reverse order of construction).
// Its destructor dispatches, visits or calls Synchronize(). A thread that
// exits registered leaves its entry in liburcu's registry: later threads that
// reuse its stack and thread-local block corrupt the registry, and
// Synchronize() then spins forever (or liburcu crashes under ASan).
//
// Each case runs in a forked child with a deadline (the parent never touches
// the library), so a hang or crash fails the test instead of stalling it.

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "vm_device/vm_device.h"

namespace vm_device {
namespace {

std::atomic<int> g_calls{0};

class CountingDevice final : public DevicePio {
 public:
  void PioRead(PioAddress, PioAddressOffset,
               absl::Span<uint8_t> data) const override {
    for (uint8_t& b : data) b = 0x5a;
    g_calls.fetch_add(1);
  }
  void PioWrite(PioAddress, PioAddressOffset,
                absl::Span<const uint8_t>) const override {
    g_calls.fetch_add(1);
  }
};

enum class Late { kDispatch, kVisit, kSynchronize };

std::atomic<int> g_late_ok{0};

// Constructed on a thread's first use, before its first dispatch; destroyed
// at thread exit after every thread_local constructed later.
struct LateUser {
  IoManager* manager = nullptr;
  Late what = Late::kDispatch;
  ~LateUser() {
    if (manager == nullptr) return;
    uint8_t b = 0;
    switch (what) {
      case Late::kDispatch:
        if (manager->PioRead(PioAddress(0x60), absl::MakeSpan(&b, 1)) ==
                IoStatus::kOk &&
            b == 0x5a) {
          g_late_ok.fetch_add(1);
        }
        break;
      case Late::kVisit:
        if (manager->VisitPioDevice(PioAddress(0x60),
                                    [](const PioRange&, const DevicePio&) {})) {
          g_late_ok.fetch_add(1);
        }
        break;
      case Late::kSynchronize:
        if (manager->Synchronize().ok()) g_late_ok.fetch_add(1);
        break;
    }
  }
};

thread_local LateUser late_user;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "CHECK FAILED: %s\n", what);
  std::fflush(stderr);
  _exit(1);
}

// The child: threads that use the manager from a late thread_local
// destructor, then threads that reuse their stacks, then grace periods.
int Child(Late what) {
  auto* manager = new IoManager();
  if (!manager->RegisterPio(*PioRange::Create(PioAddress(0x60), 4),
                            std::make_shared<CountingDevice>())
           .ok()) {
    Fail("register");
  }
  constexpr int kLateThreads = 4;
  for (int i = 0; i < kLateThreads; ++i) {
    std::thread([manager, what] {
      late_user.manager = manager;  // constructed here, before any dispatch
      late_user.what = what;
      uint8_t b;
      (void)manager->PioRead(PioAddress(0x61), absl::MakeSpan(&b, 1));
    }).join();
  }
  if (g_late_ok.load() != kLateThreads) {
    Fail("a late thread_local destructor's call did not succeed");
  }
  // Threads that reuse the exited threads' stacks and thread-local blocks,
  // each registering (dispatch) and exiting; then grace periods.
  for (int i = 0; i < 16; ++i) {
    std::thread([manager] {
      uint8_t b;
      (void)manager->PioRead(PioAddress(0x60), absl::MakeSpan(&b, 1));
      if (!manager->Synchronize().ok()) Fail("Synchronize on a thread");
    }).join();
    if (!manager->Synchronize().ok()) Fail("Synchronize");
  }
  if (!manager->DeregisterPio(PioAddress(0x60)).ok()) Fail("deregister");
  if (!manager->Synchronize().ok()) Fail("Synchronize after deregister");
  delete manager;
  return 0;
}

::testing::AssertionResult RunInChild(Late what) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return ::testing::AssertionFailure() << "fork failed";
  if (pid == 0) {
    alarm(20);  // Synchronize() spinning forever fails the child (SIGALRM)
    _exit(Child(what));
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) {
    return ::testing::AssertionFailure() << "waitpid failed";
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    return ::testing::AssertionSuccess();
  }
  if (WIFSIGNALED(status)) {
    return ::testing::AssertionFailure()
           << "the child died of signal " << WTERMSIG(status)
           << (WTERMSIG(status) == SIGALRM ? " (Synchronize() hung)" : "");
  }
  return ::testing::AssertionFailure()
         << "the child exited " << WEXITSTATUS(status);
}

TEST(ThreadExit, DispatchFromLateThreadLocalDestructor) {
  EXPECT_TRUE(RunInChild(Late::kDispatch));
}

TEST(ThreadExit, VisitFromLateThreadLocalDestructor) {
  EXPECT_TRUE(RunInChild(Late::kVisit));
}

TEST(ThreadExit, SynchronizeFromLateThreadLocalDestructor) {
  EXPECT_TRUE(RunInChild(Late::kSynchronize));
}

}  // namespace
}  // namespace vm_device
