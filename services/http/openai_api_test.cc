#include "services/http/openai_api.h"

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace diffmesh::http {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

TEST(ParseImageFields, MapsOpenAiAndDiffmeshFields) {
  json body = {{"model", "m"},
               {"prompt", "a fox"},
               {"n", 2},
               {"size", "640x480"},
               {"response_format", "b64_json"},
               {"output_format", "webp"},
               {"output_compression", 80},
               {"negative_prompt", "blur"},
               {"seed", 7},
               {"steps", 12},
               {"cfg_scale", 3.5},
               {"stg_scale", 1.0},
               {"audio_cfg_scale", 7.0},
               {"stg_blocks", {29, 30}},
               {"skip_step", 1},
               {"stream", true}};
  v1::GenerateRequest r;
  ImageOptions o;
  ASSERT_TRUE(ParseImageFields(body, &r, &o).ok());
  EXPECT_EQ(r.model(), "m");
  EXPECT_EQ(r.prompt(), "a fox");
  EXPECT_EQ(r.negative_prompt(), "blur");
  EXPECT_EQ(r.width(), 640);
  EXPECT_EQ(r.height(), 480);
  EXPECT_EQ(r.seed(), 7u);
  EXPECT_EQ(r.steps(), 12);
  EXPECT_FLOAT_EQ(r.guidance().main().cfg_scale(), 3.5f);
  EXPECT_FLOAT_EQ(r.guidance().main().stg_scale(), 1.0f);
  EXPECT_FALSE(r.guidance().main().has_rescale());
  EXPECT_FLOAT_EQ(r.guidance().audio().cfg_scale(), 7.0f);
  EXPECT_THAT(r.guidance().stg_blocks().blocks(), ::testing::ElementsAre(29, 30));
  EXPECT_EQ(r.guidance().skip_step(), 1);
  EXPECT_EQ(r.output().format(), v1::OUTPUT_FORMAT_WEBP);
  EXPECT_EQ(r.output().quality(), 80);
  EXPECT_EQ(o.n, 2);
  EXPECT_TRUE(o.stream);
  EXPECT_EQ(o.output_format, "webp");
}

TEST(ParseImageFields, LeavesUnsetFieldsToTheModel) {
  v1::GenerateRequest r;
  ImageOptions o;
  ASSERT_TRUE(ParseImageFields({{"prompt", "x"}, {"size", "auto"}}, &r, &o).ok());
  EXPECT_FALSE(r.has_width());
  EXPECT_FALSE(r.has_seed());
  EXPECT_FALSE(r.has_steps());
  EXPECT_FALSE(r.has_guidance());
  EXPECT_EQ(r.output().format(), v1::OUTPUT_FORMAT_UNSPECIFIED);
  EXPECT_EQ(o.n, 1);
  EXPECT_FALSE(o.stream);
}

TEST(ParseImageFields, FormStringsAreNumbers) {
  json body = FormFieldsToJson({{"prompt", "x"},
                                {"n", "3"},
                                {"seed", "42"},
                                {"guidance_scale", "2.5"},
                                {"stream", "false"},
                                {"stg_blocks", "1,2"}});
  v1::GenerateRequest r;
  ImageOptions o;
  ASSERT_TRUE(ParseImageFields(body, &r, &o).ok());
  EXPECT_EQ(o.n, 3);
  EXPECT_EQ(r.seed(), 42u);
  EXPECT_FLOAT_EQ(r.guidance().main().cfg_scale(), 2.5f);
  EXPECT_THAT(r.guidance().stg_blocks().blocks(), ::testing::ElementsAre(1, 2));
}

// Each bad field gives a 400 naming it.
TEST(ParseImageFields, ErrorsNameTheField) {
  struct Case {
    json body;
    std::string param;
  };
  const Case cases[] = {
      {{{"n", 1}}, "prompt"},
      {{{"prompt", 3}}, "prompt"},
      {{{"prompt", "x"}, {"size", "big"}}, "size"},
      {{{"prompt", "x"}, {"size", "0x10"}}, "size"},
      {{{"prompt", "x"}, {"n", 11}}, "n"},
      {{{"prompt", "x"}, {"n", "two"}}, "n"},
      {{{"prompt", "x"}, {"response_format", "url"}}, "response_format"},
      {{{"prompt", "x"}, {"output_format", "gif"}}, "output_format"},
      {{{"prompt", "x"}, {"output_compression", 50}}, "output_compression"},
      {{{"prompt", "x"}, {"output_format", "jpeg"}, {"output_compression", 101}},
       "output_compression"},
      {{{"prompt", "x"}, {"seed", -1}}, "seed"},
      {{{"prompt", "x"}, {"steps", 0}}, "steps"},
      {{{"prompt", "x"}, {"cfg_scale", "high"}}, "cfg_scale"},
      {{{"prompt", "x"}, {"cfg_scale", 1}, {"guidance_scale", 2}}, "guidance_scale"},
      {{{"prompt", "x"}, {"stg_blocks", {1.5}}}, "stg_blocks"},
      {{{"prompt", "x"}, {"stream", "maybe"}}, "stream"},
      {{{"prompt", "x"}, {"output_format", "mp4"}}, "output_format"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest r;
    ImageOptions o;
    absl::Status s = ParseImageFields(c.body, &r, &o);
    ASSERT_FALSE(s.ok()) << c.body.dump();
    ApiError e = ErrorFromStatus(s);
    EXPECT_EQ(e.http_status, 400) << c.body.dump();
    EXPECT_EQ(e.param, c.param) << c.body.dump();
    EXPECT_THAT(e.message, HasSubstr(c.param)) << c.body.dump();
    EXPECT_EQ(e.type, "invalid_request_error");
  }
}

TEST(ParseImageFields, JpegCompressionZeroBecomesQualityOne) {
  v1::GenerateRequest r;
  ImageOptions o;
  ASSERT_TRUE(ParseImageFields(
                  {{"prompt", "x"}, {"output_format", "jpeg"}, {"output_compression", 0}}, &r, &o)
                  .ok());
  EXPECT_EQ(r.output().quality(), 1);
}

v1::ModelInfo VideoModel() {
  v1::ModelInfo m;
  m.set_name("ltx");
  m.set_kind(v1::MODEL_KIND_VIDEO_WITH_AUDIO);
  m.mutable_defaults()->set_frame_rate(24);
  m.mutable_limits()->mutable_frames()->set_multiple(8);
  m.mutable_limits()->mutable_frames()->set_offset(1);
  m.mutable_limits()->mutable_frames()->set_max_frames(257);
  return m;
}

TEST(ParseVideoFields, SecondsBecomeAllowedFrames) {
  const v1::ModelInfo m = VideoModel();
  v1::GenerateRequest r;
  ASSERT_TRUE(ParseVideoFields({{"prompt", "x"}, {"seconds", "4"}}, &m, &r).ok());
  // 4 s at 24 fps = 96 frames; the nearest 8k+1 is 97.
  EXPECT_EQ(r.num_frames(), 97);
  r.Clear();
  ASSERT_TRUE(ParseVideoFields({{"prompt", "x"}, {"seconds", 60}}, &m, &r).ok());
  EXPECT_EQ(r.num_frames(), 257);  // capped at max_frames
  r.Clear();
  ASSERT_TRUE(
      ParseVideoFields({{"prompt", "x"}, {"num_frames", 33}, {"frame_rate", 25}}, &m, &r).ok());
  EXPECT_EQ(r.num_frames(), 33);
  EXPECT_DOUBLE_EQ(r.frame_rate(), 25);
}

TEST(ParseVideoFields, ImageModelIgnoresSeconds) {
  v1::ModelInfo m;
  m.set_kind(v1::MODEL_KIND_IMAGE);
  v1::GenerateRequest r;
  ASSERT_TRUE(ParseVideoFields({{"prompt", "x"}, {"seconds", "4"}}, &m, &r).ok());
  EXPECT_FALSE(r.has_num_frames());
}

TEST(ParseVideoFields, Errors) {
  const v1::ModelInfo m = VideoModel();
  v1::GenerateRequest r;
  EXPECT_EQ(ErrorFromStatus(ParseVideoFields({{"prompt", "x"}, {"seconds", -2}}, &m, &r)).param,
            "seconds");
  EXPECT_EQ(ErrorFromStatus(
                ParseVideoFields({{"prompt", "x"}, {"seconds", 2}, {"num_frames", 9}}, &m, &r))
                .param,
            "num_frames");
}

TEST(ErrorFromStatus, MapsCodesToHttp) {
  EXPECT_EQ(ErrorFromStatus(absl::UnauthenticatedError("no")).http_status, 401);
  EXPECT_EQ(ErrorFromStatus(absl::ResourceExhaustedError("full")).http_status, 429);
  EXPECT_EQ(ErrorFromStatus(absl::UnavailableError("stage ar down")).http_status, 503);
  ApiError deadline = ErrorFromStatus(absl::DeadlineExceededError("late"));
  EXPECT_EQ(deadline.http_status, 504);
  EXPECT_EQ(deadline.code, "deadline_exceeded");
  ApiError model = ErrorFromStatus(absl::NotFoundError("model: 'x' is not served here"));
  EXPECT_EQ(model.http_status, 404);
  EXPECT_EQ(model.param, "model");
  EXPECT_EQ(model.code, "model_not_found");
  // The orchestrator's field names come through as the param.
  ApiError role = ErrorFromStatus(absl::InvalidArgumentError(
      "inputs[0].role: 'MEDIA_ROLE_EDIT_IMAGE' is not accepted by glm-image-tiny"));
  EXPECT_EQ(role.http_status, 400);
  EXPECT_EQ(role.param, "inputs[0].role");
  EXPECT_EQ(ErrorFromStatus(absl::InternalError("boom")).http_status, 500);
}

TEST(ErrorJson, OpenAiShape) {
  json j = ErrorJson(ErrorFromStatus(FieldError("size", "bad")));
  EXPECT_EQ(j["error"]["message"], "size: bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "size");
  EXPECT_TRUE(j["error"]["code"].is_null());
}

TEST(ImagesResponseJson, CarriesImageAndReproductionData) {
  v1::GenerateResult r;
  v1::Output* o = r.add_outputs();
  o->mutable_info()->set_kind(v1::OUTPUT_KIND_IMAGE);
  o->mutable_info()->set_mime_type("image/png");
  o->mutable_info()->set_width(64);
  o->mutable_info()->set_height(32);
  o->set_data("\x89PNG..");
  r.mutable_metadata()->set_request_id("req-1");
  r.mutable_metadata()->mutable_request()->set_seed(99);
  auto* t = r.mutable_metadata()->add_stage_timings();
  t->set_stage("denoise");
  t->set_seconds(0.5);
  json j = ImagesResponseJson({r}, 1700000000);
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["output_format"], "png");
  EXPECT_EQ(j["size"], "64x32");
  ASSERT_EQ(j["data"].size(), 1u);
  std::string decoded;
  ASSERT_TRUE(absl::Base64Unescape(j["data"][0]["b64_json"].get<std::string>(), &decoded));
  EXPECT_EQ(decoded, "\x89PNG..");
  EXPECT_EQ(j["data"][0]["diffmesh"]["seed"], 99);
  EXPECT_EQ(j["data"][0]["diffmesh"]["request_id"], "req-1");
  EXPECT_DOUBLE_EQ(j["data"][0]["diffmesh"]["timings"]["denoise"].get<double>(), 0.5);
}

TEST(PrimaryOutput, PrefersVideo) {
  v1::GenerateResult r;
  r.add_outputs()->mutable_info()->set_kind(v1::OUTPUT_KIND_AUDIO);
  r.add_outputs()->mutable_info()->set_kind(v1::OUTPUT_KIND_VIDEO);
  EXPECT_EQ(PrimaryOutput(r), &r.outputs(1));
  EXPECT_EQ(PrimaryOutput(v1::GenerateResult()), nullptr);
}

TEST(ModelsJson, ListShape) {
  v1::ListModelsResponse models;
  models.set_default_model("a");
  models.add_models()->set_name("a");
  models.add_models()->set_name("b");
  json j = ModelsJson(models);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 2u);
  EXPECT_EQ(j["data"][0]["id"], "a");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["diffmesh"]["default"], true);
  EXPECT_EQ(j["data"][1]["diffmesh"]["default"], false);
}

}  // namespace
}  // namespace diffmesh::http
