#include "models/glm_image/dit.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/weights.h"

namespace diffmesh::models::glm_image {
namespace {

const std::string kTransformerDir = "glm-image-ref-a/transformer";

at::Tensor Fixture(const Checkpoint& ckpt, const std::string& name) {
  const TensorView* v = ckpt.Find(name);
  EXPECT_NE(v, nullptr) << "fixture lacks " << name;
  return v == nullptr ? at::Tensor() : ToTensor(*v);
}

TEST(GlmImageDitTest, ConfigFromFixture) {
  auto config = DitConfig::FromFile(FixturePath(kTransformerDir + "/config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_layers, 2);
  EXPECT_EQ(config->num_attention_heads, 4);
  EXPECT_EQ(config->attention_head_dim, 16);
  EXPECT_EQ(config->text_embed_dim, 32);
  EXPECT_EQ(config->time_embed_dim, 32);
  EXPECT_EQ(config->condition_dim, 16);
  EXPECT_EQ(config->prior_vq_quantizer_codebook_size, 64);

  // Missing keys take the diffusers constructor defaults.
  auto defaults = DitConfig::FromJson(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->num_layers, 30);
  EXPECT_EQ(defaults->inner_dim(), 64 * 40);
  EXPECT_EQ(defaults->text_embed_dim, 1472);
  EXPECT_EQ(defaults->prior_vq_quantizer_codebook_size, 16384);

  EXPECT_FALSE(DitConfig::FromJson({{"num_layers", "two"}}).ok());
  EXPECT_FALSE(DitConfig::FromJson({{"attention_head_dim", 10}}).ok());
}

TEST(GlmImageDitTest, ParamsEqualCheckpoint) {
  auto config = DitConfig::FromFile(FixturePath(kTransformerDir + "/config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(FixturePath(kTransformerDir));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();

  std::map<std::string, std::vector<int64_t>> expected;
  for (const auto& [name, view] : (*ckpt)->tensors()) expected[name] = view->shape;
  std::map<std::string, std::vector<int64_t>> declared;
  for (const ParamSpec& s : GlmImageDit::Params(*config)) {
    EXPECT_TRUE(declared.emplace(s.name, s.shape).second) << "duplicate " << s.name;
  }
  EXPECT_EQ(declared, expected);
}

TEST(GlmImageDitTest, MatchesReferenceForward) {
  auto dit = GlmImageDit::Load(FixturePath(kTransformerDir));
  ASSERT_TRUE(dit.ok()) << dit.status();
  auto io = Checkpoint::Open(FixturePath("glm-image-ref-a/transformer_io.safetensors"));
  ASSERT_TRUE(io.ok()) << io.status();

  DitInputs in;
  in.hidden_states = Fixture(**io, "hidden_states");
  in.encoder_hidden_states = Fixture(**io, "encoder_hidden_states");
  in.prior_token_id = Fixture(**io, "prior_token_id");
  in.prior_token_drop = Fixture(**io, "prior_token_drop");
  in.timestep = Fixture(**io, "timestep");
  in.target_size = Fixture(**io, "target_size");
  in.crop_coords = Fixture(**io, "crop_coords");
  at::Tensor expected = Fixture(**io, "sample");
  // The fixture must exercise the drop path on some, not all, tokens.
  const int64_t dropped = in.prior_token_drop.ne(0).sum().item<int64_t>();
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, in.prior_token_drop.numel());

  at::Tensor out = (*dit)->Forward(in);
  ASSERT_EQ(out.sizes(), expected.sizes());
  const double err = RelativeError(out, expected);
  RecordProperty("rel_err", std::to_string(err));
  std::printf("transformer forward rel err = %.3g\n", err);
  EXPECT_LE(err, 1e-5);

  // A bool drop mask is the same as the uint8 one.
  DitInputs bool_in = in;
  bool_in.prior_token_drop = in.prior_token_drop.to(at::kBool);
  EXPECT_TRUE(at::equal((*dit)->Forward(bool_in), out));
}

DitConfig TinyConfig() {
  DitConfig c;
  c.patch_size = 2;
  c.in_channels = 4;
  c.out_channels = 4;
  c.num_layers = 2;
  c.attention_head_dim = 8;
  c.num_attention_heads = 2;
  c.text_embed_dim = 12;
  c.time_embed_dim = 16;
  c.condition_dim = 8;
  c.prior_vq_quantizer_codebook_size = 32;
  return c;
}

DitInputs TinyInputs(const DitConfig& c, int64_t batch, int64_t text_len, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t h = 8, w = 6, n = (h / c.patch_size) * (w / c.patch_size);
  DitInputs in;
  in.hidden_states = at::normal(0.0, 1.0, {batch, c.in_channels, h, w}, gen);
  in.encoder_hidden_states = at::normal(0.0, 1.0, {batch, text_len, c.text_embed_dim}, gen);
  in.prior_token_id =
      at::randint(0, c.prior_vq_quantizer_codebook_size, {batch, n}, gen, at::kLong);
  in.prior_token_drop = at::rand({batch, n}, gen).lt(0.3);
  in.timestep = at::rand({batch}, gen) * 999;
  in.target_size = at::full({batch, 2}, 64.0);
  in.crop_coords = at::zeros({batch, 2});
  return in;
}

std::unique_ptr<GlmImageDit> TinyDit(uint64_t seed) {
  const DitConfig c = TinyConfig();
  auto dit = GlmImageDit::Create(c, InitSeeded(GlmImageDit::Params(c), seed));
  EXPECT_TRUE(dit.ok()) << dit.status();
  return dit.ok() ? std::move(dit).value() : nullptr;
}

TEST(GlmImageDitTest, TinySeededDeterministicAndFinite) {
  auto a = TinyDit(7);
  auto b = TinyDit(7);
  ASSERT_TRUE(a && b);
  const DitInputs in = TinyInputs(TinyConfig(), 2, 5, 11);
  at::Tensor ya = a->Forward(in);
  at::Tensor yb = b->Forward(in);
  EXPECT_EQ(ya.sizes(), in.hidden_states.sizes());
  EXPECT_TRUE(at::equal(ya, yb));
  EXPECT_TRUE(at::isfinite(ya).all().item<bool>());
  EXPECT_GT(ya.abs().sum().item<double>(), 0.0);
}

TEST(GlmImageDitTest, TinyBatchEqualsPerSample) {
  auto dit = TinyDit(3);
  ASSERT_TRUE(dit);
  const DitInputs in = TinyInputs(TinyConfig(), 2, 5, 5);
  at::Tensor batched = dit->Forward(in);
  for (int64_t i = 0; i < 2; ++i) {
    DitInputs one;
    one.hidden_states = in.hidden_states.narrow(0, i, 1);
    one.encoder_hidden_states = in.encoder_hidden_states.narrow(0, i, 1);
    one.prior_token_id = in.prior_token_id.narrow(0, i, 1);
    one.prior_token_drop = in.prior_token_drop.narrow(0, i, 1);
    one.timestep = in.timestep.narrow(0, i, 1);
    one.target_size = in.target_size.narrow(0, i, 1);
    one.crop_coords = in.crop_coords.narrow(0, i, 1);
    EXPECT_LE(RelativeError(dit->Forward(one), batched.narrow(0, i, 1)), 1e-6);
  }
}

TEST(GlmImageDitTest, DroppedPriorTokensIgnoreIds) {
  auto dit = TinyDit(3);
  ASSERT_TRUE(dit);
  DitInputs in = TinyInputs(TinyConfig(), 1, 3, 9);
  in.prior_token_drop = at::ones_like(in.prior_token_id, at::kBool);
  at::Tensor y1 = dit->Forward(in);
  in.prior_token_id = (in.prior_token_id + 1) % TinyConfig().prior_vq_quantizer_codebook_size;
  EXPECT_TRUE(at::equal(dit->Forward(in), y1));
}

TEST(GlmImageDitTest, EmptyTextStream) {
  // The pipeline's condition-image pass uses zero text tokens.
  auto dit = TinyDit(3);
  ASSERT_TRUE(dit);
  at::Tensor y = dit->Forward(TinyInputs(TinyConfig(), 1, 0, 4));
  EXPECT_TRUE(at::isfinite(y).all().item<bool>());
}

TEST(GlmImageDitTest, AttentionFnIsPluggable) {
  auto dit = TinyDit(5);
  ASSERT_TRUE(dit);
  const DitConfig c = TinyConfig();
  const DitInputs in = TinyInputs(c, 1, 4, 6);
  at::Tensor reference = dit->Forward(in);

  // A plain softmax attention that also checks the contract: [B, heads, S, head_dim].
  int calls = 0;
  const int64_t seq = 4 + (8 / 2) * (6 / 2);
  dit->set_attention_fn([&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    ++calls;
    EXPECT_EQ(q.sizes(), at::IntArrayRef({1, c.num_attention_heads, seq, c.attention_head_dim}));
    at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(8.0);
    return at::matmul(at::softmax(scores, -1), v);
  });
  at::Tensor custom = dit->Forward(in);
  EXPECT_EQ(calls, c.num_layers);
  EXPECT_LE(RelativeError(custom, reference), 1e-5);
}

TEST(GlmImageDitTest, Bfloat16CloseToFloat32) {
  const DitConfig c = TinyConfig();
  WeightMap w = InitSeeded(GlmImageDit::Params(c), 13);
  WeightMap w16;
  for (const auto& [name, t] : w) w16.emplace(name, t.to(at::kBFloat16));
  auto f32 = GlmImageDit::Create(c, w);
  auto b16 = GlmImageDit::Create(c, w16);
  ASSERT_TRUE(f32.ok() && b16.ok());
  EXPECT_EQ((*b16)->dtype(), at::kBFloat16);
  const DitInputs in = TinyInputs(c, 1, 3, 8);
  at::Tensor y16 = (*b16)->Forward(in);
  EXPECT_EQ(y16.scalar_type(), at::kBFloat16);
  const double err = RelativeError(y16.to(at::kFloat), (*f32)->Forward(in));
  std::printf("tiny bf16 vs fp32 rel err = %.3g\n", err);
  EXPECT_LE(err, 3e-2);
}

// On CUDA the per-head q/k LayerNorm and the rotary step run as one kernel
// (cuda/qk_norm_rope.cu); it must give the CPU composition's result (fp32: to rounding; bf16:
// to bf16 accuracy) for the head sizes it takes, with a text prefix and a batch of two.
TEST(GlmImageDitTest, CudaQkNormRopeMatchesTheCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (int64_t head_dim : {32, 64, 128}) {
    DitConfig c = TinyConfig();
    c.attention_head_dim = head_dim;
    WeightMap w = InitSeeded(GlmImageDit::Params(c), 21);
    WeightMap w_cuda, w_bf16;
    for (const auto& [name, t] : w) {
      w_cuda.emplace(name, t.to(at::kCUDA));
      w_bf16.emplace(name, t.to(at::kCUDA).to(at::kBFloat16));
    }
    auto cpu = GlmImageDit::Create(c, w);
    auto gpu = GlmImageDit::Create(c, w_cuda);
    auto gpu16 = GlmImageDit::Create(c, w_bf16);
    ASSERT_TRUE(cpu.ok() && gpu.ok() && gpu16.ok());
    DitInputs in = TinyInputs(c, 2, 3, 9);
    DitInputs in_cuda = in;
    for (at::Tensor* t : {&in_cuda.hidden_states, &in_cuda.encoder_hidden_states,
                          &in_cuda.prior_token_id, &in_cuda.prior_token_drop, &in_cuda.timestep,
                          &in_cuda.target_size, &in_cuda.crop_coords}) {
      *t = t->to(at::kCUDA);
    }
    const at::Tensor expected = (*cpu)->Forward(in);
    const double err32 = RelativeError((*gpu)->Forward(in_cuda).cpu(), expected);
    const double err16 = RelativeError((*gpu16)->Forward(in_cuda).to(at::kFloat).cpu(), expected);
    std::printf("head_dim %ld: cuda fp32 rel err %.3g, bf16 %.3g\n", static_cast<long>(head_dim),
                err32, err16);
    EXPECT_LE(err32, 1e-5) << "head_dim " << head_dim;
    EXPECT_LE(err16, 3e-2) << "head_dim " << head_dim;
  }
}

TEST(GlmImageDitTest, CreateRejectsWrongWeights) {
  const DitConfig c = TinyConfig();
  WeightMap w = InitSeeded(GlmImageDit::Params(c), 1);
  w.erase("proj_out.bias");
  EXPECT_FALSE(GlmImageDit::Create(c, w).ok());
}

}  // namespace
}  // namespace diffmesh::models::glm_image
