#include "models/ltx2/rope.h"

#include <cmath>

namespace diffmesh::models::ltx2 {

at::Tensor PrepareVideoCoords(int64_t batch, int64_t num_frames, int64_t height, int64_t width,
                              double fps, const VideoCoordSpec& spec, const at::Device& device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor grid_f = at::arange(0, num_frames, spec.patch_size_t, f32);
  at::Tensor grid_h = at::arange(0, height, spec.patch_size, f32);
  at::Tensor grid_w = at::arange(0, width, spec.patch_size, f32);
  at::Tensor grid = at::stack(at::meshgrid({grid_f, grid_h, grid_w}, "ij"), 0);  // [3, F, H, W]
  at::Tensor patch = at::tensor({spec.patch_size_t, spec.patch_size, spec.patch_size}, f32);
  at::Tensor ends = grid + patch.view({3, 1, 1, 1});
  // [3, N, 2] latent bounds, then pixel bounds.
  at::Tensor bounds = at::stack({grid, ends}, -1).flatten(1, 3);
  at::Tensor scale =
      at::tensor({spec.scale_factors[0], spec.scale_factors[1], spec.scale_factors[2]}, f32);
  at::Tensor pixel = bounds * scale.view({3, 1, 1});
  // The causal VAE maps latent frame 0 to one pixel frame: shift so frame 0 ends at 1.
  at::Tensor t = pixel.select(0, 0);
  t.copy_(((t + spec.causal_offset) - spec.scale_factors[0]).clamp_min(0) / fps);
  return pixel.unsqueeze(0).repeat({batch, 1, 1, 1}).contiguous();
}

at::Tensor PrepareAudioCoords(int64_t batch, int64_t num_frames, const AudioCoordSpec& spec,
                              const at::Device& device, int64_t shift) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor grid = at::arange(shift, num_frames + shift, spec.patch_size_t, f32);
  const int64_t sf = spec.scale_factor;
  // Mel-frame bounds with the causal first frame, converted to seconds.
  auto to_seconds = [&](const at::Tensor& mel) {
    at::Tensor causal = ((mel + spec.causal_offset) - sf).clamp_min(0);
    return causal * static_cast<double>(spec.hop_length) / static_cast<double>(spec.sampling_rate);
  };
  at::Tensor start = to_seconds(grid * sf);
  at::Tensor end = to_seconds((grid + spec.patch_size_t) * sf);
  at::Tensor coords = at::stack({start, end}, -1);  // [N, 2]
  return coords.unsqueeze(0).unsqueeze(0).expand({batch, 1, -1, -1}).contiguous();
}

RopeTables ComputeRope(const RopeSpec& spec, const at::Tensor& coords_in) {
  TORCH_CHECK(coords_in.dim() == 3 || coords_in.dim() == 4, "rope coords must be 3-D or 4-D");
  at::Tensor coords = coords_in;
  if (coords.dim() == 4) {  // [start, end) → midpoint
    coords = (coords.select(-1, 0) + coords.select(-1, 1)) / 2.0;
  }
  const int64_t axes = coords.size(1);
  TORCH_CHECK(axes <= static_cast<int64_t>(spec.max_positions.size()), "rope coords have ", axes,
              " axes, the module ", spec.max_positions.size());
  std::vector<at::Tensor> normalised;
  for (int64_t i = 0; i < axes; ++i) {
    normalised.push_back(coords.select(1, i) / spec.max_positions[i]);
  }
  at::Tensor grid = at::stack(normalised, -1);  // [B, T, axes]

  const int64_t per_axis = spec.dim / (2 * axes);
  const auto freq_type = spec.double_precision ? at::kDouble : at::kFloat;
  at::Tensor exps = at::linspace(0.0, 1.0, per_axis, grid.options().dtype(freq_type));
  at::Tensor freqs = (at::pow(spec.theta, exps) * M_PI / 2.0).to(at::kFloat);
  // [B, T, axes, per_axis] → frequency-major [B, T, per_axis·axes].
  at::Tensor angles = (grid.unsqueeze(-1) * 2 - 1) * freqs;
  angles = angles.transpose(-1, -2).flatten(2);
  at::Tensor cos = angles.cos(), sin = angles.sin();
  const int64_t batch = cos.size(0), tokens = cos.size(1);

  if (spec.type == RopeType::kInterleaved) {
    cos = cos.repeat_interleave(2, -1);
    sin = sin.repeat_interleave(2, -1);
  }
  const int64_t target = spec.type == RopeType::kInterleaved ? spec.dim : spec.dim / 2;
  const int64_t pad = target - cos.size(-1);
  if (pad > 0) {
    cos = at::cat({at::ones({batch, tokens, pad}, cos.options()), cos}, -1);
    sin = at::cat({at::zeros({batch, tokens, pad}, sin.options()), sin}, -1);
  }
  if (spec.type == RopeType::kSplit) {
    cos = cos.reshape({batch, tokens, spec.num_heads, -1}).transpose(1, 2).contiguous();
    sin = sin.reshape({batch, tokens, spec.num_heads, -1}).transpose(1, 2).contiguous();
  }
  return {cos, sin};
}

namespace {

at::Tensor ApplyInterleaved(const at::Tensor& x, const RopeTables& t) {
  at::Tensor pairs = x.unflatten(2, {-1, 2});  // [B, T, C/2, 2]
  at::Tensor real = pairs.select(-1, 0), imag = pairs.select(-1, 1);
  at::Tensor rotated = at::stack({-imag, real}, -1).flatten(2);
  return (x.to(at::kFloat) * t.cos + rotated.to(at::kFloat) * t.sin).to(x.scalar_type());
}

at::Tensor ApplySplit(const at::Tensor& x, const RopeTables& t) {
  const int64_t batch = x.size(0), tokens = x.size(1), channels = x.size(2);
  const int64_t heads = t.cos.size(1), r = t.cos.size(3);
  TORCH_CHECK(heads * 2 * r == channels, "split rope tables cover ", heads * 2 * r,
              " channels, the projection has ", channels);
  // [B, T, H, 2, r] against cos/sin [B, T, H, 1, r].
  at::Tensor xs = x.reshape({batch, tokens, heads, 2, r}).to(at::kFloat);
  at::Tensor c = t.cos.transpose(1, 2).unsqueeze(3);
  at::Tensor s = t.sin.transpose(1, 2).unsqueeze(3);
  at::Tensor first = xs.narrow(3, 0, 1), second = xs.narrow(3, 1, 1);
  at::Tensor out = xs * c;
  out.narrow(3, 0, 1).addcmul_(-s, second);
  out.narrow(3, 1, 1).addcmul_(s, first);
  return out.reshape({batch, tokens, channels}).to(x.scalar_type());
}

}  // namespace

at::Tensor ApplyRope(const at::Tensor& x, const RopeTables& tables, RopeType type) {
  return type == RopeType::kSplit ? ApplySplit(x, tables) : ApplyInterleaved(x, tables);
}

}  // namespace diffmesh::models::ltx2
