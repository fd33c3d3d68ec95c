// Bidirectional-streaming calls on gRPC's callback API, for stages whose inputs arrive while
// they run (DenoiseService.DenoiseStream): this reactor reads the client's messages into an
// InputQueue (closed OK at the client's WritesDone, CANCELLED if the call breaks), the stage
// work runs on its own thread taking them from the queue and emitting events, and the events
// are written in order, one write in flight, the next from OnWriteDone. The call finishes once
// the work has returned and every event is written.
#ifndef DIFFMESH_COMMON_RPC_BIDI_STREAMING_CALL_H_
#define DIFFMESH_COMMON_RPC_BIDI_STREAMING_CALL_H_

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "common/call/call_context.h"
#include "common/call/input_queue.h"
#include "common/rpc/streaming_call.h"
#include "common/status/grpc_status.h"

namespace diffmesh {

template <typename In, typename Event>
class BidiStreamingCall final : public grpc::ServerBidiReactor<In, Event> {
 public:
  using Emit = std::function<void(Event)>;
  using Work = std::function<absl::Status(CallContext& ctx, InputQueue<In>& inputs, const Emit& emit)>;

  // Returns the reactor for a CallbackService method to return.
  static grpc::ServerBidiReactor<In, Event>* Start(grpc::CallbackServerContext* server_ctx,
                                                   Work work) {
    return new BidiStreamingCall(server_ctx, std::move(work));
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client's WritesDone, or a broken call (then OnCancel follows)
      inputs_.Close();
      return;
    }
    inputs_.Push(std::move(in_));
    in_ = In();
    this->StartRead(&in_);
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

  void OnCancel() override {
    inputs_.Close(absl::CancelledError("the call was cancelled"));
    ctx_.Cancel();
  }

  void OnDone() override {
    if (worker_.joinable()) worker_.join();
    delete this;
  }

 private:
  BidiStreamingCall(grpc::CallbackServerContext* server_ctx, Work work)
      : ctx_(DeadlineOf(*server_ctx)) {
    this->StartRead(&in_);
    worker_ = std::thread([this, work = std::move(work)] {
      absl::Status status = work(ctx_, inputs_, [this](Event e) { Push(std::move(e)); });
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
  In in_;  // the read in flight
  InputQueue<In> inputs_;
  std::mutex mu_;
  std::deque<Event> queue_;  // front() is being written while writing_
  bool writing_ = false;
  bool broken_ = false;
  bool work_done_ = false;
  grpc::Status final_status_;
  std::thread worker_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_BIDI_STREAMING_CALL_H_
