#include "common/call/thread_cache.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

namespace diffmesh {

ThreadCache::ThreadCache(absl::Duration idle_timeout) : idle_timeout_(idle_timeout) {}

ThreadCache::~ThreadCache() {
  std::unique_lock<std::mutex> lock(mu_);
  stopping_ = true;
  for (Worker* w : idle_) w->wake.notify_one();
  all_exited_.wait(lock, [this] { return threads_ == 0; });
}

ThreadCache& ThreadCache::Default() {
  static ThreadCache* cache = new ThreadCache();
  return *cache;
}

void ThreadCache::Run(absl::AnyInvocable<void() &&> task) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!idle_.empty()) {
    Worker* w = idle_.back();
    idle_.pop_back();
    w->task = std::move(task);
    lock.unlock();
    w->wake.notify_one();
    return;
  }
  ++threads_;
  lock.unlock();
  // Detached: the count above, not a join, tells the destructor when every thread is gone.
  std::thread([this, task = std::move(task)]() mutable { Loop(std::move(task)); }).detach();
}

void ThreadCache::Loop(absl::AnyInvocable<void() &&> task) {
  Worker self;
  while (true) {
    std::move(task)();
    task = nullptr;  // what the task captured dies here, before the thread waits
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) break;
    idle_.push_back(&self);
    self.wake.wait_for(lock, absl::ToChronoNanoseconds(idle_timeout_),
                       [&] { return self.task != nullptr || stopping_; });
    if (self.task == nullptr) {
      // Timed out or stopping, with no task handed over: leave the idle list and exit.
      idle_.erase(std::find(idle_.begin(), idle_.end(), &self));
      break;
    }
    task = std::move(self.task);
    self.task = nullptr;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (--threads_ == 0) all_exited_.notify_all();
}

size_t ThreadCache::threads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return threads_;
}

size_t ThreadCache::idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return idle_.size();
}

}  // namespace diffmesh
