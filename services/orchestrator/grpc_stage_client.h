// Stage clients over gRPC, one channel per stage service address.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_GRPC_STAGE_CLIENT_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_GRPC_STAGE_CLIENT_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/rpc/server.h"
#include "services/orchestrator/stage_client.h"

namespace diffmesh {

// The stage channels' reconnect backoff unless ChannelOptions sets one.
inline constexpr int kStageInitialReconnectBackoffMs = 250;
inline constexpr int kStageMaxReconnectBackoffMs = 2000;

class GrpcStageClientFactory final : public StageClientFactory {
 public:
  // `services`: service name → "host:port", from the pipeline config. `channel` sets every
  // stage channel's TLS (the orchestrator's --stage-tls-* flags) and limits.
  explicit GrpcStageClientFactory(std::map<std::string, std::string> services,
                                  ChannelOptions channel = {});
  ~GrpcStageClientFactory() override;

  absl::StatusOr<ArStageClient*> Ar(const std::string& service) override;
  absl::StatusOr<EncoderStageClient*> Encoder(const std::string& service) override;
  absl::StatusOr<DenoiseStageClient*> Denoise(const std::string& service) override;

 private:
  struct Service;
  absl::StatusOr<Service*> Get(const std::string& service);
  std::map<std::string, std::string> addresses_;
  const ChannelOptions channel_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Service>> services_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_GRPC_STAGE_CLIENT_H_
