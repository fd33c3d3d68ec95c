// Start-up check of the pipeline config against what the stage services say they serve
// (their Describe RPC): every stage's service runs the stage's kind and serves the model; an
// encoder's embeddings have the widths its denoise consumers take; the model's size
// granularity and step limit fit every stage. gRPC-free except DescribeStages.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_DESCRIBE_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_DESCRIBE_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config/pipeline_config.h"
#include "common/rpc/server.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

// Stage API descriptions by (service name, stage kind): a service key of
// PipelineConfig::services may host several stage APIs (the stub serves all three).
using StageDescriptions = std::map<std::pair<std::string, std::string>, v1::StageDescription>;

// FAILED_PRECONDITION naming the model, the stage, the service and the field that disagree;
// OK when everything fits. A (service, kind) missing from `descriptions` is not checked (a stage
// service that does not implement Describe yet).
absl::Status CheckStageDescriptions(const PipelineConfig& pipeline,
                                    const StageDescriptions& descriptions);

// Asks every (service, kind) that the pipeline's stage graphs use for its description, each
// call with `deadline` from now. A service answering UNIMPLEMENTED is left out and named in
// `*undescribed` ("service (kind)"); any other error is returned, naming the service.
absl::StatusOr<StageDescriptions> DescribeStages(const PipelineConfig& pipeline,
                                                 const ChannelOptions& channel,
                                                 absl::Duration deadline,
                                                 std::vector<std::string>* undescribed);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_DESCRIBE_H_
