#include "services/ar/sampler.h"

namespace diffmesh {

at::Tensor SampleTokens(const at::Tensor& logits, int64_t allowed,
                        const models::glm_image::ArSampling& sampling,
                        const std::vector<at::Generator*>& generators) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == static_cast<int64_t>(generators.size()),
              "SampleTokens: one generator per row");
  // Only image tokens (VQ codes) may be drawn: the markers around the grid are not sampled.
  at::Tensor l = logits.narrow(1, 0, std::min(allowed, logits.size(1))).to(at::kFloat).cpu();
  if (sampling.temperature <= 0) return l.argmax(1);
  l = l / sampling.temperature;
  const int64_t v = l.size(1);
  if (sampling.top_k > 0 && sampling.top_k < v) {
    at::Tensor kth = std::get<0>(l.topk(sampling.top_k, 1)).narrow(1, sampling.top_k - 1, 1);
    l = l.masked_fill(l < kth, -std::numeric_limits<float>::infinity());
  }
  if (sampling.top_p < 1.0f) {
    auto [sorted, order] = l.sort(1, /*descending=*/true);
    at::Tensor cum = sorted.softmax(1).cumsum(1);
    // Drop a token when the mass before it already reaches top_p (the first always stays).
    at::Tensor drop_sorted = (cum - sorted.softmax(1)) >= sampling.top_p;
    at::Tensor drop = at::zeros_like(drop_sorted).scatter(1, order, drop_sorted);
    l = l.masked_fill(drop, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = l.softmax(1);
  at::Tensor out = at::empty({l.size(0)}, at::kLong);
  for (int64_t i = 0; i < l.size(0); ++i) {
    out[i] = at::multinomial(probs[i], 1, /*replacement=*/false, *generators[i]).item<int64_t>();
  }
  return out;
}

}  // namespace diffmesh
