#include "services/ar/ar_service.h"

#include "common/rpc/streaming_call.h"

namespace diffmesh {

grpc::ServerWriteReactor<v1::ArTokenChunk>* ArTokenService::Generate(
    grpc::CallbackServerContext* ctx, const v1::ArRequest* request) {
  return StreamingCall<v1::ArTokenChunk>::Start(
      ctx, [this, request](CallContext& call, const StreamingCall<v1::ArTokenChunk>::Emit& emit) {
        return core_->Generate(call, *request, [&emit](const v1::ArTokenChunk& c) { emit(c); });
      });
}

}  // namespace diffmesh
