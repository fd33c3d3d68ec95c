#include "services/embedded/embedded_stages.h"

#include "common/status/status_macros.h"

namespace diffmesh {

class EmbeddedStages::Clients final : public ArStageClient,
                                      public EncoderStageClient,
                                      public DenoiseStageClient {
 public:
  explicit Clients(EmbeddedStages* stages) : stages_(stages) {}
  absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                        const std::function<void(const v1::ArTokenChunk&)>& on_chunk) override {
    return stages_->ar_->Generate(ctx, request, on_chunk);
  }
  absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx,
                                            const v1::EncodeRequest& request) override {
    return stages_->encoder_->Encode(ctx, request);
  }
  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    return stages_->denoise_->Denoise(ctx, request, on_event);
  }

 private:
  EmbeddedStages* stages_;
};

absl::StatusOr<std::unique_ptr<EmbeddedStages>> EmbeddedStages::Create(const std::string& model) {
  auto s = std::unique_ptr<EmbeddedStages>(new EmbeddedStages());
  ArCore::Options ar;
  ar.model = model;
  ar.max_batch = 1;
  ASSIGN_OR_RETURN(s->ar_, ArCore::Create(ar));
  EncoderCore::Options enc;
  enc.model = model;
  ASSIGN_OR_RETURN(s->encoder_, EncoderCore::Create(enc));
  DenoiseCore::Options den;
  den.model = model;
  ASSIGN_OR_RETURN(s->denoise_, DenoiseCore::Create(den));
  s->clients_ = std::make_unique<Clients>(s.get());
  return s;
}

EmbeddedStages::~EmbeddedStages() = default;

absl::StatusOr<ArStageClient*> EmbeddedStages::Ar(const std::string&) { return clients_.get(); }
absl::StatusOr<EncoderStageClient*> EmbeddedStages::Encoder(const std::string&) {
  return clients_.get();
}
absl::StatusOr<DenoiseStageClient*> EmbeddedStages::Denoise(const std::string&) {
  return clients_.get();
}

}  // namespace diffmesh
