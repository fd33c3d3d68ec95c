#include "services/denoise/cfg_policy.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "models/core/ops.h"

namespace diffmesh {
namespace {

using models::RelativeError;

// Fresh standard-normal predictions, [B, C, H, W] like the DiT's output; never zeros.
at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::kFloat);
}

std::vector<at::Tensor> RandomPredictions(int n, uint64_t seed,
                                          std::vector<int64_t> shape = {1, 4, 8, 8}) {
  std::vector<at::Tensor> p;
  for (int i = 0; i < n; ++i) p.push_back(Randn(shape, seed * 101 + i));
  return p;
}

std::vector<double> Values(const at::Tensor& t) {
  at::Tensor d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// Hand-computed statistics over a contiguous range of values, in double.
double Norm(const std::vector<double>& v, size_t begin, size_t end) {
  double s = 0;
  for (size_t i = begin; i < end; ++i) s += v[i] * v[i];
  return std::sqrt(s);
}

double UnbiasedStd(const std::vector<double>& v, size_t begin, size_t end) {
  double mean = 0;
  for (size_t i = begin; i < end; ++i) mean += v[i];
  mean /= static_cast<double>(end - begin);
  double ss = 0;
  for (size_t i = begin; i < end; ++i) ss += (v[i] - mean) * (v[i] - mean);
  return std::sqrt(ss / static_cast<double>(end - begin - 1));
}

at::Tensor Embeds(int64_t t, uint64_t seed) { return Randn({1, t, 16}, seed); }

constexpr int64_t kPriorTokens = 12;

// ---------------------------------------------------------------------------------------------
// GLM-Image two-branch CFG.

TEST(GlmImageCfgTest, BranchesCarryGlmImageInputs) {
  at::Tensor prompt = Embeds(5, 1), negative = Embeds(3, 2);
  auto policy = MakeGlmImageCfg(prompt, negative, kPriorTokens, 4.0);
  const auto& b = policy->branches();
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].name, "cond");
  EXPECT_EQ(b[0].kind, BranchKind::kConditional);
  EXPECT_TRUE(b[0].conditional);
  EXPECT_TRUE(b[0].encoder_hidden_states.is_same(prompt));
  EXPECT_EQ(b[0].prior_token_drop.sizes(), (std::vector<int64_t>{1, kPriorTokens}));
  EXPECT_EQ(b[0].prior_token_drop.scalar_type(), at::kBool);
  EXPECT_FALSE(b[0].prior_token_drop.any().item<bool>());
  EXPECT_TRUE(b[0].skip_layers.empty());
  EXPECT_EQ(b[1].name, "uncond");
  EXPECT_EQ(b[1].kind, BranchKind::kNegative);
  EXPECT_FALSE(b[1].conditional);
  EXPECT_TRUE(b[1].encoder_hidden_states.is_same(negative));
  EXPECT_TRUE(b[1].prior_token_drop.all().item<bool>());
  EXPECT_TRUE(b[1].skip_layers.empty());
}

TEST(GlmImageCfgTest, SerialMatchesExplicitFormula) {
  for (double g : {1.5, 4.0, 7.5}) {
    auto policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, g);
    auto p = RandomPredictions(2, 10);
    const at::Tensor& c = p[0];
    const at::Tensor& u = p[1];
    at::Tensor expected = u + g * (c - u);
    at::Tensor got = policy->Combine(p, 0);
    EXPECT_TRUE(at::equal(got, expected)) << "g=" << g << " rel " << RelativeError(got, expected);
    // The step-less overload (used by denoise_core) is the same combine.
    EXPECT_TRUE(at::equal(policy->Combine(p), expected));
  }
}

TEST(GlmImageCfgTest, ParallelOrderAgreesWithSerial) {
  for (double g : {1.5, 4.0, 7.5}) {
    CfgOptions parallel;
    parallel.order = CfgOrder::kParallel;
    auto serial_policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, g);
    auto parallel_policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, g, parallel);
    auto p = RandomPredictions(2, 20);
    at::Tensor explicit_parallel = g * p[0] + (1 - g) * p[1];
    at::Tensor got = parallel_policy->Combine(p, 0);
    EXPECT_LT(RelativeError(got, explicit_parallel), 1e-7);
    const double rel = RelativeError(got, serial_policy->Combine(p, 0));
    EXPECT_LT(rel, 1e-6) << "g=" << g;
    EXPECT_EQ(parallel_policy->Weights(0), (std::vector<double>{g, 1 - g}));
  }
}

TEST(GlmImageCfgTest, GuidanceAtMostOneRunsOnlyTheConditionalBranch) {
  for (double g : {0.0, 0.5, 1.0}) {
    auto policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, g);
    ASSERT_EQ(policy->branches().size(), 1u) << "g=" << g;
    EXPECT_EQ(policy->branches()[0].kind, BranchKind::kConditional);
    EXPECT_FALSE(policy->branches()[0].prior_token_drop.any().item<bool>());
    auto p = RandomPredictions(1, 30);
    EXPECT_TRUE(policy->Combine(p, 0).is_same(p[0]));
    EXPECT_EQ(policy->Weights(0), (std::vector<double>{1.0}));
  }
}

TEST(GlmImageCfgTest, RejectsWrongPredictionCountOrShape) {
  auto policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, 3.0);
  EXPECT_ANY_THROW(policy->Combine(RandomPredictions(1, 40), 0));
  EXPECT_ANY_THROW(policy->Combine(RandomPredictions(3, 40), 0));
  std::vector<at::Tensor> p = {Randn({1, 4, 8, 8}, 1), Randn({1, 4, 8, 4}, 2)};
  EXPECT_ANY_THROW(policy->Combine(p, 0));
}

TEST(GlmImageCfgTest, KeepsPredictionDtype) {
  auto policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, 3.0);
  auto p = RandomPredictions(2, 50);
  std::vector<at::Tensor> half = {p[0].to(at::kBFloat16), p[1].to(at::kBFloat16)};
  at::Tensor got = policy->Combine(half, 0);
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  at::Tensor c = half[0].to(at::kFloat), u = half[1].to(at::kFloat);
  EXPECT_LT(RelativeError(got.to(at::kFloat), u + 3.0 * (c - u)), 1e-2);  // bf16 output rounding
}

// ---------------------------------------------------------------------------------------------
// CFG normalization and guidance rescale against hand-computed references.

TEST(CfgNormalizationTest, CapsGuidedNormPerSampleAtLambdaTimesCond) {
  const double g = 3.0;
  // Sample 0: independent c, u → ‖3c − 2u‖ ≈ √13‖c‖, above the cap. Sample 1: u = 1.1·c →
  // guided = 0.8·c, below the cap, so it must come back untouched.
  at::Tensor c = Randn({2, 4, 8, 8}, 60);
  at::Tensor u = Randn({2, 4, 8, 8}, 61);
  u[1].copy_(c[1] * 1.1);
  for (double lambda : {1.0, 1.5}) {
    CfgOptions opts;
    opts.cfg_normalization = lambda;
    auto policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, g, opts);
    at::Tensor got = policy->Combine({c, u}, 0);

    at::Tensor guided = u + g * (c - u);
    const std::vector<double> gv = Values(guided), cv = Values(c), out = Values(got);
    const size_t per = static_cast<size_t>(c[0].numel());
    for (size_t s = 0; s < 2; ++s) {
      const double cond_norm = Norm(cv, s * per, (s + 1) * per);
      const double guided_norm = Norm(gv, s * per, (s + 1) * per);
      const double factor =
          guided_norm > lambda * cond_norm ? lambda * cond_norm / guided_norm : 1.0;
      EXPECT_EQ(factor < 1.0, s == 0) << "lambda " << lambda << " sample " << s;
      double err = 0, ref = 0;
      for (size_t i = s * per; i < (s + 1) * per; ++i) {
        err += std::pow(out[i] - gv[i] * factor, 2);
        ref += std::pow(gv[i] * factor, 2);
      }
      EXPECT_LT(std::sqrt(err / ref), 1e-6) << "lambda " << lambda << " sample " << s;
      if (s == 0) {
        EXPECT_NEAR(Norm(out, 0, per), lambda * cond_norm, 1e-5 * cond_norm);
      }
    }
    EXPECT_TRUE(at::equal(got[1], guided[1]));
  }
}

TEST(GuidanceRescaleTest, PerSampleStdRatioAsRescaleNoiseCfg) {
  const double g = 5.0;
  at::Tensor c = Randn({2, 4, 8, 8}, 70) * 2 + 0.3;
  at::Tensor u = Randn({2, 4, 8, 8}, 71);
  for (double phi : {0.3, 0.7, 1.0}) {
    CfgOptions opts;
    opts.guidance_rescale = phi;
    auto policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, g, opts);
    at::Tensor got = policy->Combine({c, u}, 0);
    const std::vector<double> gv = Values(u + g * (c - u)), cv = Values(c), out = Values(got);
    const size_t per = static_cast<size_t>(c[0].numel());
    for (size_t s = 0; s < 2; ++s) {
      const double ratio =
          UnbiasedStd(cv, s * per, (s + 1) * per) / UnbiasedStd(gv, s * per, (s + 1) * per);
      double err = 0, ref = 0;
      for (size_t i = s * per; i < (s + 1) * per; ++i) {
        const double expected = phi * gv[i] * ratio + (1 - phi) * gv[i];
        err += std::pow(out[i] - expected, 2);
        ref += expected * expected;
      }
      EXPECT_LT(std::sqrt(err / ref), 1e-6) << "phi " << phi << " sample " << s;
    }
  }
}

TEST(GuidanceRescaleTest, NormalizationRunsBeforeRescale) {
  const double g = 4.0, lambda = 1.0, phi = 0.5;
  at::Tensor c = Randn({1, 4, 8, 8}, 80), u = Randn({1, 4, 8, 8}, 81);
  CfgOptions opts;
  opts.cfg_normalization = lambda;
  opts.guidance_rescale = phi;
  auto policy = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, g, opts);
  at::Tensor got = policy->Combine({c, u}, 0);

  std::vector<double> gv = Values(u + g * (c - u));
  const std::vector<double> cv = Values(c), out = Values(got);
  const size_t n = gv.size();
  const double cap = lambda * Norm(cv, 0, n), norm = Norm(gv, 0, n);
  ASSERT_GT(norm, cap);
  for (double& x : gv) x *= cap / norm;
  const double ratio = UnbiasedStd(cv, 0, n) / UnbiasedStd(gv, 0, n);
  double err = 0, ref = 0;
  for (size_t i = 0; i < n; ++i) {
    const double expected = phi * gv[i] * ratio + (1 - phi) * gv[i];
    err += std::pow(out[i] - expected, 2);
    ref += expected * expected;
  }
  EXPECT_LT(std::sqrt(err / ref), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// LTX-2 style four-branch guidance.

MultiModalGuidanceParams AllFour() {
  MultiModalGuidanceParams params;
  params.cfg_scale = 3.0;
  params.stg_scale = 1.0;
  params.stg_blocks = {5, 7};
  params.modality_scale = 2.5;
  return params;
}

// LTX-2 MultiModalGuider.calculate, written out: c + (g−1)(c−u) + s(c−p) + (m−1)(c−q).
at::Tensor LtxSerial(const at::Tensor& c, const at::Tensor& u, const at::Tensor& p,
                     const at::Tensor& q, const MultiModalGuidanceParams& w) {
  return c + (w.cfg_scale - 1) * (c - u) + w.stg_scale * (c - p) + (w.modality_scale - 1) * (c - q);
}

TEST(MultiModalCfgTest, BuildsFourBranchesWithTheirInputs) {
  at::Tensor prompt = Embeds(5, 1), negative = Embeds(3, 2);
  auto policy = MakeGlmImageMultiModalCfg(prompt, negative, kPriorTokens, AllFour());
  ASSERT_TRUE(policy.ok()) << policy.status();
  const auto& b = (*policy)->branches();
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(b[0].kind, BranchKind::kConditional);
  EXPECT_EQ(b[1].kind, BranchKind::kNegative);
  EXPECT_EQ(b[2].kind, BranchKind::kPerturbed);
  EXPECT_EQ(b[3].kind, BranchKind::kModality);
  EXPECT_EQ(std::string(BranchKindName(b[3].kind)), "modality");
  // cond: prompt glyphs, priors kept.
  EXPECT_TRUE(b[0].encoder_hidden_states.is_same(prompt));
  EXPECT_FALSE(b[0].prior_token_drop.any().item<bool>());
  // uncond: negative glyphs, every prior dropped.
  EXPECT_FALSE(b[1].conditional);
  EXPECT_TRUE(b[1].encoder_hidden_states.is_same(negative));
  EXPECT_TRUE(b[1].prior_token_drop.all().item<bool>());
  // perturbed: conditional inputs, attention skipped in the STG blocks.
  EXPECT_TRUE(b[2].conditional);
  EXPECT_TRUE(b[2].encoder_hidden_states.is_same(prompt));
  EXPECT_FALSE(b[2].prior_token_drop.any().item<bool>());
  EXPECT_EQ(b[2].skip_layers, (std::vector<int64_t>{5, 7}));
  // modality: glyph text kept, the prior-token modality dropped.
  EXPECT_TRUE(b[3].conditional);
  EXPECT_TRUE(b[3].encoder_hidden_states.is_same(prompt));
  EXPECT_TRUE(b[3].prior_token_drop.all().item<bool>());
  EXPECT_TRUE(b[3].skip_layers.empty());
  for (const auto& branch : b) {
    EXPECT_EQ(branch.prior_token_drop.sizes(), (std::vector<int64_t>{1, kPriorTokens}));
  }
}

TEST(MultiModalCfgTest, SerialMatchesLtx2Formula) {
  MultiModalGuidanceParams params = AllFour();
  auto policy = MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, params);
  ASSERT_TRUE(policy.ok());
  auto p = RandomPredictions(4, 90);
  at::Tensor expected = LtxSerial(p[0], p[1], p[2], p[3], params);
  at::Tensor got = (*policy)->Combine(p, 3);
  EXPECT_TRUE(at::equal(got, expected)) << RelativeError(got, expected);
}

TEST(MultiModalCfgTest, InactiveTermsDropTheirBranches) {
  struct Case {
    double g, s, m;
    std::vector<BranchKind> kinds;
  };
  const std::vector<Case> cases = {
      {1.0, 0.0, 1.0, {BranchKind::kConditional}},
      {4.0, 0.0, 1.0, {BranchKind::kConditional, BranchKind::kNegative}},
      {1.0, 0.7, 1.0, {BranchKind::kConditional, BranchKind::kPerturbed}},
      {1.0, 0.0, 3.0, {BranchKind::kConditional, BranchKind::kModality}},
      {0.5, 0.0, 2.0, {BranchKind::kConditional, BranchKind::kNegative, BranchKind::kModality}},
      {3.0, 1.0, 1.0, {BranchKind::kConditional, BranchKind::kNegative, BranchKind::kPerturbed}},
  };
  for (const Case& k : cases) {
    MultiModalGuidanceParams params;
    params.cfg_scale = k.g;
    params.stg_scale = k.s;
    params.stg_blocks = {2};
    params.modality_scale = k.m;
    auto policy = MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, params);
    ASSERT_TRUE(policy.ok());
    const auto& b = (*policy)->branches();
    ASSERT_EQ(b.size(), k.kinds.size());
    for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b[i].kind, k.kinds[i]);

    // Absent branches contribute nothing: feed the full formula with c in their place.
    auto p = RandomPredictions(static_cast<int>(b.size()), 100);
    at::Tensor u = p[0], pert = p[0], q = p[0];
    for (size_t i = 1; i < b.size(); ++i) {
      if (b[i].kind == BranchKind::kNegative) u = p[i];
      if (b[i].kind == BranchKind::kPerturbed) pert = p[i];
      if (b[i].kind == BranchKind::kModality) q = p[i];
    }
    at::Tensor expected = LtxSerial(p[0], u, pert, q, params);
    at::Tensor got = (*policy)->Combine(p, 0);
    EXPECT_LT(RelativeError(got, expected), 1e-6) << k.g << " " << k.s << " " << k.m;
    if (b.size() == 1) {
      EXPECT_TRUE(got.is_same(p[0]));
    }
  }
}

TEST(MultiModalCfgTest, ParallelOrderAndWeightsAgreeWithSerial) {
  MultiModalGuidanceParams params = AllFour();
  CfgOptions parallel;
  parallel.order = CfgOrder::kParallel;
  auto serial = MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, params);
  auto par = MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, params, parallel);
  ASSERT_TRUE(serial.ok() && par.ok());
  const double g = params.cfg_scale, s = params.stg_scale, m = params.modality_scale;
  const std::vector<double> w = (*par)->Weights(0);
  const std::vector<double> expected_w = {g + s + m - 1, 1 - g, -s, 1 - m};
  ASSERT_EQ(w.size(), 4u);
  double sum = 0;
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(w[i], expected_w[i]);
    sum += w[i];
  }
  EXPECT_DOUBLE_EQ(sum, 1.0);  // an affine combination
  EXPECT_EQ((*serial)->Weights(0), w);

  auto p = RandomPredictions(4, 110);
  at::Tensor explicit_parallel =
      (g + s + m - 1) * p[0] + (1 - g) * p[1] + (-s) * p[2] + (1 - m) * p[3];
  at::Tensor got = (*par)->Combine(p, 0);
  EXPECT_LT(RelativeError(got, explicit_parallel), 1e-7);
  EXPECT_LT(RelativeError(got, (*serial)->Combine(p, 0)), 1e-6);
}

TEST(MultiModalCfgTest, Ltx2RescaleUsesWholeTensorStd) {
  MultiModalGuidanceParams params = AllFour();
  params.rescale_scale = 0.7;
  auto policy = MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, params);
  ASSERT_TRUE(policy.ok());
  EXPECT_EQ((*policy)->options().rescale_stats, RescaleStats::kWholeTensor);
  // Batch 2 so that whole-tensor and per-sample statistics differ.
  auto p = RandomPredictions(4, 120, {2, 4, 8, 8});
  p[0][1].mul_(3.0);
  at::Tensor got = (*policy)->Combine(p, 0);

  const std::vector<double> gv = Values(LtxSerial(p[0], p[1], p[2], p[3], params));
  const std::vector<double> cv = Values(p[0]), out = Values(got);
  const double r = params.rescale_scale;
  const double factor = r * UnbiasedStd(cv, 0, cv.size()) / UnbiasedStd(gv, 0, gv.size()) + (1 - r);
  double err = 0, ref = 0;
  for (size_t i = 0; i < gv.size(); ++i) {
    err += std::pow(out[i] - gv[i] * factor, 2);
    ref += std::pow(gv[i] * factor, 2);
  }
  EXPECT_LT(std::sqrt(err / ref), 1e-6);
}

TEST(MultiModalCfgTest, SkipStepFollowsLtx2) {
  MultiModalGuidanceParams params = AllFour();
  params.skip_step = 2;
  auto policy = MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, params);
  ASSERT_TRUE(policy.ok());
  std::vector<bool> skipped;
  for (int64_t step = 0; step < 7; ++step) skipped.push_back((*policy)->ShouldSkipStep(step));
  EXPECT_EQ(skipped, (std::vector<bool>{false, true, true, false, true, true, false}));
  auto never = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, 3.0);
  for (int64_t step = 0; step < 7; ++step) EXPECT_FALSE(never->ShouldSkipStep(step));
}

TEST(MultiModalCfgTest, RejectsInvalidParams) {
  MultiModalGuidanceParams no_blocks = AllFour();
  no_blocks.stg_blocks.clear();
  EXPECT_FALSE(MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, no_blocks).ok());
  MultiModalGuidanceParams bad_rescale = AllFour();
  bad_rescale.rescale_scale = 1.5;
  EXPECT_FALSE(
      MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, bad_rescale).ok());
  MultiModalGuidanceParams rescale = AllFour();
  rescale.rescale_scale = 0.5;
  CfgOptions also;
  also.guidance_rescale = 0.5;
  EXPECT_FALSE(
      MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, rescale, also).ok());
  EXPECT_FALSE(MakeGlmImageMultiModalCfg(Embeds(5, 1), at::Tensor(), kPriorTokens, AllFour()).ok());
  MultiModalGuidanceParams negative_skip = AllFour();
  negative_skip.skip_step = -1;
  EXPECT_FALSE(
      MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, negative_skip).ok());
}

// ---------------------------------------------------------------------------------------------
// CFG-parallel dispatch.

TEST(AssignBranchesTest, EveryBranchExactlyOnceRoundRobin) {
  const std::vector<std::pair<int, std::vector<int>>> cases = {{2, {1, 2, 3, 4}},
                                                               {4, {1, 2, 3, 4, 8}}};
  for (const auto& [n, degrees] : cases) {
    for (int cfg : degrees) {
      const auto ranks = AssignBranches(n, cfg);
      ASSERT_EQ(static_cast<int>(ranks.size()), cfg);
      const int slots = NumGatherSlots(n, cfg);
      EXPECT_EQ(slots, (n + cfg - 1) / cfg);
      std::multiset<int> seen;
      for (int r = 0; r < cfg; ++r) {
        EXPECT_LE(static_cast<int>(ranks[r].size()), slots);
        for (size_t j = 0; j < ranks[r].size(); ++j) {
          // Rank r runs branches r, r + cfg, r + 2·cfg, ... in that order.
          EXPECT_EQ(ranks[r][j], r + static_cast<int>(j) * cfg) << n << "/" << cfg;
          seen.insert(ranks[r][j]);
        }
        if (r >= n) {
          EXPECT_TRUE(ranks[r].empty()) << "rank " << r << " of " << cfg << " for " << n;
        }
      }
      ASSERT_EQ(static_cast<int>(seen.size()), n) << n << "/" << cfg;
      for (int i = 0; i < n; ++i) EXPECT_EQ(seen.count(i), 1u) << n << "/" << cfg << " " << i;
    }
  }
  // Exact lists for two shapes the lead will meet.
  EXPECT_EQ(AssignBranches(4, 3), (std::vector<std::vector<int>>{{0, 3}, {1}, {2}}));
  EXPECT_EQ(AssignBranches(2, 4), (std::vector<std::vector<int>>{{0}, {1}, {}, {}}));
}

// The layout a cfg all_gather of per-rank padded tensors produces, built by hand: rank r's slot j
// holds branch r + j·cfg (B rows), missing branches are zeros.
at::Tensor ManualGathered(const std::vector<at::Tensor>& p, int cfg) {
  const int n = static_cast<int>(p.size());
  const int slots = (n + cfg - 1) / cfg;
  const int64_t b = p[0].size(0);
  std::vector<int64_t> shape = p[0].sizes().vec();
  shape[0] = cfg * slots * b;
  at::Tensor gathered = at::zeros(shape, p[0].options());
  for (int r = 0; r < cfg; ++r) {
    for (int j = 0; j < slots; ++j) {
      const int branch = r + j * cfg;
      if (branch < n) gathered.narrow(0, (r * slots + j) * b, b).copy_(p[branch]);
    }
  }
  return gathered;
}

TEST(BranchOrderFromGatheredTest, GatheredCombineEqualsSerialExactly) {
  auto two = MakeGlmImageCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, 4.0);
  auto four = MakeGlmImageMultiModalCfg(Embeds(5, 1), Embeds(3, 2), kPriorTokens, AllFour());
  ASSERT_TRUE(four.ok());
  for (const CfgPolicy* policy : {two.get(), four->get()}) {
    const int n = static_cast<int>(policy->branches().size());
    for (int64_t batch : {1, 2}) {
      auto p = RandomPredictions(n, 130 + n, {batch, 4, 8, 8});
      const at::Tensor serial = policy->Combine(p, 0);
      for (int cfg : {1, 2, 3, 4, 8}) {
        const at::Tensor gathered = ManualGathered(p, cfg);
        // What each rank packs with PackRankPredictions, concatenated rank-major, is the same.
        const auto ranks = AssignBranches(n, cfg);
        std::vector<at::Tensor> packed;
        for (const auto& mine : ranks) {
          std::vector<at::Tensor> local;
          for (int i : mine) local.push_back(p[i]);
          packed.push_back(PackRankPredictions(local, p[0], n, cfg));
        }
        EXPECT_TRUE(at::equal(at::cat(packed, 0), gathered)) << n << "/" << cfg;

        const std::vector<at::Tensor> ordered = BranchOrderFromGathered(gathered, n, cfg);
        ASSERT_EQ(static_cast<int>(ordered.size()), n);
        for (int i = 0; i < n; ++i) EXPECT_TRUE(at::equal(ordered[i], p[i])) << i;
        EXPECT_TRUE(at::equal(policy->Combine(ordered, 0), serial))
            << "n=" << n << " cfg=" << cfg << " batch=" << batch;
      }
    }
  }
}

TEST(BranchOrderFromGatheredTest, RejectsBadLayout) {
  EXPECT_ANY_THROW(BranchOrderFromGathered(Randn({3, 4}, 1), 4, 2));  // 2 ranks x 2 slots
  // Two branches over two ranks leave one slot per rank.
  const std::vector<at::Tensor> too_many = {Randn({1, 4}, 1), Randn({1, 4}, 2)};
  EXPECT_ANY_THROW(PackRankPredictions(too_many, Randn({1, 4}, 3), 2, 2));
}

}  // namespace
}  // namespace diffmesh
