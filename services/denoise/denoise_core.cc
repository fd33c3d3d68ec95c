#include "services/denoise/denoise_core.h"

#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/image/png.h"
#include "common/status/status_macros.h"
#include "models/glm_image/glm_image_spec.h"
#include "services/denoise/cfg_policy.h"
#include "services/denoise/denoise_group.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {

using models::glm_image::AutoencoderKl;
using models::glm_image::GlmImageDit;
using models::glm_image::GlmImageSpec;

namespace {

// Pixels per latent (VAE) × latents per patch (DiT) × patches per AR grid cell.
constexpr int kVaeScale = 8;
constexpr int kPixelGranularity = 32;

// A request's tensors, checked.
struct Prepared {
  at::Tensor prior_ids;  // [1, N] int64, the AR grid upsampled 2× to the patch grid
  at::Tensor prompt;     // [1, T, text_embed_dim]
  at::Tensor negative;   // [1, T', text_embed_dim]
};

}  // namespace

class DenoiseCore::Impl {
 public:
  Impl(Options options, GlmImageSpec spec, std::unique_ptr<DenoiseGroup> group,
       std::unique_ptr<GlmImageDit> dit, std::unique_ptr<AutoencoderKl> vae)
      : options_(std::move(options)), spec_(std::move(spec)), group_(std::move(group)),
        dit_(std::move(dit)), vae_(std::move(vae)) {}

  int rank() const { return group_->layout().rank(); }

  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& r,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    if (!group_->is_main()) return absl::FailedPreconditionError("only rank 0 takes requests");
    // Checked here first, so a bad request never reaches the other ranks.
    ASSIGN_OR_RETURN(Prepared p, Prepare(r));
    std::string bytes;
    r.SerializeToString(&bytes);
    RETURN_IF_ERROR(group_->Send(DenoiseGroup::Command::kRun, bytes));
    absl::Status s = Execute(r, p, &ctx, on_event);
    group_->Release();
    return s;
  }

  absl::Status RunWorker() {
    if (group_->is_main()) return absl::FailedPreconditionError("rank 0 does not run as a worker");
    while (true) {
      ASSIGN_OR_RETURN(auto command, group_->Receive());
      if (command.first == DenoiseGroup::Command::kStop) return absl::OkStatus();
      v1::DenoiseRequest r;
      if (!r.ParseFromString(command.second)) return absl::DataLossError("bad request from rank 0");
      ASSIGN_OR_RETURN(Prepared p, Prepare(r));  // rank 0 checked it: this cannot fail differently
      RETURN_IF_ERROR(Execute(r, p, nullptr, nullptr));
    }
  }

 private:
  absl::StatusOr<Prepared> Prepare(const v1::DenoiseRequest& r) const {
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
    Prepared p;
    ASSIGN_OR_RETURN(p.prompt, FromWire(r.prompt_embeds(), "prompt_embeds", DType::kFloat32, 3));
    ASSIGN_OR_RETURN(p.negative, FromWire(r.negative_prompt_embeds(), "negative_prompt_embeds",
                                          DType::kFloat32, 3));
    for (auto [field, t] : {std::pair{"prompt_embeds", p.prompt}, std::pair{"negative_prompt_embeds", p.negative}}) {
      if (t.size(0) != 1 || t.size(2) != cfg.text_embed_dim) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": expected [1, T, ", cfg.text_embed_dim, "]"));
      }
    }
    for (int64_t b : r.multimodal_guidance().stg_blocks()) {
      if (b < 0 || b >= cfg.num_layers) {
        return absl::InvalidArgumentError(absl::StrCat("multimodal_guidance.stg_blocks: no block ", b));
      }
    }
    // Prior tokens: the AR grid upsampled 2× (nearest) to the DiT's patch grid, row-major.
    p.prior_ids = grid.repeat_interleave(2, 0).repeat_interleave(2, 1).reshape({1, -1});
    return p;
  }

  // The step loop, run by every rank in lockstep. `ctx` and `on_event` only on rank 0.
  absl::Status Execute(const v1::DenoiseRequest& r, const Prepared& p, CallContext* ctx,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    const absl::Time t0 = absl::Now();
    const auto& cfg = dit_->config();
    const int64_t lat_h = r.height() / kVaeScale, lat_w = r.width() / kVaeScale;
    // Every rank draws the same initial latents from the request's seed.
    auto gen = at::detail::createCPUGenerator(r.seed());
    at::Tensor latents =
        at::randn({1, cfg.in_channels, lat_h, lat_w}, gen, at::kFloat).to(group_->device());
    std::unique_ptr<CfgPolicy> policy;
    if (r.has_multimodal_guidance()) {
      const auto& g = r.multimodal_guidance();
      MultiModalGuidanceParams params;
      params.cfg_scale = r.guidance_scale();
      params.stg_scale = g.stg_scale();
      params.stg_blocks.assign(g.stg_blocks().begin(), g.stg_blocks().end());
      params.modality_scale = g.modality_scale();
      params.rescale_scale = g.rescale_scale();
      ASSIGN_OR_RETURN(policy, MakeGlmImageMultiModalCfg(p.prompt, p.negative, p.prior_ids.size(1), params));
    } else {
      policy = MakeGlmImageCfg(p.prompt, p.negative, p.prior_ids.size(1), r.guidance_scale());
    }

    ASSIGN_OR_RETURN(auto scheduler, models::glm_image::BuildScheduler(spec_));
    const int64_t image_seq_len = (lat_h / cfg.patch_size) * (lat_w / cfg.patch_size);
    RETURN_IF_ERROR(scheduler->SetTimesteps(
        r.steps(), models::glm_image::CalculateShift(image_seq_len, scheduler->config())));

    models::glm_image::DitInputs in;
    in.prior_token_id = p.prior_ids;
    in.target_size = at::tensor({static_cast<float>(r.height()), static_cast<float>(r.width())}).view({1, 2});
    in.crop_coords = at::zeros({1, 2});
    const auto* collectives = &group_->dit_collectives();
    for (int64_t i = 0; i < scheduler->num_steps(); ++i) {
      absl::Status live = ctx != nullptr ? ctx->Check("denoise") : absl::OkStatus();
      ASSIGN_OR_RETURN(bool go_on, group_->AgreeToContinue(live.ok()));
      if (!go_on) return live.ok() ? absl::AbortedError("denoise: stopped by rank 0") : live;
      in.hidden_states = latents.to(dit_->dtype());
      // The reference pipeline feeds the transformer t − 1.
      in.timestep = at::full({1}, scheduler->timesteps()[i], at::kFloat) - 1;
      ASSIGN_OR_RETURN(std::vector<at::Tensor> predictions,
                       group_->RunBranches(*policy, [&](const CfgBranch& b) {
                         models::glm_image::DitInputs branch = in;
                         branch.encoder_hidden_states = b.encoder_hidden_states.to(dit_->dtype());
                         branch.prior_token_drop = b.prior_token_drop;
                         branch.skip_attention_layers = b.skip_layers;
                         return dit_->Forward(branch, collectives).to(at::kFloat);
                       }, latents));
      latents = scheduler->Step(policy->Combine(predictions, i), i, latents);
      if (on_event) {
        v1::DenoiseEvent e;
        e.mutable_step()->set_step(static_cast<int32_t>(i + 1));
        e.mutable_step()->set_total_steps(static_cast<int32_t>(scheduler->num_steps()));
        on_event(e);
      }
    }
    if (!group_->is_main()) return absl::OkStatus();  // the VAE decode is rank 0's alone

    v1::DenoiseEvent done;
    auto* result = done.mutable_result();
    result->set_denoise_seconds(absl::ToDoubleSeconds(absl::Now() - t0));
    if (r.output() == v1::LATENTS || r.include_latents()) {
      ASSIGN_OR_RETURN(*result->mutable_latents(), ToWire(latents));
    }
    if (r.output() != v1::LATENTS) {
      RETURN_IF_ERROR(ctx->Check("vae_decode"));
      const absl::Time t1 = absl::Now();
      at::Tensor image = vae_->DecodeNormalized(latents);
      at::Tensor pixels = models::glm_image::ImageToUint8Hwc(image)[0].cpu().contiguous();  // [H, W, 3]
      if (r.output() == v1::RGB8) {
        ASSIGN_OR_RETURN(*result->mutable_tensor(), ToWire(pixels));
      } else {
        ASSIGN_OR_RETURN(*result->mutable_png(),
                         EncodePng(pixels.data_ptr<uint8_t>(), static_cast<int>(pixels.size(1)),
                                   static_cast<int>(pixels.size(0))));
      }
      result->set_vae_decode_seconds(absl::ToDoubleSeconds(absl::Now() - t1));
    }
    on_event(done);
    return absl::OkStatus();
  }

  const Options options_;
  const GlmImageSpec spec_;
  std::unique_ptr<DenoiseGroup> group_;
  std::unique_ptr<GlmImageDit> dit_;
  std::unique_ptr<AutoencoderKl> vae_;  // rank 0 only
};

absl::StatusOr<std::unique_ptr<DenoiseCore>> DenoiseCore::Create(const Options& options) {
  ASSIGN_OR_RETURN(GlmImageSpec spec,
                   models::glm_image::ResolveSpec(options.model, options.model_dir));
  ASSIGN_OR_RETURN(auto dit_config, models::glm_image::DitConfig::FromJson(spec.transformer));
  Options resolved = options;
  if (resolved.max_image_size <= 0) resolved.max_image_size = spec.max_image_size;
  DenoiseGroupOptions group_options;
  group_options.parallel = options.parallel;
  group_options.rendezvous = options.rendezvous;
  group_options.num_heads = static_cast<int>(dit_config.num_attention_heads);
  group_options.cuda = options.cuda;
  ASSIGN_OR_RETURN(auto group, DenoiseGroup::Create(group_options));
  models::glm_image::TensorParallelShard tp{group->layout().tp_rank(), options.parallel.tp};
  const at::ScalarType dtype = options.cuda ? at::kBFloat16 : at::kFloat;
  ASSIGN_OR_RETURN(auto dit, models::glm_image::BuildDit(spec, dtype, tp, group->device()));
  std::unique_ptr<AutoencoderKl> vae;
  if (group->is_main()) {
    ASSIGN_OR_RETURN(vae, models::glm_image::BuildVaeDecoder(spec, at::kFloat, group->device()));
  }
  return std::unique_ptr<DenoiseCore>(new DenoiseCore(std::make_unique<Impl>(
      resolved, std::move(spec), std::move(group), std::move(dit), std::move(vae))));
}

DenoiseCore::DenoiseCore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DenoiseCore::~DenoiseCore() = default;

absl::Status DenoiseCore::Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                                  const std::function<void(const v1::DenoiseEvent&)>& on_event) {
  return impl_->Denoise(ctx, request, on_event);
}

absl::Status DenoiseCore::RunWorker() { return impl_->RunWorker(); }

int DenoiseCore::rank() const { return impl_->rank(); }

}  // namespace diffmesh
