#include "models/ltx2/video_vae_encoder.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/testing/fixture_tensor.h"
#include "models/ltx2/pil_resize.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {
namespace {

// Encoder, preprocessing and normalisation references made with diffusers
// (testdata/make_vae_encoder_refs.py) from the VAE of each ltx2-ref-a variant.
const char* const kVariants[] = {"v20", "v23"};
constexpr double kTol = 1e-4;

std::string Testdata(const std::string& variant) {
  const std::string file = __FILE__;
  return file.substr(0, file.rfind('/')) + "/testdata/vae_encoder_" + variant + "_io.safetensors";
}

std::unique_ptr<Ltx2VideoEncoder> LoadEncoder(const std::string& variant) {
  auto encoder = Ltx2VideoEncoder::Load(FixturePath("ltx2-ref-a/" + variant + "/vae"));
  EXPECT_TRUE(encoder.ok()) << encoder.status();
  return encoder.ok() ? std::move(encoder).value() : nullptr;
}

TEST(Ltx2VideoEncoderTest, EncodeMatchesReference) {
  for (const std::string variant : kVariants) {
    SCOPED_TRACE(variant);
    auto encoder = LoadEncoder(variant);
    ASSERT_NE(encoder, nullptr);
    const std::string io = Testdata(variant);
    const at::Tensor video = ReadFixtureTensor(io, "in.video");
    const at::Tensor expected = ReadFixtureTensor(io, "out.parameters");
    auto params = encoder->Encode(video);
    ASSERT_TRUE(params.ok()) << params.status();
    ASSERT_EQ(params->sizes(), expected.sizes());
    const double e = RelativeError(*params, expected);
    auto mode = encoder->EncodeMode(video);
    ASSERT_TRUE(mode.ok()) << mode.status();
    const double em = RelativeError(*mode, ReadFixtureTensor(io, "out.mode"));
    std::printf("encode %s: parameters %.2e, mode %.2e\n", variant.c_str(), e, em);
    EXPECT_LE(e, kTol);
    EXPECT_LE(em, kTol);
    auto size = encoder->LatentSize(video.size(2), video.size(3), video.size(4));
    ASSERT_TRUE(size.ok()) << size.status();
    EXPECT_EQ((std::vector<int64_t>{(*size)[0], (*size)[1], (*size)[2]}),
              expected.sizes().slice(2).vec());
  }
}

// The encoder is causal: a frame's latent does not depend on later frames.
TEST(Ltx2VideoEncoderTest, CausalInTime) {
  auto encoder = LoadEncoder("v20");
  ASSERT_NE(encoder, nullptr);
  const at::Tensor video = ReadFixtureTensor(Testdata("v20"), "in.video");
  auto full = encoder->EncodeMode(video);
  auto first = encoder->EncodeMode(video.narrow(2, 0, 1));
  ASSERT_TRUE(full.ok() && first.ok());
  EXPECT_LE(RelativeError(full->narrow(2, 0, 1), *first), 1e-5);
}

TEST(Ltx2VideoEncoderTest, RejectsSizesThatDoNotDivide) {
  auto encoder = LoadEncoder("v20");
  ASSERT_NE(encoder, nullptr);
  const VideoVaeEncoderConfig& c = encoder->config();
  const int64_t r = c.SpatialFactor();
  auto bad_width = encoder->Encode(at::rand({1, c.in_channels, 1, r, r + c.patch_size}));
  EXPECT_EQ(bad_width.status().code(), absl::StatusCode::kInvalidArgument);
  if (c.TemporalFactor() > 1) {
    auto bad_frames = encoder->Encode(at::rand({1, c.in_channels, 2, r, r}));
    EXPECT_EQ(bad_frames.status().code(), absl::StatusCode::kInvalidArgument);
  }
  auto bad_channels = encoder->Encode(at::rand({1, c.in_channels + 1, 1, r, r}));
  EXPECT_EQ(bad_channels.status().code(), absl::StatusCode::kInvalidArgument);
}

// VideoProcessor.preprocess of a PIL image (Pillow's bilinear resize, then [-1, 1]) and of a
// [0, 1] float tensor (nearest resize): the uint8 path is exact to the pixel.
TEST(Ltx2VideoEncoderTest, PreprocessMatchesVideoProcessor) {
  const std::string io = Testdata("v20");
  for (const std::string key : {"a", "b"}) {
    SCOPED_TRACE(key);
    const at::Tensor expected = ReadFixtureTensor(io, "out.pixels_" + key);
    auto pixels = PreprocessConditioningImage(ReadFixtureTensor(io, "in.image_" + key + "_u8"),
                                              expected.size(2), expected.size(3));
    ASSERT_TRUE(pixels.ok()) << pixels.status();
    ASSERT_EQ(pixels->sizes(), expected.sizes());
    // One uint8 step is 2/255 after scaling; exact resampling leaves only float rounding.
    EXPECT_LE((*pixels - expected).abs().max().item<double>(), 1e-6);
  }
  const at::Tensor expected = ReadFixtureTensor(io, "out.pixels_c");
  auto pixels = PreprocessConditioningImage(ReadFixtureTensor(io, "in.image_c_f32"),
                                            expected.size(2), expected.size(3));
  ASSERT_TRUE(pixels.ok()) << pixels.status();
  EXPECT_LE(RelativeError(*pixels, expected), 1e-6);
}

TEST(Ltx2VideoEncoderTest, PreprocessRejectsBadImages) {
  EXPECT_EQ(PreprocessConditioningImage(at::zeros({8, 8, 4}, at::kByte), 8, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PreprocessConditioningImage(at::rand({8, 8}), 8, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PreprocessConditioningImage(at::zeros({3, 8, 8}, at::kInt), 8, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Same-size resampling is the identity; a constant image stays constant at any scale.
TEST(PilBilinearResizeTest, IdentityAndConstant) {
  const at::Tensor img = at::randint(0, 256, {5, 7, 3}, at::kByte);
  auto same = PilBilinearResize(img.data_ptr<uint8_t>(), 5, 7, 3, 5, 7);
  EXPECT_TRUE(at::equal(at::from_blob(same.data(), {5, 7, 3}, at::kByte), img));
  std::vector<uint8_t> flat(11 * 13, 77);
  for (const auto& [h, w] : std::vector<std::pair<int, int>>{{3, 4}, {29, 31}, {11, 40}}) {
    auto out = PilBilinearResize(flat.data(), 11, 13, 1, h, w);
    ASSERT_EQ(out.size(), static_cast<size_t>(h * w));
    for (uint8_t v : out) ASSERT_EQ(v, 77);
  }
}

// The first-frame latent of LTX2ImageToVideoPipeline.prepare_latents: encode's mode, and after
// the normalisation (no scaling factor) the reference's init latent.
TEST(Ltx2VideoEncoderTest, ConditioningLatentMatchesReference) {
  for (const std::string variant : kVariants) {
    SCOPED_TRACE(variant);
    auto encoder = LoadEncoder(variant);
    ASSERT_NE(encoder, nullptr);
    const std::string io = Testdata(variant);
    for (const std::string key : {"a", "b", "c"}) {
      SCOPED_TRACE(key);
      const at::Tensor image =
          ReadFixtureTensor(io, key == "c" ? "in.image_c_f32" : "in.image_" + key + "_u8");
      const at::Tensor pixels = ReadFixtureTensor(io, "out.pixels_" + key);
      const at::Tensor raw_ref = ReadFixtureTensor(io, "out.raw_latent_" + key);
      const at::Tensor norm_ref = ReadFixtureTensor(io, "out.image_latent_" + key);
      // Through the encoder directly (the grid of every variant).
      auto raw = encoder->EncodeMode(pixels.unsqueeze(2));
      ASSERT_TRUE(raw.ok()) << raw.status();
      const double er = RelativeError(*raw, raw_ref);
      const double en = RelativeError(encoder->NormalizeImageLatents(*raw), norm_ref);
      std::printf("image %s/%s: raw latent %.2e, normalised %.2e\n", variant.c_str(), key.c_str(),
                  er, en);
      EXPECT_LE(er, kTol);
      EXPECT_LE(en, kTol);
      // The whole path, where the encoder's grid is the pipeline's.
      const VideoVaeEncoderConfig& c = encoder->config();
      auto latent = EncodeConditioningImage(*encoder, image, pixels.size(2), pixels.size(3));
      if (c.SpatialFactor() != c.spatial_compression_ratio) {
        EXPECT_EQ(latent.status().code(), absl::StatusCode::kFailedPrecondition);
        continue;
      }
      ASSERT_TRUE(latent.ok()) << latent.status();
      EXPECT_LE(RelativeError(*latent, raw_ref), kTol);
    }
  }
}

TEST(Ltx2VideoEncoderTest, ConditioningRejectsOffGridSizes) {
  auto encoder = LoadEncoder("v20");
  ASSERT_NE(encoder, nullptr);
  const int64_t r = encoder->config().spatial_compression_ratio;
  const at::Tensor image = at::randint(0, 256, {20, 30, 3}, at::kByte);
  auto off = EncodeConditioningImage(*encoder, image, 4 * r, 4 * r + 1);
  EXPECT_EQ(off.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(off.status().message().find("nearest valid"), std::string::npos) << off.status();
}

TEST(Ltx2VideoEncoderTest, SeededParamsRoundTrip) {
  auto config = VideoVaeEncoderConfig::FromFile(FixturePath("ltx2-ref-a/v20/vae/config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto seeded = Ltx2VideoEncoder::CreateSeeded(*config, 7);
  ASSERT_TRUE(seeded.ok()) << seeded.status();
  auto loaded = LoadEncoder("v20");
  ASSERT_NE(loaded, nullptr);
  // Params() names exactly what the reference checkpoint holds under encoder.* (Load checked it),
  // and the seeded encoder runs.
  EXPECT_EQ((*seeded)->weights().size(), loaded->weights().size());
  const int64_t r = config->SpatialFactor();
  auto out = (*seeded)->EncodeMode(at::rand({1, config->in_channels, 1, 2 * r, r}) * 2 - 1);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->isfinite().all().item<bool>());
}

// With scaling_factor ≠ 1 the returned latent is such that the pipeline's normalisation,
// (x − mean)·scaling_factor/std, gives the reference's (raw − mean)/std.
TEST(Ltx2VideoEncoderTest, ConditioningLatentAccountsForScalingFactor) {
  auto config = VideoVaeEncoderConfig::FromFile(FixturePath("ltx2-ref-a/v20/vae/config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  config->scaling_factor = 1.7;
  const int64_t r = config->spatial_compression_ratio;
  WeightMap weights = InitSeeded(Ltx2VideoEncoder::Params(*config), 3);
  weights["latents_mean"] = at::randn({config->latent_channels}) * 0.3;
  weights["latents_std"] = at::rand({config->latent_channels}) + 0.5;
  auto encoder = Ltx2VideoEncoder::Create(*config, weights);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const at::Tensor image = at::randint(0, 256, {3 * r + 5, 2 * r - 3, 3}, at::kByte);
  auto latent = EncodeConditioningImage(**encoder, image, 2 * r, 3 * r);
  ASSERT_TRUE(latent.ok()) << latent.status();
  auto pixels = PreprocessConditioningImage(image, 2 * r, 3 * r);
  ASSERT_TRUE(pixels.ok());
  auto raw = (*encoder)->EncodeMode(pixels->unsqueeze(2));
  ASSERT_TRUE(raw.ok());
  const at::Tensor mean = (*encoder)->latents_mean().view({1, -1, 1, 1, 1});
  const at::Tensor std = (*encoder)->latents_std().view({1, -1, 1, 1, 1});
  const at::Tensor in_pipeline = (*latent - mean) * config->scaling_factor / std;
  EXPECT_LE(RelativeError(in_pipeline, (*encoder)->NormalizeImageLatents(*raw)), 1e-6);
  EXPECT_GT(RelativeError(*latent, *raw), 1e-2);  // not the raw latent itself
}

// The encoder fields of the released checkpoints (diffusers scripts/convert_ltx2_to_diffusers.py,
// versions 2.0 and 2.3) parse, and the encoder compresses as their ratios say.
TEST(Ltx2VideoEncoderTest, ReleaseConfigsParse) {
  for (const char* blocks : {"[256, 512, 1024, 2048]", "[256, 512, 1024, 1024]"}) {
    SCOPED_TRACE(blocks);
    const auto json = nlohmann::json::parse(std::string(R"({"in_channels": 3,
      "latent_channels": 128, "block_out_channels": )") +
                                            blocks + R"(,
      "down_block_types": ["LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D",
                           "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D"],
      "layers_per_block": [4, 6, 4, 2, 2], "spatio_temporal_scaling": [true, true, true, true],
      "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
      "patch_size": 4, "patch_size_t": 1, "resnet_norm_eps": 1e-6, "encoder_causal": true,
      "encoder_spatial_padding_mode": "zeros", "spatial_compression_ratio": 32,
      "temporal_compression_ratio": 8})");
    auto config = VideoVaeEncoderConfig::FromJson(json);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->SpatialFactor(), 32);
    EXPECT_EQ(config->TemporalFactor(), 8);
    bool found = false;
    for (const ParamSpec& p : Ltx2VideoEncoder::Params(*config)) {
      if (p.name == "encoder.conv_out.conv.weight") {
        found = true;
        EXPECT_EQ(p.shape, (std::vector<int64_t>{129, config->block_out_channels.back(), 3, 3, 3}));
      }
    }
    EXPECT_TRUE(found);
  }
  // "conv" downsampling and temporal patches are refused, naming the field.
  auto conv = VideoVaeEncoderConfig::FromJson(nlohmann::json::parse(
      R"({"block_out_channels": [8], "layers_per_block": [1, 1], "downsample_type": ["conv"],
          "spatio_temporal_scaling": true, "down_block_types": ["LTX2VideoDownBlock3D"],
          "latent_channels": 8})"));
  EXPECT_EQ(conv.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(conv.status().message().find("downsample_type"), std::string::npos) << conv.status();
}

}  // namespace
}  // namespace diffmesh::models::ltx2
