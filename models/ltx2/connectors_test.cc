#include "models/ltx2/connectors.h"

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

namespace diffmesh::models::ltx2 {
namespace {

at::Tensor FixtureTensor(const std::string& file, const std::string& name) {
  return ReadFixtureTensor(FixturePath(file), name);
}

class ConnectorsFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Dir() const { return "ltx2-ref-a/" + GetParam() + "/connectors"; }
  std::string Io() const { return "ltx2-ref-a/" + GetParam() + "/connectors_io.safetensors"; }
};

TEST_P(ConnectorsFixtureTest, ParamsEqualCheckpoint) {
  auto c = ConnectorsConfig::FromFile(FixturePath(Dir()) + "/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  auto ckpt = Checkpoint::Open(FixturePath(Dir()));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, std::vector<int64_t>> expected, actual;
  for (const auto& [name, view] : (*ckpt)->tensors()) expected[name] = view->shape;
  for (const ParamSpec& s : TextConnectors::Params(*c)) {
    EXPECT_TRUE(actual.emplace(s.name, s.shape).second) << "duplicate " << s.name;
  }
  EXPECT_EQ(actual, expected);
}

TEST_P(ConnectorsFixtureTest, ForwardMatchesReference) {
  auto connectors = TextConnectors::Load(FixturePath(Dir()));
  ASSERT_TRUE(connectors.ok()) << connectors.status();
  at::Tensor hidden = FixtureTensor(Io(), "in.text_encoder_hidden_states");
  at::Tensor mask = FixtureTensor(Io(), "in.attention_mask");
  at::Tensor want_video = FixtureTensor(Io(), "out.video_text_embedding");
  at::Tensor want_audio = FixtureTensor(Io(), "out.audio_text_embedding");
  at::Tensor want_mask = FixtureTensor(Io(), "out.attention_mask");
  // The fixture must exercise the padding path.
  ASSERT_LT(mask.sum().item<int64_t>(), mask.numel());

  TextConnectors::Output out = (*connectors)->Forward(hidden, mask);
  ASSERT_EQ(out.video_text_embedding.sizes(), want_video.sizes());
  ASSERT_EQ(out.audio_text_embedding.sizes(), want_audio.sizes());
  const double video_err = RelativeError(out.video_text_embedding, want_video);
  const double audio_err = RelativeError(out.audio_text_embedding, want_audio);
  std::cout << GetParam() << " connectors: video rel err " << video_err << ", audio rel err "
            << audio_err << "\n";
  EXPECT_LE(video_err, 1e-4);
  EXPECT_LE(audio_err, 1e-4);
  EXPECT_TRUE(at::equal(out.attention_mask.to(at::kLong), want_mask.to(at::kLong)));

  // The [B, T, D, L] form of the same input is the same call.
  const int64_t d = (*connectors)->config().caption_channels;
  TextConnectors::Output out4 = (*connectors)->Forward(hidden.unflatten(2, {d, -1}), mask);
  EXPECT_TRUE(at::equal(out4.video_text_embedding, out.video_text_embedding));
  EXPECT_TRUE(at::equal(out4.audio_text_embedding, out.audio_text_embedding));
}

// With registers the valid tokens are front-aligned and the tail is registers: moving the
// padding to the right (same valid tokens, same order) gives the same output.
TEST_P(ConnectorsFixtureTest, RegistersMakeThePaddingSideIrrelevant) {
  auto connectors = TextConnectors::Load(FixturePath(Dir()));
  ASSERT_TRUE(connectors.ok()) << connectors.status();
  if ((*connectors)->config().video.num_learnable_registers == 0) GTEST_SKIP();
  at::Tensor hidden = FixtureTensor(Io(), "in.text_encoder_hidden_states");
  at::Tensor mask = FixtureTensor(Io(), "in.attention_mask");
  TextConnectors::Output base = (*connectors)->Forward(hidden, mask);
  // Each row right-padded instead: its valid tokens first, random values after them.
  auto gen = at::detail::createCPUGenerator(17);
  at::Tensor right = at::randn(hidden.sizes(), gen) * 5.0;
  at::Tensor right_mask = at::zeros_like(mask);
  const int64_t t = hidden.size(1);
  for (int64_t row = 0; row < hidden.size(0); ++row) {
    const int64_t n = mask[row].sum().item<int64_t>();
    right[row].narrow(0, 0, n).copy_(hidden[row].narrow(0, t - n, n));
    right_mask[row].narrow(0, 0, n).fill_(1);
  }
  TextConnectors::Output other = (*connectors)->Forward(right, right_mask, PaddingSide::kRight);
  EXPECT_LE(RelativeError(other.video_text_embedding, base.video_text_embedding), 1e-6);
  EXPECT_LE(RelativeError(other.audio_text_embedding, base.audio_text_embedding), 1e-6);
}

// Without registers the padding stays in the sequence and must be masked as keys: a right-padded
// row (valid tokens keep positions 0..n−1) equals the same tokens run unpadded. (Scrambling the
// padded inputs would prove nothing: both normalisations zero them before the projections.)
TEST_P(ConnectorsFixtureTest, WithoutRegistersPaddingIsMasked) {
  auto config = ConnectorsConfig::FromFile(FixturePath(Dir()) + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  config->video.num_learnable_registers = 0;
  config->audio.num_learnable_registers = 0;
  auto connectors = TextConnectors::CreateSeeded(*config, 21);
  ASSERT_TRUE(connectors.ok()) << connectors.status();
  at::Tensor hidden = FixtureTensor(Io(), "in.text_encoder_hidden_states");
  at::Tensor mask = FixtureTensor(Io(), "in.attention_mask");
  const int64_t t = hidden.size(1);
  const int64_t n = mask[0].sum().item<int64_t>();  // row 0 is left-padded in the fixture
  ASSERT_LT(n, t);
  at::Tensor tokens = hidden[0].narrow(0, t - n, n).unsqueeze(0);  // [1, n, C·L]
  auto gen = at::detail::createCPUGenerator(23);
  at::Tensor padded = at::cat({tokens, at::randn({1, t - n, hidden.size(2)}, gen)}, 1);
  at::Tensor padded_mask = at::cat({at::ones({1, n}, at::kLong), at::zeros({1, t - n}, at::kLong)}, 1);
  TextConnectors::Output alone =
      (*connectors)->Forward(tokens, at::ones({1, n}, at::kLong), PaddingSide::kRight);
  TextConnectors::Output with_pad =
      (*connectors)->Forward(padded, padded_mask, PaddingSide::kRight);
  EXPECT_LE(RelativeError(with_pad.video_text_embedding.narrow(1, 0, n),
                          alone.video_text_embedding),
            1e-5);
  EXPECT_LE(RelativeError(with_pad.audio_text_embedding.narrow(1, 0, n),
                          alone.audio_text_embedding),
            1e-5);
}

INSTANTIATE_TEST_SUITE_P(Variants, ConnectorsFixtureTest, ::testing::Values("v20", "v23"));

// The two LTX-2 normalisations of the Gemma-3 fixture's stacked hidden states.
TEST(ConnectorNormsTest, MatchGemmaFixturePostProcessing) {
  const std::string io = "gemma3-ref-a/gemma3_io.safetensors";
  at::Tensor packed = FixtureTensor(io, "ltx2.prompt_embeds");  // [B, T, D·(L+1)]
  at::Tensor mask = FixtureTensor(io, "in.attention_mask");
  at::Tensor hidden = FixtureTensor(io, "out.hidden_states");  // [L+1, B, T, D]
  const int64_t d = hidden.size(-1);
  at::Tensor x = packed.unflatten(2, {d, -1});
  at::Tensor v20 = PerLayerMaskedMeanNorm(x, mask.sum(-1));
  at::Tensor v23 = PerTokenRmsNorm(x, mask);
  const double e20 = RelativeError(v20, FixtureTensor(io, "ltx2.v20.normalized_prompt_embeds"));
  const double e23 = RelativeError(v23, FixtureTensor(io, "ltx2.v23.normalized_prompt_embeds"));
  std::cout << "per-layer masked mean norm rel err " << e20 << ", per-token rms norm rel err "
            << e23 << "\n";
  EXPECT_LE(e20, 1e-5);
  EXPECT_LE(e23, 1e-5);
}

TEST(ConnectorNormsTest, RightPaddingMirrorsLeftPadding) {
  auto gen = at::detail::createCPUGenerator(5);
  at::Tensor x = at::randn({2, 6, 4, 3}, gen);
  at::Tensor lengths = at::tensor(std::vector<int64_t>{4, 6}, at::kLong);
  at::Tensor left = PerLayerMaskedMeanNorm(x, lengths, PaddingSide::kLeft);
  at::Tensor right = PerLayerMaskedMeanNorm(x.flip(1), lengths, PaddingSide::kRight).flip(1);
  EXPECT_LE(RelativeError(right, left), 1e-6);
  // Row 0's two left pads are zero; its valid values span 8 per layer.
  EXPECT_EQ(left[0].narrow(0, 0, 2).abs().max().item<float>(), 0.0f);
  at::Tensor layer0 = left[0].narrow(0, 2, 4).unflatten(1, {4, 3}).select(2, 0);
  EXPECT_NEAR((layer0.max() - layer0.min()).item<double>(), 8.0, 1e-4);
}

TEST(ConnectorsConfigTest, NullRegistersMeanNone) {
  auto c = ConnectorsConfig::FromJson(nlohmann::json::parse(
      R"({"video_connector_num_learnable_registers": null, "rope_type": "split"})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->video.num_learnable_registers, 0);
  EXPECT_EQ(c->audio.num_learnable_registers, 128);
  EXPECT_EQ(ConnectorsConfig::FromJson(nlohmann::json::parse(R"({"rope_type": "spiral"})"))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
