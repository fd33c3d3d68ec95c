#include "models/ltx2/vocoder.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"

namespace diffmesh::models::ltx2 {
namespace {

// conv_in and conv_out of every generator: kernel 7, padding 3 (fixed in the reference).
constexpr int64_t kOuterKernel = 7;
// The output activation of a leaky-ReLU generator is nn.LeakyReLU() with torch's default slope,
// not the configured one (as the original code does).
constexpr double kActOutLeakySlope = 0.01;
constexpr double kSnakeEps = 1e-9;
constexpr double kLogMelFloor = 1e-5;
constexpr char kBwePrefix[] = "bwe_generator.";

bool IsSnake(const VocoderGeneratorConfig& c) {
  return c.act_fn == "snake" || c.act_fn == "snakebeta";
}

// Reads the generator fields named `prefix` + the LTX2Vocoder argument name.
absl::Status ReadGenerator(const nlohmann::json& json, const std::string& prefix,
                           VocoderGeneratorConfig& g) {
  auto field = [&](const char* key, auto& out) {
    return ReadConfigField(json, "vocoder", (prefix + key).c_str(), out);
  };
  RETURN_IF_ERROR(field("in_channels", g.in_channels));
  RETURN_IF_ERROR(field("hidden_channels", g.hidden_channels));
  RETURN_IF_ERROR(field("out_channels", g.out_channels));
  RETURN_IF_ERROR(field("upsample_kernel_sizes", g.upsample_kernel_sizes));
  RETURN_IF_ERROR(field("upsample_factors", g.upsample_factors));
  RETURN_IF_ERROR(field("resnet_kernel_sizes", g.resnet_kernel_sizes));
  RETURN_IF_ERROR(field("resnet_dilations", g.resnet_dilations));
  RETURN_IF_ERROR(field("act_fn", g.act_fn));
  RETURN_IF_ERROR(field("leaky_relu_negative_slope", g.leaky_relu_negative_slope));
  RETURN_IF_ERROR(field("antialias", g.antialias));
  RETURN_IF_ERROR(field("antialias_ratio", g.antialias_ratio));
  RETURN_IF_ERROR(field("antialias_kernel_size", g.antialias_kernel_size));
  RETURN_IF_ERROR(field("final_bias", g.final_bias));
  // null means no final activation; an absent key keeps the class default.
  const std::string final_key = prefix + "final_act_fn";
  if (json.contains(final_key) && json[final_key].is_null()) {
    g.final_act_fn.clear();
  } else {
    RETURN_IF_ERROR(field("final_act_fn", g.final_act_fn));
  }

  const std::string name = prefix.empty() ? "vocoder" : "bwe generator";
  const size_t stages = g.upsample_factors.size();
  if (stages == 0 || g.upsample_kernel_sizes.size() != stages) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocoder config: ", name, " has ", g.upsample_kernel_sizes.size(),
                     " upsample kernel sizes for ", stages, " upsample factors"));
  }
  if (g.resnet_kernel_sizes.empty() || g.resnet_dilations.size() != g.resnet_kernel_sizes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocoder config: ", name, " has ", g.resnet_dilations.size(), " resnet dilation lists for ",
        g.resnet_kernel_sizes.size(), " resnet kernel sizes"));
  }
  if (g.act_fn != "leaky_relu" && !IsSnake(g)) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocoder config: ", name, " act_fn '", g.act_fn, "'"));
  }
  // The reference's resblocks would nest anti-aliasing wrappers ever deeper around a leaky ReLU
  // (it reuses the previous activation object); no checkpoint uses the combination.
  if (g.act_fn == "leaky_relu" && g.antialias) {
    return absl::UnimplementedError(
        absl::StrCat("vocoder config: ", name, " leaky_relu with antialias"));
  }
  if (g.final_act_fn != "tanh" && g.final_act_fn != "clamp" && !g.final_act_fn.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocoder config: ", name, " final_act_fn '", g.final_act_fn, "'"));
  }
  if (g.in_channels < 1 || g.out_channels < 1 || g.hidden_channels % (int64_t{1} << stages) != 0 ||
      g.hidden_channels < (int64_t{1} << stages)) {
    return absl::InvalidArgumentError(absl::StrCat("vocoder config: ", name, " hidden_channels ",
                                                   g.hidden_channels, " must halve evenly over ",
                                                   stages, " stages"));
  }
  for (size_t i = 0; i < stages; ++i) {
    if (g.upsample_factors[i] < 1 || g.upsample_kernel_sizes[i] < g.upsample_factors[i]) {
      return absl::InvalidArgumentError(absl::StrCat("vocoder config: ", name, " upsampler ", i,
                                                     " kernel ", g.upsample_kernel_sizes[i],
                                                     " factor ", g.upsample_factors[i]));
    }
  }
  for (size_t r = 0; r < g.resnet_kernel_sizes.size(); ++r) {
    if (g.resnet_kernel_sizes[r] < 1 || g.resnet_dilations[r].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocoder config: ", name, " resnet ", r, " kernel or dilations"));
    }
  }
  if (g.antialias_ratio < 1 || g.antialias_kernel_size < g.antialias_ratio) {
    return absl::InvalidArgumentError(absl::StrCat("vocoder config: ", name, " antialias ratio ",
                                                   g.antialias_ratio, " kernel ",
                                                   g.antialias_kernel_size));
  }
  return absl::OkStatus();
}

// LTX2VocoderWithBWE's constructor defaults for its two generators.
VocoderGeneratorConfig BweStage1Defaults() {
  VocoderGeneratorConfig g;
  g.hidden_channels = 1536;
  g.upsample_kernel_sizes = {11, 4, 4, 4, 4, 4};
  g.upsample_factors = {5, 2, 2, 2, 2, 2};
  g.act_fn = "snakebeta";
  g.antialias = true;
  g.final_act_fn.clear();
  g.final_bias = false;
  return g;
}

VocoderGeneratorConfig BweGeneratorDefaults() {
  VocoderGeneratorConfig g = BweStage1Defaults();
  g.hidden_channels = 512;
  g.upsample_kernel_sizes = {12, 11, 4, 4, 4};
  g.upsample_factors = {6, 5, 2, 2, 2};
  return g;
}

void AddConv1d(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
               int64_t kernel, bool bias = true) {
  const float std = 1.0f / std::sqrt(static_cast<float>(in * kernel));
  specs.push_back({prefix + ".weight", {out, in, kernel}, Init::kNormal, std});
  if (bias) specs.push_back({prefix + ".bias", {out}, Init::kZeros, 0.0f});
}

// SnakeBeta parameters (log-scale alpha, and beta when `use_beta`), under `.act` with the two
// Kaiser filter buffers when anti-aliased.
void AddSnake(std::vector<ParamSpec>& specs, const VocoderGeneratorConfig& c,
              const std::string& prefix, int64_t channels, bool use_beta, bool antialias) {
  const std::string act = antialias ? prefix + ".act" : prefix;
  specs.push_back({act + ".alpha", {channels}, Init::kNormal, 0.02f});
  if (use_beta) specs.push_back({act + ".beta", {channels}, Init::kNormal, 0.02f});
  if (antialias) {
    for (const char* f : {".upsample.filter", ".downsample.filter"}) {
      specs.push_back({prefix + f, {1, 1, c.antialias_kernel_size}, Init::kZeros, 0.0f});
    }
  }
}

void AddGenerator(std::vector<ParamSpec>& specs, const VocoderGeneratorConfig& c,
                  const std::string& p) {
  AddConv1d(specs, p + "conv_in", c.in_channels, c.hidden_channels, kOuterKernel);
  int64_t ch = c.hidden_channels;
  const size_t per_stage = c.resnet_kernel_sizes.size();
  for (size_t i = 0; i < c.upsample_factors.size(); ++i) {
    const int64_t out = ch / 2;
    // ConvTranspose1d weights are [in, out, k].
    const std::string up = absl::StrCat(p, "upsamplers.", i);
    const int64_t k = c.upsample_kernel_sizes[i];
    specs.push_back({up + ".weight",
                     {ch, out, k},
                     Init::kNormal,
                     1.0f / std::sqrt(static_cast<float>(ch * k) / c.upsample_factors[i])});
    specs.push_back({up + ".bias", {out}, Init::kZeros, 0.0f});
    for (size_t r = 0; r < per_stage; ++r) {
      const std::string res = absl::StrCat(p, "resnets.", i * per_stage + r);
      for (size_t j = 0; j < c.resnet_dilations[r].size(); ++j) {
        AddConv1d(specs, absl::StrCat(res, ".convs1.", j), out, out, c.resnet_kernel_sizes[r]);
        AddConv1d(specs, absl::StrCat(res, ".convs2.", j), out, out, c.resnet_kernel_sizes[r]);
        if (IsSnake(c)) {
          const bool beta = c.act_fn == "snakebeta";
          AddSnake(specs, c, absl::StrCat(res, ".acts1.", j), out, beta, c.antialias);
          AddSnake(specs, c, absl::StrCat(res, ".acts2.", j), out, beta, c.antialias);
        }
      }
    }
    ch = out;
  }
  // Snake generators always end with an anti-aliased SnakeBeta (with beta, even for "snake").
  if (IsSnake(c)) AddSnake(specs, c, p + "act_out", ch, /*use_beta=*/true, /*antialias=*/true);
  AddConv1d(specs, p + "conv_out", ch, c.out_channels, kOuterKernel, c.final_bias);
}

// Conv1d with padding="same" at stride 1: total (k−1)·d, the odd sample on the right.
at::Tensor ConvSame(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                    int64_t dilation) {
  const int64_t total = (w.size(2) - 1) * dilation;
  const int64_t left = total / 2;
  if (total % 2 == 0) return at::conv1d(x, w, b, 1, left, dilation);
  const int64_t no_pad = 0;  // a literal 0 would also match conv1d's padding-mode string overload
  return at::conv1d(at::constant_pad_nd(x, {left, total - left}, 0), w, b, 1, no_pad, dilation);
}

}  // namespace

int64_t VocoderGeneratorConfig::UpsampleFactor() const {
  int64_t f = 1;
  for (int64_t u : upsample_factors) f *= u;
  return f;
}

int64_t VocoderGeneratorConfig::FinalChannels() const {
  return hidden_channels >> upsample_factors.size();
}

absl::StatusOr<VocoderConfig> VocoderConfig::FromJson(const nlohmann::json& json) {
  VocoderConfig c;
  std::string class_name;
  RETURN_IF_ERROR(ReadConfigField(json, "vocoder", "_class_name", class_name));
  if (class_name == "LTX2VocoderWithBWE") {
    c.with_bwe = true;
    c.vocoder = BweStage1Defaults();
    c.bwe = BweGeneratorDefaults();
    c.output_sampling_rate = 48000;
  } else if (class_name != "LTX2Vocoder") {
    return absl::InvalidArgumentError(
        absl::StrCat("vocoder config: _class_name '", class_name,
                     "' (expected LTX2Vocoder or LTX2VocoderWithBWE)"));
  }
  RETURN_IF_ERROR(ReadGenerator(json, "", c.vocoder));
  auto field = [&](const char* key, int64_t& out) {
    return ReadConfigField(json, "vocoder", key, out);
  };
  RETURN_IF_ERROR(field("output_sampling_rate", c.output_sampling_rate));
  if (c.output_sampling_rate < 1) {
    return absl::InvalidArgumentError("vocoder config: output_sampling_rate must be positive");
  }
  if (!c.with_bwe) return c;

  RETURN_IF_ERROR(ReadGenerator(json, "bwe_", c.bwe));
  RETURN_IF_ERROR(field("filter_length", c.filter_length));
  RETURN_IF_ERROR(field("hop_length", c.hop_length));
  RETURN_IF_ERROR(field("window_length", c.window_length));
  RETURN_IF_ERROR(field("num_mel_channels", c.num_mel_channels));
  RETURN_IF_ERROR(field("input_sampling_rate", c.input_sampling_rate));
  if (c.filter_length < 1 || c.hop_length < 1 || c.window_length < 1 || c.num_mel_channels < 1 ||
      c.input_sampling_rate < 1 || c.ResampleRatio() < 1) {
    return absl::InvalidArgumentError(
        "vocoder config: STFT sizes and sampling rates must be positive, output rate ≥ input");
  }
  if (c.bwe.in_channels != c.vocoder.out_channels * c.num_mel_channels) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocoder config: bwe_in_channels ", c.bwe.in_channels, " != out_channels ",
                     c.vocoder.out_channels, " x num_mel_channels ", c.num_mel_channels));
  }
  // The residual (one mel frame per hop, upsampled by the BWE generator) and the resampled skip
  // path must have the same length.
  if (c.bwe.UpsampleFactor() != c.hop_length * c.ResampleRatio()) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocoder config: bwe upsampling x", c.bwe.UpsampleFactor(), " != hop_length ",
                     c.hop_length, " x resample ratio ", c.ResampleRatio()));
  }
  return c;
}

absl::StatusOr<VocoderConfig> VocoderConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

std::vector<ParamSpec> Vocoder::Params(const VocoderConfig& c) {
  std::vector<ParamSpec> specs;
  AddGenerator(specs, c.vocoder, c.with_bwe ? "vocoder." : "");
  if (c.with_bwe) {
    AddGenerator(specs, c.bwe, kBwePrefix);
    const int64_t freqs = c.filter_length / 2 + 1;
    specs.push_back({"mel_stft.mel_basis", {c.num_mel_channels, freqs}, Init::kNormal, 0.1f});
    // Rows: the real (cos) then imaginary (−sin) parts of the windowed DFT.
    specs.push_back({"mel_stft.stft_fn.forward_basis",
                     {2 * freqs, 1, c.filter_length},
                     Init::kNormal,
                     1.0f / std::sqrt(static_cast<float>(c.filter_length))});
  }
  return specs;
}

Vocoder::Vocoder(VocoderConfig config, WeightMap weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  if (config_.with_bwe) resampler_ = SincUpsampler::Hann(config_.ResampleRatio());
}

absl::StatusOr<std::unique_ptr<Vocoder>> Vocoder::Create(const VocoderConfig& config,
                                                         WeightMap weights) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  if (config.with_bwe) {
    for (auto& [name, t] : weights) t = t.to(at::kFloat);
  }
  return std::unique_ptr<Vocoder>(new Vocoder(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<Vocoder>> Vocoder::Load(const std::string& component_dir,
                                                       at::ScalarType dtype, at::Device device) {
  ASSIGN_OR_RETURN(VocoderConfig config, VocoderConfig::FromFile(component_dir + "/config.json"));
  ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(component_dir));
  // Only the STFT's forward half is used.
  ASSIGN_OR_RETURN(WeightMap weights,
                   LoadWeights(*checkpoint, Params(config), config.with_bwe ? at::kFloat : dtype,
                               {"mel_stft.stft_fn.inverse_basis"}));
  for (auto& [name, t] : weights) t = t.to(device);
  return Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<Vocoder>> Vocoder::CreateSeeded(const VocoderConfig& config,
                                                               uint64_t seed) {
  const std::vector<ParamSpec> specs = Params(config);
  WeightMap weights = InitSeeded(specs, seed);
  for (const ParamSpec& s : specs) {
    if (absl::EndsWith(s.name, ".upsample.filter") ||
        absl::EndsWith(s.name, ".downsample.filter")) {
      const VocoderGeneratorConfig& g =
          absl::StartsWith(s.name, kBwePrefix) ? config.bwe : config.vocoder;
      weights[s.name] = AntiAliasFilter(g.antialias_ratio, g.antialias_kernel_size);
    }
  }
  // A mel filterbank is non-negative.
  if (config.with_bwe) weights["mel_stft.mel_basis"] = weights["mel_stft.mel_basis"].abs();
  return Create(config, std::move(weights));
}

at::Tensor Vocoder::Snake(const std::string& prefix, bool use_beta, const at::Tensor& x) const {
  // Log-scale parameters, one per channel: x + 1/(β + ε) · sin²(α x).
  const at::Tensor alpha = at::exp(Get(weights_, prefix + ".alpha")).view({1, -1, 1});
  const at::Tensor amplitude =
      use_beta ? at::exp(Get(weights_, prefix + ".beta")).view({1, -1, 1}) : alpha;
  return x + at::reciprocal(amplitude + kSnakeEps) * at::sin(x * alpha).pow(2);
}

// AntiAliasAct1d: Kaiser-sinc upsample, SnakeBeta at the higher rate, Kaiser-sinc downsample.
at::Tensor Vocoder::AntiAliased(const VocoderGeneratorConfig& c, const std::string& prefix,
                                bool use_beta, const at::Tensor& x) const {
  const SincUpsampler up =
      SincUpsampler::Kaiser(c.antialias_ratio, Get(weights_, prefix + ".upsample.filter"));
  const at::Tensor h = Snake(prefix + ".act", use_beta, up(x));
  return SincDownsample(h, Get(weights_, prefix + ".downsample.filter"), c.antialias_ratio);
}

at::Tensor Vocoder::Activation(const VocoderGeneratorConfig& c, const std::string& prefix,
                               const at::Tensor& x) const {
  if (!IsSnake(c)) return at::leaky_relu(x, c.leaky_relu_negative_slope);
  const bool use_beta = c.act_fn == "snakebeta";
  return c.antialias ? AntiAliased(c, prefix, use_beta, x) : Snake(prefix, use_beta, x);
}

// x + Σ_j conv2_j(act2_j(conv1_j(act1_j(x)))), applied in sequence over the dilations.
at::Tensor Vocoder::ResBlock(const VocoderGeneratorConfig& c, const std::string& prefix,
                             const std::vector<int64_t>& dilations, at::Tensor x) const {
  for (size_t j = 0; j < dilations.size(); ++j) {
    const std::string c1 = absl::StrCat(prefix, ".convs1.", j);
    const std::string c2 = absl::StrCat(prefix, ".convs2.", j);
    at::Tensor h = Activation(c, absl::StrCat(prefix, ".acts1.", j), x);
    h = ConvSame(h, Get(weights_, c1 + ".weight"), Get(weights_, c1 + ".bias"), dilations[j]);
    h = Activation(c, absl::StrCat(prefix, ".acts2.", j), h);
    h = ConvSame(h, Get(weights_, c2 + ".weight"), Get(weights_, c2 + ".bias"), 1);
    x = x + h;
  }
  return x;
}

at::Tensor Vocoder::Generate(const VocoderGeneratorConfig& c, const std::string& p,
                             at::Tensor x) const {
  constexpr int64_t kPad = kOuterKernel / 2;
  x = at::conv1d(x, Get(weights_, p + "conv_in.weight"), Get(weights_, p + "conv_in.bias"), 1,
                 kPad);  // [B, hidden, T]
  const size_t per_stage = c.resnet_kernel_sizes.size();
  for (size_t i = 0; i < c.upsample_factors.size(); ++i) {
    // Snake generators keep their activations inside the resblocks.
    if (!IsSnake(c)) x = at::leaky_relu(x, c.leaky_relu_negative_slope);
    const std::string up = absl::StrCat(p, "upsamplers.", i);
    const int64_t f = c.upsample_factors[i], k = c.upsample_kernel_sizes[i];
    x = at::conv_transpose1d(x, Get(weights_, up + ".weight"), Get(weights_, up + ".bias"), f,
                             (k - f) / 2);  // [B, hidden/2^(i+1), ·f]
    std::vector<at::Tensor> branches;
    branches.reserve(per_stage);
    for (size_t r = 0; r < per_stage; ++r) {
      branches.push_back(
          ResBlock(c, absl::StrCat(p, "resnets.", i * per_stage + r), c.resnet_dilations[r], x));
    }
    x = at::stack(branches, 0).mean(0);
  }
  x = IsSnake(c) ? AntiAliased(c, p + "act_out", /*use_beta=*/true, x)
                 : at::leaky_relu(x, kActOutLeakySlope);
  const std::string bias = p + "conv_out.bias";
  x = at::conv1d(x, Get(weights_, p + "conv_out.weight"),
                 weights_.count(bias) ? Get(weights_, bias) : at::Tensor(), 1, kPad);
  if (c.final_act_fn == "tanh") return at::tanh(x);
  if (c.final_act_fn == "clamp") return at::clamp(x, -1, 1);
  return x;
}

at::Tensor Vocoder::LogMel(const at::Tensor& waveform) const {
  // Causal: every frame ends at its hop, padding only the past.
  const int64_t left = std::max<int64_t>(0, config_.window_length - config_.hop_length);
  const at::Tensor x = at::constant_pad_nd(waveform.unsqueeze(1), {left, 0}, 0);
  const at::Tensor spec = at::conv1d(x, Get(weights_, "mel_stft.stft_fn.forward_basis"), {},
                                     config_.hop_length);  // [N, 2F, frames]
  const int64_t freqs = spec.size(1) / 2;
  const at::Tensor real = spec.narrow(1, 0, freqs), imag = spec.narrow(1, freqs, freqs);
  const at::Tensor magnitude = at::sqrt(real.pow(2) + imag.pow(2));  // [N, F, frames]
  const at::Tensor mel = at::matmul(Get(weights_, "mel_stft.mel_basis"), magnitude);
  return at::log(at::clamp_min(mel, kLogMelFloor));  // [N, mels, frames]
}

at::Tensor Vocoder::Run(const at::Tensor& mel, at::Tensor* stage1_waveform) const {
  const VocoderGeneratorConfig& v = config_.vocoder;
  TORCH_CHECK(mel.dim() == 4 && mel.size(1) * mel.size(3) == v.in_channels,
              "Vocoder::Run expects mel [B, C, T, M] with C·M = ", v.in_channels, ", got ",
              mel.sizes());
  const std::string p = config_.with_bwe ? "vocoder." : "";
  const at::Tensor& ref = Get(weights_, p + "conv_in.weight");
  // [B, C, T, M] → [B, C·M, T], channel-major features.
  at::Tensor x = mel.to(ref.device(), ref.scalar_type()).transpose(2, 3).flatten(1, 2);
  at::Tensor wave = Generate(v, p, std::move(x));  // [B, out, T·UpsampleFactor()]
  if (!config_.with_bwe) return wave.to(at::kFloat);
  if (stage1_waveform != nullptr) *stage1_waveform = wave;

  const int64_t batch = wave.size(0), channels = wave.size(1), samples = wave.size(2);
  // Whole STFT frames only (the reference means to pad with zeros here; its attribute name is
  // wrong, so it only runs when no padding is needed).
  const int64_t rem = samples % config_.hop_length;
  if (rem != 0) wave = at::constant_pad_nd(wave, {0, config_.hop_length - rem}, 0);
  const at::Tensor log_mel = LogMel(wave.flatten(0, 1));  // [B·C, mels, frames]
  const at::Tensor features = log_mel.reshape({batch, channels * log_mel.size(1), log_mel.size(2)});
  const at::Tensor residual = Generate(config_.bwe, kBwePrefix, features);
  const at::Tensor skip = resampler_(wave);
  TORCH_CHECK(residual.sizes() == skip.sizes(), "vocoder: BWE residual ", residual.sizes(),
              " and resampled waveform ", skip.sizes(),
              " differ (filter_length/window_length/hop_length in config.json)");
  const int64_t out_samples = samples * config_.output_sampling_rate / config_.input_sampling_rate;
  return at::clamp(residual + skip, -1, 1).narrow(-1, 0, out_samples);
}

}  // namespace diffmesh::models::ltx2
