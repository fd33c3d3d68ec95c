#include "common/media/image_codec.h"

#include "absl/strings/str_cat.h"
#include "common/media/image_codec_internal.h"

namespace diffmesh::media {
namespace internal {

absl::Status CheckDimensions(absl::string_view format, int64_t width, int64_t height,
                             const DecodeLimits& limits) {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(format, ": header gives an empty image (", width, "x", height, ")"));
  }
  if (width > limits.max_width || height > limits.max_height ||
      width * height > limits.max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat(
        format, ": image is ", width, "x", height, " (", width * height, " pixels); the limit is ",
        limits.max_width, "x", limits.max_height, " and ", limits.max_pixels, " pixels"));
  }
  return absl::OkStatus();
}

void CompositeOnBlack(const uint8_t* rgba, size_t pixels, uint8_t* rgb) {
  for (size_t i = 0; i < pixels; ++i) {
    const uint32_t a = rgba[4 * i + 3];
    for (int c = 0; c < 3; ++c)
      rgb[3 * i + c] = static_cast<uint8_t>((rgba[4 * i + c] * a + 127) / 255);
  }
}

}  // namespace internal

absl::StatusOr<Rgb8Image> DecodeImage(absl::string_view bytes, const DecodeLimits& limits) {
  if (bytes.size() > limits.max_encoded_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image data is ", bytes.size(), " bytes; the limit is ", limits.max_encoded_bytes));
  }
  absl::StatusOr<MediaFormat> format = SniffImageFormat(bytes);
  if (!format.ok()) return format.status();
  switch (*format) {
    case MediaFormat::kPng:
      return internal::DecodePngImage(bytes, limits);
    case MediaFormat::kJpeg:
      return internal::DecodeJpegImage(bytes, limits);
    case MediaFormat::kWebp:
      return internal::DecodeWebpImage(bytes, limits);
    case MediaFormat::kMp4:
      break;
  }
  return absl::InvalidArgumentError("not an image format");
}

absl::StatusOr<std::string> EncodeImage(const uint8_t* rgb, int width, int height,
                                        MediaFormat format, int quality) {
  if (width <= 0 || height <= 0 || rgb == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodeImage: empty image (", width, "x", height, ")"));
  }
  switch (format) {
    case MediaFormat::kPng:
      return ::diffmesh::EncodePng(rgb, width, height);
    case MediaFormat::kJpeg:
      if (quality == kDefaultQuality) quality = 90;
      if (quality < 1 || quality > 100) {
        return absl::InvalidArgumentError(
            absl::StrCat("JPEG quality must be 1-100, got ", quality));
      }
      return internal::EncodeJpegImage(rgb, width, height, quality);
    case MediaFormat::kWebp:
      if (quality == kDefaultQuality) quality = 90;
      if (quality < 0 || quality > 100) {
        return absl::InvalidArgumentError(
            absl::StrCat("WebP quality must be 0-100 (100 = lossless), got ", quality));
      }
      return internal::EncodeWebpImage(rgb, width, height, quality);
    case MediaFormat::kMp4:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("EncodeImage: ", FormatName(format), " is not an image format"));
}

absl::StatusOr<std::string> EncodeImage(const Rgb8Image& image, MediaFormat format, int quality) {
  const size_t expected = static_cast<size_t>(image.width) * image.height * 3;
  if (image.width > 0 && image.height > 0 && image.pixels.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("EncodeImage: ", image.width, "x", image.height,
                                                   " RGB8 image needs ", expected, " bytes, has ",
                                                   image.pixels.size()));
  }
  return EncodeImage(image.pixels.data(), image.width, image.height, format, quality);
}

}  // namespace diffmesh::media
