// The LTX-2 block's memory-bound steps as single CUDA passes. In the ATen composition each
// RMSNorm is ~6 kernels over a float32 copy of the activations, the AdaLN modulation two more,
// and the q/k RMSNorm-across-heads plus split rotary embedding ~12; at the release size (6,144
// video tokens × 4,096) these passes cost more than a third of the forward. Here each is one
// read and one write, with float32 arithmetic and a single rounding at the end.
// Raw pointers, no LibTorch: the caller (models/ltx2/fused_ops.cc) checks shapes and strides and
// picks the stream.
#ifndef DIFFMESH_MODELS_LTX2_CUDA_FUSED_NORM_H_
#define DIFFMESH_MODELS_LTX2_CUDA_FUSED_NORM_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace diffmesh::models::ltx2::cuda {

enum class ElementType { kBFloat16, kFloat16, kFloat32 };

// out = x·rsqrt(mean(x²) + eps) [· weight] [· (1 + scale) + shift], per row of `dim` elements.
// Row r = b·tokens + t. scale/shift element (r, i) is at b·mod_batch_stride +
// t·mod_token_stride + i (token stride 0 = one modulation row per batch entry).
struct NormModulateArgs {
  const void* x = nullptr;       // [rows, dim] contiguous
  void* out = nullptr;           // [rows, dim] contiguous
  const void* weight = nullptr;  // [dim] or null
  const void* scale = nullptr;   // null: no modulation (shift must be null too)
  const void* shift = nullptr;
  int64_t rows = 0, dim = 0, tokens = 1;
  int64_t mod_batch_stride = 0, mod_token_stride = 0;
  float eps = 1e-6f;
  ElementType type = ElementType::kBFloat16;  // of x, out, weight, scale and shift
};
cudaError_t LaunchNormModulate(const NormModulateArgs& args, cudaStream_t stream);

// The attention's query/key preparation: RMSNorm across all heads (weight over heads·head_dim),
// then the split rotary embedding per head: with r = head_dim/2, x₁ = elements [0, r) and
// x₂ = [r, 2r) of a head, out₁ = x₁·cos − x₂·sin, out₂ = x₂·cos + x₁·sin.
struct NormRopeArgs {
  const void* x = nullptr;       // [batch, tokens, heads·head_dim] contiguous
  void* out = nullptr;           // same shape, contiguous
  const void* weight = nullptr;  // [heads·head_dim] (x's type) or null
  const float* cos = nullptr;    // [table_batch, heads, tokens, head_dim/2] contiguous
  const float* sin = nullptr;
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0;
  int64_t table_batch_stride = 0;  // 0 when one table serves every batch entry
  float eps = 1e-6f;
  ElementType type = ElementType::kBFloat16;
};
cudaError_t LaunchNormRope(const NormRopeArgs& args, cudaStream_t stream);

// The gated residual out = x + value·gate, per row of `dim` elements (row r = b·tokens + t);
// gate element (r, i) at b·gate_batch_stride + t·gate_token_stride + i (a modulation row).
// 16-byte loads and stores: dim·sizeof(element) and every pointer (gate rows included) must be
// 16-byte aligned, else cudaErrorInvalidValue (the caller then uses ATen's addcmul, whose
// broadcasting kernel runs unvectorised at ~60 % of the bandwidth on the release shapes).
struct AddGatedArgs {
  const void* x = nullptr;      // [rows, dim] contiguous
  const void* value = nullptr;  // [rows, dim] contiguous
  const void* gate = nullptr;
  void* out = nullptr;          // [rows, dim] contiguous
  int64_t rows = 0, dim = 0, tokens = 1;
  int64_t gate_batch_stride = 0, gate_token_stride = 0;
  ElementType type = ElementType::kBFloat16;
};
cudaError_t LaunchAddGated(const AddGatedArgs& args, cudaStream_t stream);

}  // namespace diffmesh::models::ltx2::cuda

#endif  // DIFFMESH_MODELS_LTX2_CUDA_FUSED_NORM_H_
