// The fixed low-pass filters of LTX-2's vocoders (diffusers pipelines/ltx2/vocoder.py, after
// BigVGAN v2's alias-free activations and torchaudio's sinc resampler) and the 1-D resampling
// they drive. Filters are float32 [1, 1, K], built exactly as the reference constructors build
// their buffers.
#ifndef DIFFMESH_MODELS_LTX2_VOCODER_FILTERS_H_
#define DIFFMESH_MODELS_LTX2_VOCODER_FILTERS_H_

#include <ATen/ATen.h>

#include <cstdint>

namespace diffmesh::models::ltx2 {

// Kaiser-windowed sinc low-pass, normalised to unit sum: `cutoff` in cycles per sample (≤ 0.5),
// `half_width` sets the Kaiser β. [1, 1, kernel_size]. (kaiser_sinc_filter1d)
at::Tensor KaiserSincFilter(double cutoff, double half_width, int64_t kernel_size);

// The anti-aliasing filter of an up/down-sampler by `ratio`: cutoff 0.5/ratio, half width
// 0.6/ratio (UpSample1d / DownSample1d with window "kaiser").
at::Tensor AntiAliasFilter(int64_t ratio, int64_t kernel_size);

// Zero-stuffing upsampler: replicate-pad `pad` samples each side, transposed conv with the
// per-channel `filter` at stride `ratio`, ×ratio, crop pad_left / pad_right.
// [B, C, N] → [B, C, N·ratio].
struct SincUpsampler {
  at::Tensor filter;  // [1, 1, K]
  int64_t ratio = 2;
  int64_t pad = 0;
  int64_t pad_left = 0;
  int64_t pad_right = 0;

  // UpSample1d(ratio, kernel_size) with the Kaiser filter `filter` [1, 1, kernel_size].
  static SincUpsampler Kaiser(int64_t ratio, at::Tensor filter);
  // UpSample1d(ratio, window_type="hann"): the BWE vocoder's skip-path resampler (rolloff 0.99,
  // 6 zero crossings each side); its filter is built here, not read from the checkpoint.
  static SincUpsampler Hann(int64_t ratio);

  at::Tensor operator()(const at::Tensor& x) const;
};

// DownSample1d: replicate-pad (K/2 + K%2 − 1, K/2), per-channel conv with `filter` [1, 1, K] at
// stride `ratio`. [B, C, N] → [B, C, ⌈N/ratio⌉].
at::Tensor SincDownsample(const at::Tensor& x, const at::Tensor& filter, int64_t ratio);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_VOCODER_FILTERS_H_
