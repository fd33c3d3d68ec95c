// PNG decoding with libspng, bounded by DecodeLimits.
#include <spng.h>

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/media/image_codec_internal.h"

namespace diffmesh::media::internal {
namespace {

struct SpngCtxDeleter {
  void operator()(spng_ctx* ctx) const { spng_ctx_free(ctx); }
};
using SpngCtx = std::unique_ptr<spng_ctx, SpngCtxDeleter>;

absl::Status PngError(absl::string_view problem, int rc) {
  return absl::InvalidArgumentError(absl::StrCat("PNG: ", problem, ": ", spng_strerror(rc)));
}

// True when the decoded image carries alpha: an alpha channel or a tRNS chunk.
bool HasAlpha(spng_ctx* ctx, const spng_ihdr& ihdr) {
  if (ihdr.color_type == SPNG_COLOR_TYPE_TRUECOLOR_ALPHA ||
      ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA) {
    return true;
  }
  spng_trns trns;
  return spng_get_trns(ctx, &trns) == 0;
}

}  // namespace

absl::StatusOr<Rgb8Image> DecodePngImage(absl::string_view bytes, const DecodeLimits& limits) {
  SpngCtx ctx(spng_ctx_new(0));
  if (!ctx) return absl::ResourceExhaustedError("PNG: spng_ctx_new failed");
  // Ancillary chunks are cached in memory: bound them by the input size limit.
  spng_set_chunk_limits(ctx.get(), limits.max_encoded_bytes, limits.max_encoded_bytes);
  if (int rc = spng_set_png_buffer(ctx.get(), bytes.data(), bytes.size())) {
    return PngError("cannot read the data", rc);
  }
  spng_ihdr ihdr;
  if (int rc = spng_get_ihdr(ctx.get(), &ihdr)) return PngError("bad header", rc);
  absl::Status dims = CheckDimensions("PNG", ihdr.width, ihdr.height, limits);
  if (!dims.ok()) return dims;

  const bool alpha = HasAlpha(ctx.get(), ihdr);
  const int fmt = alpha ? SPNG_FMT_RGBA8 : SPNG_FMT_RGB8;
  size_t size = 0;
  if (int rc = spng_decoded_image_size(ctx.get(), fmt, &size)) {
    return PngError("unsupported pixel layout", rc);
  }
  Rgb8Image image;
  image.width = static_cast<int>(ihdr.width);
  image.height = static_cast<int>(ihdr.height);
  std::vector<uint8_t> decoded(size);
  if (int rc =
          spng_decode_image(ctx.get(), decoded.data(), size, fmt, alpha ? SPNG_DECODE_TRNS : 0)) {
    return PngError("corrupt or truncated image data", rc);
  }
  if (!alpha) {
    image.pixels = std::move(decoded);
    return image;
  }
  const size_t pixels = static_cast<size_t>(image.width) * image.height;
  image.pixels.resize(pixels * 3);
  CompositeOnBlack(decoded.data(), pixels, image.pixels.data());
  return image;
}

}  // namespace diffmesh::media::internal
