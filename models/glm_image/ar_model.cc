#include "models/glm_image/ar_model.h"

#if defined(DIFFMESH_WITH_CUDA)
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "models/glm_image/cuda/ar_decode.h"
#endif

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <stdexcept>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"
#include "models/core/torch_compat.h"

namespace diffmesh::models::glm_image {
namespace {

using json = nlohmann::json;

template <typename T>
T ValueOr(const json& j, const char* key, T fallback) {
  // Range-checked (config_json.h): 1e300 for an integer is an error, not an undefined
  // float-to-integer conversion.
  const absl::Status status = ReadConfigField(j, "AR", key, fallback);
  if (!status.ok()) throw std::invalid_argument(std::string(status.message()));
  return fallback;
}

// Turns an ATen exception (bad shapes that slipped past the checks, device out of memory) into a
// Status, so that one failed request does not take the serving process down.
template <typename F>
auto GuardAten(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("ATen: ", e.what_without_backtrace()));
  }
}

// GLM's rotary on the first rotary_dim channels (halves rotated, as transformers'
// rotate_half), the rest passed through: x [B, S, H, D], cos/sin [B, S, 1, rotary_dim].
at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t d = x.size(-1), rd = cos.size(-1);
  at::Tensor rot = rd == d ? x : x.narrow(-1, 0, rd);
  at::Tensor rotated =
      at::cat({rot.narrow(-1, rd / 2, rd / 2).neg(), rot.narrow(-1, 0, rd / 2)}, -1);
  at::Tensor out = rot * cos + rotated * sin;
  return rd == d ? out : at::cat({out, x.narrow(-1, rd, d - rd)}, -1);
}

// Additive mask value that removes a key: softmax weight exactly 0.
double Blocked() { return -std::numeric_limits<double>::infinity(); }

absl::Status CheckIntegral(const at::Tensor& t, const char* what) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(what, " is undefined"));
  if (at::isFloatingType(t.scalar_type()) || t.scalar_type() == at::kBool) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be an integer tensor"));
  }
  return absl::OkStatus();
}

std::string Shape(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&out, i ? "," : "", s[i]);
  return out + "]";
}

}  // namespace

// ---------------------------------------------------------------------------------- ArConfig

absl::StatusOr<ArConfig> ArConfig::FromJson(const json& root) {
  ArConfig c;
  try {
    // The composite config nests the decoder under text_config; a bare text config works too.
    const json& t = root.contains("text_config") ? root.at("text_config") : root;
    c.vocab_size = ValueOr<int64_t>(t, "vocab_size", c.vocab_size);
    c.vision_vocab_size = ValueOr<int64_t>(t, "vision_vocab_size", c.vision_vocab_size);
    c.hidden_size = ValueOr<int64_t>(t, "hidden_size", c.hidden_size);
    c.intermediate_size = ValueOr<int64_t>(t, "intermediate_size", c.intermediate_size);
    c.num_hidden_layers = ValueOr<int64_t>(t, "num_hidden_layers", c.num_hidden_layers);
    c.num_attention_heads = ValueOr<int64_t>(t, "num_attention_heads", c.num_attention_heads);
    // Absent: the constructor default (2); null: one KV head per query head (as transformers).
    if (auto kv = t.find("num_key_value_heads"); kv != t.end()) {
      c.num_key_value_heads = kv->is_null()
                                  ? c.num_attention_heads
                                  : ValueOr<int64_t>(t, "num_key_value_heads", 0);
    }
    c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
    c.head_dim = ValueOr<int64_t>(t, "head_dim", c.head_dim);
    c.attention_bias = ValueOr<bool>(t, "attention_bias", c.attention_bias);
    c.rms_norm_eps = ValueOr<double>(t, "rms_norm_eps", c.rms_norm_eps);
    c.max_position_embeddings =
        ValueOr<int64_t>(t, "max_position_embeddings", c.max_position_embeddings);

    const std::string act = ValueOr<std::string>(t, "hidden_act", "silu");
    if (act != "silu") {
      return absl::InvalidArgumentError(absl::StrCat("unsupported hidden_act '", act, "'"));
    }
    if (ValueOr<bool>(root, "tie_word_embeddings", false) ||
        ValueOr<bool>(t, "tie_word_embeddings", false)) {
      return absl::InvalidArgumentError(
          "tie_word_embeddings is not supported (lm_head has "
          "vision_vocab_size rows, embed_tokens vocab_size)");
    }

    // transformers 5 keeps rotary settings in rope_parameters; older configs used rope_scaling
    // plus top-level rope_theta / partial_rotary_factor.
    json rope = json::object();
    if (t.contains("rope_parameters") && t.at("rope_parameters").is_object()) {
      rope = t.at("rope_parameters");
    } else if (t.contains("rope_scaling") && t.at("rope_scaling").is_object()) {
      rope = t.at("rope_scaling");
    }
    std::string rope_type = ValueOr<std::string>(rope, "rope_type", "");
    if (rope_type.empty()) rope_type = ValueOr<std::string>(rope, "type", "default");
    if (rope_type != "default" && rope_type != "mrope") {
      return absl::InvalidArgumentError(absl::StrCat("unsupported rope_type '", rope_type, "'"));
    }
    c.rope_theta = ValueOr<double>(rope, "rope_theta", ValueOr<double>(t, "rope_theta", 10000.0));
    c.partial_rotary_factor = ValueOr<double>(rope, "partial_rotary_factor",
                                              ValueOr<double>(t, "partial_rotary_factor", 1.0));
    if (rope.contains("mrope_section")) {
      const auto sections = ValueOr<std::vector<int64_t>>(rope, "mrope_section", {});
      if (sections.size() != 3) {
        return absl::InvalidArgumentError("mrope_section must have 3 entries (t, h, w)");
      }
      c.mrope_section = {sections[0], sections[1], sections[2]};
    }

    c.image_token_id = ValueOr<int64_t>(root, "image_token_id", c.image_token_id);
    c.image_start_token_id = ValueOr<int64_t>(root, "image_start_token_id", c.image_start_token_id);
    c.image_end_token_id = ValueOr<int64_t>(root, "image_end_token_id", c.image_end_token_id);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("AR config: ", e.what()));
  } catch (const std::invalid_argument& e) {
    return absl::InvalidArgumentError(e.what());
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<ArConfig> ArConfig::FromFile(const std::string& path) {
  std::string file = path;
  if (file.size() < 5 || file.compare(file.size() - 5, 5, ".json") != 0) file += "/config.json";
  ASSIGN_OR_RETURN(json j, ReadJsonFile(file));
  auto config = FromJson(j);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(file, ": ", config.status().message()));
  }
  return config;
}

absl::Status ArConfig::Validate() const {
  if (vocab_size <= 0 || vision_vocab_size <= 0 || hidden_size <= 0 || intermediate_size <= 0 ||
      num_hidden_layers <= 0 || num_attention_heads <= 0 || num_key_value_heads <= 0 ||
      head_dim <= 0 || max_position_embeddings <= 0) {
    return absl::InvalidArgumentError("AR config sizes must be positive");
  }
  if (vision_vocab_size > vocab_size) {
    return absl::InvalidArgumentError("vision_vocab_size exceeds vocab_size");
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_attention_heads ", num_attention_heads,
                                                   " is not a multiple of num_key_value_heads ",
                                                   num_key_value_heads));
  }
  const int64_t rd = rotary_dim();
  if (rd <= 0 || rd > head_dim || rd % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rotary dim ", rd, " (head_dim ", head_dim,
                     " x partial_rotary_factor) must be even, in (0, head_dim]"));
  }
  int64_t sum = 0;
  for (int64_t s : mrope_section) {
    if (s < 0) return absl::InvalidArgumentError("mrope_section entries must be >= 0");
    sum += s;
  }
  if (sum != rd / 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("mrope_section sums to ", sum, ", expected rotary_dim / 2 = ", rd / 2));
  }
  return absl::OkStatus();
}

// ----------------------------------------------------------------------------------- KvCache

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ArConfig& config,
                                                         const Options& options) {
  RETURN_IF_ERROR(config.Validate());
  if (options.max_slots <= 0 || options.capacity <= 0) {
    return absl::InvalidArgumentError("KV cache max_slots and capacity must be positive");
  }
  std::unique_ptr<KvCache> cache(new KvCache());
  cache->capacity_ = options.capacity;
  cache->dtype_ = options.dtype;
  cache->device_ = options.device;
  cache->lengths_.assign(options.max_slots, 0);
  cache->in_use_.assign(options.max_slots, false);
  return GuardAten([&]() -> absl::StatusOr<std::unique_ptr<KvCache>> {
    const auto opts = at::TensorOptions().dtype(options.dtype).device(options.device);
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      // Zeros, not empty: masked entries are multiplied by exactly-zero weights, which must not
      // meet a NaN from uninitialised memory.
      cache->k_.push_back(at::zeros(
          {options.max_slots + 1, config.num_key_value_heads, options.capacity, config.head_dim},
          opts));
      cache->v_.push_back(at::zeros_like(cache->k_.back()));
    }
    return std::move(cache);
  });
}

absl::StatusOr<int64_t> KvCache::Allocate() {
  for (int64_t s = 0; s < max_slots(); ++s) {
    if (!in_use_[s]) {
      in_use_[s] = true;
      lengths_[s] = 0;
      return s;
    }
  }
  return absl::ResourceExhaustedError(absl::StrCat("all ", max_slots(), " KV cache slots in use"));
}

absl::Status KvCache::Free(int64_t slot) {
  RETURN_IF_ERROR(CheckSlot(slot));
  in_use_[slot] = false;
  lengths_[slot] = 0;
  return absl::OkStatus();
}

int64_t KvCache::num_free() const {
  return static_cast<int64_t>(std::count(in_use_.begin(), in_use_.end(), false));
}

bool KvCache::in_use(int64_t slot) const {
  return slot >= 0 && slot < max_slots() && in_use_[slot];
}

int64_t KvCache::length(int64_t slot) const { return in_use(slot) ? lengths_[slot] : 0; }

absl::Status KvCache::CheckSlot(int64_t slot) const {
  if (!in_use(slot)) {
    return absl::FailedPreconditionError(absl::StrCat("KV cache slot ", slot, " is not allocated"));
  }
  return absl::OkStatus();
}

// ----------------------------------------------------------------------------------- ArModel

std::vector<ParamSpec> ArModel::Params(const ArConfig& c) {
  std::vector<ParamSpec> specs;
  const int64_t q_out = c.num_attention_heads * c.head_dim;
  const int64_t kv_out = c.num_key_value_heads * c.head_dim;
  specs.push_back({"model.language_model.embed_tokens.weight", {c.vocab_size, c.hidden_size}});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.language_model.layers.", l, ".");
    specs.push_back({p + "input_layernorm.weight", {c.hidden_size}, Init::kOnes});
    for (const auto& [name, out] : {std::pair<const char*, int64_t>{"q_proj", q_out},
                                    {"k_proj", kv_out},
                                    {"v_proj", kv_out}}) {
      const std::string proj = p + "self_attn." + name;
      specs.push_back({proj + ".weight", {out, c.hidden_size}});
      // Random rather than zero biases in seeded models, so that tests exercise them.
      if (c.attention_bias) specs.push_back({proj + ".bias", {out}, Init::kNormal, 0.02f});
    }
    specs.push_back({p + "self_attn.o_proj.weight", {c.hidden_size, q_out}});
    specs.push_back({p + "post_self_attn_layernorm.weight", {c.hidden_size}, Init::kOnes});
    specs.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}, Init::kOnes});
    specs.push_back({p + "mlp.gate_up_proj.weight", {2 * c.intermediate_size, c.hidden_size}});
    specs.push_back({p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size}});
    specs.push_back({p + "post_mlp_layernorm.weight", {c.hidden_size}, Init::kOnes});
  }
  specs.push_back({"model.language_model.norm.weight", {c.hidden_size}, Init::kOnes});
  specs.push_back({"lm_head.weight", {c.vision_vocab_size, c.hidden_size}});
  return specs;
}

std::vector<std::string> ArModel::IgnoredPrefixes() { return {"model.visual.", "model.vqmodel."}; }

absl::StatusOr<std::unique_ptr<ArModel>> ArModel::Create(const ArConfig& config,
                                                         const WeightMap& weights,
                                                         const Options& options) {
  RETURN_IF_ERROR(config.Validate());
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  if (!at::isFloatingType(options.dtype)) {
    return absl::InvalidArgumentError("AR model dtype must be floating point");
  }
  std::unique_ptr<ArModel> model(new ArModel(config, options));
  if (model->options_.max_positions <= 0) {
    model->options_.max_positions = config.max_position_embeddings;
  }
  return GuardAten([&]() -> absl::StatusOr<std::unique_ptr<ArModel>> {
    const auto opts = at::TensorOptions().dtype(options.dtype).device(options.device);
    auto get = [&](const std::string& name) { return Get(weights, name).to(opts).contiguous(); };
    model->embed_tokens_ = get("model.language_model.embed_tokens.weight");
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.language_model.layers.", l, ".");
      Layer layer;
      layer.input_layernorm = get(p + "input_layernorm.weight");
      layer.qkv_weight =
          at::cat({get(p + "self_attn.q_proj.weight"), get(p + "self_attn.k_proj.weight"),
                   get(p + "self_attn.v_proj.weight")},
                  0);
      if (config.attention_bias) {
        layer.qkv_bias =
            at::cat({get(p + "self_attn.q_proj.bias"), get(p + "self_attn.k_proj.bias"),
                     get(p + "self_attn.v_proj.bias")},
                    0);
      }
      layer.o_proj = get(p + "self_attn.o_proj.weight");
      layer.post_self_attn_layernorm = get(p + "post_self_attn_layernorm.weight");
      layer.post_attention_layernorm = get(p + "post_attention_layernorm.weight");
      layer.gate_up_proj = get(p + "mlp.gate_up_proj.weight");
      layer.down_proj = get(p + "mlp.down_proj.weight");
      layer.post_mlp_layernorm = get(p + "post_mlp_layernorm.weight");
      model->layers_.push_back(std::move(layer));
    }
    model->norm_ = get("model.language_model.norm.weight");
    model->lm_head_ = get("lm_head.weight");

    // inv_freq and position·inv_freq in fp32 exactly as the reference computes them
    // (1 / theta^(2i / rd), then one fp32 product per entry), evaluated once for every position.
    const int64_t rd = config.rotary_dim();
    at::Tensor exponent = at::arange(0, rd, 2, at::kLong).to(at::kFloat) / static_cast<double>(rd);
    at::Tensor inv_freq = at::pow(config.rope_theta, exponent).reciprocal();  // [rd/2]
    at::Tensor pos = at::arange(model->options_.max_positions, at::kLong).to(at::kFloat);
    at::Tensor freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);  // [P, rd/2]
    at::Tensor cos = freqs.cos(), sin = freqs.sin();
    // Chunked M-RoPE: frequency columns [0, s_t) follow the temporal position, the next s_h the
    // height position, the last s_w the width position.
    int64_t start = 0;
    for (int axis = 0; axis < 3; ++axis) {
      const int64_t n = config.mrope_section[axis];
      model->cos_table_[axis] = cos.narrow(1, start, n).contiguous().to(options.device);
      model->sin_table_[axis] = sin.narrow(1, start, n).contiguous().to(options.device);
      start += n;
    }
    return std::move(model);
  });
}

absl::StatusOr<std::unique_ptr<ArModel>> ArModel::Load(const std::string& dir,
                                                       const Options& options) {
  ASSIGN_OR_RETURN(ArConfig config, ArConfig::FromFile(dir));
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(WeightMap weights,
                   LoadWeights(*checkpoint, Params(config), options.dtype, IgnoredPrefixes()));
  return Create(config, weights, options);
}

std::pair<at::Tensor, at::Tensor> ArModel::Rotary(const at::Tensor& positions) const {
  const at::Tensor flat = positions.reshape({3, -1});  // [3, N]
  std::vector<at::Tensor> cos, sin;
  for (int axis = 0; axis < 3; ++axis) {
    cos.push_back(cos_table_[axis].index_select(0, flat[axis]));
    sin.push_back(sin_table_[axis].index_select(0, flat[axis]));
  }
  at::Tensor c = at::cat(cos, -1), s = at::cat(sin, -1);  // [N, rd/2] fp32
  std::vector<int64_t> shape(positions.sizes().begin() + 1, positions.sizes().end());
  shape.push_back(1);
  shape.push_back(config_.rotary_dim());
  // The reference duplicates the frequencies (cat(freqs, freqs)) and casts after cos/sin.
  return {at::cat({c, c}, -1).to(options_.dtype).view(shape),
          at::cat({s, s}, -1).to(options_.dtype).view(shape)};
}

at::Tensor ArModel::Decoder(const at::Tensor& input_ids, const at::Tensor& positions,
                            const AttendFn& attend,
                            std::vector<at::Tensor>* hidden_states) const {
  const int64_t b = input_ids.size(0), s = input_ids.size(1);
  const int64_t h = config_.num_attention_heads, hkv = config_.num_key_value_heads;
  const int64_t d = config_.head_dim, inter = config_.intermediate_size;
  const double eps = config_.rms_norm_eps;

  at::Tensor hidden = at::embedding(embed_tokens_, input_ids);  // [B, S, hidden]
  const auto [cos, sin] = Rotary(positions);                    // [B, S, 1, rd]
  for (int64_t l = 0; l < static_cast<int64_t>(layers_.size()); ++l) {
    if (hidden_states != nullptr) hidden_states->push_back(hidden);
    const Layer& w = layers_[l];
    at::Tensor x = RmsNorm(hidden, w.input_layernorm, eps);
    at::Tensor qkv = at::linear(x, w.qkv_weight, w.qkv_bias);  // [B, S, (H + 2 Hkv) D]
    at::Tensor q = qkv.narrow(-1, 0, h * d).view({b, s, h, d});
    at::Tensor k = qkv.narrow(-1, h * d, hkv * d).view({b, s, hkv, d});
    at::Tensor v = qkv.narrow(-1, (h + hkv) * d, hkv * d).view({b, s, hkv, d});
    q = ApplyRotary(q, cos, sin).transpose(1, 2);  // [B, H, S, D]
    k = ApplyRotary(k, cos, sin).transpose(1, 2);  // [B, Hkv, S, D]
    v = v.transpose(1, 2);
    at::Tensor attn = attend(l, q, k, v).transpose(1, 2).reshape({b, s, h * d});
    attn = at::linear(attn, w.o_proj);
    hidden = hidden + RmsNorm(attn, w.post_self_attn_layernorm, eps);

    x = RmsNorm(hidden, w.post_attention_layernorm, eps);
    at::Tensor gate_up = at::linear(x, w.gate_up_proj);  // [B, S, 2 I]: gate first, then up
    at::Tensor mlp = gate_up.narrow(-1, inter, inter) * at::silu(gate_up.narrow(-1, 0, inter));
    mlp = at::linear(mlp, w.down_proj);
    hidden = hidden + RmsNorm(mlp, w.post_mlp_layernorm, eps);
  }
  at::Tensor out = RmsNorm(hidden, norm_, eps);
  if (hidden_states != nullptr) hidden_states->push_back(out);
  return out;
}

absl::StatusOr<at::Tensor> ArModel::NormalizePositions(const at::Tensor& positions,
                                                       at::IntArrayRef token_shape) const {
  RETURN_IF_ERROR(CheckIntegral(positions, "positions"));
  std::vector<int64_t> full = {3};
  full.insert(full.end(), token_shape.begin(), token_shape.end());
  at::Tensor p;
  if (positions.sizes() == token_shape) {
    p = positions.unsqueeze(0).expand(full);
  } else if (positions.sizes() == at::IntArrayRef(full)) {
    p = positions;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("positions have shape ",
                                                   Shape(positions.sizes()), ", expected ",
                                                   Shape(token_shape), " or ", Shape(full)));
  }
  // Checked where it costs no device sync; device-resident positions are trusted.
  if (p.device().is_cpu() && p.numel() > 0) {
    const int64_t lo = p.min().item<int64_t>(), hi = p.max().item<int64_t>();
    if (lo < 0 || hi >= options_.max_positions) {
      return absl::OutOfRangeError(absl::StrCat("position ", lo < 0 ? lo : hi, " outside [0, ",
                                                options_.max_positions, ")"));
    }
  }
  return p.to(options_.device, at::kLong);
}

absl::Status ArModel::CheckIds(const at::Tensor& ids) const {
  RETURN_IF_ERROR(CheckIntegral(ids, "token ids"));
  if (ids.device().is_cpu() && ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      return absl::OutOfRangeError(
          absl::StrCat("token id ", lo < 0 ? lo : hi, " outside [0, ", config_.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ArModel::CheckCache(const KvCache& cache) const {
  if (cache.dtype() != options_.dtype || cache.device() != options_.device ||
      static_cast<int64_t>(cache.k_.size()) != config_.num_hidden_layers ||
      cache.k_[0].size(1) != config_.num_key_value_heads ||
      cache.k_[0].size(3) != config_.head_dim) {
    return absl::InvalidArgumentError(
        "KV cache was not created for this model's config/dtype/device");
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> ArModel::Forward(const at::Tensor& input_ids,
                                            const std::optional<at::Tensor>& positions) const {
  ASSIGN_OR_RETURN(ForwardOutput out, ForwardImpl(input_ids, positions, /*keep_hidden=*/false));
  return out.logits;
}

absl::StatusOr<ArModel::ForwardOutput> ArModel::ForwardWithHiddenStates(
    const at::Tensor& input_ids, const std::optional<at::Tensor>& positions) const {
  return ForwardImpl(input_ids, positions, /*keep_hidden=*/true);
}

absl::StatusOr<ArModel::ForwardOutput> ArModel::ForwardImpl(
    const at::Tensor& input_ids, const std::optional<at::Tensor>& positions,
    bool keep_hidden) const {
  RETURN_IF_ERROR(CheckIds(input_ids));
  if (input_ids.dim() != 2 || input_ids.size(1) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("input_ids must be [B, S], got ", Shape(input_ids.sizes())));
  }
  at::Tensor pos_in;
  if (positions) {
    pos_in = *positions;
  } else {
    pos_in = at::arange(input_ids.size(1), at::kLong).unsqueeze(0).expand(input_ids.sizes());
  }
  ASSIGN_OR_RETURN(at::Tensor pos, NormalizePositions(pos_in, input_ids.sizes()));
  return GuardAten([&]() -> absl::StatusOr<ForwardOutput> {
    AttendFn attend = [](int64_t, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
      return Attention(q, k, v, std::nullopt, /*causal=*/true);
    };
    ForwardOutput out;
    at::Tensor hidden = Decoder(input_ids.to(options_.device, at::kLong), pos, attend,
                                keep_hidden ? &out.hidden_states : nullptr);
    out.logits = at::linear(hidden, lm_head_);  // [B, S, vision_vocab_size]
    return out;
  });
}

absl::StatusOr<at::Tensor> ArModel::Prefill(KvCache& cache, int64_t slot,
                                            const at::Tensor& input_ids,
                                            const at::Tensor& positions) const {
  RETURN_IF_ERROR(CheckCache(cache));
  RETURN_IF_ERROR(cache.CheckSlot(slot));
  RETURN_IF_ERROR(CheckIds(input_ids));
  if (input_ids.dim() != 1 || input_ids.size(0) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefill input_ids must be [S] with S > 0, got ", Shape(input_ids.sizes())));
  }
  const int64_t s = input_ids.size(0), past = cache.lengths_[slot];
  if (past + s > cache.capacity()) {
    return absl::OutOfRangeError(absl::StrCat("slot ", slot, " holds ", past, " tokens; ", s,
                                              " more exceed the capacity ", cache.capacity()));
  }
  ASSIGN_OR_RETURN(at::Tensor pos, NormalizePositions(positions, input_ids.sizes()));
  return GuardAten([&]() -> absl::StatusOr<at::Tensor> {
    std::optional<at::Tensor> mask;
    if (past > 0) {
      // Query i (absolute index past + i) sees keys 0..past + i.
      const auto idx = at::TensorOptions().dtype(at::kLong).device(options_.device);
      at::Tensor allowed = at::arange(past + s, idx).unsqueeze(0) <=
                           (at::arange(s, idx) + past).unsqueeze(1);  // [S, past + S]
      mask = at::zeros(allowed.sizes(),
                       at::TensorOptions().dtype(options_.dtype).device(options_.device))
                 .masked_fill(allowed.logical_not(), Blocked());
    }
    AttendFn attend = [&](int64_t l, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v) {
      at::Tensor k_slot = cache.k_[l].select(0, slot), v_slot = cache.v_[l].select(0, slot);
      k_slot.narrow(1, past, s).copy_(k[0]);  // [Hkv, S, D]
      v_slot.narrow(1, past, s).copy_(v[0]);
      if (past == 0) return Attention(q, k, v, std::nullopt, /*causal=*/true);
      return Attention(q, k_slot.narrow(1, 0, past + s).unsqueeze(0),
                       v_slot.narrow(1, 0, past + s).unsqueeze(0), mask, /*causal=*/false);
    };
    at::Tensor hidden = Decoder(input_ids.to(options_.device, at::kLong).unsqueeze(0),
                                pos.unsqueeze(1), attend);  // [1, S, hidden]
    at::Tensor logits = at::linear(hidden.select(1, s - 1).squeeze(0), lm_head_);
    // Only now, after every layer wrote its entries: a failed step leaves the slot unchanged.
    cache.lengths_[slot] = past + s;
    return logits;  // [vision_vocab_size]
  });
}

absl::StatusOr<at::Tensor> ArModel::Decode(KvCache& cache, const std::vector<int64_t>& slots,
                                           const at::Tensor& tokens,
                                           const at::Tensor& positions) const {
  RETURN_IF_ERROR(CheckCache(cache));
  const int64_t b = static_cast<int64_t>(slots.size());
  if (b == 0) return absl::InvalidArgumentError("decode needs at least one slot");
  std::set<int64_t> distinct;
  std::vector<int64_t> lengths;
  bool contiguous = true;
  int64_t longest = 0;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t slot = slots[i];
    RETURN_IF_ERROR(cache.CheckSlot(slot));
    if (!distinct.insert(slot).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot ", slot, " appears twice in a decode step"));
    }
    const int64_t len = cache.lengths_[slot];
    if (len >= cache.capacity()) {
      return absl::OutOfRangeError(
          absl::StrCat("slot ", slot, " is full (", cache.capacity(), " tokens)"));
    }
    lengths.push_back(len);
    longest = std::max(longest, len);
    contiguous = contiguous && slot == slots[0] + i;
  }
  RETURN_IF_ERROR(CheckIds(tokens));
  if (tokens.dim() != 1 || tokens.size(0) != b) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode tokens must be [", b, "], got ", Shape(tokens.sizes())));
  }
  ASSIGN_OR_RETURN(at::Tensor pos, NormalizePositions(positions, tokens.sizes()));
  return GuardAten([&]() -> absl::StatusOr<at::Tensor> {
    const int64_t kv_len = longest + 1;  // keys read this step, including the new token
    const auto idx = at::TensorOptions().dtype(at::kLong).device(options_.device);
    at::Tensor slots_t = at::tensor(slots, at::kLong).to(options_.device);
    at::Tensor lengths_t = at::tensor(lengths, at::kLong).to(options_.device);
    // Slot i sees its own entries 0..length_i (the new token included), nothing beyond.
    at::Tensor allowed = at::arange(kv_len, idx).unsqueeze(0) <= lengths_t.unsqueeze(1);  // [B, L]
    at::Tensor mask = at::zeros({b, 1, 1, kv_len},
                                at::TensorOptions().dtype(options_.dtype).device(options_.device))
                          .masked_fill(allowed.logical_not().view({b, 1, 1, kv_len}), Blocked());
    const int64_t hkv = config_.num_key_value_heads, d = config_.head_dim;
    const int64_t group = config_.num_attention_heads / hkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    AttendFn attend = [&](int64_t l, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v) {
      using at::indexing::Slice;
      cache.k_[l].index_put_({slots_t, Slice(), lengths_t}, k.select(2, 0));  // [B, Hkv, D]
      cache.v_[l].index_put_({slots_t, Slice(), lengths_t}, v.select(2, 0));
      at::Tensor keys, values;  // [B, Hkv, L, D]
      if (contiguous) {
        keys = cache.k_[l].narrow(0, slots[0], b).narrow(2, 0, kv_len);
        values = cache.v_[l].narrow(0, slots[0], b).narrow(2, 0, kv_len);
      } else {
        keys = cache.k_[l].narrow(2, 0, kv_len).index_select(0, slots_t);
        values = cache.v_[l].narrow(2, 0, kv_len).index_select(0, slots_t);
      }
      // One query per sequence: fold the query heads sharing a KV head into the query axis
      // ([B, Hkv, G, D]) instead of repeating K/V G times.
      at::Tensor grouped = q.reshape({b, hkv, group, d});
      at::Tensor out = compat::ScaledDotProductAttention(grouped, keys, values, mask,
                                                         /*causal=*/false, scale);
      return out.reshape({b, hkv * group, 1, d});  // [B, H, 1, D]
    };
    at::Tensor hidden = Decoder(tokens.to(options_.device, at::kLong).unsqueeze(1),
                                pos.unsqueeze(2), attend);        // [B, 1, hidden]
    at::Tensor logits = at::linear(hidden.squeeze(1), lm_head_);  // [B, vision_vocab_size]
    for (int64_t slot : slots) cache.lengths_[slot] += 1;
    return logits;
  });
}

// ------------------------------------------------------------------------ bucketed decode

struct ArModel::StepBuffers {
  at::Tensor tokens;     // [Bb] int64, device
  at::Tensor positions;  // [3, Bb] int64, device
  at::Tensor slots;      // [Bb] int64, device (padding rows: the scratch slot)
  at::Tensor lengths;    // [Bb] int64, device (padding rows: 0)
  at::Tensor logits;     // [Bb, V], written by each step
#if defined(DIFFMESH_WITH_CUDA)
  std::unique_ptr<at::cuda::CUDAGraph> graph;
#endif
};

ArModel::ArModel(const ArConfig& config, const Options& options) : config_(config), options_(options) {}
ArModel::~ArModel() = default;

bool ArModel::UsesFusedDecode() const {
#if defined(DIFFMESH_WITH_CUDA)
  const ArConfig& c = config_;
  return options_.fused_decode && options_.device.is_cuda() &&
         options_.dtype == at::kBFloat16 &&
         cuda::DecodeAttentionSupports(static_cast<int>(c.num_attention_heads),
                                       static_cast<int>(c.num_key_value_heads),
                                       static_cast<int>(c.head_dim),
                                       static_cast<int>(c.rotary_dim())) &&
         c.hidden_size % 8 == 0 && c.hidden_size <= 8192 && c.intermediate_size % 8 == 0;
#else
  return false;
#endif
}

#if defined(DIFFMESH_WITH_CUDA)
namespace {

void Check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, what, ": ", cudaGetErrorString(e));
}

// out [B, rows] = x [B, k] · wᵀ (+ bias): the GEMV kernel for small batches (the same
// per-sequence arithmetic at every batch size it takes), cuBLAS above.
void Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, at::Tensor& out,
            cudaStream_t stream) {
  if (x.size(0) <= cuda::kGemvMaxBatch) {
    cuda::GemvArgs a;
    a.w = w.data_ptr();
    a.x = x.data_ptr();
    a.bias = bias.defined() ? bias.data_ptr() : nullptr;
    a.y = out.data_ptr();
    a.batch = static_cast<int>(x.size(0));
    a.rows = static_cast<int>(w.size(0));
    a.k = static_cast<int>(w.size(1));
    a.epilogue = bias.defined() ? cuda::GemvEpilogue::kBias : cuda::GemvEpilogue::kNone;
    Check(cuda::LaunchGemv(a, stream), "decode GEMV");
  } else if (bias.defined()) {
    at::addmm_out(out, bias, x, w.t());
  } else {
    at::mm_out(out, x, w.t());
  }
}

}  // namespace
#endif

at::Tensor ArModel::FusedStep(KvCache& cache, const StepBuffers& s, int64_t key_len) const {
#if defined(DIFFMESH_WITH_CUDA)
  const ArConfig& c = config_;
  const int64_t b = s.tokens.size(0);
  const int64_t h = c.num_attention_heads, hkv = c.num_key_value_heads, d = c.head_dim;
  const int64_t width = c.hidden_size, inter = c.intermediate_size;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
  const auto f32 = opts.dtype(at::kFloat);
  const int splits = static_cast<int>((key_len + cuda::kAttentionChunk - 1) / cuda::kAttentionChunk);

  at::Tensor hidden = at::embedding(embed_tokens_, s.tokens).contiguous();  // [Bb, width]
  const auto [cos_full, sin_full] = Rotary(s.positions);                      // [Bb, 1, rd]
  const at::Tensor cos = cos_full.reshape({b, -1}).contiguous();
  const at::Tensor sin = sin_full.reshape({b, -1}).contiguous();
  at::Tensor x = at::empty({b, width}, opts);
  at::Tensor qkv = at::empty({b, (h + 2 * hkv) * d}, opts);
  at::Tensor attn = at::empty({b, h * d}, opts);
  at::Tensor proj = at::empty({b, width}, opts);  // o_proj, then down_proj output
  at::Tensor mlp = at::empty({b, inter}, opts);
  at::Tensor o_partial = at::empty({b, h, splits, d}, f32);
  at::Tensor m_partial = at::empty({b, h, splits}, f32);
  at::Tensor l_partial = at::empty({b, h, splits}, f32);
  at::Tensor counters = at::zeros({b * h}, opts.dtype(at::kInt));  // each layer leaves them 0
  at::Tensor gate_up;  // cuBLAS path only
  const bool gemv = b <= cuda::kGemvMaxBatch;
  if (!gemv) gate_up = at::empty({b, 2 * inter}, opts);

  auto norm = [&](const at::Tensor& delta, const at::Tensor& w_delta, const at::Tensor& w_in) {
    cuda::ResidualRmsNormArgs a;
    a.hidden = hidden.data_ptr();
    a.delta = delta.defined() ? delta.data_ptr() : nullptr;
    a.w_delta = delta.defined() ? w_delta.data_ptr() : nullptr;
    a.w_in = w_in.data_ptr();
    a.out = x.data_ptr();
    a.batch = static_cast<int>(b);
    a.n = static_cast<int>(width);
    a.eps = static_cast<float>(c.rms_norm_eps);
    Check(cuda::LaunchResidualRmsNorm(a, stream), "decode RMSNorm");
  };
  cuda::DecodeAttentionArgs att;
  att.qkv = qkv.data_ptr();
  att.cos = cos.data_ptr();
  att.sin = sin.data_ptr();
  att.slots = s.slots.data_ptr<int64_t>();
  att.lengths = s.lengths.data_ptr<int64_t>();
  att.o_partial = o_partial.data_ptr<float>();
  att.m_partial = m_partial.data_ptr<float>();
  att.l_partial = l_partial.data_ptr<float>();
  att.counters = counters.data_ptr<int>();
  att.out = attn.data_ptr();
  att.batch = static_cast<int>(b);
  att.heads = static_cast<int>(h);
  att.kv_heads = static_cast<int>(hkv);
  att.head_dim = static_cast<int>(d);
  att.rotary_dim = static_cast<int>(c.rotary_dim());
  att.capacity = cache.capacity();
  att.splits = splits;
  att.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));

  at::Tensor none;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& w = layers_[l];
    if (l == 0) {
      norm(none, none, w.input_layernorm);
    } else {
      norm(proj, layers_[l - 1].post_mlp_layernorm, w.input_layernorm);
    }
    Linear(x, w.qkv_weight, w.qkv_bias, qkv, stream);
    att.k_cache = cache.k_[l].data_ptr();
    att.v_cache = cache.v_[l].data_ptr();
    Check(cuda::LaunchDecodeAttention(att, stream), "decode attention");
    Linear(attn, w.o_proj, none, proj, stream);
    norm(proj, w.post_self_attn_layernorm, w.post_attention_layernorm);
    if (gemv) {
      cuda::GemvArgs a;
      a.w = w.gate_up_proj.data_ptr();
      a.x = x.data_ptr();
      a.y = mlp.data_ptr();
      a.batch = static_cast<int>(b);
      a.rows = static_cast<int>(inter);
      a.k = static_cast<int>(width);
      a.epilogue = cuda::GemvEpilogue::kSwiGlu;
      Check(cuda::LaunchGemv(a, stream), "decode gate/up GEMV");
    } else {
      at::mm_out(gate_up, x, w.gate_up_proj.t());
      at::mul_out(mlp, gate_up.narrow(1, inter, inter), at::silu(gate_up.narrow(1, 0, inter)));
    }
    Linear(mlp, w.down_proj, none, proj, stream);
  }
  norm(proj, layers_.back().post_mlp_layernorm, norm_);
  at::Tensor logits = at::empty({b, c.vision_vocab_size}, opts);
  Linear(x, lm_head_, none, logits, stream);
  return logits;
#else
  (void)cache;
  (void)s;
  (void)key_len;
  TORCH_CHECK(false, "fused decode needs a CUDA build");
  return at::Tensor();
#endif
}

at::Tensor ArModel::BucketedStep(KvCache& cache, const StepBuffers& s, int64_t key_len) const {
  if (UsesFusedDecode()) return FusedStep(cache, s, key_len);
  const int64_t b = s.tokens.size(0);
  const auto idx = at::TensorOptions().dtype(at::kLong).device(options_.device);
  at::Tensor allowed = at::arange(key_len, idx).unsqueeze(0) <= s.lengths.unsqueeze(1);  // [Bb, L]
  at::Tensor mask = at::zeros({b, 1, 1, key_len},
                              at::TensorOptions().dtype(options_.dtype).device(options_.device))
                        .masked_fill(allowed.logical_not().view({b, 1, 1, key_len}), Blocked());
  const int64_t hkv = config_.num_key_value_heads, d = config_.head_dim;
  const int64_t group = config_.num_attention_heads / hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  AttendFn attend = [&](int64_t l, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    using at::indexing::Slice;
    cache.k_[l].index_put_({s.slots, Slice(), s.lengths}, k.select(2, 0));  // [Bb, Hkv, D]
    cache.v_[l].index_put_({s.slots, Slice(), s.lengths}, v.select(2, 0));
    at::Tensor keys = cache.k_[l].narrow(2, 0, key_len).index_select(0, s.slots);
    at::Tensor values = cache.v_[l].narrow(2, 0, key_len).index_select(0, s.slots);
    at::Tensor grouped = q.reshape({b, hkv, group, d});
    at::Tensor out = compat::ScaledDotProductAttention(grouped, keys, values, mask,
                                                       /*causal=*/false, scale);
    return out.reshape({b, hkv * group, 1, d});
  };
  at::Tensor hidden = Decoder(s.tokens.unsqueeze(1), s.positions.unsqueeze(2), attend);
  return at::linear(hidden.squeeze(1), lm_head_);  // [Bb, V]
}

absl::StatusOr<at::Tensor> ArModel::DecodeBucketed(KvCache& cache, const std::vector<int64_t>& slots,
                                                   const at::Tensor& tokens,
                                                   const at::Tensor& positions) const {
  RETURN_IF_ERROR(CheckCache(cache));
  const int64_t b = static_cast<int64_t>(slots.size());
  if (b == 0) return absl::InvalidArgumentError("decode needs at least one slot");
  std::set<int64_t> distinct;
  int64_t longest = 0;
  for (int64_t slot : slots) {
    RETURN_IF_ERROR(cache.CheckSlot(slot));
    if (!distinct.insert(slot).second) {
      return absl::InvalidArgumentError(absl::StrCat("slot ", slot, " appears twice in a decode step"));
    }
    if (cache.lengths_[slot] >= cache.capacity()) {
      return absl::OutOfRangeError(absl::StrCat("slot ", slot, " is full (", cache.capacity(), " tokens)"));
    }
    longest = std::max(longest, cache.lengths_[slot]);
  }
  RETURN_IF_ERROR(CheckIds(tokens));
  if (tokens.dim() != 1 || tokens.size(0) != b) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode tokens must be [", b, "], got ", Shape(tokens.sizes())));
  }
  ASSIGN_OR_RETURN(at::Tensor pos, NormalizePositions(positions, tokens.sizes()));
  auto bucket = [](int64_t n, int64_t least) {
    int64_t p = least;
    while (p < n) p *= 2;
    return p;
  };
  const int64_t bb = bucket(b, 1);
  const int64_t key_len = std::min(bucket(longest + 1, 64), cache.capacity());
  return GuardAten([&]() -> absl::StatusOr<at::Tensor> {
    if (steps_cache_ != &cache) {  // buffers and graphs belong to one cache
      steps_.clear();
      steps_cache_ = &cache;
    }
    auto& entry = steps_[{bb, key_len}];
    const bool fresh = entry == nullptr;
    if (fresh) {
      entry = std::make_unique<StepBuffers>();
      const auto idx = at::TensorOptions().dtype(at::kLong).device(options_.device);
      entry->tokens = at::zeros({bb}, idx);
      entry->positions = at::zeros({3, bb}, idx);
      entry->slots = at::full({bb}, cache.scratch_slot(), idx);
      entry->lengths = at::zeros({bb}, idx);
    }
    StepBuffers& s = *entry;
    // Inputs into the static buffers (padding rows: token 0 at position 0 of the scratch slot).
    std::vector<int64_t> slot_v(bb, cache.scratch_slot()), len_v(bb, 0);
    for (int64_t i = 0; i < b; ++i) {
      slot_v[i] = slots[i];
      len_v[i] = cache.lengths_[slots[i]];
    }
    s.slots.copy_(at::tensor(slot_v, at::kLong));
    s.lengths.copy_(at::tensor(len_v, at::kLong));
    s.tokens.zero_();
    s.tokens.narrow(0, 0, b).copy_(tokens.to(at::kLong));
    s.positions.zero_();
    s.positions.narrow(1, 0, b).copy_(pos);
    at::Tensor logits;
#if defined(DIFFMESH_WITH_CUDA)
    if (options_.device.is_cuda()) {
      if (fresh) {
        // First use of this bucket: run it once eagerly on a side stream (this step's result),
        // then record the same step as a graph for the next ones.
        c10::cuda::device_synchronize();
        c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
        {
          c10::cuda::CUDAStreamGuard guard(stream);
          logits = BucketedStep(cache, s, key_len).narrow(0, 0, b).clone();
          s.graph = std::make_unique<at::cuda::CUDAGraph>();
          s.graph->capture_begin();
          s.logits = BucketedStep(cache, s, key_len);
          s.graph->capture_end();
        }
        c10::cuda::device_synchronize();
      } else {
        s.graph->replay();
        logits = s.logits.narrow(0, 0, b).clone();
      }
    }
#endif
    if (!logits.defined()) logits = BucketedStep(cache, s, key_len).narrow(0, 0, b);
    for (int64_t slot : slots) cache.lengths_[slot] += 1;
    return logits;
  });
}

// ------------------------------------------------------------------------------ positions

absl::StatusOr<PromptPositionIds> PromptPositions(const ArConfig& config,
                                                  const at::Tensor& input_ids,
                                                  const std::vector<ImageGrid>& source_grids) {
  RETURN_IF_ERROR(CheckIntegral(input_ids, "input_ids"));
  if (!(input_ids.dim() == 1 || (input_ids.dim() == 2 && input_ids.size(0) == 1))) {
    return absl::InvalidArgumentError(
        absl::StrCat("input_ids must be [S] or [1, S], got ", Shape(input_ids.sizes())));
  }
  at::Tensor ids = input_ids.reshape({-1}).to(at::kCPU, at::kLong).contiguous();
  const int64_t s = ids.size(0);
  const int64_t* id = ids.data_ptr<int64_t>();
  std::vector<int64_t> starts, ends;
  for (int64_t i = 0; i < s; ++i) {
    if (id[i] == config.image_start_token_id) starts.push_back(i);
    if (id[i] == config.image_end_token_id) ends.push_back(i);
  }
  if (ends.size() != source_grids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt has ", ends.size(),
                                                   " complete images but ", source_grids.size(),
                                                   " source grids were given"));
  }
  at::Tensor out = at::empty({3, s}, at::kLong);
  int64_t* t = out.data_ptr<int64_t>();
  int64_t* hh = t + s;
  int64_t* ww = t + 2 * s;
  int64_t pos = 0, i = 0;
  auto text_until = [&](int64_t stop) {  // tokens [i, stop) count up on every axis
    for (; i < stop; ++i, ++pos) t[i] = hh[i] = ww[i] = pos;
  };
  for (size_t k = 0; k < ends.size(); ++k) {
    const ImageGrid& g = source_grids[k];
    if (k >= starts.size() || starts[k] >= ends[k] || starts[k] < i) {
      return absl::InvalidArgumentError(
          absl::StrCat("image_end at ", ends[k], " has no matching image_start before it"));
    }
    const int64_t first = starts[k] + 1, count = ends[k] - first;
    if (g.height <= 0 || g.width <= 0 || count != g.height * g.width) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", k, " has ", count, " tokens, grid is ", g.height, "x", g.width));
    }
    text_until(first);  // through the image_start token
    for (int64_t r = 0; r < g.height; ++r) {
      for (int64_t c = 0; c < g.width; ++c, ++i) {
        t[i] = pos;
        hh[i] = pos + r;
        ww[i] = pos + c;
      }
    }
    pos += std::max(g.height, g.width);
  }
  text_until(s);  // image_end token onwards, including a trailing generation marker
  return PromptPositionIds{out, pos};
}

at::Tensor GenerationPositions(int64_t start, const std::vector<ImageGrid>& grids) {
  int64_t total = 1;
  for (const ImageGrid& g : grids) total += g.height * g.width;
  at::Tensor out = at::empty({3, total}, at::kLong);
  int64_t* t = out.data_ptr<int64_t>();
  int64_t* hh = t + total;
  int64_t* ww = t + 2 * total;
  int64_t pos = start, i = 0;
  for (const ImageGrid& g : grids) {
    for (int64_t r = 0; r < g.height; ++r) {
      for (int64_t c = 0; c < g.width; ++c, ++i) {
        t[i] = pos;
        hh[i] = pos + r;
        ww[i] = pos + c;
      }
    }
    pos += std::max(g.height, g.width);
  }
  t[i] = hh[i] = ww[i] = pos;  // image_end token
  return out;
}

}  // namespace diffmesh::models::glm_image
