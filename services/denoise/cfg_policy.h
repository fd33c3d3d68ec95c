// Classifier-free guidance as a policy: the branches are built once per request (each a name
// and the DiT inputs that differ between branches) and their predictions are combined every step.
#ifndef DIFFMESH_SERVICES_DENOISE_CFG_POLICY_H_
#define DIFFMESH_SERVICES_DENOISE_CFG_POLICY_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

namespace diffmesh {

struct CfgBranch {
  std::string name;                 // "cond", "uncond", ...
  bool conditional = true;
  at::Tensor encoder_hidden_states; // [1, T, text_embed_dim]
  at::Tensor prior_token_drop;      // [1, N] bool, true = drop that prior token
};

class CfgPolicy {
 public:
  virtual ~CfgPolicy() = default;
  virtual const std::vector<CfgBranch>& branches() const = 0;
  // predictions[i] belongs to branches()[i]; returns the guided prediction.
  virtual at::Tensor Combine(const std::vector<at::Tensor>& predictions) const = 0;
};

// GLM-Image's two branches: conditional (prompt glyphs, prior tokens kept) and unconditional
// (negative-prompt glyphs, every prior token dropped), combined as u + g·(c − u). With g ≤ 1
// guidance is off, as in the reference pipeline, and only the conditional branch runs.
std::unique_ptr<CfgPolicy> MakeGlmImageCfg(const at::Tensor& prompt_embeds,
                                           const at::Tensor& negative_prompt_embeds,
                                           int64_t num_prior_tokens, double guidance_scale);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_CFG_POLICY_H_
