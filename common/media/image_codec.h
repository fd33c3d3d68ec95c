// Still-image decoding and encoding: PNG (libspng), JPEG (libjpeg-turbo), WebP (libwebp), all to
// and from 8-bit RGB. LibTorch-free; codec headers stay in the .cc files.
//
// Decoding contract:
//  - The format is sniffed from the magic bytes, never taken from a file name or MIME type.
//  - Width, height and pixel count are checked against DecodeLimits from the header, BEFORE any
//    pixel buffer is allocated (decompression-bomb guard).
//  - Alpha (PNG RGBA / gray+alpha / tRNS, WebP alpha) is composited onto black:
//    out = round(c * a / 255). Fully transparent pixels become black whatever RGB they stored.
//  - Grayscale, palette and 16-bit PNGs are converted to RGB8 (16-bit keeps the high byte).
//    Grayscale JPEGs are expanded to RGB; CMYK/YCCK JPEGs are converted with the Adobe
//    (inverted) convention when the Adobe marker is present, plain CMYK otherwise.
//    Animated WebP is refused.
//  - Truncated or corrupt data gives INVALID_ARGUMENT naming the format and the problem; an
//    unknown format gives INVALID_ARGUMENT listing the accepted ones. Never a crash or exit().
#ifndef DIFFMESH_COMMON_MEDIA_IMAGE_CODEC_H_
#define DIFFMESH_COMMON_MEDIA_IMAGE_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/image/png.h"
#include "common/media/media_format.h"

namespace diffmesh::media {

using ::diffmesh::Rgb8Image;  // width, height, pixels [height, width, 3]

struct DecodeLimits {
  size_t max_encoded_bytes = 64 << 20;  // larger inputs are refused before parsing
  int max_width = 16384;                // per-side limit, checked from the header
  int max_height = 16384;               // per-side limit, checked from the header
  int64_t max_pixels = 8192LL * 8192;   // width * height limit (RGB8 output is 3 bytes each)
};

// Quality value meaning "the format's default" (JPEG 90, WebP 90 lossy).
inline constexpr int kDefaultQuality = -1;

// Decodes PNG / JPEG / WebP to RGB8; see the contract above.
absl::StatusOr<Rgb8Image> DecodeImage(absl::string_view bytes, const DecodeLimits& limits = {});

// Encodes `rgb` ([height, width, 3], row-major, no padding) as `format`.
//  - PNG: lossless, deterministic; `quality` is ignored.
//  - JPEG: quality 1-100 (kDefaultQuality = 90), 4:2:0 chroma below quality 90, 4:4:4 from 90.
//  - WebP: quality 0-99 is lossy (kDefaultQuality = 90); quality 100 means LOSSLESS.
//    WebP sides are limited to 16383 pixels.
// INVALID_ARGUMENT for an empty image, a quality out of range or a non-image format (MP4).
absl::StatusOr<std::string> EncodeImage(const uint8_t* rgb, int width, int height,
                                        MediaFormat format, int quality = kDefaultQuality);
// As above; INVALID_ARGUMENT when image.pixels does not hold width * height * 3 bytes.
absl::StatusOr<std::string> EncodeImage(const Rgb8Image& image, MediaFormat format,
                                        int quality = kDefaultQuality);

}  // namespace diffmesh::media

#endif  // DIFFMESH_COMMON_MEDIA_IMAGE_CODEC_H_
