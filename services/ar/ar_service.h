// gRPC adapter of ArTokenService over ArCore.
#ifndef DIFFMESH_SERVICES_AR_AR_SERVICE_H_
#define DIFFMESH_SERVICES_AR_AR_SERVICE_H_

#include "diffmesh/v1/stages.grpc.pb.h"
#include "services/ar/ar_core.h"

namespace diffmesh {

class ArTokenService final : public v1::ArTokenService::CallbackService {
 public:
  explicit ArTokenService(ArCore* core) : core_(core) {}
  grpc::ServerWriteReactor<v1::ArTokenChunk>* Generate(grpc::CallbackServerContext* ctx,
                                                       const v1::ArRequest* request) override;

 private:
  ArCore* core_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_AR_AR_SERVICE_H_
