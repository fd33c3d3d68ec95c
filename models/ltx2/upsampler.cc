#include "models/ltx2/upsampler.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/ltx2/conv3d.h"

namespace diffmesh::models::ltx2 {
namespace {

// torch.nn.GroupNorm(32, C) with its default eps.
constexpr int64_t kGroups = 32;
constexpr double kGroupNormEps = 1e-5;
// BlurDownsample's binomial kernel size.
constexpr int64_t kBlurKernel = 5;

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "latent upsampler", key, out);
}

void AddConv(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
             int64_t dims) {
  const float std = 1.0f / std::sqrt(static_cast<float>(in * (dims == 3 ? 27 : 9)));
  std::vector<int64_t> shape = {out, in, 3, 3};
  if (dims == 3) shape.push_back(3);
  specs.push_back({prefix + ".weight", shape, Init::kNormal, std});
  specs.push_back({prefix + ".bias", {out}, Init::kZeros, 0.0f});
}

void AddGroupNorm(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t channels) {
  specs.push_back({prefix + ".weight", {channels}, Init::kOnes, 0.0f});
  specs.push_back({prefix + ".bias", {channels}, Init::kZeros, 0.0f});
}

// [1, 1, k, k]: outer product of the binomial row C(k−1, ·), normalised to sum 1.
at::Tensor BinomialKernel() {
  std::vector<double> row = {1, 4, 6, 4, 1};
  at::Tensor k = at::tensor(row, at::kDouble);
  at::Tensor k2 = at::outer(k, k);
  return (k2 / k2.sum()).to(at::kFloat).view({1, 1, kBlurKernel, kBlurKernel});
}

// [B, C, F, H, W] ↔ [B·F, C, H, W].
at::Tensor FramesToBatch(const at::Tensor& x) { return x.permute({0, 2, 1, 3, 4}).flatten(0, 1); }
at::Tensor BatchToFrames(const at::Tensor& x, int64_t batch) {
  return x.unflatten(0, {batch, -1}).permute({0, 2, 1, 3, 4});
}

// [B, C, ...] with C the stat channel axis → shape [1, C, 1, ...].
at::Tensor ChannelView(const at::Tensor& stat, const at::Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[1] = -1;
  return stat.view(shape).to(like.device(), like.scalar_type());
}

}  // namespace

absl::StatusOr<LatentUpsamplerConfig> LatentUpsamplerConfig::FromJson(const nlohmann::json& json) {
  LatentUpsamplerConfig c;
  RETURN_IF_ERROR(ReadField(json, "in_channels", c.in_channels));
  RETURN_IF_ERROR(ReadField(json, "mid_channels", c.mid_channels));
  RETURN_IF_ERROR(ReadField(json, "num_blocks_per_stage", c.num_blocks_per_stage));
  RETURN_IF_ERROR(ReadField(json, "dims", c.dims));
  RETURN_IF_ERROR(ReadField(json, "spatial_upsample", c.spatial_upsample));
  RETURN_IF_ERROR(ReadField(json, "temporal_upsample", c.temporal_upsample));
  RETURN_IF_ERROR(ReadField(json, "rational_spatial_scale", c.rational_spatial_scale));
  RETURN_IF_ERROR(ReadField(json, "use_rational_resampler", c.use_rational_resampler));
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("latent upsampler config: ", what));
  };
  if (c.dims != 2 && c.dims != 3) return bad(absl::StrCat("dims must be 2 or 3, is ", c.dims));
  if (!c.spatial_upsample && !c.temporal_upsample) {
    return bad("spatial_upsample or temporal_upsample must be true");
  }
  if (c.temporal_upsample && c.dims != 3) return bad("temporal upsampling needs dims 3");
  if (c.in_channels < 1 || c.mid_channels < kGroups || c.mid_channels % kGroups != 0 ||
      c.num_blocks_per_stage < 0) {
    return bad(absl::StrCat("mid_channels ", c.mid_channels, " must be a multiple of ", kGroups,
                            "; in_channels and num_blocks_per_stage positive"));
  }
  if (c.spatial_upsample && !c.temporal_upsample && c.use_rational_resampler &&
      c.Rational().first == 0) {
    return bad(absl::StrCat("rational_spatial_scale ", c.rational_spatial_scale,
                            " is not one of 0.75, 1.5, 2, 4"));
  }
  return c;
}

absl::StatusOr<LatentUpsamplerConfig> LatentUpsamplerConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  auto config = FromJson(json);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

std::pair<int64_t, int64_t> LatentUpsamplerConfig::Rational() const {
  if (!use_rational_resampler) return {2, 1};
  const double s = rational_spatial_scale;
  if (s == 0.75) return {3, 4};
  if (s == 1.5) return {3, 2};
  if (s == 2.0) return {2, 1};
  if (s == 4.0) return {4, 1};
  return {0, 0};
}

std::vector<ParamSpec> Ltx2LatentUpsampler::Params(const LatentUpsamplerConfig& c) {
  std::vector<ParamSpec> specs;
  const int64_t mid = c.mid_channels;
  AddConv(specs, "initial_conv", c.in_channels, mid, c.dims);
  AddGroupNorm(specs, "initial_norm", mid);
  for (const char* stage : {"res_blocks", "post_upsample_res_blocks"}) {
    for (int64_t k = 0; k < c.num_blocks_per_stage; ++k) {
      const std::string block = absl::StrCat(stage, ".", k);
      AddConv(specs, block + ".conv1", mid, mid, c.dims);
      AddGroupNorm(specs, block + ".norm1", mid);
      AddConv(specs, block + ".conv2", mid, mid, c.dims);
      AddGroupNorm(specs, block + ".norm2", mid);
    }
    if (std::string(stage) == "res_blocks") {
      if (c.temporal_upsample) {
        AddConv(specs, "upsampler.0", mid, (c.spatial_upsample ? 8 : 2) * mid, 3);
      } else if (c.use_rational_resampler) {
        const int64_t num = c.Rational().first;
        AddConv(specs, "upsampler.conv", mid, num * num * mid, 2);
        specs.push_back(
            {"upsampler.blur_down.kernel", {1, 1, kBlurKernel, kBlurKernel}, Init::kOnes, 0.0f});
      } else {
        AddConv(specs, "upsampler.0", mid, 4 * mid, 2);
      }
    }
  }
  AddConv(specs, "final_conv", mid, c.in_channels, c.dims);
  return specs;
}

absl::StatusOr<std::unique_ptr<Ltx2LatentUpsampler>> Ltx2LatentUpsampler::Create(
    const LatentUpsamplerConfig& config, WeightMap weights) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  return std::unique_ptr<Ltx2LatentUpsampler>(new Ltx2LatentUpsampler(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<Ltx2LatentUpsampler>> Ltx2LatentUpsampler::Load(
    const std::string& component_dir, at::ScalarType dtype, at::Device device) {
  ASSIGN_OR_RETURN(LatentUpsamplerConfig config,
                   LatentUpsamplerConfig::FromFile(component_dir + "/config.json"));
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(component_dir));
  ASSIGN_OR_RETURN(WeightMap weights, LoadWeights(*checkpoint, Params(config), dtype));
  if (device != at::Device(at::kCPU)) {
    for (auto& [name, t] : weights) t = t.to(device);
  }
  return Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<Ltx2LatentUpsampler>> Ltx2LatentUpsampler::CreateSeeded(
    const LatentUpsamplerConfig& config, uint64_t seed) {
  WeightMap weights = InitSeeded(Params(config), seed);
  auto it = weights.find("upsampler.blur_down.kernel");
  if (it != weights.end()) it->second = BinomialKernel();
  return Create(config, std::move(weights));
}

at::Tensor Ltx2LatentUpsampler::Conv(const at::Tensor& x, const std::string& prefix) const {
  const at::Tensor& w = Get(weights_, prefix + ".weight");
  const at::Tensor& b = Get(weights_, prefix + ".bias");
  if (w.dim() == 5) return at::conv3d(x, w, b, {1, 1, 1}, {1, 1, 1});
  return at::conv2d(x, w, b, {1, 1}, {1, 1});
}

at::Tensor Ltx2LatentUpsampler::ResBlock(const at::Tensor& x, const std::string& prefix) const {
  at::Tensor h = Conv(x, prefix + ".conv1");
  h = at::silu(at::group_norm(h, kGroups, Get(weights_, prefix + ".norm1.weight"),
                              Get(weights_, prefix + ".norm1.bias"), kGroupNormEps));
  h = Conv(h, prefix + ".conv2");
  h = at::group_norm(h, kGroups, Get(weights_, prefix + ".norm2.weight"),
                     Get(weights_, prefix + ".norm2.bias"), kGroupNormEps);
  return at::silu(h + x);
}

at::Tensor Ltx2LatentUpsampler::Upsample(const at::Tensor& x) const {
  if (config_.temporal_upsample) {
    // [B, mid, F, H, W] → depth-to-space in time (and space) → drop the first frame: 2F − 1.
    at::Tensor h = Conv(x, "upsampler.0");
    const int64_t s = config_.spatial_upsample ? 2 : 1;
    h = DepthToSpace3d(h, {2, s, s});
    return h.slice(2, 1);
  }
  // Per frame: [N, mid, H, W] → [N, mid, H·num/den, W·num/den].
  if (!config_.use_rational_resampler) return at::pixel_shuffle(Conv(x, "upsampler.0"), 2);
  const auto [num, den] = config_.Rational();
  at::Tensor h = at::pixel_shuffle(Conv(x, "upsampler.conv"), num);
  if (den == 1) return h;
  const int64_t c = h.size(1);
  at::Tensor kernel =
      Get(weights_, "upsampler.blur_down.kernel").expand({c, 1, kBlurKernel, kBlurKernel});
  return at::conv2d(h, kernel, {}, {den, den}, {kBlurKernel / 2, kBlurKernel / 2}, {1, 1}, c);
}

at::Tensor Ltx2LatentUpsampler::Forward(const at::Tensor& latents,
                                        Intermediates* intermediates) const {
  TORCH_CHECK(latents.dim() == 5 && latents.size(1) == config_.in_channels,
              "Ltx2LatentUpsampler::Forward: latents must be [B, ", config_.in_channels,
              ", F, H, W], got ", latents.sizes());
  const at::Tensor& ref = Get(weights_, "initial_conv.weight");
  const int64_t batch = latents.size(0);
  const bool per_frame = config_.dims == 2;
  at::Tensor h = latents.to(ref.device(), ref.scalar_type());
  // With dims 2 every layer runs per frame; outputs are reported as [B, C, F, H, W].
  auto frames = [&](const at::Tensor& t) { return per_frame ? BatchToFrames(t, batch) : t; };
  if (per_frame) h = FramesToBatch(h);
  h = at::silu(at::group_norm(Conv(h, "initial_conv"), kGroups,
                              Get(weights_, "initial_norm.weight"),
                              Get(weights_, "initial_norm.bias"), kGroupNormEps));
  if (intermediates) intermediates->after_initial = frames(h);
  for (int64_t k = 0; k < config_.num_blocks_per_stage; ++k) {
    h = ResBlock(h, absl::StrCat("res_blocks.", k));
  }
  if (intermediates) intermediates->after_res_blocks = frames(h);
  if (per_frame || config_.temporal_upsample) {
    h = Upsample(h);
  } else {
    h = BatchToFrames(Upsample(FramesToBatch(h)), batch);
  }
  if (intermediates) intermediates->after_upsampler = frames(h);
  for (int64_t k = 0; k < config_.num_blocks_per_stage; ++k) {
    h = ResBlock(h, absl::StrCat("post_upsample_res_blocks.", k));
  }
  if (intermediates) intermediates->after_post_res_blocks = frames(h);
  return frames(Conv(h, "final_conv"));
}

absl::StatusOr<VideoLatentStatistics> VideoLatentStatistics::Load(const std::string& vae_dir) {
  VideoLatentStatistics s;
  const std::string config_path = vae_dir + "/config.json";
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(config_path));
  RETURN_IF_ERROR(ReadConfigField(json, "video vae", "scaling_factor", s.scaling_factor));
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(vae_dir));
  for (auto [name, out] : {std::pair<const char*, at::Tensor*>{"latents_mean", &s.mean},
                           std::pair<const char*, at::Tensor*>{"latents_std", &s.std}}) {
    const TensorView* v = checkpoint->Find(name);
    if (v == nullptr || v->shape.size() != 1) {
      return absl::NotFoundError(absl::StrCat(vae_dir, ": no 1-D '", name, "' buffer"));
    }
    *out = ToTensor(*v).to(at::kFloat);
  }
  if (s.mean.numel() != s.std.numel()) {
    return absl::InvalidArgumentError(absl::StrCat(vae_dir, ": latents_mean has ", s.mean.numel(),
                                                   " entries, latents_std ", s.std.numel()));
  }
  return s;
}

at::Tensor VideoLatentStatistics::Denormalize(const at::Tensor& latents) const {
  return latents * ChannelView(std, latents) / scaling_factor + ChannelView(mean, latents);
}

at::Tensor VideoLatentStatistics::Normalize(const at::Tensor& latents) const {
  return (latents - ChannelView(mean, latents)) * scaling_factor / ChannelView(std, latents);
}

at::Tensor AdainFilterLatents(const at::Tensor& latents, const at::Tensor& reference,
                              double factor) {
  TORCH_CHECK(latents.dim() >= 3 && reference.dim() == latents.dim() &&
                  reference.size(0) == latents.size(0) && reference.size(1) == latents.size(1),
              "AdainFilterLatents: latents ", latents.sizes(), ", reference ", reference.sizes());
  std::vector<int64_t> dims;
  for (int64_t d = 2; d < latents.dim(); ++d) dims.push_back(d);
  auto [r_sd, r_mean] = at::std_mean(reference, dims, /*unbiased=*/true, /*keepdim=*/true);
  auto [i_sd, i_mean] = at::std_mean(latents, dims, /*unbiased=*/true, /*keepdim=*/true);
  at::Tensor moved = (latents - i_mean) / i_sd * r_sd + r_mean;
  return at::lerp(latents, moved, factor);
}

at::Tensor ToneMapLatents(const at::Tensor& latents, double compression) {
  const double s = compression * 0.75;
  at::Tensor sigmoid = at::sigmoid((latents.abs() - 1.0) * (4.0 * s));
  return latents * (1.0 - sigmoid * (0.8 * s));
}

at::Tensor UpsampleVideoLatents(const Ltx2LatentUpsampler& upsampler,
                                const VideoLatentStatistics& stats, const at::Tensor& latents,
                                const LatentUpsampleOptions& options) {
  TORCH_CHECK(latents.dim() == 5, "UpsampleVideoLatents: latents must be [B, C, F, H, W], got ",
              latents.sizes());
  at::Tensor input = options.latents_normalized ? stats.Denormalize(latents) : latents;
  at::Tensor out = upsampler.Forward(input);
  if (options.adain_factor > 0.0) {
    out = AdainFilterLatents(out, input.to(out.device(), out.scalar_type()), options.adain_factor);
  }
  if (options.tone_map_compression_ratio > 0.0) {
    out = ToneMapLatents(out, options.tone_map_compression_ratio);
  }
  return out;
}

}  // namespace diffmesh::models::ltx2
