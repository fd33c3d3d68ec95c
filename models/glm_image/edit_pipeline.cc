#include "models/glm_image/edit_pipeline.h"

#include "absl/strings/str_cat.h"

namespace diffmesh::models::glm_image {
namespace {

// Runs `f`, turning an ATen exception (a shape check inside the DiT or VAE) into a Status.
template <typename F>
auto Guard(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
}

}  // namespace

absl::StatusOr<at::Tensor> EncodeConditionLatents(const AutoencoderKl& vae,
                                                  const at::Tensor& image) {
  if (vae.parts() != VaeParts::kAll) {
    return absl::FailedPreconditionError("condition image: the VAE was built without its encoder");
  }
  if (!image.defined() || image.dim() != 4 || image.size(0) != 1) {
    return absl::InvalidArgumentError("condition image must be [1, 3, H, W]");
  }
  return Guard("condition image VAE encode", [&]() -> absl::StatusOr<at::Tensor> {
    return vae.NormalizeLatents(vae.Encode(image).mean);
  });
}

absl::StatusOr<at::Tensor> WriteConditionKv(const GlmImageDit& dit,
                                            const at::Tensor& condition_latents,
                                            const at::Tensor& prior_token_ids,
                                            int64_t image_height, int64_t image_width,
                                            DitKvCache& cache) {
  const DitConfig& c = dit.config();
  if (!condition_latents.defined() || condition_latents.dim() != 4 ||
      condition_latents.size(0) != 1) {
    return absl::InvalidArgumentError("condition_latents must be [1, C, h, w]");
  }
  const int64_t p = c.patch_size;
  const int64_t n = (condition_latents.size(2) / p) * (condition_latents.size(3) / p);
  if (!prior_token_ids.defined() || prior_token_ids.numel() != n) {
    // The pipeline does not check this; the reference fails inside the transformer.
    return absl::InvalidArgumentError(absl::StrCat(
        "condition prior tokens: ", prior_token_ids.defined() ? prior_token_ids.numel() : 0,
        " ids for a latent grid of ", n, " patches (the AR grid ×2 must equal H'/16 × W'/16)"));
  }
  DitInputs in;
  in.hidden_states = condition_latents;
  in.encoder_hidden_states =
      at::zeros({1, 0, c.text_embed_dim}, condition_latents.options().dtype(at::kFloat));
  in.prior_token_id = prior_token_ids.reshape({1, n}).to(at::kLong);
  in.prior_token_drop = at::zeros({1, n}, at::kBool);
  in.timestep = at::zeros({1}, at::kFloat);  // 0, not t − 1
  in.target_size = at::tensor({static_cast<float>(image_height), static_cast<float>(image_width)})
                       .view({1, 2});
  in.crop_coords = at::zeros({1, 2}, at::kFloat);
  in.kv_write = &cache;
  return Guard("condition KV write pass",
               [&]() -> absl::StatusOr<at::Tensor> { return dit.Forward(in); });
}

DitInputs EditBranchInputs(const at::Tensor& latents, const at::Tensor& embeds,
                           const at::Tensor& prior_token_ids, bool conditional,
                           float timestep_model, int64_t height, int64_t width,
                           const DitKvCache* cache) {
  const int64_t batch = latents.size(0);
  DitInputs in;
  in.hidden_states = latents;
  in.encoder_hidden_states = embeds;
  in.prior_token_id = prior_token_ids;
  in.prior_token_drop = conditional ? at::zeros(prior_token_ids.sizes(), at::kBool)
                                    : at::ones(prior_token_ids.sizes(), at::kBool);
  in.timestep = at::full({batch}, timestep_model, at::kFloat);
  in.target_size = at::tensor({static_cast<float>(height), static_cast<float>(width)})
                       .view({1, 2})
                       .expand({batch, 2});
  in.crop_coords = at::zeros({batch, 2}, at::kFloat);
  in.kv_read = conditional ? cache : nullptr;
  return in;
}

absl::StatusOr<at::Tensor> RunEditDenoiseLoop(const GlmImageDit& dit,
                                              const FlowMatchEulerScheduler& scheduler,
                                              const DitKvCache& cache,
                                              const EditDenoiseInputs& inputs,
                                              const std::function<void(const EditStep&)>& on_step) {
  const bool cfg = inputs.guidance_scale > 1.0;
  if (!inputs.latents.defined() || !inputs.prompt_embeds.defined() ||
      !inputs.prior_token_ids.defined() || (cfg && !inputs.negative_prompt_embeds.defined())) {
    return absl::InvalidArgumentError(
        "edit denoise: latents, prompt_embeds, prior_token_ids (and negative_prompt_embeds with "
        "guidance > 1) are required");
  }
  if (scheduler.num_steps() == 0) {
    return absl::FailedPreconditionError("edit denoise: the scheduler has no timesteps set");
  }
  return Guard("edit denoise", [&]() -> absl::StatusOr<at::Tensor> {
    at::Tensor latents = inputs.latents.to(at::kFloat);
    for (int64_t i = 0; i < scheduler.num_steps(); ++i) {
      EditStep step;
      step.index = i;
      step.latents_in = latents;
      const float t = scheduler.timesteps()[i] - 1.0f;  // the pipeline feeds t − 1
      step.timestep_model = at::full({1}, t, at::kFloat);
      const at::Tensor x = latents.to(dit.dtype());
      step.noise_pred_cond =
          dit.Forward(EditBranchInputs(x, inputs.prompt_embeds, inputs.prior_token_ids, true, t,
                                       inputs.height, inputs.width, &cache))
              .to(at::kFloat);
      if (cfg) {
        step.noise_pred_uncond =
            dit.Forward(EditBranchInputs(x, inputs.negative_prompt_embeds, inputs.prior_token_ids,
                                         false, t, inputs.height, inputs.width, nullptr))
                .to(at::kFloat);
        step.noise_pred = step.noise_pred_uncond +
                          inputs.guidance_scale * (step.noise_pred_cond - step.noise_pred_uncond);
      } else {
        step.noise_pred = step.noise_pred_cond;
      }
      latents = scheduler.Step(step.noise_pred, i, latents);
      step.latents_out = latents;
      if (on_step) on_step(step);
    }
    return latents;
  });
}

}  // namespace diffmesh::models::glm_image
