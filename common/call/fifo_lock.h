// A lock granted in arrival order, for a resource that requests queue for (the denoise group):
// a waiter gives up at its deadline or when its call is cancelled, and leaves the line then.
// A plain or timed mutex hands itself to whichever thread asks when it frees, so under a
// sustained overload an early request can lose to later ones until its deadline runs out.
#ifndef DIFFMESH_COMMON_CALL_FIFO_LOCK_H_
#define DIFFMESH_COMMON_CALL_FIFO_LOCK_H_

#include <cstdint>
#include <functional>
#include <set>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace diffmesh {

class FifoLock {
 public:
  enum class Outcome { kAcquired, kCancelled, kDeadlineExceeded };

  // Waits for this caller's turn: until every earlier waiter has had the lock and released it
  // (or left the line). Gives up at `deadline` or once `cancelled()` returns true (asked at
  // least every `poll`; it must not block). Release() after kAcquired.
  Outcome Acquire(absl::Time deadline, const std::function<bool()>& cancelled,
                  absl::Duration poll);
  void Release();

  // Callers waiting for their turn (not counting the holder).
  int waiting() const;

 private:
  mutable absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<uint64_t> line_ ABSL_GUARDED_BY(mu_);  // the waiters' tickets
};

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_CALL_FIFO_LOCK_H_
