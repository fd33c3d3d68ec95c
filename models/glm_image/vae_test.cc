#include "models/glm_image/vae.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "models/core/fixtures.h"
#include "models/core/testing/fixture_tensor.h"
#include "models/core/ops.h"

namespace diffmesh::models::glm_image {
namespace {

const std::string kVaeDir = FixturePath("glm-image-ref-a/vae");

at::Tensor FixtureTensor(const std::string& file, const std::string& name) {
  return ReadFixtureTensor(FixturePath("glm-image-ref-a/" + file), name);
}

// A small config with the released model's 8× downsampling (four levels).
VaeConfig TinyConfig() {
  VaeConfig c;
  c.block_out_channels = {8, 16, 16, 32};
  c.layers_per_block = 1;
  c.latent_channels = 16;
  c.norm_num_groups = 4;
  c.latents_mean.assign(16, 0.1);
  c.latents_std.assign(16, 0.9);
  return c;
}

TEST(VaeConfigTest, ParsesFixtureConfig) {
  auto config = VaeConfig::FromFile(kVaeDir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->block_out_channels, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(config->latent_channels, 16);
  EXPECT_EQ(config->norm_num_groups, 8);
  EXPECT_EQ(config->layers_per_block, 1);
  EXPECT_EQ(config->ScaleFactor(), 2);
  EXPECT_FALSE(config->shift_factor.has_value());
  ASSERT_EQ(config->latents_mean.size(), 16u);
  ASSERT_EQ(config->latents_std.size(), 16u);
  EXPECT_DOUBLE_EQ(config->latents_mean[0], -0.8);
  EXPECT_DOUBLE_EQ(config->latents_std[15], 1.25);
  EXPECT_TRUE(config->use_quant_conv && config->use_post_quant_conv);
  EXPECT_TRUE(config->mid_block_add_attention);
}

TEST(VaeConfigTest, RejectsUnsupportedBlockType) {
  auto json = nlohmann::json::parse(R"({"block_out_channels": [32, 64],
      "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "norm_num_groups": 8})");
  EXPECT_EQ(VaeConfig::FromJson(json).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(VaeTest, ParamsEqualCheckpoint) {
  auto config = VaeConfig::FromFile(kVaeDir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(kVaeDir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, std::vector<int64_t>> expected, actual;
  for (const auto& [name, view] : (*ckpt)->tensors()) expected[name] = view->shape;
  for (const ParamSpec& s : AutoencoderKl::Params(*config)) {
    EXPECT_TRUE(actual.emplace(s.name, s.shape).second) << "duplicate " << s.name;
  }
  EXPECT_EQ(actual, expected);
  // The decoder-only list is exactly the checkpoint's decoder + post_quant_conv.
  size_t decoder = 0;
  for (const auto& [name, shape] : expected) {
    decoder += name.rfind("decoder.", 0) == 0 || name.rfind("post_quant_conv.", 0) == 0;
  }
  EXPECT_EQ(AutoencoderKl::Params(*config, VaeParts::kDecoderOnly).size(), decoder);
}

TEST(VaeTest, DecodeMatchesReference) {
  auto vae = AutoencoderKl::Load(kVaeDir);
  ASSERT_TRUE(vae.ok()) << vae.status();
  at::Tensor latents = FixtureTensor("vae_io.safetensors", "latents");
  at::Tensor expected = FixtureTensor("vae_io.safetensors", "image");
  at::Tensor image = (*vae)->Decode(latents);
  ASSERT_EQ(image.sizes(), expected.sizes());
  const double err = RelativeError(image, expected);
  std::cout << "vae decode relative error " << err << "\n";
  EXPECT_LE(err, 1e-5);

  // Decoder-only loading gives the same function.
  auto dec = AutoencoderKl::Load(kVaeDir, at::kFloat, VaeParts::kDecoderOnly);
  ASSERT_TRUE(dec.ok()) << dec.status();
  EXPECT_TRUE(at::equal((*dec)->Decode(latents), image));
}

// The end of the reference denoise loop: latents·std + mean, then decode.
TEST(VaeTest, DecodeNormalizedMatchesPipeline) {
  auto vae = AutoencoderKl::Load(kVaeDir, at::kFloat, VaeParts::kDecoderOnly);
  ASSERT_TRUE(vae.ok()) << vae.status();
  at::Tensor latents = FixtureTensor("denoise_loop_io.safetensors", "final_latents");
  at::Tensor expected = FixtureTensor("denoise_loop_io.safetensors", "image");
  at::Tensor image = (*vae)->DecodeNormalized(latents);
  const double err = RelativeError(image, expected);
  std::cout << "pipeline decode relative error " << err << "\n";
  EXPECT_LE(err, 1e-5);
}

TEST(VaeTest, NormalizeInvertsDenormalize) {
  auto vae = AutoencoderKl::Load(kVaeDir, at::kFloat, VaeParts::kDecoderOnly);
  ASSERT_TRUE(vae.ok()) << vae.status();
  at::Tensor x = at::randn({2, 16, 3, 5});
  at::Tensor d = (*vae)->DenormalizeLatents(x);
  // Channel 0: std 0.5, mean -0.8.
  EXPECT_TRUE(at::allclose(d.select(1, 0), x.select(1, 0) * 0.5 - 0.8));
  EXPECT_LE(RelativeError((*vae)->NormalizeLatents(d), x), 1e-6);
}

TEST(VaeTest, EncodeShapesAndDeterminism) {
  auto vae = AutoencoderKl::Load(kVaeDir);
  ASSERT_TRUE(vae.ok()) << vae.status();
  at::Tensor image = FixtureTensor("vae_io.safetensors", "image").clamp(-1, 1);
  auto dist = (*vae)->Encode(image);
  EXPECT_EQ(dist.mean.sizes(), (std::vector<int64_t>{1, 16, 16, 16}));
  EXPECT_EQ(dist.logvar.sizes(), (std::vector<int64_t>{1, 16, 16, 16}));
  EXPECT_TRUE(dist.mean.isfinite().all().item<bool>());
  EXPECT_LE(dist.logvar.max().item<float>(), 20.0f);
  EXPECT_GE(dist.logvar.min().item<float>(), -30.0f);
  EXPECT_TRUE(at::equal((*vae)->Encode(image).mean, dist.mean));
  // Odd sizes the latent grid cannot represent are refused.
  EXPECT_THROW((*vae)->Encode(at::zeros({1, 3, 31, 32})), c10::Error);

  auto dec = AutoencoderKl::Load(kVaeDir, at::kFloat, VaeParts::kDecoderOnly);
  ASSERT_TRUE(dec.ok());
  EXPECT_THROW((*dec)->Encode(image), c10::Error);
}

TEST(VaeTest, TinyEightTimesConfigDecodes256) {
  VaeConfig config = TinyConfig();
  ASSERT_EQ(config.ScaleFactor(), 8);
  auto vae = AutoencoderKl::CreateSeeded(config, 7);
  ASSERT_TRUE(vae.ok()) << vae.status();
  auto gen = at::detail::createCPUGenerator(123);
  at::Tensor latents = at::normal(0.0, 1.0, {1, 16, 32, 32}, gen, at::TensorOptions());
  at::Tensor image = (*vae)->Decode(latents);
  EXPECT_EQ(image.sizes(), (std::vector<int64_t>{1, 3, 256, 256}));
  EXPECT_TRUE(image.isfinite().all().item<bool>());
  EXPECT_GT(image.std().item<float>(), 0.0f);

  // Same seed, same weights, same output; another seed differs.
  auto again = AutoencoderKl::CreateSeeded(config, 7);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(at::equal((*again)->Decode(latents), image));
  auto other = AutoencoderKl::CreateSeeded(config, 8);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(at::equal((*other)->Decode(latents), image));

  // Encode goes back down 8× to the latent grid.
  auto dist = (*vae)->Encode(image.clamp(-1, 1));
  EXPECT_EQ(dist.mean.sizes(), (std::vector<int64_t>{1, 16, 32, 32}));
  EXPECT_TRUE(dist.mean.isfinite().all().item<bool>());
}

TEST(VaeTest, BatchAndAttentionChunkingDoNotChangeResults) {
  VaeConfig config = TinyConfig();
  config.block_out_channels = {8, 16};  // 2×: a 24×24 latent is 576 attention positions
  auto vae = AutoencoderKl::CreateSeeded(config, 3);
  ASSERT_TRUE(vae.ok()) << vae.status();
  auto gen = at::detail::createCPUGenerator(9);
  at::Tensor latents = at::normal(0.0, 1.0, {2, 16, 24, 24}, gen, at::TensorOptions());
  at::Tensor whole = (*vae)->Decode(latents);
  EXPECT_EQ(whole.sizes(), (std::vector<int64_t>{2, 3, 48, 48}));
  // Each image of the batch decodes on its own to the same pixels.
  EXPECT_LE(RelativeError(whole[1].unsqueeze(0), (*vae)->Decode(latents[1].unsqueeze(0))), 1e-6);
  // 576 × 100 scores → chunks of 100 queries, the last one short.
  (*vae)->set_attention_score_budget(576 * 100);
  at::Tensor chunked = (*vae)->Decode(latents);
  EXPECT_LE(RelativeError(chunked, whole), 1e-6);
  (*vae)->set_attention_score_budget(1);  // one query at a time
  EXPECT_LE(RelativeError((*vae)->Decode(latents), whole), 1e-6);
}

TEST(VaeTest, CreateRejectsWrongWeights) {
  VaeConfig config = TinyConfig();
  WeightMap w = InitSeeded(AutoencoderKl::Params(config), 1);
  w.erase("decoder.conv_out.bias");
  EXPECT_EQ(AutoencoderKl::Create(config, w).status().code(), absl::StatusCode::kNotFound);
}

TEST(VaeImageTest, Uint8Conversion) {
  // [-1, 1] → [0, 255], clamped, rounded half to even like numpy.
  at::Tensor img = at::tensor({-1.5f, -1.0f, 0.0f, 1.0f, 2.0f, 0.5f}).view({1, 1, 2, 3});
  img = img.expand({1, 3, 2, 3}).contiguous();
  at::Tensor px = ImageToUint8Hwc(img);
  EXPECT_EQ(px.sizes(), (std::vector<int64_t>{1, 2, 3, 3}));
  EXPECT_EQ(px.scalar_type(), at::kByte);
  std::vector<int> got;
  for (int64_t i = 0; i < 6; ++i) got.push_back(px[0][i / 3][i % 3][1].item<int>());
  // 0.0 → 127.5 → 128 (half to even); 0.5 → 191.25 → 191.
  EXPECT_EQ(got, (std::vector<int>{0, 0, 128, 255, 255, 191}));

  auto gen = at::detail::createCPUGenerator(5);
  at::Tensor pixels = at::randint(0, 256, {2, 4, 6, 3}, gen, at::TensorOptions().dtype(at::kByte));
  at::Tensor back = ImageToUint8Hwc(Uint8HwcToImage(pixels));
  EXPECT_TRUE(at::equal(back, pixels));
  EXPECT_EQ(Uint8HwcToImage(pixels).sizes(), (std::vector<int64_t>{2, 3, 4, 6}));
}

}  // namespace
}  // namespace diffmesh::models::glm_image
