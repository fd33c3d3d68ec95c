// Fuzzes DecodeImage (common/media/image_codec.h) on the bytes of a request's input image: the
// first byte picks the limits (bit 0: a small box that the decompression-bomb guard must hold;
// otherwise the default model's limits as the request validator sets them), the rest is the
// image. An accepted image is within the limits and holds exactly width × height × 3 bytes, and
// small ones survive a lossless PNG round trip unchanged; a refusal is INVALID_ARGUMENT (or
// RESOURCE_EXHAUSTED) with a message.
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "common/media/image_codec.h"
#include "fuzz/fuzz_input.h"

namespace {

using diffmesh::fuzz::Check;

diffmesh::media::DecodeLimits Limits(uint8_t selector) {
  diffmesh::media::DecodeLimits limits;
  if (selector & 1) {
    limits.max_encoded_bytes = 1 << 16;
    limits.max_width = 96;
    limits.max_height = 64;
    limits.max_pixels = 48 * 48;
  } else {
    limits.max_pixels = 2048 * 2048;  // default_pipeline.json's max_input_pixels
  }
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const diffmesh::media::DecodeLimits limits = Limits(data[0]);
  const absl::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  auto image = diffmesh::media::DecodeImage(bytes, limits);
  if (!image.ok()) {
    Check(image.status().code() == absl::StatusCode::kInvalidArgument ||
              image.status().code() == absl::StatusCode::kResourceExhausted,
          "a refusal that is neither INVALID_ARGUMENT nor RESOURCE_EXHAUSTED");
    Check(!image.status().message().empty(), "a refusal without a message");
    return 0;
  }
  Check(bytes.size() <= limits.max_encoded_bytes, "accepted an input over max_encoded_bytes");
  Check(image->width >= 1 && image->height >= 1, "accepted an empty image");
  Check(image->width <= limits.max_width, "accepted a width over the limit");
  Check(image->height <= limits.max_height, "accepted a height over the limit");
  const int64_t pixels = int64_t{image->width} * image->height;
  Check(pixels <= limits.max_pixels, "accepted a pixel count over the limit");
  Check(image->pixels.size() == static_cast<size_t>(pixels) * 3,
        "pixel bytes differ from width x height x 3");
  if (pixels <= 64 * 64) {
    auto png = diffmesh::media::EncodeImage(*image, diffmesh::media::MediaFormat::kPng);
    Check(png.ok(), "an accepted image does not encode as PNG");
    auto again = diffmesh::media::DecodeImage(*png, limits);
    Check(again.ok(), "the PNG of an accepted image does not decode");
    Check(again->width == image->width && again->height == image->height &&
              again->pixels == image->pixels,
          "the PNG round trip changed the image");
  }
  return 0;
}
