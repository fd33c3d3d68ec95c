// gRPC adapter of the public GenerationService over OrchestratorCore.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_GENERATION_SERVICE_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_GENERATION_SERVICE_H_

#include "diffmesh/v1/generation.grpc.pb.h"
#include "services/orchestrator/orchestrator_core.h"
#include "common/rpc/token_authenticator.h"

namespace diffmesh {

class GenerationService final : public v1::GenerationService::CallbackService {
 public:
  // `auth` (optional, not owned): every call must carry one of its tokens; without it the
  // service is open.
  explicit GenerationService(OrchestratorCore* core, const TokenAuthenticator* auth = nullptr)
      : core_(core), auth_(auth) {}

  grpc::ServerWriteReactor<v1::GenerateEvent>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

 private:
  // OK when there is no authenticator or the call's bearer token is one of its tokens.
  absl::Status Authenticate(const grpc::CallbackServerContext& ctx) const;

  OrchestratorCore* core_;
  const TokenAuthenticator* auth_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_GENERATION_SERVICE_H_
