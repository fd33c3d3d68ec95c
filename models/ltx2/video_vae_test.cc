#include "models/ltx2/video_vae.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "models/core/config_json.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr double kTolerance = 1e-4;

// This folder's testdata/ (reference outputs made by testdata/make_vae_refs.py).
std::string TestdataPath(const std::string& relative) {
  const char* src = std::getenv("DIFFMESH_SOURCE_DIR");
  std::string dir = src != nullptr ? std::string(src) + "/models/ltx2" : std::string(__FILE__);
  if (src == nullptr) dir = dir.substr(0, dir.rfind('/'));
  return dir + "/testdata/" + relative;
}

struct IoFile {
  std::unique_ptr<Checkpoint> ckpt;
  at::Tensor Get(const std::string& name) const {
    const TensorView* v = ckpt->Find(name);
    EXPECT_NE(v, nullptr) << name;
    return v == nullptr ? at::Tensor() : ToTensor(*v);
  }
};

IoFile OpenIo(const std::string& path) {
  auto ckpt = Checkpoint::Open(path);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  return IoFile{ckpt.ok() ? std::move(*ckpt) : nullptr};
}

std::string FileMetadata(const std::string& path, const std::string& key) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  auto it = (*file)->metadata().find(key);
  EXPECT_TRUE(it != (*file)->metadata().end()) << key << " in " << path;
  return it == (*file)->metadata().end() ? "" : it->second;
}

class VideoVaeFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Dir() const { return FixturePath("ltx2-ref-a/" + GetParam()); }
};

TEST_P(VideoVaeFixtureTest, ParamsEqualCheckpointDecoder) {
  auto config = VideoVaeConfig::FromFile(Dir() + "/vae/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(Dir() + "/vae");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, std::vector<int64_t>> expected, actual;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    if (name.rfind("encoder.", 0) != 0) expected[name] = view->shape;
  }
  for (const ParamSpec& s : Ltx2VideoDecoder::Params(*config)) {
    EXPECT_TRUE(actual.emplace(s.name, s.shape).second) << "duplicate " << s.name;
  }
  EXPECT_EQ(actual, expected);
}

TEST_P(VideoVaeFixtureTest, DecodeMatchesReference) {
  auto vae = Ltx2VideoDecoder::Load(Dir() + "/vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  IoFile io = OpenIo(Dir() + "/vae_decode_io.safetensors");
  at::Tensor z = io.Get("in.z");
  at::Tensor expected = io.Get("out.sample");
  const VideoVaeConfig& c = (*vae)->config();
  // [B, 3, (F-1)·r_t + 1, H·r_s, W·r_s]
  EXPECT_EQ(expected.size(2), (z.size(2) - 1) * c.temporal_compression_ratio + 1);
  EXPECT_EQ(expected.size(3), z.size(3) * c.spatial_compression_ratio);
  at::Tensor video = (*vae)->Decode(z);
  ASSERT_EQ(video.sizes(), expected.sizes());
  const double err = RelativeError(video, expected);
  std::cout << GetParam() << " video vae decode relative error " << err << "\n";
  EXPECT_LE(err, kTolerance);

  // The serving dtype: bf16 weights and activations stay near the fp32 reference.
  auto bf16 = Ltx2VideoDecoder::Load(Dir() + "/vae", at::kBFloat16);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  at::Tensor low = (*bf16)->Decode(z);
  EXPECT_EQ(low.scalar_type(), at::kBFloat16);
  const double low_err = RelativeError(low, expected);
  std::cout << GetParam() << " video vae decode relative error in bf16 " << low_err << "\n";
  EXPECT_LE(low_err, 5e-2);
}

// The pipeline's final step: its recorded final latents are denormalised with the VAE buffers,
// then decoded.
TEST_P(VideoVaeFixtureTest, DenormalizeAndDecodeMatchPipeline) {
  auto vae = Ltx2VideoDecoder::Load(Dir() + "/vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  IoFile io = OpenIo(Dir() + "/pipeline_io.safetensors");
  at::Tensor z = io.Get("vae_decode.in.z");
  at::Tensor expected = io.Get("vae_decode.out");
  at::Tensor video = (*vae)->Decode(z);
  const double err = RelativeError(video, expected);
  std::cout << GetParam() << " pipeline vae decode relative error " << err << "\n";
  EXPECT_LE(err, kTolerance);
  // The pipeline's frames [B, F, 3, H, W] in [0, 1] (the fixture allows 1e-3 end to end).
  at::Tensor frames = VideoToUnitFrames(video);
  at::Tensor expected_frames = io.Get("out.video");
  ASSERT_EQ(frames.sizes(), expected_frames.sizes());
  const double frames_err = RelativeError(frames, expected_frames);
  std::cout << GetParam() << " pipeline out.video relative error " << frames_err << "\n";
  EXPECT_LE(frames_err, kTolerance);
  at::Tensor bytes = VideoToUint8Frames(video);
  EXPECT_EQ(bytes.sizes(), (std::vector<int64_t>{frames.size(0), frames.size(1), frames.size(3),
                                                 frames.size(4), frames.size(2)}));
  EXPECT_LE((bytes.to(at::kFloat) - expected_frames.permute({0, 1, 3, 4, 2}) * 255)
                .abs()
                .max()
                .item<float>(),
            0.5f + 1e-3f);
  // Normalise ∘ denormalise is the identity and uses the scaling factor.
  at::Tensor x = at::randn(z.sizes());
  EXPECT_LE(RelativeError((*vae)->NormalizeLatents((*vae)->DenormalizeLatents(x)), x), 1e-6);
  at::Tensor d = (*vae)->DenormalizeLatents(x);
  const double s = (*vae)->config().scaling_factor;
  EXPECT_LE(
      RelativeError(d.select(1, 0), x.select(1, 0) * (*vae)->latents_std()[0].item<double>() / s +
                                        (*vae)->latents_mean()[0].item<double>()),
      1e-6);
}

// Tiled decoding against the reference's own tiled decodes of a latent longer than one
// temporal tile and larger than one spatial tile (testdata/vae_tiling_*_io.safetensors).
TEST_P(VideoVaeFixtureTest, TiledDecodeMatchesReference) {
  auto vae = Ltx2VideoDecoder::Load(Dir() + "/vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  const std::string path = TestdataPath("vae_tiling_" + GetParam() + "_io.safetensors");
  IoFile io = OpenIo(path);
  const auto spatial = nlohmann::json::parse(FileMetadata(path, "spatial"));
  const auto temporal = nlohmann::json::parse(FileMetadata(path, "temporal"));
  VideoVaeTiling tiling;
  tiling.tile_sample_min_height = spatial.at("tile_sample_min_height");
  tiling.tile_sample_min_width = spatial.at("tile_sample_min_width");
  tiling.tile_sample_stride_height = spatial.at("tile_sample_stride_height");
  tiling.tile_sample_stride_width = spatial.at("tile_sample_stride_width");
  tiling.tile_sample_min_num_frames = temporal.at("tile_sample_min_num_frames");
  tiling.tile_sample_stride_num_frames = temporal.at("tile_sample_stride_num_frames");
  at::Tensor z = io.Get("in.z");
  const VideoVaeConfig& c = (*vae)->config();
  ASSERT_GT(z.size(2), tiling.tile_sample_min_num_frames / c.temporal_compression_ratio);
  ASSERT_GT(z.size(3), tiling.tile_sample_min_height / c.spatial_compression_ratio);

  at::Tensor untiled = (*vae)->Decode(z);
  const auto reference_gap = nlohmann::json::parse(FileMetadata(path, "rel_vs_untiled"));
  for (const auto& [name, temporal_on, spatial_on] :
       std::vector<std::tuple<std::string, bool, bool>>{{"out.temporal", true, false},
                                                        {"out.spatial", false, true},
                                                        {"out.temporal_spatial", true, true}}) {
    tiling.temporal = temporal_on;
    tiling.spatial = spatial_on;
    (*vae)->set_tiling(tiling);
    at::Tensor expected = io.Get(name);
    at::Tensor video = (*vae)->Decode(z);
    ASSERT_EQ(video.sizes(), expected.sizes()) << name;
    const double err = RelativeError(video, expected);
    const double gap = RelativeError(video, untiled);
    std::cout << GetParam() << " " << name << ": relative error vs reference tiled " << err
              << "; tiled vs untiled " << gap
              << " (reference's own: " << reference_gap.at(name).get<double>() << ")\n";
    EXPECT_LE(err, kTolerance) << name;
    EXPECT_NEAR(gap, reference_gap.at(name).get<double>(), 1e-3) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, VideoVaeFixtureTest, ::testing::Values("v20", "v23"));

TEST(VideoVaeTest, TimestepConditionedDecodeMatchesReference) {
  auto vae = Ltx2VideoDecoder::Load(TestdataPath("vae_tcond"));
  ASSERT_TRUE(vae.ok()) << vae.status();
  ASSERT_TRUE((*vae)->config().timestep_conditioning);
  IoFile io = OpenIo(TestdataPath("vae_tcond_io.safetensors"));
  at::Tensor z = io.Get("in.z");
  at::Tensor temb = io.Get("in.temb");
  for (const auto& [name, causal] : std::vector<std::pair<std::string, bool>>{
           {"out.sample", false}, {"out.sample_causal", true}}) {
    at::Tensor expected = io.Get(name);
    at::Tensor video = (*vae)->Decode(z, temb, causal);
    ASSERT_EQ(video.sizes(), expected.sizes());
    const double err = RelativeError(video, expected);
    std::cout << name << " (timestep conditioned) relative error " << err << "\n";
    EXPECT_LE(err, kTolerance) << name;
  }
  // The timestep matters, and is required.
  EXPECT_GT(RelativeError((*vae)->Decode(z, temb.flip(0)), io.Get("out.sample")), 1e-3);
  EXPECT_THROW((*vae)->Decode(z), c10::Error);
}

// A latent several temporal tiles long (the reference's 16-frame tiles), on seeded weights with
// the released 2.3 layout shrunk: the tiled decode has the untiled shape, differs from it, and
// equals it once one tile covers the clip.
TEST(VideoVaeTest, TemporalTilingShapesAndCoverage) {
  auto json = nlohmann::json::parse(R"({
      "latent_channels": 8, "decoder_block_out_channels": [8, 16, 16, 32],
      "decoder_layers_per_block": [1, 1, 1, 1, 1], "decoder_spatio_temporal_scaling": true,
      "decoder_inject_noise": false, "upsample_residual": false,
      "upsample_type": ["spatiotemporal", "spatiotemporal", "temporal", "spatial"],
      "upsample_factor": [2, 2, 1, 2], "patch_size": 2, "decoder_causal": false,
      "decoder_spatial_padding_mode": "zeros", "spatial_compression_ratio": 16,
      "temporal_compression_ratio": 8})");
  auto config = VideoVaeConfig::FromJson(json);
  ASSERT_TRUE(config.ok()) << config.status();
  auto vae = Ltx2VideoDecoder::CreateSeeded(*config, 11);
  ASSERT_TRUE(vae.ok()) << vae.status();
  auto gen = at::detail::createCPUGenerator(5);
  at::Tensor z = at::normal(0.0, 1.0, {1, 8, 9, 3, 4}, gen, at::TensorOptions());
  at::Tensor whole = (*vae)->Decode(z);
  EXPECT_EQ(whole.sizes(), (std::vector<int64_t>{1, 3, 65, 48, 64}));
  VideoVaeTiling tiling;
  tiling.temporal = true;
  (*vae)->set_tiling(tiling);
  at::Tensor tiled = (*vae)->Decode(z);
  ASSERT_EQ(tiled.sizes(), whole.sizes());
  EXPECT_TRUE(tiled.isfinite().all().item<bool>());
  EXPECT_FALSE(at::equal(tiled, whole));
  std::cout << "seeded tiled vs untiled relative error " << RelativeError(tiled, whole) << "\n";
  tiling.align_temporal_tiles = true;
  (*vae)->set_tiling(tiling);
  at::Tensor aligned = (*vae)->Decode(z);
  ASSERT_EQ(aligned.sizes(), whole.sizes());
  std::cout << "seeded aligned tiled vs untiled relative error " << RelativeError(aligned, whole)
            << "\n";
  // Frames before the first seam come from the first tile only, in both modes.
  EXPECT_TRUE(at::equal(aligned.slice(2, 0, tiling.tile_sample_stride_num_frames),
                        tiled.slice(2, 0, tiling.tile_sample_stride_num_frames)));
  // A tiling that covers the whole clip is the untiled decode.
  // A stride under one latent frame is refused rather than looping.
  tiling.tile_sample_stride_num_frames = 4;
  (*vae)->set_tiling(tiling);
  EXPECT_THROW((*vae)->Decode(z), c10::Error);
  tiling.tile_sample_stride_num_frames = 8;
  tiling.tile_sample_min_num_frames = 8 * 16;
  for (bool align : {false, true}) {
    tiling.align_temporal_tiles = align;
    (*vae)->set_tiling(tiling);
    EXPECT_TRUE(at::equal((*vae)->Decode(z), whole)) << align;
  }
}

// With every convolution's outer temporal taps zeroed the decoder has no temporal context, so
// tiling can only move frames, not change them. The reference's bookkeeping: the first tile's
// S+1 frames exact, then S frames blending frame n with n−1, then every frame one late.
// The aligned mode reproduces the untiled decode.
TEST(VideoVaeTest, TemporalTileBookkeepingWithoutTemporalContext) {
  auto config = VideoVaeConfig::FromFile(FixturePath("ltx2-ref-a/v23/vae/config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  WeightMap w = InitSeeded(Ltx2VideoDecoder::Params(*config), 21);
  for (auto& [name, t] : w) {
    if (t.dim() == 5 && t.size(2) == 3) {
      t.select(2, 0).zero_();
      t.select(2, 2).zero_();
    }
  }
  // Equal frames up to float round-off (convolutions over different lengths).
  constexpr double kSameFrames = 1e-5;
  auto vae = Ltx2VideoDecoder::Create(*config, w);
  ASSERT_TRUE(vae.ok()) << vae.status();
  VideoVaeTiling tiling;
  tiling.temporal = true;
  const int64_t rt = config->temporal_compression_ratio;
  const int64_t tile_latents = tiling.tile_sample_min_num_frames / rt;
  const int64_t s = tiling.tile_sample_stride_num_frames;
  auto gen = at::detail::createCPUGenerator(8);
  // Enough latent frames for at least four tiles.
  at::Tensor z = at::normal(0.0, 1.0, {1, config->latent_channels, tile_latents * 4 + 1, 2, 3}, gen,
                            at::TensorOptions());
  at::Tensor whole = (*vae)->Decode(z);
  (*vae)->set_tiling(tiling);
  at::Tensor tiled = (*vae)->Decode(z);
  ASSERT_EQ(tiled.sizes(), whole.sizes());
  const int64_t n = whole.size(2);
  EXPECT_LE(RelativeError(tiled.slice(2, 0, s + 1), whole.slice(2, 0, s + 1)), kSameFrames);
  for (int64_t x = 0; x < s; ++x) {
    const double wb = static_cast<double>(x) / s;
    at::Tensor expected = whole.select(2, s + 1 + x) * (1 - wb) + whole.select(2, s + x) * wb;
    EXPECT_LE(RelativeError(tiled.select(2, s + 1 + x), expected), kSameFrames) << x;
  }
  EXPECT_LE(RelativeError(tiled.slice(2, 2 * s + 1), whole.slice(2, 2 * s, n - 1)), kSameFrames);
  const double late = RelativeError(tiled.slice(2, 2 * s + 1), whole.slice(2, 2 * s + 1));
  std::cout << "reference tiling vs untiled, same frame indices after the second tile: " << late
            << "\n";
  EXPECT_GT(late, 1e-2);

  tiling.align_temporal_tiles = true;
  (*vae)->set_tiling(tiling);
  const double aligned = RelativeError((*vae)->Decode(z), whole);
  std::cout << "aligned temporal tiling vs untiled " << aligned << "\n";
  EXPECT_LE(aligned, kSameFrames);
}

TEST(VideoVaeTest, ConfigRejectsUnsupported) {
  auto noise = nlohmann::json::parse(R"({"decoder_inject_noise": true})");
  EXPECT_EQ(VideoVaeConfig::FromJson(noise).status().code(), absl::StatusCode::kUnimplemented);
  auto type =
      nlohmann::json::parse(R"({"upsample_type": ["spatiotemporal", "sideways", "spatial"]})");
  EXPECT_EQ(VideoVaeConfig::FromJson(type).status().code(), absl::StatusCode::kUnimplemented);
  auto pad = nlohmann::json::parse(R"({"decoder_spatial_padding_mode": "mirror"})");
  EXPECT_EQ(VideoVaeConfig::FromJson(pad).status().code(), absl::StatusCode::kInvalidArgument);
  auto lengths = nlohmann::json::parse(R"({"decoder_layers_per_block": [1, 1]})");
  EXPECT_EQ(VideoVaeConfig::FromJson(lengths).status().code(), absl::StatusCode::kInvalidArgument);
  // Channel counts that do not chain through the up blocks (the reference fails on it too).
  auto chain = nlohmann::json::parse(R"({"decoder_block_out_channels": [8, 8, 8, 16],
      "decoder_layers_per_block": [1, 1, 1, 1, 1], "upsample_residual": false,
      "upsample_type": ["spatiotemporal", "spatiotemporal", "temporal", "spatial"],
      "upsample_factor": [2, 2, 1, 2]})");
  EXPECT_EQ(VideoVaeConfig::FromJson(chain).status().code(), absl::StatusCode::kInvalidArgument);
  // The released defaults parse: 2.0's layout with its ratios derived from the encoder flags.
  auto defaults = VideoVaeConfig::FromJson(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->spatial_compression_ratio, 64);
  EXPECT_EQ(defaults->temporal_compression_ratio, 16);
}

// The released decoders' layouts (diffusers scripts/convert_ltx2_to_diffusers.py): they parse,
// their channels chain, and their upsamplers multiply to the configured compression ratios.
TEST(VideoVaeTest, ReleasedLayoutsChainToTheirRatios) {
  const auto v20 = nlohmann::json::parse(R"({
      "latent_channels": 128, "patch_size": 4, "decoder_block_out_channels": [256, 512, 1024],
      "decoder_layers_per_block": [5, 5, 5, 5], "decoder_spatio_temporal_scaling": [true, true, true],
      "decoder_inject_noise": [false, false, false, false], "upsample_residual": [true, true, true],
      "upsample_factor": [2, 2, 2], "decoder_causal": false,
      "decoder_spatial_padding_mode": "reflect", "spatial_compression_ratio": 32,
      "temporal_compression_ratio": 8})");
  const auto v23 = nlohmann::json::parse(R"({
      "latent_channels": 128, "patch_size": 4, "decoder_block_out_channels": [256, 512, 512, 1024],
      "decoder_layers_per_block": [4, 6, 4, 2, 2],
      "decoder_spatio_temporal_scaling": [true, true, true, true],
      "decoder_inject_noise": [false, false, false, false, false],
      "upsample_type": ["spatiotemporal", "spatiotemporal", "temporal", "spatial"],
      "upsample_residual": [false, false, false, false], "upsample_factor": [2, 2, 1, 2],
      "decoder_causal": false, "decoder_spatial_padding_mode": "zeros",
      "spatial_compression_ratio": 32, "temporal_compression_ratio": 8})");
  for (const auto& json : {v20, v23}) {
    auto config = VideoVaeConfig::FromJson(json);
    ASSERT_TRUE(config.ok()) << config.status();
    int64_t spatial = config->patch_size, temporal = config->patch_size_t, count = 0;
    for (size_t i = 0; i < config->upsample_type.size(); ++i) {
      const std::string& type = config->upsample_type[i];
      spatial *= type == "temporal" ? 1 : 2;
      temporal *= type == "spatial" ? 1 : 2;
    }
    EXPECT_EQ(spatial, config->spatial_compression_ratio);
    EXPECT_EQ(temporal, config->temporal_compression_ratio);
    for (const ParamSpec& p : Ltx2VideoDecoder::Params(*config)) {
      int64_t n = 1;
      for (int64_t d : p.shape) n *= d;
      count += n;
    }
    // Hundreds of millions of parameters: the whole decoder is declared.
    std::cout << "released decoder layout: " << count << " parameters\n";
    EXPECT_GT(count, 100'000'000);
    EXPECT_EQ(Ltx2VideoDecoder::Params(*config).back().name, "latents_std");
  }
}

TEST(VideoVaeTest, LoadRejectsWrongWeights) {
  auto config = VideoVaeConfig::FromFile(FixturePath("ltx2-ref-a/v23/vae/config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  WeightMap w = InitSeeded(Ltx2VideoDecoder::Params(*config), 1);
  w.erase("latents_std");
  EXPECT_FALSE(Ltx2VideoDecoder::Create(*config, w).ok());
}

}  // namespace
}  // namespace diffmesh::models::ltx2
