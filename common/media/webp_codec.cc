// WebP decoding and encoding with libwebp.
#include <webp/decode.h>
#include <webp/encode.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/media/image_codec_internal.h"

namespace diffmesh::media::internal {
namespace {

constexpr int kMaxWebpSide = 16383;  // WEBP_MAX_DIMENSION: the bitstream's 14-bit sizes

const char* Vp8StatusName(VP8StatusCode status) {
  switch (status) {
    case VP8_STATUS_OK:
      return "ok";
    case VP8_STATUS_OUT_OF_MEMORY:
      return "out of memory";
    case VP8_STATUS_INVALID_PARAM:
      return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR:
      return "corrupt bitstream";
    case VP8_STATUS_UNSUPPORTED_FEATURE:
      return "unsupported feature";
    case VP8_STATUS_SUSPENDED:
      return "suspended";
    case VP8_STATUS_USER_ABORT:
      return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA:
      return "truncated data";
  }
  return "unknown error";
}

absl::Status WebpError(absl::string_view problem, VP8StatusCode status) {
  return absl::InvalidArgumentError(absl::StrCat("WebP: ", problem, ": ", Vp8StatusName(status)));
}

}  // namespace

absl::StatusOr<Rgb8Image> DecodeWebpImage(absl::string_view bytes, const DecodeLimits& limits) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  WebPDecoderConfig config;
  if (!WebPInitDecoderConfig(&config)) return absl::InternalError("WebP: library version mismatch");
  VP8StatusCode status = WebPGetFeatures(data, bytes.size(), &config.input);
  if (status != VP8_STATUS_OK) return WebpError("bad header", status);
  if (config.input.has_animation) {
    return absl::InvalidArgumentError("WebP: animated images are not supported");
  }
  const WebPBitstreamFeatures& features = config.input;
  absl::Status dims = CheckDimensions("WebP", features.width, features.height, limits);
  if (!dims.ok()) return dims;

  const int channels = features.has_alpha ? 4 : 3;
  std::vector<uint8_t> decoded(static_cast<size_t>(features.width) * features.height * channels);
  config.output.colorspace = features.has_alpha ? MODE_RGBA : MODE_RGB;
  config.output.is_external_memory = 1;
  config.output.u.RGBA.rgba = decoded.data();
  config.output.u.RGBA.stride = features.width * channels;
  config.output.u.RGBA.size = decoded.size();
  status = WebPDecode(data, bytes.size(), &config);
  WebPFreeDecBuffer(&config.output);  // external memory: frees nothing of ours
  if (status != VP8_STATUS_OK) return WebpError("cannot decode", status);

  Rgb8Image image;
  image.width = features.width;
  image.height = features.height;
  if (!features.has_alpha) {
    image.pixels = std::move(decoded);
    return image;
  }
  const size_t pixels = static_cast<size_t>(image.width) * image.height;
  image.pixels.resize(pixels * 3);
  CompositeOnBlack(decoded.data(), pixels, image.pixels.data());
  return image;
}

absl::StatusOr<std::string> EncodeWebpImage(const uint8_t* rgb, int width, int height,
                                            int quality) {
  if (width > kMaxWebpSide || height > kMaxWebpSide) {
    return absl::InvalidArgumentError(absl::StrCat("WebP: ", width, "x", height,
                                                   " exceeds the format's limit of ", kMaxWebpSide,
                                                   " pixels per side"));
  }
  uint8_t* out = nullptr;
  const int stride = width * 3;
  const size_t size = quality == 100 ? WebPEncodeLosslessRGB(rgb, width, height, stride, &out)
                                     : WebPEncodeRGB(rgb, width, height, stride, quality, &out);
  if (size == 0) {
    WebPFree(out);
    return absl::InternalError(absl::StrCat("WebP: encoding ", width, "x", height, " failed"));
  }
  std::string encoded(reinterpret_cast<const char*>(out), size);
  WebPFree(out);
  return encoded;
}

}  // namespace diffmesh::media::internal
