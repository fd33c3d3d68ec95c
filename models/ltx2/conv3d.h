// 3-D convolution helpers of the LTX-2 video VAE and latent upsampler (diffusers
// autoencoder_kl_ltx2.py LTX2VideoCausalConv3d, the depth-to-space of its upsamplers, and the
// per-location RMS "pixel norm").
#ifndef DIFFMESH_MODELS_LTX2_CONV3D_H_
#define DIFFMESH_MODELS_LTX2_CONV3D_H_

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace diffmesh::models::ltx2 {

// How a convolution pads height and width (torch.nn.Conv3d padding_mode).
enum class SpatialPadding { kZeros, kReflect, kReplicate, kCircular };

// "zeros" | "reflect" | "replicate" | "circular"; anything else is INVALID_ARGUMENT.
absl::StatusOr<SpatialPadding> ParseSpatialPadding(const std::string& mode);

// LTX2VideoCausalConv3d: stride 1, kernel [kt, kh, kw] from `weight` [out, in, kt, kh, kw].
// Time is padded by repeating frames: causal = kt-1 copies of the first frame in front;
// non-causal = (kt-1)/2 copies of the first frame in front and of the last frame behind. Height
// and width are padded by kh/2, kw/2 in `padding`.
// x [B, in, F, H, W] → [B, out, F, H, W] (F unchanged for odd kt).
at::Tensor CausalConv3d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        bool causal, SpatialPadding padding);

// Depth-to-space over (time, height, width) with factors s = {st, sh, sw}:
// out[b, c, f·st+i, h·sh+j, w·sw+k] = in[b, c·st·sh·sw + i·sh·sw + j·sw + k, f, h, w].
// [B, C·st·sh·sw, F, H, W] → [B, C, F·st, H·sh, W·sw].
at::Tensor DepthToSpace3d(const at::Tensor& x, const std::array<int64_t, 3>& s);

// PerChannelRMSNorm: x / sqrt(mean over channels (dim 1) of x² + eps), no weight.
at::Tensor PixelNorm(const at::Tensor& x, double eps = 1e-8);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_CONV3D_H_
