// LTX-2 two-stage generation as a stage graph (common/config/ltx2_two_stage_pipeline.json:
// encoder → denoise at half size → upsample → denoise at full size) run by the orchestrator
// core over the in-process stage cores of ltx2-tiny. The result has the requested (final) size
// and equals the model-layer computation done by hand: Ltx2Pipeline stage 1 → latent upsampler
// → Ltx2Pipeline stage 2 from the re-noised upsampled latents on the stage's sigmas, with a LoRA
// adapter ("distilled", a random one here) that the graph names for stage 2 only.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/config/pipeline_config.h"
#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/ops.h"
#include "models/core/weights.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/lora.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/upsampler.h"
#include "nlohmann/json.hpp"
#include "services/embedded/embedded_stages.h"
#include "services/orchestrator/orchestrator_core.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {
namespace {

namespace ltx2 = models::ltx2;

constexpr char kModel[] = "ltx2-tiny";
constexpr char kLora[] = "distilled";
constexpr double kLoraStrength = 0.8;

// A random rank-2 LoRA of every Linear layer of the model's transformer, written to `path`.
void WriteRandomLora(const std::string& path) {
  auto spec = ltx2::BuiltinSpec(kModel);
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto config = ltx2::Ltx2TransformerConfig::FromJson(spec->transformer);
  ASSERT_TRUE(config.ok()) << config.status();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(77);
  std::map<std::string, OwnedTensor> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    const at::Tensor t = at::randn(shape, gen, at::kFloat) * 0.1;
    OwnedTensor o{DType::kFloat32, shape, std::string(t.nbytes(), '\0')};
    std::memcpy(o.bytes.data(), t.data_ptr(), t.nbytes());
    tensors[name] = std::move(o);
  };
  for (const models::ParamSpec& p : ltx2::Ltx2Transformer::Params(*config)) {
    if (p.shape.size() != 2 || !absl::EndsWith(p.name, ".weight")) continue;
    const std::string module = "diffusion_model." + p.name.substr(0, p.name.size() - 7);
    add(module + ".lora_A.weight", {2, p.shape[1]});
    add(module + ".lora_B.weight", {p.shape[0], 2});
  }
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
}

// The two-stage graph with the adapter on its last stage.
absl::StatusOr<PipelineConfig> GraphWithLora(const std::string& name) {
  std::ifstream in(DIFFMESH_LTX2_TWO_STAGE_CONFIG);
  nlohmann::json j = nlohmann::json::parse(in);
  for (auto& stage : j["models"][0]["stages"]) {
    if (stage["name"] == "denoise_full")
      stage["lora"] = {{"name", name}, {"strength", kLoraStrength}};
  }
  return PipelineConfig::Parse(j.dump());
}

struct Generated {
  absl::Status status;
  v1::GenerateRequest accepted;  // as the orchestrator filled it in
  std::map<int, v1::Output> outputs;
  std::vector<std::string> finished_stages;
};

class Ltx2TwoStageTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lora_path_ = new std::string(
        absl::StrCat(::testing::TempDir(), "/ltx2_two_stage_lora_", getpid(), ".safetensors"));
    WriteRandomLora(*lora_path_);
    auto pipeline = GraphWithLora(kLora);
    ASSERT_TRUE(pipeline.ok()) << pipeline.status();
    EmbeddedStages::Options so;
    so.model = kModel;
    so.ar = false;
    so.denoise_loras = {{kLora, *lora_path_}};
    auto stages = EmbeddedStages::Create(so);
    ASSERT_TRUE(stages.ok()) << stages.status();
    stages_ = stages->release();
    OrchestratorCore::Options o;
    o.pipeline = *std::move(pipeline);
    o.stages = stages_;
    auto core = OrchestratorCore::Create(std::move(o));
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = core->release();
  }
  static void TearDownTestSuite() {
    delete core_;
    delete stages_;
    std::filesystem::remove(*lora_path_);
    delete lora_path_;
  }

  static v1::GenerateRequest Request() {
    v1::GenerateRequest r;
    r.set_model(kModel);
    r.set_prompt("a lighthouse at dusk, waves");
    r.set_negative_prompt("blurry");
    r.set_height(128);
    r.set_width(192);
    r.set_num_frames(9);
    r.set_steps(2);
    r.set_seed(11);
    r.mutable_output()->set_format(v1::OUTPUT_FORMAT_RAW);
    return r;
  }

  static Generated Generate(const v1::GenerateRequest& r) {
    Generated g;
    CallContext ctx;
    g.status = core_->Generate(ctx, r, [&](v1::GenerateEvent&& e) {
      if (e.has_output()) {
        v1::Output& out = g.outputs[e.output().index()];
        if (e.output().has_info()) *out.mutable_info() = e.output().info();
        out.mutable_data()->append(e.output().data());
      } else if (e.has_stage() && e.stage().kind() == v1::StageEvent::KIND_FINISHED) {
        g.finished_stages.push_back(e.stage().stage());
      } else if (e.has_result()) {
        g.accepted = e.result().metadata().request();
      }
    });
    return g;
  }

  static at::Tensor TensorOf(const v1::Output& out) {
    v1::Tensor t;
    t.set_dtype(out.info().tensor_dtype());
    *t.mutable_shape() = out.info().tensor_shape();
    t.set_data(out.data());
    auto tensor = FromWire(t, out.info().name());
    EXPECT_TRUE(tensor.ok()) << tensor.status();
    return tensor.ok() ? *tensor : at::Tensor();
  }

  static EmbeddedStages* stages_;
  static OrchestratorCore* core_;
  static std::string* lora_path_;
};
EmbeddedStages* Ltx2TwoStageTest::stages_ = nullptr;
OrchestratorCore* Ltx2TwoStageTest::core_ = nullptr;
std::string* Ltx2TwoStageTest::lora_path_ = nullptr;

ltx2::StreamGuidance StreamOf(const v1::StreamGuidance& g) {
  ltx2::StreamGuidance s;
  if (g.has_cfg_scale()) s.cfg = g.cfg_scale();
  if (g.has_stg_scale()) s.stg = g.stg_scale();
  if (g.has_modality_scale()) s.modality = g.modality_scale();
  if (g.has_rescale()) s.rescale = g.rescale();
  return s;
}

// Every step on one rank in the PARALLEL form of the guidance, as the denoise stage runs it.
void DenoiseByHand(const ltx2::Ltx2Pipeline& pipeline, ltx2::Ltx2DenoiseState& state,
                   const ltx2::Ltx2TextEmbeddings& text) {
  while (!state.done()) {
    const std::vector<ltx2::Branch> live = pipeline.LiveBranches(state);
    if (live.empty()) {
      ASSERT_TRUE(pipeline.StepGuided(state, {}).ok());
      continue;
    }
    auto predictions = pipeline.RunBranches(state, live, text);
    ASSERT_TRUE(predictions.ok()) << predictions.status();
    auto sum = pipeline.PartialGuidance(state, *predictions);
    ASSERT_TRUE(sum.ok()) << sum.status();
    const ltx2::Ltx2Pipeline::Guided cond_std =
        pipeline.CondStd(state, predictions->at(ltx2::Branch::kCond));
    auto guided = pipeline.FinishGuidance(*sum, cond_std);
    ASSERT_TRUE(guided.ok()) << guided.status();
    ASSERT_TRUE(pipeline.StepGuided(state, *guided).ok());
  }
}

TEST_F(Ltx2TwoStageTest, TwoStageGraphEqualsTheModelLayerByHand) {
  const Generated g = Generate(Request());
  ASSERT_TRUE(g.status.ok()) << g.status;
  EXPECT_EQ(g.finished_stages,
            (std::vector<std::string>{"encoder", "denoise_half", "upsample", "denoise_full",
                                      "vae_decode"}));
  // Only the last stage's outputs are the request's: frames and audio at the final size.
  ASSERT_EQ(g.outputs.size(), 2u);
  const v1::Output& frames_out = g.outputs.at(0);
  const v1::Output& audio_out = g.outputs.at(1);
  ASSERT_EQ(frames_out.info().name(), "frames");
  ASSERT_EQ(audio_out.info().name(), "audio");
  const v1::GenerateRequest& a = g.accepted;
  EXPECT_EQ(frames_out.info().width(), a.width());
  EXPECT_EQ(frames_out.info().height(), a.height());
  EXPECT_EQ(frames_out.info().frames(), a.num_frames());
  const at::Tensor frames = TensorOf(frames_out);
  const at::Tensor audio = TensorOf(audio_out);
  ASSERT_TRUE(frames.defined() && audio.defined());
  EXPECT_EQ(frames.sizes(),
            (std::vector<int64_t>{a.num_frames(), a.height(), a.width(), 3}));
  EXPECT_GT(frames.max().item<int>(), frames.min().item<int>());  // a picture, not a fill

  // By hand. The text embeddings from the encoder stage (its output is the denoise stages').
  // The stage parameters, from the graph.
  auto config = GraphWithLora(kLora);
  ASSERT_TRUE(config.ok());
  const PipelineModel* model = config->FindModel(kModel);
  ASSERT_NE(model, nullptr);
  const StageSpec* half = model->FindStage("denoise_half");
  const StageSpec* full = model->FindStage("denoise_full");
  ASSERT_TRUE(half != nullptr && full != nullptr);

  auto encoder = stages_->Encoder("encoder");
  ASSERT_TRUE(encoder.ok());
  v1::EncodeRequest er;
  er.set_model(kModel);
  er.set_prompt(a.prompt());
  er.set_negative_prompt(a.negative_prompt());
  CallContext ctx;
  auto embeds = (*encoder)->Encode(ctx, er);
  ASSERT_TRUE(embeds.ok()) << embeds.status();

  auto spec = ltx2::BuiltinSpec(kModel);
  ASSERT_TRUE(spec.ok());
  auto connectors = ltx2::ConnectorsConfig::FromJson(spec->connectors);
  ASSERT_TRUE(connectors.ok());
  const int64_t video_dim = connectors->video.inner_dim();
  const int64_t audio_dim = connectors->audio.inner_dim();
  ltx2::Ltx2TextEmbeddings text;
  auto positive = FromWire(embeds->prompt_embeds(), "prompt_embeds");
  auto negative = FromWire(embeds->negative_prompt_embeds(), "negative_prompt_embeds");
  ASSERT_TRUE(positive.ok() && negative.ok());
  text.video = positive->narrow(2, 0, video_dim).contiguous();
  text.audio = positive->narrow(2, video_dim, audio_dim).contiguous();
  text.mask = at::ones({1, text.video.size(1)}, at::kLong);
  text.negative_video = negative->narrow(2, 0, video_dim).contiguous();
  text.negative_audio = negative->narrow(2, video_dim, audio_dim).contiguous();
  text.negative_mask = at::ones({1, text.negative_video.size(1)}, at::kLong);

  ltx2::Ltx2Models models;
  auto transformer = ltx2::BuildTransformer(*spec);
  auto video_vae = ltx2::BuildVideoDecoder(*spec);
  auto audio_vae = ltx2::BuildAudioDecoder(*spec);
  auto vocoder = ltx2::BuildVocoder(*spec);
  auto scheduler = ltx2::BuildSchedulerConfig(*spec);
  auto upsampler = ltx2::BuildLatentUpsampler(*spec);
  ASSERT_TRUE(transformer.ok() && video_vae.ok() && audio_vae.ok() && vocoder.ok() &&
              scheduler.ok() && upsampler.ok());
  models.transformer = *std::move(transformer);
  models.video_vae = *std::move(video_vae);
  models.audio_vae = *std::move(audio_vae);
  models.vocoder = *std::move(vocoder);
  models.scheduler = *scheduler;

  // Stage 1: the request's guidance at 1/size_divisor of its size; raw latents out.
  ltx2::GuidanceOptions guidance;
  guidance.video = StreamOf(a.guidance().main());
  guidance.audio = StreamOf(a.guidance().audio());
  for (int64_t b : a.guidance().stg_blocks().blocks()) guidance.stg_blocks.push_back(b);
  guidance.skip_step = a.guidance().skip_step();
  auto stage1 = ltx2::Ltx2Pipeline::Create(models.networks(), guidance);
  ASSERT_TRUE(stage1.ok());
  ltx2::Ltx2LatentInit init1;
  init1.num_frames = a.num_frames();
  init1.height = a.height() / half->size_divisor;
  init1.width = a.width() / half->size_divisor;
  init1.frame_rate = a.frame_rate();
  init1.seed = a.seed();
  init1.num_inference_steps = a.steps();
  auto state1 = (*stage1)->PrepareLatents(init1);
  ASSERT_TRUE(state1.ok()) << state1.status();
  DenoiseByHand(**stage1, *state1, text);
  ltx2::Ltx2DecodeOptions latents_only;
  latents_only.decode_video = false;
  latents_only.decode_audio = false;
  auto out1 = (*stage1)->Decode(*state1, latents_only);
  ASSERT_TRUE(out1.ok()) << out1.status();

  // The upsampler on the raw latents (no AdaIN, no tone map: the graph's settings).
  ltx2::LatentUpsampleOptions up_options;
  up_options.latents_normalized = false;
  const at::Tensor upsampled = ltx2::UpsampleVideoLatents(**upsampler, ltx2::VideoLatentStatistics{},
                                                          out1->video_latents, up_options);
  EXPECT_EQ(upsampled.size(3), out1->video_latents.size(3) * 2);
  EXPECT_EQ(upsampled.size(4), out1->video_latents.size(4) * 2);

  // Stage 2: unguided, with the adapter, from the re-noised upsampled latents (audio: stage
  // 1's), on the sigmas.
  EXPECT_TRUE(half->lora.empty());
  ASSERT_EQ(full->lora, kLora);
  auto lora = ltx2::Ltx2Lora::Load(*lora_path_, models.transformer->config());
  ASSERT_TRUE(lora.ok()) << lora.status();
  ltx2::Ltx2Networks networks2 = models.networks();
  networks2.transformer_lora = lora->get();
  networks2.transformer_lora_strength = full->lora_strength;
  auto stage2 = ltx2::Ltx2Pipeline::Create(networks2, ltx2::GuidanceOptions{});
  ASSERT_TRUE(stage2.ok());
  ltx2::Ltx2LatentInit init2;
  init2.video_latents = upsampled;
  init2.audio_latents = out1->audio_latents;
  init2.num_frames = a.num_frames();
  init2.height = a.height();
  init2.width = a.width();
  init2.frame_rate = a.frame_rate();
  init2.seed = a.seed();
  init2.noise_scale = full->noise_scale;
  init2.sigmas = full->sigmas;
  init2.num_inference_steps = static_cast<int64_t>(full->sigmas.size());
  auto state2 = (*stage2)->PrepareLatents(init2);
  ASSERT_TRUE(state2.ok()) << state2.status();
  EXPECT_EQ(state2->num_steps(), static_cast<int64_t>(full->sigmas.size()));
  DenoiseByHand(**stage2, *state2, text);
  ltx2::Ltx2DecodeOptions decode;
  decode.noise_seed = a.seed();
  auto out2 = (*stage2)->Decode(*state2, decode);
  ASSERT_TRUE(out2.ok()) << out2.status();

  const at::Tensor want_frames = out2->frames_uint8[0].contiguous();
  const at::Tensor want_audio = out2->waveform[0].to(at::kFloat).clamp(-1.0, 1.0).contiguous();
  ASSERT_EQ(frames.sizes(), want_frames.sizes());
  ASSERT_EQ(audio.sizes(), want_audio.sizes());
  const double frames_error =
      models::RelativeError(frames.to(at::kFloat), want_frames.to(at::kFloat));
  const double audio_error = models::RelativeError(audio, want_audio);
  std::printf("two-stage vs by hand: frames rel err %.3g (max |diff| %d), audio rel err %.3g\n",
              frames_error,
              (frames.to(at::kInt) - want_frames.to(at::kInt)).abs().max().item<int>(),
              audio_error);
  EXPECT_LE(frames_error, 1e-5);
  EXPECT_LE(audio_error, 1e-5);

  // The adapter matters: stage 2 without it ends elsewhere.
  auto plain2 = ltx2::Ltx2Pipeline::Create(models.networks(), ltx2::GuidanceOptions{});
  ASSERT_TRUE(plain2.ok());
  auto plain_state = (*plain2)->PrepareLatents(init2);
  ASSERT_TRUE(plain_state.ok()) << plain_state.status();
  DenoiseByHand(**plain2, *plain_state, text);
  const double lora_effect = models::RelativeError(plain_state->video, state2->video);
  std::printf("stage 2 with vs without the LoRA: video latents rel diff %.3g\n", lora_effect);
  EXPECT_GT(lora_effect, 1e-3);
}

TEST_F(Ltx2TwoStageTest, AdapterTheDenoiseGroupLacksIsFailedPrecondition) {
  auto pipeline = GraphWithLora("missing");
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  OrchestratorCore::Options o;
  o.pipeline = *std::move(pipeline);
  o.stages = stages_;
  auto core = OrchestratorCore::Create(std::move(o));
  ASSERT_TRUE(core.ok()) << core.status();
  CallContext ctx;
  absl::Status s = (*core)->Generate(ctx, Request(), [](v1::GenerateEvent&&) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("'missing'"), std::string::npos) << s;
  EXPECT_NE(s.message().find(kLora), std::string::npos) << s;  // what it holds
}

TEST_F(Ltx2TwoStageTest, SizeNotAMultipleOf64SaysTheNearest) {
  v1::GenerateRequest r = Request();
  r.set_height(96);  // a multiple of the model's 32, not of 2 × 32
  const Generated g = Generate(r);
  EXPECT_EQ(g.status.code(), absl::StatusCode::kInvalidArgument) << g.status;
  // The graph's rule is the model's granularity (ListModels says 64), checked before any stage.
  EXPECT_NE(g.status.message().find("height: 96 is not allowed"), std::string::npos) << g.status;
  EXPECT_NE(g.status.message().find("a multiple of 64"), std::string::npos) << g.status;
  EXPECT_NE(g.status.message().find("nearest: 128"), std::string::npos) << g.status;
  EXPECT_TRUE(g.outputs.empty());
}

}  // namespace
}  // namespace diffmesh
