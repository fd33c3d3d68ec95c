// The LTX-2 block's memory-bound steps, each one call: on a CUDA device (GPU builds) one kernel
// of models/ltx2/cuda/fused_norm.cu where the shapes allow, otherwise exactly the ATen
// composition the block used before (the CPU path, the fixture tests and the parallel layouts
// keep their numbers). The fused kernels compute in float32 and round once; the composition
// rounds after the norm and after each modulation step, so on bf16 the fused path lies closer to
// the float32 result.
#ifndef DIFFMESH_MODELS_LTX2_FUSED_OPS_H_
#define DIFFMESH_MODELS_LTX2_FUSED_OPS_H_

#include <ATen/ATen.h>

#include "models/ltx2/rope.h"

namespace diffmesh::models::ltx2 {

// RMSNorm over the last dim [· weight], then · (1 + scale) + shift when scale is defined.
// x [B, T, D]; weight [D] or undefined; scale and shift broadcast against x (the modulation rows
// [B or 1, T or 1, D]).
at::Tensor NormModulate(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                        const at::Tensor& shift, double eps);

// The attention's q or k: RMSNorm across all heads (x [B, T, H·Dh], weight [H·Dh]), then the
// rotary embedding `tables` of `type` when `tables` is not null (one kernel on CUDA either way).
at::Tensor NormRope(const at::Tensor& x, const at::Tensor& weight, double eps,
                    const RopeTables* tables, RopeType type);

// x + value · gate (the gated residual), one kernel on CUDA; gate broadcasts as a modulation
// row [B or 1, T or 1, D].
at::Tensor AddGated(const at::Tensor& x, const at::Tensor& value, const at::Tensor& gate);

// gelu_tanh(x·Wᵀ + b): on CUDA with a bias, one cuBLASLt GEMM with its GELU epilogue (the tanh
// approximation) instead of a GEMM and an elementwise pass over the 4× wide hidden.
at::Tensor LinearGeluTanh(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_FUSED_OPS_H_
