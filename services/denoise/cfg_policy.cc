#include "services/denoise/cfg_policy.h"

namespace diffmesh {
namespace {

class TwoBranchCfg final : public CfgPolicy {
 public:
  TwoBranchCfg(std::vector<CfgBranch> branches, double guidance)
      : branches_(std::move(branches)), guidance_(guidance) {}
  const std::vector<CfgBranch>& branches() const override { return branches_; }
  at::Tensor Combine(const std::vector<at::Tensor>& p) const override {
    TORCH_CHECK(p.size() == branches_.size(), "one prediction per branch");
    if (p.size() == 1) return p[0];
    return p[1] + guidance_ * (p[0] - p[1]);
  }

 private:
  std::vector<CfgBranch> branches_;
  double guidance_;
};

}  // namespace

std::unique_ptr<CfgPolicy> MakeGlmImageCfg(const at::Tensor& prompt_embeds,
                                           const at::Tensor& negative_prompt_embeds,
                                           int64_t num_prior_tokens, double guidance_scale) {
  std::vector<CfgBranch> branches;
  branches.push_back({"cond", true, prompt_embeds, at::zeros({1, num_prior_tokens}, at::kBool)});
  if (guidance_scale > 1.0) {
    branches.push_back(
        {"uncond", false, negative_prompt_embeds, at::ones({1, num_prior_tokens}, at::kBool)});
  }
  return std::make_unique<TwoBranchCfg>(std::move(branches), guidance_scale);
}

}  // namespace diffmesh
