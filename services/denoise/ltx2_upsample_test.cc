// The "upsample" stage of the LTX-2 denoise service (ltx2_upsample.h) and the denoise stage's
// start from given latents, on ltx2-tiny: what the orchestrator's two-stage graph relies on.
#include <ATen/ATen.h>

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/snapshot.h"
#include "models/ltx2/upsampler.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/testing/denoise_outputs.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {
namespace {

namespace ltx2 = models::ltx2;

constexpr char kModel[] = "ltx2-tiny";

class Ltx2UpsampleTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    DenoiseCore::Options o;
    o.model = kModel;
    auto core = DenoiseCore::Create(o);
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = core->release();
  }
  static void TearDownTestSuite() { delete core_; }

  static absl::Status Run(const v1::DenoiseRequest& r, testing::DenoiseOutputs* out) {
    CallContext ctx;
    return core_->Denoise(ctx, r, [&](const v1::DenoiseEvent& e) { out->Add(e); });
  }

  static v1::Tensor Wire(const at::Tensor& t) {
    auto wire = ToWire(t.contiguous());
    EXPECT_TRUE(wire.ok()) << wire.status();
    return wire.ok() ? *wire : v1::Tensor();
  }

  static DenoiseCore* core_;
};
DenoiseCore* Ltx2UpsampleTest::core_ = nullptr;

TEST_F(Ltx2UpsampleTest, UpsamplesVideoLatentsAsTheModelLayerAndPassesAudioOn) {
  auto spec = ltx2::BuiltinSpec(kModel);
  ASSERT_TRUE(spec.ok());
  auto upsampler = ltx2::BuildLatentUpsampler(*spec);
  ASSERT_TRUE(upsampler.ok()) << upsampler.status();
  const int64_t channels = (*upsampler)->config().in_channels;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor video = at::randn({1, channels, 2, 4, 6}, gen);
  const at::Tensor audio = at::randn({1, 2, 9, 4}, gen);
  for (auto [adain, tone] : {std::pair{0.0, 0.0}, std::pair{0.5, 0.3}}) {
    v1::DenoiseRequest r;
    r.set_model(kModel);
    r.mutable_upsample()->set_adain_factor(adain);
    r.mutable_upsample()->set_tone_map_compression_ratio(tone);
    *r.mutable_latents()->mutable_video_latents() = Wire(video);
    *r.mutable_latents()->mutable_audio_latents() = Wire(audio);
    testing::DenoiseOutputs out;
    ASSERT_TRUE(Run(r, &out).ok());
    ASSERT_TRUE(out.broken.ok()) << out.broken;
    ASSERT_TRUE(out.have_result);
    ASSERT_EQ(out.outputs.size(), 2u);
    auto up = testing::TensorOf(*out.Find("video_latents"));
    auto passed = testing::TensorOf(*out.Find("audio_latents"));
    ASSERT_TRUE(up.ok() && passed.ok());
    EXPECT_EQ(up->sizes(), (std::vector<int64_t>{1, channels, 2, 8, 12}));
    ltx2::LatentUpsampleOptions o;
    o.latents_normalized = false;
    o.adain_factor = adain;
    o.tone_map_compression_ratio = tone;
    const at::Tensor want =
        ltx2::UpsampleVideoLatents(**upsampler, ltx2::VideoLatentStatistics{}, video, o);
    EXPECT_TRUE(at::equal(*up, want)) << "adain " << adain << " tone " << tone;
    EXPECT_TRUE(at::equal(*passed, audio));
  }
}

// A snapshot of ltx2-tiny (diffmesh-snapshot's writer) carries the upsampler: the denoise
// service serving it from --model-dir upsamples exactly as the built-in model.
TEST_F(Ltx2UpsampleTest, SnapshotServesTheSameUpsampler) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      absl::StrCat("ltx2_upsample_snapshot_", ::getpid());
  auto spec = ltx2::BuiltinSpec(kModel);
  ASSERT_TRUE(spec.ok());
  ASSERT_TRUE(ltx2::WriteSnapshot(*spec, dir.string()).ok());
  DenoiseCore::Options o;
  o.model_dir = dir.string();
  auto snapshot_core = DenoiseCore::Create(o);
  ASSERT_TRUE(snapshot_core.ok()) << snapshot_core.status();
  auto served = ltx2::SpecFromSnapshot(dir.string());
  ASSERT_TRUE(served.ok());
  const at::Tensor video = at::randn({1, 8, 2, 4, 4}, at::make_generator<at::CPUGeneratorImpl>(5));
  v1::DenoiseRequest r;
  r.mutable_upsample();
  *r.mutable_latents()->mutable_video_latents() = Wire(video);
  std::vector<at::Tensor> results;
  for (DenoiseCore* core : {core_, snapshot_core->get()}) {
    r.set_model(core == core_ ? std::string(kModel) : served->name);
    testing::DenoiseOutputs out;
    CallContext ctx;
    ASSERT_TRUE(core->Denoise(ctx, r, [&](const v1::DenoiseEvent& e) { out.Add(e); }).ok());
    ASSERT_EQ(out.outputs.size(), 1u);  // no audio given, none passed on
    auto up = testing::TensorOf(*out.Find("video_latents"));
    ASSERT_TRUE(up.ok());
    results.push_back(*up);
  }
  EXPECT_TRUE(at::equal(results[0], results[1]));
  std::filesystem::remove_all(dir);
}

TEST_F(Ltx2UpsampleTest, BadUpsampleRequestsNameTheField) {
  v1::DenoiseRequest r;
  r.set_model(kModel);
  r.mutable_upsample();
  testing::DenoiseOutputs out;
  absl::Status s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("latents.video_latents"), std::string::npos) << s;
  *r.mutable_latents()->mutable_video_latents() = Wire(at::zeros({1, 3, 2, 4, 4}));
  s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("channels"), std::string::npos) << s;
  r.mutable_upsample()->set_adain_factor(2);
  s = Run(r, &out);
  EXPECT_NE(s.message().find("upsample.adain_factor"), std::string::npos) << s;
}

// A later denoise stage: its given latents must make the requested size and frames.
TEST_F(Ltx2UpsampleTest, GivenLatentsMustMakeTheRequestedSize) {
  auto spec = ltx2::BuiltinSpec(kModel);
  ASSERT_TRUE(spec.ok());
  const int64_t latent_channels = spec->vae["latent_channels"].get<int64_t>();
  const int64_t spatial = spec->vae["spatial_compression_ratio"].get<int64_t>();
  v1::DenoiseRequest r;
  r.set_model(kModel);
  r.set_height(64);
  r.set_width(64);
  r.set_num_frames(9);
  r.set_frame_rate(24);
  r.set_steps(2);
  r.add_sigmas(0.9);
  r.add_sigmas(0.5);
  r.set_noise_scale(0.9);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  const int64_t side = 64 / spatial;
  *r.mutable_latents()->mutable_video_latents() =
      Wire(at::zeros({1, latent_channels, 2, side, 2 * side}));  // twice as wide
  auto connectors = ltx2::ConnectorsConfig::FromJson(spec->connectors);
  ASSERT_TRUE(connectors.ok());
  const int64_t width = connectors->video.inner_dim() + connectors->audio.inner_dim();
  *r.mutable_prompt_embeds() = Wire(at::zeros({1, 4, width}));
  *r.mutable_negative_prompt_embeds() = Wire(at::zeros({1, 4, width}));
  testing::DenoiseOutputs out;
  absl::Status s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(absl::StrCat("latents.video_latents: a 2x", side, "x", 2 * side,
                                          " latent grid does not make 9 frames of 64x64")),
            std::string::npos)
      << s;
  r.clear_sigmas();
  r.add_sigmas(0.9);  // one value for 2 steps
  s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("sigmas: 1 values for 2 steps"), std::string::npos) << s;
}

}  // namespace
}  // namespace diffmesh
