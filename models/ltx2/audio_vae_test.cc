#include "models/ltx2/audio_vae.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "models/core/fixtures.h"
#include "models/core/testing/fixture_tensor.h"
#include "models/core/ops.h"

namespace diffmesh::models::ltx2 {
namespace {

// Each fixture variant (LTX-2.0 and LTX-2.3 style) ships its own audio VAE.
class AudioVaeFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Dir() const { return FixturePath("ltx2-ref-a/" + GetParam()); }

  at::Tensor Tensor(const std::string& file, const std::string& name) const {
    return ReadFixtureTensor(Dir() + "/" + file, name);
  }

  bool Has(const std::string& file, const std::string& name) const {
    return FixtureHasTensor(Dir() + "/" + file, name);
  }
};

TEST_P(AudioVaeFixtureTest, ParamsEqualDecoderCheckpoint) {
  auto config = AudioVaeConfig::FromFile(Dir() + "/audio_vae/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(Dir() + "/audio_vae");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, std::vector<int64_t>> expected, actual;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    if (name.rfind("encoder.", 0) != 0) expected[name] = view->shape;
  }
  for (const ParamSpec& s : AudioVaeDecoder::Params(*config)) {
    EXPECT_TRUE(actual.emplace(s.name, s.shape).second) << "duplicate " << s.name;
  }
  EXPECT_EQ(actual, expected);
}

TEST_P(AudioVaeFixtureTest, DecodeMatchesReference) {
  auto vae = AudioVaeDecoder::Load(Dir() + "/audio_vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  const at::Tensor z = Tensor("audio_vae_decode_io.safetensors", "in.z");
  const at::Tensor expected = Tensor("audio_vae_decode_io.safetensors", "out.mel");
  const at::Tensor mel = (*vae)->Decode(z);
  ASSERT_EQ(mel.sizes(), expected.sizes());
  // The contract: [B, output_channels, 4L−3, mel_bins].
  EXPECT_EQ(mel.size(1), (*vae)->config().output_channels);
  EXPECT_EQ(mel.size(2), 4 * z.size(2) - 3);
  const double err = RelativeError(mel, expected);
  std::cout << GetParam() << " audio vae decode relative error " << err << "\n";
  EXPECT_LE(err, 1e-4);
}

// Changing latent frame k leaves every mel frame that may only see earlier latents unchanged, and
// does change later ones.
TEST_P(AudioVaeFixtureTest, DecodeIsCausalAlongTime) {
  auto vae = AudioVaeDecoder::Load(Dir() + "/audio_vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  ASSERT_EQ((*vae)->config().causality_axis, "height");
  const at::Tensor z = Tensor("audio_vae_decode_io.safetensors", "in.z");
  const int64_t frames = z.size(2);
  ASSERT_GE(frames, 2);
  const int64_t s = int64_t{1} << ((*vae)->config().ch_mult.size() - 1);
  const int64_t k = frames / 2;
  at::Tensor changed = z.clone();
  auto gen = at::detail::createCPUGenerator(11);
  changed.select(2, k).copy_(
      at::normal(0.0, 1.0, changed.select(2, k).sizes(), gen, at::TensorOptions()));
  const at::Tensor a = (*vae)->Decode(z), b = (*vae)->Decode(changed);
  // Frame t sees latent frames ≤ ⌊(t + s − 1)/s⌋, so frames t < k·s − s + 1 do not see frame k.
  const int64_t unaffected = k * s - s + 1;
  ASSERT_GT(unaffected, 0);
  EXPECT_TRUE(at::equal(a.narrow(2, 0, unaffected), b.narrow(2, 0, unaffected)));
  EXPECT_FALSE(at::equal(a.narrow(2, unaffected, 1), b.narrow(2, unaffected, 1)));
}

// The pipeline's tail: the last step's packed, normalised tokens → denormalise → unpack →
// decode; and its head: given 4-D latents are packed, then normalised.
TEST_P(AudioVaeFixtureTest, PackedTokensMatchPipeline) {
  auto vae = AudioVaeDecoder::Load(Dir() + "/audio_vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  const std::string file = "pipeline_io.safetensors";
  int64_t last = 0;
  while (Has(file, "step" + std::to_string(last + 1) + ".audio.prev_sample")) ++last;
  const at::Tensor tokens = Tensor(file, "step" + std::to_string(last) + ".audio.prev_sample");
  const at::Tensor final_latents = Tensor(file, "out.final_audio_latents");
  ASSERT_EQ(tokens.dim(), 3);
  ASSERT_EQ(final_latents.dim(), 4);

  const at::Tensor unpacked =
      UnpackAudioLatents((*vae)->DenormalizePacked(tokens), final_latents.size(3));
  ASSERT_EQ(unpacked.sizes(), final_latents.sizes());
  const double latent_err = RelativeError(unpacked, final_latents);
  EXPECT_LE(latent_err, 1e-6);

  const at::Tensor expected = Tensor(file, "audio_vae_decode.out");
  const at::Tensor mel = (*vae)->DecodePacked(tokens);
  ASSERT_EQ(mel.sizes(), expected.sizes());
  const double err = RelativeError(mel, expected);
  std::cout << GetParam() << " pipeline denormalise+unpack error " << latent_err
            << ", decode error " << err << "\n";
  EXPECT_LE(err, 1e-4);

  // noise_scale 0: the first step's sample is the packed, normalised input latents.
  const at::Tensor given = Tensor(file, "in.audio_latents");
  const at::Tensor first = Tensor(file, "step0.audio.sample");
  EXPECT_LE(RelativeError((*vae)->NormalizePacked(PackAudioLatents(given)), first), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Variants, AudioVaeFixtureTest, ::testing::Values("v20", "v23"));

TEST(AudioVaePackingTest, LayoutAndRoundTrip) {
  auto gen = at::detail::createCPUGenerator(3);
  const at::Tensor latents = at::normal(0.0, 1.0, {2, 3, 5, 4}, gen, at::TensorOptions());
  const at::Tensor tokens = PackAudioLatents(latents);
  ASSERT_EQ(tokens.sizes(), (std::vector<int64_t>{2, 5, 12}));
  // Feature c·M' + m of token l is latents[b, c, l, m].
  EXPECT_EQ(tokens[1][4][2 * 4 + 3].item<float>(), latents[1][2][4][3].item<float>());
  EXPECT_EQ(tokens[0][1][0 * 4 + 2].item<float>(), latents[0][0][1][2].item<float>());
  EXPECT_TRUE(at::equal(UnpackAudioLatents(tokens, 4), latents));
  EXPECT_THROW(UnpackAudioLatents(tokens, 5), c10::Error);
}

TEST(AudioVaeConfigTest, ParsesAndValidates) {
  auto c = AudioVaeConfig::FromJson(nlohmann::json::parse(
      R"({"base_channels": 16, "ch_mult": [1, 2, 4], "mel_bins": null, "latent_channels": 4})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ch_mult, (std::vector<int64_t>{1, 2, 4}));
  EXPECT_FALSE(c->mel_bins.has_value());
  EXPECT_EQ(c->causality_axis, "height");
  EXPECT_DOUBLE_EQ(c->LatentsPerSecond(), 25.0);
  // The reference refuses group norm in causal resnets and unknown axes.
  EXPECT_EQ(
      AudioVaeConfig::FromJson(nlohmann::json::parse(R"({"norm_type": "group"})")).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AudioVaeConfig::FromJson(nlohmann::json::parse(R"({"causality_axis": "time"})"))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AudioVaeConfig::FromJson(nlohmann::json::parse(R"({"ch_mult": "x"})")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The released shape (three levels, 4× up) with the paths the fixtures do not take: mid and
// per-stage attention, and (non-causal) group norm.
TEST(AudioVaeSeededTest, ThreeLevelsWithAttentionAndGroupNorm) {
  AudioVaeConfig c;
  c.base_channels = 32;
  c.ch_mult = {1, 2, 2};
  c.num_res_blocks = 1;
  c.latent_channels = 8;  // C·M' = 8·4 = base_channels, the statistics' length
  c.mel_bins = 16;
  c.resolution = 16;
  c.attn_resolutions = {8};  // the middle stage
  c.mid_block_add_attention = true;
  for (const char* norm : {"pixel", "group"}) {
    c.norm_type = norm;
    c.causality_axis = c.norm_type == "group" ? "none" : "height";
    auto vae = AudioVaeDecoder::CreateSeeded(c, 5);
    ASSERT_TRUE(vae.ok()) << vae.status();
    size_t attn = 0;
    for (const ParamSpec& s : AudioVaeDecoder::Params(c)) {
      attn += s.name.find(".attn.") != std::string::npos &&
              s.name.find(".q.weight") != std::string::npos;
    }
    EXPECT_EQ(attn, 2u) << "one per resnet of decoder.up.1";
    auto gen = at::detail::createCPUGenerator(8);
    const at::Tensor tokens = at::normal(0.0, 1.0, {2, 6, 8 * 4}, gen, at::TensorOptions());
    const at::Tensor mel = (*vae)->DecodePacked(tokens);
    EXPECT_EQ(mel.sizes(), (std::vector<int64_t>{2, 2, 21, 16})) << norm;
    EXPECT_TRUE(mel.isfinite().all().item<bool>());
    // A 4× decoder fills every causal frame: nothing is zero padding.
    EXPECT_GT(mel.select(2, 20).abs().sum().item<float>(), 0.0f);
    // Batch rows decode independently (to float round-off of the batched convolutions).
    EXPECT_LE(RelativeError(mel[1].unsqueeze(0), (*vae)->DecodePacked(tokens[1].unsqueeze(0))),
              1e-5);
  }
}

TEST(AudioVaeSeededTest, CreateRejectsWrongWeights) {
  AudioVaeConfig c;
  c.base_channels = 8;
  c.ch_mult = {1, 2};
  c.latent_channels = 2;
  c.mel_bins = 16;
  WeightMap w = InitSeeded(AudioVaeDecoder::Params(c), 1);
  w.erase("latents_std");
  EXPECT_EQ(AudioVaeDecoder::Create(c, w).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
