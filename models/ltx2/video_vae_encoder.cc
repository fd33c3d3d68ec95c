#include "models/ltx2/video_vae_encoder.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/ltx2/pil_resize.h"
#include "models/ltx2/vae_config.h"

namespace diffmesh::models::ltx2 {
namespace {

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "video vae encoder", key, out);
}

std::array<int64_t, 3> DownsampleStride(const std::string& type) {
  if (type == "spatial") return {1, 2, 2};
  if (type == "temporal") return {2, 1, 1};
  return {2, 2, 2};  // "spatiotemporal"
}

// Shapes of one down block (LTX2VideoEncoder3d.__init__): `num_layers` resnets at in_channels,
// then (when `downsample`) a downsampler to out_channels.
struct DownBlockPlan {
  int64_t in_channels;
  int64_t out_channels;
  int64_t num_layers;
  bool downsample;
  std::array<int64_t, 3> stride;
};

std::vector<DownBlockPlan> Plan(const VideoVaeEncoderConfig& c) {
  std::vector<DownBlockPlan> plan;
  // conv_in maps the patches to latent_channels, which the first block takes.
  int64_t channels = c.latent_channels;
  for (int64_t i = 0; i < c.NumDownBlocks(); ++i) {
    DownBlockPlan b;
    b.in_channels = channels;
    b.out_channels = c.block_out_channels[i];
    b.num_layers = c.layers_per_block[i];
    b.downsample = c.spatio_temporal_scaling[i];
    b.stride = DownsampleStride(c.downsample_type[i]);
    plan.push_back(b);
    channels = b.out_channels;
  }
  return plan;
}

int64_t StrideProduct(const std::array<int64_t, 3>& s) { return s[0] * s[1] * s[2]; }

void AddConv(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
             int64_t kernel) {
  // Seeded weights keep activations at unit scale; loading ignores the init.
  const float std = 1.0f / std::sqrt(static_cast<float>(in * kernel * kernel * kernel));
  specs.push_back({prefix + ".weight", {out, in, kernel, kernel, kernel}, Init::kNormal, std});
  specs.push_back({prefix + ".bias", {out}, Init::kZeros, 0.0f});
}

// Inverse of DepthToSpace3d: [B, C, F·st, H·sh, W·sw] → [B, C·st·sh·sw, F, H, W] with channel
// c·st·sh·sw + i·sh·sw + j·sw + k holding in[b, c, f·st+i, h·sh+j, w·sw+k].
at::Tensor SpaceToDepth3d(const at::Tensor& x, const std::array<int64_t, 3>& s) {
  const int64_t b = x.size(0), c = x.size(1);
  const int64_t f = x.size(2) / s[0], h = x.size(3) / s[1], w = x.size(4) / s[2];
  return x.reshape({b, c, f, s[0], h, s[1], w, s[2]})
      .permute({0, 1, 3, 5, 7, 2, 4, 6})  // [B, C, st, sh, sw, F, H, W]
      .reshape({b, c * s[0] * s[1] * s[2], f, h, w});
}

}  // namespace

absl::StatusOr<VideoVaeEncoderConfig> VideoVaeEncoderConfig::FromJson(const nlohmann::json& json) {
  VideoVaeEncoderConfig c;
  RETURN_IF_ERROR(ReadField(json, "in_channels", c.in_channels));
  RETURN_IF_ERROR(ReadField(json, "latent_channels", c.latent_channels));
  RETURN_IF_ERROR(ReadField(json, "block_out_channels", c.block_out_channels));
  RETURN_IF_ERROR(ReadField(json, "down_block_types", c.down_block_types));
  RETURN_IF_ERROR(ReadField(json, "layers_per_block", c.layers_per_block));
  RETURN_IF_ERROR(ReadBoolOrList(json, "video vae encoder", "spatio_temporal_scaling",
                                 c.layers_per_block.empty() ? 0 : c.layers_per_block.size() - 1,
                                 c.spatio_temporal_scaling));
  RETURN_IF_ERROR(ReadField(json, "downsample_type", c.downsample_type));
  RETURN_IF_ERROR(ReadField(json, "patch_size", c.patch_size));
  RETURN_IF_ERROR(ReadField(json, "patch_size_t", c.patch_size_t));
  RETURN_IF_ERROR(ReadField(json, "resnet_norm_eps", c.resnet_norm_eps));
  RETURN_IF_ERROR(ReadField(json, "scaling_factor", c.scaling_factor));
  RETURN_IF_ERROR(ReadField(json, "encoder_causal", c.encoder_causal));
  std::string padding = "zeros";
  RETURN_IF_ERROR(ReadField(json, "encoder_spatial_padding_mode", padding));
  auto parsed = ParseSpatialPadding(padding);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "video vae encoder config: encoder_spatial_padding_mode: ", parsed.status().message()));
  }
  c.encoder_spatial_padding = *parsed;
  const int64_t scalings =
      std::count(c.spatio_temporal_scaling.begin(), c.spatio_temporal_scaling.end(), true);
  c.spatial_compression_ratio = c.patch_size << scalings;
  c.temporal_compression_ratio = c.patch_size_t << scalings;
  RETURN_IF_ERROR(ReadField(json, "spatial_compression_ratio", c.spatial_compression_ratio));
  RETURN_IF_ERROR(ReadField(json, "temporal_compression_ratio", c.temporal_compression_ratio));
  RETURN_IF_ERROR(Validate(c));
  return c;
}

absl::StatusOr<VideoVaeEncoderConfig> VideoVaeEncoderConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  auto config = FromJson(json);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

absl::Status VideoVaeEncoderConfig::Validate(const VideoVaeEncoderConfig& c) {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("video vae encoder config: ", what));
  };
  const size_t n = c.block_out_channels.size();
  if (n == 0) return bad("block_out_channels is empty");
  if (c.layers_per_block.size() < n + 1) {
    return bad(absl::StrCat("layers_per_block needs ", n + 1, " entries for ", n,
                            " down blocks and the mid block, has ", c.layers_per_block.size()));
  }
  if (c.down_block_types.size() < n || c.spatio_temporal_scaling.size() < n ||
      c.downsample_type.size() < n) {
    return bad(absl::StrCat("down_block_types / spatio_temporal_scaling / downsample_type need ", n,
                            " entries"));
  }
  if (c.in_channels < 1 || c.latent_channels < 2 || c.patch_size < 1 ||
      c.spatial_compression_ratio < 1 || c.temporal_compression_ratio < 1) {
    return bad("in_channels, patch_size and compression ratios must be >= 1, latent_channels >= 2");
  }
  if (c.patch_size_t != 1) {
    // The reference's conv_in takes in_channels·patch_size² channels, so patch_size_t > 1
    // cannot run there.
    return absl::UnimplementedError("video vae encoder config: patch_size_t != 1");
  }
  int64_t channels = c.latent_channels;
  for (size_t i = 0; i < n; ++i) {
    if (c.down_block_types[i] != "LTX2VideoDownBlock3D") {
      return absl::UnimplementedError(absl::StrCat("video vae encoder config: down_block_types[", i,
                                                   "] ", c.down_block_types[i]));
    }
    const std::string& t = c.downsample_type[i];
    if (c.spatio_temporal_scaling[i] && t != "spatial" && t != "temporal" &&
        t != "spatiotemporal") {
      // "conv" (a strided causal convolution) is in the reference but in no released config.
      return absl::UnimplementedError(
          absl::StrCat("video vae encoder config: downsample_type[", i, "] ", t));
    }
    const int64_t out = c.block_out_channels[i];
    if (c.spatio_temporal_scaling[i]) {
      const int64_t s = StrideProduct(DownsampleStride(t));
      if (out < 1 || out % s != 0 || (channels * s) % out != 0) {
        return bad(absl::StrCat("down block ", i, ": ", channels, " → ", out, " channels with a ",
                                t, " downsampler (needs out % ", s, " == 0 and out | in·", s, ")"));
      }
    } else if (out != channels) {
      // Without a downsampler nothing changes the channel count, so the next layer would not fit.
      return bad(absl::StrCat("down block ", i, " has no downsampler but block_out_channels ", out,
                              " != its input ", channels));
    }
    channels = out;
  }
  return absl::OkStatus();
}

int64_t VideoVaeEncoderConfig::SpatialFactor() const {
  int64_t f = patch_size;
  for (int64_t i = 0; i < NumDownBlocks(); ++i) {
    if (spatio_temporal_scaling[i]) f *= DownsampleStride(downsample_type[i])[1];
  }
  return f;
}

int64_t VideoVaeEncoderConfig::TemporalFactor() const {
  int64_t f = patch_size_t;
  for (int64_t i = 0; i < NumDownBlocks(); ++i) {
    if (spatio_temporal_scaling[i]) f *= DownsampleStride(downsample_type[i])[0];
  }
  return f;
}

std::vector<ParamSpec> Ltx2VideoEncoder::Params(const VideoVaeEncoderConfig& c) {
  std::vector<ParamSpec> specs;
  AddConv(specs, "encoder.conv_in.conv", c.in_channels * c.patch_size * c.patch_size,
          c.latent_channels, 3);
  int64_t channels = c.latent_channels;
  const std::vector<DownBlockPlan> plan = Plan(c);
  for (size_t i = 0; i < plan.size(); ++i) {
    const DownBlockPlan& b = plan[i];
    const std::string block = absl::StrCat("encoder.down_blocks.", i);
    for (int64_t k = 0; k < b.num_layers; ++k) {
      const std::string resnet = absl::StrCat(block, ".resnets.", k);
      AddConv(specs, resnet + ".conv1.conv", b.in_channels, b.in_channels, 3);
      AddConv(specs, resnet + ".conv2.conv", b.in_channels, b.in_channels, 3);
    }
    if (b.downsample) {
      AddConv(specs, block + ".downsamplers.0.conv.conv", b.in_channels,
              b.out_channels / StrideProduct(b.stride), 3);
    }
    channels = b.out_channels;
  }
  for (int64_t k = 0; k < c.layers_per_block[plan.size()]; ++k) {
    const std::string resnet = absl::StrCat("encoder.mid_block.resnets.", k);
    AddConv(specs, resnet + ".conv1.conv", channels, channels, 3);
    AddConv(specs, resnet + ".conv2.conv", channels, channels, 3);
  }
  AddConv(specs, "encoder.conv_out.conv", channels, c.latent_channels + 1, 3);
  specs.push_back({"latents_mean", {c.latent_channels}, Init::kZeros, 0.0f});
  specs.push_back({"latents_std", {c.latent_channels}, Init::kOnes, 0.0f});
  return specs;
}

Ltx2VideoEncoder::Ltx2VideoEncoder(VideoVaeEncoderConfig config, WeightMap weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  latents_mean_ = Get(weights_, "latents_mean");
  latents_std_ = Get(weights_, "latents_std");
}

absl::StatusOr<std::unique_ptr<Ltx2VideoEncoder>> Ltx2VideoEncoder::Create(
    const VideoVaeEncoderConfig& config, WeightMap weights) {
  RETURN_IF_ERROR(VideoVaeEncoderConfig::Validate(config));
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  return std::unique_ptr<Ltx2VideoEncoder>(new Ltx2VideoEncoder(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<Ltx2VideoEncoder>> Ltx2VideoEncoder::Load(
    const std::string& component_dir, at::ScalarType dtype, at::Device device) {
  ASSIGN_OR_RETURN(VideoVaeEncoderConfig config,
                   VideoVaeEncoderConfig::FromFile(component_dir + "/config.json"));
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(component_dir));
  ASSIGN_OR_RETURN(WeightMap weights,
                   LoadWeights(*checkpoint, Params(config), dtype, {"decoder."}));
  if (device != at::Device(at::kCPU)) {
    for (auto& [name, t] : weights) t = t.to(device);
  }
  return Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<Ltx2VideoEncoder>> Ltx2VideoEncoder::CreateSeeded(
    const VideoVaeEncoderConfig& config, uint64_t seed) {
  RETURN_IF_ERROR(VideoVaeEncoderConfig::Validate(config));
  return Create(config, InitSeeded(Params(config), seed));
}

absl::StatusOr<std::array<int64_t, 3>> Ltx2VideoEncoder::LatentSize(int64_t frames, int64_t height,
                                                                    int64_t width) const {
  const VideoVaeEncoderConfig& c = config_;
  if (frames < 1 || height % c.patch_size != 0 || width % c.patch_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("video vae encoder: input ", frames, " frames of ", height, "x", width,
                     ": needs >= 1 frame and height/width multiples of patch_size ", c.patch_size));
  }
  int64_t f = frames, h = height / c.patch_size, w = width / c.patch_size;
  for (const DownBlockPlan& b : Plan(c)) {
    if (!b.downsample) continue;
    const auto& s = b.stride;
    if ((f + s[0] - 1) % s[0] != 0 || h % s[1] != 0 || w % s[2] != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("video vae encoder: input ", frames, " frames of ", height, "x", width,
                       " does not divide: encodes to ", c.TemporalFactor(),
                       "k+1 frames and multiples of ", c.SpatialFactor(), " pixels"));
    }
    f = (f + s[0] - 1) / s[0];
    h /= s[1];
    w /= s[2];
  }
  return std::array<int64_t, 3>{f, h, w};
}

at::Tensor Ltx2VideoEncoder::Conv(const at::Tensor& x, const std::string& prefix,
                                  bool causal) const {
  return CausalConv3d(x, Get(weights_, prefix + ".conv.weight"),
                      Get(weights_, prefix + ".conv.bias"), causal,
                      config_.encoder_spatial_padding);
}

at::Tensor Ltx2VideoEncoder::Resnet(const at::Tensor& x, const std::string& prefix,
                                    bool causal) const {
  // LTX2VideoResnetBlock3d with in == out channels (all the encoder has): no shortcut layers.
  at::Tensor h = Conv(at::silu(PixelNorm(x)), prefix + ".conv1", causal);
  h = Conv(at::silu(PixelNorm(h)), prefix + ".conv2", causal);
  return h + x;
}

at::Tensor Ltx2VideoEncoder::Downsampler(const at::Tensor& x, const std::string& prefix,
                                         const std::array<int64_t, 3>& s, int64_t out_channels,
                                         bool causal) const {
  // LTX2VideoDownsampler3d: the first st−1 frames are repeated in front, then the convolution's
  // output (out/(st·sh·sw) channels) goes space-to-depth to out channels, plus a residual: the
  // input's own space-to-depth with each group of in·st·sh·sw/out consecutive channels averaged.
  // [B, in, F, H, W] → [B, out, (F + st − 1)/st, H/sh, W/sw].
  at::Tensor padded = s[0] > 1 ? at::cat({x.narrow(2, 0, s[0] - 1), x}, 2) : x;
  const int64_t group = x.size(1) * StrideProduct(s) / out_channels;
  at::Tensor residual = SpaceToDepth3d(padded, s);
  residual = residual.unflatten(1, {-1, group}).mean(2);
  return SpaceToDepth3d(Conv(padded, prefix + ".conv", causal), s) + residual;
}

absl::StatusOr<at::Tensor> Ltx2VideoEncoder::Encode(const at::Tensor& video,
                                                    std::optional<bool> causal_opt) const {
  const VideoVaeEncoderConfig& c = config_;
  if (video.dim() != 5 || video.size(1) != c.in_channels) {
    return absl::InvalidArgumentError(absl::StrCat("video vae encoder: video must be [B, ",
                                                   c.in_channels, ", F, H, W], got ",
                                                   c10::str(video.sizes())));
  }
  RETURN_IF_ERROR(LatentSize(video.size(2), video.size(3), video.size(4)).status());
  const bool causal = causal_opt.value_or(false) || c.encoder_causal;
  const at::Tensor& w_in = Get(weights_, "encoder.conv_in.conv.weight");
  at::Tensor x = video.to(w_in.device(), w_in.scalar_type());
  // Patchify: channel c·p² + j·p + i holds pixel (h·p + i, w·p + j) — the reference's order puts
  // the width offset before the height offset.
  const int64_t b = x.size(0), f = x.size(2), p = c.patch_size;
  const int64_t h = x.size(3) / p, w = x.size(4) / p;
  x = x.reshape({b, c.in_channels, f, 1, h, p, w, p})
          .permute({0, 1, 3, 7, 5, 2, 4, 6})  // [B, C, pt, p(w), p(h), F, H/p, W/p]
          .reshape({b, c.in_channels * p * p, f, h, w});
  x = Conv(x, "encoder.conv_in", causal);
  const std::vector<DownBlockPlan> plan = Plan(c);
  for (size_t i = 0; i < plan.size(); ++i) {
    const DownBlockPlan& blk = plan[i];
    const std::string block = absl::StrCat("encoder.down_blocks.", i);
    for (int64_t k = 0; k < blk.num_layers; ++k) {
      x = Resnet(x, absl::StrCat(block, ".resnets.", k), causal);
    }
    if (blk.downsample) {
      x = Downsampler(x, block + ".downsamplers.0", blk.stride, blk.out_channels, causal);
    }
  }
  for (int64_t k = 0; k < c.layers_per_block[plan.size()]; ++k) {
    x = Resnet(x, absl::StrCat("encoder.mid_block.resnets.", k), causal);
  }
  x = Conv(at::silu(PixelNorm(x)), "encoder.conv_out", causal);  // [B, C+1, F', H', W']
  // The last channel is the one log-variance; repeated so means and log-variances are C each.
  at::Tensor logvar = x.narrow(1, c.latent_channels, 1);
  return at::cat({x, logvar.expand({-1, c.latent_channels - 1, -1, -1, -1})}, 1);
}

absl::StatusOr<at::Tensor> Ltx2VideoEncoder::EncodeMode(const at::Tensor& video,
                                                        std::optional<bool> causal) const {
  ASSIGN_OR_RETURN(at::Tensor params, Encode(video, causal));
  return params.narrow(1, 0, config_.latent_channels).contiguous();
}

at::Tensor Ltx2VideoEncoder::NormalizeImageLatents(const at::Tensor& latents) const {
  const at::Tensor mean =
      latents_mean_.view({1, -1, 1, 1, 1}).to(latents.device(), latents.dtype());
  const at::Tensor std = latents_std_.view({1, -1, 1, 1, 1}).to(latents.device(), latents.dtype());
  return (latents - mean) / std;
}

absl::StatusOr<bool> CheckpointHasVideoEncoder(const std::string& component_dir) {
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(component_dir));
  return checkpoint->Find("encoder.conv_in.conv.weight") != nullptr;
}

absl::StatusOr<at::Tensor> PreprocessConditioningImage(const at::Tensor& image, int64_t height,
                                                       int64_t width) {
  if (height < 1 || width < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("conditioning image: target size ", height, "x", width));
  }
  if (image.scalar_type() == at::kByte) {
    if (image.dim() != 3 || image.size(2) != 3 || image.size(0) < 1 || image.size(1) < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "conditioning image: uint8 image must be RGB [H, W, 3], got ", c10::str(image.sizes())));
    }
    const at::Tensor src = image.to(at::kCPU).contiguous();
    std::vector<uint8_t> resized = PilBilinearResize(
        src.data_ptr<uint8_t>(), static_cast<int>(src.size(0)), static_cast<int>(src.size(1)), 3,
        static_cast<int>(height), static_cast<int>(width));
    at::Tensor u8 = at::from_blob(resized.data(), {height, width, 3}, at::kByte);
    // pil_to_numpy: float32 / 255; numpy_to_pt: NCHW; normalize: 2x − 1.
    at::Tensor x = u8.to(at::kFloat).div(255.0).permute({2, 0, 1}).unsqueeze(0).contiguous();
    return x * 2.0 - 1.0;
  }
  if (!at::isFloatingType(image.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat("conditioning image: dtype ",
                                                   c10::toString(image.scalar_type()),
                                                   " (expected uint8 HWC or a float CHW image)"));
  }
  at::Tensor x = image.dim() == 3 ? image.unsqueeze(0) : image;
  if (x.dim() != 4 || x.size(0) != 1 || x.size(1) != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("conditioning image: float image must be [3, H, W] or [1, 3, H, W], got ",
                     c10::str(image.sizes())));
  }
  x = x.to(at::kCPU, at::kFloat);
  // F.interpolate(size=(height, width)) with its default mode, nearest.
  x = at::upsample_nearest2d(x, {height, width});
  // The reference skips the [0, 1] → [-1, 1] step for a tensor that already has negatives.
  if (x.min().item<float>() < 0.0f) return x.contiguous();
  return (x * 2.0 - 1.0).contiguous();
}

absl::StatusOr<at::Tensor> EncodeConditioningImage(const Ltx2VideoEncoder& encoder,
                                                   const at::Tensor& image, int64_t height,
                                                   int64_t width) {
  const VideoVaeEncoderConfig& c = encoder.config();
  if (c.SpatialFactor() != c.spatial_compression_ratio) {
    return absl::FailedPreconditionError(
        absl::StrCat("video vae: the encoder compresses space by ", c.SpatialFactor(),
                     " but the config's spatial_compression_ratio (the pipeline's latent grid) is ",
                     c.spatial_compression_ratio, "; its image latent cannot condition a video"));
  }
  const int64_t r = c.spatial_compression_ratio;
  if (height < r || width < r || height % r != 0 || width % r != 0) {
    auto nearest = [r](int64_t v) { return std::max<int64_t>(r, (v + r / 2) / r * r); };
    return absl::InvalidArgumentError(
        absl::StrCat("conditioning image: video size ", height, "x", width,
                     " is not a multiple of the VAE's spatial ratio ", r,
                     " (nearest valid: ", nearest(height), "x", nearest(width), ")"));
  }
  ASSIGN_OR_RETURN(at::Tensor pixels, PreprocessConditioningImage(image, height, width));
  ASSIGN_OR_RETURN(at::Tensor raw, encoder.EncodeMode(pixels.unsqueeze(2)));  // [1, C, 1, h, w]
  if (c.scaling_factor == 1.0) return raw;
  // The pipeline computes (x − mean)·scaling_factor/std; the reference wants (raw − mean)/std.
  const at::Tensor mean =
      encoder.latents_mean().view({1, -1, 1, 1, 1}).to(raw.device(), raw.scalar_type());
  return mean + (raw - mean) / c.scaling_factor;
}

}  // namespace diffmesh::models::ltx2
