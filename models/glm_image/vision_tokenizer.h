// GLM-Image's image tokenizer for editing (image-to-image): the vision tower and VQ model of
// transformers' `GlmImageForConditionalGeneration` (`model.visual.*`, `model.vqmodel.*` in
// vision_language_encoder/model.safetensors), written functionally over a WeightMap with the
// checkpoint's names. It turns a condition image's patches (condition_image.h) into VQ codebook
// ids: the AR prompt's image tokens, and (upsampled ×2) the DiT's prior tokens for the
// condition image's KV-cache write pass.
//
// Vision tower: patch embedding (a linear map of each 16×16 patch, the checkpoint's Conv2d with
// kernel = stride = patch), plus a learned square position table bilinearly resampled at the
// patch centres of each image's grid; then pre-LayerNorm blocks with full bidirectional attention
// within each image (no rotary) and an exact-GELU MLP; no final norm.
// VQ: quant_conv (1×1) → L2-normalised features → nearest L2-normalised codebook entry.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_VISION_TOKENIZER_H_
#define DIFFMESH_MODELS_GLM_IMAGE_VISION_TOKENIZER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "models/glm_image/ar_model.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {

// vision_language_encoder/config.json: `vision_config` and `vq_config`; missing keys take the
// transformers constructor defaults.
struct VisionTokenizerConfig {
  // vision_config
  int64_t depth = 40;
  int64_t hidden_size = 1536;
  int64_t num_heads = 16;
  int64_t intermediate_size = 6144;
  int64_t patch_size = 16;
  int64_t in_channels = 3;
  int64_t image_size = 2048;  // the position table covers (image_size / patch_size)² patches
  double layer_norm_eps = 1e-6;
  int64_t spatial_merge_size = 1;
  bool attention_bias = true;
  // vq_config
  int64_t vq_embed_dim = 2048;
  int64_t vq_num_embeddings = 16384;
  int64_t vq_latent_channels = 1536;  // = vision hidden_size

  int64_t num_positions() const {
    return (image_size / patch_size) * (image_size / patch_size);
  }
  // `json` is the whole vision_language_encoder config. hidden_act other than "gelu", a merge
  // size other than 1 or inconsistent sizes are errors.
  static absl::StatusOr<VisionTokenizerConfig> FromJson(const nlohmann::json& json);
  // `path` is config.json or the component directory holding it.
  static absl::StatusOr<VisionTokenizerConfig> FromFile(const std::string& path);
};

class GlmImageVisionTokenizer {
 public:
  // Exactly the `model.visual.*` and `model.vqmodel.*` parameters of the checkpoint.
  static std::vector<ParamSpec> Params(const VisionTokenizerConfig& config);
  // Checkpoint prefixes of the text decoder, skipped when loading.
  static std::vector<std::string> IgnoredPrefixes();

  static absl::StatusOr<std::unique_ptr<GlmImageVisionTokenizer>> Create(
      const VisionTokenizerConfig& config, WeightMap weights);
  // Reads `dir`/config.json and the checkpoint in `dir` (text-decoder tensors skipped),
  // converted to `dtype` on `device`.
  static absl::StatusOr<std::unique_ptr<GlmImageVisionTokenizer>> Load(
      const std::string& dir, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);

  // Steps, for tests and debugging. pixel_values [N, C·p·p] (images' patches concatenated in
  // `grids` order, raster order each); every output is per patch, in the same order.
  at::Tensor PatchEmbed(const at::Tensor& pixel_values) const;  // [N, hidden]
  // PatchEmbed plus the resampled position table → [N, hidden].
  at::Tensor Embeddings(const at::Tensor& pixel_values, const std::vector<ImageGrid>& grids) const;
  // The tower's output (transformers' get_image_features, concatenated) → [N, hidden].
  at::Tensor Features(const at::Tensor& pixel_values, const std::vector<ImageGrid>& grids) const;
  // quant_conv of the features, before the L2 normalisation → [N, vq_embed_dim].
  at::Tensor QuantConv(const at::Tensor& features) const;
  // Nearest codebook entries of the features (get_image_tokens) → [N] int64.
  at::Tensor Quantize(const at::Tensor& features) const;

  // The whole path: pixel_values → VQ ids [N] int64 (CPU), images concatenated in order.
  // InvalidArgument when the rows do not match Σ gh·gw or the width C·p·p.
  absl::StatusOr<at::Tensor> ImageTokens(const at::Tensor& pixel_values,
                                         const std::vector<ImageGrid>& grids) const;

  const VisionTokenizerConfig& config() const { return config_; }

 private:
  GlmImageVisionTokenizer(const VisionTokenizerConfig& config, WeightMap weights)
      : config_(config), weights_(std::move(weights)) {}
  at::Tensor Block(int64_t index, const at::Tensor& x, const std::vector<ImageGrid>& grids) const;

  VisionTokenizerConfig config_;
  WeightMap weights_;
};

// GlmImagePipeline._upsample_token_ids: each token of a (h × w) grid becomes a 2×2 block
// (nearest ×2), the d32 AR grid → the DiT's d16 patch grid. ids [h·w] (any shape with h·w
// elements) → [4·h·w] int64, raster order of the (2h × 2w) grid.
at::Tensor UpsampleTokenIds(const at::Tensor& ids, const ImageGrid& grid);
// The factor UpsampleTokenIds applies on each side: one AR grid cell covers kPriorTokenUpsample²
// DiT patches.
inline constexpr int64_t kPriorTokenUpsample = 2;

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_VISION_TOKENIZER_H_
