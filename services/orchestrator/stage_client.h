// How the orchestrator calls a stage. Two transports implement it: gRPC (grpc_stage_client.h)
// and in-process calls into the stage cores (services/embedded), so `diffmesh generate` and the
// mesh share one orchestrator code path.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_CLIENT_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

class ArStageClient {
 public:
  virtual ~ArStageClient() = default;
  // Calls `on_chunk` for each token chunk in order; returns the stage's final status.
  virtual absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                                const std::function<void(const v1::ArTokenChunk&)>& on_chunk) = 0;
};

class EncoderStageClient {
 public:
  virtual ~EncoderStageClient() = default;
  virtual absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx,
                                                    const v1::EncodeRequest& request) = 0;
};

class DenoiseStageClient {
 public:
  virtual ~DenoiseStageClient() = default;
  // Calls `on_event` for each step event and the result, in order.
  virtual absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                               const std::function<void(const v1::DenoiseEvent&)>& on_event) = 0;
};

// Hands out the client for a stage by the service name the pipeline config gives it.
class StageClientFactory {
 public:
  virtual ~StageClientFactory() = default;
  virtual absl::StatusOr<ArStageClient*> Ar(const std::string& service) = 0;
  virtual absl::StatusOr<EncoderStageClient*> Encoder(const std::string& service) = 0;
  virtual absl::StatusOr<DenoiseStageClient*> Denoise(const std::string& service) = 0;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_CLIENT_H_
