// gRPC adapter of EncoderService over EncoderCore.
#ifndef DIFFMESH_SERVICES_ENCODER_ENCODER_SERVICE_H_
#define DIFFMESH_SERVICES_ENCODER_ENCODER_SERVICE_H_

#include "diffmesh/v1/stages.grpc.pb.h"
#include "services/encoder/encoder_core.h"

namespace diffmesh {

class EncoderService final : public v1::EncoderService::CallbackService {
 public:
  explicit EncoderService(EncoderCore* core) : core_(core) {}
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const v1::EncodeRequest* request,
                                   v1::EncodeResponse* response) override;

 private:
  EncoderCore* core_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ENCODER_ENCODER_SERVICE_H_
