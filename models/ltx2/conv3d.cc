#include "models/ltx2/conv3d.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace diffmesh::models::ltx2 {

absl::StatusOr<SpatialPadding> ParseSpatialPadding(const std::string& mode) {
  if (mode == "zeros") return SpatialPadding::kZeros;
  if (mode == "reflect") return SpatialPadding::kReflect;
  if (mode == "replicate") return SpatialPadding::kReplicate;
  if (mode == "circular") return SpatialPadding::kCircular;
  return absl::InvalidArgumentError(absl::StrCat("unknown spatial padding mode '", mode, "'"));
}

namespace {

// Source index along an axis of `size` for each padded position under `padding` (pad `p` on
// both sides): the same maps as torch's reflect / replicate / circular pads.
at::Tensor PadIndex(int64_t size, int64_t p, SpatialPadding padding, const at::Device& device) {
  std::vector<int64_t> index;
  for (int64_t i = -p; i < size + p; ++i) {
    int64_t j = i;
    if (padding == SpatialPadding::kReflect) {
      j = i < 0 ? -i : (i >= size ? 2 * (size - 1) - i : i);
    } else if (padding == SpatialPadding::kReplicate) {
      j = std::clamp<int64_t>(i, 0, size - 1);
    } else {
      j = ((i % size) + size) % size;
    }
    index.push_back(j);
  }
  return at::tensor(index, at::kLong).to(device);
}

// Whether ATen has native 3-D pad kernels for x (LibTorch 1.13's CPU pads lack bf16/fp16).
bool HasNativePad(const at::Tensor& x) {
  return x.is_cuda() || x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
}

}  // namespace

at::Tensor CausalConv3d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        bool causal, SpatialPadding padding) {
  TORCH_CHECK(x.dim() == 5 && weight.dim() == 5, "CausalConv3d: x ", x.sizes(), ", weight ",
              weight.sizes());
  const int64_t kt = weight.size(2), ph = weight.size(3) / 2, pw = weight.size(4) / 2;
  const int64_t front = causal ? kt - 1 : (kt - 1) / 2;
  const int64_t back = causal ? 0 : (kt - 1) / 2;
  at::Tensor h = x;
  if (front > 0 || back > 0) {
    // Repeat the edge frames, as the reference concatenates them.
    const int64_t f = x.size(2);
    std::vector<at::Tensor> parts;
    if (front > 0) parts.push_back(x.narrow(2, 0, 1).expand({-1, -1, front, -1, -1}));
    parts.push_back(x);
    if (back > 0) parts.push_back(x.narrow(2, f - 1, 1).expand({-1, -1, back, -1, -1}));
    h = at::cat(parts, 2);
  }
  if (padding == SpatialPadding::kZeros || (ph == 0 && pw == 0)) {
    return at::conv3d(h, weight, bias, {1, 1, 1}, {0, ph, pw});
  }
  if (padding == SpatialPadding::kReflect && HasNativePad(h)) {
    h = at::reflection_pad3d(h, {pw, pw, ph, ph, 0, 0});
  } else if (padding == SpatialPadding::kReplicate && HasNativePad(h)) {
    h = at::replication_pad3d(h, {pw, pw, ph, ph, 0, 0});
  } else {
    TORCH_CHECK(padding != SpatialPadding::kReflect || (h.size(3) > ph && h.size(4) > pw),
                "CausalConv3d: reflect padding needs height/width above the padding, got ",
                h.sizes());
    h = h.index_select(3, PadIndex(h.size(3), ph, padding, h.device()))
            .index_select(4, PadIndex(h.size(4), pw, padding, h.device()));
  }
  return at::conv3d(h, weight, bias);
}

at::Tensor DepthToSpace3d(const at::Tensor& x, const std::array<int64_t, 3>& s) {
  TORCH_CHECK(x.dim() == 5 && x.size(1) % (s[0] * s[1] * s[2]) == 0, "DepthToSpace3d: input ",
              x.sizes(), " with factors ", s[0], "x", s[1], "x", s[2]);
  const int64_t b = x.size(0), f = x.size(2), h = x.size(3), w = x.size(4);
  return x.reshape({b, -1, s[0], s[1], s[2], f, h, w})
      .permute({0, 1, 5, 2, 6, 3, 7, 4})  // [B, C, F, st, H, sh, W, sw]
      .reshape({b, -1, f * s[0], h * s[1], w * s[2]});
}

at::Tensor PixelNorm(const at::Tensor& x, double eps) {
  if (x.scalar_type() == at::kFloat) return x / at::sqrt(x.pow(2).mean({1}, /*keepdim=*/true) + eps);
  // bf16 / fp16: the mean of squares and the division in float32, one rounding at the end.
  const at::Tensor xf = x.to(at::kFloat);
  return (xf / at::sqrt(xf.pow(2).mean({1}, /*keepdim=*/true) + eps)).to(x.scalar_type());
}

}  // namespace diffmesh::models::ltx2
