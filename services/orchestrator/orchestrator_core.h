// The orchestrator: validates a GenerateRequest against the pipeline config, runs its model's
// stage graph (PipelineRun), and emits progress, the outputs and the result. gRPC-free and
// LibTorch-free; tensors and media pass through as bytes.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "common/config/pipeline_config.h"
#include "diffmesh/v1/generation.pb.h"
#include "services/orchestrator/request_observer.h"
#include "services/orchestrator/request_validator.h"
#include "services/orchestrator/stage_client.h"

namespace diffmesh {

// INVALID_ARGUMENT naming the model and stage when a graph joins stages whose kinds do not fit
// (a consumer that cannot take its producer's output, or no stage making the outputs).
absl::Status CheckStageGraphs(const PipelineConfig& pipeline);

class OrchestratorCore {
 public:
  struct Options {
    // Models, limits, and each model's stage graph.
    PipelineConfig pipeline;
    // Stage transport (gRPC or in-process); not owned, must outlive the core.
    StageClientFactory* stages = nullptr;
    // Metrics; optional, not owned, must outlive the core.
    RequestObserver* observer = nullptr;
  };
  // Checks every stage graph (CheckStageGraphs).
  static absl::StatusOr<std::unique_ptr<OrchestratorCore>> Create(Options options);

  // Never called concurrently with itself for one request: the run serialises calls.
  using Emit = std::function<void(const v1::GenerateEvent&)>;

  // Runs one request to completion. Emits Accepted first and GenerateResult last on success.
  absl::Status Generate(CallContext& ctx, const v1::GenerateRequest& request, const Emit& emit);

  v1::ListModelsResponse ListModels() const { return DescribeModels(options_.pipeline); }

 private:
  explicit OrchestratorCore(Options options) : options_(std::move(options)) {}
  Options options_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_
