// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: src/internal/rcu.h
// -----------------------------------------------------------------------------
//
// The one place that talks to liburcu. Everything else in the library uses
// these few wrappers, so the flavour, the thread registration policy and the
// ThreadSanitizer annotations live here.
//
// Flavour: memb (`urcu_memb_*`, the default liburcu flavour). Read-side lock
// and unlock are a thread-local counter update plus a compiler barrier (the
// writer forces the matching memory barriers on readers with the membarrier
// system call). Readers never announce quiescent states and may block, so vCPU
// threads can sit in KVM_RUN for as long as they like; QSBR would have made
// every vCPU thread go offline around KVM_RUN and report quiescent states.
//
// Registration: liburcu needs every thread that enters a read-side critical
// section to be registered. `EnsureRegistered()` registers the calling thread
// on first use and unregisters it when the thread exits, with a pthread key
// destructor rather than a thread_local destructor: glibc runs key
// destructors after every C++ thread_local destructor of the thread, so a
// thread_local object whose destructor dispatches, visits or calls
// Synchronize() still finds the thread registered, and a thread that
// registers again from another key's destructor re-arms the key (glibc runs
// up to PTHREAD_DESTRUCTOR_ITERATIONS rounds). No thread exits registered,
// which would leave a dangling entry in liburcu's registry (grace periods then
// spin forever on it, or read freed memory). RegisterForScope() and
// UnregisterForScope() (behind vm_device::VcpuThread) do it explicitly.
//
// Thread safety: every function may be called from any thread.
// Reclamation: retired objects are destroyed by one reclaimer thread of the
// library's own (rcu.cc) after a grace period (synchronize_rcu), in batches
// gathered over about a millisecond, rather than by liburcu's call_rcu thread,
// which would run one grace period (one membarrier IPI to every vCPU's CPU)
// per change under a storm of changes. VM_DEVICE_RECLAIM_BATCH_US (read once)
// sets the batching window in microseconds; 0 turns batching off.
//
// Progress: ReadSection is wait-free. Retire() takes a mutex to link the
// object into the reclaimer's queue (intrusive: it never allocates and never
// throws) and never waits for a grace period, so it may be called inside a
// read-side critical section, and right after a publish. WaitForReaders() and WaitForRetired() block for a grace
// period and must not be called inside a read-side critical section (they
// would wait for themselves) nor from the reclaimer thread.

#ifndef VM_DEVICE_SRC_INTERNAL_RCU_H_
#define VM_DEVICE_SRC_INTERNAL_RCU_H_

// VM_DEVICE_URCU_INLINE (set by Bazel; 1 unless built with
// --define=vm_device_urcu_inline=false) chooses how the read side reaches
// liburcu:
//   1: liburcu's own inline fast paths (_LGPL_SOURCE): enter and leave are a
//      few instructions on a thread-local counter, inlined into the dispatch
//      functions. This compiles liburcu's LGPL-2.1+ header code into the
//      library (see README.md, "Licensing of the read side").
//   0: the exported functions of liburcu-memb.so: two calls through the PLT,
//      each with a general-dynamic TLS lookup (__tls_get_addr). Slower by
//      tens of nanoseconds per dispatch (README.md has the measurement).
// Only this header and rcu.cc include liburcu; nothing outside src/internal
// sees it.
//
// ThreadSanitizer builds always use 0: liburcu's inline code keeps its shared
// state with volatile loads and stores, which TSan would take for data races
// once that code is compiled (instrumented) into ours; behind the library's
// ABI it stays uninstrumented, and rcu.cc describes the grace periods to TSan
// instead.
#include "absl/base/config.h"

#ifndef VM_DEVICE_URCU_INLINE
#define VM_DEVICE_URCU_INLINE 1
#endif
#if defined(ABSL_HAVE_THREAD_SANITIZER)
#undef VM_DEVICE_URCU_INLINE
#define VM_DEVICE_URCU_INLINE 0
#endif
#if VM_DEVICE_URCU_INLINE && !defined(_LGPL_SOURCE)
#define _LGPL_SOURCE 1
#endif
#include <urcu/urcu-memb.h>

#if VM_DEVICE_URCU_INLINE
// The reader's record, as liburcu's inline read side uses it, redeclared
// `constinit`. liburcu's header declares it `extern thread_local` when
// compiled as C++, so the compiler cannot rule out a dynamic initializer in
// another translation unit and routes every use through a TLS wrapper: it
// tests the weak "TLS init function" symbol and would call it (four times
// per dispatch, on enter, registered check and leave). The variable is
// defined in liburcu's C code and zero-initialized statically, so it has no
// dynamic initializer; saying so drops the wrapper. On the 2-vCPU dev machine
// that was about 1.3 ns of the rcu read side (rcu/uniform/ranges:1/threads:1
// median 12.3 -> 11.0 ns, unsynchronized 10.3 ns; README.md, "Steady
// dispatch"). GCC and Clang both accept the redeclaration and both drop the
// wrapper (tests/dispatch_hot_path_test.sh checks that no dispatch function
// references one). Not in the non-inline mode: there the read side is a call
// into liburcu and this translation unit never names the variable.
extern "C" {
extern constinit thread_local struct urcu_reader urcu_memb_reader;
}
#endif

#include <memory>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"

#ifdef ABSL_HAVE_THREAD_SANITIZER
extern "C" void __tsan_release(void* addr);
#endif

namespace vm_device {
namespace internal {

// Whether liburcu has the calling thread registered (by this library or by
// the application itself).
#if VM_DEVICE_URCU_INLINE
ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool IsRegistered() {
  return URCU_TLS(urcu_memb_reader).registered;
}
#else
// liburcu's exported API cannot tell; this is the library's own record, so
// in this mode a thread the application registered itself is registered a
// second time on its first dispatch, which liburcu refuses (vcpu_thread.h).
extern constinit thread_local bool tls_rcu_registered;
ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool IsRegistered() {
  return tls_rcu_registered;
}
#endif

// Registers the calling thread (until it exits) unless it is registered.
ABSL_ATTRIBUTE_COLD void RegisterSlow();

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void EnsureRegistered() {
  if (ABSL_PREDICT_FALSE(!IsRegistered())) RegisterSlow();
}

// RegisterForScope(), UnregisterForScope()
//
// Explicit registration (vm_device::VcpuThread). REQUIRES: the thread is not
// registered / is registered, and is outside any read-side critical section.
void RegisterForScope();
void UnregisterForScope();

// The address TSan's happens-before annotations use for grace periods (see
// rcu.cc).
extern char tsan_grace_sync;

// ReadSection
//
// An RCU read-side critical section for the scope. Nests. Exception-safe.
// Wait-free: a thread-local counter update (memb flavour with membarrier),
// plus, on a thread's first use, its registration.
class ReadSection {
 public:
  ABSL_ATTRIBUTE_ALWAYS_INLINE ReadSection() {
    EnsureRegistered();
    urcu_memb_read_lock();
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE ~ReadSection() {
#ifdef ABSL_HAVE_THREAD_SANITIZER
    __tsan_release(&tsan_grace_sync);  // A: see rcu.cc
#endif
    urcu_memb_read_unlock();
  }
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;
};

// Whether the calling thread is inside a read-side critical section.
bool InReadSection();

// Whether the calling thread is where retired objects are being destroyed:
// the reclaimer thread, or a thread inside WaitForRetired() running the
// destructors of what it took from the queue.
bool OnReclaimThread();

// Retired
//
// Something to destroy after a grace period: every reader that could still
// see it has left its read-side critical section. Subclass and put the
// resources in the subclass; its destructor runs on the reclaimer thread, or
// on a thread in WaitForRetired() (OnReclaimThread() is true on both).
class Retired {
 public:
  Retired() = default;
  virtual ~Retired() = default;
  Retired(const Retired&) = delete;
  Retired& operator=(const Retired&) = delete;

 private:
  friend class Reclaimer;
  Retired* next_ = nullptr;  // the reclaimer's queue (guarded by its mutex)
};

// StartReclaimer()
//
// Starts the reclaimer thread if it is not running yet. The only step of
// retirement that can fail (std::bad_alloc, std::system_error); IoManager's
// constructor calls it so that Retire() after a publish cannot.
void StartReclaimer();

// Retire()
//
// Destroys `r` after a grace period, on the library's reclaimer thread
// (rcu.cc), usually within about a millisecond plus a grace period. Never
// waits for a grace period; may be called inside a read-side critical section.
// Never allocates and never throws once StartReclaimer() has returned: a
// writer calls it after its publish, where nothing may fail.
void Retire(std::unique_ptr<Retired> r) noexcept;

// WaitForReaders()
//
// Returns once every read-side critical section that was running when it was
// called has ended (synchronize_rcu).
void WaitForReaders();

// WaitForRetired()
//
// Returns once everything retired before the call has been destroyed. Waits
// for a batch the reclaimer (or another caller) is destroying, then takes
// what is still queued and destroys it on the calling thread after a grace
// period (synchronize_rcu), in queue order, without waking the reclaimer
// thread. Blocking: one grace period plus the destructors.
void WaitForRetired();

}  // namespace internal
}  // namespace vm_device

#endif  // VM_DEVICE_SRC_INTERNAL_RCU_H_
