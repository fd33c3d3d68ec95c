#include "services/orchestrator/orchestrator_core.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/orchestrator/testing/fake_stages.h"

namespace diffmesh {
namespace {

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

  testing::FakeStages stages_;
  std::unique_ptr<OrchestratorCore> core_;
};

TEST_F(OrchestratorCoreTest, EventsArriveInProtocolOrder) {
  std::vector<v1::GenerateEvent> events;
  ASSERT_TRUE(Run(Request(), &events).ok());
  ASSERT_GE(events.size(), 4u);
  EXPECT_TRUE(events.front().has_accepted());
  EXPECT_EQ(events.front().accepted().height(), 256);
  EXPECT_EQ(events.front().accepted().seed(), 1234u);
  EXPECT_TRUE(events.back().has_result());
  const auto& meta = events.back().result().metadata();
  EXPECT_EQ(meta.seed(), 1234u);
  EXPECT_EQ(meta.steps(), 3);
  EXPECT_EQ(meta.prior_tokens(), 40);
  EXPECT_EQ(events.back().result().png(), stages_.png);
  std::vector<std::string> timed;
  for (const auto& t : meta.stage_timings()) timed.push_back(t.stage());
  EXPECT_EQ(timed, (std::vector<std::string>{"ar", "encoder", "denoise", "vae_decode"}));
  int denoise_steps = 0, last_ar = 0;
  bool denoise_started = false;
  for (const auto& e : events) {
    if (e.has_denoise_progress()) {
      EXPECT_TRUE(denoise_started);
      EXPECT_EQ(e.denoise_progress().step(), ++denoise_steps);
    }
    if (e.has_ar_progress()) {
      EXPECT_GT(e.ar_progress().tokens_generated(), last_ar);
      last_ar = e.ar_progress().tokens_generated();
      EXPECT_FALSE(denoise_started);
    }
    if (e.has_stage() && e.stage().stage() == "denoise" && e.stage().kind() == v1::StageEvent::STARTED) {
      denoise_started = true;
    }
  }
  EXPECT_EQ(denoise_steps, 3);
  EXPECT_EQ(last_ar, 40);
  // The denoise stage got the AR grid and the encoder's embeddings.
  EXPECT_EQ(stages_.last_denoise.prior_tokens().shape_size(), 2);
  EXPECT_EQ(stages_.last_denoise.prompt_embeds().data().size(), 8u);
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

TEST_F(OrchestratorCoreTest, WithStreamingOffTheDenoiseStageGetsOneWholeRequest) {
  auto j = nlohmann::json::parse(PipelineConfig::DefaultJson());
  j["models"][0]["stages"][2]["stream"] = false;
  auto pipeline = PipelineConfig::Parse(j.dump());
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  auto core = OrchestratorCore::Create({*pipeline, &stages_});
  ASSERT_TRUE(core.ok());
  CallContext ctx;
  ASSERT_TRUE((*core)->Generate(ctx, Request(), [](const v1::GenerateEvent&) {}).ok());
  EXPECT_EQ(stages_.whole_denoise_calls, 1);
  EXPECT_TRUE(stages_.streamed.empty());
  EXPECT_EQ(stages_.last_denoise.prior_tokens().shape_size(), 2);
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
      {[](auto& r) { r.set_guidance_scale(std::nanf("")); }, absl::StatusCode::kInvalidArgument, "guidance_scale"},
      {[](auto& r) { r.set_guidance_scale(-1); }, absl::StatusCode::kInvalidArgument, "guidance_scale"},
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
  EXPECT_TRUE(stages_.ar_saw_cancel);
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
  EXPECT_NE(a.front().accepted().seed(), b.front().accepted().seed());
  EXPECT_EQ(a.back().result().metadata().seed(), a.front().accepted().seed());
}

TEST_F(OrchestratorCoreTest, ListModelsReportsLimits) {
  v1::ListModelsResponse models = core_->ListModels();
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.default_model(), "glm-image-tiny");
  EXPECT_EQ(models.models(0).pixel_granularity(), 32);
  EXPECT_EQ(models.models(0).stages_size(), 3);
}

}  // namespace
}  // namespace diffmesh
