#include "models/ltx2/conv3d.h"

#include "absl/strings/str_cat.h"

namespace diffmesh::models::ltx2 {

absl::StatusOr<SpatialPadding> ParseSpatialPadding(const std::string& mode) {
  if (mode == "zeros") return SpatialPadding::kZeros;
  if (mode == "reflect") return SpatialPadding::kReflect;
  if (mode == "replicate") return SpatialPadding::kReplicate;
  if (mode == "circular") return SpatialPadding::kCircular;
  return absl::InvalidArgumentError(absl::StrCat("unknown spatial padding mode '", mode, "'"));
}

at::Tensor CausalConv3d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        bool causal, SpatialPadding padding) {
  TORCH_CHECK(x.dim() == 5 && weight.dim() == 5, "CausalConv3d: x ", x.sizes(), ", weight ",
              weight.sizes());
  const int64_t kt = weight.size(2), ph = weight.size(3) / 2, pw = weight.size(4) / 2;
  const int64_t front = causal ? kt - 1 : (kt - 1) / 2;
  const int64_t back = causal ? 0 : (kt - 1) / 2;
  at::Tensor h = x;
  // Replication in time repeats the edge frames, which is what the reference concatenates.
  if (front > 0 || back > 0) h = at::replication_pad3d(h, {0, 0, 0, 0, front, back});
  if (padding == SpatialPadding::kZeros || (ph == 0 && pw == 0)) {
    return at::conv3d(h, weight, bias, {1, 1, 1}, {0, ph, pw});
  }
  switch (padding) {
    case SpatialPadding::kReflect:
      h = at::reflection_pad3d(h, {pw, pw, ph, ph, 0, 0});
      break;
    case SpatialPadding::kReplicate:
      h = at::replication_pad3d(h, {pw, pw, ph, ph, 0, 0});
      break;
    case SpatialPadding::kCircular: {
      // Wrap width, then height (torch's circular pad).
      h = at::cat({h.narrow(4, h.size(4) - pw, pw), h, h.narrow(4, 0, pw)}, 4);
      h = at::cat({h.narrow(3, h.size(3) - ph, ph), h, h.narrow(3, 0, ph)}, 3);
      break;
    }
    case SpatialPadding::kZeros:
      break;
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
  return x / at::sqrt(x.pow(2).mean({1}, /*keepdim=*/true) + eps);
}

}  // namespace diffmesh::models::ltx2
