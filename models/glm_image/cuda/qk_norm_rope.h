// One CUDA kernel for the DiT attention's query/key preparation: the per-head LayerNorm
// (no affine) of q and k, then the 2-D rotary embedding of the image tokens, read from the
// fused QKV projection and written once. The unfused ATen sequence (two layer_norm calls, a
// float32 rotary product, two addcmul and a copy per tensor) moves several times the bytes;
// at GLM-Image's 1024² size this kernel saves most of that memory traffic in each of the 30
// blocks. Raw pointers, no LibTorch: the caller (dit.cc) checks shapes and picks the stream.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_CUDA_QK_NORM_ROPE_H_
#define DIFFMESH_MODELS_GLM_IMAGE_CUDA_QK_NORM_ROPE_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace diffmesh::models::glm_image::cuda {

enum class ElementType { kBFloat16, kFloat16, kFloat32 };

struct QkNormRopeArgs {
  const void* qkv = nullptr;  // [B, S, 3, H, D] contiguous (q, k, v interleaved per token)
  void* q = nullptr;          // [B, S, H, D] contiguous
  void* k = nullptr;          // [B, S, H, D] contiguous
  const float* cos = nullptr;  // [S - text_len, D]: rows of the image tokens, in order
  const float* sin = nullptr;  // [S - text_len, D]
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  int64_t text_len = 0;  // tokens [0, text_len) are text: normalized, not rotated
  float eps = 1e-5f;
  ElementType type = ElementType::kBFloat16;
};

// Whether the kernel handles `head_dim` (a multiple of 32, at most 256).
bool QkNormRopeSupports(int64_t head_dim);

// Enqueues the kernel on `stream`; returns the launch error (cudaSuccess when queued).
cudaError_t LaunchQkNormRope(const QkNormRopeArgs& args, cudaStream_t stream);

}  // namespace diffmesh::models::glm_image::cuda

#endif  // DIFFMESH_MODELS_GLM_IMAGE_CUDA_QK_NORM_ROPE_H_
