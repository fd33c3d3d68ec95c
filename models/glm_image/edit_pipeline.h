// The model-side pieces of GLM-Image editing (image-to-image) as diffusers' GlmImagePipeline
// composes them at 58eb52c:
//   1. each condition image is VAE-encoded (distribution mode), normalised per channel, and run
//      once through the DiT in "write" mode (timestep 0, no text, its own d16 prior tokens),
//      which fills a DitKvCache with every block's condition keys/values;
//   2. every denoising step runs a conditional pass that reads the cache and, with guidance
//      > 1, an unconditional pass without it (negative embeddings, all prior tokens dropped);
//      guidance u + g·(c − u); flow-matching Euler step.
// The serving side's denoise loop can call EditBranchInputs per branch; RunEditDenoiseLoop is
// the whole single-process loop (the reference composition).
#ifndef DIFFMESH_MODELS_GLM_IMAGE_EDIT_PIPELINE_H_
#define DIFFMESH_MODELS_GLM_IMAGE_EDIT_PIPELINE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "models/glm_image/dit.h"
#include "models/glm_image/scheduler.h"
#include "models/glm_image/vae.h"

namespace diffmesh::models::glm_image {

// VAE encoding of a preprocessed condition image (PreprocessVaeConditionImage): encoder mean
// (the pipeline's sample_mode="argmax"), then (z − latents_mean) / latents_std.
// image [1, 3, H', W'] in [-1, 1] → [1, latent_channels, H'/8, W'/8] in the VAE's dtype.
// Requires the encoder (VaeParts::kAll).
absl::StatusOr<at::Tensor> EncodeConditionLatents(const AutoencoderKl& vae, const at::Tensor& image);

// The write pass of one condition image: appends its keys/values to `cache` (several images:
// call once per image, in prompt order, on the same cache) and returns the transformer's
// output (discarded by the pipeline). condition_latents [1, C, h, w] (EncodeConditionLatents);
// prior_token_ids: the image's d16 VQ ids (UpsampleTokenIds of its AR tokens), h·w/p² of them,
// any shape; image_height/width: the preprocessed image's pixel size (the pass's target_size).
absl::StatusOr<at::Tensor> WriteConditionKv(const GlmImageDit& dit,
                                            const at::Tensor& condition_latents,
                                            const at::Tensor& prior_token_ids,
                                            int64_t image_height, int64_t image_width,
                                            DitKvCache& cache);

// DiT inputs of one branch of an edit step. conditional: `embeds` = prompt_embeds, prior tokens
// kept, reads `cache` (may be null or empty: then no condition); unconditional: `embeds` =
// negative_prompt_embeds, every prior token dropped, no cache ("skip"). latents [B, C, H/8, W/8]
// (cast to the model's dtype by Forward); prior_token_ids [B, N] d16 target tokens;
// timestep_model: the scheduler's t − 1; height/width: the target's pixel size.
DitInputs EditBranchInputs(const at::Tensor& latents, const at::Tensor& embeds,
                           const at::Tensor& prior_token_ids, bool conditional,
                           float timestep_model, int64_t height, int64_t width,
                           const DitKvCache* cache);

struct EditDenoiseInputs {
  at::Tensor latents;                 // [1, C, H/8, W/8] initial noise, float32
  at::Tensor prompt_embeds;           // [1, T, text_embed_dim]
  at::Tensor negative_prompt_embeds;  // [1, T', text_embed_dim]; used when guidance_scale > 1
  at::Tensor prior_token_ids;         // [1, (H/16)·(W/16)] int64: the AR target tokens ×2
  int64_t height = 0;                 // target image size in pixels
  int64_t width = 0;
  double guidance_scale = 1.5;        // > 1: classifier-free guidance with two passes
};

// What one step computed (all float32), for observers and tests.
struct EditStep {
  int64_t index = 0;
  at::Tensor latents_in;
  at::Tensor timestep_model;     // [1]: the scheduler's t − 1
  at::Tensor noise_pred_cond;
  at::Tensor noise_pred_uncond;  // undefined without guidance
  at::Tensor noise_pred;
  at::Tensor latents_out;
};

// The pipeline's denoising loop over `scheduler`'s timesteps (already set: SetTimesteps with
// CalculateShift of the TARGET's patch count; condition tokens do not count) with the condition
// cache from WriteConditionKv → final latents [1, C, H/8, W/8] float32 (before the VAE's
// denormalisation). `on_step` (optional) sees every step.
absl::StatusOr<at::Tensor> RunEditDenoiseLoop(const GlmImageDit& dit,
                                              const FlowMatchEulerScheduler& scheduler,
                                              const DitKvCache& cache,
                                              const EditDenoiseInputs& inputs,
                                              const std::function<void(const EditStep&)>& on_step = {});

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_EDIT_PIPELINE_H_
