#include "common/call/fifo_lock.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

constexpr absl::Duration kPoll = absl::Milliseconds(5);

bool Never() { return false; }

// Waits (bounded) until `n` callers wait for `lock`.
void AwaitWaiting(const FifoLock& lock, int n) {
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (lock.waiting() != n && absl::Now() < until) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_EQ(lock.waiting(), n);
}

TEST(FifoLockTest, GrantsInArrivalOrder) {
  FifoLock lock;
  ASSERT_EQ(lock.Acquire(absl::InfiniteFuture(), Never, kPoll), FifoLock::Outcome::kAcquired);
  constexpr int kWaiters = 8;
  absl::Mutex mu;
  std::vector<int> order;
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      EXPECT_EQ(lock.Acquire(absl::InfiniteFuture(), Never, kPoll), FifoLock::Outcome::kAcquired);
      {
        absl::MutexLock l(&mu);
        order.push_back(i);
      }
      lock.Release();
    });
    AwaitWaiting(lock, i + 1);  // waiter i is in line before waiter i + 1 arrives
  }
  // Released while every waiter polls: arrival order still decides, whoever wakes first.
  lock.Release();
  for (auto& t : threads) t.join();
  std::vector<int> want;
  for (int i = 0; i < kWaiters; ++i) want.push_back(i);
  EXPECT_EQ(order, want);
  EXPECT_EQ(lock.waiting(), 0);
}

TEST(FifoLockTest, ANewcomerDoesNotOvertakeTheLine) {
  FifoLock lock;
  ASSERT_EQ(lock.Acquire(absl::InfiniteFuture(), Never, kPoll), FifoLock::Outcome::kAcquired);
  std::atomic<bool> first_got{false};
  std::thread first([&] {
    ASSERT_EQ(lock.Acquire(absl::InfiniteFuture(), Never, absl::Seconds(1)),
              FifoLock::Outcome::kAcquired);
    first_got = true;
    absl::SleepFor(absl::Milliseconds(20));
    lock.Release();
  });
  AwaitWaiting(lock, 1);
  lock.Release();
  // The newcomer asks right after the release, before the waiter's next poll: it waits its turn.
  ASSERT_EQ(lock.Acquire(absl::InfiniteFuture(), Never, kPoll), FifoLock::Outcome::kAcquired);
  EXPECT_TRUE(first_got);
  lock.Release();
  first.join();
}

TEST(FifoLockTest, WaitersLeaveOnCancellationAndDeadline) {
  FifoLock lock;
  ASSERT_EQ(lock.Acquire(absl::InfiniteFuture(), Never, kPoll), FifoLock::Outcome::kAcquired);
  std::atomic<bool> cancel{false};
  FifoLock::Outcome cancelled_outcome{}, third_outcome{};
  std::thread cancelled_waiter([&] {
    cancelled_outcome = lock.Acquire(absl::InfiniteFuture(), [&] { return cancel.load(); }, kPoll);
  });
  AwaitWaiting(lock, 1);
  const absl::Time start = absl::Now();
  EXPECT_EQ(lock.Acquire(start + absl::Milliseconds(50), Never, kPoll),
            FifoLock::Outcome::kDeadlineExceeded);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  std::thread third([&] { third_outcome = lock.Acquire(absl::InfiniteFuture(), Never, kPoll); });
  AwaitWaiting(lock, 2);
  cancel = true;  // the first in line leaves; the third is next
  cancelled_waiter.join();
  EXPECT_EQ(cancelled_outcome, FifoLock::Outcome::kCancelled);
  AwaitWaiting(lock, 1);
  lock.Release();
  third.join();
  EXPECT_EQ(third_outcome, FifoLock::Outcome::kAcquired);
  lock.Release();
  EXPECT_EQ(lock.waiting(), 0);
}

}  // namespace
}  // namespace diffmesh
