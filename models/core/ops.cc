#include "models/core/ops.h"

#include <cmath>

#include "models/core/torch_compat.h"

namespace diffmesh::models {

at::Tensor Linear(const at::Tensor& x, const WeightMap& w, const std::string& prefix) {
  const at::Tensor& weight = Get(w, prefix + ".weight");
  auto it = w.find(prefix + ".bias");
  if (it != w.end()) return at::linear(x, weight, it->second);
  return at::linear(x, weight);
}

void UseTensorCoresForFloat32(bool on) {
  at::globalContext().setAllowTF32CuBLAS(on);
  at::globalContext().setAllowTF32CuDNN(on);
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(var + eps);
  return (weight * xf.to(x.scalar_type()));
}

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     double eps) {
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

at::Tensor GeluTanh(const at::Tensor& x) { return at::gelu(x, "tanh"); }

at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, bool causal,
                     std::optional<double> scale) {
  at::Tensor kk = k, vv = v;
  const int64_t h = q.size(1), hkv = k.size(1);
  if (hkv != h) {
    TORCH_CHECK(h % hkv == 0, "query heads ", h, " not a multiple of kv heads ", hkv);
    kk = k.repeat_interleave(h / hkv, 1);
    vv = v.repeat_interleave(h / hkv, 1);
  }
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  return compat::ScaledDotProductAttention(q, kk, vv, mask, causal, s);
}

double RelativeError(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  double denom = bd.norm().item<double>();
  double num = (ad - bd).norm().item<double>();
  return denom == 0 ? num : num / denom;
}

}  // namespace diffmesh::models
