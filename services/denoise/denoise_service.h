// gRPC adapter of DenoiseService over DenoiseCore (rank 0 of the denoise group).
#ifndef DIFFMESH_SERVICES_DENOISE_DENOISE_SERVICE_H_
#define DIFFMESH_SERVICES_DENOISE_DENOISE_SERVICE_H_

#include "diffmesh/v1/stages.grpc.pb.h"
#include "services/denoise/denoise_core.h"

namespace diffmesh {

class DenoiseService final : public v1::DenoiseService::CallbackService {
 public:
  explicit DenoiseService(DenoiseCore* core) : core_(core) {}
  grpc::ServerWriteReactor<v1::DenoiseEvent>* Denoise(grpc::CallbackServerContext* ctx,
                                                      const v1::DenoiseRequest* request) override;

 private:
  DenoiseCore* core_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_DENOISE_SERVICE_H_
