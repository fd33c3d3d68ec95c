// gRPC adapter of EncoderService over EncoderCore.
#ifndef DIFFMESH_SERVICES_ENCODER_ENCODER_SERVICE_H_
#define DIFFMESH_SERVICES_ENCODER_ENCODER_SERVICE_H_

#include <memory>

#include "absl/time/time.h"
#include "common/metrics/families.h"
#include "common/rpc/token_authenticator.h"
#include "diffmesh/v1/stages.grpc.pb.h"
#include "prometheus/registry.h"
#include "services/encoder/encoder_core.h"

namespace diffmesh {

class EncoderService final : public v1::EncoderService::CallbackService {
 public:
  // `registry`: where the call metrics go; null: none. Not owned; must outlive the service.
  explicit EncoderService(EncoderCore* core, prometheus::Registry* registry = nullptr)
      : core_(core),
        metrics_(registry ? std::make_unique<metrics::StageServiceFamilies>(*registry) : nullptr) {}
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const v1::EncodeRequest* request,
                                   v1::EncodeResponse* response) override;
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx,
                                     const v1::DescribeRequest* request,
                                     v1::StageDescription* response) override;
  // Calls must carry one of `auth`'s tokens (the stage token); null: no check. Not owned; set
  // before serving, must outlive the service.
  void set_authenticator(const TokenAuthenticator* auth) { auth_ = auth; }
  // The longest any one call may run, whatever deadline the client sent (none included): the
  // call's work ends with DEADLINE_EXCEEDED then. Set before serving.
  void set_max_request_time(absl::Duration d) { max_request_time_ = d; }
  // After each call, hand the GPU memory LibTorch's allocator keeps free back to the device
  // (ReleaseCachedGpuMemory).
  void set_release_gpu_cache(bool release) { release_gpu_cache_ = release; }

 private:
  EncoderCore* core_;
  std::unique_ptr<metrics::StageServiceFamilies> metrics_;
  const TokenAuthenticator* auth_ = nullptr;
  absl::Duration max_request_time_ = absl::InfiniteDuration();
  bool release_gpu_cache_ = false;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ENCODER_ENCODER_SERVICE_H_
