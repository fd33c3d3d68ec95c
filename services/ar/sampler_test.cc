#include "services/ar/sampler.h"

#include <ATen/ATen.h>

#include <vector>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

using models::glm_image::ArSampling;

std::vector<at::Generator> Generators(int n, uint64_t seed) {
  std::vector<at::Generator> g;
  for (int i = 0; i < n; ++i) g.push_back(at::detail::createCPUGenerator(seed + i));
  return g;
}

std::vector<at::Generator*> Pointers(std::vector<at::Generator>& g) {
  std::vector<at::Generator*> p;
  for (auto& x : g) p.push_back(&x);
  return p;
}

TEST(SamplerTest, DrawsFollowTheSoftmaxOfTheAllowedTokens) {
  // Logits of 5 tokens; only the first 4 are allowed (the 5th is a marker with huge logit).
  at::Tensor logits = at::tensor({std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f), 50.f})
                          .view({1, 5});
  ArSampling s;
  s.temperature = 1.0f;
  s.top_k = 0;
  s.top_p = 1.0f;
  auto gens = Generators(1, 7);
  std::vector<int> counts(5, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    counts[SampleTokens(logits, 4, s, Pointers(gens))[0].item<int64_t>()]++;
  }
  EXPECT_EQ(counts[4], 0);
  const double expected[4] = {0.1, 0.2, 0.3, 0.4};
  for (int t = 0; t < 4; ++t) {
    EXPECT_NEAR(counts[t] / static_cast<double>(n), expected[t], 0.015) << "token " << t;
  }
}

TEST(SamplerTest, TopKAndTopPKeepOnlyTheirTokens) {
  at::Tensor logits = at::log(at::tensor({0.05f, 0.5f, 0.3f, 0.15f})).view({1, 4});
  auto gens = Generators(1, 3);
  ArSampling k1{1.0f, 1, 1.0f};
  ArSampling p_half{1.0f, 0, 0.5f};  // 0.5 alone reaches it
  ArSampling p_07{1.0f, 0, 0.7f};    // 0.5 + 0.3
  std::vector<int> seen_p07(4, 0);
  for (int i = 0; i < 2000; ++i) {
    EXPECT_EQ(SampleTokens(logits, 4, k1, Pointers(gens))[0].item<int64_t>(), 1);
    EXPECT_EQ(SampleTokens(logits, 4, p_half, Pointers(gens))[0].item<int64_t>(), 1);
    seen_p07[SampleTokens(logits, 4, p_07, Pointers(gens))[0].item<int64_t>()]++;
  }
  EXPECT_EQ(seen_p07[0], 0);
  EXPECT_EQ(seen_p07[3], 0);
  EXPECT_GT(seen_p07[1], 0);
  EXPECT_GT(seen_p07[2], 0);
  ArSampling greedy{0.0f, 0, 1.0f};
  EXPECT_EQ(SampleTokens(logits, 4, greedy, Pointers(gens))[0].item<int64_t>(), 1);
}

TEST(SamplerTest, ARowsDrawDoesNotDependOnItsBatch) {
  auto gen = at::detail::createCPUGenerator(0);
  at::Tensor logits = at::randn({6, 300}, gen);
  ArSampling s{0.9f, 50, 0.75f};
  auto alone = Generators(6, 100);
  std::vector<int64_t> one_by_one;
  for (int i = 0; i < 6; ++i) {
    std::vector<at::Generator*> g = {&alone[i]};
    one_by_one.push_back(SampleTokens(logits.narrow(0, i, 1), 300, s, g)[0].item<int64_t>());
  }
  auto batched = Generators(6, 100);
  at::Tensor together = SampleTokens(logits, 300, s, Pointers(batched));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(together[i].item<int64_t>(), one_by_one[i]) << "row " << i;
}

}  // namespace
}  // namespace diffmesh
