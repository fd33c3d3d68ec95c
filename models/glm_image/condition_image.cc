#include "models/glm_image/condition_image.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/glm_image/vae.h"

namespace diffmesh::models::glm_image {
namespace {

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "preprocessor", key, out);
}

// Python's round(): half to even (the default floating-point rounding mode).
int64_t RoundHalfEven(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

}  // namespace

absl::StatusOr<ArImageProcessorConfig> ArImageProcessorConfig::FromJson(const nlohmann::json& json) {
  ArImageProcessorConfig c;
  if (!json.is_object()) return absl::InvalidArgumentError("preprocessor config: not an object");
  RETURN_IF_ERROR(ReadField(json, "do_resize", c.do_resize));
  RETURN_IF_ERROR(ReadField(json, "do_rescale", c.do_rescale));
  RETURN_IF_ERROR(ReadField(json, "do_normalize", c.do_normalize));
  RETURN_IF_ERROR(ReadField(json, "resample", c.resample));
  RETURN_IF_ERROR(ReadField(json, "rescale_factor", c.rescale_factor));
  RETURN_IF_ERROR(ReadField(json, "image_mean", c.image_mean));
  RETURN_IF_ERROR(ReadField(json, "image_std", c.image_std));
  RETURN_IF_ERROR(ReadField(json, "patch_size", c.patch_size));
  RETURN_IF_ERROR(ReadField(json, "temporal_patch_size", c.temporal_patch_size));
  RETURN_IF_ERROR(ReadField(json, "merge_size", c.merge_size));
  if (auto it = json.find("size"); it != json.end() && it->is_object()) {
    RETURN_IF_ERROR(ReadConfigField(*it, "preprocessor size", "shortest_edge", c.min_pixels));
    RETURN_IF_ERROR(ReadConfigField(*it, "preprocessor size", "longest_edge", c.max_pixels));
  }
  // As the processor's constructor: explicit min_pixels / max_pixels override `size`.
  RETURN_IF_ERROR(ReadField(json, "min_pixels", c.min_pixels));
  RETURN_IF_ERROR(ReadField(json, "max_pixels", c.max_pixels));
  RETURN_IF_ERROR(ResampleFilterFromPil(c.resample).status());
  if (c.patch_size <= 0 || c.temporal_patch_size <= 0 || c.merge_size <= 0 ||
      c.min_pixels <= 0 || c.max_pixels <= 0) {
    return absl::InvalidArgumentError(
        "preprocessor config: patch/merge sizes and pixel limits must be positive");
  }
  if (c.image_mean.size() != 3 || c.image_std.size() != 3) {
    return absl::InvalidArgumentError("preprocessor config: image_mean/image_std need 3 entries");
  }
  return c;
}

absl::StatusOr<ArImageProcessorConfig> ArImageProcessorConfig::FromFile(const std::string& path) {
  std::string file = path;
  if (file.size() < 5 || file.substr(file.size() - 5) != ".json") {
    file += "/preprocessor_config.json";
  }
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(file));
  return FromJson(json);
}

absl::StatusOr<std::pair<int64_t, int64_t>> ArSmartResize(int64_t height, int64_t width,
                                                          int64_t factor, int64_t min_pixels,
                                                          int64_t max_pixels) {
  if (height < factor || width < factor) {
    return absl::InvalidArgumentError(absl::StrCat("condition image: ", width, "x", height,
                                                   " has a side below ", factor, " pixels"));
  }
  const int64_t min_side = std::min(height, width), max_side = std::max(height, width);
  if (static_cast<double>(max_side) / static_cast<double>(min_side) > 4) {
    return absl::InvalidArgumentError(absl::StrCat("condition image: aspect ratio of ", width, "x",
                                                   height, " is above 4"));
  }
  const int64_t shortest_edge = RoundHalfEven(std::sqrt(static_cast<double>(min_pixels)));
  const int64_t longest_edge = RoundHalfEven(std::sqrt(static_cast<double>(max_pixels)));
  double scale = 1.0;
  if (min_side < shortest_edge) scale = static_cast<double>(shortest_edge) / min_side;
  if (max_side * scale > longest_edge) scale = static_cast<double>(longest_edge) / max_side;
  const double f = static_cast<double>(factor);
  const int64_t half_h = height / 2, half_w = width / 2;
  int64_t h_bar = std::max(factor, RoundHalfEven(half_h * scale / f) * factor);
  int64_t w_bar = std::max(factor, RoundHalfEven(half_w * scale / f) * factor);
  if (std::max(h_bar, w_bar) > longest_edge) {
    const double beta = static_cast<double>(std::max(h_bar, w_bar)) / longest_edge;
    h_bar = std::max(factor, static_cast<int64_t>(std::floor((h_bar / beta) / f)) * factor);
    w_bar = std::max(factor, static_cast<int64_t>(std::floor((w_bar / beta) / f)) * factor);
  }
  return std::make_pair(h_bar, w_bar);
}

absl::StatusOr<at::Tensor> PatchifyArImage(const ArImageProcessorConfig& config,
                                           const at::Tensor& resized) {
  if (resized.dim() != 3 || resized.size(0) != 3 || resized.scalar_type() != at::kByte) {
    return absl::InvalidArgumentError("resized image must be uint8 [3, H, W]");
  }
  const int64_t p = config.patch_size, m = config.merge_size, t = config.temporal_patch_size;
  const int64_t c = resized.size(0), h = resized.size(1), w = resized.size(2);
  if (h % (p * m) != 0 || w % (p * m) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("resized image ", h, "x", w,
                                                   " is not a multiple of ", p * m));
  }
  // numpy computes in float64 from the uint8 values; the result is stored as float32.
  at::Tensor x = resized.to(at::kDouble);
  if (config.do_rescale) x = x * config.rescale_factor;
  if (config.do_normalize) {
    const at::Tensor mean = at::tensor(config.image_mean, at::kDouble).view({3, 1, 1});
    const at::Tensor std = at::tensor(config.image_std, at::kDouble).view({3, 1, 1});
    x = (x - mean) / std;
  }
  x = x.to(at::kFloat);
  const int64_t gh = h / p, gw = w / p;
  // [T (the frame repeated), C, gh/m, m, p, gw/m, m, p] → rows (gh/m, gw/m, m, m), columns
  // (C, T, p, p): the processor's patch order.
  at::Tensor frames = x.unsqueeze(0).expand({t, c, h, w});
  at::Tensor patches = frames.reshape({t, c, gh / m, m, p, gw / m, m, p})
                           .permute({2, 5, 3, 6, 1, 0, 4, 7})
                           .reshape({gh * gw, c * t * p * p});
  return patches.contiguous();
}

absl::StatusOr<ArConditionImage> PreprocessArConditionImage(const ArImageProcessorConfig& config,
                                                            const uint8_t* rgb, int width,
                                                            int height) {
  if (rgb == nullptr || width <= 0 || height <= 0) {
    return absl::InvalidArgumentError("condition image: no pixels");
  }
  int64_t rh = height, rw = width;
  std::vector<uint8_t> pixels(rgb, rgb + static_cast<int64_t>(width) * height * 3);
  if (config.do_resize) {
    ASSIGN_OR_RETURN(auto size, ArSmartResize(height, width, config.patch_size * config.merge_size,
                                              config.min_pixels, config.max_pixels));
    rh = size.first;
    rw = size.second;
    ASSIGN_OR_RETURN(ResampleFilter filter, ResampleFilterFromPil(config.resample));
    ASSIGN_OR_RETURN(pixels, ResizeLikePil(rgb, width, height, 3, static_cast<int>(rw),
                                           static_cast<int>(rh), filter));
  }
  ArConditionImage out;
  out.resized = at::from_blob(pixels.data(), {rh, rw, 3}, at::kByte).permute({2, 0, 1}).clone();
  ASSIGN_OR_RETURN(out.pixel_values, PatchifyArImage(config, out.resized));
  out.grid = {rh / config.patch_size, rw / config.patch_size};
  return out;
}

absl::StatusOr<at::Tensor> PreprocessVaeConditionImage(const uint8_t* rgb, int width, int height,
                                                       int64_t multiple_of) {
  if (rgb == nullptr || multiple_of <= 0 || width < multiple_of || height < multiple_of) {
    return absl::InvalidArgumentError(absl::StrCat("condition image: ", width, "x", height,
                                                   " has a side below ", multiple_of, " pixels"));
  }
  const int out_h = static_cast<int>(height / multiple_of * multiple_of);
  const int out_w = static_cast<int>(width / multiple_of * multiple_of);
  ASSIGN_OR_RETURN(std::vector<uint8_t> pixels,
                   ResizeLikePil(rgb, width, height, 3, out_w, out_h, ResampleFilter::kLanczos));
  at::Tensor hwc = at::from_blob(pixels.data(), {out_h, out_w, 3}, at::kByte);
  return Uint8HwcToImage(hwc);  // copies: [1, 3, H', W']
}

}  // namespace diffmesh::models::glm_image
