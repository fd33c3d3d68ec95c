// LTX-2's vocoders (diffusers pipelines/ltx2/vocoder.py), turning the audio VAE's stereo log-mel
// spectrogram into a waveform, written functionally over a WeightMap with the checkpoint's names:
//  - LTX2Vocoder (LTX-2.0): a HiFi-GAN generator — conv_in, per stage a transposed-conv upsampler
//    and resblocks with dilations whose outputs are averaged, leaky ReLU, tanh — at 24 kHz.
//  - LTX2VocoderWithBWE (LTX-2.3): a BigVGAN-v2-style generator (SnakeBeta activations wrapped in
//    Kaiser-sinc anti-aliasing, no tanh) at 16 kHz (`vocoder.*`); a causal STFT log-mel of its
//    waveform (`mel_stft.*`); a second generator (`bwe_generator.*`) predicting the residual over
//    a Hann-sinc resampled copy of the 16 kHz waveform; sum clamped to [-1, 1], at 48 kHz.
#ifndef DIFFMESH_MODELS_LTX2_VOCODER_H_
#define DIFFMESH_MODELS_LTX2_VOCODER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "models/ltx2/vocoder_filters.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// One generator (an LTX2Vocoder module). Defaults are LTX2Vocoder's constructor defaults.
struct VocoderGeneratorConfig {
  int64_t in_channels = 128;       // audio channels × mel bins of the input spectrogram
  int64_t hidden_channels = 1024;  // halved by every upsampling stage
  int64_t out_channels = 2;
  std::vector<int64_t> upsample_kernel_sizes = {16, 15, 8, 4, 4};
  std::vector<int64_t> upsample_factors = {6, 5, 2, 2, 2};
  // One resblock per entry, run in parallel after every upsampler and averaged.
  std::vector<int64_t> resnet_kernel_sizes = {3, 7, 11};
  std::vector<std::vector<int64_t>> resnet_dilations = {{1, 3, 5}, {1, 3, 5}, {1, 3, 5}};
  std::string act_fn = "leaky_relu";  // "leaky_relu", "snake" or "snakebeta"
  double leaky_relu_negative_slope = 0.1;
  bool antialias = false;  // wrap resblock activations in Kaiser-sinc up/down sampling
  int64_t antialias_ratio = 2;
  int64_t antialias_kernel_size = 12;
  std::string final_act_fn = "tanh";  // "tanh", "clamp" or "" (none; null in config.json)
  bool final_bias = true;

  // Output samples per input frame: the product of upsample_factors.
  int64_t UpsampleFactor() const;
  // Channels after the last upsampler: hidden_channels / 2^stages.
  int64_t FinalChannels() const;
};

// vocoder/config.json of either class.
struct VocoderConfig {
  bool with_bwe = false;  // _class_name LTX2VocoderWithBWE (else LTX2Vocoder)
  // The only generator (LTX2Vocoder) or the stage-1 generator (`vocoder.*`).
  VocoderGeneratorConfig vocoder;
  // The following are LTX2VocoderWithBWE's only.
  VocoderGeneratorConfig bwe;   // `bwe_generator.*`, the bwe_-prefixed fields
  int64_t filter_length = 512;  // STFT size (forward_basis taps)
  int64_t hop_length = 80;      // STFT hop at the stage-1 rate
  int64_t window_length = 512;  // the causal STFT pads window − hop samples on the left
  int64_t num_mel_channels = 64;
  int64_t input_sampling_rate = 16000;  // stage-1 rate
  // The waveform's rate (both classes: 24000 for LTX-2.0, 48000 for LTX-2.3).
  int64_t output_sampling_rate = 24000;

  static absl::StatusOr<VocoderConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<VocoderConfig> FromFile(const std::string& path);

  // Skip-path resampling factor output/input rate (BWE only).
  int64_t ResampleRatio() const { return output_sampling_rate / input_sampling_rate; }
};

class Vocoder {
 public:
  // Exactly the checkpoint's tensors (persistent buffers included: the Kaiser filters and the STFT
  // bases), except the unused mel_stft.stft_fn.inverse_basis, which loading skips.
  static std::vector<ParamSpec> Params(const VocoderConfig& config);

  // Takes weights (any device) already checked against Params(config); builds the non-persistent
  // resampler filter from the config. LTX2VocoderWithBWE always computes in float32 (in bf16 its
  // audio drifts far from the reference), so its weights are converted to float32 here.
  static absl::StatusOr<std::unique_ptr<Vocoder>> Create(const VocoderConfig& config,
                                                         WeightMap weights);
  // Reads `component_dir`/config.json and the checkpoint beside it onto `device`. LTX2Vocoder
  // weights are converted to `dtype`; LTX2VocoderWithBWE ignores it (float32).
  static absl::StatusOr<std::unique_ptr<Vocoder>> Load(const std::string& component_dir,
                                                       at::ScalarType dtype = at::kFloat,
                                                       at::Device device = at::kCPU);
  // Seeded weights with the reference's constructed Kaiser filters, for tests of other shapes.
  static absl::StatusOr<std::unique_ptr<Vocoder>> CreateSeeded(const VocoderConfig& config,
                                                               uint64_t seed);

  // diffusers `vocoder(mel)`: mel [B, C, T, M] (the audio VAE's output, C·M = in_channels; any
  // float dtype and device, moved to the weights') → waveform float32 [B, out_channels, samples]
  // at sample_rate(), samples = T·UpsampleFactor() (LTX2Vocoder) or that times ResampleRatio()
  // (BWE). With BWE, `stage1_waveform` (optional) receives the 16 kHz stage-1 output
  // [B, C, T·UpsampleFactor()] in float32.
  at::Tensor Run(const at::Tensor& mel, at::Tensor* stage1_waveform = nullptr) const;

  int64_t sample_rate() const { return config_.output_sampling_rate; }
  const VocoderConfig& config() const { return config_; }
  const WeightMap& weights() const { return weights_; }
  // The BWE skip path's Hann-sinc resampler (constructed, not loaded); undefined filter without
  // BWE.
  const SincUpsampler& resampler() const { return resampler_; }

 private:
  Vocoder(VocoderConfig config, WeightMap weights);

  // One generator under `prefix`: features [B, C·M, T] → waveform [B, out, T·UpsampleFactor()].
  at::Tensor Generate(const VocoderGeneratorConfig& c, const std::string& prefix,
                      at::Tensor x) const;
  at::Tensor ResBlock(const VocoderGeneratorConfig& c, const std::string& prefix,
                      const std::vector<int64_t>& dilations, at::Tensor x) const;
  at::Tensor Activation(const VocoderGeneratorConfig& c, const std::string& prefix,
                        const at::Tensor& x) const;
  at::Tensor Snake(const std::string& prefix, bool use_beta, const at::Tensor& x) const;
  at::Tensor AntiAliased(const VocoderGeneratorConfig& c, const std::string& prefix, bool use_beta,
                         const at::Tensor& x) const;
  // The causal log-mel of waveforms [N, samples] → [N, num_mel_channels, frames].
  at::Tensor LogMel(const at::Tensor& waveform) const;

  VocoderConfig config_;
  WeightMap weights_;
  SincUpsampler resampler_;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_VOCODER_H_
