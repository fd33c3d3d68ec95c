// LTX-2's latent upsampler (diffusers pipelines/ltx2/latent_upsampler.py,
// LTX2LatentUpsamplerModel) and the latent-space part of LTX2LatentUpsamplePipeline
// (pipelines/ltx2/pipeline_ltx2_latent_upsample.py): denormalise with the video VAE's statistics,
// upsample, AdaIN against the input, tone map. Weights keep the checkpoint's names
// (`initial_conv.*`, `res_blocks.N.*`, `upsampler.*`, `post_upsample_res_blocks.N.*`,
// `final_conv.*`). Both released variants: LTX-2.0 (rational resampler: conv, pixel shuffle by
// the numerator, binomial blur-downsample by the denominator) and LTX-2.3 (conv + pixel shuffle
// ×2); the temporal variants (Conv3d + depth-to-space in time) are built from the config too.
#ifndef DIFFMESH_MODELS_LTX2_UPSAMPLER_H_
#define DIFFMESH_MODELS_LTX2_UPSAMPLER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// latent_upsampler/config.json; defaults are the reference constructor's.
struct LatentUpsamplerConfig {
  int64_t in_channels = 128;
  int64_t mid_channels = 1024;
  int64_t num_blocks_per_stage = 4;
  // 3: Conv3d everywhere except the per-frame spatial upsampler; 2: every layer per frame.
  int64_t dims = 3;
  bool spatial_upsample = true;
  bool temporal_upsample = false;
  // Scale of the rational resampler: 0.75, 1.5, 2 or 4 (numerator / denominator below).
  double rational_spatial_scale = 2.0;
  bool use_rational_resampler = true;

  static absl::StatusOr<LatentUpsamplerConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<LatentUpsamplerConfig> FromFile(const std::string& path);

  // The rational resampler's (numerator, denominator); {2, 1} when it is not used.
  std::pair<int64_t, int64_t> Rational() const;
};

class Ltx2LatentUpsampler {
 public:
  // Activations between the stages of Forward, for localising differences.
  struct Intermediates {
    at::Tensor after_initial;          // [B, mid, F, H, W]
    at::Tensor after_res_blocks;       // [B, mid, F, H, W]
    at::Tensor after_upsampler;        // [B, mid, F', H', W']
    at::Tensor after_post_res_blocks;  // [B, mid, F', H', W']
  };

  // Exactly the tensors a diffusers checkpoint of `config` holds (the blur kernel buffer too).
  static std::vector<ParamSpec> Params(const LatentUpsamplerConfig& config);
  static absl::StatusOr<std::unique_ptr<Ltx2LatentUpsampler>> Create(
      const LatentUpsamplerConfig& config, WeightMap weights);
  // `component_dir`/config.json + the checkpoint beside it, weights converted to `dtype` and
  // placed on `device`.
  static absl::StatusOr<std::unique_ptr<Ltx2LatentUpsampler>> Load(
      const std::string& component_dir, at::ScalarType dtype = at::kFloat,
      at::Device device = at::kCPU);
  static absl::StatusOr<std::unique_ptr<Ltx2LatentUpsampler>> CreateSeeded(
      const LatentUpsamplerConfig& config, uint64_t seed);

  // `latent_upsampler(latents)`: raw (denormalised) latents [B, in_channels, F, H, W] →
  // [B, in_channels, F', H·s, W·s] with s the spatial scale (2 for the released models) and
  // F' = F, or 2F − 1 with temporal upsampling. Weights' dtype and device.
  at::Tensor Forward(const at::Tensor& latents, Intermediates* intermediates = nullptr) const;

  const LatentUpsamplerConfig& config() const { return config_; }
  // The parameters by checkpoint name (the snapshot writer saves them).
  const WeightMap& weights() const { return weights_; }

 private:
  Ltx2LatentUpsampler(LatentUpsamplerConfig config, WeightMap weights)
      : config_(std::move(config)), weights_(std::move(weights)) {}

  at::Tensor Conv(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor ResBlock(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor Upsample(const at::Tensor& x) const;  // per-frame [N, C, H, W] for spatial-only

  LatentUpsamplerConfig config_;
  WeightMap weights_;
};

// The video VAE's per-channel latent statistics and scaling factor, as the pipelines use them.
struct VideoLatentStatistics {
  at::Tensor mean;  // [C] float32
  at::Tensor std;   // [C] float32
  double scaling_factor = 1.0;

  // Reads `vae_dir`/config.json (scaling_factor) and the `latents_mean` / `latents_std` buffers
  // of the checkpoint beside it, without loading the network.
  static absl::StatusOr<VideoLatentStatistics> Load(const std::string& vae_dir);

  // latents · std / scaling_factor + mean per channel of [B, C, F, H, W], in the latents' dtype.
  at::Tensor Denormalize(const at::Tensor& latents) const;
  // (latents − mean) · scaling_factor / std.
  at::Tensor Normalize(const at::Tensor& latents) const;
};

// adain_filter_latent: per batch item and channel over (F, H, W), move `latents`' mean and
// unbiased std to those of `reference`, then lerp(latents, that, factor).
at::Tensor AdainFilterLatents(const at::Tensor& latents, const at::Tensor& reference,
                              double factor);

// tone_map_latents: x · (1 − 0.8·s·sigmoid(4·s·(|x| − 1))) with s = 0.75·compression.
at::Tensor ToneMapLatents(const at::Tensor& latents, double compression);

struct LatentUpsampleOptions {
  // The latents are the denoiser's normalised ones (denormalise them with the VAE statistics
  // first); false when they are raw, e.g. stage-1 output of LTX2Pipeline(output_type="latent").
  bool latents_normalized = true;
  // AdaIN blend towards the input's statistics; 0 skips it.
  double adain_factor = 0.0;
  // Tone-mapping strength in [0, 1]; 0 skips it.
  double tone_map_compression_ratio = 0.0;
};

// LTX2LatentUpsamplePipeline.__call__(latents=..., output_type="latent") for 5-D latents
// [B, C, F, H, W]: (denormalise) → upsample → (AdaIN against the denormalised input) →
// (tone map). The result is raw (not re-normalised) latents, ready for Ltx2VideoDecoder::Decode
// or for normalising into a second denoising stage. `stats` is only read when
// latents_normalized.
at::Tensor UpsampleVideoLatents(const Ltx2LatentUpsampler& upsampler,
                                const VideoLatentStatistics& stats, const at::Tensor& latents,
                                const LatentUpsampleOptions& options);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_UPSAMPLER_H_
