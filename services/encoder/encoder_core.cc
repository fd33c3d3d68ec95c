#include "services/encoder/encoder_core.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/glm_image/glm_image_spec.h"
#include "models/glm_image/t5_encoder.h"
#include "services/encoder/ltx2_encoder.h"
#include "services/stage_common/torch_errors.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {

class EncoderCore::Impl {
 public:
  Impl(Options options, std::string model_name,
       std::unique_ptr<models::glm_image::T5Encoder> encoder)
      : options_(std::move(options)), model_name_(std::move(model_name)), encoder_(std::move(encoder)) {}
  Impl(Options options, std::unique_ptr<Ltx2PromptEncoder> ltx2)
      : options_(std::move(options)), model_name_(ltx2->model_name()), ltx2_(std::move(ltx2)) {}

  v1::StageDescription Describe() const {
    v1::StageDescription d;
    d.add_kinds("encoder");
    v1::ServedModel* m = d.add_models();
    m->set_name(model_name_);
    m->set_family(ltx2_ != nullptr ? "ltx2" : "glm_image");
    const int64_t width =
        ltx2_ != nullptr ? ltx2_->embedding_width() : encoder_->config().d_model;
    for (const char* field : {"prompt_embeds", "negative_prompt_embeds"}) {
      (*m->mutable_embedding_widths())[field] = static_cast<int32_t>(width);
    }
    return d;
  }

  absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx, const v1::EncodeRequest& request) {
    if (request.model() != model_name_) {
      return absl::NotFoundError(absl::StrCat("model: this encoder serves '", model_name_,
                                              "', not '", request.model(), "'"));
    }
    RETURN_IF_ERROR(ctx.Check("encoder"));
    v1::EncodeResponse out;
    std::lock_guard<std::mutex> lock(mu_);  // one encode at a time keeps the cores busy, not thrashing
    if (ltx2_ != nullptr) return ltx2_->Encode(ctx, request);
    at::Tensor prompt = encoder_->EncodeGlyphs({request.prompt()}, options_.max_sequence_length);
    RETURN_IF_ERROR(ctx.Check("encoder"));
    at::Tensor negative = encoder_->EncodeGlyphs({request.negative_prompt()}, options_.max_sequence_length);
    ASSIGN_OR_RETURN(*out.mutable_prompt_embeds(), ToWire(prompt.to(at::kFloat)));
    ASSIGN_OR_RETURN(*out.mutable_negative_prompt_embeds(), ToWire(negative.to(at::kFloat)));
    return out;
  }

 private:
  const Options options_;
  const std::string model_name_;
  // One of the two: GLM-Image's glyph encoder or LTX-2's text encoder and connectors.
  std::unique_ptr<models::glm_image::T5Encoder> encoder_;
  std::unique_ptr<Ltx2PromptEncoder> ltx2_;
  std::mutex mu_;
};

absl::StatusOr<std::unique_ptr<EncoderCore>> EncoderCore::Create(const Options& options) {
  if (IsLtx2EncoderModel(options.model, options.model_dir)) {
    ASSIGN_OR_RETURN(auto ltx2, Ltx2PromptEncoder::Create(options.model, options.model_dir, options.cuda));
    return std::unique_ptr<EncoderCore>(
        new EncoderCore(std::make_unique<Impl>(options, std::move(ltx2))));
  }
  ASSIGN_OR_RETURN(auto spec, models::glm_image::ResolveSpec(options.model, options.model_dir));
  ASSIGN_OR_RETURN(auto encoder, models::glm_image::BuildTextEncoder(spec));
  return std::unique_ptr<EncoderCore>(
      new EncoderCore(std::make_unique<Impl>(options, spec.name, std::move(encoder))));
}

EncoderCore::EncoderCore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EncoderCore::~EncoderCore() = default;

v1::StageDescription EncoderCore::Describe() const { return impl_->Describe(); }

absl::StatusOr<v1::EncodeResponse> EncoderCore::Encode(CallContext& ctx,
                                                       const v1::EncodeRequest& request) {
  // The exception boundary: a LibTorch exception ends the request, not the process.
  return CatchTorchErrors("encoder", [&] { return impl_->Encode(ctx, request); });
}

}  // namespace diffmesh
