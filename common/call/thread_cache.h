// Threads for blocking per-call work, kept after each task for the next one. A server that
// starts a thread per call pays for clone, stack mmap/mprotect and the munmap's TLB shootdown
// on every call; reusing idle threads avoids that. The cache grows on demand and never queues
// a task behind another: real calls block for tens of seconds, so a fixed pool would cap the
// number of calls in flight.
#ifndef DIFFMESH_COMMON_CALL_THREAD_CACHE_H_
#define DIFFMESH_COMMON_CALL_THREAD_CACHE_H_

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"

namespace diffmesh {

class ThreadCache {
 public:
  // A thread left idle for `idle_timeout` exits, so a burst's threads do not stay forever.
  explicit ThreadCache(absl::Duration idle_timeout = absl::Seconds(30));
  // Waits for running tasks to return and idle threads to exit.
  ~ThreadCache();
  ThreadCache(const ThreadCache&) = delete;
  ThreadCache& operator=(const ThreadCache&) = delete;

  // The process-wide cache of the RPC layer; never destroyed.
  static ThreadCache& Default();

  // Runs `task` now on an idle thread, or on a new one when none is idle.
  void Run(absl::AnyInvocable<void() &&> task);

  // Threads alive (running a task or idle), and idle ones.
  size_t threads() const;
  size_t idle() const;

 private:
  // One per thread, owned by it; on `idle_` while the thread waits for a task.
  struct Worker {
    std::condition_variable wake;
    absl::AnyInvocable<void() &&> task;  // set by Run, under mu_
  };
  void Loop(absl::AnyInvocable<void() &&> task);

  const absl::Duration idle_timeout_;
  mutable std::mutex mu_;
  std::condition_variable all_exited_;
  // Last in, first out: the most recently used thread (warm caches) takes the next task and
  // the ones at the bottom time out when load drops.
  std::vector<Worker*> idle_;
  size_t threads_ = 0;
  bool stopping_ = false;
};

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_CALL_THREAD_CACHE_H_
