// The denoise stage serving ltx2-tiny: embeddings from the encoder stage core, one rank;
// text-to-video and image-to-video (a MEDIA_ROLE_FIRST_FRAME input).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/image/png.h"
#include "gtest/gtest.h"
#include "models/core/ops.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/video_vae_encoder.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/testing/denoise_outputs.h"
#include "services/encoder/encoder_core.h"
#include "services/stage_common/torch_wire.h"

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
    encoder_ = encoder->release();
    CallContext ctx;
    auto embeds = encoder_->Encode(ctx, PromptRequest());
    ASSERT_TRUE(embeds.ok()) << embeds.status();
    embeds_ = new v1::EncodeResponse(*embeds);
  }
  static void TearDownTestSuite() {
    delete core_;
    delete encoder_;
    delete embeds_;
  }

  // The prompts of every request here (guidance unset: both are encoded).
  static v1::EncodeRequest PromptRequest() {
    v1::EncodeRequest er;
    er.set_model(kModel);
    er.set_prompt("a red kite over the sea, waves");
    er.set_negative_prompt("blurry");
    return er;
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
  static EncoderCore* encoder_;
  static v1::EncodeResponse* embeds_;
};
DenoiseCore* Ltx2DenoiseTest::core_ = nullptr;
EncoderCore* Ltx2DenoiseTest::encoder_ = nullptr;
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

// Guidance without a negative branch (both CFG scales 1): the encoder leaves the negative
// prompt out, and the denoise stage runs without it as it runs with it (the negative embeddings
// are not read); a guidance that needs them without them is refused naming the field.
TEST_F(Ltx2DenoiseTest, TheNegativePromptIsEncodedOnlyWhenTheGuidanceUsesIt) {
  v1::EncodeRequest er = PromptRequest();
  *er.mutable_guidance() = Request().guidance();  // CFG 3 / 7: both prompts
  CallContext ctx;
  auto both = encoder_->Encode(ctx, er);
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_GT(both->negative_prompt_embeds().shape_size(), 0);
  er.mutable_guidance()->mutable_main()->set_cfg_scale(1);
  er.mutable_guidance()->mutable_audio()->set_cfg_scale(1);
  auto positive_only = encoder_->Encode(ctx, er);
  ASSERT_TRUE(positive_only.ok()) << positive_only.status();
  EXPECT_EQ(positive_only->negative_prompt_embeds().shape_size(), 0);
  EXPECT_EQ(positive_only->prompt_embeds().data(), both->prompt_embeds().data());

  v1::DenoiseRequest r = Request();
  r.mutable_guidance()->mutable_main()->set_cfg_scale(1);
  r.mutable_guidance()->mutable_audio()->set_cfg_scale(1);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  testing::DenoiseOutputs with, without;
  ASSERT_TRUE(Run(r, &with).ok());
  r.clear_negative_prompt_embeds();
  absl::Status s = Run(r, &without);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(at::equal(Output(with, "video_latents"), Output(without, "video_latents")));
  EXPECT_TRUE(at::equal(Output(with, "audio_latents"), Output(without, "audio_latents")));

  r.mutable_guidance()->mutable_audio()->set_cfg_scale(2);
  testing::DenoiseOutputs refused;
  s = Run(r, &refused);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("negative_prompt_embeds"), std::string::npos) << s;
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

  // Groups of every axis are served (ltx2_denoise_group_test.cc); a tp degree that does not
  // divide the heads is refused before the group meets.
  DenoiseCore::Options o;
  o.model = kModel;
  o.parallel.ring = 2;
  o.parallel.tp = 4;
  o.rendezvous.world_size = o.parallel.world();
  auto grouped = DenoiseCore::Create(o);
  EXPECT_EQ(grouped.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(grouped.status().message().find("tp 4"), std::string::npos) << grouped.status();
}

// A 45 × 61 random RGB image (another size than the video's: the encoder's preprocessing
// resizes it) as PNG bytes, and as the HWC uint8 tensor it decodes to.
std::pair<std::string, at::Tensor> FirstFrameImage() {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(77);
  const at::Tensor image = at::randint(0, 256, {45, 61, 3}, gen, at::kByte).contiguous();
  auto png = EncodePng(image.data_ptr<uint8_t>(), 61, 45);
  EXPECT_TRUE(png.ok()) << png.status();
  return {png.ok() ? *png : std::string(), image};
}

// Image-to-video through the stage: the image changes the result, and the stage's latents are
// the model-layer pipeline's given EncodeConditioningImage of the same image.
TEST_F(Ltx2DenoiseTest, FirstFrameInputIsImageToVideo) {
  const auto [png, image] = FirstFrameImage();
  v1::DenoiseRequest t2v = Request();
  t2v.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  v1::DenoiseRequest i2v = t2v;
  v1::InputMedia* in = i2v.add_inputs();
  in->set_role(v1::MEDIA_ROLE_FIRST_FRAME);
  in->set_data(png);
  testing::DenoiseOutputs text_only, with_image;
  ASSERT_TRUE(Run(t2v, &text_only).ok());
  absl::Status s = Run(i2v, &with_image);
  ASSERT_TRUE(s.ok()) << s;
  const at::Tensor video = Output(with_image, "video_latents");
  const at::Tensor audio = Output(with_image, "audio_latents");
  ASSERT_TRUE(video.defined() && audio.defined());
  EXPECT_FALSE(at::allclose(video, Output(text_only, "video_latents")));

  // The model layer: the same networks, guidance, noise and text, Ltx2Pipeline::Denoise.
  namespace ltx2 = models::ltx2;
  auto spec = ltx2::BuiltinSpec(kModel);
  ASSERT_TRUE(spec.ok()) << spec.status();
  ltx2::Ltx2Models m;
  m.transformer = std::move(ltx2::BuildTransformer(*spec)).value();
  m.video_vae = std::move(ltx2::BuildVideoDecoder(*spec)).value();
  m.audio_vae = std::move(ltx2::BuildAudioDecoder(*spec)).value();
  m.scheduler = ltx2::BuildSchedulerConfig(*spec).value();
  auto encoder = ltx2::BuildVideoEncoder(*spec);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  ltx2::GuidanceOptions guidance;
  guidance.video.cfg = 3;
  guidance.video.stg = 1;
  guidance.audio.cfg = 7;
  guidance.stg_blocks = {1};
  auto pipeline = ltx2::Ltx2Pipeline::Create(m.networks(), guidance);
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  auto connectors = ltx2::ConnectorsConfig::FromJson(spec->connectors);
  ASSERT_TRUE(connectors.ok()) << connectors.status();
  const int64_t video_width = connectors->video.inner_dim();
  const int64_t audio_width = connectors->audio.inner_dim();
  const at::Tensor pos = FromWire(i2v.prompt_embeds(), "prompt_embeds").value();
  const at::Tensor neg = FromWire(i2v.negative_prompt_embeds(), "negative_prompt_embeds").value();
  ltx2::Ltx2TextEmbeddings text;
  text.video = pos.narrow(2, 0, video_width).contiguous();
  text.audio = pos.narrow(2, video_width, audio_width).contiguous();
  text.mask = at::ones({1, pos.size(1)}, at::kLong);
  text.negative_video = neg.narrow(2, 0, video_width).contiguous();
  text.negative_audio = neg.narrow(2, video_width, audio_width).contiguous();
  text.negative_mask = at::ones({1, neg.size(1)}, at::kLong);
  ltx2::Ltx2LatentInit init;
  init.num_frames = i2v.num_frames();
  init.height = i2v.height();
  init.width = i2v.width();
  init.frame_rate = i2v.frame_rate();
  init.seed = i2v.seed();
  init.num_inference_steps = i2v.steps();
  auto first = ltx2::EncodeConditioningImage(**encoder, image, i2v.height(), i2v.width());
  ASSERT_TRUE(first.ok()) << first.status();
  init.first_frame_latent = *first;
  auto state = (*pipeline)->PrepareLatents(init);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_TRUE((*pipeline)->Denoise(*state, text).ok());
  ltx2::Ltx2DecodeOptions d;
  d.decode_video = false;
  d.decode_audio = false;
  auto want = (*pipeline)->Decode(*state, d);
  ASSERT_TRUE(want.ok()) << want.status();
  const double video_err = models::RelativeError(video, want->video_latents);
  const double audio_err = models::RelativeError(audio, want->audio_latents);
  std::printf("image-to-video against the pipeline: relative error video %.3g, audio %.3g\n",
              video_err, audio_err);
  EXPECT_LE(video_err, 1e-5);
  EXPECT_LE(audio_err, 1e-5);
  // The conditioned frame is held at the image's latent.
  EXPECT_LE(models::RelativeError(video.narrow(2, 0, 1), *first), 1e-5);
}

TEST_F(Ltx2DenoiseTest, RejectsOtherInputRolesAndBadImages) {
  const auto [png, image] = FirstFrameImage();
  testing::DenoiseOutputs out;
  v1::DenoiseRequest r = Request();
  v1::InputMedia* in = r.add_inputs();
  in->set_role(v1::MEDIA_ROLE_EDIT_IMAGE);
  in->set_data(png);
  absl::Status s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("inputs[0].role"), std::string::npos) << s;
  in->set_role(v1::MEDIA_ROLE_FIRST_FRAME);
  in->set_data("not an image");
  s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("inputs[0].data"), std::string::npos) << s;
  in->set_data(png);
  *r.add_inputs() = *in;
  s = Run(r, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("inputs[1]"), std::string::npos) << s;
  r.mutable_inputs(1)->set_role(v1::MEDIA_ROLE_REFERENCE);
  s = Run(r, &out);
  EXPECT_NE(s.message().find("inputs[1].role"), std::string::npos) << s;
}

// The "decode" stage kind: the latents of a LATENTS call, decoded by a decode stage call (on
// the denoise service beside rank 0, or a --role decode service), give the outputs the denoise
// call gives when it decodes them itself — the same bytes.
TEST_F(Ltx2DenoiseTest, ADecodeStageOnTheLatentsGivesTheSameOutputs) {
  v1::DenoiseRequest whole = Request();
  testing::DenoiseOutputs direct;
  ASSERT_TRUE(Run(whole, &direct).ok());
  v1::DenoiseRequest latents_request = Request();
  latents_request.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  testing::DenoiseOutputs latents;
  ASSERT_TRUE(Run(latents_request, &latents).ok());
  EXPECT_EQ(latents.result.vae_decode_seconds(), 0.0);  // nothing decoded

  v1::DenoiseRequest decode;
  decode.set_model(kModel);
  decode.mutable_decode();
  decode.set_height(whole.height());
  decode.set_width(whole.width());
  decode.set_num_frames(whole.num_frames());
  decode.set_frame_rate(whole.frame_rate());
  decode.mutable_output()->set_format(v1::OUTPUT_FORMAT_RAW);
  for (const char* name : {"video_latents", "audio_latents"}) {
    const v1::Output* o = latents.Find(name);
    ASSERT_NE(o, nullptr) << name;
    v1::Tensor t;
    t.set_dtype(o->info().tensor_dtype());
    *t.mutable_shape() = o->info().tensor_shape();
    t.set_data(o->data());
    *(std::string(name) == "video_latents" ? decode.mutable_latents()->mutable_video_latents()
                                           : decode.mutable_latents()->mutable_audio_latents()) = t;
  }
  DenoiseCore::Options decode_only;
  decode_only.model = kModel;
  decode_only.role = DenoiseCore::Options::Role::kDecode;
  auto decoder = DenoiseCore::Create(decode_only);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  for (DenoiseCore* core : {core_, decoder->get()}) {
    testing::DenoiseOutputs decoded;
    CallContext ctx;
    ASSERT_TRUE(
        core->Denoise(ctx, decode, [&](const v1::DenoiseEvent& e) { decoded.Add(e); }).ok());
    ASSERT_TRUE(decoded.have_result);
    EXPECT_GT(decoded.result.vae_decode_seconds(), 0.0);
    EXPECT_EQ(decoded.steps, 0);
    for (const char* name : {"frames", "audio"}) {
      ASSERT_NE(decoded.Find(name), nullptr) << name;
      EXPECT_EQ(decoded.Find(name)->data(), direct.Find(name)->data()) << name;
      EXPECT_EQ(decoded.Find(name)->info().frame_rate(), 24);
    }
  }
  // MP4 too, through the decode-only service.
  decode.mutable_output()->set_format(v1::OUTPUT_FORMAT_MP4);
  whole.mutable_output()->set_format(v1::OUTPUT_FORMAT_MP4);
  testing::DenoiseOutputs direct_mp4, decoded_mp4;
  ASSERT_TRUE(Run(whole, &direct_mp4).ok());
  CallContext ctx;
  ASSERT_TRUE((*decoder)
                  ->Denoise(ctx, decode,
                            [&](const v1::DenoiseEvent& e) { decoded_mp4.Add(e); })
                  .ok());
  ASSERT_NE(decoded_mp4.Find("video"), nullptr);
  EXPECT_EQ(decoded_mp4.Find("video")->data(), direct_mp4.Find("video")->data());

  // What a decode stage refuses, naming the field.
  struct Case {
    std::function<void(v1::DenoiseRequest&)> edit;
    absl::StatusCode code;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](auto& r) { r.set_num_frames(17); }, absl::StatusCode::kInvalidArgument,
       "latents.video_latents"},
      {[](auto& r) { r.set_width(64); }, absl::StatusCode::kInvalidArgument,
       "latents.video_latents"},
      {[](auto& r) { r.mutable_latents()->clear_audio_latents(); },
       absl::StatusCode::kInvalidArgument, "latents"},
      {[](auto& r) { r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS); },
       absl::StatusCode::kInvalidArgument, "output.format"},
      {[](auto& r) { r.set_frame_rate(0); }, absl::StatusCode::kInvalidArgument, "frame_rate"},
      {[](auto& r) { r.set_model("other"); }, absl::StatusCode::kNotFound, "model"},
      {[](auto& r) { r.mutable_latents()->mutable_video_latents()->mutable_data()->resize(3); },
       absl::StatusCode::kInvalidArgument, "latents.video_latents"},
  };
  for (const Case& c : cases) {
    v1::DenoiseRequest r = decode;
    c.edit(r);
    CallContext call;
    absl::Status s = (*decoder)->Denoise(call, r, [](const v1::DenoiseEvent&) {});
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_EQ(s.message().substr(0, c.field.size()), c.field) << s;
  }
  // A decode-only service takes no denoise request.
  CallContext call;
  absl::Status s = (*decoder)->Denoise(call, Request(), [](const v1::DenoiseEvent&) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

// ltx2.3-release-random runs on CUDA only: on the CPU both of its stages (and a decode-role
// service) refuse it by name when created, before anything is allocated or a group meets.
TEST(Ltx2ReleaseRandomOnTheCpuTest, StagesRefuseItUpFront) {
  constexpr char kRelease[] = "ltx2.3-release-random";
  auto expect_refused = [&](const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find(std::string("'") + kRelease + "' does not run on the CPU"),
              std::string::npos)
        << s;
    EXPECT_NE(s.message().find("--device cuda"), std::string::npos) << s;
  };
  DenoiseCore::Options d;
  d.model = kRelease;
  expect_refused(DenoiseCore::Create(d).status());
  d.role = DenoiseCore::Options::Role::kDecode;
  expect_refused(DenoiseCore::Create(d).status());
  EncoderCore::Options e;
  e.model = kRelease;
  expect_refused(EncoderCore::Create(e).status());
}

}  // namespace
}  // namespace diffmesh
