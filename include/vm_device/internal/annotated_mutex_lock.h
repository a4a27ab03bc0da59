// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// -----------------------------------------------------------------------------
// File: internal/annotated_mutex_lock.h
// -----------------------------------------------------------------------------
//
// `AnnotatedMutexLock` holds an absl::Mutex for a scope, like absl::MutexLock,
// and also tells ThreadSanitizer about the happens-before edge each hand-off
// of the mutex provides. Abseil may be a prebuilt, uninstrumented library
// (Debian's is): TSan then cannot see inside absl::Mutex, and two critical
// sections serialized by it look like a data race. The annotations compile to
// nothing in builds without TSan. Not part of the public API.
//
// Thread safety: as absl::MutexLock. Progress: blocking.

#ifndef VM_DEVICE_INTERNAL_ANNOTATED_MUTEX_LOCK_H_
#define VM_DEVICE_INTERNAL_ANNOTATED_MUTEX_LOCK_H_

#include "absl/base/config.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

#if defined(ABSL_HAVE_THREAD_SANITIZER)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace vm_device {
namespace sync_internal {

class ABSL_SCOPED_LOCKABLE AnnotatedMutexLock {
 public:
  explicit AnnotatedMutexLock(absl::Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu)
      : mu_(mu) {
    mu_->Lock();
#if defined(ABSL_HAVE_THREAD_SANITIZER)
    __tsan_acquire(mu_);  // matches the release below in the previous holder
#endif
  }
  ~AnnotatedMutexLock() ABSL_UNLOCK_FUNCTION() {
#if defined(ABSL_HAVE_THREAD_SANITIZER)
    __tsan_release(mu_);
#endif
    mu_->Unlock();
  }
  AnnotatedMutexLock(const AnnotatedMutexLock&) = delete;
  AnnotatedMutexLock& operator=(const AnnotatedMutexLock&) = delete;

 private:
  absl::Mutex* const mu_;
};

}  // namespace sync_internal
}  // namespace vm_device

#endif  // VM_DEVICE_INTERNAL_ANNOTATED_MUTEX_LOCK_H_
