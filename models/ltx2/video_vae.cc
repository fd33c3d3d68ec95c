#include "models/ltx2/video_vae.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"
#include "models/ltx2/vae_config.h"

namespace diffmesh::models::ltx2 {
namespace {

// Timesteps(num_channels=256) in front of every PixArtAlphaCombinedTimestepSizeEmbeddings.
constexpr int64_t kTimestepProjDim = 256;

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "video vae", key, out);
}

// Element `i` of `list` walked backwards (the reference reverses these tuples).
template <typename T>
T Reversed(const std::vector<T>& list, size_t i) {
  return list[list.size() - 1 - i];
}

std::array<int64_t, 3> UpsampleStride(const std::string& type) {
  if (type == "spatial") return {1, 2, 2};
  if (type == "temporal") return {2, 1, 1};
  return {2, 2, 2};  // "spatiotemporal"
}

// Shapes of one up block (LTX2VideoDecoder3d.__init__), all in decoder order.
struct UpBlockPlan {
  int64_t in_channels;
  int64_t out_channels;
  int64_t num_layers;
  bool upsample;
  std::array<int64_t, 3> stride;
  bool residual;
  int64_t factor;
};

struct DecoderPlan {
  int64_t mid_channels;
  int64_t mid_layers;
  std::vector<UpBlockPlan> up;
  int64_t final_channels;
};

DecoderPlan Plan(const VideoVaeConfig& c) {
  DecoderPlan p;
  const size_t n = c.decoder_block_out_channels.size();
  int64_t out = Reversed(c.decoder_block_out_channels, 0);
  p.mid_channels = out;
  p.mid_layers = Reversed(c.decoder_layers_per_block, 0);
  for (size_t i = 0; i < n; ++i) {
    UpBlockPlan b;
    b.factor = Reversed(c.upsample_factor, i);
    b.in_channels = out / b.factor;
    out = Reversed(c.decoder_block_out_channels, i) / b.factor;
    b.out_channels = out;
    b.num_layers = Reversed(c.decoder_layers_per_block, i + 1);
    b.upsample = Reversed(c.decoder_spatio_temporal_scaling, i);
    b.stride = UpsampleStride(c.upsample_type[i]);
    b.residual = Reversed(c.upsample_residual, i);
    p.up.push_back(b);
  }
  p.final_channels = out;
  return p;
}

void AddConv(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
             int64_t kernel) {
  // Seeded weights keep activations at unit scale; loading ignores the init.
  const float std = 1.0f / std::sqrt(static_cast<float>(in * kernel * kernel * kernel));
  specs.push_back({prefix + ".weight", {out, in, kernel, kernel, kernel}, Init::kNormal, std});
  specs.push_back({prefix + ".bias", {out}, Init::kZeros, 0.0f});
}

void AddTimeEmbedder(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t dim) {
  AddLinear(specs, prefix + ".timestep_embedder.linear_1", kTimestepProjDim, dim);
  AddLinear(specs, prefix + ".timestep_embedder.linear_2", dim, dim);
}

// LTX2VideoResnetBlock3d (noise injection is refused by the config parser).
void AddResnet(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
               bool tcond) {
  AddConv(specs, prefix + ".conv1.conv", in, out, 3);
  AddConv(specs, prefix + ".conv2.conv", out, out, 3);
  if (in != out) {
    specs.push_back({prefix + ".norm3.weight", {in}, Init::kOnes, 0.0f});
    specs.push_back({prefix + ".norm3.bias", {in}, Init::kZeros, 0.0f});
    AddConv(specs, prefix + ".conv_shortcut", in, out, 1);
  }
  if (tcond) specs.push_back({prefix + ".scale_shift_table", {4, in}, Init::kNormal, 0.1f});
}

// out[b, c, f·pt+t, h·p+i, w·p+j] = in[b, c·pt·p·p + t·p·p + j·p + i, f, h, w]: the reference's
// unpatchify puts the innermost channel factor on height.
at::Tensor Unpatchify(const at::Tensor& x, int64_t p, int64_t pt) {
  const int64_t b = x.size(0), f = x.size(2), h = x.size(3), w = x.size(4);
  return x.reshape({b, -1, pt, p, p, f, h, w})
      .permute({0, 1, 5, 2, 6, 4, 7, 3})
      .reshape({b, -1, f * pt, h * p, w * p});
}

// b's first `extent` entries along `dim` := a's last ones · (1 − y/extent) + b's · y/extent, in
// place, as the reference's blend_v / blend_h / blend_t (weights formed in double, applied in
// b's dtype).
void Blend(const at::Tensor& a, at::Tensor& b, int64_t dim, int64_t extent) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  if (extent <= 0) return;
  std::vector<double> wb(extent), wa(extent);
  for (int64_t y = 0; y < extent; ++y) {
    wb[y] = static_cast<double>(y) / static_cast<double>(extent);
    wa[y] = 1.0 - wb[y];
  }
  std::vector<int64_t> shape(b.dim(), 1);
  shape[dim] = extent;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor tb = at::tensor(wb, opts).view(shape).to(b.device(), b.scalar_type());
  at::Tensor ta = at::tensor(wa, opts).view(shape).to(b.device(), b.scalar_type());
  at::Tensor head = b.narrow(dim, 0, extent);
  head.copy_(a.narrow(dim, a.size(dim) - extent, extent) * ta + head * tb);
}

}  // namespace

absl::StatusOr<VideoVaeConfig> VideoVaeConfig::FromJson(const nlohmann::json& json) {
  VideoVaeConfig c;
  RETURN_IF_ERROR(ReadField(json, "latent_channels", c.latent_channels));
  RETURN_IF_ERROR(ReadField(json, "out_channels", c.out_channels));
  RETURN_IF_ERROR(ReadField(json, "decoder_block_out_channels", c.decoder_block_out_channels));
  RETURN_IF_ERROR(ReadField(json, "decoder_layers_per_block", c.decoder_layers_per_block));
  const size_t n_blocks = c.decoder_layers_per_block.size();
  const size_t n_up = n_blocks == 0 ? 0 : n_blocks - 1;
  RETURN_IF_ERROR(ReadBoolOrList(json, "video vae", "decoder_spatio_temporal_scaling", n_up,
                                 c.decoder_spatio_temporal_scaling));
  RETURN_IF_ERROR(
      ReadBoolOrList(json, "video vae", "decoder_inject_noise", n_blocks, c.decoder_inject_noise));
  RETURN_IF_ERROR(ReadField(json, "upsample_type", c.upsample_type));
  RETURN_IF_ERROR(
      ReadBoolOrList(json, "video vae", "upsample_residual", n_up, c.upsample_residual));
  RETURN_IF_ERROR(ReadField(json, "upsample_factor", c.upsample_factor));
  RETURN_IF_ERROR(ReadField(json, "timestep_conditioning", c.timestep_conditioning));
  RETURN_IF_ERROR(ReadField(json, "patch_size", c.patch_size));
  RETURN_IF_ERROR(ReadField(json, "patch_size_t", c.patch_size_t));
  RETURN_IF_ERROR(ReadField(json, "resnet_norm_eps", c.resnet_norm_eps));
  RETURN_IF_ERROR(ReadField(json, "scaling_factor", c.scaling_factor));
  RETURN_IF_ERROR(ReadField(json, "decoder_causal", c.decoder_causal));
  std::string padding = "reflect";
  RETURN_IF_ERROR(ReadField(json, "decoder_spatial_padding_mode", padding));
  auto parsed = ParseSpatialPadding(padding);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "video vae config: decoder_spatial_padding_mode: ", parsed.status().message()));
  }
  c.decoder_spatial_padding = *parsed;
  // The reference derives missing ratios from the ENCODER's scaling flags.
  std::vector<int64_t> encoder_layers = {4, 6, 6, 2, 2};
  RETURN_IF_ERROR(ReadField(json, "layers_per_block", encoder_layers));
  std::vector<bool> encoder_scaling = {true, true, true, true};
  RETURN_IF_ERROR(ReadBoolOrList(json, "video vae", "spatio_temporal_scaling",
                                 encoder_layers.empty() ? 0 : encoder_layers.size() - 1,
                                 encoder_scaling));
  const int64_t scalings = std::count(encoder_scaling.begin(), encoder_scaling.end(), true);
  c.spatial_compression_ratio = c.patch_size << scalings;
  c.temporal_compression_ratio = c.patch_size_t << scalings;
  RETURN_IF_ERROR(ReadField(json, "spatial_compression_ratio", c.spatial_compression_ratio));
  RETURN_IF_ERROR(ReadField(json, "temporal_compression_ratio", c.temporal_compression_ratio));
  RETURN_IF_ERROR(Validate(c));
  return c;
}

absl::Status VideoVaeConfig::Validate(const VideoVaeConfig& c) {
  const size_t n = c.decoder_block_out_channels.size();
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("video vae config: ", what));
  };
  if (n == 0) return bad("decoder_block_out_channels is empty");
  if (c.decoder_layers_per_block.size() < n + 1) {
    return bad(absl::StrCat("decoder_layers_per_block needs ", n + 1, " entries for ", n,
                            " up blocks, has ", c.decoder_layers_per_block.size()));
  }
  if (c.decoder_spatio_temporal_scaling.size() < n || c.upsample_type.size() < n ||
      c.upsample_residual.size() < n || c.upsample_factor.size() < n ||
      c.decoder_inject_noise.size() < n + 1) {
    return bad(absl::StrCat("decoder_spatio_temporal_scaling / upsample_type / upsample_residual",
                            " / upsample_factor need ", n, " entries, decoder_inject_noise ",
                            n + 1));
  }
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = c.upsample_type[i];
    if (t != "spatial" && t != "temporal" && t != "spatiotemporal") {
      return absl::UnimplementedError(absl::StrCat("video vae config: upsample_type ", t));
    }
  }
  for (size_t i = 0; i <= n; ++i) {
    if (Reversed(c.decoder_inject_noise, i)) {
      // Noise injection draws torch.randn inside the decoder; no released config uses it.
      return absl::UnimplementedError("video vae config: decoder_inject_noise is not supported");
    }
  }
  if (c.latent_channels < 1 || c.out_channels < 1 || c.patch_size < 1 || c.patch_size_t < 1 ||
      c.spatial_compression_ratio < 1 || c.temporal_compression_ratio < 1) {
    return bad("channel counts, patch sizes and compression ratios must be >= 1");
  }
  for (size_t i = 0; i < n; ++i) {
    const int64_t f = Reversed(c.upsample_factor, i);
    if (f < 1 || Reversed(c.decoder_block_out_channels, i) % f != 0) {
      return bad(absl::StrCat("upsample_factor ", f, " does not divide block channels ",
                              Reversed(c.decoder_block_out_channels, i)));
    }
  }
  const DecoderPlan plan = Plan(c);
  int64_t channels = plan.mid_channels;  // entering each up block
  for (size_t i = 0; i < plan.up.size(); ++i) {
    const UpBlockPlan& b = plan.up[i];
    // The reference builds these layers from the config alone; a layout whose channel counts do
    // not chain cannot run there either.
    const int64_t expected = b.in_channels != b.out_channels ? b.in_channels
                             : b.upsample                    ? b.out_channels * b.factor
                                                             : b.out_channels;
    if (channels != expected) {
      return bad(absl::StrCat("up block ", i, " receives ", channels, " channels but its first ",
                              "layer takes ", expected,
                              " (decoder_block_out_channels / upsample_factor do not chain)"));
    }
    channels = b.out_channels;
    if (c.timestep_conditioning && b.in_channels != b.out_channels) {
      // The reference hands the raw timestep to that block's conv_in resnet and fails.
      return absl::UnimplementedError(absl::StrCat(
          "video vae config: timestep conditioning with a channel-changing up block ", i));
    }
    if (b.upsample) {
      const int64_t in = b.out_channels * b.factor;
      if ((in * b.stride[0] * b.stride[1] * b.stride[2]) % b.factor != 0) {
        return bad(absl::StrCat("up block ", i, ": upsampler channels not divisible"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<VideoVaeConfig> VideoVaeConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  auto config = FromJson(json);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

std::vector<ParamSpec> Ltx2VideoDecoder::Params(const VideoVaeConfig& c) {
  std::vector<ParamSpec> specs;
  const DecoderPlan plan = Plan(c);
  const bool tcond = c.timestep_conditioning;
  AddConv(specs, "decoder.conv_in.conv", c.latent_channels, plan.mid_channels, 3);
  if (tcond) AddTimeEmbedder(specs, "decoder.mid_block.time_embedder", 4 * plan.mid_channels);
  for (int64_t k = 0; k < plan.mid_layers; ++k) {
    AddResnet(specs, absl::StrCat("decoder.mid_block.resnets.", k), plan.mid_channels,
              plan.mid_channels, tcond);
  }
  for (size_t i = 0; i < plan.up.size(); ++i) {
    const UpBlockPlan& b = plan.up[i];
    const std::string block = absl::StrCat("decoder.up_blocks.", i);
    if (tcond) AddTimeEmbedder(specs, block + ".time_embedder", 4 * b.in_channels);
    if (b.in_channels != b.out_channels) {
      AddResnet(specs, block + ".conv_in", b.in_channels, b.out_channels, tcond);
    }
    if (b.upsample) {
      const int64_t in = b.out_channels * b.factor;
      const int64_t out = in * b.stride[0] * b.stride[1] * b.stride[2] / b.factor;
      AddConv(specs, block + ".upsamplers.0.conv.conv", in, out, 3);
    }
    for (int64_t k = 0; k < b.num_layers; ++k) {
      AddResnet(specs, absl::StrCat(block, ".resnets.", k), b.out_channels, b.out_channels, tcond);
    }
  }
  AddConv(specs, "decoder.conv_out.conv", plan.final_channels,
          c.out_channels * c.patch_size * c.patch_size, 3);
  if (tcond) {
    specs.push_back({"decoder.timestep_scale_multiplier", {}, Init::kOnes, 0.0f});
    AddTimeEmbedder(specs, "decoder.time_embedder", 2 * plan.final_channels);
    specs.push_back({"decoder.scale_shift_table", {2, plan.final_channels}, Init::kNormal, 0.1f});
  }
  specs.push_back({"latents_mean", {c.latent_channels}, Init::kZeros, 0.0f});
  specs.push_back({"latents_std", {c.latent_channels}, Init::kOnes, 0.0f});
  return specs;
}

Ltx2VideoDecoder::Ltx2VideoDecoder(VideoVaeConfig config, WeightMap weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  latents_mean_ = Get(weights_, "latents_mean");
  latents_std_ = Get(weights_, "latents_std");
}

absl::StatusOr<std::unique_ptr<Ltx2VideoDecoder>> Ltx2VideoDecoder::Create(
    const VideoVaeConfig& config, WeightMap weights) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  return std::unique_ptr<Ltx2VideoDecoder>(new Ltx2VideoDecoder(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<Ltx2VideoDecoder>> Ltx2VideoDecoder::Load(
    const std::string& component_dir, at::ScalarType dtype, at::Device device) {
  ASSIGN_OR_RETURN(VideoVaeConfig config, VideoVaeConfig::FromFile(component_dir + "/config.json"));
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(component_dir));
  ASSIGN_OR_RETURN(WeightMap weights,
                   LoadWeights(*checkpoint, Params(config), dtype, {"encoder."}));
  if (device != at::Device(at::kCPU)) {
    for (auto& [name, t] : weights) t = t.to(device);
  }
  return Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<Ltx2VideoDecoder>> Ltx2VideoDecoder::CreateSeeded(
    const VideoVaeConfig& config, uint64_t seed) {
  WeightMap weights = InitSeeded(Params(config), seed);
  if (config.timestep_conditioning) {
    weights["decoder.timestep_scale_multiplier"].fill_(1000.0);
  }
  return Create(config, std::move(weights));
}

at::Tensor Ltx2VideoDecoder::Conv(const at::Tensor& x, const std::string& prefix,
                                  bool causal) const {
  return CausalConv3d(x, Get(weights_, prefix + ".conv.weight"),
                      Get(weights_, prefix + ".conv.bias"), causal,
                      config_.decoder_spatial_padding);
}

at::Tensor Ltx2VideoDecoder::TimeEmbedding(const std::string& prefix, const at::Tensor& temb,
                                           const at::Tensor& like) const {
  // Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0): [cos, sin] of t·10000^(−k/128).
  const int64_t half = kTimestepProjDim / 2;
  at::Tensor t = temb.flatten().to(at::kFloat);
  at::Tensor freqs =
      at::exp(at::arange(0, half, t.options()) * (-std::log(10000.0)) / static_cast<double>(half));
  at::Tensor angles = t.unsqueeze(1) * freqs.unsqueeze(0);
  at::Tensor proj = at::cat({at::cos(angles), at::sin(angles)}, -1).to(like.scalar_type());
  at::Tensor h = Linear(proj, weights_, prefix + ".timestep_embedder.linear_1");
  h = Linear(at::silu(h), weights_, prefix + ".timestep_embedder.linear_2");
  return h.view({like.size(0), -1, 1, 1, 1});  // [B, D, 1, 1, 1]
}

at::Tensor Ltx2VideoDecoder::Resnet(const at::Tensor& x, const std::string& prefix,
                                    const at::Tensor& temb, bool causal) const {
  at::Tensor h = PixelNorm(x);
  std::vector<at::Tensor> mod;  // shift1, scale1, shift2, scale2: [B, C, 1, 1, 1]
  if (config_.timestep_conditioning) {
    const at::Tensor& table = Get(weights_, prefix + ".scale_shift_table");  // [4, C]
    at::Tensor t = temb.unflatten(1, {4, -1}) + table.view({1, 4, -1, 1, 1, 1});
    mod = t.unbind(1);
    h = h * (1 + mod[1]) + mod[0];
  }
  h = Conv(at::silu(h), prefix + ".conv1", causal);
  h = PixelNorm(h);
  if (!mod.empty()) h = h * (1 + mod[3]) + mod[2];
  h = Conv(at::silu(h), prefix + ".conv2", causal);
  at::Tensor shortcut = x;
  if (weights_.count(prefix + ".conv_shortcut.weight") != 0) {
    // LayerNorm over channels, then a plain 1×1×1 Conv3d.
    shortcut =
        at::layer_norm(x.movedim(1, -1), {x.size(1)}, Get(weights_, prefix + ".norm3.weight"),
                       Get(weights_, prefix + ".norm3.bias"), config_.resnet_norm_eps)
            .movedim(-1, 1);
    shortcut = at::conv3d(shortcut, Get(weights_, prefix + ".conv_shortcut.weight"),
                          Get(weights_, prefix + ".conv_shortcut.bias"));
  }
  return h + shortcut;
}

at::Tensor Ltx2VideoDecoder::Upsampler(const at::Tensor& x, const std::string& prefix,
                                       const std::array<int64_t, 3>& s, bool residual,
                                       int64_t factor, bool causal) const {
  // [B, C, F, H, W] → [B, C/factor, (F−1)·st + 1, H·sh, W·sw]: conv to C·st·sh·sw/factor
  // channels, depth-to-space, then the first st−1 frames are dropped. The residual is the input's
  // own depth-to-space, its channels tiled back up to C/factor.
  at::Tensor h = DepthToSpace3d(Conv(x, prefix + ".conv", causal), s);
  h = h.narrow(2, s[0] - 1, h.size(2) - (s[0] - 1));
  if (residual) {
    const int64_t repeats = s[0] * s[1] * s[2] / factor;
    at::Tensor r = DepthToSpace3d(x, s).repeat({1, repeats, 1, 1, 1});
    h = h + r.narrow(2, s[0] - 1, r.size(2) - (s[0] - 1));
  }
  return h;
}

at::Tensor Ltx2VideoDecoder::Network(const at::Tensor& z, const at::Tensor& temb_in,
                                     bool causal) const {
  const DecoderPlan plan = Plan(config_);
  at::Tensor temb;
  if (config_.timestep_conditioning) {
    temb = temb_in * Get(weights_, "decoder.timestep_scale_multiplier");
  }
  at::Tensor h = Conv(z, "decoder.conv_in", causal);
  {
    at::Tensor t;
    if (temb.defined()) t = TimeEmbedding("decoder.mid_block.time_embedder", temb, h);
    for (int64_t k = 0; k < plan.mid_layers; ++k) {
      h = Resnet(h, absl::StrCat("decoder.mid_block.resnets.", k), t, causal);
    }
  }
  for (size_t i = 0; i < plan.up.size(); ++i) {
    const UpBlockPlan& b = plan.up[i];
    const std::string block = absl::StrCat("decoder.up_blocks.", i);
    if (b.in_channels != b.out_channels) h = Resnet(h, block + ".conv_in", at::Tensor(), causal);
    at::Tensor t;
    if (temb.defined()) t = TimeEmbedding(block + ".time_embedder", temb, h);
    if (b.upsample) {
      h = Upsampler(h, block + ".upsamplers.0", b.stride, b.residual, b.factor, causal);
    }
    for (int64_t k = 0; k < b.num_layers; ++k) {
      h = Resnet(h, absl::StrCat(block, ".resnets.", k), t, causal);
    }
  }
  h = PixelNorm(h);
  if (temb.defined()) {
    at::Tensor t = TimeEmbedding("decoder.time_embedder", temb, h).unflatten(1, {2, -1}) +
                   Get(weights_, "decoder.scale_shift_table").view({1, 2, -1, 1, 1, 1});
    std::vector<at::Tensor> shift_scale = t.unbind(1);
    h = h * (1 + shift_scale[1]) + shift_scale[0];
  }
  h = Conv(at::silu(h), "decoder.conv_out", causal);
  return Unpatchify(h, config_.patch_size, config_.patch_size_t);
}

at::Tensor Ltx2VideoDecoder::SpatialTiled(const at::Tensor& z, const at::Tensor& temb,
                                          bool causal, const VideoVaeTiling& tiling) const {
  const VideoVaeTiling& t = tiling;
  const int64_t r = config_.spatial_compression_ratio;
  const int64_t height = z.size(3), width = z.size(4);
  const int64_t tile_h = t.tile_sample_min_height / r, tile_w = t.tile_sample_min_width / r;
  const int64_t stride_h = t.tile_sample_stride_height / r;
  const int64_t stride_w = t.tile_sample_stride_width / r;
  TORCH_CHECK(stride_h >= 1 && stride_w >= 1 && tile_h >= stride_h && tile_w >= stride_w,
              "spatial tiling: tiles of ", t.tile_sample_min_height, "x", t.tile_sample_min_width,
              " px every ", t.tile_sample_stride_height, "x", t.tile_sample_stride_width,
              " px must step at least one latent (", r, " px) and overlap");
  const int64_t blend_h = t.tile_sample_min_height - t.tile_sample_stride_height;
  const int64_t blend_w = t.tile_sample_min_width - t.tile_sample_stride_width;
  // Tiles are decoded and blended row by row with the already blended tile above and to the
  // left, as the reference's second loop does over its list of decoded tiles (its blends write
  // into the tiles in place), so only one row of decoded tiles is held at a time.
  std::vector<at::Tensor> above, rows;
  for (int64_t i = 0; i < height; i += stride_h) {
    std::vector<at::Tensor> row, crops;
    for (int64_t j = 0, col = 0; j < width; j += stride_w, ++col) {
      at::Tensor tile = Network(z.slice(3, i, i + tile_h).slice(4, j, j + tile_w), temb, causal);
      if (!above.empty()) Blend(above[col], tile, 3, blend_h);
      if (!row.empty()) Blend(row.back(), tile, 4, blend_w);
      crops.push_back(
          tile.slice(3, 0, t.tile_sample_stride_height).slice(4, 0, t.tile_sample_stride_width));
      row.push_back(tile);
    }
    rows.push_back(at::cat(crops, 4));
    above = std::move(row);
  }
  return at::cat(rows, 3).slice(3, 0, height * r).slice(4, 0, width * r);
}

at::Tensor Ltx2VideoDecoder::SpatialOrWhole(const at::Tensor& z, const at::Tensor& temb,
                                            bool causal, const VideoVaeTiling& tiling) const {
  const int64_t r = config_.spatial_compression_ratio;
  if (tiling.spatial && (z.size(4) > tiling.tile_sample_min_width / r ||
                         z.size(3) > tiling.tile_sample_min_height / r)) {
    return SpatialTiled(z, temb, causal, tiling);
  }
  return Network(z, temb, causal);
}

at::Tensor Ltx2VideoDecoder::TemporalTiled(const at::Tensor& z, const at::Tensor& temb,
                                           bool causal, const VideoVaeTiling& tiling) const {
  const VideoVaeTiling& t = tiling;
  const int64_t rt = config_.temporal_compression_ratio;
  const int64_t frames = z.size(2);
  const int64_t sample_frames = (frames - 1) * rt + 1;
  const int64_t tile_f = t.tile_sample_min_num_frames / rt;
  const int64_t stride_f = t.tile_sample_stride_num_frames / rt;
  const int64_t blend = t.tile_sample_min_num_frames - t.tile_sample_stride_num_frames;
  TORCH_CHECK(stride_f >= 1 && tile_f >= stride_f, "temporal tiling: tiles of ",
              t.tile_sample_min_num_frames, " frames every ", t.tile_sample_stride_num_frames,
              " must step at least one latent frame (", rt, ") and overlap");
  // Each tile reads tile_f + 1 latent frames; later tiles lose their last decoded frame and are
  // blended over the previous (already blended) tile, whose first tile keeps all its frames.
  // This is the reference's bookkeeping exactly, including that the second tile is blended one
  // frame off against the first (the first tile is not trimmed), so its output is a frame
  // behind the untiled decode from the second tile on.
  // Pieces are copied into the output as they come, so only the output, the previous tile and
  // the current one are alive.
  at::Tensor out;
  int64_t written = 0;
  at::Tensor previous;
  for (int64_t i = 0; i < frames && written < sample_frames; i += stride_f) {
    at::Tensor tile = SpatialOrWhole(z.slice(2, i, i + tile_f + 1), temb, causal, t);
    int64_t keep = t.tile_sample_stride_num_frames + 1;
    if (i > 0) {
      tile = tile.slice(2, 0, tile.size(2) - 1);
      Blend(previous, tile, 2, blend);
      keep = t.tile_sample_stride_num_frames;
    }
    if (!out.defined()) {
      std::vector<int64_t> shape = tile.sizes().vec();
      shape[2] = sample_frames;
      out = at::empty(shape, tile.options());
    }
    keep = std::min({keep, tile.size(2), sample_frames - written});
    out.narrow(2, written, keep).copy_(tile.narrow(2, 0, keep));
    written += keep;
    previous = tile;
  }
  // The reference's tiles always cover (F−1)·r_t + 1 frames (the first alone has r_t + 1).
  TORCH_CHECK(written == sample_frames, "temporal tiling produced ", written, " of ", sample_frames,
              " frames");
  return out;
}

at::Tensor Ltx2VideoDecoder::TemporalTiledAligned(const at::Tensor& z, const at::Tensor& temb,
                                                  bool causal, const VideoVaeTiling& tiling) const {
  const VideoVaeTiling& t = tiling;
  const int64_t rt = config_.temporal_compression_ratio;
  const int64_t frames = z.size(2);
  const int64_t tile_f = t.tile_sample_min_num_frames / rt;
  const int64_t stride_f = t.tile_sample_stride_num_frames / rt;
  const int64_t blend = t.tile_sample_min_num_frames - t.tile_sample_stride_num_frames;
  TORCH_CHECK(stride_f >= 1 && tile_f >= stride_f, "temporal tiling: tiles of ",
              t.tile_sample_min_num_frames, " frames every ", t.tile_sample_stride_num_frames,
              " must step at least one latent frame (", rt, ") and overlap");
  // Latent frame s starts at output frame s·rt; a tile of latents [s, e) gives frames
  // [s·rt, (e−1)·rt] and overwrites what earlier tiles wrote there, ramping in over its first
  // `blend` frames. Only the output and one tile are alive at a time.
  at::Tensor out;
  int64_t written = 0;  // frames [0, written) hold earlier tiles
  for (int64_t s = 0; s < frames; s += stride_f) {
    at::Tensor tile = SpatialOrWhole(z.slice(2, s, s + tile_f + 1), temb, causal, t);
    if (!out.defined()) {
      std::vector<int64_t> shape = tile.sizes().vec();
      shape[2] = (frames - 1) * rt + 1;
      out = at::empty(shape, tile.options());
    }
    const int64_t start = s * rt;
    // Tile frame y pairs with output frame start + y over the ramp.
    const int64_t ramp =
        std::min<int64_t>({blend, std::max<int64_t>(0, written - start), tile.size(2)});
    Blend(out.narrow(2, start, ramp), tile, 2, ramp);
    out.narrow(2, start, tile.size(2)).copy_(tile);
    written = start + tile.size(2);
    if (s + tile_f + 1 >= frames) break;  // this tile reached the last latent frame
  }
  return out;
}

at::Tensor Ltx2VideoDecoder::Decode(const at::Tensor& latents,
                                    const std::optional<at::Tensor>& timestep,
                                    std::optional<bool> causal) const {
  return Decode(latents, timestep, causal, tiling_);
}

at::Tensor Ltx2VideoDecoder::Decode(const at::Tensor& latents,
                                    const std::optional<at::Tensor>& timestep,
                                    std::optional<bool> causal,
                                    const VideoVaeTiling& tiling) const {
  TORCH_CHECK(latents.dim() == 5 && latents.size(1) == config_.latent_channels,
              "Ltx2VideoDecoder::Decode: latents must be [B, ", config_.latent_channels,
              ", F, H, W], got ", latents.sizes());
  TORCH_CHECK(timestep.has_value() == config_.timestep_conditioning,
              "Ltx2VideoDecoder::Decode: a timestep is required exactly when the config has "
              "timestep_conditioning (",
              config_.timestep_conditioning, ")");
  const at::Tensor& ref = Get(weights_, "decoder.conv_in.conv.weight");
  at::Tensor z = latents.to(ref.device(), ref.scalar_type());
  at::Tensor temb;
  if (timestep) {
    temb = timestep->to(ref.device(), at::kFloat).flatten();
    TORCH_CHECK(temb.numel() == 1 || temb.numel() == z.size(0),
                "Ltx2VideoDecoder::Decode: timestep needs 1 or ", z.size(0), " entries, has ",
                temb.numel());
    temb = temb.expand({z.size(0)}).to(ref.scalar_type());
  }
  const bool is_causal = causal.value_or(false) || config_.decoder_causal;
  const int64_t tile_f = tiling.tile_sample_min_num_frames / config_.temporal_compression_ratio;
  if (tiling.temporal && z.size(2) > tile_f) {
    return tiling.align_temporal_tiles ? TemporalTiledAligned(z, temb, is_causal, tiling)
                                       : TemporalTiled(z, temb, is_causal, tiling);
  }
  return SpatialOrWhole(z, temb, is_causal, tiling);
}

at::Tensor Ltx2VideoDecoder::DenormalizeLatents(const at::Tensor& latents) const {
  at::Tensor mean =
      latents_mean_.view({1, -1, 1, 1, 1}).to(latents.device(), latents.scalar_type());
  at::Tensor std = latents_std_.view({1, -1, 1, 1, 1}).to(latents.device(), latents.scalar_type());
  return latents * std / config_.scaling_factor + mean;
}

at::Tensor Ltx2VideoDecoder::NormalizeLatents(const at::Tensor& latents) const {
  at::Tensor mean =
      latents_mean_.view({1, -1, 1, 1, 1}).to(latents.device(), latents.scalar_type());
  at::Tensor std = latents_std_.view({1, -1, 1, 1, 1}).to(latents.device(), latents.scalar_type());
  return (latents - mean) * config_.scaling_factor / std;
}

at::Tensor VideoToUnitFrames(const at::Tensor& video) {
  TORCH_CHECK(video.dim() == 5, "VideoToUnitFrames: expected [B, C, F, H, W], got ", video.sizes());
  return (video * 0.5 + 0.5).clamp(0, 1).permute({0, 2, 1, 3, 4});
}

at::Tensor VideoToUint8Frames(const at::Tensor& video) {
  // "np" output is float32 [B, F, H, W, C]; numpy's round is half to even like at::round.
  at::Tensor x = VideoToUnitFrames(video).to(at::kCPU, at::kFloat).permute({0, 1, 3, 4, 2});
  return (x * 255).round().to(at::kByte).contiguous();
}

}  // namespace diffmesh::models::ltx2
