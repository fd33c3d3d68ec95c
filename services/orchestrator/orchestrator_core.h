// The orchestrator: validates a GenerateRequest against the pipeline config, runs its stages
// in order (the encoder beside the AR stage), and emits progress and the result. gRPC-free and
// LibTorch-free; tensors pass through as bytes.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "common/config/pipeline_config.h"
#include "diffmesh/v1/generation.pb.h"
#include "services/orchestrator/request_observer.h"
#include "services/orchestrator/stage_client.h"

namespace diffmesh {

// Fills defaults and checks limits; INVALID_ARGUMENT / NOT_FOUND name the field. The seed and
// request id are drawn when the request leaves them empty.
absl::StatusOr<v1::Accepted> ValidateRequest(const PipelineConfig& pipeline,
                                             const v1::GenerateRequest& request);

// The models of `pipeline` as ListModels reports them.
v1::ListModelsResponse DescribeModels(const PipelineConfig& pipeline);

class OrchestratorCore {
 public:
  struct Options {
    // Models, limits, and the service each stage runs on.
    PipelineConfig pipeline;
    // Stage transport (gRPC or in-process); not owned, must outlive the core.
    StageClientFactory* stages = nullptr;
    // Metrics; optional, not owned, must outlive the core.
    RequestObserver* observer = nullptr;
  };
  static absl::StatusOr<std::unique_ptr<OrchestratorCore>> Create(Options options);

  // Called from several threads at once (AR progress and encoder run concurrently), but
  // never concurrently with itself: the core serialises calls.
  using Emit = std::function<void(const v1::GenerateEvent&)>;

  // Runs one request to completion. Emits Accepted first and GenerateResult last on success.
  absl::Status Generate(CallContext& ctx, const v1::GenerateRequest& request, const Emit& emit);

  v1::ListModelsResponse ListModels() const { return DescribeModels(options_.pipeline); }

 private:
  class Trace;
  explicit OrchestratorCore(Options options) : options_(std::move(options)) {}
  absl::Status Run(CallContext& ctx, const v1::GenerateRequest& request, const Emit& emit,
                   Trace& trace);
  Options options_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_
