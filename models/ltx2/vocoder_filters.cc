#include "models/ltx2/vocoder_filters.h"

#include <cmath>
#include <utility>

namespace diffmesh::models::ltx2 {

// The tensor ops follow the reference's order in float32 so the filters agree to round-off.
at::Tensor KaiserSincFilter(double cutoff, double half_width, int64_t kernel_size) {
  const double delta_f = 4 * half_width;
  const int64_t half = kernel_size / 2;
  const double amplitude = 2.285 * static_cast<double>(half - 1) * M_PI * delta_f + 7.95;
  double beta = 0.0;
  if (amplitude > 50.0) {
    beta = 0.1102 * (amplitude - 8.7);
  } else if (amplitude >= 21.0) {
    beta = 0.5842 * std::pow(amplitude - 21, 0.4) + 0.07886 * (amplitude - 21.0);
  }
  const at::Tensor window = at::kaiser_window(kernel_size, /*periodic=*/false, beta, at::kFloat);
  // Even kernels sample between taps (±0.5, ±1.5, …); odd ones on them.
  at::Tensor time = kernel_size % 2 == 0
                        ? at::arange(-half, half, at::kLong) + 0.5
                        : (at::arange(kernel_size, at::kLong) - half).to(at::kFloat);
  at::Tensor filter;
  if (cutoff == 0.0) {
    filter = at::zeros_like(time);
  } else {
    time = time * (2 * cutoff);
    const at::Tensor sinc =
        at::where(time == 0, at::ones_like(time), at::sin(time * M_PI) / M_PI / time);
    filter = window * (2 * cutoff) * sinc;
    filter = filter / filter.sum();
  }
  return filter.view({1, 1, kernel_size});
}

at::Tensor AntiAliasFilter(int64_t ratio, int64_t kernel_size) {
  return KaiserSincFilter(0.5 / static_cast<double>(ratio), 0.6 / static_cast<double>(ratio),
                          kernel_size);
}

SincUpsampler SincUpsampler::Kaiser(int64_t ratio, at::Tensor filter) {
  SincUpsampler u;
  const int64_t k = filter.size(-1);
  u.filter = std::move(filter);
  u.ratio = ratio;
  u.pad = k / ratio - 1;
  u.pad_left = u.pad * ratio + (k - ratio) / 2;
  u.pad_right = u.pad * ratio + (k - ratio + 1) / 2;
  return u;
}

SincUpsampler SincUpsampler::Hann(int64_t ratio) {
  constexpr double kRolloff = 0.99;
  constexpr int64_t kZeroCrossings = 6;  // lowpass_filter_width
  const auto width = static_cast<int64_t>(std::ceil(kZeroCrossings / kRolloff));
  SincUpsampler u;
  const int64_t k = 2 * width * ratio + 1;
  u.ratio = ratio;
  u.pad = width;
  u.pad_left = 2 * width * ratio;
  u.pad_right = k - ratio;
  // Integer arange over an integer ratio is a true division to float32, as in the reference.
  const at::Tensor time = (at::arange(k, at::kLong).div(ratio) - width) * kRolloff;
  const at::Tensor clamped = time.clamp(-kZeroCrossings, kZeroCrossings);
  const at::Tensor window =
      at::cos(clamped * M_PI / static_cast<double>(kZeroCrossings) / 2.0).pow(2);
  u.filter = (at::sinc(time) * window * kRolloff / static_cast<double>(ratio)).view({1, 1, k});
  return u;
}

at::Tensor SincUpsampler::operator()(const at::Tensor& x) const {
  const int64_t channels = x.size(1);
  const at::Tensor f =
      filter.to(x.device(), x.scalar_type()).expand({channels, 1, filter.size(-1)});
  at::Tensor y = at::replication_pad1d(x, {pad, pad});
  y = at::conv_transpose1d(y, f, /*bias=*/{}, /*stride=*/ratio, /*padding=*/0,
                           /*output_padding=*/0, /*groups=*/channels) *
      ratio;
  return y.narrow(-1, pad_left, y.size(-1) - pad_left - pad_right);
}

at::Tensor SincDownsample(const at::Tensor& x, const at::Tensor& filter, int64_t ratio) {
  const int64_t k = filter.size(-1);
  const int64_t channels = x.size(1);
  const at::Tensor y = at::replication_pad1d(x, {k / 2 + k % 2 - 1, k / 2});
  const at::Tensor f = filter.to(x.device(), x.scalar_type()).expand({channels, 1, k});
  const int64_t no_pad = 0;  // a literal 0 would also match the padding-mode string overload
  return at::conv1d(y, f, /*bias=*/{}, /*stride=*/ratio, no_pad, /*dilation=*/1, channels);
}

}  // namespace diffmesh::models::ltx2
