// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: internal/device_lock.h
// -----------------------------------------------------------------------------
//
// The lock behind `LockedDevice` and `ShardedDevice` (locked_device.h,
// sharded_device.h), and the per-thread record of the device locks a thread
// holds, which gives those adapters their re-entry and cross-device policy.
// Not part of the public API.
//
//   * `DeviceLock`: a one-word futex lock (Drepper's three-state mutex) with
//     Abseil thread-safety annotations. Its cost depends on nothing
//     process-wide: no deadlock detector, no global graph lock, no
//     allocation. (Debian's Abseil is built without NDEBUG, so every
//     absl::Mutex::Lock() there runs the deadlock detector through one
//     process-wide lock; the library must not switch that off for the whole
//     application, so these locks are not absl::Mutex.)
//   * `AcquireChain()` / `ReleaseChain()`: take / drop a run of device locks
//     for the calling thread under the chain policy below.
//
// Chain policy (what happens when a thread that already holds a device lock
// asks for another one):
//   * the lock is one the thread already holds (same device, same shard, or
//     a shard of a device whose every shard the thread holds): refused at
//     once, `Acquired::kReentrant`;
//   * otherwise, if the thread holds no device lock: wait as long as it takes
//     (`Acquired::kOk`);
//   * otherwise (a nested acquisition, e.g. device A's handler reaches device
//     B): wait at most `kNestedLockWaitNs`, then give up: `Acquired::kBusy`,
//     with nothing held. A cycle (A->B on one vCPU while B->A on another)
//     therefore ends with at least one side refused after at most
//     `kNestedLockWaitNs`, never with a hang or an abort.
//   * more than `kMaxHeldLocks` nested acquisitions on one thread:
//     `Acquired::kTooDeep`.
//
// Thread safety: `DeviceLock` is a mutex; the held-lock record is
// thread-local. Progress: blocking (a nested acquisition: bounded).
// Memory ordering: Unlock() (release) happens-before the next Lock()/TryLock()
// that takes the lock (acquire): everything a holder wrote is visible to the
// next holder. The lock word is an ordinary C++ atomic, so ThreadSanitizer
// sees those edges itself (no __tsan_acquire/__tsan_release needed, unlike
// the uninstrumented absl::Mutex in annotated_mutex_lock.h); the futex calls
// carry no ordering of their own.
// Lifetime: a `DeviceLock` must not be destroyed while held or waited on.

#ifndef VM_DEVICE_INTERNAL_DEVICE_LOCK_H_
#define VM_DEVICE_INTERNAL_DEVICE_LOCK_H_

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "vm_device/export.h"

namespace vm_device {
namespace device_lock_internal {

// kNestedLockWaitNs
//
// How long a thread that already holds a device lock waits for another one
// before the access is refused: 10 ms, in nanoseconds. Long against any
// handler's hold time (ns to us) so that a merely busy device is almost never
// refused; short enough that a guest that drives two vCPUs into an A->B /
// B->A cycle costs them 10 ms, not a hang.
inline constexpr int64_t kNestedLockWaitNs = 10'000'000;

// kMaxHeldLocks
//
// How many acquisitions (a lock, or all shards of a device at once) one
// thread may hold at the same time.
inline constexpr int kMaxHeldLocks = 16;

class ABSL_LOCKABLE DeviceLock {
 public:
  DeviceLock() = default;
  DeviceLock(const DeviceLock &) = delete;
  DeviceLock &operator=(const DeviceLock &) = delete;

  // DeviceLock::Lock()
  //
  // Blocks until the lock is held by the caller. Not recursive.
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    uint32_t expected = kFree;
    // acquire (success): pairs with the release in Unlock() of the previous
    // holder. relaxed (failure): the slow path re-reads with acquire.
    if (ABSL_PREDICT_TRUE(word_.compare_exchange_strong(
            expected, kHeld, std::memory_order_acquire,
            std::memory_order_relaxed))) {
      return;
    }
    SlowLock(/*deadline=*/nullptr);
  }

  // DeviceLock::TryLock()
  //
  // Takes the lock if it is free; never waits.
  ABSL_MUST_USE_RESULT bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    uint32_t expected = kFree;
    // acquire / relaxed: as in Lock().
    return word_.compare_exchange_strong(
        expected, kHeld, std::memory_order_acquire, std::memory_order_relaxed);
  }

  // DeviceLock::TryLockFor()
  //
  // Takes the lock, waiting at most `ns` nanoseconds; false if it did not.
  ABSL_MUST_USE_RESULT bool TryLockFor(int64_t ns)
      ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    if (TryLock()) return true;
    timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ns / 1'000'000'000;
    deadline.tv_nsec += ns % 1'000'000'000;
    if (deadline.tv_nsec >= 1'000'000'000) {
      deadline.tv_nsec -= 1'000'000'000;
      ++deadline.tv_sec;
    }
    return SlowLock(&deadline);
  }

  // DeviceLock::Unlock()
  //
  // Releases the lock. REQUIRES: held by the caller.
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    // release: publishes the critical section to the next holder; pairs with
    // the acquire in Lock()/TryLock()/SlowLock().
    if (ABSL_PREDICT_FALSE(word_.exchange(kFree, std::memory_order_release) ==
                           kContended)) {
      Wake();
    }
  }

  // DeviceLock::IsHeldByAnyone()
  //
  // A snapshot, for tests and assertions only.
  bool IsHeldByAnyone() const {
    // relaxed: a racy snapshot that orders nothing.
    return word_.load(std::memory_order_relaxed) != kFree;
  }

 private:
  // The lock word. Invariant: kFree when not held; kHeld when held and no
  // thread has gone to sleep on it since it was taken; kContended when held
  // and a thread may be asleep in FUTEX_WAIT (Unlock() then wakes one).
  static constexpr uint32_t kFree = 0;
  static constexpr uint32_t kHeld = 1;
  static constexpr uint32_t kContended = 2;
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t),
                "the futex word must be a plain 32-bit word");

  // Waits for the lock, until `deadline` (CLOCK_MONOTONIC) when not null.
  // Returns whether the lock was taken.
  ABSL_ATTRIBUTE_NOINLINE bool SlowLock(const timespec *deadline) {
    // A short spin first: most handlers hold a device lock for well under a
    // microsecond, less than a sleep and a wake-up cost.
    for (int i = 0; i < 64; ++i) {
      // relaxed: only a hint; the exchange below is the acquire.
      if (word_.load(std::memory_order_relaxed) == kFree) {
        uint32_t expected = kFree;
        if (word_.compare_exchange_strong(expected, kHeld,
                                          std::memory_order_acquire,
                                          std::memory_order_relaxed)) {
          return true;
        }
      }
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    // acquire: pairs with the release in Unlock(). Marking the word
    // kContended before sleeping makes the holder's Unlock() wake a sleeper.
    while (word_.exchange(kContended, std::memory_order_acquire) != kFree) {
      timespec rel;
      const timespec *timeout = nullptr;
      if (deadline != nullptr) {
        timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t left = (deadline->tv_sec - now.tv_sec) * 1'000'000'000 +
                       (deadline->tv_nsec - now.tv_nsec);
        // Gave up. The word stays kContended: at worst one spare wake-up.
        if (left <= 0) return false;
        rel.tv_sec = left / 1'000'000'000;
        rel.tv_nsec = left % 1'000'000'000;
        timeout = &rel;
      }
      // Sleeps only while the word is still kContended; EINTR, EAGAIN and
      // ETIMEDOUT all just go round the loop.
      syscall(SYS_futex, reinterpret_cast<uint32_t *>(&word_),
              FUTEX_WAIT_PRIVATE, kContended, timeout, nullptr, 0);
    }
    return true;
  }

  ABSL_ATTRIBUTE_NOINLINE void Wake() {
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(&word_), FUTEX_WAKE_PRIVATE,
            1, nullptr, nullptr, 0);
  }

  std::atomic<uint32_t> word_{kFree};
};

// The device locks the calling thread holds: one entry per acquisition, the
// locks [first, last] of one array (one lock: first == last).
struct HeldEntry {
  uintptr_t first;
  uintptr_t last;
};
struct HeldLocks {
  int depth;
  HeldEntry entries[kMaxHeldLocks];
};
// Thread-local: read and written only by its own thread. Constant-initialized,
// so reaching it costs no initialization guard. Defined once, in the library
// (src/device_lock.cc), and exported: the application's inline lock code and
// the library's IoManager::Synchronize() must see the same record, also when
// the library is a shared object built with hidden visibility (an inline
// variable would then be one copy in the application and another in
// libvm_device.so).
ABSL_CONST_INIT extern VM_DEVICE_EXPORT thread_local HeldLocks tls_held_locks;

// HeldDepth()
//
// How many device-lock acquisitions the calling thread holds (0: none). What
// IoManager::Synchronize() checks to refuse being called under a device lock.
inline int HeldDepth() { return tls_held_locks.depth; }

// Acquired
//
// The outcome of AcquireChain().
enum class Acquired : uint8_t {
  kOk,         // all the locks are held by the caller
  kReentrant,  // the caller already holds one of them; nothing taken
  kBusy,       // nested, and a lock stayed busy for kNestedLockWaitNs
  kTooDeep,    // the caller already holds kMaxHeldLocks acquisitions
};

// The nested case of AcquireChain().
template <typename L>
ABSL_ATTRIBUTE_COLD ABSL_ATTRIBUTE_NOINLINE Acquired AcquireNested(L *first,
                                                                   size_t n) {
  HeldLocks &held = tls_held_locks;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(first);
  const uintptr_t hi = reinterpret_cast<uintptr_t>(first + (n - 1));
  for (int i = 0; i < held.depth; ++i) {
    // [lo, hi] and the entry's range overlap: a lock this thread holds.
    if (!(hi < held.entries[i].first || held.entries[i].last < lo)) {
      return Acquired::kReentrant;
    }
  }
  if (held.depth == kMaxHeldLocks) return Acquired::kTooDeep;
  for (size_t i = 0; i < n; ++i) {
    if (!static_cast<DeviceLock &>(first[i]).TryLockFor(kNestedLockWaitNs)) {
      while (i > 0) static_cast<DeviceLock &>(first[--i]).Unlock();
      return Acquired::kBusy;
    }
  }
  held.entries[held.depth++] = {lo, hi};
  return Acquired::kOk;
}

// AcquireChain()
//
// Takes the `n` locks `first[0..n)` (`L` is DeviceLock or a type derived from
// it, e.g. one padded to a cache line), in index order, for the calling
// thread under the chain policy of the file comment. Any two threads that
// take several locks of one array take them in the same order, so they never
// deadlock on each other. On kOk the caller must call ReleaseChain(first, n)
// once, on this thread; on anything else nothing is held.
template <typename L>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline Acquired AcquireChain(L *first, size_t n) {
  static_assert(std::is_base_of_v<DeviceLock, L>, "L must be a DeviceLock");
  HeldLocks &held = tls_held_locks;
  if (ABSL_PREDICT_FALSE(held.depth != 0)) return AcquireNested(first, n);
  for (size_t i = 0; i < n; ++i) static_cast<DeviceLock &>(first[i]).Lock();
  held.entries[0] = {reinterpret_cast<uintptr_t>(first),
                     reinterpret_cast<uintptr_t>(first + (n - 1))};
  held.depth = 1;
  return Acquired::kOk;
}

// ReleaseChain()
//
// Releases what a successful AcquireChain(first, n) took. Acquisitions are
// scoped, so the one released is the thread's newest.
template <typename L>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void ReleaseChain(L *first, size_t n) {
  --tls_held_locks.depth;
  for (size_t i = n; i > 0; --i)
    static_cast<DeviceLock &>(first[i - 1]).Unlock();
}

// ChainHold
//
// AcquireChain() for a scope: releases on destruction (exceptions included)
// when it acquired.
template <typename L>
class ChainHold {
 public:
  ChainHold(L *first, size_t n)
      : first_(first), n_(n), result_(AcquireChain(first, n)) {}
  ~ChainHold() {
    if (result_ == Acquired::kOk) ReleaseChain(first_, n_);
  }
  ChainHold(const ChainHold &) = delete;
  ChainHold &operator=(const ChainHold &) = delete;

  Acquired result() const { return result_; }

 private:
  L *const first_;
  const size_t n_;
  const Acquired result_;
};

}  // namespace device_lock_internal
}  // namespace vm_device

#endif  // VM_DEVICE_INTERNAL_DEVICE_LOCK_H_
