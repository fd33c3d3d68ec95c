#include "models/ltx2/transformer_block.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "models/core/ops.h"
#include "models/ltx2/fused_ops.h"

namespace diffmesh::models::ltx2 {

at::Tensor LinearWeights::operator()(const at::Tensor& x, const LoraCall& lora) const {
  return lora.Add(bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight), name, x);
}

LinearWeights GetLinear(const WeightMap& weights, const std::string& prefix) {
  LinearWeights l;
  l.name = prefix;
  l.weight = Get(weights, prefix + ".weight");
  auto it = weights.find(prefix + ".bias");
  if (it != weights.end()) l.bias = it->second;
  return l;
}

void AddAttentionParams(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t query_dim,
                        int64_t context_dim, int64_t heads, int64_t head_dim, bool bias,
                        bool out_bias, bool gated) {
  const int64_t inner = heads * head_dim;
  specs.push_back({prefix + ".norm_q.weight", {inner}, Init::kOnes});
  specs.push_back({prefix + ".norm_k.weight", {inner}, Init::kOnes});
  AddLinear(specs, prefix + ".to_q", query_dim, inner, bias);
  AddLinear(specs, prefix + ".to_k", context_dim, inner, bias);
  AddLinear(specs, prefix + ".to_v", context_dim, inner, bias);
  AddLinear(specs, prefix + ".to_out.0", inner, query_dim, out_bias);
  if (gated) AddLinear(specs, prefix + ".to_gate_logits", query_dim, heads, /*bias=*/true);
}

at::Tensor RmsNormOptionalWeight(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = (xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps));
  normed = normed.to(x.scalar_type());
  return weight.defined() ? normed * weight : normed;
}

std::vector<at::Tensor> ModulationRows(const at::Tensor& table, const at::Tensor& temb) {
  const int64_t n = table.size(0), dim = table.size(1);
  if (!temb.defined()) return table.view({1, 1, n, dim}).unbind(2);
  at::Tensor rows = table.view({1, 1, n, dim}) + temb.view({temb.size(0), temb.size(1), n, dim});
  return rows.unbind(2);
}

// ---------------------------------------------------------------------------------------------
// Ltx2Attention

namespace {

// A column-parallel layer: this rank's output rows (weight and bias).
LinearWeights ColumnSlice(const LinearWeights& l, TpSlice tp) {
  return {SliceForRank(l.weight, 0, tp), SliceForRank(l.bias, 0, tp), l.name};
}

// A row-parallel layer: this rank's input columns; the bias stays whole (added once, after the
// all-reduce).
LinearWeights RowSlice(const LinearWeights& l, TpSlice tp) {
  return {SliceForRank(l.weight, 1, tp), l.bias, l.name};
}

// x·Wᵀ summed over `tp`, then + bias: the row-parallel product (plain Linear without tp). A LoRA
// update joins the partial product before the all-reduce (its lora_A holds this rank's columns).
at::Tensor RowParallel(const LinearWeights& l, const at::Tensor& x, parallel::Communicator* tp,
                       const LoraCall& lora) {
  if (GroupSize(tp) == 1) return l(x, lora);
  at::Tensor partial = lora.Add(at::linear(x, l.weight), l.name, x);
  TpAllReduce(tp, partial);
  return l.bias.defined() ? partial + l.bias : partial;
}

}  // namespace

Ltx2Attention::Ltx2Attention(const WeightMap& weights, const std::string& prefix, int64_t heads,
                             int64_t head_dim, bool gated, RopeType rope_type, double eps,
                             TpSlice tp)
    : to_q_(ColumnSlice(GetLinear(weights, prefix + ".to_q"), tp)),
      to_k_(ColumnSlice(GetLinear(weights, prefix + ".to_k"), tp)),
      to_v_(ColumnSlice(GetLinear(weights, prefix + ".to_v"), tp)),
      to_out_(RowSlice(GetLinear(weights, prefix + ".to_out.0"), tp)),
      norm_q_(SliceForRank(Get(weights, prefix + ".norm_q.weight"), 0, tp)),
      norm_k_(SliceForRank(Get(weights, prefix + ".norm_k.weight"), 0, tp)),
      heads_(heads / tp.size),
      head_dim_(head_dim),
      inner_dim_(heads * head_dim),
      gated_(gated),
      rope_type_(rope_type),
      eps_(eps) {
  // One gate logit per head: the rows of this rank's heads.
  if (gated_) to_gate_logits_ = ColumnSlice(GetLinear(weights, prefix + ".to_gate_logits"), tp);
}

at::Tensor Ltx2Attention::GateLogits(const at::Tensor& x, const LoraCall& lora) const {
  return to_gate_logits_(x, lora);
}
at::Tensor Ltx2Attention::ProjectQuery(const at::Tensor& x, const LoraCall& lora) const {
  return to_q_(x, lora);
}
at::Tensor Ltx2Attention::ProjectKey(const at::Tensor& context, const LoraCall& lora) const {
  return to_k_(context, lora);
}
at::Tensor Ltx2Attention::ProjectValue(const at::Tensor& context, const LoraCall& lora) const {
  return to_v_(context, lora);
}

at::Tensor Ltx2Attention::NormAcrossHeads(const at::Tensor& x, const at::Tensor& weight,
                                          parallel::Communicator* tp) const {
  if (GroupSize(tp) == 1) return RmsNorm(x, weight, eps_);
  // As RmsNorm, with mean(x²) over all heads: local sums of squares summed over the group.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor sum_sq = xf.pow(2).sum(-1, /*keepdim=*/true);  // [B, S, 1]
  TpAllReduce(tp, sum_sq);
  xf = xf * at::rsqrt(sum_sq / static_cast<double>(inner_dim_) + eps_);
  return weight * xf.to(x.scalar_type());
}

at::Tensor Ltx2Attention::NormQuery(const at::Tensor& q, parallel::Communicator* tp) const {
  return NormAcrossHeads(q, norm_q_, tp);
}
at::Tensor Ltx2Attention::NormKey(const at::Tensor& k, parallel::Communicator* tp) const {
  return NormAcrossHeads(k, norm_k_, tp);
}

at::Tensor Ltx2Attention::Rotate(const at::Tensor& x, const RopeTables& tables) const {
  return ApplyRope(x, tables, rope_type_);
}

at::Tensor Ltx2Attention::Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& mask, const AttentionSharding& sharding) const {
  auto heads_first = [&](const at::Tensor& t) {  // [B, S, H·Dh] → [B, H, S, Dh]
    return t.view({t.size(0), t.size(1), heads_, head_dim_}).transpose(1, 2);
  };
  at::Tensor out;
  const bool sharded = GroupSize(sharding.ulysses) > 1 || GroupSize(sharding.ring) > 1;
  if (sharded && sharding.layout == SequenceLayout::kShardedSelf) {
    out = FrameShardedSelfAttention(sharding.ulysses, sharding.ring, heads_first(q),
                                    heads_first(k), heads_first(v), mask, sharding.query_offset);
  } else if (sharded && sharding.layout == SequenceLayout::kShardedKeys) {
    TORCH_CHECK(!mask.defined(), "ltx2 attention: no mask over sharded keys");
    out = ShardedKeysAttention(sharding.ulysses, sharding.ring, heads_first(q), heads_first(k),
                               heads_first(v));
  } else {
    std::optional<at::Tensor> m;
    if (mask.defined()) m = mask.to(q.scalar_type());
    out = Attention(heads_first(q), heads_first(k), heads_first(v), m);
  }
  return out.transpose(1, 2).reshape({q.size(0), q.size(1), heads_ * head_dim_});
}

at::Tensor Ltx2Attention::ApplyGates(const at::Tensor& out, const at::Tensor& gate_logits) const {
  // 2·sigmoid: zero logits leave the heads unchanged.
  at::Tensor gates = 2.0 * at::sigmoid(gate_logits);  // [B, S, H]
  at::Tensor per_head = out.view({out.size(0), out.size(1), heads_, head_dim_});
  return (per_head * gates.unsqueeze(-1)).flatten(2, 3);
}

at::Tensor Ltx2Attention::ProjectOut(const at::Tensor& out, parallel::Communicator* tp,
                                     const LoraCall& lora) const {
  return RowParallel(to_out_, out, tp, lora);
}

at::Tensor Ltx2Attention::Forward(const at::Tensor& x, const at::Tensor& context,
                                  const at::Tensor& mask, const RopeTables* q_rope,
                                  const RopeTables* k_rope, const Perturbation& perturbation,
                                  const AttentionSharding& sharding, const LoraCall& lora) const {
  const at::Tensor& kv_in = context.defined() ? context : x;
  at::Tensor gate_logits = gated_ ? GateLogits(x, lora) : at::Tensor();
  at::Tensor value = ProjectValue(kv_in, lora);
  at::Tensor out;
  if (perturbation.active && perturbation.all_perturbed) {
    out = value;  // STG: the values pass straight through
  } else {
    const RopeTables* k_tables =
        q_rope == nullptr ? nullptr : k_rope != nullptr ? k_rope : q_rope;
    at::Tensor q, k;
    if (sharding.tp != nullptr && sharding.tp->size() > 1) {  // the norm spans the TP ranks
      q = NormQuery(ProjectQuery(x, lora), sharding.tp);
      k = NormKey(ProjectKey(kv_in, lora), sharding.tp);
      if (q_rope != nullptr) {
        q = Rotate(q, *q_rope);
        k = Rotate(k, *k_tables);
      }
    } else {
      q = NormRope(ProjectQuery(x, lora), norm_q_, eps_, q_rope, rope_type_);
      k = NormRope(ProjectKey(kv_in, lora), norm_k_, eps_, k_tables, rope_type_);
    }
    out = Attend(q, k, value, mask, sharding);
    if (perturbation.active && perturbation.mask.defined()) {
      out = at::lerp(value, out, perturbation.mask.to(out.scalar_type()));
    }
  }
  if (gated_) out = ApplyGates(out, gate_logits);
  return ProjectOut(out, sharding.tp, lora);
}

// ---------------------------------------------------------------------------------------------
// Ltx2Block

namespace {

at::Tensor OptionalWeight(const WeightMap& weights, const std::string& name) {
  auto it = weights.find(name);
  return it == weights.end() ? at::Tensor() : it->second;
}

}  // namespace

Ltx2Block::Ltx2Block(const WeightMap& w, const Ltx2TransformerConfig& c, int64_t index,
                     TpSlice tp)
    : attn1_(w, absl::StrCat("transformer_blocks.", index, ".attn1"), c.num_attention_heads,
             c.attention_head_dim, c.gated_attn, c.rope_type, c.norm_eps, tp),
      audio_attn1_(w, absl::StrCat("transformer_blocks.", index, ".audio_attn1"),
                   c.audio_num_attention_heads, c.audio_attention_head_dim, c.audio_gated_attn,
                   c.rope_type, c.norm_eps, tp),
      attn2_(w, absl::StrCat("transformer_blocks.", index, ".attn2"), c.num_attention_heads,
             c.attention_head_dim, c.gated_attn, c.rope_type, c.norm_eps, tp),
      audio_attn2_(w, absl::StrCat("transformer_blocks.", index, ".audio_attn2"),
                   c.audio_num_attention_heads, c.audio_attention_head_dim, c.audio_gated_attn,
                   c.rope_type, c.norm_eps, tp),
      // Both directions run at the audio width; the gate follows the query stream's flag.
      a2v_(w, absl::StrCat("transformer_blocks.", index, ".audio_to_video_attn"),
           c.audio_num_attention_heads, c.audio_attention_head_dim, c.gated_attn, c.rope_type,
           c.norm_eps, tp),
      v2a_(w, absl::StrCat("transformer_blocks.", index, ".video_to_audio_attn"),
           c.audio_num_attention_heads, c.audio_attention_head_dim, c.audio_gated_attn, c.rope_type,
           c.norm_eps, tp),
      prompt_modulation_(c.prompt_modulation()),
      gelu_tanh_(c.activation_fn == "gelu-approximate"),
      eps_(c.norm_eps) {
  const std::string b = absl::StrCat("transformer_blocks.", index, ".");
  auto stream = [&](const std::string& p, const char* norm_prefix, const char* ca_norm,
                    bool adaln) {
    Stream s;
    s.table = Get(w, b + p + "scale_shift_table");
    s.prompt_table = OptionalWeight(w, b + p + "prompt_scale_shift_table");
    s.ca_table =
        Get(w, b + (p.empty() ? std::string("video_") : p) + "a2v_cross_attn_scale_shift_table");
    s.norm1 = OptionalWeight(w, b + norm_prefix + "norm1.weight");
    s.norm2 = OptionalWeight(w, b + norm_prefix + "norm2.weight");
    s.norm3 = OptionalWeight(w, b + norm_prefix + "norm3.weight");
    s.ca_norm = OptionalWeight(w, b + ca_norm + ".weight");
    s.ff_in = ColumnSlice(GetLinear(w, b + norm_prefix + "ff.net.0.proj"), tp);
    s.ff_out = RowSlice(GetLinear(w, b + norm_prefix + "ff.net.2"), tp);
    s.cross_attn_adaln = adaln;
    return s;
  };
  video_ = stream("", "", "audio_to_video_norm", c.cross_attn_mod);
  audio_ = stream("audio_", "audio_", "video_to_audio_norm", c.audio_cross_attn_mod);
}

at::Tensor Ltx2Block::Norm(const at::Tensor& x, const at::Tensor& weight) const {
  return RmsNormOptionalWeight(x, weight, eps_);
}

void Ltx2Block::SelfAttention(at::Tensor& x, const Stream& s, const std::vector<at::Tensor>& rows,
                              const Ltx2Attention& attn, const RopeTables& rope,
                              const at::Tensor& mask, const Perturbation& stg,
                              const AttentionSharding& sharding, const LoraCall& lora) const {
  // rows: 0 shift, 1 scale, 2 gate (msa).
  at::Tensor normed = NormModulate(x, s.norm1, rows[1], rows[0], eps_);
  x = AddGated(x, attn.Forward(normed, at::Tensor(), mask, &rope, nullptr, stg, sharding, lora),
               rows[2]);
}

void Ltx2Block::TextCrossAttention(at::Tensor& x, const Stream& s,
                                   const std::vector<at::Tensor>& rows, const Ltx2Attention& attn,
                                   const at::Tensor& context, const at::Tensor& temb_prompt,
                                   const at::Tensor& mask, parallel::Communicator* tp,
                                   const LoraCall& lora) const {
  at::Tensor kv = context;
  if (prompt_modulation_) {  // prompt rows: 0 shift, 1 scale
    std::vector<at::Tensor> prompt = ModulationRows(s.prompt_table, temb_prompt);
    kv = context * (1 + prompt[1]) + prompt[0];
  }
  // rows 6..8: shift, scale, gate of the query (2.3).
  const bool adaln = s.cross_attn_adaln;
  at::Tensor normed = NormModulate(x, s.norm2, adaln ? rows[7] : at::Tensor(),
                                   adaln ? rows[6] : at::Tensor(), eps_);
  AttentionSharding sharding;  // queries local, text whole
  sharding.tp = tp;
  at::Tensor out = attn.Forward(normed, kv, mask, nullptr, nullptr, {}, sharding, lora);
  x = adaln ? AddGated(x, out, rows[8]) : x + out;
}

void Ltx2Block::AudioVideoCrossAttention(at::Tensor& video, at::Tensor& audio,
                                         const Ltx2BlockContext& ctx) const {
  if (ctx.isolate_modalities) return;
  // Both directions read the streams as they were before either update.
  // Rows: 0 a2v scale, 1 a2v shift, 2 v2a scale, 3 v2a shift; row 4 is the gate.
  std::vector<at::Tensor> v = ModulationRows(video_.ca_table.narrow(0, 0, 4), ctx.temb_ca_video);
  std::vector<at::Tensor> a = ModulationRows(audio_.ca_table.narrow(0, 0, 4), ctx.temb_ca_audio);
  at::Tensor a2v_gate = ModulationRows(video_.ca_table.narrow(0, 4, 1), ctx.temb_ca_video_gate)[0];
  at::Tensor v2a_gate = ModulationRows(audio_.ca_table.narrow(0, 4, 1), ctx.temb_ca_audio_gate)[0];

  auto video_in = [&](int scale, int shift) {
    return NormModulate(video, video_.ca_norm, v[scale], v[shift], eps_);
  };
  auto audio_in = [&](int scale, int shift) {
    return NormModulate(audio, audio_.ca_norm, a[scale], a[shift], eps_);
  };
  // a2v: this rank's video queries over the whole (replicated) audio; v2a: the whole audio
  // over the sharded video.
  AttentionSharding a2v_sharding, v2a_sharding;
  a2v_sharding.tp = v2a_sharding.tp = ctx.parallel.tp;
  v2a_sharding.ulysses = ctx.parallel.ulysses;
  v2a_sharding.ring = ctx.parallel.ring;
  v2a_sharding.layout = SequenceLayout::kShardedKeys;
  at::Tensor a2v = a2v_.Forward(video_in(0, 1), audio_in(0, 1), at::Tensor(), &ctx.ca_video_rope,
                                &ctx.ca_audio_rope, {}, a2v_sharding, ctx.lora);
  at::Tensor v2a = v2a_.Forward(audio_in(2, 3), video_in(2, 3), at::Tensor(), &ctx.ca_audio_rope,
                                &ctx.ca_video_rope, {}, v2a_sharding, ctx.lora);
  video = AddGated(video, a2v, a2v_gate);
  audio = AddGated(audio, v2a, v2a_gate);
}

void Ltx2Block::FeedForward(at::Tensor& x, const Stream& s, const std::vector<at::Tensor>& rows,
                            parallel::Communicator* tp, const LoraCall& lora) const {
  // rows: 3 shift, 4 scale, 5 gate (mlp).
  at::Tensor normed = NormModulate(x, s.norm3, rows[4], rows[3], eps_);
  // [B, S, 4·D/tp]; the fused GEMM + GELU only without an update of ff_in.
  at::Tensor h;
  if (gelu_tanh_ && lora.Find(s.ff_in.name) == nullptr) {
    h = LinearGeluTanh(normed, s.ff_in.weight, s.ff_in.bias);
  } else {
    h = gelu_tanh_ ? at::gelu(s.ff_in(normed, lora), "tanh") : at::gelu(s.ff_in(normed, lora));
  }
  x = AddGated(x, RowParallel(s.ff_out, h, tp, lora), rows[5]);
}

void Ltx2Block::Forward(at::Tensor& video, at::Tensor& audio, const Ltx2BlockContext& ctx,
                        bool stg_block) const {
  const std::vector<at::Tensor> v = ModulationRows(video_.table, ctx.temb);
  const std::vector<at::Tensor> a = ModulationRows(audio_.table, ctx.temb_audio);
  const Perturbation none;
  const Perturbation& stg = stg_block ? ctx.stg : none;
  parallel::Communicator* tp = ctx.parallel.tp;
  AttentionSharding video_self;
  video_self.tp = tp;
  video_self.ulysses = ctx.parallel.ulysses;
  video_self.ring = ctx.parallel.ring;
  video_self.layout = SequenceLayout::kShardedSelf;
  video_self.query_offset = ctx.video_offset;
  AttentionSharding audio_self;  // audio is replicated over the Ulysses × ring ranks
  audio_self.tp = tp;
  SelfAttention(video, video_, v, attn1_, ctx.video_rope, ctx.video_self_mask, stg, video_self,
                ctx.lora);
  SelfAttention(audio, audio_, a, audio_attn1_, ctx.audio_rope, at::Tensor(), stg, audio_self,
                ctx.lora);
  TextCrossAttention(video, video_, v, attn2_, ctx.context, ctx.temb_prompt, ctx.context_mask, tp,
                     ctx.lora);
  TextCrossAttention(audio, audio_, a, audio_attn2_, ctx.audio_context, ctx.temb_prompt_audio,
                     ctx.audio_context_mask, tp, ctx.lora);
  AudioVideoCrossAttention(video, audio, ctx);
  FeedForward(video, video_, v, tp, ctx.lora);
  FeedForward(audio, audio_, a, tp, ctx.lora);
}

}  // namespace diffmesh::models::ltx2
