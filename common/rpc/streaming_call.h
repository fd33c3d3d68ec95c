// Server-streaming calls on gRPC's callback API: the stage work runs on its own thread and
// emits events; this reactor writes them in order, one write in flight, the next from
// OnWriteDone, and finishes once the work has returned and every event is written.
// Cancellation by the client (or a broken stream) cancels the work's CallContext.
#ifndef DIFFMESH_COMMON_RPC_STREAMING_CALL_H_
#define DIFFMESH_COMMON_RPC_STREAMING_CALL_H_

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/call/call_context.h"
#include "common/status/grpc_status.h"

namespace diffmesh {

inline absl::Time DeadlineOf(const grpc::ServerContextBase& server_ctx) {
  auto d = server_ctx.deadline();
  if (d >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(d);
}

template <typename Event>
class StreamingCall final : public grpc::ServerWriteReactor<Event> {
 public:
  using Emit = std::function<void(Event)>;
  using Work = std::function<absl::Status(CallContext& ctx, const Emit& emit)>;

  // Returns the reactor for a CallbackService method to return.
  static grpc::ServerWriteReactor<Event>* Start(grpc::CallbackServerContext* server_ctx,
                                                Work work) {
    return new StreamingCall(server_ctx, std::move(work));
  }

  void OnWriteDone(bool ok) override {
    bool start_next = false, finish = false;
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
    }
    if (!ok) ctx_.Cancel();
    if (start_next) this->StartWrite(&queue_.front());
    if (finish) this->Finish(final_status_);
  }

  void OnCancel() override { ctx_.Cancel(); }

  void OnDone() override {
    if (worker_.joinable()) worker_.join();
    delete this;
  }

 private:
  StreamingCall(grpc::CallbackServerContext* server_ctx, Work work)
      : ctx_(DeadlineOf(*server_ctx)) {
    worker_ = std::thread([this, work = std::move(work)] {
      absl::Status status = work(ctx_, [this](Event e) { Push(std::move(e)); });
      bool finish = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        final_status_ = ToGrpcStatus(status);
        work_done_ = true;
        finish = !writing_;
      }
      if (finish) this->Finish(final_status_);
    });
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
    if (start) this->StartWrite(&queue_.front());
  }

  CallContext ctx_;
  std::mutex mu_;
  std::deque<Event> queue_;      // front() is being written while writing_
  bool writing_ = false;
  bool broken_ = false;
  bool work_done_ = false;
  grpc::Status final_status_;
  std::thread worker_;
};

// Unary counterpart: runs `work` off the gRPC thread and finishes with its status.
template <typename Response>
grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* server_ctx, Response* response,
                                   std::function<absl::Status(CallContext&, Response*)> work) {
  grpc::ServerUnaryReactor* reactor = server_ctx->DefaultReactor();
  std::thread([server_ctx, response, reactor, work = std::move(work)] {
    CallContext ctx(DeadlineOf(*server_ctx));
    reactor->Finish(ToGrpcStatus(work(ctx, response)));
  }).detach();
  return reactor;
}

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_STREAMING_CALL_H_
