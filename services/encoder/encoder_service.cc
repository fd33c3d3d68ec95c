#include "services/encoder/encoder_service.h"

#include "common/rpc/stage_token.h"
#include "common/rpc/streaming_call.h"
#include "common/status/grpc_status.h"
#include "services/stage_common/gpu_memory.h"

namespace diffmesh {

grpc::ServerUnaryReactor* EncoderService::Encode(grpc::CallbackServerContext* ctx,
                                                 const v1::EncodeRequest* request,
                                                 v1::EncodeResponse* response) {
  // Before any work: only the orchestrator (the stage token's holder) is served.
  if (absl::Status auth = CheckCallToken(auth_, *ctx); !auth.ok()) {
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(ToGrpcStatus(auth));
    return reactor;
  }
  return RunUnary<v1::EncodeResponse>(
      ctx, response, [this, request](CallContext& call, v1::EncodeResponse* out) -> absl::Status {
        metrics::StageCallTracker tracker(metrics_.get(), metrics::kStageEncoder);
        auto r = core_->Encode(call, *request);
        tracker.Finish(r.status());
        if (release_gpu_cache_) ReleaseCachedGpuMemory();
        if (!r.ok()) return r.status();
        *out = std::move(*r);
        return absl::OkStatus();
      },
      max_request_time_);
}

grpc::ServerUnaryReactor* EncoderService::Describe(grpc::CallbackServerContext* ctx,
                                                   const v1::DescribeRequest*,
                                                   v1::StageDescription* response) {
  return AnswerAtOnce(auth_, ctx, [&] { *response = core_->Describe(); });
}

}  // namespace diffmesh
