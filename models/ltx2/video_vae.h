// The decoder half of LTX-2's video autoencoder: diffusers' AutoencoderKLLTX2Video
// (models/autoencoders/autoencoder_kl_ltx2.py, LTX2VideoDecoder3d and its blocks), written
// functionally over a WeightMap with the checkpoint's names (`decoder.*`, `latents_mean`,
// `latents_std`; `encoder.*` is not loaded). Covers both released layouts: LTX-2.0 (three
// spatiotemporal residual up blocks, reflect padding) and LTX-2.3 (spatiotemporal / temporal /
// spatial up blocks with channel-reducing factors, zeros padding), optional timestep
// conditioning, and diffusers' spatial and temporal ("framewise") tiled decoding.
#ifndef DIFFMESH_MODELS_LTX2_VIDEO_VAE_H_
#define DIFFMESH_MODELS_LTX2_VIDEO_VAE_H_

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "models/ltx2/conv3d.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// The fields of vae/config.json the decoder and the pipeline's latent statistics need. Lists are
// in the config's (encoder-side) order; the decoder walks them reversed, except upsample_type,
// which the reference indexes in decoder order.
struct VideoVaeConfig {
  int64_t latent_channels = 128;
  int64_t out_channels = 3;
  std::vector<int64_t> decoder_block_out_channels = {256, 512, 1024};
  // One entry for the mid block plus one per up block.
  std::vector<int64_t> decoder_layers_per_block = {5, 5, 5, 5};
  // Whether each up block has an upsampler (a bare bool in the config applies to all).
  std::vector<bool> decoder_spatio_temporal_scaling = {true, true, true};
  std::vector<bool> decoder_inject_noise = {false, false, false, false};
  // "spatiotemporal" (2,2,2), "temporal" (2,1,1) or "spatial" (1,2,2) per up block.
  std::vector<std::string> upsample_type = {"spatiotemporal", "spatiotemporal", "spatiotemporal"};
  std::vector<bool> upsample_residual = {true, true, true};
  // Channel reduction of each upsampler beyond its depth-to-space.
  std::vector<int64_t> upsample_factor = {2, 2, 2};
  bool timestep_conditioning = false;
  int64_t patch_size = 4;
  int64_t patch_size_t = 1;
  double resnet_norm_eps = 1e-6;
  double scaling_factor = 1.0;
  // The reference constructor's default is true; released snapshots set false.
  bool decoder_causal = true;
  SpatialPadding decoder_spatial_padding = SpatialPadding::kReflect;
  // Pixels / frames per latent; from the config, else patch · 2^(encoder scaling count) as the
  // reference computes it.
  int64_t spatial_compression_ratio = 0;
  int64_t temporal_compression_ratio = 0;

  // Parses a diffusers AutoencoderKLLTX2Video config; unsupported features (noise injection,
  // timestep conditioning together with a channel-changing up block, unknown upsample types)
  // are errors naming the field.
  static absl::StatusOr<VideoVaeConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<VideoVaeConfig> FromFile(const std::string& path);
  // The checks FromJson applies, for configs built in code.
  static absl::Status Validate(const VideoVaeConfig& config);

  // Number of up blocks (= decoder_block_out_channels.size()).
  int64_t NumUpBlocks() const { return static_cast<int64_t>(decoder_block_out_channels.size()); }
};

// diffusers' tiled decoding. Sizes are in output pixels / frames as in enable_tiling(); the
// defaults are the reference's (512 px tiles every 448 px, 16-frame tiles every 8 frames, i.e.
// 16/r_t + 1 latent frames every 8/r_t). Tiles are decoded one at a time and blended with linear
// ramps, so the decoder's activations are those of one tile; the result holds the output plus
// one or two decoded tiles (spatial: one row of tiles). Tiling changes the output near the seams
// (each tile sees padded borders); with the same settings it reproduces the reference's tiled
// output.
struct VideoVaeTiling {
  bool spatial = false;   // enable_tiling(): split height/width when larger than one tile
  bool temporal = false;  // use_framewise_decoding: split time when longer than one tile
  int64_t tile_sample_min_height = 512;
  int64_t tile_sample_min_width = 512;
  int64_t tile_sample_min_num_frames = 16;
  int64_t tile_sample_stride_height = 448;
  int64_t tile_sample_stride_width = 448;
  int64_t tile_sample_stride_num_frames = 8;
  // false: the reference's temporal bookkeeping, bit for bit. It blends the second tile one
  // frame off against the first (the first tile keeps its extra frame), so from the second tile
  // on every frame is one frame late and the clip's last frame is lost. true: every tile is
  // placed at its own frame offset and blended over the same ramp, so a decoder without
  // temporal context would give exactly the untiled frames.
  bool align_temporal_tiles = false;
};

class Ltx2VideoDecoder {
 public:
  // Exactly the decoder parameters and latent-statistics buffers a diffusers checkpoint of
  // `config` holds (the checkpoint also holds `encoder.*`, which Load skips).
  static std::vector<ParamSpec> Params(const VideoVaeConfig& config);

  // Takes weights already checked against Params(config).
  static absl::StatusOr<std::unique_ptr<Ltx2VideoDecoder>> Create(const VideoVaeConfig& config,
                                                                  WeightMap weights);
  // Reads `component_dir`/config.json and the checkpoint beside it; floating-point weights are
  // converted to `dtype` and placed on `device`.
  static absl::StatusOr<std::unique_ptr<Ltx2VideoDecoder>> Load(const std::string& component_dir,
                                                                at::ScalarType dtype = at::kFloat,
                                                                at::Device device = at::kCPU);
  // Seeded weights (InitSeeded) for tests and benchmarks; latents_mean 0, latents_std 1.
  static absl::StatusOr<std::unique_ptr<Ltx2VideoDecoder>> CreateSeeded(
      const VideoVaeConfig& config, uint64_t seed);

  // `vae.decode(latents, timestep, causal)`: latents [B, latent_channels, F, H, W] (raw, i.e.
  // already denormalised) → video [B, out_channels, (F-1)·r_t + 1, H·r_s, W·r_s] in about
  // [-1, 1], in the weights' dtype and device. `timestep` [B] (or a scalar) is required exactly
  // when the config has timestep_conditioning. The decoder is causal when `causal` is true or
  // the config's decoder_causal is (the reference's `causal or is_causal`). Tiles per tiling().
  at::Tensor Decode(const at::Tensor& latents, const std::optional<at::Tensor>& timestep = {},
                    std::optional<bool> causal = std::nullopt) const;
  // The same with `tiling` instead of tiling() (e.g. a retry in tiles after running out of
  // memory, without changing the decoder other requests share).
  at::Tensor Decode(const at::Tensor& latents, const std::optional<at::Tensor>& timestep,
                    std::optional<bool> causal, const VideoVaeTiling& tiling) const;

  // The pipeline's `latents · latents_std / scaling_factor + latents_mean`, per channel of
  // [B, C, F, H, W], in the latents' dtype.
  at::Tensor DenormalizeLatents(const at::Tensor& latents) const;
  // Its inverse, `(latents − mean) · scaling_factor / std` (the pipeline's _normalize_latents).
  at::Tensor NormalizeLatents(const at::Tensor& latents) const;

  // Per-channel statistics buffers [latent_channels] as loaded (weights' dtype and device).
  const at::Tensor& latents_mean() const { return latents_mean_; }
  const at::Tensor& latents_std() const { return latents_std_; }

  void set_tiling(const VideoVaeTiling& tiling) { tiling_ = tiling; }
  const VideoVaeTiling& tiling() const { return tiling_; }
  const VideoVaeConfig& config() const { return config_; }
  const WeightMap& weights() const { return weights_; }

 private:
  Ltx2VideoDecoder(VideoVaeConfig config, WeightMap weights);

  // The network on one tile (LTX2VideoDecoder3d.forward); `temb` [B] is the timestep as given
  // (scaled by the checkpoint's timestep_scale_multiplier inside) or undefined.
  at::Tensor Network(const at::Tensor& z, const at::Tensor& temb, bool causal) const;
  at::Tensor SpatialTiled(const at::Tensor& z, const at::Tensor& temb, bool causal,
                         const VideoVaeTiling& tiling) const;
  at::Tensor TemporalTiled(const at::Tensor& z, const at::Tensor& temb, bool causal,
                          const VideoVaeTiling& tiling) const;
  at::Tensor TemporalTiledAligned(const at::Tensor& z, const at::Tensor& temb, bool causal,
                                 const VideoVaeTiling& tiling) const;
  // Spatial tiling when enabled and the tile is larger than one spatial tile, else Network.
  at::Tensor SpatialOrWhole(const at::Tensor& z, const at::Tensor& temb, bool causal,
                           const VideoVaeTiling& tiling) const;

  at::Tensor Conv(const at::Tensor& x, const std::string& prefix, bool causal) const;
  at::Tensor Resnet(const at::Tensor& x, const std::string& prefix, const at::Tensor& temb,
                    bool causal) const;
  at::Tensor TimeEmbedding(const std::string& prefix, const at::Tensor& temb,
                           const at::Tensor& like) const;
  at::Tensor Upsampler(const at::Tensor& x, const std::string& prefix,
                       const std::array<int64_t, 3>& stride, bool residual, int64_t factor,
                       bool causal) const;

  VideoVaeConfig config_;
  WeightMap weights_;
  at::Tensor latents_mean_;
  at::Tensor latents_std_;
  VideoVaeTiling tiling_;
};

// VideoProcessor.postprocess_video(output_type="pt"): (x·0.5 + 0.5).clamp(0, 1) with frames
// first. video [B, C, F, H, W] (any float dtype and device) → [B, F, C, H, W], same dtype.
at::Tensor VideoToUnitFrames(const at::Tensor& video);

// What diffusers' export (encode_video) writes: the "np" frames ×255, rounded half to even.
// video [B, C, F, H, W] → uint8 [B, F, H, W, C] on the CPU.
at::Tensor VideoToUint8Frames(const at::Tensor& video);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_VIDEO_VAE_H_
