// Pillow's image resize (Image.resize → ImagingResample, the 8-bit path) for interleaved 8-bit
// images, reproduced bit for bit: the reference processors resize condition images with PIL
// (transformers' GlmImageImageProcessorPil: bicubic; diffusers' VaeImageProcessor: Lanczos), and
// any other resampler shifts the pixels the vision tower and the VAE see. LibTorch-free.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_IMAGE_RESAMPLE_H_
#define DIFFMESH_MODELS_GLM_IMAGE_IMAGE_RESAMPLE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh::models::glm_image {

// The PIL filters the GLM-Image processors use (PIL.Image.Resampling values in comments).
enum class ResampleFilter {
  kLanczos,  // 1: windowed sinc, support 3
  kBilinear, // 2: triangle, support 1
  kBicubic,  // 3: cubic convolution with a = -0.5, support 2
};

// The PIL.Image.Resampling value → filter; InvalidArgument for the ones not implemented.
absl::StatusOr<ResampleFilter> ResampleFilterFromPil(int resample);

// `pixels` row-major [height, width, channels] → [out_height, out_width, channels], as
// PIL's Image.resize((out_width, out_height), filter) on an image of that mode (RGB: 3 channels)
// with the whole image as the box. Separable: a horizontal pass, rounded to 8 bits, then a
// vertical pass, each with PIL's fixed-point (22-bit) coefficients; the filter is widened by the
// scale when downsampling (antialiasing). Equal sizes return a copy, as PIL does.
absl::StatusOr<std::vector<uint8_t>> ResizeLikePil(const uint8_t* pixels, int width, int height,
                                                   int channels, int out_width, int out_height,
                                                   ResampleFilter filter);

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_IMAGE_RESAMPLE_H_
