// CUDA kernels for the GLM-Image AR decode step (one new token per sequence), bf16 only.
//
// A decode step reads every weight once and does little else, so its time is the weight bytes
// over the memory bandwidth plus whatever the other operators and their launches add. The ATen
// composition spends ~20 small kernels per layer on norms, rotary, the KV write/gather and the
// masked attention; these kernels do a layer in 7:
//
//   ResidualRmsNorm   hidden += RmsNorm(delta)·w_delta (the previous sub-layer's post-norm),
//                     x = RmsNorm(hidden)·w_in
//   Gemv (qkv)        x·Wqkvᵀ + b                  (or cuBLAS for batches above kGemvMaxBatch)
//   DecodeAttention   rotary on q and the new k, the new k/v written into the cache slot, and
//                     split-K attention of the group's query heads over the slot's keys, the
//                     chunks combined by the last block to finish
//   Gemv (o_proj)
//   ResidualRmsNorm
//   Gemv (gate_up)    with SwiGLU fused: up·silu(gate) without the [B, 2·I] intermediate
//   Gemv (down_proj)
//
// Each kernel is launched with programmatic dependent launch: it may start while the previous
// one finishes and streams its weights before waiting for its inputs, which hides most of the
// small kernels' time behind the weight reads (SetOverlappedLaunch(false) turns that off).
//
// Rounding follows the ATen composition step by step (bf16 after every operator it rounds
// after), so the two paths agree to bf16 rounding of the attention and matmul sums. Every
// kernel computes a sequence's values the same way whatever the batch (no cross-row splits),
// so a request's logits do not depend on what shares its step. Raw pointers, no LibTorch: the
// caller (ar_model.cc) owns the buffers, checks shapes and picks the stream.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_CUDA_AR_DECODE_H_
#define DIFFMESH_MODELS_GLM_IMAGE_CUDA_AR_DECODE_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace diffmesh::models::glm_image::cuda {

// Largest batch the GEMV kernel takes (above it a GEMM library call is the better kernel).
inline constexpr int kGemvMaxBatch = 4;
// Keys per attention block (one key per thread while scoring).
inline constexpr int kAttentionChunk = 128;

// hidden [B, n] (bf16, updated in place when delta is set): hidden = bf16(hidden +
// bf16(bf16(rms(delta))·w_delta)); out = bf16(bf16(rms(hidden))·w_in). delta may be null (the
// first layer): then hidden is only read. n a multiple of 8.
struct ResidualRmsNormArgs {
  void* hidden = nullptr;
  const void* delta = nullptr;
  const void* w_delta = nullptr;
  const void* w_in = nullptr;
  void* out = nullptr;
  int batch = 0, n = 0;
  float eps = 1e-5f;
};
cudaError_t LaunchResidualRmsNorm(const ResidualRmsNormArgs& args, cudaStream_t stream);

// Process-wide: whether launches use programmatic dependent launch (default true).
void SetOverlappedLaunch(bool on);

enum class GemvEpilogue {
  kNone,    // y[b, r] = bf16(x[b]·W[r])
  kBias,    // y[b, r] = bf16(x[b]·W[r] + bias[r])
  kSwiGlu,  // W has 2·rows rows (gate, then up): y[b, r] = bf16(bf16(silu(g)) · u), g and u
            // the bf16-rounded products with rows r and rows + r
};

// y [B, rows] = x [B, k] · Wᵀ, W [rows (2·rows for SwiGLU), k] row-major, all bf16; B ≤
// kGemvMaxBatch, k a multiple of 8, pointers 16-byte aligned.
struct GemvArgs {
  const void* w = nullptr;
  const void* x = nullptr;
  const void* bias = nullptr;
  void* y = nullptr;
  int batch = 0, rows = 0, k = 0;
  GemvEpilogue epilogue = GemvEpilogue::kNone;
};
cudaError_t LaunchGemv(const GemvArgs& args, cudaStream_t stream);

// One decode step's attention for a layer. qkv [B, (H + 2·Hkv)·D] bf16 (the fused projection's
// output: q heads, then k, then v); cos/sin [B, rotary_dim] bf16 (the duplicated-halves tables
// of the step's positions; the first rotary_dim channels of each head rotate, rotate_half
// style). For sequence b, with L = lengths[b]: the rotated k and the v are written at position L
// of cache slot slots[b], and each query head attends to positions 0..L of that slot. The K/V
// caches are [slots, Hkv, capacity, D] bf16. `splits` chunks of kAttentionChunk keys cover the
// longest L + 1 of the step; the partial results (o_partial [B, H, splits, D] fp32, m/l
// [B, H, splits] fp32) are combined into out [B, H·D] bf16: for a few splits by the last block
// of each sequence and head block to finish, found through `counters` ([B·H] int32, zero
// before the first call; each call leaves them zero), for more by a second kernel. D = 128.
struct DecodeAttentionArgs {
  const void* qkv = nullptr;
  const void* cos = nullptr;
  const void* sin = nullptr;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  const int64_t* slots = nullptr;
  const int64_t* lengths = nullptr;
  float* o_partial = nullptr;
  float* m_partial = nullptr;
  float* l_partial = nullptr;
  int* counters = nullptr;
  void* out = nullptr;
  int batch = 0, heads = 0, kv_heads = 0, head_dim = 0, rotary_dim = 0;
  int64_t capacity = 0;
  int splits = 0;
  float scale = 0.f;
  // Query heads per block: 0 picks from the grid size; else a power of two up to 16 dividing
  // H / Hkv. Results are the same bits either way (a head's arithmetic does not depend on it).
  int heads_per_block = 0;
  bool combine_in_kernel = false;  // set by LaunchDecodeAttention
};
// Whether DecodeAttention handles this head layout.
bool DecodeAttentionSupports(int heads, int kv_heads, int head_dim, int rotary_dim);
cudaError_t LaunchDecodeAttention(const DecodeAttentionArgs& args, cudaStream_t stream);

}  // namespace diffmesh::models::glm_image::cuda

#endif  // DIFFMESH_MODELS_GLM_IMAGE_CUDA_AR_DECODE_H_
