#include "common/image/png.h"

#include <spng.h>

#include <memory>

#include "absl/strings/str_cat.h"

namespace diffmesh {
namespace {

struct CtxDeleter {
  void operator()(spng_ctx* ctx) const { spng_ctx_free(ctx); }
};
using Ctx = std::unique_ptr<spng_ctx, CtxDeleter>;

absl::Status SpngError(const char* what, int rc) {
  return absl::InternalError(absl::StrCat(what, ": ", spng_strerror(rc)));
}

}  // namespace

absl::StatusOr<std::string> EncodePng(const uint8_t* rgb, int width, int height) {
  if (width <= 0 || height <= 0) return absl::InvalidArgumentError("empty image");
  Ctx ctx(spng_ctx_new(SPNG_CTX_ENCODER));
  if (!ctx) return absl::ResourceExhaustedError("spng_ctx_new failed");
  spng_set_option(ctx.get(), SPNG_ENCODE_TO_BUFFER, 1);
  spng_ihdr ihdr = {};
  ihdr.width = static_cast<uint32_t>(width);
  ihdr.height = static_cast<uint32_t>(height);
  ihdr.bit_depth = 8;
  ihdr.color_type = SPNG_COLOR_TYPE_TRUECOLOR;
  if (int rc = spng_set_ihdr(ctx.get(), &ihdr)) return SpngError("spng_set_ihdr", rc);
  const size_t size = static_cast<size_t>(width) * height * 3;
  if (int rc = spng_encode_image(ctx.get(), rgb, size, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE)) {
    return SpngError("spng_encode_image", rc);
  }
  size_t len = 0;
  int rc = 0;
  void* buf = spng_get_png_buffer(ctx.get(), &len, &rc);
  if (buf == nullptr) return SpngError("spng_get_png_buffer", rc);
  std::string out(static_cast<const char*>(buf), len);
  free(buf);
  return out;
}

absl::StatusOr<Rgb8Image> DecodePng(const std::string& png) {
  Ctx ctx(spng_ctx_new(0));
  if (!ctx) return absl::ResourceExhaustedError("spng_ctx_new failed");
  if (int rc = spng_set_png_buffer(ctx.get(), png.data(), png.size())) {
    return SpngError("spng_set_png_buffer", rc);
  }
  spng_ihdr ihdr;
  if (int rc = spng_get_ihdr(ctx.get(), &ihdr)) return absl::InvalidArgumentError(
      absl::StrCat("not a PNG: ", spng_strerror(rc)));
  size_t size = 0;
  if (int rc = spng_decoded_image_size(ctx.get(), SPNG_FMT_RGB8, &size)) {
    return SpngError("spng_decoded_image_size", rc);
  }
  Rgb8Image img;
  img.width = static_cast<int>(ihdr.width);
  img.height = static_cast<int>(ihdr.height);
  img.pixels.resize(size);
  if (int rc = spng_decode_image(ctx.get(), img.pixels.data(), size, SPNG_FMT_RGB8, 0)) {
    return SpngError("spng_decode_image", rc);
  }
  return img;
}

}  // namespace diffmesh
