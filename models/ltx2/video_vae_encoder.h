// The encoder half of LTX-2's video autoencoder — diffusers' AutoencoderKLLTX2Video
// (models/autoencoders/autoencoder_kl_ltx2.py at 58eb52c: LTX2VideoEncoder3d, its down blocks,
// downsamplers and mid block) over a WeightMap with the checkpoint's names (`encoder.*`,
// `latents_mean`, `latents_std`; `decoder.*` is not loaded) — and the image-to-video
// conditioning of LTX2ImageToVideoPipeline built on it: the input image resized and scaled as
// its VideoProcessor does, encoded, and its mode taken as the first-frame latent.
//
// Both released layouts are the same encoder (LTX-2.0 and 2.3 differ in the decoder); the
// config decides patch size, blocks, downsample types ("spatial", "temporal",
// "spatiotemporal"), causality and padding.
#ifndef DIFFMESH_MODELS_LTX2_VIDEO_VAE_ENCODER_H_
#define DIFFMESH_MODELS_LTX2_VIDEO_VAE_ENCODER_H_

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

// The fields of vae/config.json the encoder reads (defaults: the reference constructor's).
struct VideoVaeEncoderConfig {
  int64_t in_channels = 3;
  int64_t latent_channels = 128;
  // One entry per down block.
  std::vector<int64_t> block_out_channels = {256, 512, 1024, 2048};
  // Per down block; only "LTX2VideoDownBlock3D" exists.
  std::vector<std::string> down_block_types = {"LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D",
                                               "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D"};
  // Whether each down block ends in a downsampler (a bare bool in the config applies to all).
  std::vector<bool> spatio_temporal_scaling = {true, true, true, true};
  // Resnets per down block, then the mid block's count.
  std::vector<int64_t> layers_per_block = {4, 6, 6, 2, 2};
  // "spatial" (1,2,2), "temporal" (2,1,1) or "spatiotemporal" (2,2,2) per down block.
  std::vector<std::string> downsample_type = {"spatial", "temporal", "spatiotemporal",
                                              "spatiotemporal"};
  int64_t patch_size = 4;
  int64_t patch_size_t = 1;
  double resnet_norm_eps = 1e-6;
  double scaling_factor = 1.0;
  bool encoder_causal = true;
  SpatialPadding encoder_spatial_padding = SpatialPadding::kZeros;
  // The config's ratios (what the pipeline sizes its latent grid by); else patch · 2^(scaling
  // count) as the reference derives them. A tiny config may set ratios its encoder does not
  // have (ltx2-ref-a v23: ratio 8, encoder 4): see SpatialFactor / TemporalFactor.
  int64_t spatial_compression_ratio = 0;
  int64_t temporal_compression_ratio = 0;

  // Parses a diffusers AutoencoderKLLTX2Video config; unsupported features ("conv" downsampling,
  // patch_size_t > 1, which the reference's conv_in cannot take) are errors naming the field.
  static absl::StatusOr<VideoVaeEncoderConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<VideoVaeEncoderConfig> FromFile(const std::string& path);
  static absl::Status Validate(const VideoVaeEncoderConfig& config);

  int64_t NumDownBlocks() const { return static_cast<int64_t>(block_out_channels.size()); }
  // What this encoder actually divides height/width and (frames − 1) by: patch size times the
  // product of its downsamplers' strides.
  int64_t SpatialFactor() const;
  int64_t TemporalFactor() const;
};

class Ltx2VideoEncoder {
 public:
  // Exactly the encoder parameters and latent-statistics buffers a diffusers checkpoint of
  // `config` holds (the checkpoint also holds `decoder.*`, which Load skips).
  static std::vector<ParamSpec> Params(const VideoVaeEncoderConfig& config);

  // Takes weights already checked against Params(config).
  static absl::StatusOr<std::unique_ptr<Ltx2VideoEncoder>> Create(
      const VideoVaeEncoderConfig& config, WeightMap weights);
  // Reads `component_dir`/config.json and the checkpoint beside it; floating-point weights are
  // converted to `dtype` and placed on `device`. NOT_FOUND naming the tensor and file when the
  // checkpoint has no encoder (snapshots written before the encoder was ported).
  static absl::StatusOr<std::unique_ptr<Ltx2VideoEncoder>> Load(const std::string& component_dir,
                                                                at::ScalarType dtype = at::kFloat,
                                                                at::Device device = at::kCPU);
  // Seeded weights (InitSeeded) for tests and built-in models; latents_mean 0, latents_std 1.
  static absl::StatusOr<std::unique_ptr<Ltx2VideoEncoder>> CreateSeeded(
      const VideoVaeEncoderConfig& config, uint64_t seed);

  // The frame/height/width a `video` of [.., F, H, W] encodes to, or INVALID_ARGUMENT naming
  // the size that does not divide (every downsampler needs F + st − 1 ≡ 0 mod st and H, W
  // multiples of its spatial stride; the patchify needs H, W multiples of the patch size).
  absl::StatusOr<std::array<int64_t, 3>> LatentSize(int64_t frames, int64_t height,
                                                    int64_t width) const;

  // `vae.encode(video, causal).latent_dist.parameters`: video [B, in_channels, F, H, W] in
  // [-1, 1] → [B, 2·latent_channels, F', H', W'] (means, then the one log-variance channel
  // repeated), in the weights' dtype and device. Causal when `causal` or the config's
  // encoder_causal is (the reference's `causal or is_causal`).
  absl::StatusOr<at::Tensor> Encode(const at::Tensor& video,
                                    std::optional<bool> causal = std::nullopt) const;
  // Its mode (`latent_dist.mode()`, the means): [B, latent_channels, F', H', W'].
  absl::StatusOr<at::Tensor> EncodeMode(const at::Tensor& video,
                                        std::optional<bool> causal = std::nullopt) const;

  // LTX2ImageToVideoPipeline.prepare_latents' normalisation of an encoded image,
  // `(latents − latents_mean) / latents_std` per channel of [B, C, F, H, W] — without the
  // config's scaling_factor, which that call does not pass.
  at::Tensor NormalizeImageLatents(const at::Tensor& latents) const;

  const at::Tensor& latents_mean() const { return latents_mean_; }
  const at::Tensor& latents_std() const { return latents_std_; }
  const VideoVaeEncoderConfig& config() const { return config_; }
  const WeightMap& weights() const { return weights_; }

 private:
  Ltx2VideoEncoder(VideoVaeEncoderConfig config, WeightMap weights);

  at::Tensor Conv(const at::Tensor& x, const std::string& prefix, bool causal) const;
  at::Tensor Resnet(const at::Tensor& x, const std::string& prefix, bool causal) const;
  at::Tensor Downsampler(const at::Tensor& x, const std::string& prefix,
                         const std::array<int64_t, 3>& stride, int64_t out_channels,
                         bool causal) const;

  VideoVaeEncoderConfig config_;
  WeightMap weights_;
  at::Tensor latents_mean_;
  at::Tensor latents_std_;
};

// Whether the AutoencoderKLLTX2Video checkpoint in `component_dir` holds an encoder (its
// `encoder.conv_in.conv.weight`); snapshots written before the encoder was ported have only the
// decoder. Errors: the checkpoint cannot be opened.
absl::StatusOr<bool> CheckpointHasVideoEncoder(const std::string& component_dir);

// VideoProcessor(resample="bilinear").preprocess(image, height, width) as
// LTX2ImageToVideoPipeline calls it (image_crf = 0: no H.264 re-compression, see below):
//   * uint8 [H0, W0, 3] (decoded RGB, HWC) — handled as the pipeline handles a PIL image:
//     Pillow's bilinear resize to height × width (PilBilinearResize), then /255 and ·2 − 1;
//   * float [3, H0, W0] or [1, 3, H0, W0] in [0, 1] — as a torch tensor: nearest-neighbour
//     resize (F.interpolate's default), then ·2 − 1; a tensor with negative values is taken as
//     already in [-1, 1] and only resized, as the reference does.
// → float32 [1, 3, height, width] on the CPU. No crop: the aspect ratio is not kept (the
// reference's resize_mode "default"). INVALID_ARGUMENT naming the shape or dtype otherwise.
absl::StatusOr<at::Tensor> PreprocessConditioningImage(const at::Tensor& image, int64_t height,
                                                       int64_t width);

// Image-to-video conditioning latent for Ltx2LatentInit::first_frame_latent: preprocesses
// `image` for a height × width video (PreprocessConditioningImage), encodes it as one frame and
// takes the mode. Returns [1, latent_channels, 1, height/r, width/r] in the encoder weights'
// dtype and device, in the form the pipeline expects (raw VAE space; the pipeline normalises it).
// The reference normalises the image latent without scaling_factor while the pipeline's
// NormalizeLatents applies it; for a config with scaling_factor ≠ 1 the returned latent is
// mean + (raw − mean)/scaling_factor so that the pipeline ends at the reference's
// (raw − mean)/std. Errors: height/width not multiples of the spatial ratio (the message names
// the nearest valid sizes); an encoder whose own compression differs from the config's ratios
// (FAILED_PRECONDITION: its latent would not fit the pipeline's grid).
//
// Not reproduced: the reference's default H.264 re-compression of a PIL image (image_crf, CRF 33
// through LTX-2.3) before the resize; a caller that wants it re-encodes the image first.
absl::StatusOr<at::Tensor> EncodeConditioningImage(const Ltx2VideoEncoder& encoder,
                                                   const at::Tensor& image, int64_t height,
                                                   int64_t width);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_VIDEO_VAE_ENCODER_H_
