// Internals of Ltx2Transformer: one attention module (LTX2Attention) and one transformer block
// (LTX2VideoTransformerBlock), over weights resolved once at construction. Each attention step
// is its own method so that sequence-parallel (Ulysses × ring: Attend) and tensor-parallel versions
// (column-parallel projections, row-parallel ProjectOut, q/k norm statistics summed over ranks)
// can replace single steps.
#ifndef DIFFMESH_MODELS_LTX2_TRANSFORMER_BLOCK_H_
#define DIFFMESH_MODELS_LTX2_TRANSFORMER_BLOCK_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "models/core/weights.h"
#include "models/ltx2/lora.h"
#include "models/ltx2/rope.h"
#include "models/ltx2/transformer.h"
#include "models/ltx2/transformer_parallel.h"

namespace diffmesh::models::ltx2 {

// A linear layer's tensors; bias undefined when the layer has none.
struct LinearWeights {
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out]
  std::string name;   // the weight's prefix: the key of its LoRA update
  // x·Wᵀ + b, plus the layer's update when `lora` adapts it.
  at::Tensor operator()(const at::Tensor& x, const LoraCall& lora = {}) const;
};
LinearWeights GetLinear(const WeightMap& weights, const std::string& prefix);

// Appends the parameters of an LTX2Attention named `prefix`.
void AddAttentionParams(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t query_dim,
                        int64_t context_dim, int64_t heads, int64_t head_dim, bool bias,
                        bool out_bias, bool gated);

// x·rsqrt(mean(x²) + eps) in fp32 over the last dim, returned in x's dtype, then × weight when
// defined (diffusers RMSNorm).
at::Tensor RmsNormOptionalWeight(const at::Tensor& x, const at::Tensor& weight, double eps);

// AdaLN rows: table [n, D] + temb [B, T, n·D] → n tensors [B, T, D]; an undefined temb gives
// the table rows alone, [1, 1, D].
std::vector<at::Tensor> ModulationRows(const at::Tensor& table, const at::Tensor& temb);

// Spatio-temporal guidance of one self-attention call.
struct Perturbation {
  bool active = false;         // this block is an STG block
  bool all_perturbed = false;  // every row perturbed: skip attention altogether
  at::Tensor mask;             // [B, 1, 1]: 0 = value passthrough, 1 = attention
};

// Where one attention call's tokens live in a sharded forward.
enum class SequenceLayout {
  kWhole,         // queries local or whole, keys and values whole: no sequence communication
  kShardedSelf,   // video self-attention: queries, keys and values are this rank's frames
  kShardedKeys,   // whole (audio) queries over keys and values of this rank's (video) frames
};

// The groups and layout of one attention call; the defaults are a single-rank call.
struct AttentionSharding {
  parallel::Communicator* tp = nullptr;       // heads split over it (matching the weights)
  parallel::Communicator* ulysses = nullptr;  // video frames split over Ulysses × ring
  parallel::Communicator* ring = nullptr;
  SequenceLayout layout = SequenceLayout::kWhole;
  int64_t query_offset = 0;  // kShardedSelf: global index of this rank's first token
};

class Ltx2Attention {
 public:
  // `tp`: keep heads [rank·heads/size, (rank+1)·heads/size) of the whole weights.
  Ltx2Attention(const WeightMap& weights, const std::string& prefix, int64_t heads,
                int64_t head_dim, bool gated, RopeType rope_type, double eps, TpSlice tp = {});

  // x [B, Sq, Dq]; context [B, Sk, Dk] or undefined for self-attention; additive mask
  // broadcastable to [B, heads, Sq, Sk] (kShardedSelf: over the whole sequence) or undefined;
  // q_rope/k_rope may be null (k_rope null → q_rope) and are cut to this rank's heads.
  // Returns [B, Sq, Dq], whole (summed over the tp group).
  // `lora` adapts the projections it has updates for.
  at::Tensor Forward(const at::Tensor& x, const at::Tensor& context, const at::Tensor& mask,
                     const RopeTables* q_rope, const RopeTables* k_rope,
                     const Perturbation& perturbation = {}, const AttentionSharding& sharding = {},
                     const LoraCall& lora = {}) const;

  // Steps. Rows are [B, S, heads·head_dim] over this rank's heads unless stated.
  // [B, Sq, heads], from the query input
  at::Tensor GateLogits(const at::Tensor& x, const LoraCall& lora = {}) const;
  at::Tensor ProjectQuery(const at::Tensor& x, const LoraCall& lora = {}) const;
  at::Tensor ProjectKey(const at::Tensor& context, const LoraCall& lora = {}) const;
  at::Tensor ProjectValue(const at::Tensor& context, const LoraCall& lora = {}) const;
  // RMSNorm across ALL heads: the sums of squares are summed over `tp` first.
  at::Tensor NormQuery(const at::Tensor& q, parallel::Communicator* tp = nullptr) const;
  at::Tensor NormKey(const at::Tensor& k, parallel::Communicator* tp = nullptr) const;
  at::Tensor Rotate(const at::Tensor& x, const RopeTables& tables) const;
  // Scaled dot-product attention per head, scale 1/sqrt(head_dim).
  at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& mask, const AttentionSharding& sharding = {}) const;
  at::Tensor ApplyGates(const at::Tensor& out, const at::Tensor& gate_logits) const;
  // Row-parallel under tp: the partial products are summed over `tp`, then the bias added.
  at::Tensor ProjectOut(const at::Tensor& out, parallel::Communicator* tp = nullptr,
                        const LoraCall& lora = {}) const;

  int64_t heads() const { return heads_; }  // this rank's
  int64_t head_dim() const { return head_dim_; }

 private:
  at::Tensor NormAcrossHeads(const at::Tensor& x, const at::Tensor& weight,
                             parallel::Communicator* tp) const;

  LinearWeights to_q_, to_k_, to_v_, to_out_, to_gate_logits_;
  at::Tensor norm_q_, norm_k_;
  int64_t heads_;  // this rank's
  int64_t head_dim_;
  int64_t inner_dim_;  // all heads: the RMSNorm width
  bool gated_;
  RopeType rope_type_;
  double eps_;
};

// Everything the blocks share in one call; built by Ltx2Transformer::Forward.
struct Ltx2BlockContext {
  at::Tensor temb;               // [B, 1|Nv, (6|9)·D] video AdaLN
  at::Tensor embedded_timestep;  // [B, 1|Nv, D] for the output modulation
  at::Tensor temb_audio;         // [B, 1|Na, (6|9)·Da]
  at::Tensor audio_embedded_timestep;
  at::Tensor temb_ca_video;       // [B, *, 4·D] a2v/v2a scale/shift, video side
  at::Tensor temb_ca_audio;       // [B, *, 4·Da]
  at::Tensor temb_ca_video_gate;  // [B, *, D] a2v gate
  at::Tensor temb_ca_audio_gate;  // [B, *, Da] v2a gate
  at::Tensor temb_prompt;         // [B, 1, 2·D] or undefined (static table only)
  at::Tensor temb_prompt_audio;   // [B, 1, 2·Da] or undefined
  RopeTables video_rope, audio_rope, ca_video_rope, ca_audio_rope;
  at::Tensor context;             // [B, T, cross_attention_dim] text for attn2
  at::Tensor audio_context;       // [B, Ta, audio_cross_attention_dim]
  at::Tensor context_mask;        // additive [B, 1, 1, T] or undefined
  at::Tensor audio_context_mask;  // additive [B, 1, 1, Ta] or undefined
  at::Tensor video_self_mask;     // additive [B, 1, Nv, Nv] or undefined
  Perturbation stg;               // applied in the STG blocks
  bool isolate_modalities = false;
  // Sharded forward: the groups, and the global index of this rank's first video token. The
  // RoPE tables above are already cut to this rank's frames and heads, the video tensors to its
  // frames.
  Ltx2ParallelContext parallel;
  int64_t video_offset = 0;
  LoraCall lora;  // the call's adapter (Ltx2ForwardOptions::lora), or none
};

class Ltx2Block {
 public:
  // `tp`: keep this rank's slices of the attention heads and feed-forward columns.
  Ltx2Block(const WeightMap& weights, const Ltx2TransformerConfig& config, int64_t index,
            TpSlice tp = {});

  // Updates both streams: video [B, Nv, D] (a sharded forward: this rank's frames), audio
  // [B, Na, Da]; collective over ctx.parallel.
  void Forward(at::Tensor& video, at::Tensor& audio, const Ltx2BlockContext& ctx,
               bool stg_block) const;

 private:
  // One stream's weights and switches.
  struct Stream {
    at::Tensor table;         // [6|9, D]
    at::Tensor prompt_table;  // [2, D] or undefined
    at::Tensor ca_table;      // [5, D]: a2v scale, a2v shift, v2a scale, v2a shift, gate
    at::Tensor norm1, norm2, norm3, ca_norm;  // RMSNorm weights or undefined
    LinearWeights ff_in, ff_out;
    bool cross_attn_adaln = false;
  };
  void SelfAttention(at::Tensor& x, const Stream& s, const std::vector<at::Tensor>& rows,
                     const Ltx2Attention& attn, const RopeTables& rope, const at::Tensor& mask,
                     const Perturbation& stg, const AttentionSharding& sharding,
                     const LoraCall& lora) const;
  void TextCrossAttention(at::Tensor& x, const Stream& s, const std::vector<at::Tensor>& rows,
                          const Ltx2Attention& attn, const at::Tensor& context,
                          const at::Tensor& temb_prompt, const at::Tensor& mask,
                          parallel::Communicator* tp, const LoraCall& lora) const;
  void AudioVideoCrossAttention(at::Tensor& video, at::Tensor& audio,
                                const Ltx2BlockContext& ctx) const;
  // Column-parallel ff.net.0 → GELU → row-parallel ff.net.2 under tp (one all-reduce).
  void FeedForward(at::Tensor& x, const Stream& s, const std::vector<at::Tensor>& rows,
                   parallel::Communicator* tp, const LoraCall& lora) const;
  at::Tensor Norm(const at::Tensor& x, const at::Tensor& weight) const;

  Stream video_, audio_;
  Ltx2Attention attn1_, audio_attn1_, attn2_, audio_attn2_, a2v_, v2a_;
  bool prompt_modulation_;
  bool gelu_tanh_;
  double eps_;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_TRANSFORMER_BLOCK_H_
