// The orchestrator: validates a GenerateRequest against the pipeline config, runs its model's
// stage graph (PipelineRun), and emits progress, the outputs and the result. gRPC-free and
// LibTorch-free; tensors and media pass through as bytes.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

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

// Requests of one model that may be running or waiting at once unless Options say otherwise:
// enough to keep a denoise group busy through bursts, few enough that a client that is turned
// away learns it in milliseconds rather than after minutes in a queue.
inline constexpr int kDefaultMaxQueuedRequests = 32;

class OrchestratorCore {
 public:
  struct Options {
    // Models, limits, and each model's stage graph.
    PipelineConfig pipeline;
    // Stage transport (gRPC or in-process); not owned, must outlive the core.
    StageClientFactory* stages = nullptr;
    // Metrics; optional, not owned, must outlive the core.
    RequestObserver* observer = nullptr;
    // Admission control: at most this many requests per model in flight or waiting (for a
    // stage, e.g. the denoise group's turn); one more is answered RESOURCE_EXHAUSTED at once,
    // with a retry hint. <= 0: no bound.
    int max_queued_requests = kDefaultMaxQueuedRequests;
  };
  // Checks every stage graph (CheckStageGraphs).
  static absl::StatusOr<std::unique_ptr<OrchestratorCore>> Create(Options options);

  // Never called concurrently with itself for one request: the run serialises calls. Takes
  // the event by rvalue so that it reaches the transport without a copy (a function taking
  // `const v1::GenerateEvent&` fits too).
  using Emit = std::function<void(v1::GenerateEvent&&)>;

  // Runs one request to completion. Emits Accepted first and GenerateResult last on success.
  absl::Status Generate(CallContext& ctx, const v1::GenerateRequest& request, const Emit& emit);

  v1::ListModelsResponse ListModels() const { return DescribeModels(options_.pipeline); }

 private:
  explicit OrchestratorCore(Options options) : options_(std::move(options)) {}
  // Takes one of `model`'s admission slots; RESOURCE_EXHAUSTED when none is left.
  absl::Status Admit(const std::string& model);
  void Release(const std::string& model);

  Options options_;
  std::mutex admission_mu_;
  std::map<std::string, int> admitted_;  // model → requests holding a slot
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_ORCHESTRATOR_CORE_H_
