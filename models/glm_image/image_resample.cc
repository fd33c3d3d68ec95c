#include "models/glm_image/image_resample.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace diffmesh::models::glm_image {
namespace {

// PIL's 8-bit resampling keeps coefficients as integers scaled by 2^22 (32 bits minus 8 bits of
// pixel minus 2 bits of headroom for negative lobes).
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr double kPi = 3.14159265358979323846;

double Bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double Sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * kPi;
  return std::sin(x) / x;
}

double Lanczos(double x) {
  if (-3.0 <= x && x < 3.0) return Sinc(x) * Sinc(x / 3);
  return 0.0;
}

double Triangle(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

struct Filter {
  double (*fn)(double);
  double support;
};

Filter FilterOf(ResampleFilter f) {
  switch (f) {
    case ResampleFilter::kLanczos:
      return {Lanczos, 3.0};
    case ResampleFilter::kBilinear:
      return {Triangle, 1.0};
    case ResampleFilter::kBicubic:
      break;
  }
  return {Bicubic, 2.0};
}

// Per output index: the first input index, the tap count, and `ksize` fixed-point taps.
struct Coeffs {
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> taps;  // [out_size, ksize]
};

// PIL's precompute_coeffs + normalize_coeffs_8bpc for the box [0, in_size).
Coeffs Precompute(int in_size, int out_size, const Filter& filter) {
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter.support * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.taps.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);  // truncation, as the C cast
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = k[x] * (1 << kPrecisionBits);
      c.taps[static_cast<size_t>(xx) * c.ksize + x] =
          static_cast<int32_t>(v < 0 ? -0.5 + v : 0.5 + v);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t Clip8(int64_t v) {
  if (v >= (int64_t{1} << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// Resamples along one axis. `stride_in`/`stride_out` step between taps along that axis (in
// bytes); `lines` lines of `line_len` bytes each run across the other axis.
void Pass(const uint8_t* in, uint8_t* out, const Coeffs& c, int out_size, int lines,
          int line_len, int64_t line_stride_in, int64_t line_stride_out, int64_t tap_stride_in,
          int64_t tap_stride_out) {
  for (int line = 0; line < lines; ++line) {
    const uint8_t* src = in + line * line_stride_in;
    uint8_t* dst = out + line * line_stride_out;
    for (int xx = 0; xx < out_size; ++xx) {
      const int32_t* k = &c.taps[static_cast<size_t>(xx) * c.ksize];
      const uint8_t* s0 = src + static_cast<int64_t>(c.first[xx]) * tap_stride_in;
      for (int e = 0; e < line_len; ++e) {
        // PIL's accumulator is a 32-bit int; the taps sum to 2^22 so 255·2^22 plus lobes fits.
        int32_t ss = int32_t{1} << (kPrecisionBits - 1);
        for (int x = 0; x < c.count[xx]; ++x) ss += s0[x * tap_stride_in + e] * k[x];
        dst[xx * tap_stride_out + e] = Clip8(ss);
      }
    }
  }
}

}  // namespace

absl::StatusOr<ResampleFilter> ResampleFilterFromPil(int resample) {
  switch (resample) {
    case 1:
      return ResampleFilter::kLanczos;
    case 2:
      return ResampleFilter::kBilinear;
    case 3:
      return ResampleFilter::kBicubic;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("resample: PIL filter ", resample, " is not supported (1, 2 or 3)"));
  }
}

absl::StatusOr<std::vector<uint8_t>> ResizeLikePil(const uint8_t* pixels, int width, int height,
                                                   int channels, int out_width, int out_height,
                                                   ResampleFilter filter) {
  if (width <= 0 || height <= 0 || out_width <= 0 || out_height <= 0 || channels <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("resize: ", width, "x", height, " to ",
                                                   out_width, "x", out_height, " with ", channels,
                                                   " channels"));
  }
  const Filter f = FilterOf(filter);
  const int64_t in_row = static_cast<int64_t>(width) * channels;
  std::vector<uint8_t> current(pixels, pixels + in_row * height);
  int cur_w = width;
  if (out_width != width) {
    const Coeffs c = Precompute(width, out_width, f);
    std::vector<uint8_t> next(static_cast<size_t>(out_width) * channels * height);
    Pass(current.data(), next.data(), c, out_width, height, channels, in_row,
         static_cast<int64_t>(out_width) * channels, channels, channels);
    current.swap(next);
    cur_w = out_width;
  }
  if (out_height != height) {
    const Coeffs c = Precompute(height, out_height, f);
    const int64_t row = static_cast<int64_t>(cur_w) * channels;
    std::vector<uint8_t> next(static_cast<size_t>(row) * out_height);
    // One "line" per row element; taps step by whole rows.
    Pass(current.data(), next.data(), c, out_height, 1, static_cast<int>(row), 0, 0, row, row);
    current.swap(next);
  }
  return current;
}

}  // namespace diffmesh::models::glm_image
