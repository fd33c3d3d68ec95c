// GLM-Image diffusion transformer: the diffusers `GlmImageTransformer2DModel` (MMDiT-style joint
// text/image attention with AdaLN-Zero, RoPE on image tokens only, and the AR model's prior
// tokens added to the patch embeddings), written functionally over a WeightMap whose names are
// those of the diffusers checkpoint (transformer/diffusion_pytorch_model.safetensors).
#ifndef DIFFMESH_MODELS_GLM_IMAGE_DIT_H_
#define DIFFMESH_MODELS_GLM_IMAGE_DIT_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {

// transformer/config.json; missing keys take the diffusers constructor defaults.
struct DitConfig {
  int64_t patch_size = 2;
  int64_t in_channels = 16;
  int64_t out_channels = 16;
  int64_t num_layers = 30;
  int64_t attention_head_dim = 40;
  int64_t num_attention_heads = 64;
  int64_t text_embed_dim = 1472;
  int64_t time_embed_dim = 512;
  int64_t condition_dim = 256;
  int64_t prior_vq_quantizer_codebook_size = 16384;

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }

  static absl::StatusOr<DitConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<DitConfig> FromFile(const std::string& path);
};

// Keys and values of condition images for image-to-image (editing), as diffusers'
// GlmImageKVCache holds them for one sample: per block, K after the QK LayerNorm and the image's
// own 2-D RoPE (positions from 0), and V, of every condition token, images concatenated along
// the sequence in the order they were written. Each tensor [1, N_cond, heads, head_dim] in the
// model's dtype (this rank's heads under tensor parallelism).
struct DitKvCache {
  std::vector<at::Tensor> keys;    // one per block; undefined until written
  std::vector<at::Tensor> values;  // one per block

  // Condition tokens held (0 when empty).
  int64_t num_tokens() const {
    return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(1);
  }
};

// One transformer call. Floating inputs are cast to the model's dtype where the reference does
// so; integer/bool inputs may have any integral dtype.
struct DitInputs {
  at::Tensor hidden_states;          // [B, C_in, H, W] latents (H, W multiples of patch_size)
  at::Tensor encoder_hidden_states;  // [B, T, text_embed_dim] glyph (T5) embeddings; T may be 0
  at::Tensor prior_token_id;         // [B, (H/p)·(W/p)] int64 VQ ids from the AR model
  at::Tensor prior_token_drop;       // [B, (H/p)·(W/p)] bool/uint8, nonzero = zero that embedding
  at::Tensor timestep;               // [B] float (the pipeline passes t − 1)
  at::Tensor target_size;            // [B, 2] (height, width) in pixels, float
  at::Tensor crop_coords;            // [B, 2] (top, left), float
  // Blocks whose attention is skipped (output = the values, as skip-layer / spatio-temporal
  // guidance perturbs a branch); empty for an ordinary call.
  std::vector<int64_t> skip_attention_layers;
  // Image-to-image. `kv_read` ("read" mode, the conditional branch): each block's attention also
  // attends to the cached condition keys/values, placed before the current [text; image] ones,
  // for every query; the output keeps the query length. Null or empty: no condition (text-to-
  // image, or the unconditional branch: "skip" mode). Batch rows share the one cache.
  const DitKvCache* kv_read = nullptr;
  // "write" mode (the condition image's own pass): each block appends its [text; image] keys and
  // values to this cache (attention itself sees only the current tokens). Batch 1.
  DitKvCache* kv_write = nullptr;
};

// Joint attention core: q/k/v [B, heads, S, head_dim] over S = T text + N image tokens (text
// first), no mask, scale 1/sqrt(head_dim) → [B, heads, S, head_dim]. Replaceable so that
// sequence/tensor-parallel attention (Ulysses, ring) can be plugged in without touching the DiT.
using AttentionFn =
    std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v)>;

// Joint attention with the image tokens sharded over a sequence-parallel group: q/k/v
// [B, heads_local, T + n, head_dim] hold the replicated text tokens first, then this rank's n
// image tokens (global positions [image_offset, image_offset + n); positions >= image_len are
// padding and must not act as keys). Returns [B, heads_local, T + n, head_dim] for the same
// tokens; text outputs must be identical on every rank of the group.
struct JointAttentionShape {
  int64_t text_len = 0;
  int64_t image_len = 0;     // real image tokens in the whole sequence
  int64_t image_offset = 0;  // global index of this rank's first image token
};
using JointAttentionFn =
    std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const JointAttentionShape& shape)>;

// Collective operations the DiT needs from its rank group. Implemented by the denoise group
// over the parallel communicators; failures throw (the forward has no Status path).
struct DitCollectives {
  // Tensor parallel: sums partial results of the row-parallel projections in place across the
  // tp group. Null when tp = 1.
  std::function<void(at::Tensor&)> tp_all_reduce;
  // Sequence parallel (ulysses × ring ranks, ordered by shard): concatenates every rank's
  // [B, n, X] along dim 1. Null when sp = 1.
  std::function<at::Tensor(const at::Tensor&)> sp_all_gather;
  int sp_rank = 0;
  int sp_size = 1;
  // Attention over this rank's shard; required when sp_size > 1.
  JointAttentionFn attention;
};

// Which slice of the attention heads and MLP columns this model holds (tensor parallelism).
struct TensorParallelShard {
  int rank = 0;
  int size = 1;
};

class GlmImageDit {
 public:
  // Every parameter, named and shaped exactly as in the diffusers checkpoint.
  static std::vector<ParamSpec> Params(const DitConfig& config);

  // `weights` must hold exactly Params(config) (full checkpoint tensors); the model computes in
  // their dtype and device. With tp.size > 1 it keeps only its slice: heads
  // [rank·H/tp, (rank+1)·H/tp) of to_q/to_k/to_v (rows) and to_out.0 (columns), and the same
  // slice of ff.net.0.proj (rows) and ff.net.2 (columns); the rest is replicated.
  static absl::StatusOr<std::unique_ptr<GlmImageDit>> Create(const DitConfig& config,
                                                             WeightMap weights,
                                                             TensorParallelShard tp = {});

  // The dim along which tensor parallelism splits parameter `name`: 0 for the rows of the
  // column-parallel projections (attn1.to_q/to_k/to_v and ff.net.0.proj, weight and bias), 1 for
  // the columns of the row-parallel ones (attn1.to_out.0.weight, ff.net.2.weight), -1 for the
  // replicated rest. Rank r of tp keeps the r-th of tp equal parts of that dim.
  static int TensorParallelDim(const std::string& name);
  // Params(config) with every split parameter shaped as one rank of `tp` holds it.
  static std::vector<ParamSpec> Params(const DitConfig& config, TensorParallelShard tp);
  // As Create, but `weights` hold exactly Params(config, tp): this rank's slices only, as a
  // checkpoint loader cuts them from the mapped file so that no rank materialises a full tensor.
  static absl::StatusOr<std::unique_ptr<GlmImageDit>> CreateFromSlices(const DitConfig& config,
                                                                       WeightMap weights,
                                                                       TensorParallelShard tp);

  // Reads `dir`/config.json and the safetensors checkpoint in `dir`, converted to `dtype`.
  static absl::StatusOr<std::unique_ptr<GlmImageDit>> Load(const std::string& dir,
                                                           at::ScalarType dtype = at::kFloat);

  // → sample [B, out_channels, H, W] in the model's dtype. `collectives` is required when the
  // model was created with tp.size > 1 or runs sequence parallel; every rank of those groups
  // calls Forward with the same inputs.
  at::Tensor Forward(const DitInputs& inputs, const DitCollectives* collectives = nullptr) const;
  const TensorParallelShard& tp() const { return tp_; }

  // Defaults to models::Attention (SDPA).
  void set_attention_fn(AttentionFn fn) { attention_fn_ = std::move(fn); }

  const DitConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  const WeightMap& weights() const { return weights_; }

 private:
  GlmImageDit(const DitConfig& config, WeightMap weights, TensorParallelShard tp);
  // Fuses this rank's q/k/v projections and builds the model from checked (sliced) weights.
  static std::unique_ptr<GlmImageDit> Assemble(const DitConfig& config, WeightMap weights,
                                               TensorParallelShard tp);

  // silu(timestep embedding + size/crop embedding) → [B, time_embed_dim].
  at::Tensor TimeConditionEmbedding(const at::Tensor& timestep, const at::Tensor& target_size,
                                    const at::Tensor& crop_coords) const;

  // One GlmImageTransformerBlock; updates both streams in place of the arguments.
  void Block(int64_t index, at::Tensor& hidden, at::Tensor& context, const at::Tensor& temb,
             const at::Tensor& rope_cos, const at::Tensor& rope_sin, bool skip_attention,
             const DitCollectives* collectives, const JointAttentionShape& shape,
             const DitKvCache* kv_read, DitKvCache* kv_write) const;
  // A row-parallel projection: local partial product, summed over the tp group, then the bias.
  at::Tensor RowParallelLinear(const at::Tensor& x, const std::string& prefix,
                               const DitCollectives* collectives) const;

  DitConfig config_;
  WeightMap weights_;
  at::ScalarType dtype_;
  TensorParallelShard tp_;
  AttentionFn attention_fn_;
};

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_DIT_H_
