// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// liburcu (memb flavour) behind the wrappers of rcu.h, with the
// ThreadSanitizer annotations that make its grace periods visible to TSan.

#include "src/internal/rcu.h"

// rcu.h includes liburcu (memb flavour), inline fast paths or not.

#include <pthread.h>

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

// The thread-exit hook of RegisterSlow(): a pthread key whose destructor
// unregisters the thread. glibc runs key destructors after all of the
// thread's C++ thread_local destructors (and again, up to
// PTHREAD_DESTRUCTOR_ITERATIONS rounds, for keys set meanwhile), so a
// thread_local destructor that dispatches finds the thread still registered,
// and one that registers again re-arms the key.
void UnregisterAtExit(void*) {
  if (IsRegistered()) UnregisterForScope();
}

struct ExitKey {
  pthread_key_t key;
  bool ok;
  ExitKey() : ok(pthread_key_create(&key, &UnregisterAtExit) == 0) {}
};

const ExitKey& GetExitKey() {
  static const ExitKey* const key = new ExitKey();
  return *key;
}

// The fallback when no pthread key could be had (the process ran out of
// keys, or of memory for one): a thread_local destructor, which runs too
// early for thread_local objects destroyed after it.
struct ExitUnregister {
  bool armed = false;
  ~ExitUnregister() {
    if (armed && IsRegistered()) UnregisterForScope();
  }
};

}  // namespace

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
// liburcu's call_rcu thread would run them back to back. WaitForRetired()
// does not wait for the window nor wake the thread: it takes the queue and
// destroys it itself (Drain()). Retirements are destroyed in the order they
// were queued.
//
// The queue is intrusive (Retired::next_), so Push() never allocates and
// cannot fail: a writer calls it after its publish. Retire() only takes mu_
// to link one object; the reclaimer never holds mu_ while it waits for a
// grace period or runs destructors, so Retire() never waits for a grace
// period (it is safe inside a read-side section), and a destructor that
// retires more does not deadlock.
class Reclaimer {
 public:
  static constexpr std::chrono::microseconds kDefaultWindow{1000};

  static Reclaimer& Get() {
    static Reclaimer* const reclaimer = new Reclaimer();
    return *reclaimer;
  }

  void Push(std::unique_ptr<Retired> r) noexcept {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Retired* const p = r.release();
      p->next_ = nullptr;
      // The reclaimer waits for a non-empty queue, then sleeps out the
      // window: only a push onto an empty queue needs to wake it. Under a
      // storm of changes this keeps futex wake-ups to about one per window.
      wake = tail_ == nullptr;
      if (tail_ == nullptr) {
        head_ = p;
      } else {
        tail_->next_ = p;
      }
      tail_ = p;
    }
    if (wake) cv_.notify_one();
  }

  // Whether the calling thread is where retired objects are being destroyed:
  // the reclaimer thread, or a thread inside Drain().
  bool OnThread() const {
    return std::this_thread::get_id() == thread_id_ || tls_draining_;
  }

  // Destroys everything queued so far on the calling thread, after a grace
  // period, without waking the reclaimer thread: first waits until no batch
  // is being destroyed (by the reclaimer thread or another Drain), since that
  // batch holds earlier retirements, then takes the whole queue. One batch at
  // a time (busy_), so retirements are still destroyed in the order they
  // were queued. If the reclaimer thread sits in its batching window
  // meanwhile, it finds the queue empty when the window ends and sleeps
  // again. Only two futex calls are saved, but on a paravirtualised VM those
  // are most of the cost of waiting for the reclaimer (README.md, "Fuzzer
  // throughput").
  void Drain() {
    Retired* batch = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      idle_cv_.wait(lock, [this] { return !busy_; });
      if (head_ == nullptr) return;
      batch = TakeQueueLocked();
    }
    tls_draining_ = true;
    DestroyAfterGracePeriod(batch);
    tls_draining_ = false;
  }

 private:
  Reclaimer() : window_(WindowFromEnvironment()) {
    std::thread t([this] { Loop(); });
    thread_id_ = t.get_id();
    t.detach();
  }

  void Loop() {
    for (;;) {
      Retired* batch = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return head_ != nullptr && !busy_; });
        if (window_.count() > 0) {
          // The whole window: nothing cuts it short (a wake-up before it ends
          // is spurious or a Finished() of a Drain, and a Drain may take the
          // queue meanwhile, which the check below sees).
          const auto end = std::chrono::steady_clock::now() + window_;
          while (cv_.wait_until(lock, end) == std::cv_status::no_timeout) {
          }
        }
        // A Drain() may have taken the queue, or be destroying it, meanwhile.
        if (head_ == nullptr || busy_) continue;
        batch = TakeQueueLocked();
      }
      DestroyAfterGracePeriod(batch);
    }
  }

  // Takes the whole queue as the next batch and marks a batch in progress.
  // REQUIRES: mu_ held, !busy_.
  Retired* TakeQueueLocked() {
    Retired* const batch = head_;
    head_ = tail_ = nullptr;
    busy_ = true;
    return batch;
  }

  // Waits for a grace period, destroys `batch` in queue order (outside mu_)
  // and ends the batch (Finished()).
  void DestroyAfterGracePeriod(Retired* batch) {
    urcu_memb_synchronize_rcu();
    GraceAcquire();  // B: matches A in every reader that saw the batch
    DestroyAll(batch);
    Finished();
  }

  // Destroys a batch, in order, outside mu_.
  static void DestroyAll(Retired* batch) {
    while (batch != nullptr) {
      Retired* const next = batch->next_;
      delete batch;
      batch = next;
    }
  }

  // Ends a batch: wakes Drain() callers waiting for it, and the reclaimer
  // thread if more was queued meanwhile (it does not take the queue while
  // busy_).
  void Finished() {
    bool more;
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      more = head_ != nullptr;
    }
    idle_cv_.notify_all();
    if (more) cv_.notify_one();
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
  Retired* head_ = nullptr;  // guarded by mu_; oldest first
  Retired* tail_ = nullptr;  // guarded by mu_
  bool busy_ = false;        // guarded by mu_: a batch is being destroyed
  std::condition_variable idle_cv_;  // busy_ became false
  std::thread::id thread_id_;
  static thread_local bool tls_draining_;
};

char tsan_grace_sync;
thread_local bool Reclaimer::tls_draining_ = false;

#if !VM_DEVICE_URCU_INLINE
constinit thread_local bool tls_rcu_registered = false;
#endif

void RegisterSlow() {
  if (IsRegistered()) return;
  const ExitKey& exit_key = GetExitKey();
  RegisterForScope();
  // Any non-null value arms the key's destructor for this thread.
  if (exit_key.ok &&
      pthread_setspecific(exit_key.key, &tsan_grace_sync) == 0) {
    return;
  }
  static thread_local ExitUnregister at_exit;
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

void StartReclaimer() { Reclaimer::Get(); }

void Retire(std::unique_ptr<Retired> r) noexcept {
  Reclaimer::Get().Push(std::move(r));
}

void WaitForReaders() {
  EnsureRegistered();
  urcu_memb_synchronize_rcu();
  GraceAcquire();  // matches A in every reader that ended before this returns
}

void WaitForRetired() { Reclaimer::Get().Drain(); }

}  // namespace internal
}  // namespace vm_device
