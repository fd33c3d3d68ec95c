#include "models/glm_image/dit.h"

#if defined(DIFFMESH_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "models/glm_image/cuda/qk_norm_rope.h"
#endif

#include <cmath>
#include <fstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"

namespace diffmesh::models::glm_image {
namespace {

constexpr double kNormEps = 1e-5;  // every LayerNorm in the reference
constexpr double kRopeTheta = 10000.0;
constexpr double kMaxPeriod = 10000.0;  // sinusoidal timestep/condition embeddings

absl::Status ReadInt(const nlohmann::json& json, const char* key, int64_t* out) {
  return ReadConfigField(json, "transformer", key, *out);
}

// LayerNorm over the last dim without affine parameters.
at::Tensor PlainLayerNorm(const at::Tensor& x) {
  return at::layer_norm(x, {x.size(-1)}, /*weight=*/{}, /*bias=*/{}, kNormEps);
}

// x·(1 + scale) + shift with per-sample [B, D] modulation broadcast over the sequence.
at::Tensor Modulate(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

// diffusers get_timestep_embedding with flip_sin_to_cos=True, downscale_freq_shift=0, scale=1:
// values [M] → [M, dim] float32 laid out as [cos | sin].
at::Tensor SinusoidalEmbedding(const at::Tensor& values, int64_t dim) {
  const int64_t half = dim / 2;
  at::Tensor exponent =
      at::arange(0, half, values.options().dtype(at::kFloat)) * (-std::log(kMaxPeriod));
  exponent = exponent / static_cast<double>(half);
  at::Tensor args = values.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);
  at::Tensor emb = at::cat({at::cos(args), at::sin(args)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0});
  return emb;
}

// GlmImageRotaryPosEmbed: 2-D RoPE tables over the patch grid, each [hp·wp, head_dim] float32.
// The first half of the frequencies indexes rows, the second columns; the table is the
// frequency vector repeated twice (rotate-half convention).
std::pair<at::Tensor, at::Tensor> RotaryTables(int64_t hp, int64_t wp, int64_t head_dim,
                                               const at::Device& device) {
  const int64_t dim_half = head_dim / 2;  // per axis
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor inv_freq = at::reciprocal(
      at::pow(kRopeTheta, at::arange(0, dim_half, 2, f32).slice(0, 0, dim_half / 2) / dim_half));
  at::Tensor freqs_h = at::outer(at::arange(hp, f32), inv_freq);  // [hp, dim/4]
  at::Tensor freqs_w = at::outer(at::arange(wp, f32), inv_freq);  // [wp, dim/4]
  const int64_t nf = inv_freq.size(0);
  at::Tensor freqs = at::cat(
      {freqs_h.unsqueeze(1).expand({hp, wp, nf}), freqs_w.unsqueeze(0).expand({hp, wp, nf})},
      -1);                                                     // [hp, wp, dim/2]
  freqs = at::cat({freqs, freqs}, -1).reshape({hp * wp, -1});  // [N, dim]
  return {freqs.cos(), freqs.sin()};
}

// diffusers apply_rotary_emb(use_real_unbind_dim=-2) on x [B, N, heads, D] in fp32, returned in
// x's dtype; cos/sin [N, D].
// x ← x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁], computed in fp32 (cos/sin are
// fp32, so the products promote without a separate upcast pass) and written back in x's dtype:
// one product, two half-width fused multiply-adds, one down-cast into x.
void ApplyRotaryInPlace(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor c = cos.unsqueeze(0).unsqueeze(2);  // [1, N, 1, D]
  at::Tensor s = sin.unsqueeze(0).unsqueeze(2);
  at::Tensor out = x * c;
  out.narrow(-1, 0, half).addcmul_(x.narrow(-1, half, half), s.narrow(-1, 0, half), -1);
  out.narrow(-1, half, half).addcmul_(x.narrow(-1, 0, half), s.narrow(-1, half, half));
  x.copy_(out);
}

// LayerNorm without affine parameters, then x·(1 + scale) + shift: for one sample the
// modulation is per channel, so it folds into the LayerNorm's own affine step (one kernel).
at::Tensor ModulatedNorm(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  if (x.size(0) == 1) return at::layer_norm(x, {x.size(-1)}, 1 + scale[0], shift[0], kNormEps);
  return Modulate(PlainLayerNorm(x), scale, shift);
}

// gelu_tanh(x Wᵀ + b). On CUDA the bias and GELU run in the GEMM's epilogue (cuBLASLt's GELU
// is the tanh form); the CPU's _addmm_activation uses another GELU, so there it stays two steps.
at::Tensor LinearGeluTanh(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  at::Tensor x2d = x.reshape({-1, x.size(-1)});
  at::Tensor y = x.is_cuda() ? at::_addmm_activation(bias, x2d, weight.t(), 1, 1, /*use_gelu=*/true)
                             : at::gelu(at::addmm(bias, x2d, weight.t()), "tanh");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = weight.size(0);
  return y.view(shape);
}

// q and k [B, S, heads, D] from the fused projection qkv [B, S, 3, heads, D]: each head
// LayerNorm-ed, then the image tokens (from text_len on) rotated by cos/sin [S − text_len, D].
std::pair<at::Tensor, at::Tensor> NormRotateQk(const at::Tensor& qkv, int64_t text_len,
                                               const at::Tensor& cos, const at::Tensor& sin) {
#if defined(DIFFMESH_WITH_CUDA)
  const int64_t head_dim = qkv.size(4);
  const auto type = qkv.scalar_type();
  if (qkv.is_cuda() && qkv.is_contiguous() && cuda::QkNormRopeSupports(head_dim) &&
      (type == at::kBFloat16 || type == at::kHalf || type == at::kFloat)) {
    // One pass instead of the ~10 memory-bound passes of the composition below.
    const c10::cuda::CUDAGuard guard(qkv.device());
    at::Tensor q = at::empty({qkv.size(0), qkv.size(1), qkv.size(3), head_dim}, qkv.options());
    at::Tensor k = at::empty_like(q);
    const at::Tensor c = cos.to(at::kFloat).contiguous(), s = sin.to(at::kFloat).contiguous();
    cuda::QkNormRopeArgs a;
    a.qkv = qkv.data_ptr();
    a.q = q.data_ptr();
    a.k = k.data_ptr();
    a.cos = c.data_ptr<float>();
    a.sin = s.data_ptr<float>();
    a.batch = qkv.size(0);
    a.seq = qkv.size(1);
    a.heads = qkv.size(3);
    a.head_dim = head_dim;
    a.text_len = text_len;
    a.eps = static_cast<float>(kNormEps);
    a.type = type == at::kBFloat16 ? cuda::ElementType::kBFloat16
             : type == at::kHalf   ? cuda::ElementType::kFloat16
                                   : cuda::ElementType::kFloat32;
    const cudaError_t err = cuda::LaunchQkNormRope(a, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "qk_norm_rope: ", cudaGetErrorString(err));
    return {q, k};
  }
#endif
  const int64_t seq = qkv.size(1);
  at::Tensor q = PlainLayerNorm(qkv.select(2, 0));  // [B, S, heads, D]
  at::Tensor k = PlainLayerNorm(qkv.select(2, 1));
  ApplyRotaryInPlace(q.narrow(1, text_len, seq - text_len), cos, sin);
  ApplyRotaryInPlace(k.narrow(1, text_len, seq - text_len), cos, sin);
  return {q, k};
}

}  // namespace

absl::StatusOr<DitConfig> DitConfig::FromJson(const nlohmann::json& json) {
  DitConfig c;
  if (!json.is_object()) return absl::InvalidArgumentError("transformer config: not an object");
  RETURN_IF_ERROR(ReadInt(json, "patch_size", &c.patch_size));
  RETURN_IF_ERROR(ReadInt(json, "in_channels", &c.in_channels));
  RETURN_IF_ERROR(ReadInt(json, "out_channels", &c.out_channels));
  RETURN_IF_ERROR(ReadInt(json, "num_layers", &c.num_layers));
  RETURN_IF_ERROR(ReadInt(json, "attention_head_dim", &c.attention_head_dim));
  RETURN_IF_ERROR(ReadInt(json, "num_attention_heads", &c.num_attention_heads));
  RETURN_IF_ERROR(ReadInt(json, "text_embed_dim", &c.text_embed_dim));
  RETURN_IF_ERROR(ReadInt(json, "time_embed_dim", &c.time_embed_dim));
  RETURN_IF_ERROR(ReadInt(json, "condition_dim", &c.condition_dim));
  RETURN_IF_ERROR(
      ReadInt(json, "prior_vq_quantizer_codebook_size", &c.prior_vq_quantizer_codebook_size));
  for (int64_t v :
       {c.patch_size, c.in_channels, c.out_channels, c.attention_head_dim, c.num_attention_heads,
        c.text_embed_dim, c.time_embed_dim, c.condition_dim, c.prior_vq_quantizer_codebook_size}) {
    if (v <= 0) return absl::InvalidArgumentError("transformer config: sizes must be positive");
  }
  if (c.num_layers < 0) return absl::InvalidArgumentError("transformer config: num_layers < 0");
  // The 2-D RoPE splits head_dim into row/column halves of cos/sin pairs.
  if (c.attention_head_dim % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("transformer config: attention_head_dim ",
                                                   c.attention_head_dim, " not a multiple of 4"));
  }
  return c;
}

absl::StatusOr<DitConfig> DitConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

std::vector<ParamSpec> GlmImageDit::Params(const DitConfig& c) {
  const int64_t dim = c.inner_dim();
  const int64_t p = c.patch_size;
  const int64_t te = c.time_embed_dim;
  std::vector<ParamSpec> specs;
  AddLinear(specs, "image_projector.proj", c.in_channels * p * p, dim);
  AddLinear(specs, "glyph_projector.net.0.proj", c.text_embed_dim, dim);
  AddLinear(specs, "glyph_projector.net.2", dim, dim);
  specs.push_back({"prior_token_embedding.weight", {c.prior_vq_quantizer_codebook_size, dim}});
  AddLinear(specs, "prior_projector.net.0.proj", dim, dim);
  AddLinear(specs, "prior_projector.net.2", dim, dim);
  // The timestep sinusoid has time_embed_dim channels; the size conditions contribute
  // 2 (crop, target) × 2 (values each) × condition_dim.
  AddLinear(specs, "time_condition_embed.timestep_embedder.linear_1", te, te);
  AddLinear(specs, "time_condition_embed.timestep_embedder.linear_2", te, te);
  AddLinear(specs, "time_condition_embed.condition_embedder.linear_1", 4 * c.condition_dim, te);
  AddLinear(specs, "time_condition_embed.condition_embedder.linear_2", te, te);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = absl::StrCat("transformer_blocks.", i, ".");
    AddLinear(specs, b + "norm1.linear", te, 12 * dim);
    AddLinear(specs, b + "attn1.to_q", dim, dim);
    AddLinear(specs, b + "attn1.to_k", dim, dim);
    AddLinear(specs, b + "attn1.to_v", dim, dim);
    AddLinear(specs, b + "attn1.to_out.0", dim, dim);
    AddLinear(specs, b + "ff.net.0.proj", dim, 4 * dim);
    AddLinear(specs, b + "ff.net.2", 4 * dim, dim);
  }
  AddLinear(specs, "norm_out.linear", te, 2 * dim);
  AddLinear(specs, "proj_out", dim, p * p * c.out_channels);
  return specs;
}

GlmImageDit::GlmImageDit(const DitConfig& config, WeightMap weights, TensorParallelShard tp)
    : config_(config), weights_(std::move(weights)), tp_(tp) {
  dtype_ = Get(weights_, "proj_out.weight").scalar_type();
  attention_fn_ = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    return Attention(q, k, v);
  };
}

namespace {

absl::Status CheckTensorParallel(const DitConfig& config, TensorParallelShard tp) {
  if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size) {
    return absl::InvalidArgumentError(absl::StrCat("tensor parallel rank ", tp.rank, " of ", tp.size));
  }
  if (config.num_attention_heads % tp.size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention heads ", config.num_attention_heads,
                                                   " do not divide by tp ", tp.size));
  }
  return absl::OkStatus();
}

}  // namespace

int GlmImageDit::TensorParallelDim(const std::string& name) {
  constexpr char kBlocks[] = "transformer_blocks.";
  if (name.rfind(kBlocks, 0) != 0) return -1;
  const size_t dot = name.find('.', sizeof(kBlocks) - 1);
  if (dot == std::string::npos) return -1;
  const std::string rest = name.substr(dot + 1);
  for (const char* proj : {"attn1.to_q.", "attn1.to_k.", "attn1.to_v.", "ff.net.0.proj."}) {
    if (rest == std::string(proj) + "weight" || rest == std::string(proj) + "bias") return 0;
  }
  if (rest == "attn1.to_out.0.weight" || rest == "ff.net.2.weight") return 1;
  return -1;
}

std::vector<ParamSpec> GlmImageDit::Params(const DitConfig& config, TensorParallelShard tp) {
  std::vector<ParamSpec> specs = Params(config);
  if (tp.size <= 1) return specs;
  for (ParamSpec& s : specs) {
    const int dim = TensorParallelDim(s.name);
    if (dim >= 0) s.shape[dim] /= tp.size;
  }
  return specs;
}

absl::StatusOr<std::unique_ptr<GlmImageDit>> GlmImageDit::Create(const DitConfig& config,
                                                                 WeightMap weights,
                                                                 TensorParallelShard tp) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  RETURN_IF_ERROR(CheckTensorParallel(config, tp));
  if (tp.size > 1) {
    // Column-parallel weights keep their rows of this rank, row-parallel ones their columns;
    // each slice is copied so the full tensor can be freed.
    for (auto& [name, t] : weights) {
      const int dim = TensorParallelDim(name);
      if (dim < 0) continue;
      const int64_t n = t.size(dim) / tp.size;
      t = t.narrow(dim, tp.rank * n, n).clone(at::MemoryFormat::Contiguous);
    }
  }
  return Assemble(config, std::move(weights), tp);
}

absl::StatusOr<std::unique_ptr<GlmImageDit>> GlmImageDit::CreateFromSlices(const DitConfig& config,
                                                                           WeightMap weights,
                                                                           TensorParallelShard tp) {
  RETURN_IF_ERROR(CheckTensorParallel(config, tp));
  RETURN_IF_ERROR(CheckWeights(weights, Params(config, tp)));
  return Assemble(config, std::move(weights), tp);
}

std::unique_ptr<GlmImageDit> GlmImageDit::Assemble(const DitConfig& config, WeightMap weights,
                                                   TensorParallelShard tp) {
  // One GEMM for q, k and v: their (sliced) weights stacked row-wise.
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string a = absl::StrCat("transformer_blocks.", i, ".attn1.");
    for (const char* part : {"weight", "bias"}) {
      std::vector<at::Tensor> rows;
      for (const char* proj : {"to_q.", "to_k.", "to_v."}) {
        auto it = weights.find(a + proj + part);
        rows.push_back(it->second);
        weights.erase(it);
      }
      weights.emplace(a + "to_qkv." + part, at::cat(rows, 0));
    }
  }
  return std::unique_ptr<GlmImageDit>(new GlmImageDit(config, std::move(weights), tp));
}

at::Tensor GlmImageDit::RowParallelLinear(const at::Tensor& x, const std::string& prefix,
                                          const DitCollectives* collectives) const {
  if (tp_.size == 1) return Linear(x, weights_, prefix);
  TORCH_CHECK(collectives != nullptr && collectives->tp_all_reduce,
              "tensor-parallel DiT needs a tp all-reduce");
  at::Tensor partial = at::linear(x, Get(weights_, prefix + ".weight"));
  collectives->tp_all_reduce(partial);
  return partial + Get(weights_, prefix + ".bias");
}

absl::StatusOr<std::unique_ptr<GlmImageDit>> GlmImageDit::Load(const std::string& dir,
                                                               at::ScalarType dtype) {
  ASSIGN_OR_RETURN(DitConfig config, DitConfig::FromFile(dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(WeightMap weights, LoadWeights(*checkpoint, Params(config), dtype));
  return Create(config, std::move(weights));
}

at::Tensor GlmImageDit::TimeConditionEmbedding(const at::Tensor& timestep,
                                               const at::Tensor& target_size,
                                               const at::Tensor& crop_coords) const {
  const int64_t batch = timestep.size(0);
  // Sinusoids in fp32, then the MLPs in the model dtype, as the reference does.
  at::Tensor t_proj = SinusoidalEmbedding(timestep, config_.time_embed_dim);  // [B, te]
  at::Tensor crop_proj = SinusoidalEmbedding(crop_coords.flatten(), config_.condition_dim)
                             .view({batch, -1});  // [B, 2·cd]
  at::Tensor size_proj = SinusoidalEmbedding(target_size.flatten(), config_.condition_dim)
                             .view({batch, -1});              // [B, 2·cd]
  at::Tensor cond_proj = at::cat({crop_proj, size_proj}, 1);  // [B, 4·cd]

  const std::string p = "time_condition_embed.";
  at::Tensor t_emb = Linear(t_proj.to(dtype_), weights_, p + "timestep_embedder.linear_1");
  t_emb = Linear(at::silu(t_emb), weights_, p + "timestep_embedder.linear_2");
  at::Tensor c_emb = Linear(cond_proj.to(dtype_), weights_, p + "condition_embedder.linear_1");
  c_emb = Linear(at::silu(c_emb), weights_, p + "condition_embedder.linear_2");
  return at::silu(t_emb + c_emb);  // [B, te]
}

void GlmImageDit::Block(int64_t index, at::Tensor& hidden, at::Tensor& context,
                        const at::Tensor& temb, const at::Tensor& rope_cos,
                        const at::Tensor& rope_sin, bool skip_attention,
                        const DitCollectives* collectives,
                        const JointAttentionShape& shape, const DitKvCache* kv_read,
                        DitKvCache* kv_write) const {
  const std::string b = absl::StrCat("transformer_blocks.", index, ".");
  const int64_t batch = hidden.size(0);
  const int64_t text_len = context.size(1);
  const int64_t seq = text_len + hidden.size(1);
  const int64_t heads = config_.num_attention_heads / tp_.size;  // this rank's heads
  const int64_t head_dim = config_.attention_head_dim;
  const int64_t dim = heads * head_dim;

  // AdaLN-Zero modulation, 12 chunks interleaving the image and text (c_) streams.
  std::vector<at::Tensor> m = Linear(temb, weights_, b + "norm1.linear").chunk(12, 1);
  const at::Tensor &shift_msa = m[0], &c_shift_msa = m[1], &scale_msa = m[2], &c_scale_msa = m[3],
                   &gate_msa = m[4], &c_gate_msa = m[5], &shift_mlp = m[6], &c_shift_mlp = m[7],
                   &scale_mlp = m[8], &c_scale_mlp = m[9], &gate_mlp = m[10], &c_gate_mlp = m[11];

  at::Tensor norm_h = ModulatedNorm(hidden, scale_msa, shift_msa);
  at::Tensor norm_c = ModulatedNorm(context, c_scale_msa, c_shift_msa);

  // Joint attention over [text; image].
  at::Tensor joint = at::cat({norm_c, norm_h}, 1);  // [B, S, dim]
  // Fused projection of the joint sequence → q, k, v [B, S, heads, D]; the per-head LayerNorm
  // of q and k makes fresh tensors, with RoPE applied to the image tokens.
  at::Tensor qkv = Linear(joint, weights_, b + "attn1.to_qkv").view({batch, seq, 3, heads, head_dim});
  auto [q, k] = NormRotateQk(qkv, text_len, rope_cos, rope_sin);
  at::Tensor v = qkv.select(2, 2);

  if (kv_write != nullptr) {
    // Appended as the reference's cache stores them: after QK-norm and RoPE, [1, S, heads, D].
    at::Tensor& ck = kv_write->keys[index];
    at::Tensor& cv = kv_write->values[index];
    ck = ck.defined() ? at::cat({ck, k}, 1) : k.clone();
    cv = cv.defined() ? at::cat({cv, v}, 1) : v.clone();
  }

  at::Tensor attn;
  if (skip_attention) {
    attn = v;  // identity attention: each token keeps its own value
  } else if (kv_read != nullptr && kv_read->num_tokens() > 0) {
    // Condition keys/values first, shared by every batch row; no mask.
    const at::Tensor& ck = kv_read->keys[index];
    const at::Tensor& cv = kv_read->values[index];
    at::Tensor keys = at::cat({ck.to(k.scalar_type()).expand({batch, -1, -1, -1}), k}, 1);
    at::Tensor values = at::cat({cv.to(v.scalar_type()).expand({batch, -1, -1, -1}), v}, 1);
    attn = attention_fn_(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
               .transpose(1, 2);
  } else if (collectives != nullptr && collectives->sp_size > 1) {
    attn = collectives->attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), shape)
               .transpose(1, 2);
  } else {
    attn = attention_fn_(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2);
  }
  attn = attn.reshape({batch, seq, dim}).to(q.scalar_type());  // [B, S, dim_local]
  attn = RowParallelLinear(attn, b + "attn1.to_out.0", collectives);

  hidden = at::addcmul(hidden, attn.slice(1, text_len), gate_msa.unsqueeze(1));
  context = at::addcmul(context, attn.slice(1, 0, text_len), c_gate_msa.unsqueeze(1));

  // Shared feed-forward (tanh GELU) for both streams, each with its own modulation.
  // Column-parallel → GELU → row-parallel: no gather in between under tensor parallelism.
  const at::Tensor& fc1_w = Get(weights_, b + "ff.net.0.proj.weight");
  const at::Tensor& fc1_b = Get(weights_, b + "ff.net.0.proj.bias");
  auto ff = [&](const at::Tensor& x) {
    return RowParallelLinear(LinearGeluTanh(x, fc1_w, fc1_b), b + "ff.net.2", collectives);
  };
  norm_h = ModulatedNorm(hidden, scale_mlp, shift_mlp);
  norm_c = ModulatedNorm(context, c_scale_mlp, c_shift_mlp);
  hidden = at::addcmul(hidden, ff(norm_h), gate_mlp.unsqueeze(1));
  context = at::addcmul(context, ff(norm_c), c_gate_mlp.unsqueeze(1));
}

at::Tensor GlmImageDit::Forward(const DitInputs& in, const DitCollectives* collectives) const {
  const DitConfig& c = config_;
  const at::Tensor& any_weight = Get(weights_, "proj_out.weight");
  const at::Device device = any_weight.device();
  const auto float_opts = at::TensorOptions().dtype(at::kFloat).device(device);

  TORCH_CHECK(in.hidden_states.dim() == 4, "hidden_states must be [B, C, H, W]");
  const int64_t batch = in.hidden_states.size(0);
  const int64_t channels = in.hidden_states.size(1);
  const int64_t height = in.hidden_states.size(2);
  const int64_t width = in.hidden_states.size(3);
  const int64_t p = c.patch_size;
  TORCH_CHECK(channels == c.in_channels, "hidden_states has ", channels, " channels, expected ",
              c.in_channels);
  TORCH_CHECK(height % p == 0 && width % p == 0, "latent size ", height, "x", width,
              " not a multiple of patch size ", p);
  const int64_t hp = height / p, wp = width / p, num_patches = hp * wp;
  TORCH_CHECK(in.encoder_hidden_states.dim() == 3 && in.encoder_hidden_states.size(0) == batch &&
                  in.encoder_hidden_states.size(2) == c.text_embed_dim,
              "encoder_hidden_states must be [B, T, ", c.text_embed_dim, "]");
  TORCH_CHECK(in.prior_token_id.dim() == 2 && in.prior_token_id.size(0) == batch &&
                  in.prior_token_id.size(1) == num_patches,
              "prior_token_id must be [B, ", num_patches, "]");
  TORCH_CHECK(in.prior_token_drop.sizes() == in.prior_token_id.sizes(),
              "prior_token_drop must match prior_token_id");
  TORCH_CHECK(in.timestep.dim() == 1 && in.timestep.size(0) == batch, "timestep must be [B]");
  TORCH_CHECK(
      in.target_size.dim() == 2 && in.target_size.size(0) == batch && in.target_size.size(1) == 2,
      "target_size must be [B, 2]");
  TORCH_CHECK(
      in.crop_coords.dim() == 2 && in.crop_coords.size(0) == batch && in.crop_coords.size(1) == 2,
      "crop_coords must be [B, 2]");

  auto [rope_cos, rope_sin] = RotaryTables(hp, wp, c.attention_head_dim, device);  // [N, D]

  // Patch embedding: [B, C, H, W] → [B, N, C·p·p] with (c, py, px) fastest-varying.
  at::Tensor x = in.hidden_states.to(device, dtype_);
  at::Tensor patches = x.reshape({batch, channels, hp, p, wp, p})
                           .permute({0, 2, 4, 1, 3, 5})
                           .reshape({batch, num_patches, channels * p * p});
  at::Tensor hidden = Linear(patches, weights_, "image_projector.proj");  // [B, N, dim]

  // Glyph (text) stream: exact-erf GELU MLP.
  at::Tensor context = in.encoder_hidden_states.to(device, dtype_);
  context = Linear(at::gelu(Linear(context, weights_, "glyph_projector.net.0.proj")), weights_,
                   "glyph_projector.net.2");  // [B, T, dim]

  // Prior tokens: dropped positions contribute a zero embedding (still passed through the
  // projector, whose biases then act alone).
  at::Tensor ids = in.prior_token_id.to(device, at::kLong);
  at::Tensor drop = in.prior_token_drop.to(device).ne(0).unsqueeze(-1);  // [B, N, 1]
  at::Tensor prior = at::embedding(Get(weights_, "prior_token_embedding.weight"), ids);
  prior = prior.masked_fill(drop, 0);
  prior = Linear(at::silu(Linear(prior, weights_, "prior_projector.net.0.proj")), weights_,
                 "prior_projector.net.2");
  hidden = hidden + prior;

  at::Tensor temb =
      TimeConditionEmbedding(in.timestep.to(float_opts), in.target_size.to(float_opts),
                             in.crop_coords.to(float_opts));  // [B, te]

  // Sequence parallel: this rank keeps one contiguous shard of the image tokens (and their
  // rotary rows); the sequence is zero-padded to a multiple of sp, the padding masked as keys.
  const int sp = collectives != nullptr ? collectives->sp_size : 1;
  JointAttentionShape shape{context.size(1), num_patches, 0};
  if (sp > 1) {
    TORCH_CHECK(collectives->attention && collectives->sp_all_gather,
                "sequence-parallel DiT needs attention and all-gather");
    const int64_t shard = (num_patches + sp - 1) / sp;
    const int64_t pad = shard * sp - num_patches;
    shape.image_offset = collectives->sp_rank * shard;
    // Token dim is second to last in both hidden [B, N, dim] and the rotary tables [N, D].
    auto take = [&](const at::Tensor& t) {
      return at::constant_pad_nd(t, {0, 0, 0, pad}).narrow(-2, shape.image_offset, shard);
    };
    hidden = take(hidden);
    rope_cos = take(rope_cos);
    rope_sin = take(rope_sin);
  }
  if (tp_.size > 1) {
    TORCH_CHECK(collectives != nullptr && collectives->tp_all_reduce,
                "tensor-parallel DiT needs a tp all-reduce");
  }

  std::vector<bool> skip(c.num_layers, false);
  for (int64_t layer : in.skip_attention_layers) {
    TORCH_CHECK(layer >= 0 && layer < c.num_layers, "skip_attention_layers: no block ", layer);
    skip[layer] = true;
  }
  const bool reads_kv = in.kv_read != nullptr && in.kv_read->num_tokens() > 0;
  if (reads_kv) {
    TORCH_CHECK(sp == 1, "condition KV cache with sequence parallelism is not supported");
    TORCH_CHECK(static_cast<int64_t>(in.kv_read->keys.size()) == c.num_layers &&
                    in.kv_read->values.size() == in.kv_read->keys.size(),
                "kv_read holds ", in.kv_read->keys.size(), " blocks, the model has ",
                c.num_layers);
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const at::Tensor& ck = in.kv_read->keys[i];
      const at::Tensor& cv = in.kv_read->values[i];
      TORCH_CHECK(ck.defined() && cv.defined() && ck.dim() == 4 && ck.size(0) == 1 &&
                      ck.size(2) == c.num_attention_heads / tp_.size &&
                      ck.size(3) == c.attention_head_dim && cv.sizes() == ck.sizes() &&
                      ck.size(1) == in.kv_read->num_tokens(),
                  "kv_read block ", i, ": expected [1, ", in.kv_read->num_tokens(), ", ",
                  c.num_attention_heads / tp_.size, ", ", c.attention_head_dim, "] keys and values");
    }
  }
  if (in.kv_write != nullptr) {
    TORCH_CHECK(sp == 1, "condition KV cache with sequence parallelism is not supported");
    TORCH_CHECK(batch == 1, "the KV-cache write pass takes one image (batch 1)");
    in.kv_write->keys.resize(c.num_layers);
    in.kv_write->values.resize(c.num_layers);
  }
  for (int64_t i = 0; i < c.num_layers; ++i) {
    Block(i, hidden, context, temb, rope_cos, rope_sin, skip[i], collectives, shape,
          reads_kv ? in.kv_read : nullptr, in.kv_write);
  }

  // Final AdaLN (no activation on temb here: it already went through SiLU), chunked
  // (scale, shift).
  std::vector<at::Tensor> mod = Linear(temb, weights_, "norm_out.linear").chunk(2, 1);
  hidden = Modulate(PlainLayerNorm(hidden), mod[0], mod[1]);
  hidden = Linear(hidden, weights_, "proj_out");  // [B, n, p·p·C_out]
  if (sp > 1) {
    // Gather the narrow per-token outputs (p·p·C_out, not the inner dim) and drop the padding.
    hidden = collectives->sp_all_gather(hidden).narrow(1, 0, num_patches);
  }

  // Unpatchify: [B, hp, wp, C_out, p, p] → [B, C_out, H, W].
  return hidden.reshape({batch, hp, wp, c.out_channels, p, p})
      .permute({0, 3, 1, 4, 2, 5})
      .reshape({batch, c.out_channels, height, width});
}

}  // namespace diffmesh::models::glm_image
