#include "models/ltx2/transformer.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <iterator>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/ops.h"
#include "models/ltx2/lora.h"
#include "models/ltx2/transformer_block.h"
#include "models/ltx2/transformer_parallel.h"
#include "models/parallel/comm.h"
#include "models/parallel/ulysses.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr int64_t kTimestepChannels = 256;  // sinusoidal width of every AdaLN-single embedder
constexpr double kMaxPeriod = 10000.0;
constexpr double kOutputNormEps = 1e-6;  // norm_out / audio_norm_out (fixed in the reference)
constexpr double kMaskBias = -10000.0;   // additive bias of masked text tokens

// Parameters of an LTX2AdaLayerNormSingle with `rows` modulation rows of width `dim`.
void AddAdaLnSingle(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t dim,
                    int64_t rows) {
  AddLinear(specs, prefix + ".emb.timestep_embedder.linear_1", kTimestepChannels, dim);
  AddLinear(specs, prefix + ".emb.timestep_embedder.linear_2", dim, dim);
  AddLinear(specs, prefix + ".linear", dim, rows * dim);
}

// diffusers get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0): [M] → [M, 256]
// fp32 laid out [cos | sin].
at::Tensor TimestepSinusoid(const at::Tensor& t) {
  const int64_t half = kTimestepChannels / 2;
  at::Tensor exponent =
      at::arange(0, half, t.options().dtype(at::kFloat)) * (-std::log(kMaxPeriod)) / half;
  at::Tensor args = t.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);
  return at::cat({at::cos(args), at::sin(args)}, -1);
}

struct AdaLnOut {
  at::Tensor mod;       // [B, T, rows·D]
  at::Tensor embedded;  // [B, T, D], the embedding before SiLU + linear
};

// Linear layer `prefix` with the call's LoRA update, if it has one.
at::Tensor AdaptedLinear(const at::Tensor& x, const WeightMap& w, const std::string& prefix,
                         const LoraCall& lora) {
  return lora.Add(Linear(x, w, prefix), prefix, x);
}

// LTX2AdaLayerNormSingle on timesteps `t` (numel B or B·T).
AdaLnOut AdaLnSingle(const WeightMap& w, const std::string& prefix, const at::Tensor& t,
                     int64_t batch, at::ScalarType dtype, const LoraCall& lora) {
  at::Tensor proj = TimestepSinusoid(t.flatten()).to(dtype);
  at::Tensor emb = AdaptedLinear(proj, w, prefix + ".emb.timestep_embedder.linear_1", lora);
  emb = AdaptedLinear(at::silu(emb), w, prefix + ".emb.timestep_embedder.linear_2", lora);
  at::Tensor mod = AdaptedLinear(at::silu(emb), w, prefix + ".linear", lora);
  return {mod.view({batch, -1, mod.size(-1)}), emb.view({batch, -1, emb.size(-1)})};
}

// (1 − mask)·−10000 as [B, 1, 1, T] (or [B, 1, Nv, Nv] for a 3-D mask).
at::Tensor AdditiveMask(const at::Tensor& mask, at::ScalarType dtype, const at::Device& device) {
  if (!mask.defined()) return {};
  at::Tensor bias = (1 - mask.to(device, dtype)) * kMaskBias;
  return mask.dim() == 2 ? bias.view({bias.size(0), 1, 1, bias.size(1)}) : bias.unsqueeze(1);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parameters and construction

namespace {

void AddBlockParams(std::vector<ParamSpec>& specs, const Ltx2TransformerConfig& c, int64_t i) {
  const std::string b = absl::StrCat("transformer_blocks.", i, ".");
  const int64_t d = c.inner_dim(), ad = c.audio_inner_dim();
  const int64_t h = c.num_attention_heads, hd = c.attention_head_dim;
  const int64_t ah = c.audio_num_attention_heads, ahd = c.audio_attention_head_dim;
  const bool bias = c.attention_bias, out_bias = c.attention_out_bias;
  AddAttentionParams(specs, b + "attn1", d, d, h, hd, bias, out_bias, c.gated_attn);
  AddAttentionParams(specs, b + "audio_attn1", ad, ad, ah, ahd, bias, out_bias, c.audio_gated_attn);
  AddAttentionParams(specs, b + "attn2", d, c.cross_attention_dim, h, hd, bias, out_bias,
                     c.gated_attn);
  AddAttentionParams(specs, b + "audio_attn2", ad, c.audio_cross_attention_dim, ah, ahd, bias,
                     out_bias, c.audio_gated_attn);
  AddAttentionParams(specs, b + "audio_to_video_attn", d, ad, ah, ahd, bias, out_bias,
                     c.gated_attn);
  AddAttentionParams(specs, b + "video_to_audio_attn", ad, d, ah, ahd, bias, out_bias,
                     c.audio_gated_attn);
  AddLinear(specs, b + "ff.net.0.proj", d, 4 * d, c.ff_bias);
  AddLinear(specs, b + "ff.net.2", 4 * d, d, c.ff_bias);
  AddLinear(specs, b + "audio_ff.net.0.proj", ad, 4 * ad, c.audio_ff_bias);
  AddLinear(specs, b + "audio_ff.net.2", 4 * ad, ad, c.audio_ff_bias);
  specs.push_back({b + "scale_shift_table", {c.cross_attn_mod ? 9 : 6, d}});
  specs.push_back({b + "audio_scale_shift_table", {c.audio_cross_attn_mod ? 9 : 6, ad}});
  if (c.prompt_modulation()) {
    specs.push_back({b + "prompt_scale_shift_table", {2, d}});
    specs.push_back({b + "audio_prompt_scale_shift_table", {2, ad}});
  }
  specs.push_back({b + "video_a2v_cross_attn_scale_shift_table", {5, d}});
  specs.push_back({b + "audio_a2v_cross_attn_scale_shift_table", {5, ad}});
  if (c.norm_elementwise_affine) {
    for (const char* n : {"norm1", "norm2", "norm3", "audio_to_video_norm"}) {
      specs.push_back({b + n + ".weight", {d}, Init::kOnes});
    }
    for (const char* n : {"audio_norm1", "audio_norm2", "audio_norm3", "video_to_audio_norm"}) {
      specs.push_back({b + n + ".weight", {ad}, Init::kOnes});
    }
  }
}

}  // namespace

std::vector<ParamSpec> Ltx2Transformer::Params(const Ltx2TransformerConfig& c) {
  const int64_t d = c.inner_dim(), ad = c.audio_inner_dim();
  std::vector<ParamSpec> specs;
  AddLinear(specs, "proj_in", c.in_channels, d);
  AddLinear(specs, "audio_proj_in", c.audio_in_channels, ad);
  if (c.use_keyframes_abs_pos_embedding) {
    specs.push_back({"keyframes_abs_pos_embedding", {1, d}, Init::kZeros});
  }
  if (c.use_prompt_embeddings) {
    AddLinear(specs, "caption_projection.linear_1", c.caption_channels, d);
    AddLinear(specs, "caption_projection.linear_2", d, d);
    AddLinear(specs, "audio_caption_projection.linear_1", c.caption_channels, ad);
    AddLinear(specs, "audio_caption_projection.linear_2", ad, ad);
  }
  AddAdaLnSingle(specs, "time_embed", d, c.cross_attn_mod ? 9 : 6);
  AddAdaLnSingle(specs, "audio_time_embed", ad, c.audio_cross_attn_mod ? 9 : 6);
  AddAdaLnSingle(specs, "av_cross_attn_video_scale_shift", d, 4);
  AddAdaLnSingle(specs, "av_cross_attn_audio_scale_shift", ad, 4);
  AddAdaLnSingle(specs, "av_cross_attn_video_a2v_gate", d, 1);
  AddAdaLnSingle(specs, "av_cross_attn_audio_v2a_gate", ad, 1);
  specs.push_back({"scale_shift_table", {2, d}});
  specs.push_back({"audio_scale_shift_table", {2, ad}});
  if (c.prompt_modulation() && c.use_prompt_adaln_single) {
    AddAdaLnSingle(specs, "prompt_adaln", d, 2);
    AddAdaLnSingle(specs, "audio_prompt_adaln", ad, 2);
  }
  for (int64_t i = 0; i < c.num_layers; ++i) AddBlockParams(specs, c, i);
  AddLinear(specs, "proj_out", d, c.out_channels);
  AddLinear(specs, "audio_proj_out", ad, c.audio_out_channels);
  return specs;
}

Ltx2Transformer::Ltx2Transformer(const Ltx2TransformerConfig& config, WeightMap weights,
                                 const Ltx2ParallelContext& parallel)
    : config_(config), parallel_(parallel), weights_(std::move(weights)) {
  dtype_ = Get(weights_, "proj_in.weight").scalar_type();
  const TpSlice tp = SliceOf(parallel_.tp);
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    blocks_.push_back(std::make_unique<Ltx2Block>(weights_, config_, i, tp));
  }
  if (tp.size > 1) {
    // The blocks hold their own slices (and handles to the unsplit tables): free the whole
    // block weights.
    for (auto it = weights_.begin(); it != weights_.end();) {
      it = it->first.rfind("transformer_blocks.", 0) == 0 ? weights_.erase(it) : std::next(it);
    }
  }
}

Ltx2Transformer::~Ltx2Transformer() = default;

int Ltx2Transformer::tp_size() const { return GroupSize(parallel_.tp); }
int Ltx2Transformer::ulysses_size() const { return GroupSize(parallel_.ulysses); }
int Ltx2Transformer::ring_size() const { return GroupSize(parallel_.ring); }

absl::Status Ltx2Transformer::CheckParallel(const Ltx2TransformerConfig& c,
                                            const Ltx2ParallelContext& parallel) {
  const int tp = GroupSize(parallel.tp);
  if (tp > 1 && (c.num_attention_heads % tp != 0 || c.audio_num_attention_heads % tp != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ltx2 transformer: tensor-parallel degree ", tp, " does not divide the ",
        c.num_attention_heads, " video and ", c.audio_num_attention_heads, " audio heads"));
  }
  if (parallel.tp != nullptr && parallel.tp == parallel.ulysses && tp > 1) {
    return absl::InvalidArgumentError(
        "ltx2 transformer: the tp and Ulysses groups must be different communicators");
  }
  if (parallel.ring != nullptr && GroupSize(parallel.ring) > 1 &&
      (parallel.ring == parallel.tp || parallel.ring == parallel.ulysses)) {
    return absl::InvalidArgumentError(
        "ltx2 transformer: the ring group must be a communicator of its own (not the tp or "
        "Ulysses group)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Ltx2Transformer>> Ltx2Transformer::Create(
    const Ltx2TransformerConfig& config, WeightMap weights, const Ltx2ParallelContext& parallel) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  RETURN_IF_ERROR(CheckParallel(config, parallel));
  return std::unique_ptr<Ltx2Transformer>(
      new Ltx2Transformer(config, std::move(weights), parallel));
}

absl::StatusOr<std::unique_ptr<Ltx2Transformer>> Ltx2Transformer::FromConfig(
    const std::string& dir, at::ScalarType dtype, const Ltx2ParallelContext& parallel) {
  ASSIGN_OR_RETURN(Ltx2TransformerConfig config,
                   Ltx2TransformerConfig::FromFile(dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(WeightMap weights, LoadWeights(*checkpoint, Params(config), dtype));
  return Create(config, std::move(weights), parallel);
}

absl::StatusOr<std::unique_ptr<Ltx2Transformer>> Ltx2Transformer::InitSeeded(
    const Ltx2TransformerConfig& config, uint64_t seed, const Ltx2ParallelContext& parallel) {
  return Create(config, models::InitSeeded(Params(config), seed), parallel);
}

absl::StatusOr<std::unique_ptr<Ltx2Transformer>> Ltx2Transformer::Parallelize(
    std::unique_ptr<Ltx2Transformer> whole, const Ltx2ParallelContext& parallel) {
  if (whole == nullptr) return absl::InvalidArgumentError("ltx2 transformer: no model");
  if (whole->tp_size() > 1) {
    return absl::InvalidArgumentError(
        "ltx2 transformer: Parallelize needs a model with whole weights (tp 1)");
  }
  RETURN_IF_ERROR(CheckParallel(whole->config_, parallel));
  Ltx2TransformerConfig config = whole->config_;
  WeightMap weights = std::move(whole->weights_);
  whole.reset();  // drops the old blocks' handles before the slices are cut
  return std::unique_ptr<Ltx2Transformer>(
      new Ltx2Transformer(config, std::move(weights), parallel));
}

// ---------------------------------------------------------------------------------------------
// Rotary modules

RopeSpec Ltx2Transformer::VideoRopeSpec() const {
  const auto& c = config_;
  return {c.inner_dim(),
          {static_cast<double>(c.pos_embed_max_pos), static_cast<double>(c.base_height),
           static_cast<double>(c.base_width)},
          c.rope_theta,
          c.rope_double_precision,
          c.rope_type,
          c.num_attention_heads};
}

RopeSpec Ltx2Transformer::AudioRopeSpec() const {
  const auto& c = config_;
  return {c.audio_inner_dim(), {static_cast<double>(c.audio_pos_embed_max_pos)},
          c.rope_theta,        c.rope_double_precision,
          c.rope_type,         c.audio_num_attention_heads};
}

// The cross-modal modules see only the time axis, normalised by the larger of the two maxima;
// the video one cuts its split table by VIDEO heads although a2v attention runs audio heads.
RopeSpec Ltx2Transformer::CrossVideoRopeSpec() const {
  const auto& c = config_;
  const double max_t =
      static_cast<double>(std::max(c.pos_embed_max_pos, c.audio_pos_embed_max_pos));
  return {c.audio_cross_attention_dim, {max_t},     c.rope_theta,
          c.rope_double_precision,     c.rope_type, c.num_attention_heads};
}

RopeSpec Ltx2Transformer::CrossAudioRopeSpec() const {
  RopeSpec spec = CrossVideoRopeSpec();
  spec.num_heads = config_.audio_num_attention_heads;
  return spec;
}

VideoCoordSpec Ltx2Transformer::VideoCoords() const {
  return {config_.patch_size, config_.patch_size_t, config_.vae_scale_factors,
          config_.causal_offset};
}

AudioCoordSpec Ltx2Transformer::AudioCoords() const {
  return {config_.audio_patch_size_t, config_.audio_scale_factor, config_.causal_offset,
          config_.audio_hop_length, config_.audio_sampling_rate};
}

// ---------------------------------------------------------------------------------------------
// Forward

void Ltx2Transformer::BuildRope(const Ltx2TransformerInputs& in, const Ltx2VideoShard& shard,
                                Ltx2BlockContext& ctx) const {
  const at::Device device = Get(weights_, "proj_in.weight").device();
  const int64_t batch = in.hidden_states.size(0);
  at::Tensor video = in.video_coords.defined()
                         ? in.video_coords.to(device, at::kFloat)
                         : PrepareVideoCoords(batch, in.num_frames, in.height, in.width, in.fps,
                                              VideoCoords(), device);
  video = video.narrow(2, shard.token_offset, shard.token_count);  // [B, 3, n, 2]: own frames
  const int64_t audio_frames = in.audio_num_frames > 0
                                   ? in.audio_num_frames
                                   : in.audio_hidden_states.size(1) * config_.audio_patch_size_t;
  at::Tensor audio = in.audio_coords.defined()
                         ? in.audio_coords.to(device, at::kFloat)
                         : PrepareAudioCoords(batch, audio_frames, AudioCoords(), device);
  const TpSlice tp = SliceOf(parallel_.tp);
  const RopeType type = config_.rope_type;
  ctx.video_rope = SliceRope(ComputeRope(VideoRopeSpec(), video), type, tp);
  ctx.audio_rope = SliceRope(ComputeRope(AudioRopeSpec(), audio), type, tp);
  ctx.ca_video_rope = SliceRope(ComputeRope(CrossVideoRopeSpec(), video.narrow(1, 0, 1)), type, tp);
  ctx.ca_audio_rope = SliceRope(ComputeRope(CrossAudioRopeSpec(), audio.narrow(1, 0, 1)), type, tp);
}

void Ltx2Transformer::EmbedTimesteps(const Ltx2TransformerInputs& in,
                                     const Ltx2ForwardOptions& options,
                                     Ltx2BlockContext& ctx) const {
  const at::Device device = Get(weights_, "proj_in.weight").device();
  const int64_t batch = in.hidden_states.size(0);
  auto dev = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  const at::Tensor timestep = dev(in.timestep);
  const at::Tensor audio_timestep = in.audio_timestep.defined() ? dev(in.audio_timestep) : timestep;
  const at::Tensor sigma = dev(in.sigma);
  const at::Tensor audio_sigma = in.audio_sigma.defined() ? dev(in.audio_sigma) : sigma;

  AdaLnOut video = AdaLnSingle(weights_, "time_embed", timestep, batch, dtype_, ctx.lora);
  AdaLnOut audio =
      AdaLnSingle(weights_, "audio_time_embed", audio_timestep, batch, dtype_, ctx.lora);
  ctx.temb = video.mod;
  ctx.embedded_timestep = video.embedded;
  ctx.temb_audio = audio.mod;
  ctx.audio_embedded_timestep = audio.embedded;
  if (config_.prompt_modulation() && config_.use_prompt_adaln_single) {
    ctx.temb_prompt = AdaLnSingle(weights_, "prompt_adaln", sigma, batch, dtype_, ctx.lora).mod;
    ctx.temb_prompt_audio =
        AdaLnSingle(weights_, "audio_prompt_adaln", audio_sigma, batch, dtype_, ctx.lora).mod;
  }
  // Cross-modal modulation follows the other stream's sigma (2.3) or the stream's own timestep.
  const double gate_scale =
      config_.cross_attn_timestep_scale_multiplier / config_.timestep_scale_multiplier;
  const at::Tensor video_ca_t = options.use_cross_timestep ? audio_sigma : timestep;
  const at::Tensor audio_ca_t = options.use_cross_timestep ? sigma : audio_timestep;
  ctx.temb_ca_video =
      AdaLnSingle(weights_, "av_cross_attn_video_scale_shift", video_ca_t, batch, dtype_, ctx.lora)
          .mod;
  ctx.temb_ca_video_gate = AdaLnSingle(weights_, "av_cross_attn_video_a2v_gate",
                                       video_ca_t.flatten() * gate_scale, batch, dtype_, ctx.lora)
                               .mod;
  ctx.temb_ca_audio =
      AdaLnSingle(weights_, "av_cross_attn_audio_scale_shift", audio_ca_t, batch, dtype_, ctx.lora)
          .mod;
  ctx.temb_ca_audio_gate = AdaLnSingle(weights_, "av_cross_attn_audio_v2a_gate",
                                       audio_ca_t.flatten() * gate_scale, batch, dtype_, ctx.lora)
                               .mod;
}

void Ltx2Transformer::PrepareContext(const Ltx2TransformerInputs& in, Ltx2BlockContext& ctx) const {
  const at::Device device = Get(weights_, "proj_in.weight").device();
  at::Tensor video = in.encoder_hidden_states.to(device, dtype_);
  at::Tensor audio = in.audio_encoder_hidden_states.to(device, dtype_);
  if (config_.use_prompt_embeddings) {  // LTX-2.0: PixArt-style caption projection
    auto project = [&](const at::Tensor& x, const std::string& p) {
      at::Tensor h = at::gelu(AdaptedLinear(x, weights_, p + ".linear_1", ctx.lora), "tanh");
      return AdaptedLinear(h, weights_, p + ".linear_2", ctx.lora);
    };
    video = project(video, "caption_projection");
    audio = project(audio, "audio_caption_projection");
  }
  ctx.context = video;
  ctx.audio_context = audio;
  ctx.context_mask = AdditiveMask(in.encoder_attention_mask, dtype_, device);
  ctx.audio_context_mask = AdditiveMask(in.audio_encoder_attention_mask, dtype_, device);
  ctx.video_self_mask = AdditiveMask(in.video_self_attention_mask, dtype_, device);
}

at::Tensor Ltx2Transformer::Output(const at::Tensor& hidden, const at::Tensor& embedded,
                                   const std::string& prefix, const LoraCall& lora) const {
  const at::Tensor& table = Get(weights_, prefix + "scale_shift_table");  // [2, D]
  // [1, 1, 2, D] + [B, T, 1, D]: row 0 shift, row 1 scale.
  at::Tensor values = table.view({1, 1, 2, table.size(1)}) + embedded.unsqueeze(2);
  at::Tensor shift = values.select(2, 0), scale = values.select(2, 1);
  at::Tensor x = at::layer_norm(hidden, {hidden.size(-1)}, {}, {}, kOutputNormEps);
  x = x * (1 + scale) + shift;
  return AdaptedLinear(x, weights_, prefix + "proj_out", lora);
}

absl::StatusOr<Ltx2VideoShard> Ltx2Transformer::VideoShard(const Ltx2TransformerInputs& in) const {
  if (!in.hidden_states.defined() || in.hidden_states.dim() != 3) {
    return absl::InvalidArgumentError("ltx2 transformer input 'hidden_states': missing or not 3-D");
  }
  const int64_t tokens = in.hidden_states.size(1);
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t frames = in.num_frames > 0 ? ceil_div(in.num_frames, config_.patch_size_t) : 0;
  const int u = ulysses_size(), r = ring_size(), shards = u * r;
  if (shards == 1) return Ltx2VideoShard{0, frames, 0, tokens};
  const int64_t per_frame = ceil_div(std::max<int64_t>(in.height, 0), config_.patch_size) *
                            ceil_div(std::max<int64_t>(in.width, 0), config_.patch_size);
  if (frames <= 0 || per_frame <= 0 || frames * per_frame != tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ltx2 transformer input 'num_frames/height/width': ", in.num_frames, "x", in.height, "x",
        in.width, " latent grid does not give the ", tokens,
        " video tokens; a sequence-parallel (Ulysses × ring) forward needs it (also with "
        "video_coords) to split the video by latent frames"));
  }
  if (frames % shards != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ltx2 transformer: ", frames, " latent frames do not divide by the sequence-parallel "
        "degree ", shards, " (Ulysses degree ", u, " × ring degree ", r,
        "; the video is sharded by whole latent frames, without padding); use a frame count "
        "with a multiple of ", shards, " latent frames or degrees whose product divides ",
        frames));
  }
  // Shard u + U·r: the U Ulysses ranks of ring rank r hold one contiguous ring block.
  const int64_t count = frames / shards;
  const int64_t shard = (u > 1 ? parallel_.ulysses->rank() : 0) +
                        static_cast<int64_t>(u) * (r > 1 ? parallel_.ring->rank() : 0);
  return Ltx2VideoShard{shard * count, count, shard * count * per_frame, count * per_frame};
}

absl::StatusOr<Ltx2TransformerOutputs> Ltx2Transformer::Forward(
    const Ltx2TransformerInputs& in, const Ltx2ForwardOptions& options) const {
  RETURN_IF_ERROR(ValidateInputs(in, options));
  ASSIGN_OR_RETURN(const Ltx2VideoShard shard, VideoShard(in));
  const at::Device device = Get(weights_, "proj_in.weight").device();
  if (const Ltx2Lora* lora = options.lora; lora != nullptr) {
    const TpSlice tp = SliceOf(parallel_.tp);
    if (lora->tp().rank != tp.rank || lora->tp().size != tp.size || lora->dtype() != dtype_ ||
        lora->device() != device || !std::isfinite(options.lora_strength)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ltx2 transformer: LoRA ", lora->source(), " was loaded for tp rank ", lora->tp().rank,
          "/", lora->tp().size, ", ", c10::toString(lora->dtype()), " on ", lora->device().str(),
          "; this model is tp rank ", tp.rank, "/", tp.size, ", ", c10::toString(dtype_), " on ",
          device.str(), " (strength ", options.lora_strength, ")"));
    }
  }
  const int64_t batch = in.hidden_states.size(0), nv = in.hidden_states.size(1);
  // This rank's frames of every per-video-token input (everything else is whole).
  Ltx2TransformerInputs local = in;
  const bool seq_sharded = shard.token_count != nv;
  if (seq_sharded) {
    local.hidden_states = in.hidden_states.narrow(1, shard.token_offset, shard.token_count);
    if (in.timestep.dim() == 2 && in.timestep.size(1) == nv && in.timestep.numel() != batch) {
      local.timestep = in.timestep.narrow(1, shard.token_offset, shard.token_count);
    }
  }
  Ltx2BlockContext ctx;
  ctx.parallel = parallel_;
  ctx.video_offset = shard.token_offset;
  ctx.lora = {options.lora, options.lora_strength};
  BuildRope(in, shard, ctx);
  at::Tensor video =
      AdaptedLinear(local.hidden_states.to(device, dtype_), weights_, "proj_in", ctx.lora);
  at::Tensor audio =
      AdaptedLinear(in.audio_hidden_states.to(device, dtype_), weights_, "audio_proj_in", ctx.lora);
  EmbedTimesteps(local, options, ctx);
  PrepareContext(in, ctx);  // the video self-attention mask stays whole: [B, 1, Nv, Nv]
  ctx.isolate_modalities = options.isolate_modalities;

  // STG acts only where the config enables the perturbed processor (as diffusers does).
  const std::set<int64_t> stg_blocks(options.stg_blocks.begin(), options.stg_blocks.end());
  const bool stg = config_.perturbed_attn && !stg_blocks.empty();
  if (stg) {
    ctx.stg.active = true;
    ctx.stg.mask = options.perturbation_mask.defined()
                       ? options.perturbation_mask.to(device, dtype_).view({batch, 1, 1})
                       : at::zeros({batch, 1, 1}, video.options());
    ctx.stg.all_perturbed = ctx.stg.mask.eq(0).all().item<bool>();
  }
  auto run = [&]() -> absl::StatusOr<Ltx2TransformerOutputs> {
    for (int64_t i = 0; i < config_.num_layers; ++i) {
      blocks_[i]->Forward(video, audio, ctx, stg && stg_blocks.count(i) > 0);
      if (options.block_observer) options.block_observer(i, video, audio);
    }
    Ltx2TransformerOutputs out{Output(video, ctx.embedded_timestep, "", ctx.lora),
                               Output(audio, ctx.audio_embedded_timestep, "audio_", ctx.lora)};
    if (seq_sharded && options.gather_video) {
      // Ulysses first (the ring block), then ring: shard order u + U·r.
      for (parallel::Communicator* group : {parallel_.ulysses, parallel_.ring}) {
        if (GroupSize(group) == 1) continue;
        ASSIGN_OR_RETURN(out.video, parallel::GatherSequence(*group, out.video, 1));
      }
    }
    return out;
  };
  if (tp_size() == 1 && ulysses_size() == 1 && ring_size() == 1) return run();
  // Collective failures inside the blocks surface as c10::Error.
  try {
    return run();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("ltx2 transformer (sharded forward): ", e.what()));
  }
}

}  // namespace diffmesh::models::ltx2
