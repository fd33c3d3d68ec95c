// gRPC adapter of DenoiseService over DenoiseCore (rank 0 of the denoise group).
#ifndef DIFFMESH_SERVICES_DENOISE_DENOISE_SERVICE_H_
#define DIFFMESH_SERVICES_DENOISE_DENOISE_SERVICE_H_

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/rpc/token_authenticator.h"
#include "diffmesh/v1/stages.grpc.pb.h"
#include "prometheus/registry.h"
#include "services/denoise/denoise_core.h"

namespace diffmesh {

class DenoiseService final : public v1::DenoiseService::CallbackService {
 public:
  // `registry`: where the call and step metrics of `model` (the model the core serves) go;
  // null: none. Not owned; must outlive the service. Only rank 0 serves, so only rank 0
  // reports request metrics.
  explicit DenoiseService(DenoiseCore* core, prometheus::Registry* registry = nullptr,
                          const std::string& model = "");
  ~DenoiseService() override;
  // Calls must carry one of `auth`'s tokens (the stage token); null: no check. Not owned; set
  // before serving, must outlive the service.
  void set_authenticator(const TokenAuthenticator* auth) { auth_ = auth; }
  // The longest any one call may run, whatever deadline the client sent (none included): the
  // call's work ends with DEADLINE_EXCEEDED then. Set before serving.
  void set_max_request_time(absl::Duration d) { max_request_time_ = d; }
  // After each call, hand the GPU memory LibTorch's allocator keeps free back to the device
  // (ReleaseCachedGpuMemory).
  void set_release_gpu_cache(bool release) { release_gpu_cache_ = release; }

  grpc::ServerWriteReactor<v1::DenoiseEvent>* Denoise(grpc::CallbackServerContext* ctx,
                                                      const v1::DenoiseRequest* request) override;
  grpc::ServerBidiReactor<v1::DenoiseInput, v1::DenoiseEvent>* DenoiseStream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx,
                                     const v1::DescribeRequest* request,
                                     v1::StageDescription* response) override;

 private:
  struct Metrics;
  // Runs `run` (a core call) with the call and step metrics around it.
  absl::Status Measured(
      const std::function<absl::Status(const std::function<void(const v1::DenoiseEvent&)>&)>& run,
      const std::function<void(v1::DenoiseEvent)>& emit);
  DenoiseCore* core_;
  std::unique_ptr<Metrics> metrics_;
  const TokenAuthenticator* auth_ = nullptr;
  absl::Duration max_request_time_ = absl::InfiniteDuration();
  bool release_gpu_cache_ = false;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_DENOISE_SERVICE_H_
