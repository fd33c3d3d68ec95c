// Per-format halves of image_codec.cc. Not part of the public API: include image_codec.h.
#ifndef DIFFMESH_COMMON_MEDIA_IMAGE_CODEC_INTERNAL_H_
#define DIFFMESH_COMMON_MEDIA_IMAGE_CODEC_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/media/image_codec.h"

namespace diffmesh::media::internal {

// INVALID_ARGUMENT "<format>: image is WxH, ..." when the header's size breaks `limits`, or
// when either side is not positive. Call before allocating any pixel buffer.
absl::Status CheckDimensions(absl::string_view format, int64_t width, int64_t height,
                             const DecodeLimits& limits);

// rgb[i] = round(rgba[i] * alpha / 255) for `pixels` pixels: alpha composited onto black.
void CompositeOnBlack(const uint8_t* rgba, size_t pixels, uint8_t* rgb);

absl::StatusOr<Rgb8Image> DecodePngImage(absl::string_view bytes, const DecodeLimits& limits);
absl::StatusOr<Rgb8Image> DecodeJpegImage(absl::string_view bytes, const DecodeLimits& limits);
absl::StatusOr<Rgb8Image> DecodeWebpImage(absl::string_view bytes, const DecodeLimits& limits);

// quality already validated: JPEG 1-100, WebP 0-100 (100 = lossless).
absl::StatusOr<std::string> EncodeJpegImage(const uint8_t* rgb, int width, int height, int quality);
absl::StatusOr<std::string> EncodeWebpImage(const uint8_t* rgb, int width, int height, int quality);

}  // namespace diffmesh::media::internal

#endif  // DIFFMESH_COMMON_MEDIA_IMAGE_CODEC_INTERNAL_H_
