#include "models/ltx2/vocoder.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/safetensors/safetensors.h"
#include "models/core/config_json.h"
#include "models/core/fixtures.h"
#include "models/core/testing/fixture_tensor.h"
#include "models/core/ops.h"
#include "models/ltx2/audio_vae.h"
#include "models/ltx2/vocoder_filters.h"

namespace diffmesh::models::ltx2 {
namespace {

// v20 ships an LTX2Vocoder, v23 an LTX2VocoderWithBWE; the tests read which from config.json.
class VocoderFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Dir() const { return FixturePath("ltx2-ref-a/" + GetParam()); }

  at::Tensor Tensor(const std::string& file, const std::string& name) const {
    return ReadFixtureTensor(Dir() + "/" + file, name);
  }

  bool Has(const std::string& file, const std::string& name) const {
    return FixtureHasTensor(Dir() + "/" + file, name);
  }

  nlohmann::json Json() const {
    auto json = ReadJsonFile(Dir() + "/vocoder/config.json");
    EXPECT_TRUE(json.ok()) << json.status();
    return json.ok() ? *json : nlohmann::json::object();
  }
};

TEST_P(VocoderFixtureTest, ConfigMatchesJson) {
  const nlohmann::json json = Json();
  auto config = VocoderConfig::FromJson(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->with_bwe, json["_class_name"] == "LTX2VocoderWithBWE");
  EXPECT_EQ(config->output_sampling_rate, json["output_sampling_rate"].get<int64_t>());
  EXPECT_EQ(config->vocoder.upsample_factors, json["upsample_factors"].get<std::vector<int64_t>>());
  if (config->with_bwe) {
    EXPECT_EQ(config->hop_length, json["hop_length"].get<int64_t>());
    EXPECT_EQ(config->bwe.hidden_channels, json["bwe_hidden_channels"].get<int64_t>());
    EXPECT_TRUE(config->bwe.final_act_fn.empty());  // null in the file
  }
}

TEST_P(VocoderFixtureTest, ParamsEqualCheckpoint) {
  auto config = VocoderConfig::FromFile(Dir() + "/vocoder/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(Dir() + "/vocoder");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, std::vector<int64_t>> expected, actual;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    if (name != "mel_stft.stft_fn.inverse_basis") expected[name] = view->shape;
  }
  for (const ParamSpec& s : Vocoder::Params(*config)) {
    EXPECT_TRUE(actual.emplace(s.name, s.shape).second) << "duplicate " << s.name;
  }
  EXPECT_EQ(actual, expected);
}

TEST_P(VocoderFixtureTest, RunMatchesReference) {
  auto vocoder = Vocoder::Load(Dir() + "/vocoder");
  ASSERT_TRUE(vocoder.ok()) << vocoder.status();
  const VocoderConfig& c = (*vocoder)->config();
  const std::string io = "vocoder_io.safetensors";
  const at::Tensor mel = Tensor(io, "in.mel");
  const at::Tensor expected = Tensor(io, "out.waveform");
  at::Tensor stage1;
  const at::Tensor wave = (*vocoder)->Run(mel, &stage1);
  ASSERT_EQ(wave.sizes(), expected.sizes());
  EXPECT_EQ(wave.scalar_type(), at::kFloat);
  // The contract: [B, out, T·upsampling (·resample ratio)].
  const int64_t samples = mel.size(2) * c.vocoder.UpsampleFactor();
  EXPECT_EQ(wave.size(2), c.with_bwe ? samples * c.ResampleRatio() : samples);
  EXPECT_EQ((*vocoder)->sample_rate(), Json()["output_sampling_rate"].get<int64_t>());
  const double err = RelativeError(wave, expected);
  std::cout << GetParam() << " vocoder waveform relative error " << err << "\n";
  EXPECT_LE(err, 1e-4);

  if (c.with_bwe) {
    const at::Tensor expected_stage1 = Tensor(io, "dbg.stage1_waveform");
    ASSERT_TRUE(stage1.defined());
    ASSERT_EQ(stage1.sizes(), expected_stage1.sizes());
    const double err1 = RelativeError(stage1, expected_stage1);
    std::cout << GetParam() << " vocoder stage-1 waveform relative error " << err1 << "\n";
    EXPECT_LE(err1, 1e-4);
  } else {
    EXPECT_FALSE(stage1.defined());
  }
}

// The BWE resampler's filter is not in the checkpoint: the vocoder builds it from the config, and
// the fixture keeps the reference's copy.
TEST_P(VocoderFixtureTest, ConstructedResamplerFilterMatchesReference) {
  auto vocoder = Vocoder::Load(Dir() + "/vocoder");
  ASSERT_TRUE(vocoder.ok()) << vocoder.status();
  const std::string name = "nonpersistent_buffer.resampler.filter";
  if (!(*vocoder)->config().with_bwe) {
    EXPECT_FALSE((*vocoder)->resampler().filter.defined());
    EXPECT_FALSE(Has("vocoder_io.safetensors", name));
    return;
  }
  EXPECT_FALSE(Has("vocoder/diffusion_pytorch_model.safetensors", "resampler.filter"));
  const at::Tensor expected = Tensor("vocoder_io.safetensors", name);
  const at::Tensor& filter = (*vocoder)->resampler().filter;
  ASSERT_EQ(filter.sizes(), expected.sizes());
  const double err = RelativeError(filter, expected);
  std::cout << GetParam() << " resampler filter relative error " << err << "\n";
  EXPECT_LE(err, 1e-6);
}

// The anti-aliasing filters are persistent (loaded), and equal to what the constructor builds.
TEST_P(VocoderFixtureTest, CheckpointKaiserFiltersMatchConstruction) {
  auto config = VocoderConfig::FromFile(Dir() + "/vocoder/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(Dir() + "/vocoder");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  size_t filters = 0;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    if (!absl::EndsWith(name, "sample.filter")) continue;
    const VocoderGeneratorConfig& g =
        absl::StartsWith(name, "bwe_generator.") ? config->bwe : config->vocoder;
    EXPECT_LE(
        RelativeError(AntiAliasFilter(g.antialias_ratio, g.antialias_kernel_size), ToTensor(*view)),
        1e-6)
        << name;
    ++filters;
  }
  size_t declared = 0;
  for (const ParamSpec& s : Vocoder::Params(*config)) {
    declared += absl::EndsWith(s.name, "sample.filter");
  }
  EXPECT_EQ(filters, declared);
  EXPECT_EQ(filters > 0, config->vocoder.antialias || config->vocoder.act_fn != "leaky_relu");
}

// The audio end of the pipeline: last step's packed tokens → audio VAE → vocoder.
TEST_P(VocoderFixtureTest, PipelineAudioTailMatches) {
  auto vae = AudioVaeDecoder::Load(Dir() + "/audio_vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  auto vocoder = Vocoder::Load(Dir() + "/vocoder");
  ASSERT_TRUE(vocoder.ok()) << vocoder.status();
  const std::string file = "pipeline_io.safetensors";
  int64_t last = 0;
  while (Has(file, "step" + std::to_string(last + 1) + ".audio.prev_sample")) ++last;
  const at::Tensor tokens = Tensor(file, "step" + std::to_string(last) + ".audio.prev_sample");
  const at::Tensor expected = Tensor(file, "out.audio");
  const at::Tensor audio = (*vocoder)->Run((*vae)->DecodePacked(tokens));
  ASSERT_EQ(audio.sizes(), expected.sizes());
  const double err = RelativeError(audio, expected);
  std::cout << GetParam() << " pipeline audio relative error " << err << "\n";
  EXPECT_LE(err, 1e-4);
}

// Serving in bf16: LTX2Vocoder follows the requested dtype, the BWE vocoder stays float32 and
// gives the float32 result.
TEST_P(VocoderFixtureTest, Bf16LoadKeepsBweInFloat32) {
  auto f32 = Vocoder::Load(Dir() + "/vocoder");
  auto bf16 = Vocoder::Load(Dir() + "/vocoder", at::kBFloat16);
  ASSERT_TRUE(f32.ok() && bf16.ok());
  const at::Tensor mel = Tensor("vocoder_io.safetensors", "in.mel");
  const bool bwe = (*bf16)->config().with_bwe;
  const std::string conv_in = bwe ? "vocoder.conv_in.weight" : "conv_in.weight";
  EXPECT_EQ(Get((*bf16)->weights(), conv_in).scalar_type(), bwe ? at::kFloat : at::kBFloat16);
  if (!bwe) return;  // LibTorch 1.13's CPU bf16 transposed conv (mkldnn) mis-reads its weight
  // Weights handed over in bf16 are kept in float32 too.
  WeightMap weights = (*f32)->weights();
  for (auto& [name, t] : weights) t = t.to(at::kBFloat16);
  auto created = Vocoder::Create((*f32)->config(), std::move(weights));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(Get((*created)->weights(), conv_in).scalar_type(), at::kFloat);
  const at::Tensor wave = (*bf16)->Run(mel.to(at::kBFloat16));
  EXPECT_EQ(wave.scalar_type(), at::kFloat);
  // The only difference is the bf16 rounding of the input mel.
  EXPECT_TRUE(at::equal(wave, (*f32)->Run(mel.to(at::kBFloat16).to(at::kFloat))));
}

INSTANTIATE_TEST_SUITE_P(Variants, VocoderFixtureTest, ::testing::Values("v20", "v23"));

// A BWE config whose stage-1 length is not a whole number of STFT hops: the waveform is padded
// to whole frames, then cropped back to samples·ratio.
TEST(VocoderSeededTest, BweWithPartialHop) {
  auto json = ReadJsonFile(FixturePath("ltx2-ref-a/v23/vocoder/config.json"));
  ASSERT_TRUE(json.ok()) << json.status();
  (*json)["hop_length"] = 3;
  (*json)["bwe_upsample_factors"] = {3, 3};       // = hop · ratio (48 kHz / 16 kHz)
  (*json)["bwe_upsample_kernel_sizes"] = {5, 5};  // kernel − factor even: exact lengths
  auto config = VocoderConfig::FromJson(*json);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->ResampleRatio(), 3);
  auto vocoder = Vocoder::CreateSeeded(*config, 4);
  ASSERT_TRUE(vocoder.ok()) << vocoder.status();
  const int64_t mels = config->vocoder.in_channels / 2;
  auto gen = at::detail::createCPUGenerator(6);
  const at::Tensor mel = at::normal(0.0, 1.0, {2, 2, 5, mels}, gen, at::TensorOptions());
  at::Tensor stage1;
  const at::Tensor wave = (*vocoder)->Run(mel, &stage1);
  const int64_t samples = 5 * config->vocoder.UpsampleFactor();
  ASSERT_NE(samples % config->hop_length, 0);
  EXPECT_EQ(stage1.sizes(), (std::vector<int64_t>{2, 2, samples}));
  EXPECT_EQ(wave.sizes(), (std::vector<int64_t>{2, 2, 3 * samples}));
  EXPECT_TRUE(wave.isfinite().all().item<bool>());
  EXPECT_LE(wave.abs().max().item<float>(), 1.0f);
  EXPECT_GT(wave.std().item<float>(), 0.0f);
  // Batch rows are independent.
  EXPECT_LE(RelativeError(wave[1].unsqueeze(0), (*vocoder)->Run(mel[1].unsqueeze(0))), 1e-5);
}

// Plain snake activations (no beta, no anti-aliasing) and the clamp output.
TEST(VocoderSeededTest, SnakeWithoutAntialias) {
  VocoderConfig c;
  c.vocoder.in_channels = 8;
  c.vocoder.hidden_channels = 16;
  c.vocoder.upsample_factors = {3, 2};
  c.vocoder.upsample_kernel_sizes = {5, 4};
  c.vocoder.resnet_kernel_sizes = {3, 4};  // an even kernel: asymmetric "same" padding
  c.vocoder.resnet_dilations = {{1, 2}, {1}};
  c.vocoder.act_fn = "snake";
  c.vocoder.final_act_fn = "clamp";
  c.output_sampling_rate = 8000;
  auto vocoder = Vocoder::CreateSeeded(c, 2);
  ASSERT_TRUE(vocoder.ok()) << vocoder.status();
  size_t betas = 0;
  for (const auto& [name, t] : (*vocoder)->weights()) betas += absl::EndsWith(name, ".beta");
  EXPECT_EQ(betas, 1u) << "only act_out has a beta";
  auto gen = at::detail::createCPUGenerator(1);
  const at::Tensor wave =
      (*vocoder)->Run(at::normal(0.0, 1.0, {1, 2, 7, 4}, gen, at::TensorOptions()));
  EXPECT_EQ(wave.sizes(), (std::vector<int64_t>{1, 2, 42}));
  EXPECT_LE(wave.abs().max().item<float>(), 1.0f);
  EXPECT_EQ((*vocoder)->sample_rate(), 8000);
}

TEST(VocoderConfigTest, RejectsWhatTheReferenceCannotRun) {
  auto parse = [](const char* text) {
    return VocoderConfig::FromJson(nlohmann::json::parse(text)).status().code();
  };
  EXPECT_EQ(parse(R"({"_class_name": "LTX2Vocoder"})"), absl::StatusCode::kOk);
  EXPECT_EQ(parse(R"({"_class_name": "HifiGan"})"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse(R"({"_class_name": "LTX2Vocoder", "antialias": true})"),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(parse(R"({"_class_name": "LTX2Vocoder", "upsample_factors": [2, 2]})"),
            absl::StatusCode::kInvalidArgument);
  // Residual and skip path lengths would differ.
  EXPECT_EQ(parse(R"({"_class_name": "LTX2VocoderWithBWE", "hop_length": 160})"),
            absl::StatusCode::kInvalidArgument);
  auto bwe =
      VocoderConfig::FromJson(nlohmann::json::parse(R"({"_class_name": "LTX2VocoderWithBWE"})"));
  ASSERT_TRUE(bwe.ok()) << bwe.status();
  EXPECT_EQ(bwe->output_sampling_rate, 48000);
  EXPECT_EQ(bwe->vocoder.UpsampleFactor(), 160);
  EXPECT_EQ(bwe->bwe.UpsampleFactor(), bwe->hop_length * bwe->ResampleRatio());
}

TEST(VocoderFiltersTest, LowPassProperties) {
  const at::Tensor kaiser = AntiAliasFilter(2, 12).flatten();
  EXPECT_NEAR(kaiser.sum().item<float>(), 1.0f, 1e-6);
  EXPECT_TRUE(at::allclose(kaiser, kaiser.flip({0})));  // linear phase

  // Interpolating a constant gives the constant, edges included (replicate padding).
  const SincUpsampler hann = SincUpsampler::Hann(3);
  EXPECT_EQ(hann.filter.size(-1), 43);
  const at::Tensor ones = at::ones({1, 2, 40});
  const at::Tensor up = hann(ones);
  EXPECT_EQ(up.sizes(), (std::vector<int64_t>{1, 2, 120}));
  const float ripple = (up - 1).abs().max().item<float>();
  std::cout << "hann resampler DC ripple " << ripple << "\n";
  EXPECT_LE(ripple, 2e-3);  // 6.8e-4 measured (6 zero crossings, rolloff 0.99)
  const at::Tensor down = SincDownsample(ones, AntiAliasFilter(2, 12), 2);
  EXPECT_EQ(down.sizes(), (std::vector<int64_t>{1, 2, 20}));
  EXPECT_LE((down - 1).abs().max().item<float>(), 1e-5);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
