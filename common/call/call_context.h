// Deadline and cancellation of one call as it crosses stages. gRPC-free: the service adapters
// translate gRPC's deadline/cancel into a CallContext, and stage clients translate it back.
#ifndef DIFFMESH_COMMON_CALL_CALL_CONTEXT_H_
#define DIFFMESH_COMMON_CALL_CALL_CONTEXT_H_

#include <functional>
#include <map>
#include <mutex>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace diffmesh {

class CallContext {
 public:
  explicit CallContext(absl::Time deadline = absl::InfiniteFuture()) : deadline_(deadline) {}
  CallContext(const CallContext&) = delete;
  CallContext& operator=(const CallContext&) = delete;

  absl::Time deadline() const { return deadline_; }

  // Cancels the call: every registered hook runs once, now (outside the lock).
  void Cancel();
  bool cancelled() const;

  // OK, or CANCELLED / DEADLINE_EXCEEDED naming `where`. Long loops call it once per step.
  absl::Status Check(const char* where) const;

  // Runs `hook` on Cancel() (at once if already cancelled). The returned id unregisters it;
  // a hook must be unregistered before what it captures dies. RemoveOnCancel waits for a
  // Cancel() that is running hooks on another thread.
  int OnCancel(std::function<void()> hook);
  void RemoveOnCancel(int id);

 private:
  const absl::Time deadline_;
  // Held while Cancel() runs the hooks, and taken by RemoveOnCancel: once RemoveOnCancel
  // returns, its hook is not running and will not run, so what it captures may die. Recursive
  // so that a hook may unregister itself.
  std::recursive_mutex run_mu_;
  mutable std::mutex mu_;
  bool cancelled_ = false;
  int next_id_ = 0;
  std::map<int, std::function<void()>> hooks_;
};

// Registers a hook for the lifetime of the scope.
class ScopedCancelHook {
 public:
  ScopedCancelHook(CallContext& ctx, std::function<void()> hook)
      : ctx_(ctx), id_(ctx.OnCancel(std::move(hook))) {}
  ~ScopedCancelHook() { ctx_.RemoveOnCancel(id_); }
  ScopedCancelHook(const ScopedCancelHook&) = delete;
  ScopedCancelHook& operator=(const ScopedCancelHook&) = delete;

 private:
  CallContext& ctx_;
  int id_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_CALL_CALL_CONTEXT_H_
