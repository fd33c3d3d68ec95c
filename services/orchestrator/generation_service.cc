#include "services/orchestrator/generation_service.h"

#include "common/rpc/streaming_call.h"

namespace diffmesh {

grpc::ServerWriteReactor<v1::GenerateEvent>* GenerationService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) {
  return StreamingCall<v1::GenerateEvent>::Start(
      ctx, [this, request](CallContext& call, const StreamingCall<v1::GenerateEvent>::Emit& emit) {
        return core_->Generate(call, *request, [&emit](const v1::GenerateEvent& e) { emit(e); });
      });
}

grpc::ServerUnaryReactor* GenerationService::ListModels(grpc::CallbackServerContext* ctx,
                                                        const v1::ListModelsRequest*,
                                                        v1::ListModelsResponse* response) {
  *response = core_->ListModels();
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace diffmesh
