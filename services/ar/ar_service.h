// gRPC adapter of ArTokenService over ArCore.
#ifndef DIFFMESH_SERVICES_AR_AR_SERVICE_H_
#define DIFFMESH_SERVICES_AR_AR_SERVICE_H_

#include <memory>

#include "absl/time/time.h"
#include "common/rpc/token_authenticator.h"
#include "diffmesh/v1/stages.grpc.pb.h"
#include "prometheus/registry.h"
#include "services/ar/ar_core.h"

namespace diffmesh {

class ArTokenService final : public v1::ArTokenService::CallbackService {
 public:
  // `registry`: where the call and token-stream metrics go (common/metrics/families.h); null:
  // none. Not owned; must outlive the service.
  explicit ArTokenService(ArCore* core, prometheus::Registry* registry = nullptr);
  ~ArTokenService() override;
  // Calls must carry one of `auth`'s tokens (the stage token); null: no check. Not owned; set
  // before serving, must outlive the service.
  void set_authenticator(const TokenAuthenticator* auth) { auth_ = auth; }
  // The longest any one call may run, whatever deadline the client sent (none included): the
  // call's work ends with DEADLINE_EXCEEDED then. Set before serving.
  void set_max_request_time(absl::Duration d) { max_request_time_ = d; }

  grpc::ServerWriteReactor<v1::ArTokenChunk>* Generate(grpc::CallbackServerContext* ctx,
                                                       const v1::ArRequest* request) override;
  // Kinds ["ar"] and the model the core serves (no size facts yet: the core does not expose
  // them), for the orchestrator's start-up check.
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx,
                                     const v1::DescribeRequest* request,
                                     v1::StageDescription* response) override;

 private:
  struct Metrics;
  ArCore* core_;
  std::unique_ptr<Metrics> metrics_;
  const TokenAuthenticator* auth_ = nullptr;
  absl::Duration max_request_time_ = absl::InfiniteDuration();
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_AR_AR_SERVICE_H_
