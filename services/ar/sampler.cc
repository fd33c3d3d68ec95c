#include "services/ar/sampler.h"

namespace diffmesh {

at::Tensor SampleTokens(const at::Tensor& logits, int64_t allowed,
                        const models::glm_image::ArSampling& sampling,
                        const std::vector<at::Generator*>& generators) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == static_cast<int64_t>(generators.size()),
              "SampleTokens: one generator per row");
  // Only image tokens (VQ codes) may be drawn: the markers around the grid are not sampled.
  // Everything below stays on the logits' device; only the drawn ids come back to the host.
  at::Tensor l = logits.narrow(1, 0, std::min(allowed, logits.size(1))).to(at::kFloat);
  if (sampling.temperature <= 0) return l.argmax(1).cpu();
  l = l / sampling.temperature;
  const int64_t v = l.size(1);
  if (sampling.top_k > 0 && sampling.top_k < v) {
    at::Tensor kth = std::get<0>(l.topk(sampling.top_k, 1)).narrow(1, sampling.top_k - 1, 1);
    l = l.masked_fill(l < kth, -std::numeric_limits<float>::infinity());
  }
  // Most likely first; stable, so equal logits keep their order whatever the batch.
  auto [sorted, order] = at::sort(l, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  at::Tensor probs = sorted.softmax(1);
  if (sampling.top_p < 1.0f) {
    // Drop a token when the mass before it already reaches top_p (the first always stays).
    probs = probs * ((probs.cumsum(1) - probs) < sampling.top_p);
  }
  // Inverse-CDF draw, one uniform per row from that row's own generator (a request's draws do
  // not depend on its batch): the first token whose cumulative mass exceeds u · total.
  at::Tensor cdf = probs.cumsum(1);
  at::Tensor u = at::empty({l.size(0), 1}, at::kFloat);
  for (int64_t i = 0; i < l.size(0); ++i) {
    u[i][0] = at::rand({1}, *generators[i], at::kFloat).item<float>();
  }
  at::Tensor target = u.to(l.device()) * cdf.narrow(1, v - 1, 1);
  // Clamped to the last token with mass (u · total may round up to the total).
  at::Tensor last_kept = (probs > 0).sum(1, /*keepdim=*/true) - 1;
  at::Tensor index = at::minimum((cdf <= target).sum(1, /*keepdim=*/true), last_kept);
  return order.gather(1, index).squeeze(1).cpu();
}

}  // namespace diffmesh
