#include "common/call/call_context.h"

#include <vector>

#include "absl/strings/str_cat.h"

namespace diffmesh {

void CallContext::Cancel() {
  std::lock_guard<std::recursive_mutex> running(run_mu_);
  std::vector<std::function<void()>> run;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_) return;
    cancelled_ = true;
    for (auto& [id, hook] : hooks_) run.push_back(hook);
  }
  for (auto& hook : run) hook();
}

bool CallContext::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

absl::Status CallContext::Check(const char* where) const {
  if (cancelled()) return absl::CancelledError(absl::StrCat(where, ": call cancelled"));
  if (absl::Now() >= deadline_) {
    return absl::DeadlineExceededError(absl::StrCat(where, ": deadline exceeded"));
  }
  return absl::OkStatus();
}

int CallContext::OnCancel(std::function<void()> hook) {
  std::unique_lock<std::mutex> lock(mu_);
  if (cancelled_) {
    lock.unlock();
    hook();
    return -1;
  }
  int id = next_id_++;
  hooks_.emplace(id, std::move(hook));
  return id;
}

void CallContext::RemoveOnCancel(int id) {
  std::lock_guard<std::recursive_mutex> running(run_mu_);  // not while its hook may run
  std::lock_guard<std::mutex> lock(mu_);
  hooks_.erase(id);
}

}  // namespace diffmesh
