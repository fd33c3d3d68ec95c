// The denoise stage serving ltx2-tiny: embeddings from the encoder stage core, one rank.
#include <ATen/ATen.h>

#include <string>

#include "gtest/gtest.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/testing/denoise_outputs.h"
#include "services/encoder/encoder_core.h"

namespace diffmesh {
namespace {

constexpr char kModel[] = "ltx2-tiny";

class Ltx2DenoiseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    DenoiseCore::Options o;
    o.model = kModel;
    auto core = DenoiseCore::Create(o);
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = core->release();
    EncoderCore::Options e;
    e.model = kModel;
    auto encoder = EncoderCore::Create(e);
    ASSERT_TRUE(encoder.ok()) << encoder.status();
    v1::EncodeRequest er;
    er.set_model(kModel);
    er.set_prompt("a red kite over the sea, waves");
    er.set_negative_prompt("blurry");
    CallContext ctx;
    auto embeds = (*encoder)->Encode(ctx, er);
    ASSERT_TRUE(embeds.ok()) << embeds.status();
    embeds_ = new v1::EncodeResponse(*embeds);
  }
  static void TearDownTestSuite() {
    delete core_;
    delete embeds_;
  }

  static v1::DenoiseRequest Request() {
    v1::DenoiseRequest r;
    r.set_model(kModel);
    r.set_height(64);
    r.set_width(96);
    r.set_num_frames(9);
    r.set_frame_rate(24);
    r.set_steps(2);
    r.set_seed(5);
    auto* g = r.mutable_guidance();
    g->mutable_main()->set_cfg_scale(3);
    g->mutable_main()->set_stg_scale(1);
    g->mutable_audio()->set_cfg_scale(7);
    g->mutable_stg_blocks()->add_blocks(1);
    r.mutable_output()->set_format(v1::OUTPUT_FORMAT_RAW);
    *r.mutable_prompt_embeds() = embeds_->prompt_embeds();
    *r.mutable_negative_prompt_embeds() = embeds_->negative_prompt_embeds();
    return r;
  }

  static absl::Status Run(const v1::DenoiseRequest& r, testing::DenoiseOutputs* out) {
    CallContext ctx;
    return core_->Denoise(ctx, r, [&](const v1::DenoiseEvent& e) { out->Add(e); });
  }

  static at::Tensor Output(const testing::DenoiseOutputs& out, const std::string& name) {
    const v1::Output* o = out.Find(name);
    if (o == nullptr) {
      ADD_FAILURE() << "no output " << name;
      return {};
    }
    auto t = testing::TensorOf(*o);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : at::Tensor();
  }

  static DenoiseCore* core_;
  static v1::EncodeResponse* embeds_;
};
DenoiseCore* Ltx2DenoiseTest::core_ = nullptr;
v1::EncodeResponse* Ltx2DenoiseTest::embeds_ = nullptr;

TEST_F(Ltx2DenoiseTest, RawOutputsAreFramesAndAudioWithTheirShapes) {
  testing::DenoiseOutputs out;
  ASSERT_TRUE(Run(Request(), &out).ok());
  ASSERT_TRUE(out.broken.ok()) << out.broken;
  ASSERT_TRUE(out.have_result);
  EXPECT_EQ(out.steps, 2);
  ASSERT_EQ(out.outputs.size(), 2u);
  const at::Tensor frames = Output(out, "frames");
  ASSERT_TRUE(frames.defined());
  EXPECT_EQ(frames.scalar_type(), at::kByte);
  EXPECT_EQ(frames.sizes(), (std::vector<int64_t>{9, 64, 96, 3}));
  const at::Tensor audio = Output(out, "audio");
  ASSERT_TRUE(audio.defined());
  EXPECT_EQ(audio.scalar_type(), at::kFloat);
  ASSERT_EQ(audio.dim(), 2);
  const v1::OutputInfo& info = out.Find("audio")->info();
  EXPECT_EQ(audio.size(0), info.audio_channels());
  EXPECT_GT(info.audio_sample_rate(), 0);
  // The vocoder's waveform as it is (the tiny vocoder's is shorter than the clip).
  EXPECT_GT(audio.size(1), 0);
  EXPECT_TRUE(at::isfinite(audio).all().item<bool>());
}

TEST_F(Ltx2DenoiseTest, DeterministicAndGuidanceChangesTheResult) {
  v1::DenoiseRequest r = Request();
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  testing::DenoiseOutputs a, b, c, d;
  ASSERT_TRUE(Run(r, &a).ok());
  ASSERT_TRUE(Run(r, &b).ok());
  const at::Tensor va = Output(a, "video_latents"), aa = Output(a, "audio_latents");
  ASSERT_TRUE(va.defined() && aa.defined());
  EXPECT_TRUE(at::equal(va, Output(b, "video_latents")));
  EXPECT_TRUE(at::equal(aa, Output(b, "audio_latents")));
  // The video stream's guidance changes the video; the audio stream's changes the audio.
  v1::DenoiseRequest main = r;
  main.mutable_guidance()->mutable_main()->set_cfg_scale(1);
  ASSERT_TRUE(Run(main, &c).ok());
  EXPECT_FALSE(at::allclose(va, Output(c, "video_latents")));
  v1::DenoiseRequest audio = r;
  audio.mutable_guidance()->mutable_audio()->set_cfg_scale(2);
  ASSERT_TRUE(Run(audio, &d).ok());
  EXPECT_FALSE(at::allclose(aa, Output(d, "audio_latents")));
}

TEST_F(Ltx2DenoiseTest, Mp4OutputSaysWhatItHolds) {
  v1::DenoiseRequest r = Request();
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_MP4);
  testing::DenoiseOutputs out;
  ASSERT_TRUE(Run(r, &out).ok());
  const v1::Output* video = out.Find("video");
  ASSERT_NE(video, nullptr);
  const v1::OutputInfo& info = video->info();
  EXPECT_EQ(info.kind(), v1::OUTPUT_KIND_VIDEO);
  EXPECT_EQ(info.mime_type(), "video/mp4");
  EXPECT_EQ(info.width(), 96);
  EXPECT_EQ(info.height(), 64);
  EXPECT_EQ(info.frames(), 9);
  EXPECT_DOUBLE_EQ(info.frame_rate(), 24);
  EXPECT_GT(info.audio_sample_rate(), 0);
  EXPECT_GT(info.audio_channels(), 0);
  ASSERT_GT(video->data().size(), 8u);
  EXPECT_EQ(video->data().substr(4, 4), "ftyp");
}

TEST_F(Ltx2DenoiseTest, TheStreamedFormGivesTheSameResult) {
  v1::DenoiseRequest r = Request();
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  testing::DenoiseOutputs whole, streamed;
  ASSERT_TRUE(Run(r, &whole).ok());
  InputQueue<v1::DenoiseInput> inputs;
  v1::DenoiseInput head;
  *head.mutable_request() = r;
  head.mutable_request()->clear_prompt_embeds();
  head.mutable_request()->clear_negative_prompt_embeds();
  ASSERT_TRUE(inputs.Push(head));
  v1::DenoiseInput embeddings;
  *embeddings.mutable_embeddings() = *embeds_;
  ASSERT_TRUE(inputs.Push(embeddings));
  inputs.Close();
  CallContext ctx;
  absl::Status s =
      core_->DenoiseStreamed(ctx, inputs, [&](const v1::DenoiseEvent& e) { streamed.Add(e); });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(at::equal(Output(whole, "video_latents"), Output(streamed, "video_latents")));
  EXPECT_TRUE(at::equal(Output(whole, "audio_latents"), Output(streamed, "audio_latents")));
}

TEST_F(Ltx2DenoiseTest, RejectsBadFramesSizesAndLayouts) {
  testing::DenoiseOutputs out;
  v1::DenoiseRequest r = Request();
  r.set_num_frames(10);
  absl::Status s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("num_frames"), std::string::npos) << s;
  EXPECT_NE(s.message().find("nearest: 9"), std::string::npos) << s;
  r = Request();
  r.set_height(60);
  s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("height"), std::string::npos) << s;
  r = Request();
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_PNG);
  EXPECT_EQ(Run(r, &out).code(), absl::StatusCode::kInvalidArgument);
  r = Request();
  r.mutable_guidance()->mutable_stg_blocks()->add_blocks(7);
  EXPECT_EQ(Run(r, &out).code(), absl::StatusCode::kInvalidArgument);
  r = Request();
  r.set_model("glm-image-tiny");
  EXPECT_EQ(Run(r, &out).code(), absl::StatusCode::kNotFound);

  // CFG-parallel groups are served (ltx2_denoise_group_test.cc); sequence parallel not yet.
  DenoiseCore::Options o;
  o.model = kModel;
  o.parallel.ulysses = 2;
  o.rendezvous.world_size = 2;
  auto grouped = DenoiseCore::Create(o);
  EXPECT_EQ(grouped.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(grouped.status().message().find("ulysses"), std::string::npos) << grouped.status();
}

}  // namespace
}  // namespace diffmesh
