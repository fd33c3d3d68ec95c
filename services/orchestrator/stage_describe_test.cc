// The start-up check of the pipeline config against the stage services' Describe answers: the
// normal config passes; a wrong model, a missing stage kind, mismatched embedding widths or
// limits the stage cannot take are refused, naming the field; DescribeStages asks the services
// over gRPC and leaves out those that do not implement Describe.
#include "services/orchestrator/stage_describe.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "diffmesh/v1/stages.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

using ::testing::HasSubstr;

PipelineConfig Pipeline(const std::string& address = "127.0.0.1:1") {
  auto p = PipelineConfig::Parse(absl::StrCat(R"({
    "default_model": "m",
    "services": {"ar": ")",
                                              address, R"(", "encoder": ")", address, R"(",
                 "denoise": ")",
                                              address, R"("},
    "models": [{
      "name": "m", "kind": "image",
      "defaults": {"height": 64, "width": 64, "steps": 2,
                   "output": {"format": "OUTPUT_FORMAT_PNG"}},
      "limits": {"size_granularity": 32, "min_size": 32, "max_size": 512,
                 "min_steps": 1, "max_steps": 50, "max_prompt_bytes": 100},
      "stages": [
        {"name": "ar", "kind": "ar", "service": "ar"},
        {"name": "text", "kind": "encoder", "service": "encoder"},
        {"name": "denoise", "kind": "denoise", "service": "denoise",
         "inputs": ["ar", "text"], "stream_inputs": true}]}]})"));
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

v1::StageDescription Description(const std::string& kind, const std::string& model, int width,
                                 int granularity = 16, int max_steps = 100) {
  v1::StageDescription d;
  d.add_kinds(kind);
  v1::ServedModel* m = d.add_models();
  m->set_name(model);
  m->set_family("test");
  if (kind != "ar") {
    (*m->mutable_embedding_widths())["prompt_embeds"] = width;
    (*m->mutable_embedding_widths())["negative_prompt_embeds"] = width;
  }
  m->set_size_granularity(granularity);
  if (kind == "denoise") m->set_max_steps(max_steps);
  if (kind == "ar") m->set_pixels_per_token(granularity);
  return d;
}

StageDescriptions Matching() {
  return {{{"ar", "ar"}, Description("ar", "m", 0)},
          {{"encoder", "encoder"}, Description("encoder", "m", 96)},
          {{"denoise", "denoise"}, Description("denoise", "m", 96)}};
}

TEST(CheckStageDescriptionsTest, MatchingConfigPasses) {
  EXPECT_TRUE(CheckStageDescriptions(Pipeline(), Matching()).ok());
  // A service that serves more models and kinds than the pipeline uses is fine.
  StageDescriptions more = Matching();
  more[{"denoise", "denoise"}].add_kinds("ar");
  more[{"denoise", "denoise"}].add_models()->set_name("other");
  EXPECT_TRUE(CheckStageDescriptions(Pipeline(), more).ok());
  // Services that do not describe themselves are not checked.
  EXPECT_TRUE(CheckStageDescriptions(Pipeline(), {}).ok());
}

TEST(CheckStageDescriptionsTest, WrongModelIsRefused) {
  StageDescriptions d = Matching();
  d[{"encoder", "encoder"}] = Description("encoder", "another-model", 96);
  absl::Status s = CheckStageDescriptions(Pipeline(), d);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("stage 'text'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("model: the service does not serve 'm'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("another-model"));
}

TEST(CheckStageDescriptionsTest, MissingStageKindIsRefused) {
  StageDescriptions d = Matching();
  d[{"denoise", "denoise"}].set_kinds(0, "encoder");
  absl::Status s = CheckStageDescriptions(Pipeline(), d);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("stage 'denoise'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("kind: the service does not run 'denoise'"));
}

TEST(CheckStageDescriptionsTest, MismatchedEmbeddingWidthsAreRefused) {
  StageDescriptions d = Matching();
  d[{"denoise", "denoise"}] = Description("denoise", "m", 128);
  absl::Status s = CheckStageDescriptions(Pipeline(), d);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("embedding_widths['"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("takes width 128"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("stage 'text' (service 'encoder') produces 96"));

  // An embedding the denoise stage does not take at all.
  d = Matching();
  (*d[{"encoder", "encoder"}].mutable_models(0)->mutable_embedding_widths())["audio_embeds"] = 8;
  s = CheckStageDescriptions(Pipeline(), d);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("it takes no 'audio_embeds'"));
}

TEST(CheckStageDescriptionsTest, LimitsTheStageCannotTakeAreRefused) {
  StageDescriptions d = Matching();
  d[{"denoise", "denoise"}] = Description("denoise", "m", 96, /*granularity=*/64);
  absl::Status s = CheckStageDescriptions(Pipeline(), d);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("limits.size_granularity: 32 is not a multiple of the stage's 64"));

  d = Matching();
  d[{"denoise", "denoise"}] = Description("denoise", "m", 96, 16, /*max_steps=*/20);
  s = CheckStageDescriptions(Pipeline(), d);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("limits.max_steps: 50 exceeds the stage's 20"));
}

// Over gRPC: an AR and an encoder that describe themselves, a denoise service that does not.
class DescribingAr final : public v1::ArTokenService::CallbackService {
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx, const v1::DescribeRequest*,
                                     v1::StageDescription* out) override {
    *out = Description("ar", "m", 0);
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};
class DescribingEncoder final : public v1::EncoderService::CallbackService {
 public:
  explicit DescribingEncoder(int width) : width_(width) {}
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx, const v1::DescribeRequest*,
                                     v1::StageDescription* out) override {
    *out = Description("encoder", "m", width_);
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const int width_;
};
class SilentDenoise final : public v1::DenoiseService::CallbackService {};

TEST(DescribeStagesTest, AsksEachServiceAndSkipsUnimplemented) {
  DescribingAr ar;
  DescribingEncoder encoder(96);
  SilentDenoise denoise;
  ServerOptions options;
  options.host = "127.0.0.1";
  auto server = RunningServer::Start({&ar, &encoder, &denoise}, options);
  ASSERT_TRUE(server.ok()) << server.status();
  const PipelineConfig pipeline = Pipeline(absl::StrCat("127.0.0.1:", (*server)->port()));
  std::vector<std::string> undescribed;
  auto d = DescribeStages(pipeline, {}, absl::Seconds(10), &undescribed);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->size(), 2u);
  ASSERT_TRUE(d->count({"encoder", "encoder"}));
  EXPECT_EQ(d->at({"encoder", "encoder"}).models(0).embedding_widths().at("prompt_embeds"), 96);
  EXPECT_EQ(undescribed, std::vector<std::string>{"denoise (denoise)"});
  EXPECT_TRUE(CheckStageDescriptions(pipeline, *d).ok());
}

TEST(DescribeStagesTest, AnUnreachableServiceIsAnError) {
  const PipelineConfig pipeline = Pipeline("127.0.0.1:1");  // nothing listens on port 1
  auto d = DescribeStages(pipeline, {}, absl::Milliseconds(500), nullptr);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("Describe of service 'ar'"));
}

}  // namespace
}  // namespace diffmesh
