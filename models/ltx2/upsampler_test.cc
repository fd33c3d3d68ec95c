#include "models/ltx2/upsampler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <iostream>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/ltx2/video_vae.h"

namespace diffmesh::models::ltx2 {
namespace {

// The fixture README suggests 1e-5 per tensor.
constexpr double kTolerance = 1e-5;

const std::string kSet = "ltx2-upsampler-ref-a/";

struct IoFile {
  std::unique_ptr<SafetensorsFile> file;
  at::Tensor Get(const std::string& name) const {
    auto it = file->tensors().find(name);
    EXPECT_TRUE(it != file->tensors().end()) << name;
    return it == file->tensors().end() ? at::Tensor() : ToTensor(it->second);
  }
  // `key=<number>` inside the metadata entry `entry` (the recorded pipeline call).
  double CallArgument(const std::string& entry, const std::string& key) const {
    auto it = file->metadata().find(entry);
    EXPECT_TRUE(it != file->metadata().end()) << entry;
    std::smatch m;
    const std::regex re(key + R"(=([-+0-9.eE]+))");
    EXPECT_TRUE(std::regex_search(it->second, m, re)) << key << " in " << it->second;
    return std::stod(m[1].str());
  }
};

IoFile OpenIo(const std::string& name) {
  auto file = SafetensorsFile::Open(FixturePath(kSet + name));
  EXPECT_TRUE(file.ok()) << file.status();
  return IoFile{file.ok() ? std::move(*file) : nullptr};
}

class UpsamplerFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string ModelDir() const { return FixturePath(kSet + "latent_upsampler_" + GetParam()); }
  IoFile Io() const { return OpenIo("upsampler_" + GetParam() + "_io.safetensors"); }
};

TEST_P(UpsamplerFixtureTest, ParamsEqualCheckpoint) {
  auto config = LatentUpsamplerConfig::FromFile(ModelDir() + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(ModelDir());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, std::vector<int64_t>> expected, actual;
  for (const auto& [name, view] : (*ckpt)->tensors()) expected[name] = view->shape;
  for (const ParamSpec& s : Ltx2LatentUpsampler::Params(*config)) {
    EXPECT_TRUE(actual.emplace(s.name, s.shape).second) << "duplicate " << s.name;
  }
  EXPECT_EQ(actual, expected);
}

TEST_P(UpsamplerFixtureTest, ForwardMatchesReferenceStageByStage) {
  auto model = Ltx2LatentUpsampler::Load(ModelDir());
  ASSERT_TRUE(model.ok()) << model.status();
  IoFile io = Io();
  Ltx2LatentUpsampler::Intermediates mid;
  at::Tensor out = (*model)->Forward(io.Get("latents_raw"), &mid);
  for (const auto& [name, got] : std::vector<std::pair<std::string, at::Tensor>>{
           {"forward.after_initial", mid.after_initial},
           {"forward.after_res_blocks", mid.after_res_blocks},
           {"forward.after_upsampler", mid.after_upsampler},
           {"forward.after_post_res_blocks", mid.after_post_res_blocks},
           {"forward.out", out}}) {
    at::Tensor expected = io.Get(name);
    ASSERT_EQ(got.sizes(), expected.sizes()) << name;
    const double err = RelativeError(got, expected);
    std::cout << GetParam() << " " << name << " relative error " << err << "\n";
    EXPECT_LE(err, kTolerance) << name;
  }
  // The serving dtype stays near the fp32 reference.
  auto bf16 = Ltx2LatentUpsampler::Load(ModelDir(), at::kBFloat16);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  at::Tensor low = (*bf16)->Forward(io.Get("latents_raw"));
  EXPECT_EQ(low.scalar_type(), at::kBFloat16);
  const double low_err = RelativeError(low, io.Get("forward.out"));
  std::cout << GetParam() << " forward.out relative error in bf16 " << low_err << "\n";
  EXPECT_LE(low_err, 5e-2);
}

TEST_P(UpsamplerFixtureTest, PipelineMatchesReference) {
  auto model = Ltx2LatentUpsampler::Load(ModelDir());
  ASSERT_TRUE(model.ok()) << model.status();
  auto stats = VideoLatentStatistics::Load(FixturePath(kSet + "vae"));
  ASSERT_TRUE(stats.ok()) << stats.status();
  IoFile io = Io();
  LatentUpsampleOptions options;
  options.latents_normalized = true;
  options.adain_factor = io.CallArgument("call_pipeline", "adain_factor");
  options.tone_map_compression_ratio =
      io.CallArgument("call_pipeline", "tone_map_compression_ratio");
  ASSERT_GT(options.adain_factor, 0.0);
  ASSERT_GT(options.tone_map_compression_ratio, 0.0);
  at::Tensor in = io.Get("pipeline.latents_in");

  // Stage by stage, then the whole call.
  at::Tensor denormalized = stats->Denormalize(in);
  at::Tensor upsampled = (*model)->Forward(denormalized);
  at::Tensor adain = AdainFilterLatents(upsampled, denormalized, options.adain_factor);
  at::Tensor out = UpsampleVideoLatents(**model, *stats, in, options);
  for (const auto& [name, got] :
       std::vector<std::pair<std::string, at::Tensor>>{{"pipeline.denormalized", denormalized},
                                                       {"pipeline.upsampled", upsampled},
                                                       {"pipeline.after_adain", adain},
                                                       {"pipeline.out_latent", out}}) {
    at::Tensor expected = io.Get(name);
    ASSERT_EQ(got.sizes(), expected.sizes()) << name;
    const double err = RelativeError(got, expected);
    std::cout << GetParam() << " " << name << " relative error " << err << "\n";
    EXPECT_LE(err, kTolerance) << name;
  }
  EXPECT_LE(RelativeError(
                ToneMapLatents(io.Get("pipeline.after_adain"), options.tone_map_compression_ratio),
                io.Get("pipeline.out_latent")),
            kTolerance);
  // Raw latents without AdaIN / tone mapping are the plain forward.
  LatentUpsampleOptions raw;
  raw.latents_normalized = false;
  EXPECT_TRUE(at::equal(UpsampleVideoLatents(**model, *stats, denormalized, raw), upsampled));
}

INSTANTIATE_TEST_SUITE_P(Variants, UpsamplerFixtureTest, ::testing::Values("v20", "v23"));

// The 2.0 fixture's `output_type="pt"` call: upsampled latents decoded by the VAE and mapped to
// [0, 1] frames [B, F, 3, H, W].
TEST(UpsamplerTest, PipelineVideoMatchesReference) {
  auto model = Ltx2LatentUpsampler::Load(FixturePath(kSet + "latent_upsampler_v20"));
  ASSERT_TRUE(model.ok()) << model.status();
  auto vae = Ltx2VideoDecoder::Load(FixturePath(kSet + "vae"));
  ASSERT_TRUE(vae.ok()) << vae.status();
  auto stats = VideoLatentStatistics::Load(FixturePath(kSet + "vae"));
  ASSERT_TRUE(stats.ok()) << stats.status();
  IoFile io = OpenIo("upsampler_v20_io.safetensors");
  LatentUpsampleOptions options;
  options.adain_factor = io.CallArgument("call_pipeline", "adain_factor");
  options.tone_map_compression_ratio =
      io.CallArgument("call_pipeline", "tone_map_compression_ratio");
  at::Tensor latents =
      UpsampleVideoLatents(**model, *stats, io.Get("pipeline.latents_in"), options);
  at::Tensor video = ((*vae)->Decode(latents) / 2 + 0.5).clamp(0, 1).permute({0, 2, 1, 3, 4});
  at::Tensor expected = io.Get("pipeline.video_pt");
  ASSERT_EQ(video.sizes(), expected.sizes());
  const double err = RelativeError(video, expected);
  std::cout << "v20 pipeline.video_pt relative error " << err << "\n";
  EXPECT_LE(err, 1e-4);
  // The decoder's own statistics agree with the standalone reader.
  EXPECT_TRUE(at::equal((*vae)->latents_mean(), stats->mean));
  EXPECT_DOUBLE_EQ((*vae)->config().scaling_factor, stats->scaling_factor);
}

TEST(UpsamplerTest, AdainAndToneMapSemantics) {
  auto gen = at::detail::createCPUGenerator(3);
  at::Tensor x = at::normal(0.5, 2.0, {2, 4, 3, 5, 6}, gen, at::TensorOptions());
  at::Tensor ref = at::normal(-1.0, 0.3, {2, 4, 3, 2, 3}, gen, at::TensorOptions());
  at::Tensor y = AdainFilterLatents(x, ref, 1.0);
  // Each (batch, channel) takes the reference's mean and unbiased std.
  EXPECT_NEAR(y[1][2].mean().item<double>(), ref[1][2].mean().item<double>(), 1e-5);
  EXPECT_NEAR(y[1][2].std(/*unbiased=*/true).item<double>(),
              ref[1][2].std(/*unbiased=*/true).item<double>(), 1e-5);
  EXPECT_TRUE(at::allclose(AdainFilterLatents(x, ref, 0.25), x + 0.25 * (y - x), 1e-5, 1e-5));
  // Tone mapping: identity at 0, shrinks large values most at full strength.
  EXPECT_TRUE(at::equal(ToneMapLatents(x, 0.0), x));
  at::Tensor t = ToneMapLatents(at::tensor({0.0f, 1.0f, 10.0f}), 1.0);
  EXPECT_FLOAT_EQ(t[1].item<float>(), 1.0f - 0.8f * 0.75f * 0.5f);
  EXPECT_NEAR(t[2].item<float>(), 10.0f * (1.0f - 0.6f), 1e-3);
}

TEST(UpsamplerTest, SeededVariantsShapes) {
  LatentUpsamplerConfig c;
  c.in_channels = 4;
  c.mid_channels = 32;
  c.num_blocks_per_stage = 1;
  auto gen = at::detail::createCPUGenerator(1);
  at::Tensor z = at::normal(0.0, 1.0, {1, 4, 3, 4, 6}, gen, at::TensorOptions());
  struct Case {
    bool rational;
    double scale;
    bool temporal;
    int64_t dims;
    std::vector<int64_t> shape;
  };
  for (const Case& k : std::vector<Case>{{true, 1.5, false, 3, {1, 4, 3, 6, 9}},
                                         {true, 0.75, false, 3, {1, 4, 3, 3, 5}},
                                         {false, 2.0, false, 2, {1, 4, 3, 8, 12}},
                                         {false, 2.0, true, 3, {1, 4, 5, 8, 12}}}) {
    c.use_rational_resampler = k.rational;
    c.rational_spatial_scale = k.scale;
    c.temporal_upsample = k.temporal;
    c.dims = k.dims;
    auto model = Ltx2LatentUpsampler::CreateSeeded(c, 9);
    ASSERT_TRUE(model.ok()) << model.status();
    at::Tensor out = (*model)->Forward(z);
    EXPECT_EQ(out.sizes(), k.shape) << k.scale << " " << k.temporal << " " << k.dims;
    EXPECT_TRUE(out.isfinite().all().item<bool>());
  }
  c.temporal_upsample = false;
  c.use_rational_resampler = true;
  c.rational_spatial_scale = 3.0;
  EXPECT_EQ(LatentUpsamplerConfig::FromJson(nlohmann::json{{"rational_spatial_scale", 3.0}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LatentUpsamplerConfig::FromJson(nlohmann::json{{"mid_channels", 48}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
