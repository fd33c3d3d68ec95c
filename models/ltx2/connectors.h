// LTX-2's text connectors: diffusers `LTX2TextConnectors` (pipelines/ltx2/connectors.py), which
// turn the stacked hidden states of every Gemma-3 layer into the video and audio text embeddings
// the DiT cross-attends to. Two variants, chosen by `per_modality_projections`:
//  - LTX-2.0: per-sample, per-layer masked (x − mean)/(max − min + 1e-6)·8 normalisation, one
//    shared `text_proj_in` (no bias) feeding both connectors;
//  - LTX-2.3: per-token RMS normalisation of each layer, then `video_text_proj_in` /
//    `audio_text_proj_in` (with bias) on inputs rescaled by sqrt(hidden_dim / caption_channels),
//    and gated attention in the connector blocks.
// Each connector (`LTX2ConnectorTransformer1d`) front-aligns the valid tokens, fills the tail
// with its learnable registers, and runs RMSNorm → self-attention (1-D RoPE) → RMSNorm → GELU-tanh
// feed-forward blocks and a final RMSNorm. Parameter names are those of the diffusers checkpoint
// (connectors/diffusion_pytorch_model.safetensors).
#ifndef DIFFMESH_MODELS_LTX2_CONNECTORS_H_
#define DIFFMESH_MODELS_LTX2_CONNECTORS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// One connector tower's fields of connectors/config.json.
struct ConnectorTowerConfig {
  int64_t num_attention_heads = 30;
  int64_t attention_head_dim = 128;
  int64_t num_layers = 2;
  int64_t num_learnable_registers = 128;  // 0 = none (config null): padding stays masked
  bool gated_attn = false;

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
};

// connectors/config.json; missing keys take the diffusers constructor defaults.
struct ConnectorsConfig {
  int64_t caption_channels = 3840;   // text encoder hidden size
  int64_t text_proj_in_factor = 49;  // text encoder layers + 1 (the embeddings)
  ConnectorTowerConfig video;
  ConnectorTowerConfig audio;
  int64_t connector_rope_base_seq_len = 4096;
  double rope_theta = 10000.0;
  bool rope_double_precision = true;
  std::string rope_type = "interleaved";  // or "split"
  bool per_modality_projections = false;  // true: LTX-2.3
  int64_t video_hidden_dim = 4096;        // LTX-2.3 projection widths
  int64_t audio_hidden_dim = 2048;
  bool proj_bias = false;

  int64_t text_encoder_dim() const { return caption_channels * text_proj_in_factor; }

  static absl::StatusOr<ConnectorsConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<ConnectorsConfig> FromFile(const std::string& path);
};

enum class PaddingSide { kLeft, kRight };

// diffusers `per_layer_masked_mean_norm` (LTX-2.0): x [B, T, D, L] (L = layers), sequence_lengths
// [B] (valid tokens per row, counted from the padded side's far end) → [B, T, D·L] in x's dtype.
// Per row and layer, over the valid (t, d): mean = sum / (n·D + eps), min, max; then
// scale·(x − mean)/(max − min + eps); padded positions are 0.
at::Tensor PerLayerMaskedMeanNorm(const at::Tensor& x, const at::Tensor& sequence_lengths,
                                  PaddingSide padding_side = PaddingSide::kLeft,
                                  double scale_factor = 8.0, double eps = 1e-6);

// diffusers `per_token_rms_norm` followed by the LTX-2.3 masking of LTX2TextConnectors.forward:
// x [B, T, D, L] → x·rsqrt(mean_d(x²) + eps) flattened to [B, T, D·L], zero where
// attention_mask [B, T] is 0.
at::Tensor PerTokenRmsNorm(const at::Tensor& x, const at::Tensor& attention_mask,
                           double eps = 1e-6);

class TextConnectors {
 public:
  struct Output {
    at::Tensor video_text_embedding;  // [B, T, video inner dim]
    at::Tensor audio_text_embedding;  // [B, T, audio inner dim]
    at::Tensor attention_mask;        // int64 [B, T]; all ones, as the reference returns it
  };

  // Exactly the parameters of the diffusers checkpoint: `text_proj_in.weight` (2.0) or
  // `{video,audio}_text_proj_in.{weight,bias}` (2.3), and per connector `learnable_registers`
  // [R, inner] and `transformer_blocks.{i}.attn1.{to_q,to_k,to_v,to_out.0}.{weight,bias}`,
  // `attn1.norm_{q,k}.weight`, `attn1.to_gate_logits.{weight,bias}` (gated), and
  // `ff.net.{0.proj,2}.{weight,bias}`.
  static std::vector<ParamSpec> Params(const ConnectorsConfig& config);

  // Takes weights already checked against Params(config); a configuration the reference cannot
  // run (odd head_dim for split RoPE, a 2.0 tower whose width is not caption_channels) is
  // INVALID_ARGUMENT.
  static absl::StatusOr<std::unique_ptr<TextConnectors>> Create(const ConnectorsConfig& config,
                                                                WeightMap weights);
  // Reads `component_dir`/config.json and its checkpoint, floating-point weights as `dtype`.
  static absl::StatusOr<std::unique_ptr<TextConnectors>> Load(const std::string& component_dir,
                                                              at::ScalarType dtype = at::kFloat);
  static absl::StatusOr<std::unique_ptr<TextConnectors>> CreateSeeded(
      const ConnectorsConfig& config, uint64_t seed);

  // LTX2TextConnectors.forward. text_encoder_hidden_states: [B, T, caption_channels·L] with the
  // layer index fastest (index d·L + l), or [B, T, caption_channels, L]; attention_mask [B, T]
  // (1 = token, 0 = pad; any numeric dtype). `padding_side` and `scale_factor` only matter for
  // LTX-2.0. With registers, T must be a multiple of each tower's register count.
  Output Forward(const at::Tensor& text_encoder_hidden_states, const at::Tensor& attention_mask,
                 PaddingSide padding_side = PaddingSide::kLeft, double scale_factor = 8.0) const;

  const ConnectorsConfig& config() const { return config_; }
  const WeightMap& weights() const { return weights_; }

 private:
  TextConnectors(ConnectorsConfig config, WeightMap weights)
      : config_(std::move(config)), weights_(std::move(weights)) {}

  // One LTX2ConnectorTransformer1d: x [B, T, inner], additive key mask [B, 1, 1, T] (0 or
  // −finfo.max) → [B, T, inner] and the mask the blocks used.
  std::pair<at::Tensor, at::Tensor> Tower(const std::string& prefix,
                                          const ConnectorTowerConfig& tower, at::Tensor x,
                                          at::Tensor additive_mask) const;

  ConnectorsConfig config_;
  WeightMap weights_;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_CONNECTORS_H_
