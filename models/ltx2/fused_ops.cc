#include "models/ltx2/fused_ops.h"

#include <optional>

#if defined(DIFFMESH_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "models/ltx2/cuda/fused_norm.h"
#endif

#include "models/core/ops.h"
#include "models/ltx2/transformer_block.h"

namespace diffmesh::models::ltx2 {
namespace {

#if defined(DIFFMESH_WITH_CUDA)
bool KernelType(const at::Tensor& x, cuda::ElementType* type) {
  switch (x.scalar_type()) {
    case at::kBFloat16: *type = cuda::ElementType::kBFloat16; return true;
    case at::kHalf: *type = cuda::ElementType::kFloat16; return true;
    case at::kFloat: *type = cuda::ElementType::kFloat32; return true;
    default: return false;
  }
}

bool SameKind(const at::Tensor& t, const at::Tensor& x) {
  return t.device() == x.device() && t.scalar_type() == x.scalar_type();
}

// Whether `m` is a modulation row the kernel can index: [1|B, 1|T, D], unit stride in D.
bool ModulationRowFits(const at::Tensor& m, const at::Tensor& x) {
  return m.defined() && SameKind(m, x) && m.dim() == 3 &&
         (m.size(0) == 1 || m.size(0) == x.size(0)) && (m.size(1) == 1 || m.size(1) == x.size(1)) &&
         m.size(2) == x.size(2) && m.stride(2) == 1;
}

int64_t BroadcastStride(const at::Tensor& m, int dim) { return m.size(dim) == 1 ? 0 : m.stride(dim); }
#endif

}  // namespace

#if defined(DIFFMESH_WITH_CUDA)
namespace {

// The NormModulate kernel when the shapes and strides allow it; nullopt otherwise.
std::optional<at::Tensor> NormModulateKernel(const at::Tensor& x, const at::Tensor& weight,
                                             const at::Tensor& scale, const at::Tensor& shift,
                                             double eps) {
  cuda::ElementType type;
  const bool modulated = scale.defined();
  if (!x.is_cuda() || x.dim() != 3 || !x.is_contiguous() || !KernelType(x, &type) ||
      (weight.defined() && (!SameKind(weight, x) || !weight.is_contiguous())) ||
      (modulated && (!ModulationRowFits(scale, x) || !ModulationRowFits(shift, x) ||
                     scale.strides() != shift.strides() || scale.sizes() != shift.sizes()))) {
    return std::nullopt;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  cuda::NormModulateArgs a;
  a.x = x.data_ptr();
  a.out = out.data_ptr();
  a.weight = weight.defined() ? weight.data_ptr() : nullptr;
  a.scale = modulated ? scale.data_ptr() : nullptr;
  a.shift = modulated ? shift.data_ptr() : nullptr;
  a.rows = x.size(0) * x.size(1);
  a.dim = x.size(2);
  a.tokens = x.size(1);
  a.mod_batch_stride = modulated ? BroadcastStride(scale, 0) : 0;
  a.mod_token_stride = modulated ? BroadcastStride(scale, 1) : 0;
  a.eps = static_cast<float>(eps);
  a.type = type;
  const cudaError_t err = cuda::LaunchNormModulate(a, c10::cuda::getCurrentCUDAStream().stream());
  if (err == cudaSuccess) return out;
  TORCH_CHECK(err == cudaErrorInvalidValue, "norm_modulate: ", cudaGetErrorString(err));
  (void)cudaGetLastError();  // a size the kernel does not take
  return std::nullopt;
}

}  // namespace
#endif

at::Tensor NormModulate(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                        const at::Tensor& shift, double eps) {
#if defined(DIFFMESH_WITH_CUDA)
  if (auto out = NormModulateKernel(x, weight, scale, shift, eps)) return *out;
#endif
  at::Tensor normed = RmsNormOptionalWeight(x, weight, eps);
  return scale.defined() ? normed * (1 + scale) + shift : normed;
}

at::Tensor NormRope(const at::Tensor& x, const at::Tensor& weight, double eps,
                    const RopeTables* tables, RopeType type) {
#if defined(DIFFMESH_WITH_CUDA)
  cuda::ElementType kernel_type;
  if (tables != nullptr && type == RopeType::kSplit && x.is_cuda() && x.dim() == 3 &&
      x.is_contiguous() && KernelType(x, &kernel_type) &&
      (!weight.defined() || (SameKind(weight, x) && weight.is_contiguous())) &&
      tables->cos.dim() == 4 && tables->cos.scalar_type() == at::kFloat &&
      tables->cos.is_contiguous() && tables->sin.is_contiguous() &&
      tables->cos.sizes() == tables->sin.sizes() && tables->cos.device() == x.device() &&
      (tables->cos.size(0) == 1 || tables->cos.size(0) == x.size(0)) &&
      tables->cos.size(2) == x.size(1) &&
      tables->cos.size(1) * tables->cos.size(3) * 2 == x.size(2)) {
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor out = at::empty_like(x);
    cuda::NormRopeArgs a;
    a.x = x.data_ptr();
    a.out = out.data_ptr();
    a.weight = weight.defined() ? weight.data_ptr() : nullptr;
    a.cos = tables->cos.data_ptr<float>();
    a.sin = tables->sin.data_ptr<float>();
    a.batch = x.size(0);
    a.tokens = x.size(1);
    a.heads = tables->cos.size(1);
    a.head_dim = 2 * tables->cos.size(3);
    a.table_batch_stride = tables->cos.size(0) == 1 ? 0 : tables->cos.stride(0);
    a.eps = static_cast<float>(eps);
    a.type = kernel_type;
    const cudaError_t err = cuda::LaunchNormRope(a, c10::cuda::getCurrentCUDAStream().stream());
    if (err == cudaSuccess) return out;
    TORCH_CHECK(err == cudaErrorInvalidValue, "norm_rope: ", cudaGetErrorString(err));
    (void)cudaGetLastError();
  }
#endif
#if defined(DIFFMESH_WITH_CUDA)
  // Without rotation (the text cross-attention's q and k): the plain RMSNorm kernel.
  if (tables == nullptr) {
    if (auto out = NormModulateKernel(x, weight, at::Tensor(), at::Tensor(), eps)) return *out;
  }
#endif
  at::Tensor normed = RmsNorm(x, weight, eps);
  return tables != nullptr ? ApplyRope(normed, *tables, type) : normed;
}

at::Tensor AddGated(const at::Tensor& x, const at::Tensor& value, const at::Tensor& gate) {
  if (!x.is_cuda()) return x + value * gate;
#if defined(DIFFMESH_WITH_CUDA)
  cuda::ElementType type;
  if (x.dim() == 3 && x.is_contiguous() && KernelType(x, &type) && SameKind(value, x) &&
      value.sizes() == x.sizes() && value.is_contiguous() && ModulationRowFits(gate, x)) {
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor out = at::empty_like(x);
    cuda::AddGatedArgs a;
    a.x = x.data_ptr();
    a.value = value.data_ptr();
    a.gate = gate.data_ptr();
    a.out = out.data_ptr();
    a.rows = x.size(0) * x.size(1);
    a.dim = x.size(2);
    a.tokens = x.size(1);
    a.gate_batch_stride = BroadcastStride(gate, 0);
    a.gate_token_stride = BroadcastStride(gate, 1);
    a.type = type;
    const cudaError_t err = cuda::LaunchAddGated(a, c10::cuda::getCurrentCUDAStream().stream());
    if (err == cudaSuccess) return out;
    TORCH_CHECK(err == cudaErrorInvalidValue, "add_gated: ", cudaGetErrorString(err));
    (void)cudaGetLastError();  // unaligned or an odd width: ATen's kernel
  }
#endif
  return at::addcmul(x, value, gate);
}

at::Tensor LinearGeluTanh(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (x.is_cuda() && bias.defined() && x.dim() >= 2 && x.scalar_type() != at::kDouble) {
    // _addmm_activation(use_gelu) maps to cuBLASLt's GELU epilogue, the tanh approximation.
    at::Tensor flat = x.reshape({-1, x.size(-1)});
    at::Tensor out = at::_addmm_activation(bias, flat, weight.t(), 1, 1, /*use_gelu=*/true);
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = weight.size(0);
    return out.view(shape);
  }
  at::Tensor h = bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
  return at::gelu(h, "tanh");
}

}  // namespace diffmesh::models::ltx2
