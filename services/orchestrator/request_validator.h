// Request validation: every value of a GenerateRequest checked against the model's limits
// before any stage runs, and every default filled in from the model's config. gRPC-free.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_VALIDATOR_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_VALIDATOR_H_

#include "absl/status/statusor.h"
#include "common/config/pipeline_config.h"
#include "diffmesh/v1/generation.pb.h"

namespace diffmesh {

// Longest request_id accepted.
inline constexpr int kMaxRequestIdBytes = 128;
// Largest guidance weight accepted (|weight|): far beyond any useful value, small enough that
// the guided prediction stays finite.
inline constexpr float kMaxGuidanceScale = 100.0f;

// The request as it will run: the model's defaults under the request's values, the seed and
// request id drawn when left empty. INVALID_ARGUMENT names the field and the limit; NOT_FOUND
// names an unknown model.
absl::StatusOr<v1::GenerateRequest> ValidateRequest(const PipelineConfig& pipeline,
                                                    const v1::GenerateRequest& request);

// `request` without the bytes of its input media (what Accepted and the metadata report).
v1::GenerateRequest WithoutMediaBytes(const v1::GenerateRequest& request);

// The models of `pipeline` as ListModels reports them.
v1::ListModelsResponse DescribeModels(const PipelineConfig& pipeline);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_VALIDATOR_H_
