#include "models/glm_image/vision_tokenizer.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"

namespace diffmesh::models::glm_image {
namespace {

constexpr double kL2Eps = 1e-12;  // F.normalize's default

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* component, const char* key,
                       T& out) {
  return ReadConfigField(json, component, key, out);
}

int64_t GridTokens(const std::vector<ImageGrid>& grids) {
  int64_t n = 0;
  for (const ImageGrid& g : grids) n += g.height * g.width;
  return n;
}

// x / max(‖x‖₂, eps) over the last dim (F.normalize).
at::Tensor L2Normalize(const at::Tensor& x) {
  return x / x.norm(2, {-1}, /*keepdim=*/true).clamp_min(kL2Eps);
}

}  // namespace

absl::StatusOr<VisionTokenizerConfig> VisionTokenizerConfig::FromJson(const nlohmann::json& json) {
  VisionTokenizerConfig c;
  if (!json.is_object()) return absl::InvalidArgumentError("vision_language_encoder config: not an object");
  std::string act = "gelu";
  if (auto it = json.find("vision_config"); it != json.end() && it->is_object()) {
    const char* k = "vision_config";
    RETURN_IF_ERROR(ReadField(*it, k, "depth", c.depth));
    RETURN_IF_ERROR(ReadField(*it, k, "hidden_size", c.hidden_size));
    RETURN_IF_ERROR(ReadField(*it, k, "num_heads", c.num_heads));
    RETURN_IF_ERROR(ReadField(*it, k, "intermediate_size", c.intermediate_size));
    RETURN_IF_ERROR(ReadField(*it, k, "patch_size", c.patch_size));
    RETURN_IF_ERROR(ReadField(*it, k, "in_channels", c.in_channels));
    RETURN_IF_ERROR(ReadField(*it, k, "image_size", c.image_size));
    RETURN_IF_ERROR(ReadField(*it, k, "layer_norm_eps", c.layer_norm_eps));
    RETURN_IF_ERROR(ReadField(*it, k, "spatial_merge_size", c.spatial_merge_size));
    RETURN_IF_ERROR(ReadField(*it, k, "attention_bias", c.attention_bias));
    RETURN_IF_ERROR(ReadField(*it, k, "hidden_act", act));
  }
  if (auto it = json.find("vq_config"); it != json.end() && it->is_object()) {
    const char* k = "vq_config";
    RETURN_IF_ERROR(ReadField(*it, k, "embed_dim", c.vq_embed_dim));
    RETURN_IF_ERROR(ReadField(*it, k, "num_embeddings", c.vq_num_embeddings));
    RETURN_IF_ERROR(ReadField(*it, k, "latent_channels", c.vq_latent_channels));
  }
  if (act != "gelu") {
    return absl::UnimplementedError(absl::StrCat("vision_config: hidden_act ", act));
  }
  if (c.spatial_merge_size != 1) {
    // The VQ model reads the tower's output as a raster grid, which holds for merge size 1 only.
    return absl::UnimplementedError(
        absl::StrCat("vision_config: spatial_merge_size ", c.spatial_merge_size));
  }
  if (c.depth < 0 || c.hidden_size <= 0 || c.num_heads <= 0 || c.hidden_size % c.num_heads != 0 ||
      c.patch_size <= 0 || c.image_size < c.patch_size || c.vq_embed_dim <= 0 ||
      c.vq_num_embeddings <= 0) {
    return absl::InvalidArgumentError("vision_config/vq_config: inconsistent sizes");
  }
  if (c.vq_latent_channels != c.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("vq_config.latent_channels ",
                                                   c.vq_latent_channels,
                                                   " != vision hidden_size ", c.hidden_size));
  }
  return c;
}

absl::StatusOr<VisionTokenizerConfig> VisionTokenizerConfig::FromFile(const std::string& path) {
  std::string file = path;
  if (file.size() < 5 || file.substr(file.size() - 5) != ".json") file += "/config.json";
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(file));
  return FromJson(json);
}

std::vector<ParamSpec> GlmImageVisionTokenizer::Params(const VisionTokenizerConfig& c) {
  std::vector<ParamSpec> specs;
  const int64_t d = c.hidden_size;
  const std::string v = "model.visual.";
  specs.push_back({v + "patch_embed.proj.weight", {d, c.in_channels, c.patch_size, c.patch_size}});
  specs.push_back({v + "patch_embed.proj.bias", {d}, Init::kZeros});
  specs.push_back({v + "embeddings.position_embedding.weight", {c.num_positions(), d}});
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = absl::StrCat(v, "blocks.", i, ".");
    specs.push_back({b + "norm1.weight", {d}, Init::kOnes});
    specs.push_back({b + "norm1.bias", {d}, Init::kZeros});
    AddLinear(specs, b + "attn.qkv", d, 3 * d, c.attention_bias);
    AddLinear(specs, b + "attn.proj", d, d, c.attention_bias);
    specs.push_back({b + "norm2.weight", {d}, Init::kOnes});
    specs.push_back({b + "norm2.bias", {d}, Init::kZeros});
    AddLinear(specs, b + "mlp.fc1", d, c.intermediate_size);
    AddLinear(specs, b + "mlp.fc2", c.intermediate_size, d);
  }
  const std::string q = "model.vqmodel.";
  specs.push_back({q + "quant_conv.weight", {c.vq_embed_dim, c.vq_latent_channels, 1, 1}});
  specs.push_back({q + "quant_conv.bias", {c.vq_embed_dim}, Init::kZeros});
  // Decoding VQ codes back to features is not needed; the tensor is in the checkpoint.
  specs.push_back({q + "post_quant_conv.weight", {c.vq_latent_channels, c.vq_embed_dim, 1, 1}});
  specs.push_back({q + "post_quant_conv.bias", {c.vq_latent_channels}, Init::kZeros});
  specs.push_back({q + "quantize.embedding.weight", {c.vq_num_embeddings, c.vq_embed_dim}});
  return specs;
}

std::vector<std::string> GlmImageVisionTokenizer::IgnoredPrefixes() {
  return {"model.language_model.", "lm_head."};
}

absl::StatusOr<std::unique_ptr<GlmImageVisionTokenizer>> GlmImageVisionTokenizer::Create(
    const VisionTokenizerConfig& config, WeightMap weights) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  return std::unique_ptr<GlmImageVisionTokenizer>(
      new GlmImageVisionTokenizer(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<GlmImageVisionTokenizer>> GlmImageVisionTokenizer::Load(
    const std::string& dir, at::ScalarType dtype, at::Device device) {
  ASSIGN_OR_RETURN(VisionTokenizerConfig config, VisionTokenizerConfig::FromFile(dir));
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(WeightMap weights,
                   LoadWeights(*checkpoint, Params(config), dtype, IgnoredPrefixes()));
  for (auto& [name, t] : weights) t = t.to(device);
  return Create(config, std::move(weights));
}

at::Tensor GlmImageVisionTokenizer::PatchEmbed(const at::Tensor& pixel_values) const {
  const at::Tensor& w = Get(weights_, "model.visual.patch_embed.proj.weight");
  // A kernel = stride convolution over one patch is a linear map of its (c, y, x) values.
  return at::linear(pixel_values.to(w.device(), w.scalar_type()), w.reshape({w.size(0), -1}),
                    Get(weights_, "model.visual.patch_embed.proj.bias"));
}

at::Tensor GlmImageVisionTokenizer::Embeddings(const at::Tensor& pixel_values,
                                               const std::vector<ImageGrid>& grids) const {
  at::Tensor x = PatchEmbed(pixel_values);  // [N, hidden]
  const at::Tensor& table = Get(weights_, "model.visual.embeddings.position_embedding.weight");
  const int64_t side = config_.image_size / config_.patch_size;
  // [side², hidden] → [1, hidden, side, side] in fp32, sampled at every patch centre.
  at::Tensor grid_2d = table.view({side, side, -1}).permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(table.device());
  std::vector<at::Tensor> coords;
  for (const ImageGrid& g : grids) {
    at::Tensor rows = at::arange(g.height, f32).unsqueeze(1).expand({g.height, g.width});
    at::Tensor cols = at::arange(g.width, f32).unsqueeze(0).expand({g.height, g.width});
    // Normalised to [-1, 1] with align_corners=False: (i + 0.5) / n · 2 − 1, x = column first.
    at::Tensor nx = (cols + 0.5) / static_cast<double>(g.width) * 2 - 1;
    at::Tensor ny = (rows + 0.5) / static_cast<double>(g.height) * 2 - 1;
    coords.push_back(at::stack({nx.reshape({-1}), ny.reshape({-1})}, -1));  // [n, 2]
  }
  at::Tensor sample_at = at::cat(coords, 0).unsqueeze(0).unsqueeze(2);  // [1, N, 1, 2]
  at::Tensor pos = at::grid_sampler(grid_2d, sample_at, /*interpolation_mode=bilinear*/ 0,
                                    /*padding_mode=border*/ 1, /*align_corners=*/false);
  pos = pos.squeeze(0).squeeze(-1).transpose(0, 1);  // [N, hidden]
  return x + pos.to(x.scalar_type());
}

at::Tensor GlmImageVisionTokenizer::Block(int64_t index, const at::Tensor& x,
                                          const std::vector<ImageGrid>& grids) const {
  const std::string b = absl::StrCat("model.visual.blocks.", index, ".");
  const double eps = config_.layer_norm_eps;
  const int64_t heads = config_.num_heads, hd = config_.hidden_size / heads;
  at::Tensor h = LayerNorm(x, Get(weights_, b + "norm1.weight"), Get(weights_, b + "norm1.bias"), eps);
  at::Tensor qkv = Linear(h, weights_, b + "attn.qkv").view({x.size(0), 3, heads, hd});
  // Attention within each image only: one call per image's contiguous token range.
  std::vector<at::Tensor> outs;
  int64_t start = 0;
  for (const ImageGrid& g : grids) {
    const int64_t n = g.height * g.width;
    at::Tensor part = qkv.narrow(0, start, n).permute({1, 2, 0, 3}).unsqueeze(1);  // [3, 1, H, n, hd]
    outs.push_back(Attention(part[0], part[1], part[2]).squeeze(0).transpose(0, 1).reshape({n, -1}));
    start += n;
  }
  at::Tensor attn = Linear(at::cat(outs, 0), weights_, b + "attn.proj");
  at::Tensor y = x + attn;
  h = LayerNorm(y, Get(weights_, b + "norm2.weight"), Get(weights_, b + "norm2.bias"), eps);
  h = Linear(at::gelu(Linear(h, weights_, b + "mlp.fc1")), weights_, b + "mlp.fc2");
  return y + h;
}

at::Tensor GlmImageVisionTokenizer::Features(const at::Tensor& pixel_values,
                                             const std::vector<ImageGrid>& grids) const {
  at::Tensor x = Embeddings(pixel_values, grids);
  for (int64_t i = 0; i < config_.depth; ++i) x = Block(i, x, grids);
  return x;
}

at::Tensor GlmImageVisionTokenizer::QuantConv(const at::Tensor& features) const {
  const at::Tensor& w = Get(weights_, "model.vqmodel.quant_conv.weight");
  return at::linear(features.to(w.scalar_type()), w.reshape({w.size(0), -1}),
                    Get(weights_, "model.vqmodel.quant_conv.bias"));
}

at::Tensor GlmImageVisionTokenizer::Quantize(const at::Tensor& features) const {
  at::Tensor z = L2Normalize(QuantConv(features));  // [N, E]
  at::Tensor e = L2Normalize(Get(weights_, "model.vqmodel.quantize.embedding.weight"));  // [K, E]
  // ‖z − e‖² = ‖z‖² + ‖e‖² − 2 z·e; argmin takes the first index on ties.
  at::Tensor d = z.pow(2).sum(1, /*keepdim=*/true) + e.pow(2).sum(1).unsqueeze(0) -
                 2 * at::matmul(z, e.t());
  return d.argmin(1);
}

absl::StatusOr<at::Tensor> GlmImageVisionTokenizer::ImageTokens(
    const at::Tensor& pixel_values, const std::vector<ImageGrid>& grids) const {
  const int64_t width = config_.in_channels * config_.patch_size * config_.patch_size;
  for (const ImageGrid& g : grids) {
    if (g.height <= 0 || g.width <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("image grid ", g.height, "x", g.width));
    }
  }
  if (!pixel_values.defined() || pixel_values.dim() != 2 ||
      pixel_values.size(0) != GridTokens(grids) || pixel_values.size(1) != width ||
      !at::isFloatingType(pixel_values.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat("pixel_values must be float [",
                                                   GridTokens(grids), ", ", width, "]"));
  }
  try {
    return Quantize(Features(pixel_values, grids)).to(at::kCPU, at::kLong);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("vision tokenizer: ", e.what_without_backtrace()));
  }
}

at::Tensor UpsampleTokenIds(const at::Tensor& ids, const ImageGrid& grid) {
  TORCH_CHECK(ids.numel() == grid.height * grid.width, "UpsampleTokenIds: ", ids.numel(),
              " ids for a ", grid.height, "x", grid.width, " grid");
  return ids.to(at::kLong)
      .reshape({grid.height, grid.width})
      .repeat_interleave(kPriorTokenUpsample, 0)
      .repeat_interleave(kPriorTokenUpsample, 1)
      .reshape({-1});
}

}  // namespace diffmesh::models::glm_image
