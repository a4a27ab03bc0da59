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
// section, or that calls call_rcu(), to be registered. `EnsureRegistered()`
// registers the calling thread on first use and unregisters it when the
// thread exits (a thread_local destructor); RegisterForScope() and
// UnregisterForScope() (behind vm_device::VcpuThread) do it explicitly.
//
// Thread safety: every function may be called from any thread.
// Progress: ReadSection is wait-free. Retire() is lock-free and never waits for
// a grace period, so it may be called inside a read-side critical section.
// WaitForReaders() and WaitForRetired() block for a grace period and must not
// be called inside a read-side critical section (they would wait for
// themselves) nor from the reclamation thread.

#ifndef VM_DEVICE_SRC_INTERNAL_RCU_H_
#define VM_DEVICE_SRC_INTERNAL_RCU_H_

#include <memory>

#include "absl/base/attributes.h"
#include "absl/base/config.h"
#include "absl/base/optimization.h"

namespace vm_device {
namespace internal {

// Registers the calling thread as an RCU reader unless it already is.
void RegisterSlow();
extern thread_local bool tls_rcu_registered;
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void EnsureRegistered() {
  if (ABSL_PREDICT_FALSE(!tls_rcu_registered)) RegisterSlow();
}

// RegisterForScope(), UnregisterForScope()
//
// Explicit registration (vm_device::VcpuThread). REQUIRES: the thread is not
// registered / is registered, and is outside any read-side critical section.
void RegisterForScope();
void UnregisterForScope();

void ReadLock();
void ReadUnlock();

// ReadSection
//
// An RCU read-side critical section for the scope. Nests. Exception-safe.
class ReadSection {
 public:
  ABSL_ATTRIBUTE_ALWAYS_INLINE ReadSection() {
    EnsureRegistered();
    ReadLock();
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE ~ReadSection() { ReadUnlock(); }
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;
};

// Whether the calling thread is inside a read-side critical section.
bool InReadSection();

// Whether the calling thread is liburcu's call_rcu (reclamation) thread.
bool OnReclaimThread();

// Retired
//
// Something to destroy after a grace period: every reader that could still
// see it has left its read-side critical section. Subclass and put the
// resources in the subclass; its destructor runs on the reclamation thread.
class Retired {
 public:
  Retired() = default;
  virtual ~Retired() = default;
  Retired(const Retired&) = delete;
  Retired& operator=(const Retired&) = delete;

  // Storage for liburcu's `struct rcu_head` (two pointers; checked in
  // rcu.cc), so that this header need not include liburcu's, and the way
  // back from it to the object.
  struct RcuNode {
    alignas(void*) unsigned char head[2 * sizeof(void*)];
    Retired* owner;
  } rcu_node;
};

// Retire()
//
// Destroys `r` after a grace period, on liburcu's call_rcu thread. Never
// waits; may be called inside a read-side critical section.
void Retire(std::unique_ptr<Retired> r);

// WaitForReaders()
//
// Returns once every read-side critical section that was running when it was
// called has ended (synchronize_rcu).
void WaitForReaders();

// WaitForRetired()
//
// Returns once everything retired before the call has been destroyed
// (rcu_barrier).
void WaitForRetired();

}  // namespace internal
}  // namespace vm_device

#endif  // VM_DEVICE_SRC_INTERNAL_RCU_H_
