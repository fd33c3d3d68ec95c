// GLM-Image autoregressive (AR) model: the text decoder and lm_head of transformers'
// `GlmImageForConditionalGeneration` (a GLM-4-style decoder: GQA attention with q/k/v bias,
// M-RoPE over (temporal, height, width) positions with partial rotary, SwiGLU MLP with a fused
// gate_up_proj, and GLM-4's extra post-attention / post-MLP RMSNorms), written functionally over
// a WeightMap whose names are those of the checkpoint (vision_language_encoder/model.safetensors).
// The vision tower and VQ model of that checkpoint serve image-to-image prompts only and are not
// part of this model (see vision_tokenizer.h).
//
// The lm_head has `vision_vocab_size` rows, not `vocab_size`: the AR stage only ever generates
// image tokens (VQ codes, then the image-end marker), whose ids are the first
// `vision_vocab_size` ids of the shared vocabulary, so a sampled index is fed back as a token id
// unchanged.
//
// Serving API: a KvCache of fixed slots, `Prefill` for one slot and `Decode` for any set of slots
// at different lengths in one batched step (continuous batching). Positions are explicit M-RoPE
// (t, h, w) triples; PromptPositions / GenerationPositions compute the ones GLM-Image uses.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_AR_MODEL_H_
#define DIFFMESH_MODELS_GLM_IMAGE_AR_MODEL_H_

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {

// vision_language_encoder/config.json: the `text_config` block plus the top-level image token
// ids. Missing keys take the transformers constructor defaults (the released model's sizes).
struct ArConfig {
  int64_t vocab_size = 168064;        // rows of embed_tokens
  int64_t vision_vocab_size = 16512;  // rows of lm_head (image-token ids are 0..this-1)
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 13696;
  int64_t num_hidden_layers = 40;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 2;
  int64_t head_dim = 128;  // text_config.head_dim, else hidden_size / num_attention_heads
  bool attention_bias = true;
  double rms_norm_eps = 1e-5;
  int64_t max_position_embeddings = 32768;
  double rope_theta = 10000.0;
  // Fraction of head_dim that is rotated (the first rotary_dim() channels; the rest pass).
  double partial_rotary_factor = 1.0;
  // Frequencies per position axis (t, h, w), in that order; they sum to rotary_dim() / 2.
  std::array<int64_t, 3> mrope_section = {8, 12, 12};
  int64_t image_token_id = 167855;
  int64_t image_start_token_id = 16384;
  int64_t image_end_token_id = 16385;

  int64_t rotary_dim() const {
    return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor);
  }

  // Unsupported settings (rope_type other than "default", hidden_act other than "silu", tied
  // embeddings, inconsistent head/section sizes) are InvalidArgument.
  static absl::StatusOr<ArConfig> FromJson(const nlohmann::json& json);
  // `path` is config.json or the component directory holding it.
  static absl::StatusOr<ArConfig> FromFile(const std::string& path);
  absl::Status Validate() const;
};

// (Namespace-level so that `= {}` default arguments work inside the classes.)
struct KvCacheOptions {
  int64_t max_slots = 8;              // sequences held at once
  int64_t capacity = 2048;            // tokens per slot (prompt + generated)
  at::ScalarType dtype = at::kFloat;  // must equal the model's dtype
  at::Device device = at::kCPU;       // must equal the model's device
};

struct ArModelOptions {
  at::ScalarType dtype = at::kFloat;  // weights, activations, KV cache and logits
  at::Device device = at::kCPU;
  // Rows of the precomputed rotary table (largest position + 1); 0 = max_position_embeddings.
  int64_t max_positions = 0;
  // CUDA + bf16: the bucketed decode step runs the project's decode kernels (cuda/ar_decode.h:
  // fused norms, rotary + KV write + split-K attention, GEMV for batches up to 4) instead of
  // the ATen composition. Off: the ATen composition (the reference the kernels are tested
  // against). Ignored where the kernels do not apply (CPU, other dtypes, head_dim != 128).
  bool fused_decode = true;
};

// Key/value cache for a fixed number of sequence slots. Each layer owns one K and one V tensor
// [max_slots, kv_heads, capacity, head_dim], allocated once. A slot holds one sequence of up to
// `capacity` tokens; its entries past length(slot) are never read (attention is masked per slot),
// so slots at different lengths share a decode step, and a freed slot is reused without clearing.
// Slot-major storage (rather than pages) keeps a decode step to one gather per layer (none when
// the batch is a contiguous range of slots); GLM-Image requests have a known maximum length
// (prompt + image grids + 1), which bounds `capacity`. Not thread-safe: one scheduler owns it.
class KvCache {
 public:
  using Options = KvCacheOptions;

  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const ArConfig& config,
                                                         const Options& options);

  // Claims a free slot (length 0): the lowest-numbered one, so that a steady batch stays a
  // contiguous range. ResourceExhausted when every slot is in use.
  absl::StatusOr<int64_t> Allocate();
  // Returns `slot` to the free list; its contents become garbage.
  absl::Status Free(int64_t slot);

  int64_t max_slots() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t capacity() const { return capacity_; }
  int64_t num_free() const;
  bool in_use(int64_t slot) const;
  // Tokens stored in `slot` (0 for a free or out-of-range slot).
  int64_t length(int64_t slot) const;
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

 private:
  friend class ArModel;
  KvCache() = default;
  // FailedPrecondition unless `slot` is in range and allocated.
  absl::Status CheckSlot(int64_t slot) const;

  // Rows beyond max_slots: the scratch slot that padding rows of a bucketed step write to.
  int64_t scratch_slot() const { return max_slots(); }
  std::vector<at::Tensor> k_;  // per layer [max_slots + 1, kv_heads, capacity, head_dim]
  std::vector<at::Tensor> v_;  // per layer, same shape
  std::vector<int64_t> lengths_;
  std::vector<bool> in_use_;
  int64_t capacity_ = 0;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::kCPU;
};

class ArModel {
 public:
  using Options = ArModelOptions;

  // Exactly the text-decoder and lm_head parameters of the checkpoint, with their names.
  static std::vector<ParamSpec> Params(const ArConfig& config);
  // Checkpoint prefixes that belong to the vision tower and VQ model, skipped when loading.
  static std::vector<std::string> IgnoredPrefixes();

  // `weights` must hold exactly Params(config) (any dtype/device: converted to the options').
  static absl::StatusOr<std::unique_ptr<ArModel>> Create(const ArConfig& config,
                                                         const WeightMap& weights,
                                                         const Options& options = {});
  // Reads `dir`/config.json and the checkpoint in `dir` (vision/VQ tensors ignored).
  static absl::StatusOr<std::unique_ptr<ArModel>> Load(const std::string& dir,
                                                       const Options& options = {});

  // Full causal forward without a cache (reference path): input_ids [B, S] int64 →
  // logits [B, S, vision_vocab_size]. `positions` is [3, B, S] or [B, S] (all three axes equal);
  // by default 0..S-1 on every axis, as for a text-only prompt.
  absl::StatusOr<at::Tensor> Forward(
      const at::Tensor& input_ids, const std::optional<at::Tensor>& positions = std::nullopt) const;

  // Forward plus every layer's hidden states, as transformers' output_hidden_states gives them:
  // hidden_states[0] is the embedding output, hidden_states[i] the output of layer i − 1, and the
  // last entry (index num_hidden_layers) the last layer's output after the final RMSNorm (the
  // lm_head input), each [B, S, hidden_size]. Same arguments and logits as Forward.
  struct ForwardOutput {
    at::Tensor logits;                       // [B, S, vision_vocab_size]
    std::vector<at::Tensor> hidden_states;   // num_hidden_layers + 1 entries
  };
  absl::StatusOr<ForwardOutput> ForwardWithHiddenStates(
      const at::Tensor& input_ids, const std::optional<at::Tensor>& positions = std::nullopt) const;

  // Appends S tokens to `slot` (which may already hold a prefix, e.g. chunked prefill) and
  // returns the logits of the last one [vision_vocab_size]. input_ids [S]; positions [3, S] or
  // [S]. OutOfRange if the slot would exceed the cache capacity.
  absl::StatusOr<at::Tensor> Prefill(KvCache& cache, int64_t slot, const at::Tensor& input_ids,
                                     const at::Tensor& positions) const;

  // One token for each of `slots` (distinct, allocated, any lengths): tokens [B]; positions
  // [3, B] or [B] → logits [B, vision_vocab_size]. Each slot attends to its own entries only,
  // so its logits do not depend on which other slots share the step.
  absl::StatusOr<at::Tensor> Decode(KvCache& cache, const std::vector<int64_t>& slots,
                                    const at::Tensor& tokens, const at::Tensor& positions) const;

  // Decode with a fixed-shape step: the batch padded to a power-of-two bucket (padding rows
  // write to the cache's scratch slot) and the keys read up to a power-of-two length bucket,
  // masked per slot, with every index on the device. On CUDA each (batch, length) bucket is
  // captured once as a CUDA graph and replayed, which removes the per-operator host dispatch
  // that bounds eager decoding; on the CPU the same computation runs eagerly. Same contract and
  // results as Decode. Not thread-safe (one scheduler owns the model's decode).
  absl::StatusOr<at::Tensor> DecodeBucketed(KvCache& cache, const std::vector<int64_t>& slots,
                                            const at::Tensor& tokens,
                                            const at::Tensor& positions) const;
  ~ArModel();

  const ArConfig& config() const { return config_; }
  const Options& options() const { return options_; }

 private:
  struct Layer {
    at::Tensor input_layernorm;
    at::Tensor qkv_weight;  // q_proj, k_proj, v_proj rows fused: one GEMM per layer
    at::Tensor qkv_bias;    // undefined without attention_bias
    at::Tensor o_proj;
    at::Tensor post_self_attn_layernorm;
    at::Tensor post_attention_layernorm;
    at::Tensor gate_up_proj;
    at::Tensor down_proj;
    at::Tensor post_mlp_layernorm;
  };
  // Attention core for one layer: q [B, H, S, D] and the new k/v [B, Hkv, S, D] (rotated) →
  // [B, H, S, D]. Each entry point (full, prefill, decode) supplies its own.
  using AttendFn = std::function<at::Tensor(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v)>;

  ArModel(const ArConfig& config, const Options& options);
  absl::StatusOr<ForwardOutput> ForwardImpl(const at::Tensor& input_ids,
                                            const std::optional<at::Tensor>& positions,
                                            bool keep_hidden) const;
  // Static inputs and output of one bucketed step (and its CUDA graph, once captured).
  struct StepBuffers;
  // The bucketed step over `s`'s buffers; capture-safe (no host syncs, fixed shapes).
  at::Tensor BucketedStep(KvCache& cache, const StepBuffers& s, int64_t key_len) const;
  // Whether BucketedStep runs FusedStep (options, device, dtype and head layout allow it).
  bool UsesFusedDecode() const;
  // The same step through cuda/ar_decode's kernels (CUDA builds only).
  at::Tensor FusedStep(KvCache& cache, const StepBuffers& s, int64_t key_len) const;

  // positions [3, B, S] int64 → cos, sin [B, S, 1, rotary_dim] in the model's dtype.
  std::pair<at::Tensor, at::Tensor> Rotary(const at::Tensor& positions) const;
  // Embedding → layers → final norm: ids [B, S] → hidden [B, S, hidden_size].
  // With `hidden_states`, appends the embedding output and each layer's output (the last one
  // after the final norm, which replaces it).
  at::Tensor Decoder(const at::Tensor& input_ids, const at::Tensor& positions,
                     const AttendFn& attend,
                     std::vector<at::Tensor>* hidden_states = nullptr) const;
  // Checks shape/dtype/range of positions ([3, N...] or [N...]) and returns [3, N...] int64 on
  // the model's device.
  absl::StatusOr<at::Tensor> NormalizePositions(const at::Tensor& positions,
                                                at::IntArrayRef token_shape) const;
  absl::Status CheckIds(const at::Tensor& ids) const;
  absl::Status CheckCache(const KvCache& cache) const;

  ArConfig config_;
  Options options_;
  at::Tensor embed_tokens_;  // [vocab_size, hidden]
  std::vector<Layer> layers_;
  at::Tensor norm_;
  at::Tensor lm_head_;  // [vision_vocab_size, hidden]
  // Per M-RoPE axis, cos/sin of position·inv_freq for that axis' frequency columns, fp32
  // [max_positions, mrope_section[axis]]; a step gathers rows instead of evaluating cos/sin.
  std::array<at::Tensor, 3> cos_table_;
  std::array<at::Tensor, 3> sin_table_;
  // Bucketed decode steps by (batch bucket, key-length bucket), for one cache at a time.
  mutable std::map<std::pair<int64_t, int64_t>, std::unique_ptr<StepBuffers>> steps_;
  mutable const KvCache* steps_cache_ = nullptr;
};

// ---- Position ids used by GLM-Image generation (transformers GlmImageModel.get_rope_index).

struct ImageGrid {
  int64_t height = 0;  // tokens per column
  int64_t width = 0;   // tokens per row
};

struct PromptPositionIds {
  at::Tensor positions;   // [3, S] int64 (t, h, w), CPU
  int64_t next_position;  // where the generated tokens' positions start
};

// Positions of a prompt: text tokens count up on all three axes; the h·w tokens of the k-th
// complete source image (between the k-th image_start and the k-th image_end token, image-to-
// image prompts) take (p, p + row, p + col) with p the position after the image_start token, and
// the count resumes at p + max(h, w) with the image_end token. `source_grids` lists the complete
// images in prompt order. A trailing image_start (the generation marker) is an ordinary token.
absl::StatusOr<PromptPositionIds> PromptPositions(const ArConfig& config,
                                                  const at::Tensor& input_ids,
                                                  const std::vector<ImageGrid>& source_grids);

// Positions of the tokens fed back while generating `grids` in generation order (GLM-Image
// text-to-image: the small preview grid first, then the target grid; transformers' image_grid_thw
// lists them in the reverse order): grid tokens in row-major order at (p, p + row, p + col),
// p starting at `start` and advancing by max(h, w) after each grid, then one more entry (p, p, p)
// for the image_end token → [3, Σ h·w + 1] int64, CPU.
at::Tensor GenerationPositions(int64_t start, const std::vector<ImageGrid>& grids);

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_AR_MODEL_H_
