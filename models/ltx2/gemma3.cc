#include "models/ltx2/gemma3.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr char kFull[] = "full_attention";
constexpr char kSliding[] = "sliding_attention";

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "gemma3", key, out);
}

// One rope_parameters entry (or the legacy rope_scaling dict) into `rope`.
absl::Status ReadRope(const nlohmann::json& json, Gemma3Rope& rope) {
  if (!json.is_object()) return absl::InvalidArgumentError("gemma3 config: rope entry not an object");
  RETURN_IF_ERROR(ReadField(json, "rope_theta", rope.theta));
  RETURN_IF_ERROR(ReadField(json, "type", rope.rope_type));  // older spelling
  RETURN_IF_ERROR(ReadField(json, "rope_type", rope.rope_type));
  RETURN_IF_ERROR(ReadField(json, "factor", rope.factor));
  return absl::OkStatus();
}

// Gemma3RMSNorm: x·rsqrt(mean(x²) + eps)·(1 + w), in fp32, returned in x's dtype.
at::Tensor GemmaRmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  xf = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (xf * (1.0 + weight.to(at::kFloat))).to(x.scalar_type());
}

double Lowest(at::ScalarType type) {
  switch (type) {
    case at::kHalf:
      return -65504.0;
    case at::kBFloat16:
      return -3.3895313892515355e38;
    case at::kDouble:
      return std::numeric_limits<double>::lowest();
    default:
      return std::numeric_limits<float>::lowest();
  }
}

// inv_freq = 1 / theta^(arange(0, dim, 2)/dim) in float32 (divided by `factor` for "linear"),
// with the reference's torch ops (a Python scalar over a tensor is reciprocal(t)·s).
at::Tensor InvFreq(const Gemma3Rope& rope, int64_t dim) {
  at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv = at::reciprocal(at::pow(rope.theta, exponents)) * 1.0;
  if (rope.rope_type == "linear") inv = inv / rope.factor;
  return inv;
}

// rotate_half form: x·cos + cat(−x₂, x₁)·sin, in x's dtype.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

}  // namespace

absl::StatusOr<Gemma3Config> Gemma3Config::FromJson(const nlohmann::json& root) {
  if (!root.is_object()) return absl::InvalidArgumentError("gemma3 config: not an object");
  const nlohmann::json& json =
      root.contains("text_config") && root["text_config"].is_object() ? root["text_config"] : root;
  Gemma3Config c;
  RETURN_IF_ERROR(ReadField(json, "vocab_size", c.vocab_size));
  RETURN_IF_ERROR(ReadField(json, "hidden_size", c.hidden_size));
  RETURN_IF_ERROR(ReadField(json, "intermediate_size", c.intermediate_size));
  RETURN_IF_ERROR(ReadField(json, "num_hidden_layers", c.num_hidden_layers));
  RETURN_IF_ERROR(ReadField(json, "num_attention_heads", c.num_attention_heads));
  RETURN_IF_ERROR(ReadField(json, "num_key_value_heads", c.num_key_value_heads));
  RETURN_IF_ERROR(ReadField(json, "head_dim", c.head_dim));
  RETURN_IF_ERROR(ReadField(json, "hidden_activation", c.hidden_activation));
  RETURN_IF_ERROR(ReadField(json, "rms_norm_eps", c.rms_norm_eps));
  RETURN_IF_ERROR(ReadField(json, "query_pre_attn_scalar", c.query_pre_attn_scalar));
  RETURN_IF_ERROR(ReadField(json, "sliding_window", c.sliding_window));
  RETURN_IF_ERROR(ReadField(json, "_sliding_window_pattern", c.sliding_window_pattern));
  RETURN_IF_ERROR(ReadField(json, "sliding_window_pattern", c.sliding_window_pattern));
  double softcap = 0.0;
  RETURN_IF_ERROR(ReadField(json, "attn_logit_softcapping", softcap));
  if (json.contains("attn_logit_softcapping") && !json["attn_logit_softcapping"].is_null()) {
    c.attn_logit_softcapping = softcap;
  }
  RETURN_IF_ERROR(ReadField(json, "attention_bias", c.attention_bias));
  RETURN_IF_ERROR(ReadField(json, "use_bidirectional_attention", c.use_bidirectional_attention));
  RETURN_IF_ERROR(ReadField(json, "pad_token_id", c.pad_token_id));
  RETURN_IF_ERROR(ReadField(json, "bos_token_id", c.bos_token_id));

  // Layer types: explicit, or every pattern-th layer global.
  if (json.contains("layer_types") && !json["layer_types"].is_null()) {
    if (!json["layer_types"].is_array()) {
      return absl::InvalidArgumentError("gemma3 config: layer_types is not a list");
    }
    for (const auto& t : json["layer_types"]) {
      if (!t.is_string() || (t != kFull && t != kSliding)) {
        return absl::InvalidArgumentError(
            absl::StrCat("gemma3 config: unknown layer type ", t.dump()));
      }
      c.layer_types.push_back(t.get<std::string>());
    }
  } else {
    if (c.sliding_window_pattern <= 0) {
      return absl::InvalidArgumentError("gemma3 config: sliding_window_pattern must be positive");
    }
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_types.push_back((i + 1) % c.sliding_window_pattern == 0 ? kFull : kSliding);
    }
  }
  if (static_cast<int64_t>(c.layer_types.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("gemma3 config: ", c.layer_types.size(),
                                                   " layer_types for ", c.num_hidden_layers,
                                                   " layers"));
  }

  // RoPE: legacy keys first, then rope_parameters (transformers ≥ 5) on top.
  RETURN_IF_ERROR(ReadField(json, "rope_theta", c.full_rope.theta));
  RETURN_IF_ERROR(ReadField(json, "rope_local_base_freq", c.sliding_rope.theta));
  if (json.contains("rope_scaling") && !json["rope_scaling"].is_null()) {
    RETURN_IF_ERROR(ReadRope(json["rope_scaling"], c.full_rope));
  }
  if (json.contains("rope_parameters") && !json["rope_parameters"].is_null()) {
    const nlohmann::json& rp = json["rope_parameters"];
    if (rp.contains(kFull) || rp.contains(kSliding)) {
      if (rp.contains(kFull)) RETURN_IF_ERROR(ReadRope(rp[kFull], c.full_rope));
      if (rp.contains(kSliding)) RETURN_IF_ERROR(ReadRope(rp[kSliding], c.sliding_rope));
    } else {
      RETURN_IF_ERROR(ReadRope(rp, c.full_rope));
    }
  }
  for (const Gemma3Rope* r : {&c.full_rope, &c.sliding_rope}) {
    if (r->rope_type != "default" && r->rope_type != "linear") {
      return absl::UnimplementedError(
          absl::StrCat("gemma3 config: rope type '", r->rope_type, "' is not supported"));
    }
    if (r->rope_type == "linear" && r->factor <= 0.0) {
      return absl::InvalidArgumentError("gemma3 config: linear rope factor must be positive");
    }
  }
  if (c.hidden_activation != "gelu_pytorch_tanh" && c.hidden_activation != "gelu_new" &&
      c.hidden_activation != "gelu") {
    return absl::UnimplementedError(
        absl::StrCat("gemma3 config: activation '", c.hidden_activation, "' is not supported"));
  }
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_hidden_layers <= 0 ||
      c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 || c.head_dim <= 0 ||
      c.head_dim % 2 != 0 || c.vocab_size <= 0 || c.sliding_window <= 0 ||
      c.query_pre_attn_scalar <= 0) {
    return absl::InvalidArgumentError("gemma3 config: bad size");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        "gemma3 config: num_attention_heads must be a multiple of num_key_value_heads");
  }
  return c;
}

absl::StatusOr<Gemma3Config> Gemma3Config::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

std::vector<ParamSpec> Gemma3TextModel::Params(const Gemma3Config& c, const std::string& prefix) {
  std::vector<ParamSpec> specs;
  const int64_t d = c.hidden_size, hd = c.head_dim;
  specs.push_back({prefix + "embed_tokens.weight", {c.vocab_size, d}, Init::kNormal, 0.05f});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string layer = absl::StrCat(prefix, "layers.", i, ".");
    // Gemma norms scale by (1 + w): a zero weight is the identity.
    for (const char* norm : {"input_layernorm", "post_attention_layernorm",
                             "pre_feedforward_layernorm", "post_feedforward_layernorm"}) {
      specs.push_back({layer + norm + ".weight", {d}, Init::kNormal, 0.1f});
    }
    const std::string attn = layer + "self_attn.";
    AddLinear(specs, attn + "q_proj", d, c.num_attention_heads * hd, c.attention_bias);
    AddLinear(specs, attn + "k_proj", d, c.num_key_value_heads * hd, c.attention_bias);
    AddLinear(specs, attn + "v_proj", d, c.num_key_value_heads * hd, c.attention_bias);
    AddLinear(specs, attn + "o_proj", c.num_attention_heads * hd, d, c.attention_bias);
    specs.push_back({attn + "q_norm.weight", {hd}, Init::kNormal, 0.1f});
    specs.push_back({attn + "k_norm.weight", {hd}, Init::kNormal, 0.1f});
    AddLinear(specs, layer + "mlp.gate_proj", d, c.intermediate_size, /*bias=*/false);
    AddLinear(specs, layer + "mlp.up_proj", d, c.intermediate_size, /*bias=*/false);
    AddLinear(specs, layer + "mlp.down_proj", c.intermediate_size, d, /*bias=*/false);
  }
  specs.push_back({prefix + "norm.weight", {d}, Init::kNormal, 0.1f});
  return specs;
}

Gemma3TextModel::Gemma3TextModel(Gemma3Config config, WeightMap weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  full_inv_freq_ = InvFreq(config_.full_rope, config_.head_dim);
  sliding_inv_freq_ = InvFreq(config_.sliding_rope, config_.head_dim);
}

absl::StatusOr<std::unique_ptr<Gemma3TextModel>> Gemma3TextModel::Create(
    const Gemma3Config& config, WeightMap weights) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  return std::unique_ptr<Gemma3TextModel>(new Gemma3TextModel(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<Gemma3TextModel>> Gemma3TextModel::Load(
    const std::string& model_dir, at::ScalarType dtype) {
  ASSIGN_OR_RETURN(Gemma3Config config, Gemma3Config::FromFile(model_dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model_dir));
  std::string prefix;
  bool found = false;
  for (const char* p : {"", "model.", "language_model.model.", "model.language_model."}) {
    if (checkpoint->Find(std::string(p) + "embed_tokens.weight") != nullptr) {
      prefix = p;
      found = true;
      break;
    }
  }
  if (!found) {
    return absl::NotFoundError(
        absl::StrCat(model_dir, ": no Gemma-3 language model (embed_tokens.weight) in the checkpoint"));
  }
  // Everything outside the language model (vision tower, projector, lm_head) is not ours.
  std::vector<std::string> ignored;
  for (const auto& [name, view] : checkpoint->tensors()) {
    if (name.compare(0, prefix.size(), prefix) != 0 ||
        (prefix.empty() && name.compare(0, 7, "lm_head") == 0)) {
      ignored.push_back(name);
    }
  }
  ASSIGN_OR_RETURN(WeightMap loaded,
                   LoadWeights(*checkpoint, Params(config, prefix), dtype, ignored));
  WeightMap weights;
  for (auto& [name, tensor] : loaded) weights.emplace(name.substr(prefix.size()), std::move(tensor));
  return Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<Gemma3TextModel>> Gemma3TextModel::CreateSeeded(
    const Gemma3Config& config, uint64_t seed) {
  return Create(config, InitSeeded(Params(config), seed));
}

std::vector<at::Tensor> Gemma3TextModel::Forward(const at::Tensor& input_ids,
                                                 const at::Tensor& attention_mask) const {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [B, T], got ", input_ids.sizes());
  const Gemma3Config& c = config_;
  const at::Tensor& embed = Get(weights_, "embed_tokens.weight");
  // Weights stay in their storage dtype (bf16 when serving on CUDA); activations are float32,
  // each weight widened where it is used (TF32 tensor cores on CUDA, see
  // UseTensorCoresForFloat32). In bf16 end to end the hidden states drift 1.2–1.4e-2 from
  // float32 on the reference fixture; the bf16 weights alone account for ~7e-3 of it.
  const auto storage = embed.scalar_type();
  const auto dtype = at::kFloat;
  const auto device = embed.device();
  auto linear = [&](const at::Tensor& x, const std::string& prefix) {
    const at::Tensor& weight = Get(weights_, prefix + ".weight");
    auto bias = weights_.find(prefix + ".bias");
    return bias == weights_.end() ? at::linear(x, weight.to(dtype))
                                  : at::linear(x, weight.to(dtype), bias->second.to(dtype));
  };
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  const int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads, hd = c.head_dim;

  // Embeddings scaled by float32(sqrt(hidden)).
  const float embed_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
  at::Tensor x = at::embedding(embed, input_ids.to(device, at::kLong)).to(dtype) *
                 at::scalar_tensor(embed_scale, at::kFloat).to(device);

  // Masks: may-attend [B, 1, T, T] as additive 0 / finfo.min (float32).
  at::Tensor valid_kv = attention_mask.defined()
                            ? attention_mask.to(device).to(at::kBool).view({b, 1, 1, t})
                            : at::ones({b, 1, 1, t}, at::TensorOptions(device).dtype(at::kBool));
  TORCH_CHECK(!attention_mask.defined() || attention_mask.sizes() == input_ids.sizes(),
              "attention_mask ", attention_mask.sizes(), " does not match input_ids ",
              input_ids.sizes());
  at::Tensor pos = at::arange(t, at::TensorOptions(device).dtype(at::kLong));
  at::Tensor q_idx = pos.view({t, 1}), kv_idx = pos.view({1, t});
  at::Tensor full_allowed, sliding_allowed;
  if (c.use_bidirectional_attention) {
    full_allowed = at::ones({t, t}, at::TensorOptions(device).dtype(at::kBool));
    sliding_allowed = (q_idx - kv_idx).abs() < c.sliding_window;
  } else {
    full_allowed = kv_idx <= q_idx;
    sliding_allowed = full_allowed.logical_and(kv_idx > q_idx - c.sliding_window);
  }
  const double lowest = Lowest(dtype);
  auto additive = [&](const at::Tensor& allowed) {
    at::Tensor ok = allowed.view({1, 1, t, t}).logical_and(valid_kv);  // [B, 1, T, T]
    return at::zeros(ok.sizes(), embed.options().dtype(dtype)).masked_fill(ok.logical_not(), lowest);
  };
  const at::Tensor full_mask = additive(full_allowed), sliding_mask = additive(sliding_allowed);

  // cos/sin [T, head_dim] per layer type, float32.
  auto rope = [&](const at::Tensor& inv_freq) {
    at::Tensor freqs = at::outer(pos.to(at::kFloat), inv_freq.to(device));
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    return std::make_pair(emb.cos().to(dtype), emb.sin().to(dtype));
  };
  const auto full_rope = rope(full_inv_freq_), sliding_rope = rope(sliding_inv_freq_);
  const double scaling = 1.0 / std::sqrt(c.query_pre_attn_scalar);

  std::vector<at::Tensor> hidden_states;
  hidden_states.reserve(c.num_hidden_layers + 1);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    hidden_states.push_back(x.to(storage));
    const std::string layer = absl::StrCat("layers.", i, ".");
    const std::string attn = layer + "self_attn.";
    const bool sliding = c.layer_types[i] == kSliding;
    const auto& [cos, sin] = sliding ? sliding_rope : full_rope;

    at::Tensor h = GemmaRmsNorm(x, Get(weights_, layer + "input_layernorm.weight"), c.rms_norm_eps);
    auto project = [&](const char* name, int64_t n, const char* norm) {  // → [B, n, T, hd]
      at::Tensor y = linear(h, attn + name).view({b, t, n, hd}).transpose(1, 2);
      if (norm != nullptr) y = GemmaRmsNorm(y, Get(weights_, attn + norm), c.rms_norm_eps);
      return y;
    };
    at::Tensor q = ApplyRope(project("q_proj", heads, "q_norm.weight"), cos, sin);
    at::Tensor k = ApplyRope(project("k_proj", kv_heads, "k_norm.weight"), cos, sin);
    at::Tensor v = project("v_proj", kv_heads, nullptr);
    const at::Tensor& mask = sliding ? sliding_mask : full_mask;
    at::Tensor o;
    if (c.attn_logit_softcapping.has_value()) {
      // Soft-capping sits between the scores and the mask: the eager path, written out.
      const int64_t rep = heads / kv_heads;
      at::Tensor kk = k.repeat_interleave(rep, 1), vv = v.repeat_interleave(rep, 1);
      const double cap = *c.attn_logit_softcapping;
      at::Tensor scores = at::matmul(q, kk.transpose(2, 3)) * scaling;
      scores = at::tanh(scores / cap) * cap + mask;
      o = at::matmul(at::softmax(scores, -1, at::kFloat).to(dtype), vv);
    } else {
      o = Attention(q, k, v, mask, /*causal=*/false, scaling);  // [B, H, T, hd]
    }
    o = linear(o.transpose(1, 2).reshape({b, t, heads * hd}), attn + "o_proj");
    x = x + GemmaRmsNorm(o, Get(weights_, layer + "post_attention_layernorm.weight"),
                         c.rms_norm_eps);

    h = GemmaRmsNorm(x, Get(weights_, layer + "pre_feedforward_layernorm.weight"), c.rms_norm_eps);
    at::Tensor gate = linear(h, layer + "mlp.gate_proj");
    gate = c.hidden_activation == "gelu" ? at::gelu(gate) : GeluTanh(gate);
    h = linear(gate * linear(h, layer + "mlp.up_proj"), layer + "mlp.down_proj");
    x = x + GemmaRmsNorm(h, Get(weights_, layer + "post_feedforward_layernorm.weight"),
                         c.rms_norm_eps);
  }
  hidden_states.push_back(GemmaRmsNorm(x, Get(weights_, "norm.weight"), c.rms_norm_eps).to(storage));
  return hidden_states;
}

Gemma3TextModel::PromptEmbeds Gemma3TextModel::EncodePrompts(const PromptTokens& tokens) const {
  TORCH_CHECK(static_cast<int64_t>(tokens.input_ids.size()) == tokens.num_prompts * tokens.max_length &&
                  tokens.attention_mask.size() == tokens.input_ids.size(),
              "PromptTokens sizes do not match num_prompts x max_length");
  const auto device = Get(weights_, "embed_tokens.weight").device();
  const std::vector<int64_t> shape = {tokens.num_prompts, tokens.max_length};
  at::Tensor ids = at::tensor(at::ArrayRef<int64_t>(tokens.input_ids), at::kLong).view(shape);
  at::Tensor mask = at::tensor(at::ArrayRef<int64_t>(tokens.attention_mask), at::kLong).view(shape);
  ids = ids.to(device);
  mask = mask.to(device);
  return {PackHiddenStates(Forward(ids, mask)), mask};
}

at::Tensor Gemma3TextModel::PackHiddenStates(const std::vector<at::Tensor>& hidden_states) {
  TORCH_CHECK(!hidden_states.empty(), "no hidden states to pack");
  return at::stack(hidden_states, -1).flatten(2, 3);
}

}  // namespace diffmesh::models::ltx2
