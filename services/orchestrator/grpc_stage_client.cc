#include "services/orchestrator/grpc_stage_client.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/rpc/server.h"
#include "common/status/grpc_status.h"
#include "diffmesh/v1/stages.grpc.pb.h"

namespace diffmesh {
namespace {

// Propagates the caller's deadline and cancellation into a gRPC client context.
void Bind(CallContext& ctx, grpc::ClientContext& client_ctx) {
  if (ctx.deadline() != absl::InfiniteFuture()) {
    client_ctx.set_deadline(absl::ToChronoTime(ctx.deadline()));
  }
}

// Keeps the code, names the stage and where it was called.
absl::Status StageError(const char* stage, const std::string& address, const grpc::Status& s) {
  absl::Status st = FromGrpcStatus(s);
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat("stage '", stage, "' (", address, "): ", st.message()));
}

class GrpcAr final : public ArStageClient {
 public:
  GrpcAr(std::shared_ptr<grpc::Channel> ch, std::string address)
      : stub_(v1::ArTokenService::NewStub(ch)), address_(std::move(address)) {}
  absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                        const std::function<void(const v1::ArTokenChunk&)>& on_chunk) override {
    grpc::ClientContext client_ctx;
    Bind(ctx, client_ctx);
    ScopedCancelHook hook(ctx, [&] { client_ctx.TryCancel(); });
    auto reader = stub_->Generate(&client_ctx, request);
    v1::ArTokenChunk chunk;
    while (reader->Read(&chunk)) on_chunk(chunk);
    return StageError("ar", address_, reader->Finish());
  }

 private:
  std::unique_ptr<v1::ArTokenService::Stub> stub_;
  std::string address_;
};

class GrpcEncoder final : public EncoderStageClient {
 public:
  GrpcEncoder(std::shared_ptr<grpc::Channel> ch, std::string address)
      : stub_(v1::EncoderService::NewStub(ch)), address_(std::move(address)) {}
  absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx,
                                            const v1::EncodeRequest& request) override {
    grpc::ClientContext client_ctx;
    Bind(ctx, client_ctx);
    ScopedCancelHook hook(ctx, [&] { client_ctx.TryCancel(); });
    v1::EncodeResponse response;
    absl::Status s = StageError("encoder", address_, stub_->Encode(&client_ctx, request, &response));
    if (!s.ok()) return s;
    return response;
  }

 private:
  std::unique_ptr<v1::EncoderService::Stub> stub_;
  std::string address_;
};

class GrpcDenoise final : public DenoiseStageClient {
 public:
  GrpcDenoise(std::shared_ptr<grpc::Channel> ch, std::string address)
      : stub_(v1::DenoiseService::NewStub(ch)), address_(std::move(address)) {}
  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    grpc::ClientContext client_ctx;
    Bind(ctx, client_ctx);
    ScopedCancelHook hook(ctx, [&] { client_ctx.TryCancel(); });
    auto reader = stub_->Denoise(&client_ctx, request);
    v1::DenoiseEvent event;
    while (reader->Read(&event)) on_event(event);
    return StageError("denoise", address_, reader->Finish());
  }

 private:
  std::unique_ptr<v1::DenoiseService::Stub> stub_;
  std::string address_;
};

}  // namespace

struct GrpcStageClientFactory::Service {
  GrpcAr ar;
  GrpcEncoder encoder;
  GrpcDenoise denoise;
};

GrpcStageClientFactory::GrpcStageClientFactory(std::map<std::string, std::string> services,
                                               ChannelOptions channel)
    : addresses_(std::move(services)), channel_(std::move(channel)) {}
GrpcStageClientFactory::~GrpcStageClientFactory() = default;

absl::StatusOr<GrpcStageClientFactory::Service*> GrpcStageClientFactory::Get(
    const std::string& service) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = services_.find(service);
  if (it != services_.end()) return it->second.get();
  auto addr = addresses_.find(service);
  if (addr == addresses_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("no address for service '", service, "'"));
  }
  auto ch = CreateChannel(addr->second, channel_);
  auto s = std::unique_ptr<Service>(new Service{GrpcAr(ch, addr->second),
                                                GrpcEncoder(ch, addr->second),
                                                GrpcDenoise(ch, addr->second)});
  Service* raw = s.get();
  services_.emplace(service, std::move(s));
  return raw;
}

absl::StatusOr<ArStageClient*> GrpcStageClientFactory::Ar(const std::string& service) {
  auto s = Get(service);
  if (!s.ok()) return s.status();
  return &(*s)->ar;
}
absl::StatusOr<EncoderStageClient*> GrpcStageClientFactory::Encoder(const std::string& service) {
  auto s = Get(service);
  if (!s.ok()) return s.status();
  return &(*s)->encoder;
}
absl::StatusOr<DenoiseStageClient*> GrpcStageClientFactory::Denoise(const std::string& service) {
  auto s = Get(service);
  if (!s.ok()) return s.status();
  return &(*s)->denoise;
}

}  // namespace diffmesh
