// gRPC adapter of the public GenerationService over OrchestratorCore.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_GENERATION_SERVICE_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_GENERATION_SERVICE_H_

#include "diffmesh/v1/generation.grpc.pb.h"
#include "services/orchestrator/orchestrator_core.h"

namespace diffmesh {

class GenerationService final : public v1::GenerationService::CallbackService {
 public:
  explicit GenerationService(OrchestratorCore* core) : core_(core) {}

  grpc::ServerWriteReactor<v1::GenerateEvent>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

 private:
  OrchestratorCore* core_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_GENERATION_SERVICE_H_
