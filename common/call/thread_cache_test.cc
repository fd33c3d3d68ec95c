#include "common/call/thread_cache.h"

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "absl/synchronization/barrier.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

// Waits until `cache` has `n` idle threads (they go idle just after their task returns).
bool WaitIdle(const ThreadCache& cache, size_t n) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (cache.idle() != n) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

TEST(ThreadCacheTest, TasksNeverWaitForEachOther) {
  // Every task blocks until all of them run at once: a cache that queued tasks behind a
  // fixed number of threads would never pass the barrier.
  ThreadCache cache;
  constexpr int kTasks = 64;
  absl::Barrier* all_running = new absl::Barrier(kTasks);  // deleted by the last to pass
  std::atomic<int> done{0};
  for (int i = 0; i < kTasks; ++i) {
    cache.Run([&] {
      if (all_running->Block()) delete all_running;
      done.fetch_add(1);
    });
  }
  ASSERT_TRUE(WaitIdle(cache, kTasks));
  EXPECT_EQ(done.load(), kTasks);
  EXPECT_EQ(cache.threads(), static_cast<size_t>(kTasks));
}

TEST(ThreadCacheTest, ReusesAnIdleThread) {
  ThreadCache cache;
  std::mutex mu;
  std::set<std::thread::id> ids;
  for (int i = 0; i < 20; ++i) {
    absl::Notification ran;
    cache.Run([&] {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(std::this_thread::get_id());
      ran.Notify();
    });
    ran.WaitForNotification();
    ASSERT_TRUE(WaitIdle(cache, 1));
  }
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(cache.threads(), 1u);
}

TEST(ThreadCacheTest, IdleThreadsExitAfterTheTimeout) {
  ThreadCache cache(absl::Milliseconds(20));
  for (int i = 0; i < 4; ++i) cache.Run([] {});
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (cache.threads() != 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(cache.threads(), 0u);
  // Still usable after every thread has gone.
  absl::Notification ran;
  cache.Run([&] { ran.Notify(); });
  EXPECT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

TEST(ThreadCacheTest, DestructorWaitsForRunningTasks) {
  std::atomic<bool> finished{false};
  {
    ThreadCache cache;
    absl::Notification started;
    cache.Run([&] {
      started.Notify();
      absl::SleepFor(absl::Milliseconds(50));
      finished = true;
    });
    started.WaitForNotification();
  }
  EXPECT_TRUE(finished.load());
}

}  // namespace
}  // namespace diffmesh
