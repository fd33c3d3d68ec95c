#include "common/call/fifo_lock.h"

#include <algorithm>

namespace diffmesh {

FifoLock::Outcome FifoLock::Acquire(absl::Time deadline, const std::function<bool()>& cancelled,
                                    absl::Duration poll) {
  absl::MutexLock lock(&mu_);
  const uint64_t ticket = next_ticket_++;
  line_.insert(ticket);
  auto my_turn = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !held_ && *line_.begin() == ticket;
  };
  while (true) {
    if (my_turn()) {
      line_.erase(ticket);
      held_ = true;
      return Outcome::kAcquired;
    }
    // Leaving the line wakes the next waiter if this one was first (its condition is
    // re-evaluated when mu_ is released).
    if (cancelled()) {
      line_.erase(ticket);
      return Outcome::kCancelled;
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      line_.erase(ticket);
      return Outcome::kDeadlineExceeded;
    }
    mu_.AwaitWithDeadline(absl::Condition(&my_turn), std::min(deadline, now + poll));
  }
}

void FifoLock::Release() {
  absl::MutexLock lock(&mu_);
  held_ = false;
}

int FifoLock::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(line_.size());
}

}  // namespace diffmesh
