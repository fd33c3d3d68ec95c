#include "models/glm_image/vae.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"

namespace diffmesh::models::glm_image {
namespace {

// diffusers builds every GroupNorm of the autoencoder (resnets, mid attention, conv_norm_out) with
// eps=1e-6.
constexpr double kNormEps = 1e-6;

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "vae", key, out);
}

void AddConv(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
             int64_t kernel) {
  // Seeded configs draw conv weights with std 1/sqrt(fan_in) so activations keep their scale
  // through the deep stack; checkpoint loading ignores the init.
  const float std = 1.0f / std::sqrt(static_cast<float>(in * kernel * kernel));
  specs.push_back({prefix + ".weight", {out, in, kernel, kernel}, Init::kNormal, std});
  specs.push_back({prefix + ".bias", {out}, Init::kZeros, 0.0f});
}

void AddGroupNorm(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t channels) {
  specs.push_back({prefix + ".weight", {channels}, Init::kOnes, 0.0f});
  specs.push_back({prefix + ".bias", {channels}, Init::kZeros, 0.0f});
}

// ResnetBlock2D without time embedding: norm1, conv1, norm2, conv2, and a 1×1 conv_shortcut when
// the channel count changes.
void AddResnet(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out) {
  AddGroupNorm(specs, prefix + ".norm1", in);
  AddConv(specs, prefix + ".conv1", in, out, 3);
  AddGroupNorm(specs, prefix + ".norm2", out);
  AddConv(specs, prefix + ".conv2", out, out, 3);
  if (in != out) AddConv(specs, prefix + ".conv_shortcut", in, out, 1);
}

// UNetMidBlock2D: resnets.0, [attentions.0], resnets.1, all at `channels`.
void AddMidBlock(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t channels,
                 bool attention) {
  AddResnet(specs, prefix + ".resnets.0", channels, channels);
  if (attention) {
    const std::string a = prefix + ".attentions.0";
    AddGroupNorm(specs, a + ".group_norm", channels);
    const float std = 1.0f / std::sqrt(static_cast<float>(channels));
    for (const char* proj : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
      specs.push_back({a + proj + ".weight", {channels, channels}, Init::kNormal, std});
      specs.push_back({a + proj + ".bias", {channels}, Init::kZeros, 0.0f});
    }
  }
  AddResnet(specs, prefix + ".resnets.1", channels, channels);
}

}  // namespace

absl::StatusOr<VaeConfig> VaeConfig::FromJson(const nlohmann::json& json) {
  VaeConfig c;
  std::vector<std::string> down_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_types = {"UpDecoderBlock2D"};
  RETURN_IF_ERROR(ReadField(json, "in_channels", c.in_channels));
  RETURN_IF_ERROR(ReadField(json, "out_channels", c.out_channels));
  RETURN_IF_ERROR(ReadField(json, "down_block_types", down_types));
  RETURN_IF_ERROR(ReadField(json, "up_block_types", up_types));
  RETURN_IF_ERROR(ReadField(json, "block_out_channels", c.block_out_channels));
  RETURN_IF_ERROR(ReadField(json, "layers_per_block", c.layers_per_block));
  RETURN_IF_ERROR(ReadField(json, "act_fn", c.act_fn));
  RETURN_IF_ERROR(ReadField(json, "latent_channels", c.latent_channels));
  RETURN_IF_ERROR(ReadField(json, "norm_num_groups", c.norm_num_groups));
  RETURN_IF_ERROR(ReadField(json, "scaling_factor", c.scaling_factor));
  if (json.contains("shift_factor") && !json["shift_factor"].is_null()) {
    double shift = 0.0;
    RETURN_IF_ERROR(ReadField(json, "shift_factor", shift));
    c.shift_factor = shift;
  }
  RETURN_IF_ERROR(ReadField(json, "latents_mean", c.latents_mean));
  RETURN_IF_ERROR(ReadField(json, "latents_std", c.latents_std));
  RETURN_IF_ERROR(ReadField(json, "force_upcast", c.force_upcast));
  RETURN_IF_ERROR(ReadField(json, "use_quant_conv", c.use_quant_conv));
  RETURN_IF_ERROR(ReadField(json, "use_post_quant_conv", c.use_post_quant_conv));
  RETURN_IF_ERROR(ReadField(json, "mid_block_add_attention", c.mid_block_add_attention));

  const size_t levels = c.block_out_channels.size();
  if (levels == 0) return absl::InvalidArgumentError("vae config: block_out_channels is empty");
  if (down_types.size() != levels || up_types.size() != levels) {
    return absl::InvalidArgumentError(absl::StrCat("vae config: ", down_types.size(), " down and ",
                                                   up_types.size(), " up block types for ", levels,
                                                   " block_out_channels"));
  }
  for (const auto& t : down_types) {
    if (t != "DownEncoderBlock2D") {
      return absl::UnimplementedError(absl::StrCat("vae config: down block type ", t));
    }
  }
  for (const auto& t : up_types) {
    if (t != "UpDecoderBlock2D") {
      return absl::UnimplementedError(absl::StrCat("vae config: up block type ", t));
    }
  }
  if (c.act_fn != "silu" && c.act_fn != "swish" && c.act_fn != "gelu" && c.act_fn != "relu" &&
      c.act_fn != "mish") {
    return absl::UnimplementedError(absl::StrCat("vae config: act_fn ", c.act_fn));
  }
  for (int64_t ch : c.block_out_channels) {
    if (ch <= 0 || ch % c.norm_num_groups != 0) {
      return absl::InvalidArgumentError(absl::StrCat("vae config: block channels ", ch,
                                                     " not a multiple of norm_num_groups ",
                                                     c.norm_num_groups));
    }
  }
  if (c.layers_per_block < 1 || c.latent_channels < 1) {
    return absl::InvalidArgumentError(
        "vae config: layers_per_block and latent_channels must be >= 1");
  }
  const size_t lc = static_cast<size_t>(c.latent_channels);
  if ((!c.latents_mean.empty() && c.latents_mean.size() != lc) ||
      (!c.latents_std.empty() && c.latents_std.size() != lc) ||
      c.latents_mean.empty() != c.latents_std.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("vae config: latents_mean/latents_std need ", lc,
                                                   " entries each, have ", c.latents_mean.size(),
                                                   " and ", c.latents_std.size()));
  }
  return c;
}

absl::StatusOr<VaeConfig> VaeConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

std::vector<ParamSpec> AutoencoderKl::Params(const VaeConfig& c, VaeParts parts) {
  std::vector<ParamSpec> specs;
  const auto& boc = c.block_out_channels;
  const int64_t levels = static_cast<int64_t>(boc.size());
  const int64_t top = boc.back();

  if (parts == VaeParts::kAll) {
    AddConv(specs, "encoder.conv_in", c.in_channels, boc[0], 3);
    int64_t out = boc[0];
    for (int64_t i = 0; i < levels; ++i) {
      const int64_t in = out;
      out = boc[i];
      const std::string block = absl::StrCat("encoder.down_blocks.", i);
      for (int64_t j = 0; j < c.layers_per_block; ++j) {
        AddResnet(specs, absl::StrCat(block, ".resnets.", j), j == 0 ? in : out, out);
      }
      if (i != levels - 1) AddConv(specs, block + ".downsamplers.0.conv", out, out, 3);
    }
    AddMidBlock(specs, "encoder.mid_block", top, c.mid_block_add_attention);
    AddGroupNorm(specs, "encoder.conv_norm_out", top);
    AddConv(specs, "encoder.conv_out", top, 2 * c.latent_channels, 3);
    if (c.use_quant_conv) {
      AddConv(specs, "quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
    }
  }

  if (c.use_post_quant_conv) {
    AddConv(specs, "post_quant_conv", c.latent_channels, c.latent_channels, 1);
  }
  AddConv(specs, "decoder.conv_in", c.latent_channels, top, 3);
  AddMidBlock(specs, "decoder.mid_block", top, c.mid_block_add_attention);
  int64_t out = top;
  for (int64_t i = 0; i < levels; ++i) {
    const int64_t prev = out;
    out = boc[levels - 1 - i];
    const std::string block = absl::StrCat("decoder.up_blocks.", i);
    for (int64_t j = 0; j <= c.layers_per_block; ++j) {
      AddResnet(specs, absl::StrCat(block, ".resnets.", j), j == 0 ? prev : out, out);
    }
    if (i != levels - 1) AddConv(specs, block + ".upsamplers.0.conv", out, out, 3);
  }
  AddGroupNorm(specs, "decoder.conv_norm_out", boc[0]);
  AddConv(specs, "decoder.conv_out", boc[0], c.out_channels, 3);
  return specs;
}

absl::StatusOr<std::unique_ptr<AutoencoderKl>> AutoencoderKl::Create(const VaeConfig& config,
                                                                     WeightMap weights,
                                                                     VaeParts parts) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config, parts)));
  return std::unique_ptr<AutoencoderKl>(new AutoencoderKl(config, std::move(weights), parts));
}

absl::StatusOr<std::unique_ptr<AutoencoderKl>> AutoencoderKl::Load(const std::string& component_dir,
                                                                   at::ScalarType dtype,
                                                                   VaeParts parts) {
  ASSIGN_OR_RETURN(VaeConfig config, VaeConfig::FromFile(component_dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(component_dir));
  std::vector<std::string> ignored;
  if (parts == VaeParts::kDecoderOnly) ignored = {"encoder.", "quant_conv."};
  ASSIGN_OR_RETURN(WeightMap weights,
                   LoadWeights(*checkpoint, Params(config, parts), dtype, ignored));
  return Create(config, std::move(weights), parts);
}

absl::StatusOr<std::unique_ptr<AutoencoderKl>> AutoencoderKl::CreateSeeded(const VaeConfig& config,
                                                                           uint64_t seed,
                                                                           VaeParts parts) {
  return Create(config, InitSeeded(Params(config, parts), seed), parts);
}

at::Tensor AutoencoderKl::Act(const at::Tensor& x) const {
  const std::string& f = config_.act_fn;
  if (f == "gelu") return at::gelu(x);
  if (f == "relu") return at::relu(x);
  if (f == "mish") return at::mish(x);
  return at::silu(x);  // "silu" / "swish", checked in FromJson
}

at::Tensor AutoencoderKl::Conv(const at::Tensor& x, const std::string& prefix, int64_t stride,
                               int64_t padding) const {
  return at::conv2d(x, Get(weights_, prefix + ".weight"), Get(weights_, prefix + ".bias"),
                    {stride, stride}, {padding, padding});
}

at::Tensor AutoencoderKl::GroupNorm(const at::Tensor& x, const std::string& prefix) const {
  return at::group_norm(x, config_.norm_num_groups, Get(weights_, prefix + ".weight"),
                        Get(weights_, prefix + ".bias"), kNormEps);
}

// ResnetBlock2D (pre-norm, no time embedding, output_scale_factor 1).
at::Tensor AutoencoderKl::Resnet(const at::Tensor& x, const std::string& prefix) const {
  at::Tensor h = Act(GroupNorm(x, prefix + ".norm1"));
  h = Conv(h, prefix + ".conv1");
  h = Act(GroupNorm(h, prefix + ".norm2"));
  h = Conv(h, prefix + ".conv2");
  const std::string shortcut = prefix + ".conv_shortcut";
  if (weights_.count(shortcut + ".weight")) return Conv(x, shortcut, 1, 0) + h;
  return x + h;
}

// diffusers Attention(heads=1, dim_head=C, group norm, residual, bias) over the H·W positions.
at::Tensor AutoencoderKl::MidAttention(const at::Tensor& x, const std::string& prefix) const {
  const int64_t b = x.size(0), c = x.size(1), hgt = x.size(2), wid = x.size(3);
  const int64_t n = hgt * wid;
  // [B, C, H, W] → [B, N, C]
  at::Tensor h = GroupNorm(x, prefix + ".group_norm").view({b, c, n}).transpose(1, 2);
  at::Tensor q = Linear(h, weights_, prefix + ".to_q").unsqueeze(1);  // [B, 1, N, C]
  at::Tensor k = Linear(h, weights_, prefix + ".to_k").unsqueeze(1);  // [B, 1, N, C]
  at::Tensor v = Linear(h, weights_, prefix + ".to_v").unsqueeze(1);  // [B, 1, N, C]
  h = at::Tensor();
  // A 1024² image has 16384 latent positions: the full score matrix would be 16384² per image, so
  // queries go in chunks where no fused kernel keeps it implicit.
  const int64_t chunk = std::max<int64_t>(1, attention_score_budget_ / std::max<int64_t>(1, n));
  at::Tensor o;
  if (chunk >= n) {
    o = Attention(q, k, v);  // [B, 1, N, C]
  } else {
    // Rows of the softmax are independent, so query chunks give the same result.
    std::vector<at::Tensor> parts;
    for (int64_t s = 0; s < n; s += chunk) {
      parts.push_back(Attention(q.narrow(2, s, std::min(chunk, n - s)), k, v));
    }
    o = at::cat(parts, 2);
  }
  o = Linear(o.squeeze(1), weights_, prefix + ".to_out.0");  // [B, N, C]
  return o.transpose(1, 2).reshape({b, c, hgt, wid}) + x;
}

at::Tensor AutoencoderKl::MidBlock(const at::Tensor& x, const std::string& prefix) const {
  at::Tensor h = Resnet(x, prefix + ".resnets.0");
  if (config_.mid_block_add_attention) h = MidAttention(h, prefix + ".attentions.0");
  return Resnet(h, prefix + ".resnets.1");
}

at::Tensor AutoencoderKl::Decode(const at::Tensor& latents) const {
  TORCH_CHECK(latents.dim() == 4 && latents.size(1) == config_.latent_channels,
              "Decode expects latents [B, ", config_.latent_channels, ", h, w], got ",
              latents.sizes());
  const at::Tensor ref = Get(weights_, "decoder.conv_in.weight");
  at::Tensor z = latents.to(ref.device(), ref.scalar_type());
  if (config_.use_post_quant_conv) z = Conv(z, "post_quant_conv", 1, 0);
  at::Tensor h = Conv(z, "decoder.conv_in");  // [B, C_top, h, w]
  z = at::Tensor();
  h = MidBlock(h, "decoder.mid_block");
  const int64_t levels = static_cast<int64_t>(config_.block_out_channels.size());
  for (int64_t i = 0; i < levels; ++i) {
    const std::string block = absl::StrCat("decoder.up_blocks.", i);
    for (int64_t j = 0; j <= config_.layers_per_block; ++j) {
      h = Resnet(h, absl::StrCat(block, ".resnets.", j));
    }
    if (i != levels - 1) {
      // Upsample2D: nearest ×2 (scale factors passed as F.interpolate does), then a 3×3 conv.
      const std::vector<int64_t> size = {2 * h.size(2), 2 * h.size(3)};
      h = at::upsample_nearest2d(h, size, 2.0, 2.0);
      h = Conv(h, block + ".upsamplers.0.conv");
    }
  }
  h = Act(GroupNorm(h, "decoder.conv_norm_out"));
  return Conv(h, "decoder.conv_out");  // [B, out_channels, h·s, w·s]
}

AutoencoderKl::LatentDistribution AutoencoderKl::Encode(const at::Tensor& image) const {
  TORCH_CHECK(parts_ == VaeParts::kAll, "Encode needs the encoder weights (VaeParts::kAll)");
  const int64_t s = config_.ScaleFactor();
  TORCH_CHECK(image.dim() == 4 && image.size(1) == config_.in_channels && image.size(2) % s == 0 &&
                  image.size(3) % s == 0,
              "Encode expects an image [B, ", config_.in_channels,
              ", H, W] with H, W multiples of ", s, ", got ", image.sizes());
  const at::Tensor ref = Get(weights_, "encoder.conv_in.weight");
  at::Tensor h = Conv(image.to(ref.device(), ref.scalar_type()), "encoder.conv_in");
  const int64_t levels = static_cast<int64_t>(config_.block_out_channels.size());
  for (int64_t i = 0; i < levels; ++i) {
    const std::string block = absl::StrCat("encoder.down_blocks.", i);
    for (int64_t j = 0; j < config_.layers_per_block; ++j) {
      h = Resnet(h, absl::StrCat(block, ".resnets.", j));
    }
    if (i != levels - 1) {
      // Downsample2D with padding=0: pad one zero row/column at the bottom/right, then a stride-2
      // 3×3 conv without padding.
      h = at::constant_pad_nd(h, {0, 1, 0, 1}, 0);
      h = Conv(h, block + ".downsamplers.0.conv", 2, 0);
    }
  }
  h = MidBlock(h, "encoder.mid_block");
  h = Act(GroupNorm(h, "encoder.conv_norm_out"));
  h = Conv(h, "encoder.conv_out");  // [B, 2·latent, H/s, W/s]
  if (config_.use_quant_conv) h = Conv(h, "quant_conv", 1, 0);
  std::vector<at::Tensor> halves = h.chunk(2, 1);
  return {halves[0], halves[1].clamp(-30.0, 20.0)};
}

at::Tensor AutoencoderKl::LatentStat(const std::vector<double>& values,
                                     const at::Tensor& like) const {
  TORCH_CHECK(!values.empty(), "the vae config has no latents_mean/latents_std");
  TORCH_CHECK(like.dim() == 4 && like.size(1) == static_cast<int64_t>(values.size()),
              "latents must be [B, ", values.size(), ", h, w], got ", like.sizes());
  // As the pipeline does: torch.tensor(list) is fp32, then cast to the latents' dtype.
  std::vector<float> f(values.begin(), values.end());
  return at::tensor(f, at::kFloat)
      .view({1, static_cast<int64_t>(f.size()), 1, 1})
      .to(like.device(), like.scalar_type());
}

at::Tensor AutoencoderKl::DenormalizeLatents(const at::Tensor& latents) const {
  return latents * LatentStat(config_.latents_std, latents) +
         LatentStat(config_.latents_mean, latents);
}

at::Tensor AutoencoderKl::NormalizeLatents(const at::Tensor& latents) const {
  return (latents - LatentStat(config_.latents_mean, latents)) /
         LatentStat(config_.latents_std, latents);
}

at::Tensor AutoencoderKl::DecodeNormalized(const at::Tensor& latents) const {
  const at::Tensor ref = Get(weights_, "decoder.conv_in.weight");
  // The pipeline casts to the VAE's dtype before applying the statistics.
  return Decode(DenormalizeLatents(latents.to(ref.device(), ref.scalar_type())));
}

at::Tensor ImageToUint8Hwc(const at::Tensor& image) {
  TORCH_CHECK(image.dim() == 4, "expected an image [B, C, H, W], got ", image.sizes());
  // denormalize runs in the image's dtype; pt_to_numpy then moves to fp32 HWC.
  at::Tensor x = (image * 0.5 + 0.5).clamp(0, 1);
  x = x.to(at::kCPU).permute({0, 2, 3, 1}).to(at::kFloat);
  return (x * 255).round().to(at::kByte).contiguous();  // [B, H, W, C]
}

at::Tensor Uint8HwcToImage(const at::Tensor& pixels) {
  TORCH_CHECK(pixels.scalar_type() == at::kByte && (pixels.dim() == 3 || pixels.dim() == 4),
              "expected uint8 [B, H, W, C] or [H, W, C], got ", pixels.scalar_type(), " ",
              pixels.sizes());
  at::Tensor x = pixels.dim() == 3 ? pixels.unsqueeze(0) : pixels;
  x = x.to(at::kFloat) / 255.0;
  return (2.0 * x - 1.0).permute({0, 3, 1, 2}).contiguous();  // [B, C, H, W]
}

}  // namespace diffmesh::models::glm_image
