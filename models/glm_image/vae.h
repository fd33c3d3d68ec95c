// GLM-Image's VAE: diffusers' AutoencoderKL (models/autoencoders/autoencoder_kl.py with the
// Encoder/Decoder of vae.py, ResnetBlock2D, Upsample2D/Downsample2D and the group-normed
// single-head attention of the mid blocks), written functionally over a WeightMap whose names are
// those of the diffusers checkpoint (`encoder.*`, `decoder.*`, `quant_conv.*`,
// `post_quant_conv.*`).
#ifndef DIFFMESH_MODELS_GLM_IMAGE_VAE_H_
#define DIFFMESH_MODELS_GLM_IMAGE_VAE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {

// The fields of vae/config.json that shape the network or the latents.
struct VaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  // One entry per resolution level; the image is downsampled 2^(levels-1) times.
  std::vector<int64_t> block_out_channels = {64};
  // Resnets per encoder level; decoder levels have one more.
  int64_t layers_per_block = 1;
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  // "silu"/"swish", "gelu", "relu" or "mish" (diffusers' get_activation).
  std::string act_fn = "silu";
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;
  // Per-channel statistics GLM-Image normalises latents with; empty when the config has none.
  std::vector<double> latents_mean;
  std::vector<double> latents_std;
  bool force_upcast = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  // Parses a diffusers AutoencoderKL config; block types other than DownEncoderBlock2D /
  // UpDecoderBlock2D, or inconsistent lengths, are errors.
  static absl::StatusOr<VaeConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<VaeConfig> FromFile(const std::string& path);

  // Pixels per latent along each side: 2^(levels-1) (8 for GLM-Image).
  int64_t ScaleFactor() const { return int64_t{1} << (block_out_channels.size() - 1); }
};

// Which halves of the autoencoder to hold.
enum class VaeParts {
  kAll,          // encoder + quant_conv and decoder + post_quant_conv (the checkpoint)
  kDecoderOnly,  // decoder + post_quant_conv: enough for text-to-image
};

class AutoencoderKl {
 public:
  // The diagonal Gaussian the encoder predicts (diffusers' DiagonalGaussianDistribution): `logvar`
  // is already clamped to [-30, 20]. GLM-Image encodes condition images with sample_mode="argmax",
  // i.e. uses `mean`.
  struct LatentDistribution {
    at::Tensor mean;    // [B, latent_channels, H/s, W/s]
    at::Tensor logvar;  // [B, latent_channels, H/s, W/s]
  };

  // Exactly the parameters a diffusers checkpoint of `config` holds, in module order.
  static std::vector<ParamSpec> Params(const VaeConfig& config, VaeParts parts = VaeParts::kAll);

  // Takes weights already checked against Params(config, parts).
  static absl::StatusOr<std::unique_ptr<AutoencoderKl>> Create(const VaeConfig& config,
                                                               WeightMap weights,
                                                               VaeParts parts = VaeParts::kAll);

  // Reads `component_dir`/config.json and the checkpoint beside it; floating-point weights are
  // converted to `dtype`. With kDecoderOnly the encoder tensors are skipped.
  static absl::StatusOr<std::unique_ptr<AutoencoderKl>> Load(const std::string& component_dir,
                                                             at::ScalarType dtype = at::kFloat,
                                                             VaeParts parts = VaeParts::kAll);

  // Seeded weights (InitSeeded) for tests and benchmarks of a small config.
  static absl::StatusOr<std::unique_ptr<AutoencoderKl>> CreateSeeded(
      const VaeConfig& config, uint64_t seed, VaeParts parts = VaeParts::kAll);

  // diffusers `vae.decode(z).sample`: post_quant_conv, then the decoder. No latent statistics are
  // applied here (see DenormalizeLatents).
  // latents [B, latent_channels, h, w] → image [B, out_channels, h·s, w·s] in about [-1, 1], in
  // the weights' dtype and on their device.
  at::Tensor Decode(const at::Tensor& latents) const;

  // diffusers `vae.encode(x).latent_dist`: the encoder, then quant_conv, split into mean and
  // log-variance. image [B, in_channels, H, W] in [-1, 1], H and W multiples of s. Requires
  // VaeParts::kAll.
  LatentDistribution Encode(const at::Tensor& image) const;

  // GLM-Image pipeline before decoding: `latents * latents_std + latents_mean` per channel, the
  // statistics cast to the latents' dtype. [B, C, h, w] → [B, C, h, w]. The config must hold
  // latents_mean/latents_std (GLM-Image's does).
  at::Tensor DenormalizeLatents(const at::Tensor& latents) const;
  // GLM-Image pipeline after encoding a condition image: `(latents - mean) / std`.
  at::Tensor NormalizeLatents(const at::Tensor& latents) const;
  // Decode(DenormalizeLatents(latents)): the pipeline's last step before postprocessing.
  at::Tensor DecodeNormalized(const at::Tensor& latents) const;

  // Most attention-score elements the mid-block attention materialises at once (default 2^24):
  // queries are processed in chunks of max(1, budget / (h·w)). Bounds memory where no fused
  // attention kernel applies (LibTorch 1.13; head dim C = 512 on the GPU); the result does not
  // depend on it.
  void set_attention_score_budget(int64_t elements) { attention_score_budget_ = elements; }

  const VaeConfig& config() const { return config_; }
  const WeightMap& weights() const { return weights_; }
  VaeParts parts() const { return parts_; }

 private:
  AutoencoderKl(VaeConfig config, WeightMap weights, VaeParts parts)
      : config_(std::move(config)), weights_(std::move(weights)), parts_(parts) {}

  at::Tensor Act(const at::Tensor& x) const;
  at::Tensor Conv(const at::Tensor& x, const std::string& prefix, int64_t stride = 1,
                  int64_t padding = 1) const;
  at::Tensor GroupNorm(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor Resnet(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor MidAttention(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor MidBlock(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor LatentStat(const std::vector<double>& values, const at::Tensor& like) const;

  VaeConfig config_;
  WeightMap weights_;
  VaeParts parts_;
  int64_t attention_score_budget_ = int64_t{1} << 24;
};

// diffusers VaeImageProcessor.postprocess(output_type="pil") before the PIL step:
// (x/2 + 0.5).clamp(0, 1), ×255, rounded half-to-even, as uint8.
// image [B, 3, H, W] (any float dtype, any device) → uint8 [B, H, W, 3] on the CPU.
at::Tensor ImageToUint8Hwc(const at::Tensor& image);

// VaeImageProcessor.preprocess for an already-sized RGB image: x/255·2 − 1 in fp32.
// uint8 [B, H, W, 3] or [H, W, 3] → float [B, 3, H, W] in [-1, 1].
at::Tensor Uint8HwcToImage(const at::Tensor& pixels);

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_VAE_H_
