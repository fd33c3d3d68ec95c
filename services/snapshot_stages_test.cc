// The three stage cores serving a GlmImagePipeline snapshot (model_dir) of the built-in tiny
// model: they load it, serve it under the snapshot's name and answer exactly as the built-in
// model does.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/tensor/wire_tensor.h"
#include "common/tensor/testing/random_tensor.h"
#include "gtest/gtest.h"
#include "models/glm_image/glm_image_spec.h"
#include "models/glm_image/snapshot.h"
#include "services/ar/ar_core.h"
#include "services/denoise/denoise_core.h"
#include "services/encoder/encoder_core.h"

namespace diffmesh {
namespace {

namespace fs = std::filesystem;

class SnapshotStagesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("diffmesh_snapshot_stages_test_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    auto tiny = models::glm_image::BuiltinSpec("glm-image-tiny");
    ASSERT_TRUE(tiny.ok());
    ASSERT_TRUE(models::glm_image::WriteSnapshot(*tiny, Dir()).ok());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  // Named apart from the built-in model, so that requests show which one they reach.
  static std::string Dir() { return (*root_ / "tiny-snapshot").string(); }
  static fs::path* root_;
};
fs::path* SnapshotStagesTest::root_ = nullptr;

TEST_F(SnapshotStagesTest, EncoderServesTheSnapshot) {
  EncoderCore::Options builtin_options;
  EncoderCore::Options snapshot_options;
  snapshot_options.model_dir = Dir();
  auto builtin = EncoderCore::Create(builtin_options);
  auto snapshot = EncoderCore::Create(snapshot_options);
  ASSERT_TRUE(builtin.ok() && snapshot.ok()) << snapshot.status();
  v1::EncodeRequest r;
  r.set_prompt("a shop sign saying \"OPEN\"");
  r.set_model("glm-image-tiny");
  CallContext ctx;
  auto expected = (*builtin)->Encode(ctx, r);
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_EQ((*snapshot)->Encode(ctx, r).status().code(), absl::StatusCode::kNotFound);
  r.set_model("tiny-snapshot");
  auto got = (*snapshot)->Encode(ctx, r);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), expected->SerializeAsString());
}

TEST_F(SnapshotStagesTest, DenoiseOfTheSnapshotEqualsTheBuiltinModel) {
  std::mt19937 rng(5);
  v1::DenoiseRequest r;
  r.set_height(128);
  r.set_width(128);
  r.set_steps(2);
  r.mutable_guidance()->mutable_main()->set_cfg_scale(1.5f);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_PNG);
  r.set_seed(9);
  std::vector<int64_t> grid(16);
  for (auto& t : grid) t = static_cast<int64_t>(rng() % 256);
  *r.mutable_prior_tokens() = MakeTensor(DType::kInt64, {4, 4}, grid.data(), grid.size() * 8);
  *r.mutable_prompt_embeds() = testing::RandomFloats({1, 5, 64}, rng);
  *r.mutable_negative_prompt_embeds() = testing::RandomFloats({1, 1, 64}, rng);

  auto run = [&](const DenoiseCore::Options& options, const std::string& model) {
    auto core = DenoiseCore::Create(options);
    EXPECT_TRUE(core.ok()) << core.status();
    std::string png;
    if (!core.ok()) return png;
    v1::DenoiseRequest request = r;
    request.set_model(model);
    CallContext ctx;
    absl::Status st = (*core)->Denoise(ctx, request, [&](const v1::DenoiseEvent& e) {
      if (e.has_output()) png += e.output().data();  // one output: its chunks in order
    });
    EXPECT_TRUE(st.ok()) << st;
    return png;
  };
  DenoiseCore::Options snapshot_options;
  snapshot_options.model_dir = Dir();
  const auto expected = run({}, "glm-image-tiny");
  const auto got = run(snapshot_options, "tiny-snapshot");
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(got, expected);
}

TEST_F(SnapshotStagesTest, ArOfTheSnapshotSamplesTheBuiltinModelsTokens) {
  auto generate = [](const ArCore::Options& options, const std::string& model) {
    std::vector<int32_t> tokens;
    auto core = ArCore::Create(options);
    EXPECT_TRUE(core.ok()) << core.status();
    if (!core.ok()) return tokens;
    EXPECT_EQ((*core)->model(), model);
    v1::ArRequest r;
    r.set_model(model);
    r.set_prompt("a red fox");
    r.set_height(128);
    r.set_width(128);
    r.set_seed(3);
    CallContext ctx;
    absl::Status st = (*core)->Generate(ctx, r, [&](const v1::ArTokenChunk& c) {
      tokens.insert(tokens.end(), c.tokens().begin(), c.tokens().end());
    });
    EXPECT_TRUE(st.ok()) << st;
    return tokens;
  };
  ArCore::Options snapshot_options;
  snapshot_options.model_dir = Dir();
  snapshot_options.model = "ignored with model_dir";
  const auto expected = generate({}, "glm-image-tiny");
  EXPECT_EQ(expected.size(), 16u * 16u + 4u * 4u + 1u);
  EXPECT_EQ(generate(snapshot_options, "tiny-snapshot"), expected);
}

// A snapshot with a real BPE tokenizer (processor/ from tests/data/tokenizer, matched to HF
// tokenizers there): the AR stage encodes prompts with it. With greedy sampling the first token
// is the argmax of a full forward over exactly the BPE prompt ids, so a prompt encoded any
// other way (e.g. as byte tokens) shows up as a different stream.
TEST_F(SnapshotStagesTest, ArOfABpeSnapshotEncodesPromptsWithItsTokenizer) {
  const char* src = std::getenv("DIFFMESH_SOURCE_DIR");
  const std::string tokenizer_dir = std::string(src != nullptr ? src : ".") + "/tests/data/tokenizer";
  auto spec = models::glm_image::BuiltinSpec("glm-image-tiny");
  ASSERT_TRUE(spec.ok());
  spec->vision_language_encoder["text_config"]["vocab_size"] = 3072;  // covers the BPE ids
  spec->sampling.temperature = 0.0f;
  const std::string dir = (*root_ / "bpe-snapshot").string();
  models::glm_image::SnapshotWriteOptions write;
  write.ar_tokenizer_dir = tokenizer_dir;
  write.sharded = false;
  ASSERT_TRUE(models::glm_image::WriteSnapshot(*spec, dir, write).ok());

  auto loaded = models::glm_image::SpecFromSnapshot(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_FALSE(loaded->byte_tokens);
  auto tokenizer = models::glm_image::LoadArTextTokenizer(tokenizer_dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::string prompt = "a caf\u00e9 sign saying \"\u4f60\u597d\" \U0001F600";
  auto expected_prompt = models::glm_image::BuildTextToImagePrompt(*tokenizer, prompt, 128, 128);
  ASSERT_TRUE(expected_prompt.ok()) << expected_prompt.status();
  auto model = models::glm_image::BuildArModel(*loaded);
  ASSERT_TRUE(model.ok()) << model.status();
  at::Tensor ids = at::tensor(expected_prompt->ids, at::kLong);
  auto positions = models::glm_image::PromptPositions((*model)->config(), ids, {});
  ASSERT_TRUE(positions.ok()) << positions.status();
  auto logits = (*model)->Forward(ids.unsqueeze(0), positions->positions.unsqueeze(1));
  ASSERT_TRUE(logits.ok()) << logits.status();
  const int64_t codes = (*model)->config().image_start_token_id;
  const int64_t first = (*logits)[0][-1].slice(0, 0, codes).argmax().item<int64_t>();

  ArCore::Options options;
  options.model_dir = dir;
  auto core = ArCore::Create(options);
  ASSERT_TRUE(core.ok()) << core.status();
  v1::ArRequest r;
  r.set_model("bpe-snapshot");
  r.set_prompt(prompt);
  r.set_height(128);
  r.set_width(128);
  std::vector<int32_t> tokens;
  CallContext ctx;
  absl::Status st = (*core)->Generate(ctx, r, [&](const v1::ArTokenChunk& c) {
    tokens.insert(tokens.end(), c.tokens().begin(), c.tokens().end());
  });
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(tokens.size(), 16u * 16u + 4u * 4u + 1u);
  EXPECT_EQ(tokens[0], first);

  // A vocabulary too small for the tokenizer's ids is refused at load, naming the file.
  spec->vision_language_encoder["text_config"]["vocab_size"] = 640;
  const std::string small = (*root_ / "bpe-small-vocab").string();
  ASSERT_TRUE(models::glm_image::WriteSnapshot(*spec, small, write).ok());
  options.model_dir = small;
  auto refused = ArCore::Create(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("tokenizer.json"), std::string::npos)
      << refused.status();
}

TEST_F(SnapshotStagesTest, BadModelDirFailsCreate) {
  EncoderCore::Options e;
  e.model_dir = (*root_ / "nowhere").string();
  EXPECT_EQ(EncoderCore::Create(e).status().code(), absl::StatusCode::kNotFound);
  DenoiseCore::Options d;
  d.model_dir = e.model_dir;
  EXPECT_EQ(DenoiseCore::Create(d).status().code(), absl::StatusCode::kNotFound);
  ArCore::Options a;
  a.model_dir = e.model_dir;
  EXPECT_EQ(ArCore::Create(a).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace diffmesh
