// Classifier-free guidance as a policy. The branches are built once per request (each the DiT
// inputs that differ between branches); every step each branch is one DiT forward, and the policy
// combines the branch predictions. Combine is pure arithmetic over the predictions in branch
// order, so the branches can be run anywhere — in turn on one rank, or spread over CFG-parallel
// ranks (AssignBranches) and gathered back (BranchOrderFromGathered).
//
// Formulas and the sources they were read from:
//
// * Two-branch CFG (GLM-Image; diffusers pipelines/glm_image/pipeline_glm_image.py):
//     SERIAL    guided = u + g·(c − u)
//     PARALLEL  guided = g·c + (1 − g)·u
//   SGLang-diffusion (python/sglang/multimodal_gen/runtime/pipelines_core/stages/denoising.py)
//   uses SERIAL in `_combine_cfg_serial` and PARALLEL in `_combine_cfg_parallel`, where rank 0
//   holds g·c, rank 1 holds (1 − g)·u and an all-reduce sums them; the two agree up to fp rounding.
//
// * LTX-2 multi-modal guidance (Lightricks/LTX-2 packages/ltx-core/src/ltx_core/components/
//   guiders.py, MultiModalGuider.calculate; branches built in packages/ltx-pipelines/src/
//   ltx_pipelines/utils/denoisers.py `_guided_denoise`; diffusers' LTX2Guidance in
//   modular_pipelines/ltx2/guider.py and pipelines/ltx2/pipeline_ltx2.py use the same terms):
//     SERIAL    guided = c + (g − 1)·(c − u) + s·(c − p) + (m − 1)·(c − q)
//   with c conditional, u negative (cfg_scale g), p perturbed (stg_scale s: the conditional inputs
//   with self-attention skipped in stg_blocks) and q modality-isolated (modality_scale m). A branch
//   runs only when its term is non-zero: u iff g ≠ 1, p iff s ≠ 0, q iff m ≠ 1. Expanded:
//     PARALLEL  guided = (g + s + m − 1)·c + (1 − g)·u − s·p + (1 − m)·q
//   LTX-2 combines in float32 and in x0 (denoised) space: its denoiser converts velocity → x0
//   before the guider and back after. The policy is linear, so this only matters for the rescale
//   and normalization below, which are not linear.
//   LTX-2 rescale (`rescale_scale` r, statistics over the WHOLE tensor, torch.std unbiased):
//     guided ← guided · (r·std(c)/std(guided) + (1 − r))
//   `skip_step` k: steps with step % (k + 1) ≠ 0 run no branch and reuse the previous step's
//   guided prediction (ShouldSkipStep).
//
// * Guidance rescale (diffusers guiders/guider_utils.py `rescale_noise_cfg`, after "Common
//   Diffusion Noise Schedules and Sample Steps are Flawed" §3.4; same in SGLang
//   `_rescale_noise_cfg`). φ = guidance_rescale, std per sample over all non-batch dims, unbiased:
//     guided ← φ·guided·(std(c)/std(guided)) + (1 − φ)·guided
//
// * CFG normalization (SGLang `_apply_cfg_normalization`, applied in `_combine_cfg_serial`
//   before the guidance rescale; diffusers pipelines/z_image/pipeline_z_image.py
//   "Renormalization"). λ = cfg_normalization > 0, ‖·‖ the L2 norm over all non-batch elements of
//   one sample:
//     if ‖guided‖ > λ·‖c‖:  guided ← guided · (λ·‖c‖ / ‖guided‖)
//   i.e. the guided norm is capped at λ times the conditional norm (λ = 1: never above it).
//   Z-Image applies this per sample (a loop over the batch); SGLang takes one norm over the whole
//   batch tensor. Per sample is implemented; the two coincide for batch 1, which is what diffmesh
//   runs. (Lumina2 / Qwen-Image "cfg_normalization" is a different, always-on per-token rescale
//   over the last dim and is not implemented.)
//
// Order inside Combine: weighted combination (SERIAL or PARALLEL) → normalization → rescale, as in
// SGLang. Arithmetic runs in float32 (float64 stays float64) and the result has the dtype of the
// predictions. With a single branch (guidance off) the conditional prediction is returned as is.
#ifndef DIFFMESH_SERVICES_DENOISE_CFG_POLICY_H_
#define DIFFMESH_SERVICES_DENOISE_CFG_POLICY_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh {

// What a branch's inputs differ in from the conditional branch.
enum class BranchKind {
  kConditional,  // the full conditioning; always branch 0
  kNegative,     // the unconditional / negative-prompt branch of CFG
  kPerturbed,    // conditional inputs, attention skipped in `skip_layers` (STG / skip-layer)
  kModality,     // conditional inputs with one conditioning modality removed
};

const char* BranchKindName(BranchKind kind);

// One branch's DiT inputs, built once per request.
struct CfgBranch {
  std::string name;  // "cond", "uncond", "perturbed", "modality"
  BranchKind kind = BranchKind::kConditional;
  bool conditional = true;           // false only for the negative branch
  at::Tensor encoder_hidden_states;  // [1, T, text_embed_dim]
  at::Tensor prior_token_drop;       // [1, N] bool, true = drop that prior token
  // DiT blocks whose attention is bypassed for this branch (kPerturbed; empty = none). The DiT
  // forward must honour it for a perturbed branch to mean anything.
  std::vector<int64_t> skip_layers;
};

// Arithmetic order of the weighted combination (see the file comment): they differ only in fp
// rounding; PARALLEL is the one a CFG-parallel all-reduce of per-rank partial sums reproduces.
enum class CfgOrder { kSerial, kParallel };

// Where the rescale takes its standard deviations.
enum class RescaleStats {
  kPerSample,    // diffusers rescale_noise_cfg: per sample over all non-batch dims
  kWholeTensor,  // LTX-2 MultiModalGuider: one std over the whole tensor
};

struct CfgOptions {
  CfgOrder order = CfgOrder::kSerial;
  // λ > 0 caps ‖guided‖ at λ·‖cond‖ per sample; 0 = off.
  double cfg_normalization = 0.0;
  // φ in [0, 1]; 0 = off.
  double guidance_rescale = 0.0;
  RescaleStats rescale_stats = RescaleStats::kPerSample;
};

class CfgPolicy {
 public:
  virtual ~CfgPolicy() = default;
  CfgPolicy(const CfgPolicy&) = delete;
  CfgPolicy& operator=(const CfgPolicy&) = delete;

  // Branch 0 is always the conditional branch.
  const std::vector<CfgBranch>& branches() const { return branches_; }
  const CfgOptions& options() const { return options_; }

  // Per-branch weights w (branch order) with Σ wᵢ·predᵢ = the guided prediction before
  // normalization / rescale: the PARALLEL form, and what each CFG rank multiplies its own
  // predictions by before an all-reduce sum.
  virtual std::vector<double> Weights(int64_t step) const = 0;

  // True when `step` runs no branch at all and reuses the previous step's guided prediction.
  virtual bool ShouldSkipStep(int64_t step) const { return false; }

  // predictions[i] is branches()[i]'s prediction (all the same shape [B, ...]); returns the
  // guided prediction. Throws (TORCH_CHECK) on a count or shape mismatch.
  at::Tensor Combine(const std::vector<at::Tensor>& predictions, int64_t step) const;
  // Policies without a step schedule; same as Combine(predictions, 0).
  at::Tensor Combine(const std::vector<at::Tensor>& predictions) const {
    return Combine(predictions, 0);
  }

 protected:
  CfgPolicy(std::vector<CfgBranch> branches, CfgOptions options);

  // The SERIAL form of this policy's formula, on predictions already in compute dtype and with
  // more than one branch.
  virtual at::Tensor CombineSerial(const std::vector<at::Tensor>& predictions,
                                   int64_t step) const = 0;

 private:
  std::vector<CfgBranch> branches_;
  CfgOptions options_;
};

// GLM-Image's two branches: conditional (prompt glyphs, prior tokens kept) and unconditional
// (negative-prompt glyphs, every prior token dropped), combined as u + g·(c − u). With g ≤ 1
// guidance is off, as in the reference pipeline, and only the conditional branch runs.
std::unique_ptr<CfgPolicy> MakeGlmImageCfg(const at::Tensor& prompt_embeds,
                                           const at::Tensor& negative_prompt_embeds,
                                           int64_t num_prior_tokens, double guidance_scale,
                                           const CfgOptions& options = {});

// LTX-2's MultiModalGuiderParams (guiders.py), with the same meaning and defaults.
struct MultiModalGuidanceParams {
  double cfg_scale = 1.0;           // g; negative branch runs iff g ≠ 1
  double stg_scale = 0.0;           // s; perturbed branch runs iff s ≠ 0
  std::vector<int64_t> stg_blocks;  // DiT blocks skipped in the perturbed branch
  double modality_scale = 1.0;      // m; modality branch runs iff m ≠ 1
  double rescale_scale = 0.0;       // r; LTX-2 whole-tensor std rescale, 0 = off
  int64_t skip_step = 0;            // k; 0 = never skip
};

// LTX-2 style four-branch guidance applied to GLM-Image. Branches, in this order and each only
// when its term is active:
//   cond       prompt glyphs, prior tokens kept
//   uncond     negative glyphs, ALL prior tokens dropped (as GLM-Image's CFG)
//   perturbed  prompt glyphs, prior tokens kept, skip_layers = stg_blocks
//   modality   prompt glyphs kept, ALL prior tokens dropped (the prior-token modality removed)
// Rescale: params.rescale_scale with LTX-2's whole-tensor statistics; options.guidance_rescale
// must then be 0 (one rescale, not two). Errors: InvalidArgument for s ≠ 0 with no stg_blocks,
// a negative block index, skip_step < 0, a rescale outside [0, 1], or both rescales set.
absl::StatusOr<std::unique_ptr<CfgPolicy>> MakeGlmImageMultiModalCfg(
    const at::Tensor& prompt_embeds, const at::Tensor& negative_prompt_embeds,
    int64_t num_prior_tokens, const MultiModalGuidanceParams& params,
    const CfgOptions& options = {});

// CFG-parallel dispatch: branch i runs on cfg rank i % cfg_degree. Returns, per rank, the
// branch indices it runs, in increasing order; a rank with several branches runs them in turn,
// a rank with none (cfg_degree > num_branches) gets an empty list and idles. Every rank holds
// ceil(num_branches / cfg_degree) slots (NumGatherSlots) in the gathered layout below.
std::vector<std::vector<int>> AssignBranches(int num_branches, int cfg_degree);
int NumGatherSlots(int num_branches, int cfg_degree);

// One rank's contribution to an all_gather: its predictions (those of AssignBranches()[rank], in
// order, each shaped like `like` [B, ...]) concatenated along dim 0 and padded with zeros to
// NumGatherSlots slots → [slots·B, ...] in like's dtype and device. `like` supplies the shape of
// the padding, which a rank without branches cannot take from its (empty) predictions.
at::Tensor PackRankPredictions(const std::vector<at::Tensor>& rank_predictions,
                               const at::Tensor& like, int num_branches, int cfg_degree);

// Inverse of the all_gather layout: `gathered` is [cfg_degree·slots·B, ...], rank-major (rank r's
// slots, each B rows, then rank r + 1's), padding slots last within a rank. Returns one [B, ...]
// view per branch in branch order (branch i = rank i % cfg_degree, slot i / cfg_degree), ready for
// CfgPolicy::Combine.
std::vector<at::Tensor> BranchOrderFromGathered(const at::Tensor& gathered, int num_branches,
                                                int cfg_degree);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_CFG_POLICY_H_
