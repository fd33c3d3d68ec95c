#include "models/glm_image/cuda/ar_decode.h"

#include <cuda_bf16.h>

#include <atomic>
#include <cmath>

namespace diffmesh::models::glm_image::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float Round(float x) { return __bfloat162float(__float2bfloat16(x)); }

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float BlockSum(float v, float* scratch /* [32] */) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int warps = blockDim.x / kWarp;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  return WarpSum(v);
}

// 8 bf16 in a 16-byte word.
union Pack8 {
  uint4 u;
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ void Unpack(const uint4& u, float (&f)[8]) {
  Pack8 p;
  p.u = u;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(p.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// Weights are read once per step and never again before the next: keep them out of L1.
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Programmatic dependent launch (sm_90): each kernel lets the next one in the stream start
// while it runs; the next one does only dependency-free work (streaming its weights) before
// GridDependencyWait, which returns once this grid has finished and its writes are visible.
// Every block of every kernel here waits before touching activations or the cache, so the
// chain stays ordered transitively.
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

std::atomic<bool> overlapped_launch{true};

template <typename Args>
cudaError_t Launch(void (*kernel)(Args), dim3 grid, dim3 block, cudaStream_t stream,
                   const Args& args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  if (overlapped_launch.load(std::memory_order_relaxed)) {
    config.attrs = attribute;
    config.numAttrs = 1;
  }
  if (cudaError_t e = cudaLaunchKernelEx(&config, kernel, args); e != cudaSuccess) return e;
  return cudaGetLastError();
}

// ------------------------------------------------------------------------- residual + RMSNorm

constexpr int kNormThreads = 512;
constexpr int kNormPer = 2;  // 16-byte chunks per thread: widths up to 512 · 8 · 2 = 8192
constexpr int kNormMaxWidth = kNormThreads * 8 * kNormPer;

// One block per sequence; the row stays in registers between the two reductions.
__global__ void __launch_bounds__(kNormThreads) ResidualRmsNormKernel(ResidualRmsNormArgs a) {
  AllowDependentLaunch();
  __shared__ float scratch[32];
  const int chunks = a.n / 8;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * chunks;
  uint4* hidden = static_cast<uint4*>(a.hidden) + offset;
  float h[kNormPer][8];
  uint4 w_delta[kNormPer], w_in[kNormPer];
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {  // weights: no dependency on earlier kernels
    const int c = threadIdx.x + j * kNormThreads;
    if (c < chunks) {
      w_in[j] = __ldg(static_cast<const uint4*>(a.w_in) + c);
      if (a.delta != nullptr) w_delta[j] = __ldg(static_cast<const uint4*>(a.w_delta) + c);
    }
  }
  GridDependencyWait();
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {
    const int c = threadIdx.x + j * kNormThreads;
#pragma unroll
    for (int e = 0; e < 8; ++e) h[j][e] = 0.f;
    if (c < chunks) Unpack(hidden[c], h[j]);
  }
  if (a.delta != nullptr) {
    float d[kNormPer][8];
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) {
      const int c = threadIdx.x + j * kNormThreads;
#pragma unroll
      for (int e = 0; e < 8; ++e) d[j][e] = 0.f;
      if (c < chunks) Unpack(static_cast<const uint4*>(a.delta)[offset + c], d[j]);
#pragma unroll
      for (int e = 0; e < 8; ++e) sq += d[j][e] * d[j][e];
    }
    const float rstd = rsqrtf(BlockSum(sq, scratch) / static_cast<float>(a.n) + a.eps);
    sq = 0.f;
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) {
      const int c = threadIdx.x + j * kNormThreads;
      if (c >= chunks) continue;
      float w[8];
      Unpack(w_delta[j], w);
      Pack8 out;
#pragma unroll
      for (int e = 0; e < 8; e += 2) {
        // hidden + weight · bf16(delta · rstd), rounded as the ATen composition rounds.
        const float h0 = Round(h[j][e] + Round(Round(d[j][e] * rstd) * w[e]));
        const float h1 = Round(h[j][e + 1] + Round(Round(d[j][e + 1] * rstd) * w[e + 1]));
        h[j][e] = h0;
        h[j][e + 1] = h1;
        out.h[e / 2] = __floats2bfloat162_rn(h0, h1);
      }
      hidden[c] = out.u;
    }
  }
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {
#pragma unroll
    for (int e = 0; e < 8; ++e) sq += h[j][e] * h[j][e];
  }
  const float rstd = rsqrtf(BlockSum(sq, scratch) / static_cast<float>(a.n) + a.eps);
  uint4* out = static_cast<uint4*>(a.out) + offset;
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {
    const int c = threadIdx.x + j * kNormThreads;
    if (c >= chunks) continue;
    float w[8];
    Unpack(w_in[j], w);
    Pack8 o;
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      o.h[e / 2] = __floats2bfloat162_rn(Round(h[j][e] * rstd) * w[e],
                                         Round(h[j][e + 1] * rstd) * w[e + 1]);
    }
    out[c] = o.u;
  }
}

// ------------------------------------------------------------------------------------ GEMV

constexpr int kGemvThreads = 256;

// A block computes kRows output rows for every batch row: each thread takes 16-byte chunks
// t, t + 256, ... of those weight rows (kRows independent streaming loads in flight per chunk
// step), multiplies them with the same chunks of x (L1-resident), and the block reduces. With
// SwiGLU a block's kRows rows are its gate rows and the matching up rows.
template <int kBatch, int kRows, GemvEpilogue kEpilogue>
__global__ void __launch_bounds__(kGemvThreads) GemvKernel(GemvArgs a) {
  AllowDependentLaunch();
  constexpr bool kSwiGlu = kEpilogue == GemvEpilogue::kSwiGlu;
  constexpr int kLoads = kSwiGlu ? 2 * kRows : kRows;
  // Chunk steps whose weights are loaded before waiting for the input (for k = 4096 the
  // block's whole tile), so that they stream while the previous kernel finishes.
  constexpr int kEarly = 2;
  const int chunks = a.k / 8;
  const int r0 = blockIdx.x * kRows;
  const uint4* w[kLoads];
#pragma unroll
  for (int i = 0; i < kLoads; ++i) {
    int r = r0 + (i % kRows);
    if (r >= a.rows) r = a.rows - 1;  // duplicate work for a ragged last block, not stored
    if (kSwiGlu && i >= kRows) r += a.rows;
    w[i] = static_cast<const uint4*>(a.w) + static_cast<int64_t>(r) * chunks;
  }
  uint4 early[kEarly][kLoads];
#pragma unroll
  for (int u = 0; u < kEarly; ++u) {
    const int c = threadIdx.x + u * kGemvThreads;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      early[u][i] = c < chunks ? LoadStreaming(w[i] + c) : make_uint4(0, 0, 0, 0);
    }
  }
  GridDependencyWait();
  const uint4* x = static_cast<const uint4*>(a.x);

  float acc[kBatch][kLoads];
#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) acc[b][i] = 0.f;
  }
  // One chunk step: the same order of FMAs for every batch row and batch size.
  auto step = [&](int c, const uint4 (&wv)[kLoads]) {
    float xf[kBatch][8];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) Unpack(__ldg(x + static_cast<int64_t>(b) * chunks + c), xf[b]);
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      float wf[8];
      Unpack(wv[i], wf);
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[b][i] = fmaf(wf[e], xf[b][e], acc[b][i]);
      }
    }
  };
#pragma unroll
  for (int u = 0; u < kEarly; ++u) {
    const int c = threadIdx.x + u * kGemvThreads;
    if (c < chunks) step(c, early[u]);
  }
#pragma unroll 2
  for (int c = threadIdx.x + kEarly * kGemvThreads; c < chunks; c += kGemvThreads) {
    uint4 wv[kLoads];
#pragma unroll
    for (int i = 0; i < kLoads; ++i) wv[i] = LoadStreaming(w[i] + c);
    step(c, wv);
  }

  __shared__ float partial[kGemvThreads / kWarp][kBatch * kLoads];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const float v = WarpSum(acc[b][i]);
      if (lane == 0) partial[warp][b * kLoads + i] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x < kBatch * kRows) {
    const int b = threadIdx.x / kRows, i = threadIdx.x % kRows;
    const int r = r0 + i;
    if (r < a.rows) {
      auto total = [&](int slot) {
        float s = 0.f;
#pragma unroll
        for (int v = 0; v < kGemvThreads / kWarp; ++v) s += partial[v][b * kLoads + slot];
        return s;
      };
      float y = total(i);
      if constexpr (kEpilogue == GemvEpilogue::kBias) {
        y += __bfloat162float(static_cast<const bf16*>(a.bias)[r]);
      } else if constexpr (kSwiGlu) {
        const float g = Round(y), u = Round(total(kRows + i));
        y = u * Round(g / (1.f + __expf(-g)));
      }
      static_cast<bf16*>(a.y)[static_cast<int64_t>(b) * a.rows + r] = __float2bfloat16(y);
    }
  }
}

template <int kBatch, GemvEpilogue kEpilogue>
cudaError_t GemvFor(const GemvArgs& a, cudaStream_t stream) {
  constexpr int kRows = kEpilogue == GemvEpilogue::kSwiGlu ? 2 : 4;
  const int blocks = (a.rows + kRows - 1) / kRows;
  return Launch(GemvKernel<kBatch, kRows, kEpilogue>, dim3(blocks), dim3(kGemvThreads), stream, a);
}

template <GemvEpilogue kEpilogue>
cudaError_t GemvEpilogueFor(const GemvArgs& a, cudaStream_t stream) {
  switch (a.batch) {
    case 1: return GemvFor<1, kEpilogue>(a, stream);
    case 2: return GemvFor<2, kEpilogue>(a, stream);
    case 3: return GemvFor<3, kEpilogue>(a, stream);
    case 4: return GemvFor<4, kEpilogue>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

// ------------------------------------------------------------------------------- attention

constexpr int kHeadDim = 128;
constexpr int kChunk = kAttentionChunk;
// Up to this many key chunks the attention kernel combines them itself.
constexpr int kMaxSplitsCombinedInKernel = 4;
static_assert(kChunk == kHeadDim, "one thread per key while scoring, per channel after");

// q or k channel d of a head after the rotary step, rounded as the ATen composition rounds:
// bf16(bf16(x·cos) + bf16(rotate_half(x)·sin)) for d < rotary_dim, x beyond.
__device__ __forceinline__ float Rotate(const bf16* head, int d, int rd, const bf16* cos,
                                        const bf16* sin) {
  const float x = __bfloat162float(head[d]);
  if (d >= rd) return x;
  const int half = rd / 2;
  const float partner = __bfloat162float(head[d < half ? d + half : d - half]);
  const float rotated = d < half ? -partner : partner;
  return Round(Round(x * __bfloat162float(cos[d])) + Round(rotated * __bfloat162float(sin[d])));
}

// Grid (splits, heads / kHeads, batch), kChunk threads: kHeads query heads of one KV group
// against keys [split·kChunk, split·kChunk + kChunk) ∩ [0, L] of the sequence's slot, L its
// length before this step (key L is the new token: rotated here from the projection, and
// written into the cache by the group's first block of the split that holds it). The cached
// keys and values were written by earlier steps, so they are read before waiting for the
// projection. The last block of a (sequence, head block) to finish combines the splits.
template <int kHeads>
__global__ void __launch_bounds__(kChunk) DecodeAttentionKernel(DecodeAttentionArgs a) {
  AllowDependentLaunch();
  const int split = blockIdx.x, b = blockIdx.z;
  const int head0 = blockIdx.y * kHeads;  // first query head of this block
  const int group = a.heads / a.kv_heads;
  const int kvh = head0 / group;
  const int t = threadIdx.x;
  const int64_t len = a.lengths[b];  // set by the host before the step
  const int64_t start = static_cast<int64_t>(split) * kChunk;
  if (start > len) return;  // past this sequence's keys: not counted by the combine
  const int keys = static_cast<int>(min(static_cast<int64_t>(kChunk), len + 1 - start));
  const int cached = keys - (len < start + kChunk ? 1 : 0);  // keys already in the cache
  const int qkv_width = (a.heads + 2 * a.kv_heads) * kHeadDim;

  __shared__ __align__(16) bf16 q[kHeads][kHeadDim];
  __shared__ __align__(16) bf16 v[kChunk][kHeadDim];
  __shared__ float p[kHeads][kChunk];
  __shared__ __align__(16) bf16 k_new[kHeadDim];
  __shared__ float m_head[kHeads], l_head[kHeads];
  __shared__ bool last;

  const int64_t slot = a.slots[b];
  const int64_t head_offset = (slot * a.kv_heads + kvh) * a.capacity;  // in rows of D
  bf16* k_cache = static_cast<bf16*>(a.k_cache) + head_offset * kHeadDim;
  bf16* v_cache = static_cast<bf16*>(a.v_cache) + head_offset * kHeadDim;

  // The chunk's values into shared memory; with few heads per block (small grids, where the
  // step waits on this kernel) thread t's key row into registers too. With many, the row is
  // read after the wait, which keeps registers (and blocks per multiprocessor) for long keys.
  constexpr bool kEarlyKeys = kHeads <= 2;
  uint4 key[kHeadDim / 8];
  if (kEarlyKeys && t < cached) {
    const uint4* src = reinterpret_cast<const uint4*>(k_cache + (start + t) * kHeadDim);
#pragma unroll
    for (int c = 0; c < kHeadDim / 8; ++c) key[c] = src[c];
  }
  for (int i = t; i < cached * (kHeadDim / 8); i += kChunk) {
    const int j = i / (kHeadDim / 8), part = i % (kHeadDim / 8);
    reinterpret_cast<uint4*>(&v[j][0])[part] =
        reinterpret_cast<const uint4*>(v_cache + (start + j) * kHeadDim)[part];
  }

  GridDependencyWait();  // the projection (qkv) is the previous kernel's output
  const bf16* row = static_cast<const bf16*>(a.qkv) + static_cast<int64_t>(b) * qkv_width;
  const bf16* cos = static_cast<const bf16*>(a.cos) + static_cast<int64_t>(b) * a.rotary_dim;
  const bf16* sin = static_cast<const bf16*>(a.sin) + static_cast<int64_t>(b) * a.rotary_dim;
  // Channel t of each query head and of the new key/value.
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    q[g][t] = __float2bfloat16(Rotate(row + (head0 + g) * kHeadDim, t, a.rotary_dim, cos, sin));
  }
  if (cached < keys) {  // this block holds key `len`
    const bf16 kt = __float2bfloat16(
        Rotate(row + (a.heads + kvh) * kHeadDim, t, a.rotary_dim, cos, sin));
    const bf16 vt = row[(a.heads + a.kv_heads + kvh) * kHeadDim + t];
    k_new[t] = kt;
    v[cached][t] = vt;
    if (head0 % group == 0) {  // one block per KV head writes the new entry
      k_cache[len * kHeadDim + t] = kt;
      v_cache[len * kHeadDim + t] = vt;
    }
  }
  __syncthreads();

  // Scores: thread t takes key start + t.
  float s[kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) s[g] = 0.f;
  auto score = [&](int c, const uint4& k) {
    float kf[8];
    Unpack(k, kf);
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      float qf[8];
      Unpack(reinterpret_cast<const uint4*>(&q[g][0])[c], qf);
#pragma unroll
      for (int e = 0; e < 8; ++e) s[g] = fmaf(qf[e], kf[e], s[g]);
    }
  };
  const uint4* src = t == cached
                         ? reinterpret_cast<const uint4*>(k_new)
                         : reinterpret_cast<const uint4*>(k_cache + (start + t) * kHeadDim);
  if (t < keys) {
    if constexpr (kEarlyKeys) {
      if (t == cached) {
#pragma unroll
        for (int c = 0; c < kHeadDim / 8; ++c) key[c] = src[c];
      }
#pragma unroll
      for (int c = 0; c < kHeadDim / 8; ++c) score(c, key[c]);
    } else {
#pragma unroll
      for (int c = 0; c < kHeadDim / 8; ++c) score(c, src[c]);
    }
  }
#pragma unroll
  for (int g = 0; g < kHeads; ++g) p[g][t] = t < keys ? s[g] * a.scale : -INFINITY;
  __syncthreads();

  // Softmax numerators per head: warp w takes heads w, w + 4, ...
  const int warp = t / kWarp, lane = t % kWarp;
  for (int g = warp; g < kHeads; g += kChunk / kWarp) {
    float m = -INFINITY;
    for (int j = lane; j < kChunk; j += kWarp) m = fmaxf(m, p[g][j]);
    m = WarpMax(m);
    float l = 0.f;
    for (int j = lane; j < kChunk; j += kWarp) {
      const float e = __expf(p[g][j] - m);  // masked keys: exp(-inf) = 0
      p[g][j] = e;
      l += e;
    }
    l = WarpSum(l);
    if (lane == 0) {
      m_head[g] = m;
      l_head[g] = l;
    }
  }
  __syncthreads();

  // Unnormalized output, channel t of each head.
  float o[kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) o[g] = 0.f;
#pragma unroll 4
  for (int j = 0; j < keys; ++j) {
    const float vj = __bfloat162float(v[j][t]);
#pragma unroll
    for (int g = 0; g < kHeads; ++g) o[g] = fmaf(p[g][j], vj, o[g]);
  }
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    const int64_t h = static_cast<int64_t>(b) * a.heads + head0 + g;
    a.o_partial[(h * a.splits + split) * kHeadDim + t] = o[g];
    if (t == 0) {
      a.m_partial[h * a.splits + split] = m_head[g];
      a.l_partial[h * a.splits + split] = l_head[g];
    }
  }

  // With few splits the last of those that hold keys combines them (no combine kernel on the
  // step's critical path); with many, DecodeAttentionCombineKernel spreads that over heads.
  if (!a.combine_in_kernel) return;
  const int used = static_cast<int>(len / kChunk) + 1;
  __threadfence();
  __syncthreads();
  if (t == 0) {
    int* counter = a.counters + static_cast<int64_t>(b) * a.heads + head0;
    last = atomicAdd(counter, 1) == used - 1;
    if (last) *counter = 0;  // ready for the next layer
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int64_t h0 = static_cast<int64_t>(b) * a.heads + head0;
  float top[kHeads], num[kHeads], den[kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    top[g] = -INFINITY;
    num[g] = den[g] = 0.f;
  }
  for (int i = 0; i < used; ++i) {  // heads innermost: their loads are in flight together
#pragma unroll
    for (int g = 0; g < kHeads; ++g) top[g] = fmaxf(top[g], __ldcg(a.m_partial + (h0 + g) * a.splits + i));
  }
  for (int i = 0; i < used; ++i) {
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      const int64_t at = (h0 + g) * a.splits + i;
      const float w = __expf(__ldcg(a.m_partial + at) - top[g]);
      num[g] = fmaf(w, __ldcg(a.o_partial + at * kHeadDim + t), num[g]);
      den[g] = fmaf(w, __ldcg(a.l_partial + at), den[g]);
    }
  }
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    static_cast<bf16*>(a.out)[(h0 + g) * kHeadDim + t] = __float2bfloat16(num[g] / den[g]);
  }
}

// Grid (heads, batch), kHeadDim threads: the splits that hold keys, weighted by their maxima.
__global__ void __launch_bounds__(kHeadDim) DecodeAttentionCombineKernel(DecodeAttentionArgs a) {
  AllowDependentLaunch();
  const int h = blockIdx.x, b = blockIdx.y, t = threadIdx.x;
  const int used = static_cast<int>(a.lengths[b] / kChunk) + 1;
  GridDependencyWait();
  const int64_t base = static_cast<int64_t>(b) * a.heads + h;
  const float* m = a.m_partial + base * a.splits;
  const float* l = a.l_partial + base * a.splits;
  const float* o = a.o_partial + base * a.splits * kHeadDim;
  float top = -INFINITY;
  for (int s = 0; s < used; ++s) top = fmaxf(top, m[s]);
  float num = 0.f, den = 0.f;
  for (int s = 0; s < used; ++s) {
    const float w = __expf(m[s] - top);
    num = fmaf(w, o[s * kHeadDim + t], num);
    den = fmaf(w, l[s], den);
  }
  static_cast<bf16*>(a.out)[base * kHeadDim + t] = __float2bfloat16(num / den);
}

}  // namespace

void SetOverlappedLaunch(bool on) { overlapped_launch.store(on, std::memory_order_relaxed); }

cudaError_t LaunchResidualRmsNorm(const ResidualRmsNormArgs& a, cudaStream_t stream) {
  if (a.batch <= 0 || a.n <= 0 || a.n % 8 != 0 || a.n > kNormMaxWidth || a.hidden == nullptr ||
      a.w_in == nullptr || a.out == nullptr || (a.delta != nullptr && a.w_delta == nullptr)) {
    return cudaErrorInvalidValue;
  }
  return Launch(ResidualRmsNormKernel, dim3(a.batch), dim3(kNormThreads), stream, a);
}

cudaError_t LaunchGemv(const GemvArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.k <= 0 || a.k % 8 != 0 || a.w == nullptr || a.x == nullptr ||
      a.y == nullptr || (a.epilogue == GemvEpilogue::kBias && a.bias == nullptr)) {
    return cudaErrorInvalidValue;
  }
  for (const void* p : {a.w, a.x}) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return cudaErrorMisalignedAddress;
  }
  switch (a.epilogue) {
    case GemvEpilogue::kNone: return GemvEpilogueFor<GemvEpilogue::kNone>(a, stream);
    case GemvEpilogue::kBias: return GemvEpilogueFor<GemvEpilogue::kBias>(a, stream);
    case GemvEpilogue::kSwiGlu: return GemvEpilogueFor<GemvEpilogue::kSwiGlu>(a, stream);
  }
  return cudaErrorInvalidValue;
}

bool DecodeAttentionSupports(int heads, int kv_heads, int head_dim, int rotary_dim) {
  return head_dim == kHeadDim && kv_heads > 0 && heads % kv_heads == 0 &&
         rotary_dim >= 0 && rotary_dim <= head_dim &&
         rotary_dim % 2 == 0;
}

cudaError_t LaunchDecodeAttention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  if (!DecodeAttentionSupports(a.heads, a.kv_heads, a.head_dim, a.rotary_dim) || a.batch <= 0 ||
      a.splits <= 0 || a.capacity <= 0 || a.counters == nullptr) {
    return cudaErrorInvalidValue;
  }
  // Heads per block: as many of the group as keep at least two blocks per multiprocessor
  // (fewer blocks re-read the keys less from L2; more blocks shorten each one's serial work).
  // A head's arithmetic is the same whichever block takes it.
  static const int multiprocessors = [] {
    int device = 0, count = 132;
    if (cudaGetDevice(&device) == cudaSuccess) {
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    }
    return count;
  }();
  const int group = a.heads / a.kv_heads;
  int per_block = 16;
  if (a.heads_per_block != 0) {
    if (a.heads_per_block < 0 || a.heads_per_block > 16 || group % a.heads_per_block != 0 ||
        (a.heads_per_block & (a.heads_per_block - 1)) != 0) {
      return cudaErrorInvalidValue;
    }
    per_block = a.heads_per_block;
  }
  while (a.heads_per_block == 0 && per_block > 1 && (group % per_block != 0 ||
                           static_cast<int64_t>(a.splits) * (a.heads / per_block) * a.batch <
                               2 * multiprocessors)) {
    per_block /= 2;
  }
  const dim3 grid(a.splits, a.heads / per_block, a.batch);
  DecodeAttentionArgs args = a;
  args.combine_in_kernel = a.splits <= kMaxSplitsCombinedInKernel;
  cudaError_t e = cudaErrorInvalidValue;
  switch (per_block) {
    case 16: e = Launch(DecodeAttentionKernel<16>, grid, dim3(kChunk), stream, args); break;
    case 8: e = Launch(DecodeAttentionKernel<8>, grid, dim3(kChunk), stream, args); break;
    case 4: e = Launch(DecodeAttentionKernel<4>, grid, dim3(kChunk), stream, args); break;
    case 2: e = Launch(DecodeAttentionKernel<2>, grid, dim3(kChunk), stream, args); break;
    default: e = Launch(DecodeAttentionKernel<1>, grid, dim3(kChunk), stream, args); break;
  }
  if (e != cudaSuccess || args.combine_in_kernel) return e;
  return Launch(DecodeAttentionCombineKernel, dim3(a.heads, a.batch), dim3(kHeadDim), stream, args);
}

}  // namespace diffmesh::models::glm_image::cuda
