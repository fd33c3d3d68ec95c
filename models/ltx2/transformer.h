// LTX-2 audio-video diffusion transformer: diffusers' `LTX2VideoTransformer3DModel`
// (transformer_ltx2.py) for both the LTX-2.0 and LTX-2.3 checkpoints, selected by the flags of
// transformer/config.json. Two streams — video tokens [B, Nv, in_channels] and audio tokens
// [B, Na, audio_in_channels] — run through the same blocks: self-attention, text
// cross-attention, audio↔video cross-attention and a GELU-tanh feed-forward per stream, each
// AdaLN-modulated by the stream's timestep. Parameters carry the checkpoint's exact names.
//
// Sharded forward (Ltx2ParallelContext): every rank of a Ulysses × ring × tensor-parallel group
// builds the model from the same whole weights, calls Forward with the same whole inputs and
// gets the same whole outputs back as one rank would (to rounding).
//  * Video tokens are sequence parallel over Ulysses × ring (SP = U·R shards), by whole latent
//    frames: the rank of Ulysses rank u and ring rank r holds shard s = u + U·r, frames
//    [s·F/SP, (s+1)·F/SP) — contiguous tokens, as they are ordered (f, h, w) — with its own
//    RoPE positions and per-token timesteps; the U Ulysses ranks of one ring rank together hold
//    a contiguous "ring block" of U shards. F must divide by U·R (no padding: a padded frame
//    would have to be masked out of every attention and would still cost a frame of compute;
//    LTX-2 frame counts are 8k+1 pixel frames = k+1 latent frames, so SP = 2 needs an odd k).
//    The video self-attention swaps sequence for heads with Ulysses all-to-alls when the heads
//    of a tensor-parallel rank divide by U (otherwise — tiny models with fewer heads than ranks
//    — each rank all-gathers the keys and values of its ring block instead); under ring
//    (R > 1) the key/value ring blocks then travel around the ring group, each rank attending
//    to one block while receiving the next, and the partial results (fp32, with their
//    log-sum-exp; the video self-attention mask cut to the block) merge in block order. There
//    is no replicated prefix in this attention (text enters by cross-attention), so nothing is
//    counted twice. Text cross-attention and audio→video attention need no communication
//    (video queries local, their keys and values whole).
//  * Audio is REPLICATED on every Ulysses × ring rank (it is ~1/50 of the video tokens): its
//    blocks run whole on each rank. Video→audio attention (audio queries over the sharded video
//    keys) attends to the local frames and merges the U·R shards' partial results by
//    log-sum-exp (one all-gather of [B, heads, Na, head_dim + 1] over Ulysses, then one over
//    ring, per block), in shard order, so the audio stays bit-identical on every rank.
//  * Tensor parallel, both streams: every attention (self, text, audio↔video) splits its heads
//    (column-parallel to_q/to_k/to_v and gate logits, row-parallel to_out.0 + one all-reduce);
//    the q/k RMSNorm across heads all-reduces the per-token sums of squares; the feed-forward is
//    column-parallel ff.net.0 → GELU-tanh on the 4·D/tp shard → row-parallel ff.net.2 and one
//    all-reduce (no all-gather of the hidden). Each rank keeps only its slices of the split
//    block weights.
//  * The video output is all-gathered over the Ulysses, then the ring group at the end
//    (out_channels wide) unless Ltx2ForwardOptions::gather_video is false.
#ifndef DIFFMESH_MODELS_LTX2_TRANSFORMER_H_
#define DIFFMESH_MODELS_LTX2_TRANSFORMER_H_

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "models/ltx2/rope.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::parallel {
class Communicator;
}  // namespace diffmesh::models::parallel

namespace diffmesh::models::ltx2 {

class Ltx2Lora;
struct LoraCall;

// transformer/config.json. Absent keys take the diffusers constructor defaults (which are not
// those of any released checkpoint: e.g. rope_type "interleaved", attention_head_dim 128).
struct Ltx2TransformerConfig {
  // Video stream.
  int64_t in_channels = 128;
  int64_t out_channels = 128;  // null in the file → in_channels
  int64_t patch_size = 1;
  int64_t patch_size_t = 1;
  int64_t num_attention_heads = 32;
  int64_t attention_head_dim = 128;
  int64_t cross_attention_dim = 4096;  // text context width seen by attn2
  std::array<int64_t, 3> vae_scale_factors = {8, 32, 32};
  int64_t pos_embed_max_pos = 20;
  int64_t base_height = 2048;
  int64_t base_width = 2048;
  bool gated_attn = false;      // per-head sigmoid gates (2.3)
  bool cross_attn_mod = false;  // 9 AdaLN rows + prompt AdaLN (2.3)
  // Audio stream.
  int64_t audio_in_channels = 128;
  int64_t audio_out_channels = 128;
  int64_t audio_patch_size = 1;
  int64_t audio_patch_size_t = 1;
  int64_t audio_num_attention_heads = 32;
  int64_t audio_attention_head_dim = 64;
  int64_t audio_cross_attention_dim = 2048;  // also the width of the audio↔video RoPE
  int64_t audio_scale_factor = 4;
  int64_t audio_pos_embed_max_pos = 20;
  int64_t audio_sampling_rate = 16000;
  int64_t audio_hop_length = 160;
  bool audio_gated_attn = false;
  bool audio_cross_attn_mod = false;
  // Shared.
  int64_t num_layers = 48;
  std::string activation_fn = "gelu-approximate";
  std::string qk_norm = "rms_norm_across_heads";
  bool norm_elementwise_affine = false;  // weights on the blocks' RMSNorms
  double norm_eps = 1e-6;
  int64_t caption_channels = 3840;
  bool attention_bias = true;
  bool attention_out_bias = true;
  double rope_theta = 10000.0;
  bool rope_double_precision = true;
  int64_t causal_offset = 1;
  double timestep_scale_multiplier = 1000;
  double cross_attn_timestep_scale_multiplier = 1000;
  RopeType rope_type = RopeType::kInterleaved;
  bool use_prompt_embeddings = true;  // caption_projection inside the DiT (2.0)
  bool perturbed_attn = false;        // STG-capable self-attention (2.3)
  bool ff_bias = true;
  bool audio_ff_bias = true;
  bool use_prompt_adaln_single = true;           // timestep-dependent prompt K/V modulation
  bool use_keyframes_abs_pos_embedding = false;  // stored, unused by this forward

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  int64_t audio_inner_dim() const { return audio_num_attention_heads * audio_attention_head_dim; }
  // Either cross_attn_mod flag gives both streams the prompt scale/shift tables.
  bool prompt_modulation() const { return cross_attn_mod || audio_cross_attn_mod; }

  static absl::StatusOr<Ltx2TransformerConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<Ltx2TransformerConfig> FromFile(const std::string& path);
};

// One transformer call. Floating inputs are cast to the model's dtype; masks may be any dtype.
struct Ltx2TransformerInputs {
  at::Tensor hidden_states;        // [B, Nv, in_channels] packed video latents (f, h, w)
  at::Tensor audio_hidden_states;  // [B, Na, audio_in_channels]
  // [B, T, caption_channels] when use_prompt_embeddings, else [B, T, cross_attention_dim].
  at::Tensor encoder_hidden_states;
  // [B, Ta, caption_channels] when use_prompt_embeddings, else [B, Ta, audio_cross_attention_dim].
  at::Tensor audio_encoder_hidden_states;
  at::Tensor timestep;        // [B] or per token [B, Nv] (image conditioning), σ·1000
  at::Tensor audio_timestep;  // [B] or [B, Na]; undefined → timestep
  // [B]; the prompt AdaLN input (2.3) and the cross-modality timestep of use_cross_timestep.
  // Required when either is used; the pipelines pass sigma = timestep.
  at::Tensor sigma;
  at::Tensor audio_sigma;                   // [B]; undefined → sigma
  at::Tensor encoder_attention_mask;        // optional [B, T], 1 = attend, 0 = padding
  at::Tensor audio_encoder_attention_mask;  // optional [B, Ta]
  at::Tensor video_self_attention_mask;     // optional [B, Nv, Nv] in [0, 1], 1 = full attention
  // RoPE positions: given coordinates, or computed from the latent grid below.
  at::Tensor video_coords;  // optional [B, 3, Nv, 2] bounds (seconds, pixels, pixels)
  at::Tensor audio_coords;  // optional [B, 1, Na, 2] bounds in seconds
  int64_t num_frames = 0;   // latent frames/height/width, used when video_coords is undefined
  int64_t height = 0;
  int64_t width = 0;
  double fps = 24.0;
  int64_t audio_num_frames = 0;  // used when audio_coords is undefined; 0 → Na·audio_patch_size_t
};

// Guidance-branch switches of one call.
struct Ltx2ForwardOptions {
  // Spatio-temporal guidance: in these blocks the video and audio self-attention output is the
  // value projection instead of attention. As in diffusers this only acts when the config has
  // perturbed_attn (the LTX-2.0 config has not: there the branch equals the plain call).
  std::vector<int64_t> stg_blocks;
  // [B]: 0 = perturb this row, 1 = keep it (output lerp(value, attention, mask)); undefined with
  // stg_blocks perturbs every row.
  at::Tensor perturbation_mask;
  bool isolate_modalities = false;  // skip audio↔video cross-attention in every block
  // Modulate each stream's cross-modal attention with the OTHER stream's sigma (2.3
  // pipelines); false = its own timestep (LTX-2.0 behaviour).
  bool use_cross_timestep = false;
  // Sharded forward only: false returns this rank's video frames [B, count, out_channels]
  // (VideoShard) instead of all-gathering the whole video.
  bool gather_video = true;
  // Run-time LoRA (lora.h): every Linear layer it adapts computes W x + b + lora_strength ·
  // scale · B(A x) in this call. Null: the plain weights. It must be loaded for this model's
  // config, dtype, device and tp rank (INVALID_ARGUMENT otherwise) and outlive the call.
  const Ltx2Lora* lora = nullptr;
  double lora_strength = 1.0;
  // Called after each block with the video [B, Nv, D] and audio [B, Na, Da] hidden states (in a
  // sharded forward: this rank's video frames and, under tensor parallelism, still whole D).
  std::function<void(int64_t block, const at::Tensor& video, const at::Tensor& audio)>
      block_observer;
};

// Velocities in the model's dtype.
struct Ltx2TransformerOutputs {
  at::Tensor video;  // [B, Nv, out_channels]
  at::Tensor audio;  // [B, Na, audio_out_channels]
};

// The groups of a sharded forward (see the top of this file). Null or a group of one: no
// sharding along that axis. The communicators must outlive the model; its Forward calls are
// collective over all groups (every member calls Forward, with the same inputs and options, in
// the same order), so one model is used by one thread at a time. The groups of a denoise rank
// are parallel::ParallelGroups::tp, ::ulysses and ::ring of its RankLayout (ranks ordered by
// their coordinate, so the video shard of a rank is its RankLayout::sp_rank()).
struct Ltx2ParallelContext {
  parallel::Communicator* tp = nullptr;       // heads / feed-forward columns
  parallel::Communicator* ulysses = nullptr;  // video latent frames (all-to-all)
  parallel::Communicator* ring = nullptr;     // video latent frames (key/value ring)
};

// This rank's part of the video tokens in a sharded forward.
struct Ltx2VideoShard {
  int64_t frame_offset = 0;  // first latent frame (after temporal patching)
  int64_t frame_count = 0;
  int64_t token_offset = 0;  // first token of the packed [B, Nv, C] sequence
  int64_t token_count = 0;
};

class Ltx2Block;
struct Ltx2BlockContext;

class Ltx2Transformer {
 public:
  // Every parameter, named and shaped as in diffusion_pytorch_model.safetensors.
  static std::vector<ParamSpec> Params(const Ltx2TransformerConfig& config);

  // `weights` must hold exactly Params(config); the model computes in their dtype and device.
  // `parallel`: this rank's groups; the model keeps its tensor-parallel slices of the whole
  // `weights`. INVALID_ARGUMENT when the head counts do not divide by the tp degree.
  static absl::StatusOr<std::unique_ptr<Ltx2Transformer>> Create(
      const Ltx2TransformerConfig& config, WeightMap weights,
      const Ltx2ParallelContext& parallel = {});
  // Reads `dir`/config.json and the checkpoint in `dir`, converted to `dtype`; a missing,
  // unexpected or misshaped tensor is an error naming it.
  static absl::StatusOr<std::unique_ptr<Ltx2Transformer>> FromConfig(
      const std::string& dir, at::ScalarType dtype = at::kFloat,
      const Ltx2ParallelContext& parallel = {});
  // A model with seeded random weights (tests, benchmarks of tiny configs).
  static absl::StatusOr<std::unique_ptr<Ltx2Transformer>> InitSeeded(
      const Ltx2TransformerConfig& config, uint64_t seed,
      const Ltx2ParallelContext& parallel = {});
  // The same network as `whole` (a single-rank model from any builder, e.g. BuildTransformer)
  // running sharded over `parallel`; `whole` is consumed, its weights sliced.
  static absl::StatusOr<std::unique_ptr<Ltx2Transformer>> Parallelize(
      std::unique_ptr<Ltx2Transformer> whole, const Ltx2ParallelContext& parallel);

  ~Ltx2Transformer();

  // Checks the inputs (shapes, required sigma) and runs the model. Sharded: collective over the
  // groups; whole inputs in, whole outputs out (see the top of this file); a collective that
  // fails is an INTERNAL error (the other ranks then fail or time out in theirs).
  absl::StatusOr<Ltx2TransformerOutputs> Forward(const Ltx2TransformerInputs& inputs,
                                                 const Ltx2ForwardOptions& options = {}) const;

  // The video frames this rank holds in a sharded forward of `inputs` (all of them without a
  // Ulysses or ring group). INVALID_ARGUMENT, naming the sizes, when the latent frames do not
  // divide by the sequence-parallel degree Ulysses × ring, or when num_frames/height/width are
  // not set (they are required under sequence parallelism even with video_coords, to find the
  // frame boundaries).
  absl::StatusOr<Ltx2VideoShard> VideoShard(const Ltx2TransformerInputs& inputs) const;

  const Ltx2ParallelContext& parallel() const { return parallel_; }
  int tp_size() const;
  int ulysses_size() const;
  int ring_size() const;

  // The four rotary modules (self video/audio, cross video/audio) as the forward builds them.
  RopeSpec VideoRopeSpec() const;
  RopeSpec AudioRopeSpec() const;
  RopeSpec CrossVideoRopeSpec() const;
  RopeSpec CrossAudioRopeSpec() const;
  VideoCoordSpec VideoCoords() const;
  AudioCoordSpec AudioCoords() const;

  const Ltx2TransformerConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }

 private:
  Ltx2Transformer(const Ltx2TransformerConfig& config, WeightMap weights,
                  const Ltx2ParallelContext& parallel);
  static absl::Status CheckParallel(const Ltx2TransformerConfig& config,
                                    const Ltx2ParallelContext& parallel);

  absl::Status ValidateInputs(const Ltx2TransformerInputs& in,
                              const Ltx2ForwardOptions& options) const;
  // Timestep embeddings and global modulation rows of both streams.
  void EmbedTimesteps(const Ltx2TransformerInputs& in, const Ltx2ForwardOptions& options,
                      Ltx2BlockContext& ctx) const;
  // RoPE tables of the four rotary modules, for this rank's video frames `shard` and, under
  // tensor parallelism, cut to its heads.
  void BuildRope(const Ltx2TransformerInputs& in, const Ltx2VideoShard& shard,
                 Ltx2BlockContext& ctx) const;
  // Text contexts (caption projection for 2.0) and additive masks.
  void PrepareContext(const Ltx2TransformerInputs& in, Ltx2BlockContext& ctx) const;
  // norm_out, output modulation and proj_out of one stream.
  at::Tensor Output(const at::Tensor& hidden, const at::Tensor& embedded_timestep,
                    const std::string& prefix, const LoraCall& lora) const;

  Ltx2TransformerConfig config_;
  Ltx2ParallelContext parallel_;
  WeightMap weights_;  // without the block weights when tp > 1 (the blocks hold their slices)
  at::ScalarType dtype_;
  std::vector<std::unique_ptr<Ltx2Block>> blocks_;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_TRANSFORMER_H_
