#include "models/glm_image/cuda/qk_norm_rope.h"

#include "models/core/cuda/element_convert.cuh"

namespace diffmesh::models::glm_image::cuda {
namespace {

using models::cuda::FromFloat;
using models::cuda::ToFloat;

// One warp per (token, head, q|k) row of D = 32·kPer elements; lane l holds elements
// [l·kPer, (l+1)·kPer). rotate_half pairs element i with i ± D/2, which lives in lane l ^ 16.
template <typename T, int kPer>
__global__ void QkNormRopeKernel(QkNormRopeArgs a) {
  constexpr int kWarp = 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t rows = a.batch * a.seq * a.heads * 2;
  if (warp >= rows) return;  // whole warps exit together: rows are warp-aligned
  const int which = static_cast<int>(warp % 2);  // 0: q, 1: k
  const int64_t head = (warp / 2) % a.heads;
  const int64_t token = warp / (2 * a.heads);  // b·S + s
  const int64_t s = token % a.seq;
  const int64_t d = a.head_dim;

  const T* in = static_cast<const T*>(a.qkv) + ((token * 3 + which) * a.heads + head) * d;
  float x[kPer];
  float sum = 0.f, sq = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    x[i] = ToFloat(in[lane * kPer + i]);
    sum += x[i];
  }
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float mean = sum / static_cast<float>(d);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const float c = x[i] - mean;
    sq += c * c;
  }
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, o);
  const float rstd = rsqrtf(sq / static_cast<float>(d) + a.eps);
  // The reference rounds the LayerNorm's output to the model's dtype before the rotary step.
#pragma unroll
  for (int i = 0; i < kPer; ++i) x[i] = ToFloat(FromFloat<T>((x[i] - mean) * rstd));

  T* out = static_cast<T*>(which == 0 ? a.q : a.k) + (token * a.heads + head) * d;
  if (s >= a.text_len) {
    const int64_t row = (s - a.text_len) * d;
    const bool first_half = lane < kWarp / 2;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const float partner = __shfl_xor_sync(0xffffffffu, x[i], kWarp / 2);
      const int64_t e = lane * kPer + i;
      // x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁].
      const float r = x[i] * a.cos[row + e] + (first_half ? -partner : partner) * a.sin[row + e];
      out[e] = FromFloat<T>(r);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kPer; ++i) out[lane * kPer + i] = FromFloat<T>(x[i]);
  }
}

template <typename T>
cudaError_t Launch(const QkNormRopeArgs& a, cudaStream_t stream) {
  const int64_t rows = a.batch * a.seq * a.heads * 2;
  constexpr int kThreads = 256;  // 8 rows per block
  const int64_t blocks = (rows * 32 + kThreads - 1) / kThreads;
  switch (a.head_dim / 32) {
#define DM_CASE(n)                                                         \
  case n:                                                                 \
    QkNormRopeKernel<T, n><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a); \
    break;
    DM_CASE(1) DM_CASE(2) DM_CASE(3) DM_CASE(4) DM_CASE(5) DM_CASE(6) DM_CASE(7) DM_CASE(8)
#undef DM_CASE
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

bool QkNormRopeSupports(int64_t head_dim) {
  return head_dim >= 32 && head_dim <= 256 && head_dim % 32 == 0;
}

cudaError_t LaunchQkNormRope(const QkNormRopeArgs& args, cudaStream_t stream) {
  if (!QkNormRopeSupports(args.head_dim)) return cudaErrorInvalidValue;
  if (args.batch * args.seq * args.heads == 0) return cudaSuccess;
  switch (args.type) {
    case ElementType::kBFloat16: return Launch<__nv_bfloat16>(args, stream);
    case ElementType::kFloat16: return Launch<__half>(args, stream);
    case ElementType::kFloat32: return Launch<float>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace diffmesh::models::glm_image::cuda
