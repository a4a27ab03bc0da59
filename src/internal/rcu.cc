// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// liburcu (memb flavour) behind the wrappers of rcu.h, with the
// ThreadSanitizer annotations that make its grace periods visible to TSan.

#include "src/internal/rcu.h"

// rcu.h includes liburcu (memb flavour), inline fast paths or not.

#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/config.h"

#ifdef ABSL_HAVE_THREAD_SANITIZER
extern "C" void __tsan_acquire(void* addr);
#endif

namespace vm_device {
namespace internal {
namespace {

// ThreadSanitizer does not see liburcu's grace periods: the read-side
// bookkeeping lives in the uninstrumented shared library. Without help it
// reports a race between a reader's last access to a table and the free that
// follows the grace period. The happens-before edge that the grace period
// guarantees is described to it instead:
//
//   Reader thread                        Writer / reclaimer thread
//   ReadLock(); ...reads table...
//   ~ReadSection(): release (A)          publish new table; Retire(old)
//   ReadUnlock()                         ...grace period ends...
//                                        GraceAcquire()  (B, matches A)
//                                        delete old
//
// TSan's release on one address merges every reader's clock into it, so (B)
// orders the free after every read-side critical section that released
// before the grace period ended, which is exactly what RCU guarantees.
// Builds without TSan compile these to nothing.
inline void GraceRelease() {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  __tsan_release(&tsan_grace_sync);
#endif
}

inline void GraceAcquire() {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  __tsan_acquire(&tsan_grace_sync);
#endif
}

// Unregisters the thread at exit if RegisterSlow() registered it.
struct ExitUnregister {
  bool armed = false;
  ~ExitUnregister() {
    if (armed && IsRegistered()) UnregisterForScope();
  }
};

// Reclaimer
//
// The thread that destroys retired objects after a grace period: one per
// process, started on first use, never stopped (its state is leaked on
// purpose, so that it outlives every static IoManager).
//
// It coalesces: once something is pending it waits up to the batch window
// (1 ms; the environment variable VM_DEVICE_RECLAIM_BATCH_US, read once, sets
// it in microseconds, 0 turning batching off) for more before it starts a
// grace period, and then destroys everything that was
// pending when the grace period started. Under a storm of changes that bounds
// grace periods (each a membarrier() that interrupts every CPU running a vCPU
// thread) to about one per window, instead of one per change as
// liburcu's call_rcu thread would run them back to back. A waiter in
// WaitForRetired() cuts the wait short. Retirements are destroyed in the order
// they were queued.
//
// Retire() only takes mu_ for a push_back; the reclaimer never holds mu_
// while it waits for a grace period or runs destructors, so Retire() never
// waits for a grace period (it is safe inside a read-side section), and a
// destructor that retires more does not deadlock.
class Reclaimer {
 public:
  static constexpr std::chrono::microseconds kDefaultWindow{1000};

  static Reclaimer& Get() {
    static Reclaimer* const reclaimer = new Reclaimer();
    return *reclaimer;
  }

  void Push(std::unique_ptr<Retired> r, bool urgent) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back(std::move(r));
      urgent_ = urgent_ || urgent;
    }
    cv_.notify_one();
  }

  bool OnThread() const { return std::this_thread::get_id() == thread_id_; }

 private:
  Reclaimer() : window_(WindowFromEnvironment()) {
    std::thread t([this] { Loop(); });
    thread_id_ = t.get_id();
    t.detach();
  }

  void Loop() {
    std::vector<std::unique_ptr<Retired>> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !pending_.empty(); });
        if (window_.count() > 0) {
          cv_.wait_for(lock, window_, [this] { return urgent_; });
        }
        batch.swap(pending_);
        urgent_ = false;
      }
      urcu_memb_synchronize_rcu();
      GraceAcquire();  // B: matches A in every reader that saw the batch
      batch.clear();   // destructors run here, outside mu_
    }
  }

  static std::chrono::microseconds WindowFromEnvironment() {
    const char* v = std::getenv("VM_DEVICE_RECLAIM_BATCH_US");
    if (v == nullptr || *v == '\0') return kDefaultWindow;
    char* end = nullptr;
    const long long us = std::strtoll(v, &end, 10);
    if (*end != '\0' || us < 0 || us > 1000000) return kDefaultWindow;
    return std::chrono::microseconds(us);
  }

  const std::chrono::microseconds window_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Retired>> pending_;  // guarded by mu_
  bool urgent_ = false;                            // guarded by mu_
  std::thread::id thread_id_;
};

}  // namespace

char tsan_grace_sync;

#if !VM_DEVICE_URCU_INLINE
constinit thread_local bool tls_rcu_registered = false;
#endif

void RegisterSlow() {
  if (IsRegistered()) return;
  static thread_local ExitUnregister at_exit;
  RegisterForScope();
  at_exit.armed = true;
}

void RegisterForScope() {
  urcu_memb_register_thread();
#if !VM_DEVICE_URCU_INLINE
  tls_rcu_registered = true;
#endif
}

void UnregisterForScope() {
  urcu_memb_unregister_thread();
#if !VM_DEVICE_URCU_INLINE
  tls_rcu_registered = false;
#endif
}

bool InReadSection() { return IsRegistered() && urcu_memb_read_ongoing() != 0; }

bool OnReclaimThread() { return Reclaimer::Get().OnThread(); }

void Retire(std::unique_ptr<Retired> r) {
  Reclaimer::Get().Push(std::move(r), /*urgent=*/false);
}

void WaitForReaders() {
  EnsureRegistered();
  urcu_memb_synchronize_rcu();
  GraceAcquire();  // matches A in every reader that ended before this returns
}

namespace {

// Signals when it is destroyed: the reclaimer destroys retirements in the
// order they were queued, so by then everything retired before it is gone.
class BarrierMarker final : public Retired {
 public:
  BarrierMarker(std::mutex* mu, std::condition_variable* cv, bool* done)
      : mu_(mu), cv_(cv), done_(done) {}
  ~BarrierMarker() override {
    std::lock_guard<std::mutex> lock(*mu_);
    *done_ = true;
    cv_->notify_all();
  }

 private:
  std::mutex* mu_;
  std::condition_variable* cv_;
  bool* done_;
};

}  // namespace

void WaitForRetired() {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Reclaimer::Get().Push(std::make_unique<BarrierMarker>(&mu, &cv, &done),
                        /*urgent=*/true);
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
}

}  // namespace internal
}  // namespace vm_device
