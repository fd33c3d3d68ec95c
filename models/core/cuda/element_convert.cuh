// Device-side conversions between the kernels' storage types (bf16, fp16, fp32) and the float32
// they compute in; shared by the models' raw-pointer CUDA kernels (models/*/cuda/*.cu).
#ifndef DIFFMESH_MODELS_CORE_CUDA_ELEMENT_CONVERT_CUH_
#define DIFFMESH_MODELS_CORE_CUDA_ELEMENT_CONVERT_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace diffmesh::models::cuda {

template <typename T>
__device__ __forceinline__ float ToFloat(T x);
template <>
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float ToFloat(float x) { return x; }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half FromFloat(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ float FromFloat(float x) { return x; }

}  // namespace diffmesh::models::cuda

#endif  // DIFFMESH_MODELS_CORE_CUDA_ELEMENT_CONVERT_CUH_
