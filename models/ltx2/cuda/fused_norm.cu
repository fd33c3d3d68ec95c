#include "models/ltx2/cuda/fused_norm.h"

#include <cstdint>

#include "models/core/cuda/element_convert.cuh"

namespace diffmesh::models::ltx2::cuda {
namespace {

constexpr int kThreads = 256;

using models::cuda::FromFloat;
using models::cuda::ToFloat;

// Sum over the block; every thread gets the total.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[kThreads / 32];
  __shared__ float total;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < kThreads / 32 ? partial[lane] : 0.f;
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// One block per row; the row (≤ kMaxPer·kThreads elements) stays in registers between the two
// passes.
template <typename T, int kMaxPer>
__global__ void __launch_bounds__(kThreads) NormModulateKernel(NormModulateArgs a) {
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(a.x) + row * a.dim;
  T* out = static_cast<T*>(a.out) + row * a.dim;
  float v[kMaxPer];
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxPer; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    v[j] = i < a.dim ? ToFloat(x[i]) : 0.f;
    sq += v[j] * v[j];
  }
  const float rstd = rsqrtf(BlockSum(sq) / static_cast<float>(a.dim) + a.eps);
  const T* w = static_cast<const T*>(a.weight);
  const int64_t b = row / a.tokens, t = row % a.tokens;
  const int64_t mod = b * a.mod_batch_stride + t * a.mod_token_stride;
  const T* scale = a.scale == nullptr ? nullptr : static_cast<const T*>(a.scale) + mod;
  const T* shift = a.shift == nullptr ? nullptr : static_cast<const T*>(a.shift) + mod;
#pragma unroll
  for (int j = 0; j < kMaxPer; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (i >= a.dim) break;
    float y = v[j] * rstd;
    if (w != nullptr) y *= ToFloat(w[i]);
    if (scale != nullptr) y = y * (1.f + ToFloat(scale[i])) + ToFloat(shift[i]);
    out[i] = FromFloat<T>(y);
  }
}

// One block per (batch, token) row; thread p handles rotation pairs p, p + kThreads, ...
template <typename T, int kMaxPairs>
__global__ void __launch_bounds__(kThreads) NormRopeKernel(NormRopeArgs a) {
  const int64_t row = blockIdx.x;  // b·tokens + t
  const int64_t b = row / a.tokens, t = row % a.tokens;
  const int64_t dim = a.heads * a.head_dim, r = a.head_dim / 2, pairs = dim / 2;
  const T* x = static_cast<const T*>(a.x) + row * dim;
  T* out = static_cast<T*>(a.out) + row * dim;
  float x1[kMaxPairs], x2[kMaxPairs];
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxPairs; ++j) {
    const int64_t p = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (p < pairs) {
      const int64_t e1 = (p / r) * a.head_dim + p % r;
      x1[j] = ToFloat(x[e1]);
      x2[j] = ToFloat(x[e1 + r]);
    } else {
      x1[j] = x2[j] = 0.f;
    }
    sq += x1[j] * x1[j] + x2[j] * x2[j];
  }
  const float rstd = rsqrtf(BlockSum(sq) / static_cast<float>(dim) + a.eps);
  const T* w = static_cast<const T*>(a.weight);
#pragma unroll
  for (int j = 0; j < kMaxPairs; ++j) {
    const int64_t p = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (p >= pairs) break;
    const int64_t h = p / r, i = p % r, e1 = h * a.head_dim + i, e2 = e1 + r;
    float v1 = x1[j] * rstd, v2 = x2[j] * rstd;
    if (w != nullptr) {
      v1 *= ToFloat(w[e1]);
      v2 *= ToFloat(w[e2]);
    }
    const int64_t k = b * a.table_batch_stride + (h * a.tokens + t) * r + i;
    const float c = a.cos[k], s = a.sin[k];
    out[e1] = FromFloat<T>(v1 * c - v2 * s);
    out[e2] = FromFloat<T>(v2 * c + v1 * s);
  }
}

// One thread per 16-byte pack of a row: kPack elements of x, value and the gate row.
template <typename T>
__global__ void __launch_bounds__(kThreads) AddGatedKernel(AddGatedArgs a, int64_t packs_per_row,
                                                           int64_t packs) {
  constexpr int kPack = 16 / sizeof(T);
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (p >= packs) return;
  const int64_t row = p / packs_per_row, col = (p % packs_per_row) * kPack;
  const int64_t b = row / a.tokens, t = row % a.tokens;
  const int64_t at_row = row * a.dim + col;
  const uint4 xv = *reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + at_row);
  const uint4 vv = *reinterpret_cast<const uint4*>(static_cast<const T*>(a.value) + at_row);
  const uint4 gv = *reinterpret_cast<const uint4*>(
      static_cast<const T*>(a.gate) + b * a.gate_batch_stride + t * a.gate_token_stride + col);
  const T* xs = reinterpret_cast<const T*>(&xv);
  const T* vs = reinterpret_cast<const T*>(&vv);
  const T* gs = reinterpret_cast<const T*>(&gv);
  uint4 ov;
  T* os = reinterpret_cast<T*>(&ov);
#pragma unroll
  for (int j = 0; j < kPack; ++j) {
    os[j] = FromFloat<T>(ToFloat(xs[j]) + ToFloat(vs[j]) * ToFloat(gs[j]));
  }
  *reinterpret_cast<uint4*>(static_cast<T*>(a.out) + at_row) = ov;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
cudaError_t AddGatedFor(const AddGatedArgs& a, cudaStream_t stream) {
  constexpr int kPack = 16 / sizeof(T);
  if (a.dim % kPack != 0 || a.gate_batch_stride % kPack != 0 ||
      a.gate_token_stride % kPack != 0 || !Aligned16(a.x) || !Aligned16(a.value) ||
      !Aligned16(a.gate) || !Aligned16(a.out)) {
    return cudaErrorInvalidValue;
  }
  const int64_t packs_per_row = a.dim / kPack, packs = a.rows * packs_per_row;
  const int64_t blocks = (packs + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  AddGatedKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, packs_per_row,
                                                                            packs);
  return cudaGetLastError();
}

template <typename T>
cudaError_t NormModulateFor(const NormModulateArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.rows));
  if (a.dim <= 4 * kThreads) {
    NormModulateKernel<T, 4><<<grid, kThreads, 0, stream>>>(a);
  } else if (a.dim <= 16 * kThreads) {
    NormModulateKernel<T, 16><<<grid, kThreads, 0, stream>>>(a);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t NormRopeFor(const NormRopeArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.batch * a.tokens));
  const int64_t pairs = a.heads * a.head_dim / 2;
  if (pairs <= 4 * kThreads) {
    NormRopeKernel<T, 4><<<grid, kThreads, 0, stream>>>(a);
  } else if (pairs <= 8 * kThreads) {
    NormRopeKernel<T, 8><<<grid, kThreads, 0, stream>>>(a);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchNormModulate(const NormModulateArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.rows > 0x7fffffff || a.dim <= 0 || a.tokens <= 0) {
    return cudaErrorInvalidValue;
  }
  if ((a.scale == nullptr) != (a.shift == nullptr)) return cudaErrorInvalidValue;
  switch (a.type) {
    case ElementType::kBFloat16: return NormModulateFor<__nv_bfloat16>(a, stream);
    case ElementType::kFloat16: return NormModulateFor<__half>(a, stream);
    case ElementType::kFloat32: return NormModulateFor<float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchNormRope(const NormRopeArgs& a, cudaStream_t stream) {
  if (a.batch <= 0 || a.tokens <= 0 || a.heads <= 0 || a.head_dim <= 0 || a.head_dim % 2 != 0 ||
      a.batch * a.tokens > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  switch (a.type) {
    case ElementType::kBFloat16: return NormRopeFor<__nv_bfloat16>(a, stream);
    case ElementType::kFloat16: return NormRopeFor<__half>(a, stream);
    case ElementType::kFloat32: return NormRopeFor<float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchAddGated(const AddGatedArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.dim <= 0 || a.tokens <= 0) return cudaErrorInvalidValue;
  switch (a.type) {
    case ElementType::kBFloat16: return AddGatedFor<__nv_bfloat16>(a, stream);
    case ElementType::kFloat16: return AddGatedFor<__half>(a, stream);
    case ElementType::kFloat32: return AddGatedFor<float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace diffmesh::models::ltx2::cuda
