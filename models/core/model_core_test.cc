#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "models/core/ops.h"
#include "models/core/weights.h"

namespace diffmesh::models {
namespace {

TEST(WeightsTest, SeededInitIsDeterministicAndPerName) {
  std::vector<ParamSpec> specs;
  AddLinear(specs, "proj", 8, 4);
  specs.push_back({"norm.weight", {4}, Init::kOnes});
  WeightMap a = InitSeeded(specs, 7), b = InitSeeded(specs, 7), c = InitSeeded(specs, 8);
  EXPECT_TRUE(at::equal(a["proj.weight"], b["proj.weight"]));
  EXPECT_FALSE(at::equal(a["proj.weight"], c["proj.weight"]));
  EXPECT_TRUE(at::equal(a["norm.weight"], at::ones({4})));
  EXPECT_TRUE(at::equal(a["proj.bias"], at::zeros({4})));
  // Adding a parameter leaves the others unchanged.
  specs.push_back({"extra", {3}, Init::kNormal});
  WeightMap d = InitSeeded(specs, 7);
  EXPECT_TRUE(at::equal(a["proj.weight"], d["proj.weight"]));
  EXPECT_TRUE(CheckWeights(d, specs).ok());
  EXPECT_EQ(CheckWeights(a, specs).code(), absl::StatusCode::kNotFound);
}

TEST(OpsTest, AttentionMatchesExplicitSoftmaxWithGroupedHeads) {
  at::manual_seed(0);
  at::Tensor q = at::randn({2, 4, 5, 8}), k = at::randn({2, 2, 7, 8}), v = at::randn({2, 2, 7, 8});
  at::Tensor out = Attention(q, k, v);
  at::Tensor kk = k.repeat_interleave(2, 1), vv = v.repeat_interleave(2, 1);
  at::Tensor ref = at::matmul(at::softmax(at::matmul(q, kk.transpose(-2, -1)) / std::sqrt(8.0), -1), vv);
  EXPECT_LT(RelativeError(out, ref), 1e-6);
}

TEST(OpsTest, CausalAttentionIgnoresTheFuture) {
  at::manual_seed(1);
  at::Tensor q = at::randn({1, 2, 6, 4}), k = at::randn({1, 2, 6, 4}), v = at::randn({1, 2, 6, 4});
  at::Tensor full = Attention(q, k, v, std::nullopt, /*causal=*/true);
  // Query 0 sees only key 0; the rest equal an explicit -inf mask above the diagonal.
  EXPECT_LT(RelativeError(full.select(2, 0), v.select(2, 0)), 1e-6);
  at::Tensor mask = at::full({6, 6}, -std::numeric_limits<float>::infinity()).triu(1);
  EXPECT_LT(RelativeError(full, Attention(q, k, v, mask)), 1e-6);
  EXPECT_GT(RelativeError(full, Attention(q, k, v)), 1e-2);
}

TEST(OpsTest, RmsNormNormalises) {
  at::manual_seed(2);
  at::Tensor x = at::randn({3, 16}) * 5;
  at::Tensor y = RmsNorm(x, at::ones({16}), 1e-6);
  EXPECT_LT(RelativeError(y.pow(2).mean(-1), at::ones({3})), 1e-4);
}

}  // namespace
}  // namespace diffmesh::models
