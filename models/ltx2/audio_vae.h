// LTX-2's audio VAE decoder: diffusers' AutoencoderKLLTX2Audio
// (models/autoencoders/autoencoder_kl_ltx2_audio.py), decoder half only, written functionally over
// a WeightMap with the checkpoint's names (`decoder.*`, `latents_mean`, `latents_std`). It turns
// audio latents [B, C, L, M/4] into a stereo log-mel spectrogram [B, 2, 4L−3, M] that the vocoder
// (vocoder.h) makes audible. Plus the pipeline's packed-token helpers: the denoiser works on
// tokens [B, L, C·M/4] normalised with the per-feature latents_mean / latents_std.
#ifndef DIFFMESH_MODELS_LTX2_AUDIO_VAE_H_
#define DIFFMESH_MODELS_LTX2_AUDIO_VAE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// The fields of audio_vae/config.json that shape the decoder; defaults are the reference
// constructor's.
struct AudioVaeConfig {
  int64_t base_channels = 128;
  int64_t output_channels = 2;  // stereo mel
  // One entry per resolution level; the decoder upsamples 2^(levels−1) times.
  std::vector<int64_t> ch_mult = {1, 2, 4};
  // Resnets per encoder level; decoder levels have one more.
  int64_t num_res_blocks = 2;
  // Resolutions (in the reference's bookkeeping units, starting at resolution/2^(levels−1)) whose
  // resnets are followed by an attention block; empty for LTX-2.
  std::vector<int64_t> attn_resolutions;
  int64_t resolution = 256;
  int64_t latent_channels = 8;
  std::string norm_type = "pixel";        // "pixel" (RMS over channels) or "group" (32 groups)
  std::string causality_axis = "height";  // "height" (time), "width", "width-compatibility", "none"
  bool mid_block_add_attention = false;
  int64_t sample_rate = 16000;
  int64_t mel_hop_length = 160;
  // Output mel bins; when absent (null) the reference crops to the latents' own width M'.
  std::optional<int64_t> mel_bins = 64;

  static absl::StatusOr<AudioVaeConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<AudioVaeConfig> FromFile(const std::string& path);

  // Mel frames per latent frame (and mel bins per latent bin) as the pipeline counts them: a
  // constant 4 in the reference, whatever ch_mult says.
  static constexpr int64_t kCompression = 4;
  // Latent frames per second of audio: sample_rate / hop / 4 (25 for LTX-2).
  double LatentsPerSecond() const {
    return static_cast<double>(sample_rate) / mel_hop_length / kCompression;
  }
};

// The pipeline's packing of audio latents: [B, C, L, M'] → tokens [B, L, C·M'] (channel-major
// features), and back (`latent_mel_bins` = M').
at::Tensor PackAudioLatents(const at::Tensor& latents);
at::Tensor UnpackAudioLatents(const at::Tensor& tokens, int64_t latent_mel_bins);

class AudioVaeDecoder {
 public:
  // Exactly the decoder's parameters and the latent statistics buffers, as the checkpoint names
  // them (the encoder's are skipped on load).
  static std::vector<ParamSpec> Params(const AudioVaeConfig& config);

  // Takes weights already checked against Params(config).
  static absl::StatusOr<std::unique_ptr<AudioVaeDecoder>> Create(const AudioVaeConfig& config,
                                                                 WeightMap weights);
  // Reads `component_dir`/config.json and the checkpoint beside it onto `device`; floating-point
  // weights are converted to `dtype`.
  static absl::StatusOr<std::unique_ptr<AudioVaeDecoder>> Load(const std::string& component_dir,
                                                               at::ScalarType dtype = at::kFloat,
                                                               at::Device device = at::kCPU);
  // Seeded weights (InitSeeded; latents_std = 1 + small noise) for tests of other shapes.
  static absl::StatusOr<std::unique_ptr<AudioVaeDecoder>> CreateSeeded(const AudioVaeConfig& config,
                                                                       uint64_t seed);

  // diffusers `audio_vae.decode(z).sample`.
  // latents [B, latent_channels, L, M'] (any float dtype/device; computed in the weights' dtype on
  // their device) → mel [B, output_channels, max(4L−3, 1), mel_bins] (M' when the config has
  // none). Causal along time for causality_axis "height": frame t depends only on latent frames
  // ≤ ⌊(t + s − 1)/s⌋, s = 2^(levels−1). Where the network makes fewer frames/bins than the target
  // the reference zero-pads, and so does this.
  at::Tensor Decode(const at::Tensor& latents) const;

  // The pipeline's latent statistics on packed tokens [B, L, C·M'] (in the tokens' dtype):
  // tokens·std + mean, and its inverse.
  at::Tensor DenormalizePacked(const at::Tensor& tokens) const;
  at::Tensor NormalizePacked(const at::Tensor& tokens) const;
  // The end of the pipeline's denoise loop: denormalise, unpack (M' = token width / C), decode.
  // tokens [B, L, C·M'] → mel [B, output_channels, 4L−3, mel_bins].
  at::Tensor DecodePacked(const at::Tensor& tokens) const;

  const AudioVaeConfig& config() const { return config_; }
  const WeightMap& weights() const { return weights_; }

 private:
  AudioVaeDecoder(AudioVaeConfig config, WeightMap weights)
      : config_(std::move(config)), weights_(std::move(weights)) {}

  at::Tensor Norm(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor CausalConv(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor Resnet(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor AttnBlock(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor Upsample(const at::Tensor& x, const std::string& prefix) const;
  at::Tensor Stat(const std::string& name, const at::Tensor& like) const;

  AudioVaeConfig config_;
  WeightMap weights_;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_AUDIO_VAE_H_
