// Condition-image preprocessing of GLM-Image editing (image-to-image), from decoded RGB8 pixels:
// - for the AR model, transformers' GlmImageImageProcessor (PIL backend): smart_resize to half
//   size in multiples of the patch, PIL bicubic, rescale, CLIP normalisation, patches;
// - for the VAE, diffusers' VaeImageProcessor.preprocess as GlmImagePipeline calls it: sides cut
//   down to multiples of vae_scale·patch, PIL Lanczos when that changes the size, then [-1, 1].
#ifndef DIFFMESH_MODELS_GLM_IMAGE_CONDITION_IMAGE_H_
#define DIFFMESH_MODELS_GLM_IMAGE_CONDITION_IMAGE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/glm_image/ar_model.h"
#include "models/glm_image/image_resample.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {

// processor/preprocessor_config.json (GlmImageImageProcessor); missing keys take the
// transformers class defaults. `size.shortest_edge` / `size.longest_edge` (or min_pixels /
// max_pixels) are pixel COUNTS.
struct ArImageProcessorConfig {
  bool do_resize = true;
  bool do_rescale = true;
  bool do_normalize = true;
  int resample = 3;  // PIL.Image.Resampling (3 = bicubic)
  double rescale_factor = 1.0 / 255.0;
  std::vector<double> image_mean = {0.48145466, 0.4578275, 0.40821073};
  std::vector<double> image_std = {0.26862954, 0.26130258, 0.27577711};
  int64_t min_pixels = 56 * 56;
  int64_t max_pixels = 28 * 28 * 1280;
  int64_t patch_size = 14;
  int64_t temporal_patch_size = 2;
  int64_t merge_size = 2;

  static absl::StatusOr<ArImageProcessorConfig> FromJson(const nlohmann::json& json);
  // `path` is preprocessor_config.json or the folder holding it.
  static absl::StatusOr<ArImageProcessorConfig> FromFile(const std::string& path);
};

// transformers' GLM-Image smart_resize: the (height, width) an image of `height` × `width` is
// resized to. A scale from min/max pixels is chosen on the original sides, then each HALVED side
// is scaled and rounded (half to even) to a multiple of `factor` (at least `factor`), and capped
// so the longer side stays within sqrt(max_pixels). InvalidArgument for a side below `factor` or
// an aspect ratio above 4, as the reference raises.
absl::StatusOr<std::pair<int64_t, int64_t>> ArSmartResize(int64_t height, int64_t width,
                                                          int64_t factor, int64_t min_pixels,
                                                          int64_t max_pixels);

// One condition image as the AR model's vision tower takes it.
struct ArConditionImage {
  at::Tensor pixel_values;  // [gh·gw, C·T·p·p] float32: one row per patch, raster order
  ImageGrid grid;           // patch grid (gh, gw): one AR image token per patch ("d32")
  at::Tensor resized;       // [C, H', W'] uint8: the image after the resize (before rescale)
};

// `rgb` row-major [height, width, 3] uint8 → the processor's pixel_values for that image
// (transformers' processor output `pixel_values` rows of this image, `image_grid_thw` [1, gh, gw]).
absl::StatusOr<ArConditionImage> PreprocessArConditionImage(const ArImageProcessorConfig& config,
                                                            const uint8_t* rgb, int width,
                                                            int height);

// Rescale, normalise and patchify an already resized image: resized [C, H', W'] uint8 →
// [gh·gw, C·T·p·p] float32 (the processor's steps after its resize).
absl::StatusOr<at::Tensor> PatchifyArImage(const ArImageProcessorConfig& config,
                                           const at::Tensor& resized);

// The pipeline's VAE input for a condition image: `rgb` [height, width, 3] uint8 → float32
// [1, 3, H', W'] in [-1, 1] with H' = height rounded down to a multiple of `multiple_of`
// (vae_scale_factor · transformer patch_size, 16 for GLM-Image), likewise W'; resized with PIL
// Lanczos when (H', W') differs from the input. InvalidArgument when a side is below
// `multiple_of`.
absl::StatusOr<at::Tensor> PreprocessVaeConditionImage(const uint8_t* rgb, int width, int height,
                                                       int64_t multiple_of);

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_CONDITION_IMAGE_H_
