// Streaming calls on gRPC's callback API whose work blocks (stage cores, the orchestrator):
// EventStreamReactor writes the events a work emits, StreamingCall serves server-streaming
// methods with it (bidi_streaming_call.h the bidirectional ones), RunUnary unary ones.
#ifndef DIFFMESH_COMMON_RPC_STREAMING_CALL_H_
#define DIFFMESH_COMMON_RPC_STREAMING_CALL_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <mutex>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/call/call_context.h"
#include "common/call/thread_cache.h"
#include "common/status/grpc_status.h"

namespace diffmesh {

// The call's deadline: the client's, capped at `max_duration` from now. The cap is the server's
// own limit on one call (a stage's --max-request-time), so a client that sends no deadline, or
// a far one, cannot hold the server's work past it: the work's CallContext reports
// DEADLINE_EXCEEDED from then on.
inline absl::Time DeadlineOf(const grpc::ServerContextBase& server_ctx,
                             absl::Duration max_duration = absl::InfiniteDuration()) {
  auto d = server_ctx.deadline();
  absl::Time client = absl::InfiniteFuture();
  if (d < std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    client = absl::FromChrono(d);
  }
  if (max_duration == absl::InfiniteDuration()) return client;
  return std::min(client, absl::Now() + max_duration);
}

// The write side of a server-streaming or bidirectional call (Base is gRPC's
// ServerWriteReactor or ServerBidiReactor): the call's work runs on a ThreadCache thread
// (blocking work may not hold gRPC's own threads) and emits events; they are written in order,
// one write in flight, the next from OnWriteDone, and the call finishes with the work's status
// once the work has returned and every event is written. Cancellation by the client (or a
// broken stream) cancels the work's CallContext.
template <typename Base, typename Event>
class EventStreamReactor : public Base {
 public:
  using Emit = std::function<void(Event)>;

  void OnWriteDone(bool ok) override {
    bool start_next = false, finish = false, last = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.pop_front();
      if (!ok) {
        broken_ = true;
        queue_.clear();
      }
      start_next = !queue_.empty();
      writing_ = start_next;
      finish = !writing_ && work_done_;
      // The work has returned and this is its last event: the event and the status go out
      // in one batch.
      last = start_next && work_done_ && queue_.size() == 1;
    }
    if (!ok) ctx_.Cancel();
    if (last) {
      this->StartWriteAndFinish(&queue_.front(), grpc::WriteOptions(), final_status_);
    } else if (start_next) {
      StartNextWrite();
    }
    if (finish) this->Finish(final_status_);
  }

  void OnCancel() override { ctx_.Cancel(); }

  void OnDone() override { Unref(); }

 protected:
  // `max_duration`: the server's limit on the call (DeadlineOf).
  EventStreamReactor(grpc::CallbackServerContext* server_ctx, absl::Duration max_duration)
      : ctx_(DeadlineOf(*server_ctx, max_duration)) {}

  // Starts the call's work; call once, from the factory, after the reactor is set up.
  void StartWork(std::function<absl::Status(CallContext& ctx, const Emit& emit)> work) {
    ThreadCache::Default().Run([this, work = std::move(work)]() mutable {
      absl::Status status = work(ctx_, [this](Event e) { Push(std::move(e)); });
      work = nullptr;  // what the work captured is released before the call can end
      bool finish = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        final_status_ = ToGrpcStatus(status);
        work_done_ = true;
        finish = !writing_;
      }
      if (finish) this->Finish(final_status_);
      Unref();
    });
  }

 private:
  // The reactor is deleted once gRPC is done with it (OnDone) and the work's thread has
  // returned from its last use of it, whichever comes last.
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  void Push(Event e) {
    bool start = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_) return;
      queue_.push_back(std::move(e));  // deque: references to queued events stay valid
      start = !writing_;
      writing_ = true;
    }
    if (start) StartNextWrite();
  }

  // Writes queue_.front(). While more events wait behind it the write carries the buffer
  // hint: gRPC may hold it and send it with the next one, so a burst of events costs one
  // sendmsg instead of one each. The last queued event never carries it, so nothing waits;
  // nor does the call's first write (it carries the initial metadata): with gRPC 1.51 a hinted
  // first write was held back, and a stub answering that way ran at half its throughput.
  void StartNextWrite() {
    grpc::WriteOptions options;
    const Event* event;
    {
      std::lock_guard<std::mutex> lock(mu_);
      event = &queue_.front();
      if (queue_.size() > 1 && wrote_) options.set_buffer_hint();
      wrote_ = true;
    }
    this->StartWrite(event, options);
  }

  CallContext ctx_;
  std::atomic<int> refs_{2};  // gRPC's (OnDone) and the work's thread
  std::mutex mu_;
  std::deque<Event> queue_;  // front() is being written while writing_
  bool writing_ = false;
  bool wrote_ = false;  // a write has started
  bool broken_ = false;
  bool work_done_ = false;
  grpc::Status final_status_;
};

// A server-streaming call: `work` emits the events of one request.
template <typename Event>
class StreamingCall final : public EventStreamReactor<grpc::ServerWriteReactor<Event>, Event> {
 public:
  using Base = EventStreamReactor<grpc::ServerWriteReactor<Event>, Event>;
  using Emit = typename Base::Emit;
  using Work = std::function<absl::Status(CallContext& ctx, const Emit& emit)>;

  // Returns the reactor for a CallbackService method to return. The work's CallContext ends
  // at the client's deadline or `max_duration` from now, whichever comes first.
  static grpc::ServerWriteReactor<Event>* Start(
      grpc::CallbackServerContext* server_ctx, Work work,
      absl::Duration max_duration = absl::InfiniteDuration()) {
    auto* call = new StreamingCall(server_ctx, max_duration);
    call->StartWork(std::move(work));
    return call;
  }

 private:
  StreamingCall(grpc::CallbackServerContext* server_ctx, absl::Duration max_duration)
      : Base(server_ctx, max_duration) {}
};

// Unary counterpart: runs `work` off the gRPC thread and finishes with its status. The work's
// CallContext ends at the client's deadline or `max_duration` from now, whichever comes first.
template <typename Response>
grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* server_ctx, Response* response,
                                   std::function<absl::Status(CallContext&, Response*)> work,
                                   absl::Duration max_duration = absl::InfiniteDuration()) {
  grpc::ServerUnaryReactor* reactor = server_ctx->DefaultReactor();
  const absl::Time deadline = DeadlineOf(*server_ctx, max_duration);  // from the call's arrival
  ThreadCache::Default().Run([deadline, response, reactor, work = std::move(work)]() mutable {
    CallContext ctx(deadline);
    absl::Status status = work(ctx, response);
    work = nullptr;  // released before Finish lets the call end
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_STREAMING_CALL_H_
