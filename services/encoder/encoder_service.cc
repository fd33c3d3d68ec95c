#include "services/encoder/encoder_service.h"

#include "common/rpc/streaming_call.h"

namespace diffmesh {

grpc::ServerUnaryReactor* EncoderService::Encode(grpc::CallbackServerContext* ctx,
                                                 const v1::EncodeRequest* request,
                                                 v1::EncodeResponse* response) {
  return RunUnary<v1::EncodeResponse>(
      ctx, response, [this, request](CallContext& call, v1::EncodeResponse* out) -> absl::Status {
        metrics::StageCallTracker tracker(metrics_.get(), metrics::kStageEncoder);
        auto r = core_->Encode(call, *request);
        tracker.Finish(r.status());
        if (!r.ok()) return r.status();
        *out = std::move(*r);
        return absl::OkStatus();
      });
}

}  // namespace diffmesh
