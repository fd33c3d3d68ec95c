// JPEG decoding and encoding with libjpeg-turbo.
//
// libjpeg reports fatal errors through error_exit, which by default calls exit(). Here it
// longjmp()s back to a setjmp() in the same small function that made the libjpeg call. Those
// functions (ReadJpegHeader, ReadJpegPixels, WriteJpeg) hold only trivially destructible
// locals, so the jump skips no C++ destructor; the C++ callers own every buffer.
#include <csetjmp>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <vector>

// jpeglib.h needs size_t and FILE declared first; jerror.h needs jpeglib.h's version macros.
// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

#include "absl/strings/str_cat.h"
#include "common/media/image_codec_internal.h"

namespace diffmesh::media::internal {
namespace {

// Progressive JPEGs may hold arbitrarily many scans, each a full pass over the coefficients:
// more than this is a CPU bomb rather than an image (libjpeg-turbo's djpeg suggests limits).
constexpr int kMaxJpegScans = 500;

struct JpegErrorManager {
  jpeg_error_mgr pub;  // first member: libjpeg sees a jpeg_error_mgr*
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void JumpOnError(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings that mean the data is damaged (libjpeg would fill the rest with grey) are errors
// here; harmless ones (unknown JFIF revision, ...) and trace messages are ignored.
void EmitMessage(j_common_ptr cinfo, int level) {
  if (level >= 0) return;
  switch (cinfo->err->msg_code) {
    case JWRN_JPEG_EOF:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL:
    case JWRN_BOGUS_PROGRESSION:
    case JWRN_EXTRANEOUS_DATA:
      JumpOnError(cinfo);
    default:
      return;
  }
}

void LimitScans(j_common_ptr cinfo) {
  auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (dinfo->is_decompressor && dinfo->input_scan_number > kMaxJpegScans) {
    auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof(err->message), "more than %d progressive scans",
                  kMaxJpegScans);
    std::longjmp(err->jump, 1);
  }
}

void InstallErrorManager(JpegErrorManager* err) {
  jpeg_std_error(&err->pub);
  err->pub.error_exit = JumpOnError;
  err->pub.emit_message = EmitMessage;
  err->message[0] = '\0';
}

// Trivially destructible on purpose (see the file comment).
struct JpegReader {
  jpeg_decompress_struct cinfo;
  JpegErrorManager err;
  jpeg_progress_mgr progress;
  bool created;
};

bool ReadJpegHeader(JpegReader* r, const uint8_t* data, size_t size) {
  InstallErrorManager(&r->err);
  r->cinfo.err = &r->err.pub;
  if (setjmp(r->err.jump)) return false;
  jpeg_create_decompress(&r->cinfo);
  r->created = true;
  r->progress.progress_monitor = LimitScans;
  r->cinfo.progress = &r->progress;
  jpeg_mem_src(&r->cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&r->cinfo, TRUE);
  return true;
}

// `out` holds output_width * output_height * output_components bytes.
bool ReadJpegPixels(JpegReader* r, J_COLOR_SPACE color_space, uint8_t* out) {
  if (setjmp(r->err.jump)) return false;
  r->cinfo.out_color_space = color_space;
  jpeg_start_decompress(&r->cinfo);
  const size_t row_bytes = static_cast<size_t>(r->cinfo.output_width) * r->cinfo.output_components;
  while (r->cinfo.output_scanline < r->cinfo.output_height) {
    JSAMPROW row = out + r->cinfo.output_scanline * row_bytes;
    jpeg_read_scanlines(&r->cinfo, &row, 1);
  }
  jpeg_finish_decompress(&r->cinfo);
  return true;
}

struct JpegReaderCloser {
  JpegReader* r;
  ~JpegReaderCloser() {
    if (r->created) jpeg_destroy_decompress(&r->cinfo);
  }
};

absl::Status JpegError(absl::string_view problem, const JpegErrorManager& err) {
  return absl::InvalidArgumentError(absl::StrCat("JPEG: ", problem, ": ", err.message));
}

// Adobe (Photoshop) CMYK JPEGs store inverted ink values: R = C * K / 255 on the stored bytes.
// Plain CMYK stores ink amounts: R = (255 - C) * (255 - K) / 255.
void CmykToRgb(const uint8_t* cmyk, size_t pixels, bool inverted, uint8_t* rgb) {
  for (size_t i = 0; i < pixels; ++i) {
    uint32_t k = cmyk[4 * i + 3];
    if (!inverted) k = 255 - k;
    for (int c = 0; c < 3; ++c) {
      const uint32_t ink = inverted ? cmyk[4 * i + c] : 255 - cmyk[4 * i + c];
      rgb[3 * i + c] = static_cast<uint8_t>((ink * k + 127) / 255);
    }
  }
}

// Trivially destructible on purpose (see the file comment).
struct JpegWriter {
  jpeg_compress_struct cinfo;
  JpegErrorManager err;
  unsigned char* out;
  unsigned long out_size;
};

bool WriteJpeg(JpegWriter* w, const uint8_t* rgb, int width, int height, int quality) {
  InstallErrorManager(&w->err);
  w->cinfo.err = &w->err.pub;
  if (setjmp(w->err.jump)) return false;
  jpeg_create_compress(&w->cinfo);
  jpeg_mem_dest(&w->cinfo, &w->out, &w->out_size);
  w->cinfo.image_width = static_cast<JDIMENSION>(width);
  w->cinfo.image_height = static_cast<JDIMENSION>(height);
  w->cinfo.input_components = 3;
  w->cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&w->cinfo);
  jpeg_set_quality(&w->cinfo, quality, TRUE);
  w->cinfo.optimize_coding = TRUE;
  if (quality >= 90) {  // high quality: keep full-resolution chroma (4:4:4)
    w->cinfo.comp_info[0].h_samp_factor = 1;
    w->cinfo.comp_info[0].v_samp_factor = 1;
  }
  jpeg_start_compress(&w->cinfo, TRUE);
  const size_t row_bytes = static_cast<size_t>(width) * 3;
  while (w->cinfo.next_scanline < w->cinfo.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(rgb + w->cinfo.next_scanline * row_bytes);
    jpeg_write_scanlines(&w->cinfo, &row, 1);
  }
  jpeg_finish_compress(&w->cinfo);
  return true;
}

}  // namespace

absl::StatusOr<Rgb8Image> DecodeJpegImage(absl::string_view bytes, const DecodeLimits& limits) {
  JpegReader reader{};
  JpegReaderCloser closer{&reader};
  if (!ReadJpegHeader(&reader, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())) {
    return JpegError("bad header", reader.err);
  }
  const jpeg_decompress_struct& cinfo = reader.cinfo;
  absl::Status dims = CheckDimensions("JPEG", cinfo.image_width, cinfo.image_height, limits);
  if (!dims.ok()) return dims;

  Rgb8Image image;
  image.width = static_cast<int>(cinfo.image_width);
  image.height = static_cast<int>(cinfo.image_height);
  const size_t pixels = static_cast<size_t>(image.width) * image.height;
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  if (!cmyk) {
    image.pixels.resize(pixels * 3);
    if (!ReadJpegPixels(&reader, JCS_RGB, image.pixels.data())) {
      return JpegError("corrupt or truncated image data", reader.err);
    }
    return image;
  }
  std::vector<uint8_t> ink(pixels * 4);
  if (!ReadJpegPixels(&reader, JCS_CMYK, ink.data())) {
    return JpegError("corrupt or truncated image data", reader.err);
  }
  image.pixels.resize(pixels * 3);
  CmykToRgb(ink.data(), pixels, cinfo.saw_Adobe_marker, image.pixels.data());
  return image;
}

absl::StatusOr<std::string> EncodeJpegImage(const uint8_t* rgb, int width, int height,
                                            int quality) {
  JpegWriter writer{};
  const bool ok = WriteJpeg(&writer, rgb, width, height, quality);
  jpeg_destroy_compress(&writer.cinfo);
  std::string encoded;
  if (ok) encoded.assign(reinterpret_cast<const char*>(writer.out), writer.out_size);
  std::free(writer.out);
  if (!ok) return absl::InternalError(absl::StrCat("JPEG: encoding failed: ", writer.err.message));
  return encoded;
}

}  // namespace diffmesh::media::internal
