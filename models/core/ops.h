// Functional building blocks shared by the models (ATen only, no torch::nn).
#ifndef DIFFMESH_MODELS_CORE_OPS_H_
#define DIFFMESH_MODELS_CORE_OPS_H_

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "models/core/weights.h"

namespace diffmesh::models {

// y = x Wᵀ + b with `prefix`.weight / `prefix`.bias (bias optional in the map).
at::Tensor Linear(const at::Tensor& x, const WeightMap& w, const std::string& prefix);

// How float32 work runs on CUDA (the LTX-2 decoders and upsampler, the text encoder's
// activations): matmuls and convolutions on TF32 tensor cores when `on`, strict IEEE float32
// when not (the reference checks). Process-wide; stages serving on CUDA turn it on at start-up.
void UseTensorCoresForFloat32(bool on = true);

// RMSNorm in fp32, scaled by `prefix`.weight, returned in x's dtype.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// LayerNorm over the last dim; weight/bias may be undefined (elementwise_affine=False).
at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     double eps);

// GELU with the tanh approximation ("gelu_new", "gelu_pytorch_tanh").
at::Tensor GeluTanh(const at::Tensor& x);

// Attention: q [B, H, Sq, D], k/v [B, Hkv, Sk, D] (Hkv divides H: grouped-query heads are
// repeated), optional additive mask broadcastable to [B, H, Sq, Sk]; `scale` defaults to
// 1/sqrt(D). Uses the fused kernel where the LibTorch version has one.
at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask = std::nullopt, bool causal = false,
                     std::optional<double> scale = std::nullopt);

// ‖a − b‖ / ‖b‖ in fp64, for tests and parity checks.
double RelativeError(const at::Tensor& a, const at::Tensor& b);

}  // namespace diffmesh::models

#endif  // DIFFMESH_MODELS_CORE_OPS_H_
