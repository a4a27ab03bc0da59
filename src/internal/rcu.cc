// liburcu (memb flavour) behind the wrappers of rcu.h, with the
// ThreadSanitizer annotations that make its grace periods visible to TSan.

#include "src/internal/rcu.h"

// rcu.h includes liburcu (memb flavour), inline fast paths or not.

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>

#include "absl/base/config.h"
#include "absl/synchronization/notification.h"

#ifdef ABSL_HAVE_THREAD_SANITIZER
extern "C" void __tsan_acquire(void* addr);
#endif

namespace vm_device {
namespace internal {
namespace {

static_assert(sizeof(rcu_head) <= sizeof(Retired::RcuNode::head) &&
                  alignof(rcu_head) <= alignof(void*),
              "Retired::RcuNode::head is too small for struct rcu_head");
static_assert(std::is_standard_layout_v<Retired::RcuNode> &&
                  offsetof(Retired::RcuNode, head) == 0,
              "the rcu_head must start the RcuNode");

// ThreadSanitizer does not see liburcu's grace periods: the read-side
// bookkeeping lives in the uninstrumented shared library. Without help it
// reports a race between a reader's last access to a table and the free that
// follows the grace period. The happens-before edge that the grace period
// guarantees is described to it instead:
//
//   Reader thread                        Writer / reclamation thread
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

// WaitForRetired() waits on an absl::Notification, whose synchronization
// happens inside the uninstrumented Abseil library: TSan would not order what
// the reclamation thread did (device destructors included) before the wait's
// return. The marker releases this address before it notifies, and the waiter
// acquires it after the wait.
[[maybe_unused]] char retired_sync;

inline void RetiredRelease() {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  __tsan_release(&retired_sync);
#endif
}

inline void RetiredAcquire() {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  __tsan_acquire(&retired_sync);
#endif
}

// Unregisters the thread at exit if RegisterSlow() registered it.
struct ExitUnregister {
  bool armed = false;
  ~ExitUnregister() {
    if (armed && IsRegistered()) UnregisterForScope();
  }
};

void Reclaim(rcu_head* head) {
  GraceAcquire();  // B: matches A in every reader that saw the object
  delete reinterpret_cast<Retired::RcuNode*>(head)->owner;
}

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

bool OnReclaimThread() {
  // The default call_rcu helper is the only one this library uses.
  call_rcu_data* crdp = urcu_memb_get_default_call_rcu_data();
  return crdp != nullptr &&
         pthread_equal(urcu_memb_get_call_rcu_thread(crdp), pthread_self());
}

void Retire(std::unique_ptr<Retired> r) {
  // call_rcu must come from a registered thread (rcu-api.md).
  EnsureRegistered();
  Retired* raw = r.release();
  raw->rcu_node.owner = raw;
  // A: whatever this thread wrote into `raw` is visible to Reclaim (B). The
  // hand-over through liburcu's queue is invisible to TSan.
  GraceRelease();
  urcu_memb_call_rcu(reinterpret_cast<rcu_head*>(raw->rcu_node.head), &Reclaim);
}

void WaitForReaders() {
  EnsureRegistered();
  urcu_memb_synchronize_rcu();
  GraceAcquire();  // matches A in every reader that ended before this returns
}

namespace {

// Signals when it is reclaimed. All retirements go through the one default
// call_rcu thread, whose callbacks run in the order they were queued, so by
// the time this marker is reclaimed everything retired before it has been.
// (Not rcu_barrier(): it hands memory between threads inside liburcu in a way
// TSan cannot see, and reports a race in liburcu.)
class BarrierMarker final : public Retired {
 public:
  explicit BarrierMarker(absl::Notification* done) : done_(done) {}
  ~BarrierMarker() override {
    RetiredRelease();
    done_->Notify();
  }

 private:
  absl::Notification* done_;
};

}  // namespace

void WaitForRetired() {
  absl::Notification done;
  Retire(std::make_unique<BarrierMarker>(&done));
  done.WaitForNotification();
  RetiredAcquire();
}

}  // namespace internal
}  // namespace vm_device
