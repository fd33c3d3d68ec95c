// LTX-2 rotary position embeddings (diffusers `LTX2AudioVideoRotaryPosEmbed`): positions are
// physical — seconds along time (the video fps and the audio hop enter the coordinates) and
// pixels along height/width — normalised by a maximum position per axis, so video and audio
// tokens that play at the same moment get the same temporal angle (the audio↔video
// cross-attention relies on that).
#ifndef DIFFMESH_MODELS_LTX2_ROPE_H_
#define DIFFMESH_MODELS_LTX2_ROPE_H_

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <vector>

namespace diffmesh::models::ltx2 {

// How cos/sin pair up channels.
enum class RopeType {
  // Pairs (x[2i], x[2i+1]) across the whole projection; tables [B, T, dim].
  kInterleaved,
  // The frequency list is cut into `num_heads` bands, one per head; within a head of width 2r
  // the pairs are (x[i], x[i+r]). Tables [B, num_heads, T, r]. All released checkpoints.
  kSplit,
};

// One rotary module: its width, per-axis normalisers and frequency base.
struct RopeSpec {
  int64_t dim = 0;                    // channels rotated (= the attention's inner dim)
  std::vector<double> max_positions;  // one per coordinate axis used (3 video, 1 audio/cross)
  double theta = 10000.0;
  bool double_precision = true;  // frequencies built in fp64, then cast to fp32
  RopeType type = RopeType::kSplit;
  int64_t num_heads = 1;  // bands of a split table
};

// cos/sin, both fp32: split [B, H, T, dim/(2H)], interleaved [B, T, dim].
struct RopeTables {
  at::Tensor cos;
  at::Tensor sin;
};

// Video patch grid → coordinates, as `prepare_video_coords`.
struct VideoCoordSpec {
  int64_t patch_size = 1;
  int64_t patch_size_t = 1;
  std::array<int64_t, 3> scale_factors = {8, 32, 32};  // VAE (time, height, width) strides
  int64_t causal_offset = 1;
};

// Audio latent frames → coordinates, as `prepare_audio_coords`.
struct AudioCoordSpec {
  int64_t patch_size_t = 1;
  int64_t scale_factor = 4;  // mel frames per latent frame
  int64_t causal_offset = 1;
  int64_t hop_length = 160;
  int64_t sampling_rate = 16000;
};

// [B, 3, F·H·W, 2] fp32 patch bounds [start, end) in (seconds, pixels, pixels), token order
// (f, h, w): the first latent frame covers one pixel frame (causal VAE), the others
// scale_factors[0] frames each; time is divided by `fps`.
at::Tensor PrepareVideoCoords(int64_t batch, int64_t num_frames, int64_t height, int64_t width,
                              double fps, const VideoCoordSpec& spec, const at::Device& device);

// [B, 1, num_frames, 2] fp32 bounds [start, end) in seconds of each audio latent frame;
// `shift` offsets the latent index (overlapping windows over one grid).
at::Tensor PrepareAudioCoords(int64_t batch, int64_t num_frames, const AudioCoordSpec& spec,
                              const at::Device& device, int64_t shift = 0);

// cos/sin for `coords` [B, n_axes, T, 2] (bounds; the midpoint is used) or [B, n_axes, T]
// (positions); n_axes ≤ spec.max_positions.size(), the first n_axes normalisers are used.
// Axes whose frequency count does not fill dim/2 are padded at the front with cos 1 / sin 0.
RopeTables ComputeRope(const RopeSpec& spec, const at::Tensor& coords);

// Rotates x [B, T, C] (C = tables' dim) in fp32 and returns it in x's dtype. For split tables
// x is viewed as [B, T, H_rope, C/H_rope] with H_rope taken from the tables, which need not be
// the attention's head count (the video→audio tables are cut by video heads).
at::Tensor ApplyRope(const at::Tensor& x, const RopeTables& tables, RopeType type);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_ROPE_H_
