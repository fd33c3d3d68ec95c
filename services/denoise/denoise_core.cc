#include "services/denoise/denoise_core.h"

#include <ATen/ATen.h>

#include <cmath>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/image/png.h"
#include "common/status/status_macros.h"
#include "models/glm_image/glm_image_spec.h"
#include "services/denoise/cfg_policy.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {

using models::glm_image::AutoencoderKl;
using models::glm_image::GlmImageDit;
using models::glm_image::GlmImageSpec;

namespace {

// Pixels per latent (VAE) × latents per patch (DiT) × patches per AR grid cell.
constexpr int kVaeScale = 8;
constexpr int kPixelGranularity = 32;

}  // namespace

class DenoiseCore::Impl {
 public:
  Impl(Options options, GlmImageSpec spec, std::unique_ptr<GlmImageDit> dit,
       std::unique_ptr<AutoencoderKl> vae)
      : options_(std::move(options)), spec_(std::move(spec)), dit_(std::move(dit)), vae_(std::move(vae)) {}

  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& r,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    if (r.model() != spec_.name) {
      return absl::NotFoundError(
          absl::StrCat("model: this denoise group serves '", spec_.name, "', not '", r.model(), "'"));
    }
    for (auto [field, v] : {std::pair{"height", r.height()}, std::pair{"width", r.width()}}) {
      if (v < kPixelGranularity || v > options_.max_image_size || v % kPixelGranularity != 0) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": ", v, " must be a multiple of ",
                                                        kPixelGranularity, " in ", kPixelGranularity,
                                                        "..", options_.max_image_size));
      }
    }
    if (r.steps() < 1 || r.steps() > 200) {
      return absl::InvalidArgumentError(absl::StrCat("steps: ", r.steps(), " is outside 1..200"));
    }
    if (!std::isfinite(r.guidance_scale()) || r.guidance_scale() < 0) {
      return absl::InvalidArgumentError("guidance_scale: must be finite and >= 0");
    }
    const auto& cfg = dit_->config();
    const int64_t grid_h = r.height() / kPixelGranularity, grid_w = r.width() / kPixelGranularity;
    ASSIGN_OR_RETURN(at::Tensor grid, FromWire(r.prior_tokens(), "prior_tokens", DType::kInt64, 2));
    if (grid.size(0) != grid_h || grid.size(1) != grid_w) {
      return absl::InvalidArgumentError(absl::StrCat("prior_tokens: grid ", grid.size(0), "x",
                                                     grid.size(1), ", expected ", grid_h, "x", grid_w));
    }
    if (grid.numel() > 0 && (grid.min().item<int64_t>() < 0 ||
                             grid.max().item<int64_t>() >= cfg.prior_vq_quantizer_codebook_size)) {
      return absl::InvalidArgumentError(absl::StrCat("prior_tokens: ids must lie in 0..",
                                                     cfg.prior_vq_quantizer_codebook_size - 1));
    }
    ASSIGN_OR_RETURN(at::Tensor prompt, FromWire(r.prompt_embeds(), "prompt_embeds", DType::kFloat32, 3));
    ASSIGN_OR_RETURN(at::Tensor negative, FromWire(r.negative_prompt_embeds(), "negative_prompt_embeds",
                                                   DType::kFloat32, 3));
    for (auto [field, t] : {std::pair{"prompt_embeds", prompt}, std::pair{"negative_prompt_embeds", negative}}) {
      if (t.size(0) != 1 || t.size(2) != cfg.text_embed_dim) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": expected [1, T, ", cfg.text_embed_dim, "]"));
      }
    }

    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(ctx.Check("denoise"));
    const absl::Time t0 = absl::Now();
    // Prior tokens: the AR grid upsampled 2× (nearest) to the DiT's patch grid, row-major.
    at::Tensor prior_ids = grid.repeat_interleave(2, 0).repeat_interleave(2, 1).reshape({1, -1});
    const int64_t lat_h = r.height() / kVaeScale, lat_w = r.width() / kVaeScale;
    auto gen = at::detail::createCPUGenerator(r.seed());
    at::Tensor latents = at::randn({1, cfg.in_channels, lat_h, lat_w}, gen, at::kFloat);
    std::unique_ptr<CfgPolicy> policy =
        MakeGlmImageCfg(prompt, negative, prior_ids.size(1), r.guidance_scale());

    ASSIGN_OR_RETURN(auto scheduler, models::glm_image::BuildScheduler(spec_));
    const int64_t image_seq_len = (lat_h / cfg.patch_size) * (lat_w / cfg.patch_size);
    RETURN_IF_ERROR(scheduler->SetTimesteps(
        r.steps(), models::glm_image::CalculateShift(image_seq_len, scheduler->config())));

    models::glm_image::DitInputs in;
    in.prior_token_id = prior_ids;
    in.target_size = at::tensor({static_cast<float>(r.height()), static_cast<float>(r.width())}).view({1, 2});
    in.crop_coords = at::zeros({1, 2});
    for (int64_t i = 0; i < scheduler->num_steps(); ++i) {
      RETURN_IF_ERROR(ctx.Check("denoise"));
      in.hidden_states = latents.to(dit_->dtype());
      // The reference pipeline feeds the transformer t − 1.
      in.timestep = at::full({1}, scheduler->timesteps()[i], at::kFloat) - 1;
      std::vector<at::Tensor> predictions;
      for (const CfgBranch& b : policy->branches()) {
        in.encoder_hidden_states = b.encoder_hidden_states.to(dit_->dtype());
        in.prior_token_drop = b.prior_token_drop;
        predictions.push_back(dit_->Forward(in).to(at::kFloat));
      }
      latents = scheduler->Step(policy->Combine(predictions), i, latents);
      v1::DenoiseEvent e;
      e.mutable_step()->set_step(static_cast<int32_t>(i + 1));
      e.mutable_step()->set_total_steps(static_cast<int32_t>(scheduler->num_steps()));
      on_event(e);
    }
    v1::DenoiseEvent done;
    auto* result = done.mutable_result();
    result->set_denoise_seconds(absl::ToDoubleSeconds(absl::Now() - t0));
    if (r.output() == v1::LATENTS) {
      ASSIGN_OR_RETURN(*result->mutable_tensor(), ToWire(latents));
      on_event(done);
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(ctx.Check("vae_decode"));
    const absl::Time t1 = absl::Now();
    at::Tensor image = vae_->DecodeNormalized(latents.to(vae_->weights().begin()->second.scalar_type()));
    at::Tensor pixels = models::glm_image::ImageToUint8Hwc(image).contiguous();  // [H, W, 3]
    if (pixels.dim() == 4) pixels = pixels[0].contiguous();
    if (r.output() == v1::RGB8) {
      ASSIGN_OR_RETURN(*result->mutable_tensor(), ToWire(pixels));
    } else {
      ASSIGN_OR_RETURN(*result->mutable_png(),
                       EncodePng(pixels.data_ptr<uint8_t>(), static_cast<int>(pixels.size(1)),
                                 static_cast<int>(pixels.size(0))));
    }
    result->set_vae_decode_seconds(absl::ToDoubleSeconds(absl::Now() - t1));
    on_event(done);
    return absl::OkStatus();
  }

 private:
  const Options options_;
  const GlmImageSpec spec_;
  std::unique_ptr<GlmImageDit> dit_;
  std::unique_ptr<AutoencoderKl> vae_;
  std::mutex mu_;
};

absl::StatusOr<std::unique_ptr<DenoiseCore>> DenoiseCore::Create(const Options& options) {
  ASSIGN_OR_RETURN(GlmImageSpec spec, models::glm_image::BuiltinSpec(options.model));
  ASSIGN_OR_RETURN(auto dit, models::glm_image::BuildDit(spec));
  ASSIGN_OR_RETURN(auto vae, models::glm_image::BuildVaeDecoder(spec));
  return std::unique_ptr<DenoiseCore>(
      new DenoiseCore(std::make_unique<Impl>(options, std::move(spec), std::move(dit), std::move(vae))));
}

DenoiseCore::DenoiseCore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DenoiseCore::~DenoiseCore() = default;

absl::Status DenoiseCore::Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                                  const std::function<void(const v1::DenoiseEvent&)>& on_event) {
  return impl_->Denoise(ctx, request, on_event);
}

}  // namespace diffmesh
