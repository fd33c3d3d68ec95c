#include "services/orchestrator/generation_service.h"

#include <utility>
#include <vector>

#include "common/rpc/streaming_call.h"
#include "common/status/grpc_status.h"

namespace diffmesh {
namespace {

// Ends a Generate stream with `status` before anything is written.
class RejectedStream final : public grpc::ServerWriteReactor<v1::GenerateEvent> {
 public:
  explicit RejectedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

absl::Status GenerationService::Authenticate(const grpc::CallbackServerContext& ctx) const {
  if (auth_ == nullptr) return absl::OkStatus();
  std::vector<absl::string_view> values;
  auto [begin, end] = ctx.client_metadata().equal_range("authorization");
  for (auto it = begin; it != end; ++it) values.emplace_back(it->second.data(), it->second.size());
  return auth_->Check(values);
}

grpc::ServerWriteReactor<v1::GenerateEvent>* GenerationService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) {
  // Before anything else: an unauthenticated call starts no work and reaches no metric.
  if (absl::Status auth = Authenticate(*ctx); !auth.ok()) {
    return new RejectedStream(ToGrpcStatus(auth));
  }
  return StreamingCall<v1::GenerateEvent>::Start(
      ctx, [this, request](CallContext& call, const StreamingCall<v1::GenerateEvent>::Emit& emit) {
        return core_->Generate(call, *request,
                               [&emit](v1::GenerateEvent&& e) { emit(std::move(e)); });
      });
}

grpc::ServerUnaryReactor* GenerationService::ListModels(grpc::CallbackServerContext* ctx,
                                                        const v1::ListModelsRequest*,
                                                        v1::ListModelsResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  if (absl::Status auth = Authenticate(*ctx); !auth.ok()) {
    reactor->Finish(ToGrpcStatus(auth));
    return reactor;
  }
  *response = core_->ListModels();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace diffmesh
