// A blocking hand-over queue for the inputs of one call that arrive while it runs (e.g. the
// AR stage's token chunks and the encoder's output on their way to the denoise group): any
// number of producers Push, then Close once with the end status; one consumer takes them in
// order with a timeout, so it can do periodic work (keepalives, cancellation checks) while
// it waits.
#ifndef DIFFMESH_COMMON_CALL_INPUT_QUEUE_H_
#define DIFFMESH_COMMON_CALL_INPUT_QUEUE_H_

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace diffmesh {

template <typename T>
class InputQueue {
 public:
  // Returns false (and drops `item`) once the queue is closed.
  bool Push(T item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return false;
      items_.push_back(std::move(item));
    }
    cv_.notify_one();
    return true;
  }

  // No more inputs. OK: the producers are done; an error: a producer failed (the consumer sees
  // it after the items pushed before). Only the first Close counts.
  void Close(absl::Status status = absl::OkStatus()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      closed_ = true;
      close_status_ = std::move(status);
    }
    cv_.notify_all();
  }

  // The next item; std::nullopt when none arrived within `timeout`. Once closed and drained:
  // the close status, or OUT_OF_RANGE for a clean end.
  absl::StatusOr<std::optional<T>> Next(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout),
                      [&] { return closed_ || !items_.empty(); })) {
      return std::optional<T>();
    }
    if (!items_.empty()) {
      T item = std::move(items_.front());
      items_.pop_front();
      return std::optional<T>(std::move(item));
    }
    if (!close_status_.ok()) return close_status_;
    return absl::OutOfRangeError("end of inputs");
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> items_;
  bool closed_ = false;
  absl::Status close_status_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_CALL_INPUT_QUEUE_H_
