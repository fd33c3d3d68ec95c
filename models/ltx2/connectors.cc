#include "models/ltx2/connectors.h"

#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr double kNormEps = 1e-6;  // every RMSNorm of the connector towers
constexpr double kPi = 3.141592653589793;  // Python's math.pi / torch.pi

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "ltx2 connectors", key, out);
}

// `num_learnable_registers: null` disables the registers, which the plain reader would read as
// "absent, keep the default".
absl::Status ReadRegisters(const nlohmann::json& json, const char* key, int64_t& out) {
  auto it = json.find(key);
  if (it != json.end() && it->is_null()) {
    out = 0;
    return absl::OkStatus();
  }
  return ReadField(json, key, out);
}

// torch.nn.RMSNorm without a weight: x·rsqrt(mean(x², last) + eps), statistics in fp32.
at::Tensor PlainRmsNorm(const at::Tensor& x, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(x.scalar_type());
}

double FinfoMax(at::ScalarType type) {
  switch (type) {
    case at::kHalf:
      return 65504.0;
    case at::kBFloat16:
      return 3.3895313892515355e38;
    case at::kDouble:
      return std::numeric_limits<double>::max();
    default:
      return std::numeric_limits<float>::max();
  }
}

// LTX2RotaryPosEmbed1d: positions arange(T)/base_seq_len mapped to [−1, 1), frequencies
// theta^linspace(0, 1, dim/2)·π/2 (computed in fp64 when double_precision, stored as fp32).
// Split: cos/sin [1, H, T, head_dim/2], each head taking its contiguous slice of the
// frequencies. Interleaved: cos/sin [1, T, dim], each frequency repeated for its (even, odd) pair,
// dim % 2 leading entries padded with cos 1 / sin 0.
std::pair<at::Tensor, at::Tensor> Rope1d(const ConnectorsConfig& c, int64_t dim, int64_t heads,
                                         int64_t seq_len, const at::Device& device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor grid = at::arange(seq_len, f32) / static_cast<double>(c.connector_rope_base_seq_len);
  const int64_t n = dim / 2;
  at::Tensor pow_indices =
      at::pow(c.rope_theta, at::linspace(0.0, 1.0, n,
                                         f32.dtype(c.rope_double_precision ? at::kDouble
                                                                           : at::kFloat)));
  at::Tensor freqs = (pow_indices * kPi / 2.0).to(at::kFloat);       // [n]
  freqs = (grid.unsqueeze(-1) * 2 - 1) * freqs;                        // [T, n]
  at::Tensor cos = freqs.cos(), sin = freqs.sin();
  if (c.rope_type == "split") {
    // [T, n] → [T, H, n/H] → [1, H, T, n/H]
    cos = cos.reshape({seq_len, heads, -1}).transpose(0, 1).unsqueeze(0);
    sin = sin.reshape({seq_len, heads, -1}).transpose(0, 1).unsqueeze(0);
    return {cos, sin};
  }
  cos = cos.repeat_interleave(2, -1);
  sin = sin.repeat_interleave(2, -1);
  if (dim % 2 != 0) {
    cos = at::cat({at::ones({seq_len, dim % 2}, f32), cos}, -1);
    sin = at::cat({at::zeros({seq_len, dim % 2}, f32), sin}, -1);
  }
  return {cos.unsqueeze(0), sin.unsqueeze(0)};
}

// apply_split_rotary_emb on x [B, T, H·hd]: per head, halves (a, b) → (a·cos − b·sin,
// b·cos + a·sin) in fp32.
at::Tensor ApplySplitRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                          int64_t heads) {
  const int64_t b = x.size(0), t = x.size(1);
  at::Tensor xf = x.to(at::kFloat).reshape({b, t, heads, -1}).transpose(1, 2);  // [B, H, T, hd]
  const int64_t r = xf.size(-1) / 2;
  at::Tensor first = xf.narrow(-1, 0, r), second = xf.narrow(-1, r, r);
  at::Tensor out = at::cat({first * cos - sin * second, second * cos + sin * first}, -1);
  return out.transpose(1, 2).reshape({b, t, -1}).to(x.scalar_type());
}

// apply_interleaved_rotary_emb on x [B, T, C]: pairs (x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin).
at::Tensor ApplyInterleavedRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  at::Tensor pairs = x.unflatten(2, {-1, 2});
  at::Tensor real = pairs.select(-1, 0), imag = pairs.select(-1, 1);
  at::Tensor rotated = at::stack({-imag, real}, -1).flatten(2);
  return (x.to(at::kFloat) * cos + rotated.to(at::kFloat) * sin).to(x.scalar_type());
}

}  // namespace

absl::StatusOr<ConnectorsConfig> ConnectorsConfig::FromJson(const nlohmann::json& json) {
  if (!json.is_object()) return absl::InvalidArgumentError("ltx2 connectors config: not an object");
  ConnectorsConfig c;
  RETURN_IF_ERROR(ReadField(json, "caption_channels", c.caption_channels));
  RETURN_IF_ERROR(ReadField(json, "text_proj_in_factor", c.text_proj_in_factor));
  RETURN_IF_ERROR(
      ReadField(json, "video_connector_num_attention_heads", c.video.num_attention_heads));
  RETURN_IF_ERROR(
      ReadField(json, "video_connector_attention_head_dim", c.video.attention_head_dim));
  RETURN_IF_ERROR(ReadField(json, "video_connector_num_layers", c.video.num_layers));
  RETURN_IF_ERROR(ReadRegisters(json, "video_connector_num_learnable_registers",
                                c.video.num_learnable_registers));
  RETURN_IF_ERROR(ReadField(json, "video_gated_attn", c.video.gated_attn));
  RETURN_IF_ERROR(
      ReadField(json, "audio_connector_num_attention_heads", c.audio.num_attention_heads));
  RETURN_IF_ERROR(
      ReadField(json, "audio_connector_attention_head_dim", c.audio.attention_head_dim));
  RETURN_IF_ERROR(ReadField(json, "audio_connector_num_layers", c.audio.num_layers));
  RETURN_IF_ERROR(ReadRegisters(json, "audio_connector_num_learnable_registers",
                                c.audio.num_learnable_registers));
  RETURN_IF_ERROR(ReadField(json, "audio_gated_attn", c.audio.gated_attn));
  RETURN_IF_ERROR(ReadField(json, "connector_rope_base_seq_len", c.connector_rope_base_seq_len));
  RETURN_IF_ERROR(ReadField(json, "rope_theta", c.rope_theta));
  RETURN_IF_ERROR(ReadField(json, "rope_double_precision", c.rope_double_precision));
  RETURN_IF_ERROR(ReadField(json, "rope_type", c.rope_type));
  RETURN_IF_ERROR(ReadField(json, "per_modality_projections", c.per_modality_projections));
  RETURN_IF_ERROR(ReadField(json, "video_hidden_dim", c.video_hidden_dim));
  RETURN_IF_ERROR(ReadField(json, "audio_hidden_dim", c.audio_hidden_dim));
  RETURN_IF_ERROR(ReadField(json, "proj_bias", c.proj_bias));
  bool causal = false;
  RETURN_IF_ERROR(ReadField(json, "causal_temporal_positioning", causal));
  // The reference stores causal_temporal_positioning but never reads it in forward.

  if (c.rope_type != "split" && c.rope_type != "interleaved") {
    return absl::InvalidArgumentError(absl::StrCat(
        "ltx2 connectors config: rope_type must be 'split' or 'interleaved', got '", c.rope_type,
        "'"));
  }
  for (const ConnectorTowerConfig* t : {&c.video, &c.audio}) {
    if (t->num_attention_heads <= 0 || t->attention_head_dim <= 0 || t->num_layers < 0 ||
        t->num_learnable_registers < 0) {
      return absl::InvalidArgumentError("ltx2 connectors config: bad connector tower size");
    }
  }
  if (c.caption_channels <= 0 || c.text_proj_in_factor <= 0 || c.video_hidden_dim <= 0 ||
      c.audio_hidden_dim <= 0 || c.connector_rope_base_seq_len <= 0) {
    return absl::InvalidArgumentError("ltx2 connectors config: non-positive size");
  }
  return c;
}

absl::StatusOr<ConnectorsConfig> ConnectorsConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

at::Tensor PerLayerMaskedMeanNorm(const at::Tensor& x, const at::Tensor& sequence_lengths,
                                  PaddingSide padding_side, double scale_factor, double eps) {
  TORCH_CHECK(x.dim() == 4, "per-layer norm input must be [B, T, D, L], got ", x.sizes());
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2);
  at::Tensor lengths = sequence_lengths.to(x.device(), at::kLong).view({b, 1});
  at::Tensor pos = at::arange(t, x.options().dtype(at::kLong)).unsqueeze(0);  // [1, T]
  at::Tensor valid = padding_side == PaddingSide::kLeft ? pos >= (t - lengths) : pos < lengths;
  at::Tensor mask = valid.view({b, t, 1, 1});
  at::Tensor count = (lengths * d).view({b, 1, 1, 1});
  // Sum over (t, d), divided by n·D + eps: the reference divides by an int64 tensor plus a
  // Python float, i.e. in the default float dtype.
  at::Tensor mean =
      x.masked_fill(mask.logical_not(), 0.0).sum({1, 2}, /*keepdim=*/true) /
      (count.to(at::kFloat) + eps);
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor lo = x.masked_fill(mask.logical_not(), inf).amin({1, 2}, /*keepdim=*/true);
  at::Tensor hi = x.masked_fill(mask.logical_not(), -inf).amax({1, 2}, /*keepdim=*/true);
  at::Tensor y = (x - mean) / (hi - lo + eps) * scale_factor;
  y = y.flatten(2).masked_fill(valid.view({b, t, 1}).logical_not(), 0.0);
  return y.to(x.scalar_type());
}

at::Tensor PerTokenRmsNorm(const at::Tensor& x, const at::Tensor& attention_mask, double eps) {
  TORCH_CHECK(x.dim() == 4, "per-token norm input must be [B, T, D, L], got ", x.sizes());
  at::Tensor y = x * at::rsqrt(x.pow(2).mean(2, /*keepdim=*/true) + eps);
  y = y.flatten(2, 3);
  at::Tensor keep = attention_mask.to(x.device()).to(at::kBool).unsqueeze(-1);
  return at::where(keep, y, at::zeros_like(y));
}

std::vector<ParamSpec> TextConnectors::Params(const ConnectorsConfig& c) {
  std::vector<ParamSpec> specs;
  const int64_t in = c.text_encoder_dim();
  if (c.per_modality_projections) {
    AddLinear(specs, "video_text_proj_in", in, c.video_hidden_dim, c.proj_bias);
    AddLinear(specs, "audio_text_proj_in", in, c.audio_hidden_dim, c.proj_bias);
  } else {
    AddLinear(specs, "text_proj_in", in, c.caption_channels, c.proj_bias);
  }
  for (const auto& [name, tower] : {std::pair<std::string, const ConnectorTowerConfig*>{
                                        "video_connector", &c.video},
                                    {"audio_connector", &c.audio}}) {
    const int64_t dim = tower->inner_dim();
    if (tower->num_learnable_registers > 0) {
      // torch.rand·2 − 1 in the reference.
      specs.push_back({name + ".learnable_registers", {tower->num_learnable_registers, dim},
                       Init::kNormal, 0.5f});
    }
    for (int64_t i = 0; i < tower->num_layers; ++i) {
      const std::string blk = absl::StrCat(name, ".transformer_blocks.", i, ".");
      for (const char* p : {"to_q", "to_k", "to_v"}) AddLinear(specs, blk + "attn1." + p, dim, dim);
      AddLinear(specs, blk + "attn1.to_out.0", dim, dim);
      specs.push_back({blk + "attn1.norm_q.weight", {dim}, Init::kOnes, 0.0f});
      specs.push_back({blk + "attn1.norm_k.weight", {dim}, Init::kOnes, 0.0f});
      if (tower->gated_attn) {
        AddLinear(specs, blk + "attn1.to_gate_logits", dim, tower->num_attention_heads);
      }
      AddLinear(specs, blk + "ff.net.0.proj", dim, 4 * dim);
      AddLinear(specs, blk + "ff.net.2", 4 * dim, dim);
    }
  }
  return specs;
}

absl::StatusOr<std::unique_ptr<TextConnectors>> TextConnectors::Create(
    const ConnectorsConfig& config, WeightMap weights) {
  for (const ConnectorTowerConfig* t : {&config.video, &config.audio}) {
    if (config.rope_type == "split" && t->attention_head_dim % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ltx2 connectors: split RoPE needs an even attention_head_dim, got ",
          t->attention_head_dim));
    }
    if (!config.per_modality_projections && t->inner_dim() != config.caption_channels) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ltx2 connectors: without per_modality_projections each connector's width (",
          t->inner_dim(), ") must equal caption_channels (", config.caption_channels, ")"));
    }
    if (config.per_modality_projections &&
        t->inner_dim() != (t == &config.video ? config.video_hidden_dim : config.audio_hidden_dim)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ltx2 connectors: connector width ", t->inner_dim(),
          " differs from its projection width (video_hidden_dim / audio_hidden_dim)"));
    }
  }
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  return std::unique_ptr<TextConnectors>(new TextConnectors(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<TextConnectors>> TextConnectors::Load(
    const std::string& component_dir, at::ScalarType dtype) {
  ASSIGN_OR_RETURN(ConnectorsConfig config,
                   ConnectorsConfig::FromFile(component_dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(component_dir));
  ASSIGN_OR_RETURN(WeightMap weights, LoadWeights(*checkpoint, Params(config), dtype));
  return Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<TextConnectors>> TextConnectors::CreateSeeded(
    const ConnectorsConfig& config, uint64_t seed) {
  return Create(config, InitSeeded(Params(config), seed));
}

std::pair<at::Tensor, at::Tensor> TextConnectors::Tower(const std::string& prefix,
                                                        const ConnectorTowerConfig& tower,
                                                        at::Tensor x,
                                                        at::Tensor additive_mask) const {
  const int64_t b = x.size(0), t = x.size(1), dim = x.size(2);
  const int64_t heads = tower.num_attention_heads, hd = tower.attention_head_dim;
  const int64_t regs = tower.num_learnable_registers;
  if (regs > 0) {
    TORCH_CHECK(t % regs == 0, prefix, ": sequence length ", t,
                " must be a multiple of the number of learnable registers ", regs);
    // Register p % R at position p.
    at::Tensor registers =
        Get(weights_, prefix + ".learnable_registers").repeat({t / regs, 1});  // [T, dim]
    at::Tensor valid = (additive_mask.reshape({b, t}) >= -9000.0).to(at::kLong);  // [B, T]
    // Valid tokens to the front in their order: a stable sort of the inverted mask.
    at::Tensor order = std::get<1>(at::sort(1 - valid, /*stable=*/true, /*dim=*/1,
                                            /*descending=*/false));
    at::Tensor front = at::gather(x, 1, order.unsqueeze(-1).expand({b, t, dim}));
    at::Tensor n_valid = valid.sum(1, /*keepdim=*/true);                        // [B, 1]
    at::Tensor keep = (at::arange(t, valid.options()).unsqueeze(0) < n_valid).unsqueeze(-1);
    x = at::where(keep, front, registers.to(x.scalar_type()).unsqueeze(0).expand({b, t, dim}));
    additive_mask = at::zeros_like(additive_mask);
  }

  auto [cos, sin] = Rope1d(config_, dim, heads, t, x.device());
  const bool split = config_.rope_type == "split";
  // Additive key mask [B, 1, 1, T] (broadcast over heads and queries); with registers it is all
  // zeros and left out, which lets the attention use its unmasked kernels.
  std::optional<at::Tensor> attn_mask;
  if (regs == 0) attn_mask = additive_mask.reshape({b, 1, 1, t}).to(x.scalar_type());

  for (int64_t i = 0; i < tower.num_layers; ++i) {
    const std::string blk = absl::StrCat(prefix, ".transformer_blocks.", i, ".");
    const std::string attn = blk + "attn1.";
    at::Tensor h = PlainRmsNorm(x, kNormEps);
    at::Tensor q = RmsNorm(Linear(h, weights_, attn + "to_q"), Get(weights_, attn + "norm_q.weight"),
                           kNormEps);
    at::Tensor k = RmsNorm(Linear(h, weights_, attn + "to_k"), Get(weights_, attn + "norm_k.weight"),
                           kNormEps);
    at::Tensor v = Linear(h, weights_, attn + "to_v");
    if (split) {
      q = ApplySplitRope(q, cos, sin, heads);
      k = ApplySplitRope(k, cos, sin, heads);
    } else {
      q = ApplyInterleavedRope(q, cos, sin);
      k = ApplyInterleavedRope(k, cos, sin);
    }
    auto to_heads = [&](const at::Tensor& y) {  // [B, T, H·hd] → [B, H, T, hd]
      return y.view({b, t, heads, hd}).transpose(1, 2);
    };
    at::Tensor o = Attention(to_heads(q), to_heads(k), to_heads(v), attn_mask);
    o = o.transpose(1, 2);  // [B, T, H, hd]
    if (tower.gated_attn) {
      // Per-head gates 2·sigmoid(logits) from the attention's input.
      at::Tensor gates = 2.0 * at::sigmoid(Linear(h, weights_, attn + "to_gate_logits"));
      o = o * gates.unsqueeze(-1);
    }
    x = x + Linear(o.reshape({b, t, dim}), weights_, attn + "to_out.0");

    h = PlainRmsNorm(x, kNormEps);
    h = Linear(GeluTanh(Linear(h, weights_, blk + "ff.net.0.proj")), weights_, blk + "ff.net.2");
    x = x + h;
  }
  return {PlainRmsNorm(x, kNormEps), additive_mask};
}

TextConnectors::Output TextConnectors::Forward(const at::Tensor& text_encoder_hidden_states,
                                               const at::Tensor& attention_mask,
                                               PaddingSide padding_side,
                                               double scale_factor) const {
  const ConnectorsConfig& c = config_;
  at::Tensor x = text_encoder_hidden_states;
  if (x.dim() == 3) x = x.unflatten(2, {c.caption_channels, -1});  // [B, T, D, L]
  TORCH_CHECK(x.dim() == 4 && x.size(2) == c.caption_channels &&
                  x.size(3) == c.text_proj_in_factor,
              "text_encoder_hidden_states must be [B, T, ", c.caption_channels, "·",
              c.text_proj_in_factor, "], got ", text_encoder_hidden_states.sizes());
  const int64_t b = x.size(0), t = x.size(1);
  TORCH_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == b &&
                  attention_mask.size(1) == t,
              "attention_mask must be [", b, ", ", t, "], got ", attention_mask.sizes());
  const at::Tensor mask = attention_mask.to(x.device());

  at::Tensor video_in, audio_in;
  if (c.per_modality_projections) {
    at::Tensor normed = PerTokenRmsNorm(x, mask);
    const double video_scale = std::sqrt(static_cast<double>(c.video_hidden_dim) /
                                         static_cast<double>(c.caption_channels));
    const double audio_scale = std::sqrt(static_cast<double>(c.audio_hidden_dim) /
                                         static_cast<double>(c.caption_channels));
    video_in = Linear(normed * video_scale, weights_, "video_text_proj_in");
    audio_in = Linear(normed * audio_scale, weights_, "audio_text_proj_in");
  } else {
    at::Tensor normed =
        PerLayerMaskedMeanNorm(x, mask.sum(-1), padding_side, scale_factor);
    video_in = audio_in = Linear(normed, weights_, "text_proj_in");
  }

  // Additive mask (m − 1)·finfo.max in the text dtype: 0 on tokens, −max on padding.
  const auto dtype = video_in.scalar_type();
  at::Tensor additive =
      ((mask.to(at::kLong) - 1).to(dtype) * FinfoMax(dtype)).reshape({b, 1, 1, t});

  auto [video, video_mask] = Tower("video_connector", c.video, video_in, additive);
  // The reference's "binary" mask: used-mask < 1e-6, which holds for 0 and −max alike.
  at::Tensor binary = (video_mask < 1e-6).to(at::kLong).reshape({b, t, 1});
  video = video * binary;
  at::Tensor audio = Tower("audio_connector", c.audio, audio_in, additive).first;
  return {video, audio, binary.squeeze(-1)};
}

}  // namespace diffmesh::models::ltx2
