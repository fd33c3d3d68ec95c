// The stage kinds the orchestrator runs ("ar", "encoder", "denoise", "upsample", "decode"): how
// each builds its stage request from the accepted request and its producers' outputs, and what it
// reports.
// Adding a stage kind means a node class here and its stage client; no model is named.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_NODES_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_NODES_H_

#include <memory>

#include "absl/status/statusor.h"
#include "services/orchestrator/pipeline_run.h"

namespace diffmesh {

// The node for `spec.kind`; UNAVAILABLE / INVALID_ARGUMENT when its stage client is missing.
absl::StatusOr<std::unique_ptr<StageNode>> MakeStageNode(PipelineRun& run, const StageSpec& spec);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_NODES_H_
