#include "services/denoise/denoise_service.h"

#include "common/rpc/streaming_call.h"

namespace diffmesh {

grpc::ServerWriteReactor<v1::DenoiseEvent>* DenoiseService::Denoise(
    grpc::CallbackServerContext* ctx, const v1::DenoiseRequest* request) {
  return StreamingCall<v1::DenoiseEvent>::Start(
      ctx, [this, request](CallContext& call, const StreamingCall<v1::DenoiseEvent>::Emit& emit) {
        return core_->Denoise(call, *request, [&emit](const v1::DenoiseEvent& e) { emit(e); });
      });
}

}  // namespace diffmesh
