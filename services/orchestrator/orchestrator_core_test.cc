#include "services/orchestrator/orchestrator_core.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/orchestrator/testing/fake_stages.h"

namespace diffmesh {
namespace {

using FakeStagesRef = testing::FakeStages&;

class OrchestratorCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pipeline = PipelineConfig::Parse(PipelineConfig::DefaultJson());
    ASSERT_TRUE(pipeline.ok());
    auto core = OrchestratorCore::Create({*pipeline, &stages_});
    ASSERT_TRUE(core.ok());
    core_ = std::move(*core);
  }

  absl::Status Run(const v1::GenerateRequest& r, std::vector<v1::GenerateEvent>* events,
                   CallContext* ctx = nullptr) {
    CallContext local;
    return core_->Generate(ctx ? *ctx : local, r, [&](const v1::GenerateEvent& e) { events->push_back(e); });
  }

  static v1::GenerateRequest Request() {
    v1::GenerateRequest r;
    r.set_prompt("a red fox");
    r.set_seed(1234);
    r.set_steps(3);
    return r;
  }

  // A core over the default pipeline whose first model runs `stages` (JSON) instead.
  absl::StatusOr<std::unique_ptr<OrchestratorCore>> CoreWithStages(nlohmann::json& config,
                                                                   const char* stages) {
    config["models"][0]["stages"] = nlohmann::json::parse(stages);
    auto pipeline = PipelineConfig::Parse(config.dump());
    EXPECT_TRUE(pipeline.ok()) << pipeline.status();
    return OrchestratorCore::Create({*pipeline, &stages_});
  }

  testing::FakeStages stages_;
  std::unique_ptr<OrchestratorCore> core_;
};

// The outputs of a run's events, assembled as the SDKs do.
absl::StatusOr<v1::GenerateResult> Assemble(const std::vector<v1::GenerateEvent>& events) {
  OutputAssembler assembler;
  for (const auto& e : events) {
    if (e.has_output()) {
      if (absl::Status s = assembler.Add(e.output()); !s.ok()) return s;
    }
  }
  if (events.empty() || !events.back().has_result()) return absl::InternalError("no result");
  v1::GenerateResult result = events.back().result();
  if (absl::Status s = assembler.Fill(result); !s.ok()) return s;
  return result;
}

TEST_F(OrchestratorCoreTest, EventsArriveInProtocolOrder) {
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(Run(Request(), &events).ok());
  ASSERT_GE(events.size(), 4u);
  ASSERT_TRUE(events.front().has_accepted());
  const v1::GenerateRequest& accepted = events.front().accepted().request();
  EXPECT_EQ(accepted.height(), 256);
  EXPECT_EQ(accepted.seed(), 1234u);
  EXPECT_EQ(accepted.model(), "glm-image-tiny");
  EXPECT_FLOAT_EQ(accepted.guidance().main().cfg_scale(), 1.5f);  // the model's default
  EXPECT_EQ(accepted.output().format(), v1::OUTPUT_FORMAT_PNG);
  EXPECT_EQ(events.front().accepted().request_id(), accepted.request_id());
  ASSERT_TRUE(events.back().has_result());
  const auto& meta = events.back().result().metadata();
  EXPECT_EQ(meta.request().seed(), 1234u);
  EXPECT_EQ(meta.request().steps(), 3);
  EXPECT_EQ(meta.prior_tokens(), 40);
  auto result = Assemble(events);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->outputs_size(), 1);
  EXPECT_EQ(result->outputs(0).data(), stages_.png);
  EXPECT_EQ(result->outputs(0).info().kind(), v1::OUTPUT_KIND_IMAGE);
  EXPECT_EQ(result->outputs(0).info().width(), 256);
  std::set<std::string> timed;  // in the order the stages finished: the first two race
  for (const auto& t : meta.stage_timings()) timed.insert(t.stage());
  EXPECT_EQ(timed, (std::set<std::string>{"ar", "encoder", "denoise", "vae_decode"}));
  EXPECT_EQ(meta.stage_timings_size(), 4);
  int denoise_steps = 0, last_ar = 0;
  bool ar_finished = false;
  for (const auto& e : events) {
    if (e.has_progress() && e.progress().stage() == "denoise") {
      EXPECT_TRUE(ar_finished);
      EXPECT_EQ(e.progress().unit(), "step");
      EXPECT_EQ(e.progress().done(), ++denoise_steps);
      EXPECT_EQ(e.progress().total(), 3);
    }
    if (e.has_progress() && e.progress().stage() == "ar") {
      EXPECT_EQ(e.progress().unit(), "token");
      EXPECT_GT(e.progress().done(), last_ar);
      last_ar = static_cast<int>(e.progress().done());
    }
    if (e.has_stage() && e.stage().stage() == "ar" &&
        e.stage().kind() == v1::StageEvent::KIND_FINISHED) {
      ar_finished = true;
    }
  }
  EXPECT_EQ(denoise_steps, 3);
  EXPECT_EQ(last_ar, 40);
  // The denoise stage got the AR grid (where the AR stage said it lies) and the embeddings.
  ASSERT_EQ(stages_.last_denoise.prior_tokens().shape_size(), 2);
  EXPECT_EQ(stages_.last_denoise.prior_tokens().shape(0), stages_.grid_side);
  EXPECT_EQ(stages_.last_denoise.prompt_embeds().data().size(), 8u);
  EXPECT_FLOAT_EQ(stages_.last_denoise.guidance().main().cfg_scale(), 1.5f);
}

TEST_F(OrchestratorCoreTest, LargeOutputsArriveInBoundedChunks) {
  std::string big(static_cast<size_t>(2.5 * kMaxOutputChunkBytes), '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  stages_.png = big;
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(Run(Request(), &events).ok());
  int chunks = 0;
  for (const auto& e : events) {
    if (!e.has_output()) continue;
    ++chunks;
    EXPECT_LE(static_cast<int64_t>(e.output().data().size()), kMaxOutputChunkBytes);
  }
  EXPECT_EQ(chunks, 3);
  auto result = Assemble(events);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->outputs(0).data(), big);
  EXPECT_TRUE(events.back().result().outputs(0).data().empty());  // the bytes came as chunks
}

TEST_F(OrchestratorCoreTest, GuidanceAndOutputOptionsReachTheDenoiseStageResolved) {
  v1::GenerateRequest r = Request();
  r.mutable_guidance()->mutable_main()->set_stg_scale(0.5f);
  r.mutable_guidance()->mutable_stg_blocks()->add_blocks(1);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_RAW);
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(Run(r, &events).ok());
  const v1::Guidance& g = stages_.last_denoise.guidance();
  EXPECT_FLOAT_EQ(g.main().cfg_scale(), 1.5f);  // default kept
  EXPECT_FLOAT_EQ(g.main().stg_scale(), 0.5f);  // given
  EXPECT_FALSE(g.main().has_modality_scale());  // unset stays unset: no branch added
  EXPECT_EQ(g.stg_blocks().blocks_size(), 1);
  // The decode stage makes the output asked for, from the latents the denoise stage handed on.
  EXPECT_EQ(stages_.last_denoise.output().format(), v1::OUTPUT_FORMAT_LATENTS);
  EXPECT_EQ(stages_.last_decode.output().format(), v1::OUTPUT_FORMAT_RAW);
}

TEST_F(OrchestratorCoreTest, TheDecodeStageDecodesTheLatentsTheDenoiseStageHandsOn) {
  v1::GenerateRequest r = Request();
  r.set_seed(77);
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(Run(r, &events).ok());
  EXPECT_EQ(stages_.decode_calls, 1);
  const v1::DenoiseRequest& d = stages_.last_decode;
  EXPECT_TRUE(d.has_decode());
  EXPECT_EQ(d.height(), 256);
  EXPECT_EQ(d.width(), 256);
  EXPECT_EQ(d.output().format(), v1::OUTPUT_FORMAT_PNG);
  // The fake denoise stage's latents, whole: [1, 1, 32, 32] of the seed.
  ASSERT_TRUE(d.latents().has_image_latents());
  const v1::Tensor& t = d.latents().image_latents();
  ASSERT_EQ(t.shape_size(), 4);
  EXPECT_EQ(t.shape(2), 32);
  ASSERT_EQ(t.data().size(), 32u * 32u * 4u);
  float first = 0;
  std::memcpy(&first, t.data().data(), 4);
  EXPECT_EQ(first, 77.0f);
  EXPECT_TRUE(d.prompt_embeds().data().empty());  // nothing else travels to it
  // Progress and FINISHED events name the decode stage; its time is its decode time.
  bool finished = false;
  for (const auto& e : events) {
    if (e.has_stage() && e.stage().stage() == "vae_decode" &&
        e.stage().kind() == v1::StageEvent::KIND_FINISHED) {
      finished = true;
    }
  }
  EXPECT_TRUE(finished);
  auto result = Assemble(events);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->outputs_size(), 1);
  EXPECT_EQ(result->outputs(0).data(), stages_.png);
  for (const auto& timing : result->metadata().stage_timings()) {
    if (timing.stage() == "vae_decode") EXPECT_DOUBLE_EQ(timing.seconds(), 0.25);
    if (timing.stage() == "denoise") EXPECT_DOUBLE_EQ(timing.seconds(), 0.5);
  }
}

TEST_F(OrchestratorCoreTest, ALatentsRequestSkipsTheDecodeStage) {
  v1::GenerateRequest r = Request();
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(Run(r, &events).ok());
  EXPECT_EQ(stages_.decode_calls, 0);
  auto result = Assemble(events);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->outputs_size(), 1);
  EXPECT_EQ(result->outputs(0).info().name(), "latents");
  EXPECT_EQ(result->outputs(0).info().kind(), v1::OUTPUT_KIND_TENSOR);
}

TEST_F(OrchestratorCoreTest, ADecodeStageFailureEndsTheRequestWithItsStatus) {
  stages_.decode_error = absl::ResourceExhaustedError("decode: out of memory");
  std::vector<v1::GenerateEvent> events;
  absl::Status s = Run(Request(), &events);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("decode"), std::string::npos) << s;
}

TEST_F(OrchestratorCoreTest, WithoutADecodeStageTheDenoiseStageDecodes) {
  auto j = nlohmann::json::parse(PipelineConfig::DefaultJson());
  for (auto& m : j["models"]) {
    auto& stages = m["stages"];
    stages.erase(stages.end() - 1);  // the decode stage
  }
  auto pipeline = PipelineConfig::Parse(j.dump());
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  auto core = OrchestratorCore::Create({*pipeline, &stages_});
  ASSERT_TRUE(core.ok()) << core.status();
  std::vector<v1::GenerateEvent> events;
  CallContext ctx;
  ASSERT_TRUE((*core)->Generate(ctx, Request(), [&](const v1::GenerateEvent& e) {
                   events.push_back(e);
                 }).ok());
  EXPECT_EQ(stages_.decode_calls, 0);
  EXPECT_EQ(stages_.last_denoise.output().format(), v1::OUTPUT_FORMAT_PNG);
  auto result = Assemble(events);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->outputs(0).data(), stages_.png);
}

TEST_F(OrchestratorCoreTest, DenoiseGetsTheInputsHandedOverAsTheyAreProduced) {
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(Run(Request(), &events).ok());
  EXPECT_EQ(stages_.whole_denoise_calls, 0);
  ASSERT_FALSE(stages_.streamed.empty());
  // The request first (without tensors), then every AR chunk in order and the embeddings once.
  ASSERT_TRUE(stages_.streamed[0].has_request());
  EXPECT_EQ(stages_.streamed[0].request().steps(), 3);
  EXPECT_FALSE(stages_.streamed[0].request().has_prior_tokens());
  int next_offset = 0, embeddings = 0;
  for (size_t i = 1; i < stages_.streamed.size(); ++i) {
    const auto& in = stages_.streamed[i];
    EXPECT_FALSE(in.has_request());
    if (in.has_ar_tokens()) {
      EXPECT_EQ(in.ar_tokens().offset(), next_offset);
      EXPECT_FALSE(in.ar_tokens().has_prior_tokens());
      EXPECT_EQ(in.ar_tokens().has_grid(), next_offset == 0);
      next_offset += in.ar_tokens().tokens_size();
    }
    embeddings += in.has_embeddings();
  }
  EXPECT_EQ(next_offset, stages_.ar_tokens);
  EXPECT_EQ(embeddings, 1);
  EXPECT_TRUE(stages_.stream_close_status.ok());
}

TEST_F(OrchestratorCoreTest, AFailingArStageClosesTheDenoiseStreamWithItsError) {
  stages_.ar_error = absl::ResourceExhaustedError("stage 'ar': queue full");
  std::vector<v1::GenerateEvent> events;
  EXPECT_EQ(Run(Request(), &events).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(stages_.stream_close_status.code(), absl::StatusCode::kResourceExhausted);
}

// Another graph shape through the same code: stages renamed, the denoise stage fed whole
// (stream_inputs off), or without an AR stage at all.
std::unique_ptr<OrchestratorCore> CoreFor(const nlohmann::json& stages, FakeStagesRef fake) {
  auto j = nlohmann::json::parse(PipelineConfig::DefaultJson());
  j["models"][0]["stages"] = stages;
  auto pipeline = PipelineConfig::Parse(j.dump());
  EXPECT_TRUE(pipeline.ok()) << pipeline.status();
  if (!pipeline.ok()) return nullptr;
  auto core = OrchestratorCore::Create({*pipeline, &fake});
  EXPECT_TRUE(core.ok()) << core.status();
  return core.ok() ? std::move(*core) : nullptr;
}

TEST_F(OrchestratorCoreTest, WithStreamingOffTheDenoiseStageGetsOneWholeRequest) {
  auto core = CoreFor(nlohmann::json::parse(R"([
      {"name": "prior", "kind": "ar", "service": "ar"},
      {"name": "text", "kind": "encoder", "service": "encoder"},
      {"name": "dit", "kind": "denoise", "service": "denoise", "inputs": ["prior", "text"]}])"),
      stages_);
  ASSERT_NE(core, nullptr);
  CallContext ctx;
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(core->Generate(ctx, Request(), [&](const v1::GenerateEvent& e) {
                    events.push_back(e);
                  }).ok());
  EXPECT_EQ(stages_.whole_denoise_calls, 1);
  EXPECT_TRUE(stages_.streamed.empty());
  EXPECT_EQ(stages_.last_denoise.prior_tokens().shape_size(), 2);
  EXPECT_EQ(stages_.last_denoise.prompt_embeds().data().size(), 8u);
  std::set<std::string> names;
  for (const auto& e : events) {
    if (e.has_progress()) names.insert(e.progress().stage());
  }
  EXPECT_EQ(names, (std::set<std::string>{"prior", "dit"}));
}

TEST_F(OrchestratorCoreTest, APipelineWithoutAnArStageRuns) {
  for (bool stream : {false, true}) {
    nlohmann::json stages = nlohmann::json::parse(R"([
        {"name": "encoder", "kind": "encoder", "service": "encoder"},
        {"name": "denoise", "kind": "denoise", "service": "denoise", "inputs": ["encoder"]}])");
    stages[1]["stream_inputs"] = stream;
    auto core = CoreFor(stages, stages_);
    ASSERT_NE(core, nullptr);
    CallContext ctx;
    std::vector<v1::GenerateEvent> events;
    ASSERT_TRUE(core->Generate(ctx, Request(), [&](const v1::GenerateEvent& e) {
                      events.push_back(e);
                    }).ok());
    EXPECT_EQ(stages_.last_denoise.prompt_embeds().data().size(), 8u);
    EXPECT_EQ(events.back().result().metadata().prior_tokens(), 0);
    auto result = Assemble(events);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->outputs(0).data(), stages_.png);
  }
}

TEST_F(OrchestratorCoreTest, GraphsWhoseStagesDoNotFitAreRefusedAtStart) {
  auto j = nlohmann::json::parse(PipelineConfig::DefaultJson());
  j["models"][0]["stages"] = nlohmann::json::parse(R"([
      {"name": "ar", "kind": "ar", "service": "ar"},
      {"name": "encoder", "kind": "encoder", "service": "encoder", "inputs": ["ar"]},
      {"name": "denoise", "kind": "denoise", "service": "denoise", "inputs": ["encoder"]}])");
  auto pipeline = PipelineConfig::Parse(j.dump());
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  auto core = OrchestratorCore::Create({*pipeline, &stages_});
  ASSERT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(core.status().message().find("stage 'encoder'"), std::string::npos) << core.status();
  // An encoder whose output nobody takes.
  j["models"][0]["stages"] = nlohmann::json::parse(R"([
      {"name": "encoder", "kind": "encoder", "service": "encoder"},
      {"name": "denoise", "kind": "denoise", "service": "denoise"}])");
  pipeline = PipelineConfig::Parse(j.dump());
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  core = OrchestratorCore::Create({*pipeline, &stages_});
  ASSERT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(core.status().message().find("goes nowhere"), std::string::npos) << core.status();
}

TEST_F(OrchestratorCoreTest, DecodeStagesTakeTheLatentsOfOneDenoiseStage) {
  auto j = nlohmann::json::parse(PipelineConfig::DefaultJson());
  auto core_for = [&](const char* stages) { return CoreWithStages(j, stages); };
  auto core = core_for(R"([
      {"name": "encoder", "kind": "encoder", "service": "encoder"},
      {"name": "d", "kind": "denoise", "service": "denoise", "inputs": ["encoder"]},
      {"name": "dec", "kind": "decode", "service": "denoise", "inputs": ["encoder"]}])");
  ASSERT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(core.status().message().find("stage 'dec' (decode)"), std::string::npos)
      << core.status();
  core = core_for(R"([
      {"name": "encoder", "kind": "encoder", "service": "encoder"},
      {"name": "d1", "kind": "denoise", "service": "denoise", "inputs": ["encoder"]},
      {"name": "d2", "kind": "denoise", "service": "denoise", "inputs": ["encoder"]},
      {"name": "dec", "kind": "decode", "service": "denoise", "inputs": ["d1", "d2"]}])");
  ASSERT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(core.status().message().find("exactly one stage, not 2"), std::string::npos)
      << core.status();
  // Its own kind's fields only: a decode stage has no size divisor.
  j["models"][0]["stages"] = nlohmann::json::parse(R"([
      {"name": "encoder", "kind": "encoder", "service": "encoder"},
      {"name": "d", "kind": "denoise", "service": "denoise", "inputs": ["encoder"]},
      {"name": "dec", "kind": "decode", "service": "denoise", "inputs": ["d"],
       "size_divisor": 2}])");
  auto pipeline = PipelineConfig::Parse(j.dump());
  ASSERT_FALSE(pipeline.ok());
  EXPECT_NE(pipeline.status().message().find("size_divisor does not apply"), std::string::npos)
      << pipeline.status();
}

TEST_F(OrchestratorCoreTest, UpsampleStagesFitOnlyBetweenDenoiseStages) {
  auto j = nlohmann::json::parse(PipelineConfig::DefaultJson());
  auto core_for = [&](const char* stages) { return CoreWithStages(j, stages); };
  // The two-stage shape is accepted.
  auto core = core_for(R"([
      {"name": "encoder", "kind": "encoder", "service": "encoder"},
      {"name": "d1", "kind": "denoise", "service": "denoise", "inputs": ["encoder"],
       "size_divisor": 2},
      {"name": "up", "kind": "upsample", "service": "denoise", "inputs": ["d1"]},
      {"name": "d2", "kind": "denoise", "service": "denoise", "inputs": ["encoder", "up"],
       "sigmas": [0.9, 0.5], "noise_scale": 0.9, "unguided": true}])");
  EXPECT_TRUE(core.ok()) << core.status();
  // An upsample stage takes latents, not embeddings.
  core = core_for(R"([
      {"name": "encoder", "kind": "encoder", "service": "encoder"},
      {"name": "up", "kind": "upsample", "service": "denoise", "inputs": ["encoder"]},
      {"name": "d", "kind": "denoise", "service": "denoise", "inputs": ["encoder", "up"]}])");
  ASSERT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(core.status().message().find("stage 'up' (upsample)"), std::string::npos)
      << core.status();
  // Its latents are not the request's outputs.
  core = core_for(R"([
      {"name": "encoder", "kind": "encoder", "service": "encoder"},
      {"name": "d", "kind": "denoise", "service": "denoise", "inputs": ["encoder"]},
      {"name": "up", "kind": "upsample", "service": "denoise", "inputs": ["d"]}])");
  ASSERT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(core.status().message().find("goes nowhere"), std::string::npos) << core.status();
}

TEST_F(OrchestratorCoreTest, BadInputIsRejectedNamingTheField) {
  struct Case {
    std::function<void(v1::GenerateRequest&)> edit;
    absl::StatusCode code;
    std::string field;
  };
  std::vector<Case> cases = {
      {[](auto& r) { r.set_height(250); }, absl::StatusCode::kInvalidArgument, "height"},
      {[](auto& r) { r.set_width(4096); }, absl::StatusCode::kInvalidArgument, "width"},
      {[](auto& r) { r.set_steps(201); }, absl::StatusCode::kInvalidArgument, "steps"},
      {[](auto& r) { r.set_steps(-1); }, absl::StatusCode::kInvalidArgument, "steps"},
      {[](auto& r) { r.set_steps(0); }, absl::StatusCode::kInvalidArgument, "steps"},
      {[](auto& r) { r.mutable_guidance()->mutable_main()->set_cfg_scale(std::nanf("")); },
       absl::StatusCode::kInvalidArgument, "guidance.main.cfg_scale"},
      {[](auto& r) { r.mutable_guidance()->mutable_main()->set_cfg_scale(-1); },
       absl::StatusCode::kInvalidArgument, "guidance.main.cfg_scale"},
      {[](auto& r) { r.mutable_guidance()->mutable_main()->set_cfg_scale(3e38f); },
       absl::StatusCode::kInvalidArgument, "guidance.main.cfg_scale"},
      {[](auto& r) { r.mutable_guidance()->mutable_main()->set_rescale(1.5f); },
       absl::StatusCode::kInvalidArgument, "guidance.main.rescale"},
      {[](auto& r) { r.mutable_guidance()->mutable_audio()->set_cfg_scale(7); },
       absl::StatusCode::kInvalidArgument, "guidance.audio"},
      {[](auto& r) { r.mutable_guidance()->set_skip_step(3); },
       absl::StatusCode::kInvalidArgument, "guidance.skip_step"},
      {[](auto& r) { r.mutable_guidance()->mutable_stg_blocks()->add_blocks(-2); },
       absl::StatusCode::kInvalidArgument, "guidance.stg_blocks"},
      {[](auto& r) { r.set_num_frames(9); }, absl::StatusCode::kInvalidArgument, "num_frames"},
      {[](auto& r) { r.set_frame_rate(24); }, absl::StatusCode::kInvalidArgument, "frame_rate"},
      {[](auto& r) { r.mutable_output()->set_format(v1::OUTPUT_FORMAT_MP4); },
       absl::StatusCode::kInvalidArgument, "output.format"},
      {[](auto& r) { r.mutable_output()->set_quality(90); },
       absl::StatusCode::kInvalidArgument, "output.quality"},
      {[](auto& r) {
         r.mutable_output()->set_format(v1::OUTPUT_FORMAT_JPEG);
         r.mutable_output()->set_quality(0);
       },
       absl::StatusCode::kInvalidArgument, "output.quality"},
      {[](auto& r) {
         auto* in = r.add_inputs();
         in->set_role(v1::MEDIA_ROLE_FIRST_FRAME);
         in->set_data("x");
       },
       absl::StatusCode::kInvalidArgument, "inputs[0].role"},
      {[](auto& r) {
         auto* in = r.add_inputs();
         in->set_role(v1::MEDIA_ROLE_EDIT_IMAGE);
         in->set_data("\x89PNG\r\n\x1a\n but no image after the signature");
       },
       absl::StatusCode::kInvalidArgument, "inputs[0].data"},
      {[](auto& r) { r.set_request_id(std::string(129, 'a')); },
       absl::StatusCode::kInvalidArgument, "request_id"},
      {[](auto& r) { r.set_request_id("two words"); }, absl::StatusCode::kInvalidArgument,
       "request_id"},
      {[](auto& r) { r.set_prompt(std::string(5000, 'x')); }, absl::StatusCode::kInvalidArgument, "prompt"},
      {[](auto& r) { r.set_prompt(""); }, absl::StatusCode::kInvalidArgument, "prompt"},
      {[](auto& r) { r.set_model("sdxl"); }, absl::StatusCode::kNotFound, "model"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest r = Request();
    c.edit(r);
    std::vector<v1::GenerateEvent> events;
    absl::Status s = Run(r, &events);
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_EQ(s.message().substr(0, c.field.size()), c.field) << s;
    EXPECT_TRUE(events.empty());
  }
}

TEST_F(OrchestratorCoreTest, SizeErrorsSayTheNearestValidValue) {
  v1::GenerateRequest r = Request();
  r.set_height(250);
  std::vector<v1::GenerateEvent> events;
  absl::Status s = Run(r, &events);
  EXPECT_NE(s.message().find("nearest: 256"), std::string::npos) << s;
}

// Found by fuzz/request_validator_fuzzer: the nearest valid value of an int32 extreme was
// computed in int and overflowed (regressions/request_validator_fuzzer/).
TEST_F(OrchestratorCoreTest, ExtremeSizesAndFramesSayTheNearestValidValue) {
  constexpr int kMax = std::numeric_limits<int32_t>::max();
  constexpr int kMin = std::numeric_limits<int32_t>::min();
  for (auto [height, nearest] : {std::pair{kMax, "nearest: 512"}, std::pair{kMin, "nearest: 64"}}) {
    v1::GenerateRequest r = Request();
    r.set_height(height);
    std::vector<v1::GenerateEvent> events;
    absl::Status s = Run(r, &events);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("height"), std::string::npos) << s;
    EXPECT_NE(s.message().find(nearest), std::string::npos) << s;
  }
  for (auto [frames, nearest] : {std::pair{kMax, "nearest: 121"}, std::pair{kMin, "nearest: 1"}}) {
    v1::GenerateRequest r = Request();
    r.set_model("ltx2-tiny");
    r.set_num_frames(frames);
    std::vector<v1::GenerateEvent> events;
    absl::Status s = Run(r, &events);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("num_frames"), std::string::npos) << s;
    EXPECT_NE(s.message().find(nearest), std::string::npos) << s;
  }
}

TEST_F(OrchestratorCoreTest, Ltx2TinyGetsItsFramesAndAudioGuidanceResolved) {
  v1::GenerateRequest r = Request();
  r.set_model("ltx2-tiny");
  r.set_num_frames(17);
  r.mutable_guidance()->mutable_audio()->set_cfg_scale(5);
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(Run(r, &events).ok());
  const v1::DenoiseRequest& d = stages_.last_denoise;
  EXPECT_EQ(d.model(), "ltx2-tiny");
  EXPECT_EQ(d.num_frames(), 17);
  EXPECT_DOUBLE_EQ(d.frame_rate(), 24);                         // the model's default
  EXPECT_FLOAT_EQ(d.guidance().audio().cfg_scale(), 5);        // given
  EXPECT_FLOAT_EQ(d.guidance().main().cfg_scale(), 3);         // default
  EXPECT_EQ(d.guidance().stg_blocks().blocks_size(), 1);
  EXPECT_EQ(d.output().format(), v1::OUTPUT_FORMAT_LATENTS);  // the decode stage makes the MP4
  EXPECT_EQ(stages_.last_decode.output().format(), v1::OUTPUT_FORMAT_MP4);
  EXPECT_EQ(stages_.last_decode.num_frames(), d.num_frames());
  EXPECT_EQ(stages_.last_decode.frame_rate(), d.frame_rate());

  for (auto [frames, nearest] : {std::pair{10, "nearest: 9"}, std::pair{20, "nearest: 17"}}) {
    v1::GenerateRequest bad = r;
    bad.set_num_frames(frames);
    events.clear();
    absl::Status s = Run(bad, &events);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(nearest), std::string::npos) << s;
  }
}

TEST_F(OrchestratorCoreTest, StageErrorsKeepTheirCode) {
  stages_.denoise_error = absl::UnavailableError("stage 'denoise' (127.0.0.1:1): connection refused");
  std::vector<v1::GenerateEvent> events;
  absl::Status s = Run(Request(), &events);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("denoise"), std::string::npos);
}

TEST_F(OrchestratorCoreTest, EncoderFailureStopsTheArStage) {
  stages_.encoder_error = absl::UnavailableError("stage 'encoder' down");
  stages_.ar_block_until_cancel = true;
  std::vector<v1::GenerateEvent> events;
  absl::Status s = Run(Request(), &events);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("encoder"), std::string::npos);
  // Stopped, or never started when the failure came first.
  EXPECT_TRUE(stages_.ar_saw_cancel || stages_.ar_calls == 0);
}

TEST_F(OrchestratorCoreTest, CancellationReachesTheRunningStage) {
  stages_.ar_block_until_cancel = true;
  CallContext ctx;
  std::vector<v1::GenerateEvent> events;
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ctx.Cancel();
  });
  absl::Status s = Run(Request(), &events, &ctx);
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(stages_.ar_saw_cancel);
}

TEST_F(OrchestratorCoreTest, ServerDrawsASeedWhenNoneIsGiven) {
  v1::GenerateRequest r = Request();
  r.clear_seed();
  std::vector<v1::GenerateEvent> a, b;
  ASSERT_TRUE(Run(r, &a).ok());
  ASSERT_TRUE(Run(r, &b).ok());
  EXPECT_NE(a.front().accepted().request().seed(), b.front().accepted().request().seed());
  EXPECT_EQ(a.back().result().metadata().request().seed(), a.front().accepted().request().seed());
}

TEST_F(OrchestratorCoreTest, ListModelsReportsLimits) {
  v1::ListModelsResponse models = core_->ListModels();
  ASSERT_EQ(models.models_size(), 3);  // glm-image-tiny, ltx2-tiny, ltx2.3-release-random
  EXPECT_EQ(models.default_model(), "glm-image-tiny");
  EXPECT_EQ(models.models(1).name(), "ltx2-tiny");
  EXPECT_EQ(models.models(1).kind(), v1::MODEL_KIND_VIDEO_WITH_AUDIO);
  const v1::ModelInfo& m = models.models(0);
  EXPECT_EQ(m.kind(), v1::MODEL_KIND_IMAGE);
  EXPECT_EQ(m.limits().size_granularity(), 32);
  EXPECT_EQ(m.limits().max_steps(), 200);
  EXPECT_EQ(m.stages_size(), 4);  // ar, encoder, denoise, vae_decode
  EXPECT_EQ(m.defaults().height(), 256);
  EXPECT_FLOAT_EQ(m.defaults().guidance().main().cfg_scale(), 1.5f);
  ASSERT_EQ(m.input_roles_size(), 1);
  EXPECT_EQ(m.input_roles(0), v1::MEDIA_ROLE_EDIT_IMAGE);
  EXPECT_GE(m.output_formats_size(), 1);
}

}  // namespace
}  // namespace diffmesh
