// Bidirectional-streaming calls on gRPC's callback API, for stages whose inputs arrive while
// they run (DenoiseService.DenoiseStream): this reactor reads the client's messages into an
// InputQueue (closed OK at the client's WritesDone, CANCELLED if the call breaks) while the
// work takes them from it; the events the work emits are written as EventStreamReactor
// writes them (streaming_call.h).
#ifndef DIFFMESH_COMMON_RPC_BIDI_STREAMING_CALL_H_
#define DIFFMESH_COMMON_RPC_BIDI_STREAMING_CALL_H_

#include <grpcpp/grpcpp.h>

#include <functional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/call/call_context.h"
#include "common/call/input_queue.h"
#include "common/rpc/streaming_call.h"

namespace diffmesh {

template <typename In, typename Event>
class BidiStreamingCall final
    : public EventStreamReactor<grpc::ServerBidiReactor<In, Event>, Event> {
 public:
  using Base = EventStreamReactor<grpc::ServerBidiReactor<In, Event>, Event>;
  using Emit = typename Base::Emit;
  using Work = std::function<absl::Status(CallContext& ctx, InputQueue<In>& inputs, const Emit& emit)>;

  // Returns the reactor for a CallbackService method to return. The work's CallContext ends
  // at the client's deadline or `max_duration` from now, whichever comes first.
  static grpc::ServerBidiReactor<In, Event>* Start(
      grpc::CallbackServerContext* server_ctx, Work work,
      absl::Duration max_duration = absl::InfiniteDuration()) {
    auto* call = new BidiStreamingCall(server_ctx, max_duration);
    call->StartRead(&call->in_);
    call->StartWork([call, work = std::move(work)](CallContext& ctx, const Emit& emit) {
      return work(ctx, call->inputs_, emit);
    });
    return call;
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

  void OnCancel() override {
    inputs_.Close(absl::CancelledError("the call was cancelled"));
    Base::OnCancel();
  }

 private:
  BidiStreamingCall(grpc::CallbackServerContext* server_ctx, absl::Duration max_duration)
      : Base(server_ctx, max_duration) {}

  In in_;  // the read in flight
  InputQueue<In> inputs_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_BIDI_STREAMING_CALL_H_
