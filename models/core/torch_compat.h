// The few differences between LibTorch 1.13 (Debian, CPU) and 2.x (GPU host), in one place.
#ifndef DIFFMESH_MODELS_CORE_TORCH_COMPAT_H_
#define DIFFMESH_MODELS_CORE_TORCH_COMPAT_H_

#include <ATen/ATen.h>
#include <torch/version.h>

#include <optional>

namespace diffmesh::models::compat {

// softmax(q kᵀ · scale + mask) v; q/k/v [B, H, S, D] with equal head counts.
inline at::Tensor ScaledDotProductAttention(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v,
                                            const std::optional<at::Tensor>& mask, bool causal,
                                            double scale) {
#if TORCH_VERSION_MAJOR >= 2
  c10::optional<at::Tensor> m;
  if (mask) m = *mask;
  return at::scaled_dot_product_attention(q, k, v, m, 0.0, causal && !mask, scale);
#else
  at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1)) * scale;
  if (mask) scores = scores + mask->to(at::kFloat);
  if (causal && !mask) {
    const int64_t sq = q.size(-2), sk = k.size(-2);
    at::Tensor keep = at::ones({sq, sk}, q.options().dtype(at::kBool)).tril(sk - sq);
    scores = scores.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity());
  }
  return at::matmul(at::softmax(scores, -1), v.to(at::kFloat)).to(q.scalar_type());
#endif
}

}  // namespace diffmesh::models::compat

#endif  // DIFFMESH_MODELS_CORE_TORCH_COMPAT_H_
