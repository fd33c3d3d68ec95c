#include "models/ltx2/pil_resize.h"

#include <cmath>
#include <cstddef>

namespace diffmesh::models::ltx2 {
namespace {

// Pillow's PRECISION_BITS for 8-bit images: 32 − 8 − 2.
constexpr int kPrecisionBits = 22;

// The taps of one output position: first source index and fixed-point weights.
struct Taps {
  int first = 0;
  std::vector<int32_t> weights;
};

// precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle, support 1) filter over
// the box [0, in_size).
std::vector<Taps> Coefficients(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filter_scale;
  std::vector<Taps> taps(out_size);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    // Pillow rounds with (int)(v + 0.5), i.e. truncation toward zero, then clamps.
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    const int n = xmax - xmin;
    std::vector<double> w(n > 0 ? n : 0);
    double total = 0.0;
    const double ss = 1.0 / filter_scale;  // multiplied, as Pillow does (not divided)
    for (int x = 0; x < n; ++x) {
      const double d = std::fabs((x + xmin - center + 0.5) * ss);
      w[x] = d < 1.0 ? 1.0 - d : 0.0;
      total += w[x];
    }
    Taps& t = taps[xx];
    t.first = xmin;
    t.weights.resize(w.size());
    for (size_t x = 0; x < w.size(); ++x) {
      const double k = total != 0.0 ? w[x] / total : w[x];
      const double fixed = k * (1 << kPrecisionBits);
      t.weights[x] = static_cast<int32_t>(k < 0 ? fixed - 0.5 : fixed + 0.5);
    }
  }
  return taps;
}

uint8_t Clip8(int64_t acc) {
  if (acc >= (int64_t{1} << kPrecisionBits << 8)) return 255;
  if (acc <= 0) return 0;
  return static_cast<uint8_t>(acc >> kPrecisionBits);
}

// One pass over `in` [rows, cols, channels]: along the width (horizontal) or the height, to
// taps.size() samples; results clipped to uint8 as Pillow's 8-bit passes do.
void ResampleAxis(const std::vector<uint8_t>& in, std::vector<uint8_t>& out, int rows, int cols,
                  int channels, bool horizontal, const std::vector<Taps>& taps) {
  const int out_rows = horizontal ? rows : static_cast<int>(taps.size());
  const int out_cols = horizontal ? static_cast<int>(taps.size()) : cols;
  out.assign(static_cast<size_t>(out_rows) * out_cols * channels, 0);
  for (int y = 0; y < out_rows; ++y) {
    for (int x = 0; x < out_cols; ++x) {
      const Taps& t = taps[horizontal ? x : y];
      for (int c = 0; c < channels; ++c) {
        int64_t acc = int64_t{1} << (kPrecisionBits - 1);
        for (size_t k = 0; k < t.weights.size(); ++k) {
          const int sy = horizontal ? y : t.first + static_cast<int>(k);
          const int sx = horizontal ? t.first + static_cast<int>(k) : x;
          acc += static_cast<int64_t>(in[(static_cast<size_t>(sy) * cols + sx) * channels + c]) *
                 t.weights[k];
        }
        out[(static_cast<size_t>(y) * out_cols + x) * channels + c] = Clip8(acc);
      }
    }
  }
}

}  // namespace

std::vector<uint8_t> PilBilinearResize(const uint8_t* src, int in_height, int in_width,
                                       int channels, int out_height, int out_width) {
  std::vector<uint8_t> cur(src, src + static_cast<size_t>(in_height) * in_width * channels);
  int rows = in_height, cols = in_width;
  std::vector<uint8_t> next;
  // ImagingResampleInner: a pass runs only when its size changes.
  if (out_width != in_width) {
    ResampleAxis(cur, next, rows, cols, channels, /*horizontal=*/true,
                 Coefficients(in_width, out_width));
    cur.swap(next);
    cols = out_width;
  }
  if (out_height != in_height) {
    ResampleAxis(cur, next, rows, cols, channels, /*horizontal=*/false,
                 Coefficients(in_height, out_height));
    cur.swap(next);
  }
  return cur;
}

}  // namespace diffmesh::models::ltx2
