#include "services/denoise/cfg_policy.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace diffmesh {
namespace {

// Python's math.isclose with its defaults (rel_tol 1e-9, abs_tol 0), which LTX-2 uses to decide
// whether a branch runs: only exactly 0 is close to 0.
bool IsClose(double a, double b) {
  return std::fabs(a - b) <= 1e-9 * std::max(std::fabs(a), std::fabs(b));
}

// [B] per-sample statistic → [B, 1, ..., 1] so it broadcasts against a [B, ...] prediction.
at::Tensor PerSampleView(const at::Tensor& stat, const at::Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = like.size(0);
  return stat.reshape(shape);
}

// L2 norm of each sample over all its non-batch elements: [B, ...] → [B, 1, ..., 1].
at::Tensor PerSampleNorm(const at::Tensor& x) {
  return PerSampleView(x.reshape({x.size(0), -1}).pow(2).sum({1}).sqrt(), x);
}

// SGLang `_apply_cfg_normalization` (per sample, see the header): caps ‖guided‖ at λ·‖cond‖.
at::Tensor NormalizeToCond(const at::Tensor& guided, const at::Tensor& cond, double limit) {
  at::Tensor max_norm = PerSampleNorm(cond) * limit;
  at::Tensor new_norm = PerSampleNorm(guided);
  // Samples within the cap keep factor 1 exactly; the quotient is only taken where it is used
  // (a zero guided norm never exceeds the cap).
  at::Tensor factor = at::where(new_norm > max_norm, max_norm / new_norm, at::ones_like(new_norm));
  return guided * factor;
}

// diffusers `rescale_noise_cfg` (kPerSample) or LTX-2 MultiModalGuider's rescale (kWholeTensor).
at::Tensor RescaleToCond(const at::Tensor& guided, const at::Tensor& cond, double phi,
                         RescaleStats stats) {
  if (stats == RescaleStats::kWholeTensor) {
    at::Tensor factor = cond.std(/*unbiased=*/true) / guided.std(/*unbiased=*/true);
    factor = factor * phi + (1.0 - phi);
    return guided * factor;
  }
  const int64_t b = guided.size(0);
  at::Tensor std_cond =
      PerSampleView(cond.reshape({b, -1}).std({1}, /*unbiased=*/true, /*keepdim=*/false), cond);
  at::Tensor std_guided =
      PerSampleView(guided.reshape({b, -1}).std({1}, /*unbiased=*/true, /*keepdim=*/false), guided);
  at::Tensor rescaled = guided * (std_cond / std_guided);
  return rescaled * phi + guided * (1.0 - phi);
}

class TwoBranchCfg final : public CfgPolicy {
 public:
  TwoBranchCfg(std::vector<CfgBranch> branches, double guidance, CfgOptions options)
      : CfgPolicy(std::move(branches), options), guidance_(guidance) {}

  std::vector<double> Weights(int64_t /*step*/) const override {
    if (branches().size() == 1) return {1.0};
    return {guidance_, 1.0 - guidance_};
  }

 protected:
  // u + g·(c − u)
  at::Tensor CombineSerial(const std::vector<at::Tensor>& p, int64_t /*step*/) const override {
    return p[1] + (p[0] - p[1]) * guidance_;
  }

 private:
  double guidance_;
};

class MultiModalCfg final : public CfgPolicy {
 public:
  MultiModalCfg(std::vector<CfgBranch> branches, MultiModalGuidanceParams params,
                CfgOptions options)
      : CfgPolicy(std::move(branches), options), params_(std::move(params)) {
    for (size_t i = 0; i < this->branches().size(); ++i) {
      switch (this->branches()[i].kind) {
        case BranchKind::kConditional:
          break;
        case BranchKind::kNegative:
          negative_ = static_cast<int>(i);
          break;
        case BranchKind::kPerturbed:
          perturbed_ = static_cast<int>(i);
          break;
        case BranchKind::kModality:
          modality_ = static_cast<int>(i);
          break;
      }
    }
  }

  std::vector<double> Weights(int64_t /*step*/) const override {
    std::vector<double> w(branches().size(), 0.0);
    w[0] = 1.0;
    if (negative_ >= 0) {
      w[0] += params_.cfg_scale - 1.0;
      w[negative_] = 1.0 - params_.cfg_scale;
    }
    if (perturbed_ >= 0) {
      w[0] += params_.stg_scale;
      w[perturbed_] = -params_.stg_scale;
    }
    if (modality_ >= 0) {
      w[0] += params_.modality_scale - 1.0;
      w[modality_] = 1.0 - params_.modality_scale;
    }
    return w;
  }

  bool ShouldSkipStep(int64_t step) const override {
    return params_.skip_step != 0 && step % (params_.skip_step + 1) != 0;
  }

 protected:
  // c + (g − 1)·(c − u) + s·(c − p) + (m − 1)·(c − q), left to right as in MultiModalGuider.
  at::Tensor CombineSerial(const std::vector<at::Tensor>& p, int64_t /*step*/) const override {
    const at::Tensor& c = p[0];
    at::Tensor pred = c;
    if (negative_ >= 0) pred = pred + (c - p[negative_]) * (params_.cfg_scale - 1.0);
    if (perturbed_ >= 0) pred = pred + (c - p[perturbed_]) * params_.stg_scale;
    if (modality_ >= 0) pred = pred + (c - p[modality_]) * (params_.modality_scale - 1.0);
    return pred;
  }

 private:
  MultiModalGuidanceParams params_;
  int negative_ = -1;
  int perturbed_ = -1;
  int modality_ = -1;
};

at::Tensor PriorDrop(const at::Tensor& like, int64_t num_prior_tokens, bool drop) {
  at::TensorOptions opts = at::TensorOptions().dtype(at::kBool);
  if (like.defined()) opts = opts.device(like.device());
  return drop ? at::ones({1, num_prior_tokens}, opts) : at::zeros({1, num_prior_tokens}, opts);
}

CfgBranch Branch(std::string name, BranchKind kind, const at::Tensor& embeds,
                 at::Tensor prior_token_drop, std::vector<int64_t> skip_layers = {}) {
  CfgBranch b;
  b.name = std::move(name);
  b.kind = kind;
  b.conditional = kind != BranchKind::kNegative;
  b.encoder_hidden_states = embeds;
  b.prior_token_drop = std::move(prior_token_drop);
  b.skip_layers = std::move(skip_layers);
  return b;
}

}  // namespace

const char* BranchKindName(BranchKind kind) {
  switch (kind) {
    case BranchKind::kConditional:
      return "conditional";
    case BranchKind::kNegative:
      return "negative";
    case BranchKind::kPerturbed:
      return "perturbed";
    case BranchKind::kModality:
      return "modality";
  }
  return "unknown";
}

CfgPolicy::CfgPolicy(std::vector<CfgBranch> branches, CfgOptions options)
    : branches_(std::move(branches)), options_(options) {
  TORCH_CHECK(!branches_.empty() && branches_[0].kind == BranchKind::kConditional,
              "CfgPolicy: branch 0 must be the conditional branch");
}

at::Tensor CfgPolicy::Combine(const std::vector<at::Tensor>& predictions, int64_t step) const {
  TORCH_CHECK(predictions.size() == branches_.size(), "CfgPolicy::Combine: ", predictions.size(),
              " predictions for ", branches_.size(), " branches");
  const at::Tensor& cond = predictions[0];
  TORCH_CHECK(cond.defined() && cond.dim() >= 1,
              "CfgPolicy::Combine: the conditional "
              "prediction must be a defined [B, ...] tensor");
  for (size_t i = 1; i < predictions.size(); ++i) {
    TORCH_CHECK(predictions[i].defined() && predictions[i].sizes() == cond.sizes() &&
                    predictions[i].scalar_type() == cond.scalar_type(),
                "CfgPolicy::Combine: prediction ", i, " (", branches_[i].name,
                ") differs in shape or dtype from the conditional prediction");
  }
  // Guidance off: the reference pipelines skip the combine (and the rescale) altogether.
  if (predictions.size() == 1) return cond;

  const at::ScalarType out_type = cond.scalar_type();
  const at::ScalarType compute_type = out_type == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> p;
  p.reserve(predictions.size());
  for (const at::Tensor& x : predictions) p.push_back(x.to(compute_type));

  at::Tensor guided;
  if (options_.order == CfgOrder::kSerial) {
    guided = CombineSerial(p, step);
  } else {
    const std::vector<double> w = Weights(step);
    TORCH_CHECK(w.size() == p.size(), "CfgPolicy: one weight per branch");
    guided = p[0] * w[0];
    for (size_t i = 1; i < p.size(); ++i) guided = guided + p[i] * w[i];
  }
  if (options_.cfg_normalization > 0.0) {
    guided = NormalizeToCond(guided, p[0], options_.cfg_normalization);
  }
  if (options_.guidance_rescale > 0.0) {
    guided = RescaleToCond(guided, p[0], options_.guidance_rescale, options_.rescale_stats);
  }
  return guided.to(out_type);
}

std::unique_ptr<CfgPolicy> MakeGlmImageCfg(const at::Tensor& prompt_embeds,
                                           const at::Tensor& negative_prompt_embeds,
                                           int64_t num_prior_tokens, double guidance_scale,
                                           const CfgOptions& options) {
  std::vector<CfgBranch> branches;
  branches.push_back(Branch("cond", BranchKind::kConditional, prompt_embeds,
                            PriorDrop(prompt_embeds, num_prior_tokens, /*drop=*/false)));
  if (guidance_scale > 1.0) {
    branches.push_back(Branch("uncond", BranchKind::kNegative, negative_prompt_embeds,
                              PriorDrop(prompt_embeds, num_prior_tokens, /*drop=*/true)));
  }
  return std::make_unique<TwoBranchCfg>(std::move(branches), guidance_scale, options);
}

absl::StatusOr<std::unique_ptr<CfgPolicy>> MakeGlmImageMultiModalCfg(
    const at::Tensor& prompt_embeds, const at::Tensor& negative_prompt_embeds,
    int64_t num_prior_tokens, const MultiModalGuidanceParams& params, const CfgOptions& options) {
  if (num_prior_tokens < 0) {
    return absl::InvalidArgumentError("num_prior_tokens must be >= 0");
  }
  if (params.skip_step < 0) return absl::InvalidArgumentError("skip_step must be >= 0");
  if (!(params.rescale_scale >= 0.0 && params.rescale_scale <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rescale_scale must be in [0, 1], got ", params.rescale_scale));
  }
  if (params.rescale_scale > 0.0 && options.guidance_rescale > 0.0) {
    return absl::InvalidArgumentError(
        "set either rescale_scale (LTX-2 rescale) or options.guidance_rescale, not both");
  }
  const bool run_negative = !IsClose(params.cfg_scale, 1.0);
  const bool run_perturbed = !IsClose(params.stg_scale, 0.0);
  const bool run_modality = !IsClose(params.modality_scale, 1.0);
  if (run_negative && !negative_prompt_embeds.defined()) {
    return absl::InvalidArgumentError("cfg_scale != 1 needs negative prompt embeddings");
  }
  if (run_perturbed && params.stg_blocks.empty()) {
    return absl::InvalidArgumentError("stg_scale != 0 needs at least one stg_block");
  }
  for (int64_t block : params.stg_blocks) {
    if (block < 0) return absl::InvalidArgumentError(absl::StrCat("stg block ", block, " < 0"));
  }

  std::vector<CfgBranch> branches;
  branches.push_back(Branch("cond", BranchKind::kConditional, prompt_embeds,
                            PriorDrop(prompt_embeds, num_prior_tokens, /*drop=*/false)));
  if (run_negative) {
    branches.push_back(Branch("uncond", BranchKind::kNegative, negative_prompt_embeds,
                              PriorDrop(prompt_embeds, num_prior_tokens, /*drop=*/true)));
  }
  if (run_perturbed) {
    branches.push_back(Branch("perturbed", BranchKind::kPerturbed, prompt_embeds,
                              PriorDrop(prompt_embeds, num_prior_tokens, /*drop=*/false),
                              params.stg_blocks));
  }
  if (run_modality) {
    branches.push_back(Branch("modality", BranchKind::kModality, prompt_embeds,
                              PriorDrop(prompt_embeds, num_prior_tokens, /*drop=*/true)));
  }
  CfgOptions opts = options;
  if (params.rescale_scale > 0.0) {
    opts.guidance_rescale = params.rescale_scale;
    opts.rescale_stats = RescaleStats::kWholeTensor;
  }
  return std::unique_ptr<CfgPolicy>(
      std::make_unique<MultiModalCfg>(std::move(branches), params, opts));
}

std::vector<std::vector<int>> AssignBranches(int num_branches, int cfg_degree) {
  TORCH_CHECK(num_branches >= 0 && cfg_degree >= 1, "AssignBranches: num_branches ", num_branches,
              ", cfg_degree ", cfg_degree);
  std::vector<std::vector<int>> ranks(cfg_degree);
  for (int i = 0; i < num_branches; ++i) ranks[i % cfg_degree].push_back(i);
  return ranks;
}

int NumGatherSlots(int num_branches, int cfg_degree) {
  TORCH_CHECK(num_branches >= 1 && cfg_degree >= 1, "NumGatherSlots: num_branches ", num_branches,
              ", cfg_degree ", cfg_degree);
  return (num_branches + cfg_degree - 1) / cfg_degree;
}

at::Tensor PackRankPredictions(const std::vector<at::Tensor>& rank_predictions,
                               const at::Tensor& like, int num_branches, int cfg_degree) {
  const int slots = NumGatherSlots(num_branches, cfg_degree);
  TORCH_CHECK(static_cast<int>(rank_predictions.size()) <= slots,
              "PackRankPredictions: ", rank_predictions.size(), " predictions for ", slots,
              " slots");
  std::vector<at::Tensor> parts;
  parts.reserve(slots);
  for (const at::Tensor& p : rank_predictions) {
    TORCH_CHECK(p.sizes() == like.sizes(), "PackRankPredictions: prediction shape ", p.sizes(),
                " != ", like.sizes());
    parts.push_back(p.to(like.options()));
  }
  while (static_cast<int>(parts.size()) < slots) parts.push_back(at::zeros_like(like));
  return at::cat(parts, 0);
}

std::vector<at::Tensor> BranchOrderFromGathered(const at::Tensor& gathered, int num_branches,
                                                int cfg_degree) {
  const int slots = NumGatherSlots(num_branches, cfg_degree);
  const int64_t rows = static_cast<int64_t>(cfg_degree) * slots;
  TORCH_CHECK(gathered.dim() >= 1 && gathered.size(0) % rows == 0,
              "BranchOrderFromGathered: dim 0 of ", gathered.sizes(), " is not a multiple of ",
              cfg_degree, " ranks x ", slots, " slots");
  const int64_t batch = gathered.size(0) / rows;
  std::vector<at::Tensor> out;
  out.reserve(num_branches);
  for (int i = 0; i < num_branches; ++i) {
    const int64_t row = static_cast<int64_t>(i % cfg_degree) * slots + i / cfg_degree;
    out.push_back(gathered.narrow(0, row * batch, batch));
  }
  return out;
}

}  // namespace diffmesh
