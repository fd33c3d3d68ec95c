#include "models/ltx2/gemma3.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "models/core/fixtures.h"
#include "models/core/testing/fixture_tensor.h"
#include "models/core/ops.h"
#include "models/ltx2/connectors.h"

namespace diffmesh::models::ltx2 {
namespace {

const std::string kSet = "gemma3-ref-a/";

at::Tensor IoTensor(const std::string& name) {
  return ReadFixtureTensor(FixturePath(kSet + "gemma3_io.safetensors"), name);
}

// Rows of [B, T, ...] at the mask's valid positions, flattened: the pad rows' values are
// implementation-specific (see the fixture README), the valid ones are not.
at::Tensor Valid(const at::Tensor& x, const at::Tensor& mask) {
  return x.index({mask.to(at::kBool)});
}

TEST(Gemma3ConfigTest, AllThreeConfigFormsAgree) {
  auto text = Gemma3Config::FromFile(FixturePath(kSet + "gemma3_text_model/config.json"));
  auto multi =
      Gemma3Config::FromFile(FixturePath(kSet + "gemma3_for_conditional_generation/config.json"));
  auto hub = Gemma3Config::FromFile(FixturePath(kSet + "config_hub_format.json"));
  ASSERT_TRUE(text.ok()) << text.status();
  ASSERT_TRUE(multi.ok()) << multi.status();
  ASSERT_TRUE(hub.ok()) << hub.status();
  for (const Gemma3Config* c : {&*multi, &*hub}) {
    EXPECT_EQ(c->layer_types, text->layer_types);
    EXPECT_EQ(c->hidden_size, text->hidden_size);
    EXPECT_EQ(c->num_hidden_layers, text->num_hidden_layers);
    EXPECT_EQ(c->head_dim, text->head_dim);
    EXPECT_EQ(c->num_key_value_heads, text->num_key_value_heads);
    EXPECT_EQ(c->query_pre_attn_scalar, text->query_pre_attn_scalar);
    EXPECT_EQ(c->sliding_window, text->sliding_window);
    EXPECT_EQ(c->full_rope.theta, text->full_rope.theta);
    EXPECT_EQ(c->full_rope.rope_type, text->full_rope.rope_type);
    EXPECT_EQ(c->full_rope.factor, text->full_rope.factor);
    EXPECT_EQ(c->sliding_rope.theta, text->sliding_rope.theta);
    EXPECT_EQ(c->sliding_rope.rope_type, text->sliding_rope.rope_type);
  }
  EXPECT_EQ(static_cast<int64_t>(text->layer_types.size()), text->num_hidden_layers);
}

TEST(Gemma3ConfigTest, LegacyPatternAndUnsupportedRope) {
  auto c = Gemma3Config::FromJson(nlohmann::json::parse(
      R"({"num_hidden_layers": 7, "sliding_window_pattern": 3, "rope_scaling": {"type": "linear", "factor": 4}})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layer_types,
            (std::vector<std::string>{"sliding_attention", "sliding_attention", "full_attention",
                                      "sliding_attention", "sliding_attention", "full_attention",
                                      "sliding_attention"}));
  EXPECT_EQ(c->full_rope.rope_type, "linear");
  EXPECT_EQ(c->full_rope.factor, 4.0);
  EXPECT_EQ(Gemma3Config::FromJson(nlohmann::json::parse(
                                       R"({"rope_scaling": {"rope_type": "yarn", "factor": 4}})"))
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
}

class Gemma3FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Gemma3FixtureTest, ParamsEqualCheckpoint) {
  const std::string dir = FixturePath(kSet + GetParam());
  auto c = Gemma3Config::FromFile(dir + "/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::string prefix =
      (*ckpt)->Find("embed_tokens.weight") != nullptr ? "" : "language_model.model.";
  std::map<std::string, std::vector<int64_t>> expected, actual;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    if (name.compare(0, prefix.size(), prefix) == 0) expected[name] = view->shape;
  }
  for (const ParamSpec& s : Gemma3TextModel::Params(*c, prefix)) {
    EXPECT_TRUE(actual.emplace(s.name, s.shape).second) << "duplicate " << s.name;
  }
  EXPECT_EQ(actual, expected);
}

TEST_P(Gemma3FixtureTest, HiddenStatesMatchReference) {
  auto model = Gemma3TextModel::Load(FixturePath(kSet + GetParam()));
  ASSERT_TRUE(model.ok()) << model.status();
  at::Tensor ids = IoTensor("in.input_ids");
  at::Tensor mask = IoTensor("in.attention_mask");
  at::Tensor want = IoTensor("out.hidden_states");  // [L+1, B, T, D]
  ASSERT_LT(mask.sum().item<int64_t>(), mask.numel()) << "the fixture should have padding";

  std::vector<at::Tensor> hidden = (*model)->Forward(ids, mask);
  ASSERT_EQ(static_cast<int64_t>(hidden.size()), want.size(0));
  double worst = 0.0;
  for (size_t l = 0; l < hidden.size(); ++l) {
    ASSERT_EQ(hidden[l].sizes(), want[l].sizes());
    const double err = RelativeError(Valid(hidden[l], mask), Valid(want[l], mask));
    const double all = RelativeError(hidden[l], want[l]);
    std::cout << GetParam() << " hidden_states[" << l << "] rel err " << err
              << " (valid tokens), " << all << " (all, pad rows included)\n";
    worst = std::max(worst, err);
  }
  EXPECT_LE(worst, 1e-4);
  EXPECT_LE(RelativeError(Valid(hidden.back(), mask), Valid(IoTensor("out.last_hidden_state"), mask)),
            1e-4);

  // LTX-2's packing and both connector normalisations of our own hidden states.
  at::Tensor packed = Gemma3TextModel::PackHiddenStates(hidden);
  at::Tensor want_packed = IoTensor("ltx2.prompt_embeds");
  ASSERT_EQ(packed.sizes(), want_packed.sizes());
  const double pack_err = RelativeError(Valid(packed, mask), Valid(want_packed, mask));
  const int64_t d = hidden[0].size(-1);
  at::Tensor unpacked = packed.unflatten(2, {d, -1});
  const double v20_err = RelativeError(PerLayerMaskedMeanNorm(unpacked, mask.sum(-1)),
                                       IoTensor("ltx2.v20.normalized_prompt_embeds"));
  const double v23_err = RelativeError(PerTokenRmsNorm(unpacked, mask),
                                       IoTensor("ltx2.v23.normalized_prompt_embeds"));
  std::cout << GetParam() << " ltx2.prompt_embeds rel err " << pack_err
            << ", v20 normalised " << v20_err << ", v23 normalised " << v23_err << "\n";
  EXPECT_LE(pack_err, 1e-4);
  EXPECT_LE(v20_err, 1e-4);
  EXPECT_LE(v23_err, 1e-4);
}

TEST_P(Gemma3FixtureTest, EncodePromptsPacksLikeThePipeline) {
  auto model = Gemma3TextModel::Load(FixturePath(kSet + GetParam()));
  ASSERT_TRUE(model.ok()) << model.status();
  at::Tensor ids = IoTensor("in.input_ids").contiguous();
  at::Tensor mask = IoTensor("in.attention_mask").to(at::kLong).contiguous();
  PromptTokens tokens;
  tokens.num_prompts = ids.size(0);
  tokens.max_length = ids.size(1);
  tokens.input_ids.assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
  tokens.attention_mask.assign(mask.data_ptr<int64_t>(), mask.data_ptr<int64_t>() + mask.numel());
  Gemma3TextModel::PromptEmbeds out = (*model)->EncodePrompts(tokens);
  EXPECT_TRUE(at::equal(out.attention_mask, mask));
  const double err =
      RelativeError(Valid(out.prompt_embeds, mask), Valid(IoTensor("ltx2.prompt_embeds"), mask));
  std::cout << GetParam() << " EncodePrompts prompt_embeds rel err " << err << "\n";
  EXPECT_LE(err, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Layouts, Gemma3FixtureTest,
                         ::testing::Values("gemma3_text_model",
                                           "gemma3_for_conditional_generation"));

// hidden_states[i] (1 <= i < L) is decoder layer i − 1's raw output, as the fixture's per-layer
// debug record has it.
TEST(Gemma3Test, IntermediateStatesMatchDebugLayerOutputs) {
  auto model = Gemma3TextModel::Load(FixturePath(kSet + "gemma3_text_model"));
  ASSERT_TRUE(model.ok()) << model.status();
  at::Tensor mask = IoTensor("in.attention_mask");
  std::vector<at::Tensor> hidden = (*model)->Forward(IoTensor("in.input_ids"), mask);
  at::Tensor layers = IoTensor("dbg.layer_output");  // [L, B, T, D]
  for (int64_t i = 1; i + 1 < static_cast<int64_t>(hidden.size()); ++i) {
    EXPECT_LE(RelativeError(Valid(hidden[i], mask), Valid(layers[i - 1], mask)), 1e-4) << i;
  }
}

TEST(Gemma3Test, SeededModelRunsUnpaddedAndPaddedAlike) {
  auto c = Gemma3Config::FromFile(FixturePath(kSet + "gemma3_text_model/config.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  auto model = Gemma3TextModel::CreateSeeded(*c, 3);
  ASSERT_TRUE(model.ok()) << model.status();
  auto gen = at::detail::createCPUGenerator(9);
  const int64_t n = 2 * c->sliding_window + 1;  // long enough for the window to cut
  at::Tensor ids = at::randint(3, c->vocab_size, {1, n}, gen, at::TensorOptions().dtype(at::kLong));
  std::vector<at::Tensor> plain = (*model)->Forward(ids);
  // Right padding leaves positions alone: valid tokens must not change.
  at::Tensor padded = at::cat({ids, at::zeros({1, 3}, at::kLong)}, 1);
  at::Tensor mask = at::cat({at::ones({1, n}, at::kLong), at::zeros({1, 3}, at::kLong)}, 1);
  std::vector<at::Tensor> with_pad = (*model)->Forward(padded, mask);
  for (size_t l = 0; l < plain.size(); ++l) {
    EXPECT_LE(RelativeError(with_pad[l].narrow(1, 0, n), plain[l]), 1e-6) << l;
  }
}

}  // namespace
}  // namespace diffmesh::models::ltx2
