// The AR side of an edit request against glm-image-edit-ref-a: vision tower and VQ tokenisation
// of the condition image (vq_io), then the edit prompt with its image tokens placed, M-RoPE
// positions, logits, hidden states and a greedy decode of the AR model (ar_io).
#include "models/glm_image/vision_tokenizer.h"

#include <ATen/ATen.h>

#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/config_json.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/weights.h"
#include "models/glm_image/ar_model.h"
#include "models/glm_image/ar_prompt.h"

namespace diffmesh::models::glm_image {
namespace {

const std::string kSet = "glm-image-edit-ref-a/";
const std::string kArDir = kSet + "vision_language_encoder";

at::Tensor Fixture(const Checkpoint& ckpt, const std::string& name) {
  const TensorView* v = ckpt.Find(name);
  EXPECT_NE(v, nullptr) << "fixture lacks " << name;
  return v == nullptr ? at::Tensor() : ToTensor(*v);
}

std::unique_ptr<Checkpoint> Open(const std::string& file) {
  auto ckpt = Checkpoint::Open(FixturePath(kSet + file));
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  return ckpt.ok() ? std::move(*ckpt) : nullptr;
}

// Rows of an [n, 3] (t, h, w) grid tensor → grids.
std::vector<ImageGrid> Grids(const at::Tensor& thw) {
  std::vector<ImageGrid> grids;
  for (int64_t i = 0; i < thw.size(0); ++i) {
    grids.push_back({thw[i][1].item<int64_t>(), thw[i][2].item<int64_t>()});
  }
  return grids;
}

std::vector<int64_t> ToVector(const at::Tensor& t) {
  at::Tensor c = t.reshape({-1}).to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

TEST(VisionTokenizerTest, ParamsEqualCheckpointVisionTensors) {
  auto config = VisionTokenizerConfig::FromFile(FixturePath(kArDir));
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(FixturePath(kArDir));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, std::vector<int64_t>> expected, declared;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    if (name.rfind("model.visual.", 0) == 0 || name.rfind("model.vqmodel.", 0) == 0) {
      expected[name] = view->shape;
    }
  }
  for (const ParamSpec& s : GlmImageVisionTokenizer::Params(*config)) declared[s.name] = s.shape;
  EXPECT_EQ(declared, expected);
  EXPECT_FALSE(VisionTokenizerConfig::FromJson({{"vision_config", {{"hidden_act", "relu"}}}}).ok());
  EXPECT_FALSE(
      VisionTokenizerConfig::FromJson({{"vision_config", {{"spatial_merge_size", 2}}}}).ok());
}

TEST(VisionTokenizerTest, MatchesReferenceTokenisation) {
  auto tok = GlmImageVisionTokenizer::Load(FixturePath(kArDir));
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ar = Open("ar_io.safetensors");
  auto vq = Open("vq_io.safetensors");
  ASSERT_TRUE(ar && vq);
  const at::Tensor pixel_values = Fixture(*ar, "pixel_values");
  const std::vector<ImageGrid> grids = Grids(Fixture(*vq, "source_grid_thw"));

  auto check = [](const char* what, const at::Tensor& got, const at::Tensor& want) {
    ASSERT_EQ(got.sizes(), want.sizes()) << what;
    const double err = RelativeError(got, want);
    std::cout << what << " rel err " << err << "\n";
    EXPECT_LE(err, 1e-5) << what;
  };
  check("vision_patch_embeds", (*tok)->PatchEmbed(pixel_values),
        Fixture(*vq, "vision_patch_embeds"));
  check("vision_embeddings_with_pos", (*tok)->Embeddings(pixel_values, grids),
        Fixture(*vq, "vision_embeddings_with_pos"));
  const at::Tensor features = (*tok)->Features(pixel_values, grids);
  check("vision_last_hidden_state", features, Fixture(*vq, "vision_last_hidden_state"));
  check("vq_quant_conv_out", (*tok)->QuantConv(features), Fixture(*vq, "vq_quant_conv_out"));

  auto tokens = (*tok)->ImageTokens(pixel_values, grids);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_TRUE(at::equal(*tokens, Fixture(*vq, "vq_tokens_d32"))) << *tokens;

  // d16 prior tokens and grids of the condition images, per image, concatenated.
  std::vector<at::Tensor> up;
  int64_t start = 0;
  for (const ImageGrid& g : grids) {
    up.push_back(UpsampleTokenIds(tokens->narrow(0, start, g.height * g.width), g));
    start += g.height * g.width;
  }
  EXPECT_TRUE(at::equal(at::cat(up), Fixture(*vq, "prior_token_image_ids_d16")));
  const at::Tensor grids_d16 = Fixture(*vq, "source_image_grid_thw_d16");
  for (size_t i = 0; i < grids.size(); ++i) {
    EXPECT_EQ(grids_d16[i][1].item<int64_t>(), 2 * grids[i].height);
    EXPECT_EQ(grids_d16[i][2].item<int64_t>(), 2 * grids[i].width);
  }

  // Bad shapes are errors, not crashes.
  EXPECT_FALSE((*tok)->ImageTokens(pixel_values.narrow(0, 0, 1), grids).ok());
  EXPECT_FALSE((*tok)->ImageTokens(pixel_values, {{0, 3}}).ok());
}

TEST(EditArTest, PromptPositionsLogitsAndGreedyDecode) {
  auto config = ArConfig::FromFile(FixturePath(kArDir));
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = ArModel::Load(FixturePath(kArDir));
  ASSERT_TRUE(model.ok()) << model.status();
  auto io = Open("ar_io.safetensors");
  auto vq = Open("vq_io.safetensors");
  ASSERT_TRUE(io && vq);
  auto meta_file = SafetensorsFile::Open(FixturePath(kSet + "ar_io.safetensors"));
  ASSERT_TRUE(meta_file.ok());
  const std::string prompt_text = (*meta_file)->metadata().at("prompt");

  // The char-level stand-in tokenizer: one token per character at a fixed offset.
  auto tok_json = ReadJsonFile(FixturePath(kSet + "processor/tiny_tokenizer.json"));
  ASSERT_TRUE(tok_json.ok()) << tok_json.status();
  const auto& vocab = (*tok_json)["vocab"];
  ArTokenizerSpec spec;
  spec.byte_offset = vocab[" "].get<int64_t>() - ' ';
  spec.grid_bos_id = vocab[(*tok_json)["grid_bos_token"].get<std::string>()].get<int64_t>();
  spec.grid_eos_id = vocab[(*tok_json)["grid_eos_token"].get<std::string>()].get<int64_t>();
  spec.bos_id = vocab[(*tok_json)["bos_token"].get<std::string>()].get<int64_t>();

  const at::Tensor grid_thw = Fixture(*io, "image_grid_thw");  // sources..., target
  std::vector<ImageGrid> grids = Grids(grid_thw);
  const ImageGrid target = grids.back();
  grids.pop_back();
  auto prompt = BuildImageToImagePrompt(spec, *config, prompt_text, grids,
                                        static_cast<int>(32 * target.height),
                                        static_cast<int>(32 * target.width));
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  const at::Tensor input_ids = Fixture(*io, "input_ids");
  EXPECT_EQ(prompt->ids, ToVector(input_ids));
  EXPECT_EQ(prompt->max_new_tokens, Fixture(*io, "greedy_new_tokens").numel());
  EXPECT_EQ(static_cast<int64_t>(grids.size()) + 1,
            Fixture(*io, "images_per_sample")[0].item<int64_t>());

  // Placeholders → VQ tokens of the condition image(s).
  auto placed =
      PlaceImageTokens(prompt->ids, config->image_token_id, ToVector(Fixture(*vq, "vq_tokens_d32")));
  ASSERT_TRUE(placed.ok()) << placed.status();
  const at::Tensor ids_with_tokens = Fixture(*io, "input_ids_with_image_tokens");
  EXPECT_EQ(*placed, ToVector(ids_with_tokens));
  EXPECT_FALSE(PlaceImageTokens(prompt->ids, config->image_token_id, {1, 2}).ok());

  // M-RoPE positions of the prompt and of the generated tokens.
  auto pos = PromptPositions(*config, ids_with_tokens, grids);
  ASSERT_TRUE(pos.ok()) << pos.status();
  const at::Tensor position_ids = Fixture(*io, "position_ids");  // [3, 1, S]
  EXPECT_TRUE(at::equal(pos->positions, position_ids.squeeze(1)));
  const at::Tensor decode_pos = GenerationPositions(pos->next_position, {target});
  EXPECT_TRUE(at::equal(decode_pos, Fixture(*io, "decode_position_ids")[0]));

  // Full forward: logits and every hidden state.
  auto out = (*model)->ForwardWithHiddenStates(ids_with_tokens, position_ids);
  ASSERT_TRUE(out.ok()) << out.status();
  const double logits_err = RelativeError(out->logits, Fixture(*io, "logits"));
  std::cout << "logits rel err " << logits_err << "\n";
  EXPECT_LE(logits_err, 1e-5);
  ASSERT_EQ(static_cast<int64_t>(out->hidden_states.size()), config->num_hidden_layers + 1);
  for (size_t i = 0; i < out->hidden_states.size(); ++i) {
    const std::string name = "hidden_states." + std::to_string(i);
    const double err = RelativeError(out->hidden_states[i], Fixture(*io, name));
    std::cout << name << " rel err " << err << "\n";
    EXPECT_LE(err, 1e-5) << name;
  }

  // Greedy decode through the serving API: prefill, then one token at a time at the
  // generation positions (the first new token comes from the prompt's last position).
  const at::Tensor want_tokens = Fixture(*io, "greedy_new_tokens");
  const at::Tensor want_logits = Fixture(*io, "greedy_step_logits");
  KvCacheOptions cache_options;
  cache_options.max_slots = 1;
  cache_options.capacity = ids_with_tokens.size(1) + want_tokens.numel();
  auto cache = KvCache::Create(*config, cache_options);
  ASSERT_TRUE(cache.ok()) << cache.status();
  auto slot = (*cache)->Allocate();
  ASSERT_TRUE(slot.ok());
  auto logits = (*model)->Prefill(**cache, *slot, ids_with_tokens[0], pos->positions);
  ASSERT_TRUE(logits.ok()) << logits.status();
  std::vector<at::Tensor> step_logits;
  std::vector<int64_t> tokens;
  for (int64_t k = 0; k < want_tokens.numel(); ++k) {
    step_logits.push_back(logits->reshape({-1}));
    const int64_t next = logits->reshape({-1}).argmax().item<int64_t>();
    tokens.push_back(next);
    if (k + 1 == want_tokens.numel()) break;
    logits = (*model)->Decode(**cache, {*slot}, at::tensor({next}, at::kLong),
                              decode_pos.narrow(1, k, 1));
    ASSERT_TRUE(logits.ok()) << logits.status();
  }
  EXPECT_EQ(tokens, ToVector(want_tokens));
  const double step_err = RelativeError(at::stack(step_logits), want_logits);
  std::cout << "greedy step logits rel err " << step_err << "\n";
  EXPECT_LE(step_err, 1e-5);
}

}  // namespace
}  // namespace diffmesh::models::glm_image
