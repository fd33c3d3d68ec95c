#include "models/ltx2/audio_vae.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/ltx2/conv3d.h"
#include "models/core/ops.h"

namespace diffmesh::models::ltx2 {
namespace {

// The reference builds every norm of the decoder (pixel and group) with eps 1e-6, and its
// GroupNorms with 32 groups.
constexpr double kNormEps = 1e-6;
constexpr int64_t kGroups = 32;

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "audio_vae", key, out);
}

// LTX2AudioCausalConv2d keeps its nn.Conv2d under `.conv`.
void AddConv(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
             int64_t kernel) {
  // Seeded configs draw std 1/sqrt(fan_in) so activations keep their scale through the stack.
  const float std = 1.0f / std::sqrt(static_cast<float>(in * kernel * kernel));
  specs.push_back({prefix + ".weight", {out, in, kernel, kernel}, Init::kNormal, std});
  specs.push_back({prefix + ".bias", {out}, Init::kZeros, 0.0f});
}

void AddNorm(std::vector<ParamSpec>& specs, const AudioVaeConfig& c, const std::string& prefix,
             int64_t channels) {
  if (c.norm_type != "group") return;  // the pixel norm has no parameters
  specs.push_back({prefix + ".weight", {channels}, Init::kOnes, 0.0f});
  specs.push_back({prefix + ".bias", {channels}, Init::kZeros, 0.0f});
}

// LTX2AudioResnetBlock without time embedding: norm1, conv1, norm2, conv2, and a 1×1
// nin_shortcut when the channel count changes.
void AddResnet(std::vector<ParamSpec>& specs, const AudioVaeConfig& c, const std::string& prefix,
               int64_t in, int64_t out) {
  AddNorm(specs, c, prefix + ".norm1", in);
  AddConv(specs, prefix + ".conv1.conv", in, out, 3);
  AddNorm(specs, c, prefix + ".norm2", out);
  AddConv(specs, prefix + ".conv2.conv", out, out, 3);
  if (in != out) AddConv(specs, prefix + ".nin_shortcut.conv", in, out, 1);
}

// LTX2AudioAttnBlock: norm, then plain 1×1 convs q, k, v, proj_out.
void AddAttn(std::vector<ParamSpec>& specs, const AudioVaeConfig& c, const std::string& prefix,
             int64_t channels) {
  AddNorm(specs, c, prefix + ".norm", channels);
  for (const char* name : {".q", ".k", ".v", ".proj_out"}) {
    AddConv(specs, prefix + name, channels, channels, 1);
  }
}

// Padding (left, right, top, bottom) of a causal conv with kernel k×k: causal along time
// ("height") pads only the past side.
std::vector<int64_t> CausalPadding(const std::string& axis, int64_t kh, int64_t kw) {
  const int64_t ph = kh - 1, pw = kw - 1;
  if (axis == "height") return {pw / 2, pw - pw / 2, ph, 0};
  if (axis == "width" || axis == "width-compatibility") return {pw, 0, ph / 2, ph - ph / 2};
  return {pw / 2, pw - pw / 2, ph / 2, ph - ph / 2};  // "none"
}

}  // namespace

absl::StatusOr<AudioVaeConfig> AudioVaeConfig::FromJson(const nlohmann::json& json) {
  AudioVaeConfig c;
  RETURN_IF_ERROR(ReadField(json, "base_channels", c.base_channels));
  RETURN_IF_ERROR(ReadField(json, "output_channels", c.output_channels));
  RETURN_IF_ERROR(ReadField(json, "ch_mult", c.ch_mult));
  RETURN_IF_ERROR(ReadField(json, "num_res_blocks", c.num_res_blocks));
  RETURN_IF_ERROR(ReadField(json, "attn_resolutions", c.attn_resolutions));
  RETURN_IF_ERROR(ReadField(json, "resolution", c.resolution));
  RETURN_IF_ERROR(ReadField(json, "latent_channels", c.latent_channels));
  RETURN_IF_ERROR(ReadField(json, "norm_type", c.norm_type));
  RETURN_IF_ERROR(ReadField(json, "causality_axis", c.causality_axis));
  RETURN_IF_ERROR(ReadField(json, "mid_block_add_attention", c.mid_block_add_attention));
  RETURN_IF_ERROR(ReadField(json, "sample_rate", c.sample_rate));
  RETURN_IF_ERROR(ReadField(json, "mel_hop_length", c.mel_hop_length));
  if (json.contains("mel_bins")) {
    if (json["mel_bins"].is_null()) {
      c.mel_bins.reset();
    } else {
      int64_t bins = 0;
      RETURN_IF_ERROR(ReadField(json, "mel_bins", bins));
      c.mel_bins = bins;
    }
  }

  static const std::set<std::string> kAxes = {"none", "width", "height", "width-compatibility"};
  if (!kAxes.count(c.causality_axis)) {
    return absl::InvalidArgumentError(
        absl::StrCat("audio_vae config: causality_axis '", c.causality_axis, "'"));
  }
  if (c.norm_type != "pixel" && c.norm_type != "group") {
    return absl::InvalidArgumentError(
        absl::StrCat("audio_vae config: norm_type '", c.norm_type, "'"));
  }
  // The reference refuses GroupNorm in causal resnets.
  if (c.norm_type == "group" && c.causality_axis != "none") {
    return absl::InvalidArgumentError(absl::StrCat(
        "audio_vae config: norm_type 'group' with causality_axis '", c.causality_axis, "'"));
  }
  if (c.ch_mult.empty() || c.base_channels < 1 || c.latent_channels < 1 || c.output_channels < 1 ||
      c.num_res_blocks < 0 || c.sample_rate < 1 || c.mel_hop_length < 1 ||
      (c.mel_bins && *c.mel_bins < 1)) {
    return absl::InvalidArgumentError(
        "audio_vae config: ch_mult must be non-empty and channel counts, rates and mel_bins "
        "positive");
  }
  for (int64_t m : c.ch_mult) {
    const int64_t ch = c.base_channels * m;
    if (m < 1 || (c.norm_type == "group" && ch % kGroups != 0)) {
      return absl::InvalidArgumentError(absl::StrCat("audio_vae config: level channels ", ch,
                                                     " (ch_mult ", m, ") invalid for norm_type ",
                                                     c.norm_type));
    }
  }
  return c;
}

absl::StatusOr<AudioVaeConfig> AudioVaeConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

at::Tensor PackAudioLatents(const at::Tensor& latents) {
  TORCH_CHECK(latents.dim() == 4, "PackAudioLatents expects [B, C, L, M'], got ", latents.sizes());
  return latents.transpose(1, 2).flatten(2, 3);  // [B, L, C·M']
}

at::Tensor UnpackAudioLatents(const at::Tensor& tokens, int64_t latent_mel_bins) {
  TORCH_CHECK(tokens.dim() == 3 && latent_mel_bins > 0 && tokens.size(2) % latent_mel_bins == 0,
              "UnpackAudioLatents expects tokens [B, L, C·", latent_mel_bins, "], got ",
              tokens.sizes());
  return tokens.unflatten(2, {-1, latent_mel_bins}).transpose(1, 2);  // [B, C, L, M']
}

std::vector<ParamSpec> AudioVaeDecoder::Params(const AudioVaeConfig& c) {
  std::vector<ParamSpec> specs;
  const int64_t levels = static_cast<int64_t>(c.ch_mult.size());
  const int64_t top = c.base_channels * c.ch_mult.back();
  const std::set<int64_t> attn_res(c.attn_resolutions.begin(), c.attn_resolutions.end());

  AddConv(specs, "decoder.conv_in.conv", c.latent_channels, top, 3);
  AddResnet(specs, c, "decoder.mid.block_1", top, top);
  if (c.mid_block_add_attention) AddAttn(specs, c, "decoder.mid.attn_1", top);
  AddResnet(specs, c, "decoder.mid.block_2", top, top);

  int64_t block_in = top;
  int64_t res = c.resolution >> (levels - 1);
  for (int64_t level = levels - 1; level >= 0; --level) {
    const std::string stage = absl::StrCat("decoder.up.", level);
    const int64_t block_out = c.base_channels * c.ch_mult[level];
    for (int64_t j = 0; j <= c.num_res_blocks; ++j) {
      AddResnet(specs, c, absl::StrCat(stage, ".block.", j), block_in, block_out);
      block_in = block_out;
      // A stage at an attention resolution follows each of its resnets with attention.
      if (attn_res.count(res)) AddAttn(specs, c, absl::StrCat(stage, ".attn.", j), block_in);
    }
    if (level != 0) {
      AddConv(specs, stage + ".upsample.conv.conv", block_in, block_in, 3);
      res *= 2;
    }
  }
  AddNorm(specs, c, "decoder.norm_out", block_in);
  AddConv(specs, "decoder.conv_out.conv", block_in, c.output_channels, 3);

  // Per-feature statistics of the packed tokens (registered with base_channels entries).
  specs.push_back({"latents_mean", {c.base_channels}, Init::kZeros, 0.0f});
  specs.push_back({"latents_std", {c.base_channels}, Init::kOnes, 0.0f});
  return specs;
}

absl::StatusOr<std::unique_ptr<AudioVaeDecoder>> AudioVaeDecoder::Create(
    const AudioVaeConfig& config, WeightMap weights) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  return std::unique_ptr<AudioVaeDecoder>(new AudioVaeDecoder(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<AudioVaeDecoder>> AudioVaeDecoder::Load(
    const std::string& component_dir, at::ScalarType dtype, at::Device device) {
  ASSIGN_OR_RETURN(AudioVaeConfig config, AudioVaeConfig::FromFile(component_dir + "/config.json"));
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(component_dir));
  ASSIGN_OR_RETURN(WeightMap weights,
                   LoadWeights(*checkpoint, Params(config), dtype, {"encoder."}));
  for (auto& [name, t] : weights) t = t.to(device);
  return Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<AudioVaeDecoder>> AudioVaeDecoder::CreateSeeded(
    const AudioVaeConfig& config, uint64_t seed) {
  const std::vector<ParamSpec> specs = Params(config);
  WeightMap weights = InitSeeded(specs, seed);
  // Non-trivial statistics, std kept positive.
  auto gen = at::detail::createCPUGenerator(seed ^ 0x5eedu);
  weights["latents_mean"] =
      at::normal(0.0, 0.1, {config.base_channels}, gen, at::TensorOptions().dtype(at::kFloat));
  weights["latents_std"] = 1.0 + 0.25 * at::rand({config.base_channels}, gen, at::kFloat);
  return Create(config, std::move(weights));
}

at::Tensor AudioVaeDecoder::Norm(const at::Tensor& x, const std::string& prefix) const {
  if (config_.norm_type == "group") {
    return at::group_norm(x, kGroups, Get(weights_, prefix + ".weight"),
                          Get(weights_, prefix + ".bias"), kNormEps);
  }
  // LTX2AudioPixelNorm: RMS over channels at each (time, bin).
  return PixelNorm(x, kNormEps);
}

// `prefix` names the nn.Conv2d (its `.weight` [out, in, kh, kw] and `.bias`); stride 1.
at::Tensor AudioVaeDecoder::CausalConv(const at::Tensor& x, const std::string& prefix) const {
  const at::Tensor& w = Get(weights_, prefix + ".weight");
  const std::vector<int64_t> pad = CausalPadding(config_.causality_axis, w.size(2), w.size(3));
  return at::conv2d(at::constant_pad_nd(x, pad, 0), w, Get(weights_, prefix + ".bias"));
}

at::Tensor AudioVaeDecoder::Resnet(const at::Tensor& x, const std::string& prefix) const {
  at::Tensor h = CausalConv(at::silu(Norm(x, prefix + ".norm1")), prefix + ".conv1.conv");
  h = CausalConv(at::silu(Norm(h, prefix + ".norm2")), prefix + ".conv2.conv");
  const std::string shortcut = prefix + ".nin_shortcut.conv";
  if (weights_.count(shortcut + ".weight")) return CausalConv(x, shortcut) + h;
  return x + h;
}

// Single-head attention over all (time, bin) positions, head dim = channels, residual.
at::Tensor AudioVaeDecoder::AttnBlock(const at::Tensor& x, const std::string& prefix) const {
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), f = x.size(3);
  const at::Tensor h = Norm(x, prefix + ".norm");
  auto project = [&](const char* name) {  // [B, C, T, F] → [B, 1, T·F, C]
    at::Tensor p = at::conv2d(h, Get(weights_, prefix + name + ".weight"),
                              Get(weights_, prefix + name + ".bias"));
    return p.view({b, 1, c, t * f}).transpose(2, 3);
  };
  at::Tensor o = Attention(project(".q"), project(".k"), project(".v"));  // [B, 1, T·F, C]
  o = o.transpose(2, 3).reshape({b, c, t, f});
  return x + at::conv2d(o, Get(weights_, prefix + ".proj_out.weight"),
                        Get(weights_, prefix + ".proj_out.bias"));
}

// Nearest ×2 on both axes, a causal 3×3 conv, then the first row (column) dropped on the causal
// axis so that output frame t sees input frames ≤ ⌊(t+1)/2⌋ and the count is 2n−1.
at::Tensor AudioVaeDecoder::Upsample(const at::Tensor& x, const std::string& prefix) const {
  at::Tensor h = at::upsample_nearest2d(x, {2 * x.size(2), 2 * x.size(3)}, 2.0, 2.0);
  h = CausalConv(h, prefix + ".conv.conv");
  if (config_.causality_axis == "height") return h.narrow(2, 1, h.size(2) - 1);
  if (config_.causality_axis == "width") return h.narrow(3, 1, h.size(3) - 1);
  return h;
}

at::Tensor AudioVaeDecoder::Decode(const at::Tensor& latents) const {
  TORCH_CHECK(latents.dim() == 4 && latents.size(1) == config_.latent_channels,
              "AudioVaeDecoder::Decode expects latents [B, ", config_.latent_channels,
              ", L, M'], got ", latents.sizes());
  const at::Tensor& ref = Get(weights_, "decoder.conv_in.conv.weight");
  const int64_t frames = latents.size(2), bins = latents.size(3);
  // The reference's targets: every causality_axis value counts the causal frame total.
  const int64_t target_frames = std::max<int64_t>(
      frames * AudioVaeConfig::kCompression - (AudioVaeConfig::kCompression - 1), 1);
  const int64_t target_bins = config_.mel_bins.value_or(bins);

  at::Tensor h = CausalConv(latents.to(ref.device(), ref.scalar_type()), "decoder.conv_in.conv");
  h = Resnet(h, "decoder.mid.block_1");
  if (config_.mid_block_add_attention) h = AttnBlock(h, "decoder.mid.attn_1");
  h = Resnet(h, "decoder.mid.block_2");

  const int64_t levels = static_cast<int64_t>(config_.ch_mult.size());
  for (int64_t level = levels - 1; level >= 0; --level) {
    const std::string stage = absl::StrCat("decoder.up.", level);
    for (int64_t j = 0; j <= config_.num_res_blocks; ++j) {
      h = Resnet(h, absl::StrCat(stage, ".block.", j));
      const std::string attn = absl::StrCat(stage, ".attn.", j);
      if (weights_.count(attn + ".q.weight")) h = AttnBlock(h, attn);
    }
    if (level != 0) h = Upsample(h, stage + ".upsample");
  }
  h = CausalConv(at::silu(Norm(h, "decoder.norm_out")), "decoder.conv_out.conv");

  // [B, out, T, F] → [B, out, target_frames, target_bins]: crop, then zero-pad what is missing.
  h = h.narrow(2, 0, std::min(h.size(2), target_frames))
          .narrow(3, 0, std::min(h.size(3), target_bins));
  const int64_t pad_t = target_frames - h.size(2), pad_f = target_bins - h.size(3);
  if (pad_t > 0 || pad_f > 0) h = at::constant_pad_nd(h, {0, pad_f, 0, pad_t}, 0);
  return h;
}

at::Tensor AudioVaeDecoder::Stat(const std::string& name, const at::Tensor& like) const {
  const at::Tensor& s = Get(weights_, name);
  TORCH_CHECK(like.dim() == 3 && like.size(2) == s.size(0), "packed audio latents must be [B, L, ",
              s.size(0), "], got ", like.sizes());
  return s.to(like.device(), like.scalar_type());
}

at::Tensor AudioVaeDecoder::DenormalizePacked(const at::Tensor& tokens) const {
  return tokens * Stat("latents_std", tokens) + Stat("latents_mean", tokens);
}

at::Tensor AudioVaeDecoder::NormalizePacked(const at::Tensor& tokens) const {
  return (tokens - Stat("latents_mean", tokens)) / Stat("latents_std", tokens);
}

at::Tensor AudioVaeDecoder::DecodePacked(const at::Tensor& tokens) const {
  TORCH_CHECK(tokens.dim() == 3 && tokens.size(2) % config_.latent_channels == 0,
              "DecodePacked expects tokens [B, L, ", config_.latent_channels, "·M'], got ",
              tokens.sizes());
  return Decode(
      UnpackAudioLatents(DenormalizePacked(tokens), tokens.size(2) / config_.latent_channels));
}

}  // namespace diffmesh::models::ltx2
