#include "common/media/image_codec.h"

#include <spng.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

// After <cstdio>: jpeglib.h needs FILE and size_t.
// clang-format off
#include <jpeglib.h>
// clang-format on

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace diffmesh::media {
namespace {

using ::testing::HasSubstr;

std::mt19937 FreshRng() { return std::mt19937(std::random_device{}()); }

// A photo-like image: random smooth waves plus a little noise, so lossy codecs have real work.
Rgb8Image RandomImage(int width, int height, std::mt19937& rng) {
  std::uniform_real_distribution<float> freq(0.02f, 0.15f), phase(0.0f, 6.28f);
  std::uniform_int_distribution<int> noise(-3, 3);
  float fx[3], fy[3], ph[3];
  for (int c = 0; c < 3; ++c) fx[c] = freq(rng), fy[c] = freq(rng), ph[c] = phase(rng);
  Rgb8Image image{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        const float v = 128 + 100 * std::sin(fx[c] * x + fy[c] * y + ph[c]) + noise(rng);
        image.pixels[(static_cast<size_t>(y) * width + x) * 3 + c] =
            static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
      }
    }
  }
  return image;
}

double Psnr(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  double se = 0;
  for (size_t i = 0; i < a.size(); ++i) se += (a[i] - b[i]) * (a[i] - b[i]);
  if (se == 0) return INFINITY;
  return 10 * std::log10(255.0 * 255.0 * a.size() / se);
}

Rgb8Image RoundTrip(const Rgb8Image& image, MediaFormat format, int quality) {
  absl::StatusOr<std::string> encoded = EncodeImage(image, format, quality);
  EXPECT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(SniffImageFormat(*encoded).value_or(MediaFormat::kMp4), format);
  absl::StatusOr<Rgb8Image> decoded = DecodeImage(*encoded);
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->width, image.width);
  EXPECT_EQ(decoded->height, image.height);
  return *decoded;
}

struct RoundTripCase {
  MediaFormat format;
  int quality;
  double min_psnr;  // INFINITY: lossless
};

class ImageRoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(ImageRoundTripTest, EncodeDecodeWithinPsnr) {
  std::mt19937 rng = FreshRng();
  for (auto [w, h] : {std::pair{96, 64}, std::pair{37, 23}, std::pair{1, 1}}) {
    const Rgb8Image image = RandomImage(w, h, rng);
    const Rgb8Image decoded = RoundTrip(image, GetParam().format, GetParam().quality);
    const double psnr = Psnr(decoded.pixels, image.pixels);
    std::printf("%s q%d %dx%d: PSNR %.2f dB\n", std::string(FormatName(GetParam().format)).c_str(),
                GetParam().quality, w, h, psnr);
    EXPECT_GE(psnr, GetParam().min_psnr) << w << "x" << h;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, ImageRoundTripTest,
                         ::testing::Values(RoundTripCase{MediaFormat::kPng, kDefaultQuality,
                                                         INFINITY},
                                           RoundTripCase{MediaFormat::kJpeg, kDefaultQuality, 38},
                                           RoundTripCase{MediaFormat::kJpeg, 50, 31},
                                           RoundTripCase{MediaFormat::kWebp, kDefaultQuality, 34},
                                           RoundTripCase{MediaFormat::kWebp, 100, INFINITY}));

TEST(ImageCodecTest, PngAndJpegEncodingIsDeterministic) {
  std::mt19937 rng = FreshRng();
  const Rgb8Image image = RandomImage(50, 40, rng);
  for (MediaFormat f : {MediaFormat::kPng, MediaFormat::kJpeg, MediaFormat::kWebp}) {
    EXPECT_EQ(EncodeImage(image, f).value(), EncodeImage(image, f).value()) << FormatName(f);
  }
}

TEST(ImageCodecTest, RejectsBadEncodeArguments) {
  std::mt19937 rng = FreshRng();
  Rgb8Image image = RandomImage(8, 8, rng);
  EXPECT_EQ(EncodeImage(image, MediaFormat::kJpeg, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeImage(image, MediaFormat::kJpeg, 101).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeImage(image, MediaFormat::kWebp, 101).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeImage(image, MediaFormat::kMp4).status().code(),
            absl::StatusCode::kInvalidArgument);
  image.pixels.pop_back();
  EXPECT_EQ(EncodeImage(image, MediaFormat::kPng).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeImage(Rgb8Image{}, MediaFormat::kPng).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- PNG layouts other than RGB8, written with libspng directly ---

std::string SpngEncode(int width, int height, int color_type, int bit_depth,
                       const std::vector<uint8_t>& data, const spng_plte* plte = nullptr,
                       const spng_trns* trns = nullptr) {
  spng_ctx* ctx = spng_ctx_new(SPNG_CTX_ENCODER);
  spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
  spng_ihdr ihdr = {};
  ihdr.width = width;
  ihdr.height = height;
  ihdr.bit_depth = static_cast<uint8_t>(bit_depth);
  ihdr.color_type = static_cast<uint8_t>(color_type);
  EXPECT_EQ(spng_set_ihdr(ctx, &ihdr), 0);
  if (plte != nullptr) {
    EXPECT_EQ(spng_set_plte(ctx, const_cast<spng_plte*>(plte)), 0);
  }
  if (trns != nullptr) {
    EXPECT_EQ(spng_set_trns(ctx, const_cast<spng_trns*>(trns)), 0);
  }
  EXPECT_EQ(spng_encode_image(ctx, data.data(), data.size(), SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE),
            0);
  size_t len = 0;
  int rc = 0;
  void* buf = spng_get_png_buffer(ctx, &len, &rc);
  std::string png(static_cast<const char*>(buf), len);
  free(buf);
  spng_ctx_free(ctx);
  return png;
}

std::vector<uint8_t> RandomBytes(size_t n, std::mt19937& rng) {
  std::vector<uint8_t> bytes(n);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

uint8_t OnBlack(uint8_t c, uint8_t a) { return static_cast<uint8_t>((c * a + 127) / 255); }

TEST(PngDecodeTest, RgbaIsCompositedOnBlack) {
  std::mt19937 rng = FreshRng();
  const int w = 19, h = 7;
  const std::vector<uint8_t> rgba = RandomBytes(w * h * 4, rng);
  Rgb8Image out = DecodeImage(SpngEncode(w, h, SPNG_COLOR_TYPE_TRUECOLOR_ALPHA, 8, rgba)).value();
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c)
      ASSERT_EQ(out.pixels[i * 3 + c], OnBlack(rgba[i * 4 + c], rgba[i * 4 + 3]));
  }
}

TEST(PngDecodeTest, GrayscaleBecomesEqualChannels) {
  std::mt19937 rng = FreshRng();
  const int w = 13, h = 11;
  const std::vector<uint8_t> gray = RandomBytes(w * h, rng);
  Rgb8Image out = DecodeImage(SpngEncode(w, h, SPNG_COLOR_TYPE_GRAYSCALE, 8, gray)).value();
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) ASSERT_EQ(out.pixels[i * 3 + c], gray[i]);
  }
}

TEST(PngDecodeTest, PaletteWithTransparencyIsExpanded) {
  std::mt19937 rng = FreshRng();
  const int w = 9, h = 5;
  spng_plte plte = {};
  plte.n_entries = 16;
  spng_trns trns = {};
  trns.n_type3_entries = 16;
  for (int i = 0; i < 16; ++i) {
    plte.entries[i] = {static_cast<uint8_t>(rng()), static_cast<uint8_t>(rng()),
                       static_cast<uint8_t>(rng()), 255};
    trns.type3_alpha[i] = static_cast<uint8_t>(rng());
  }
  std::vector<uint8_t> index = RandomBytes(w * h, rng);
  for (uint8_t& i : index) i %= 16;
  Rgb8Image out =
      DecodeImage(SpngEncode(w, h, SPNG_COLOR_TYPE_INDEXED, 8, index, &plte, &trns)).value();
  for (int i = 0; i < w * h; ++i) {
    const spng_plte_entry& e = plte.entries[index[i]];
    const uint8_t a = trns.type3_alpha[index[i]];
    ASSERT_EQ(out.pixels[i * 3 + 0], OnBlack(e.red, a));
    ASSERT_EQ(out.pixels[i * 3 + 1], OnBlack(e.green, a));
    ASSERT_EQ(out.pixels[i * 3 + 2], OnBlack(e.blue, a));
  }
}

TEST(PngDecodeTest, SixteenBitKeepsTheHighByte) {
  std::mt19937 rng = FreshRng();
  const int w = 6, h = 4;
  const std::vector<uint8_t> big_endian = RandomBytes(w * h * 6, rng);  // PNG stores MSB first
  // spng takes 16-bit samples in host order.
  std::vector<uint8_t> host(big_endian.size());
  for (size_t i = 0; i < host.size(); i += 2) {
    const uint16_t v = static_cast<uint16_t>(big_endian[i] << 8 | big_endian[i + 1]);
    std::memcpy(&host[i], &v, 2);
  }
  Rgb8Image out = DecodeImage(SpngEncode(w, h, SPNG_COLOR_TYPE_TRUECOLOR, 16, host)).value();
  for (int i = 0; i < w * h * 3; ++i) ASSERT_EQ(out.pixels[i], big_endian[2 * i]) << i;
}

// --- JPEG colour spaces other than YCbCr, written with libjpeg directly ---

std::string LibjpegEncode(int width, int height, J_COLOR_SPACE space, int components,
                          const std::vector<uint8_t>& data) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* out = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &out, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = components;
  cinfo.in_color_space = space;
  jpeg_set_defaults(&cinfo);
  jpeg_set_colorspace(&cinfo, space);  // CMYK also writes the Adobe marker
  jpeg_set_quality(&cinfo, 100, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  for (int y = 0; y < height; ++y) {
    JSAMPROW row = const_cast<uint8_t*>(data.data()) + y * width * components;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::string jpeg(reinterpret_cast<char*>(out), size);
  jpeg_destroy_compress(&cinfo);
  free(out);
  return jpeg;
}

TEST(JpegDecodeTest, GrayscaleBecomesEqualChannels) {
  std::mt19937 rng = FreshRng();
  const int w = 40, h = 24;
  const Rgb8Image source = RandomImage(w, h, rng);
  std::vector<uint8_t> gray(w * h);
  for (int i = 0; i < w * h; ++i) gray[i] = source.pixels[i * 3];
  Rgb8Image out = DecodeImage(LibjpegEncode(w, h, JCS_GRAYSCALE, 1, gray)).value();
  std::vector<uint8_t> red(w * h);
  for (int i = 0; i < w * h; ++i) {
    ASSERT_EQ(out.pixels[i * 3], out.pixels[i * 3 + 1]);
    ASSERT_EQ(out.pixels[i * 3], out.pixels[i * 3 + 2]);
    red[i] = out.pixels[i * 3];
  }
  EXPECT_GE(Psnr(red, gray), 40);
}

TEST(JpegDecodeTest, AdobeCmykIsConvertedToRgb) {
  std::mt19937 rng = FreshRng();
  const int w = 32, h = 16;
  const Rgb8Image source = RandomImage(w, h, rng);
  // Photoshop-style inverted CMYK: stored = 255 - ink, with K = 255 - max(R, G, B).
  std::vector<uint8_t> stored(w * h * 4), expected(w * h * 3);
  for (int i = 0; i < w * h; ++i) {
    const uint8_t* rgb = &source.pixels[i * 3];
    const int k = 255 - std::max({rgb[0], rgb[1], rgb[2]});
    for (int c = 0; c < 3; ++c) {
      const int ink = k == 255 ? 0 : (255 - rgb[c] - k) * 255 / (255 - k);
      stored[i * 4 + c] = static_cast<uint8_t>(255 - ink);
      expected[i * 3 + c] = static_cast<uint8_t>(((255 - ink) * (255 - k) + 127) / 255);
    }
    stored[i * 4 + 3] = static_cast<uint8_t>(255 - k);
  }
  Rgb8Image out = DecodeImage(LibjpegEncode(w, h, JCS_CMYK, 4, stored)).value();
  EXPECT_GE(Psnr(out.pixels, expected), 35);
  EXPECT_GE(Psnr(out.pixels, source.pixels), 35);
}

// --- rejection ---

void ExpectInvalid(const absl::StatusOr<Rgb8Image>& result, const std::string& needle) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(needle));
}

class CorruptInputTest : public ::testing::TestWithParam<MediaFormat> {
 protected:
  std::string Encoded() {
    std::mt19937 rng = FreshRng();
    return EncodeImage(RandomImage(64, 48, rng), GetParam()).value();
  }
  std::string Name() {
    switch (GetParam()) {
      case MediaFormat::kPng:
        return "PNG";
      case MediaFormat::kJpeg:
        return "JPEG";
      default:
        return "WebP";
    }
  }
};

TEST_P(CorruptInputTest, TruncatedDataIsRejected) {
  const std::string encoded = Encoded();
  for (size_t keep : {encoded.size() / 2, encoded.size() - 20, size_t{40}, size_t{14}}) {
    ExpectInvalid(DecodeImage(encoded.substr(0, keep)), Name());
  }
}

TEST_P(CorruptInputTest, GarbageAfterTheMagicIsRejected) {
  std::mt19937 rng = FreshRng();
  std::string encoded = Encoded();
  const size_t magic = GetParam() == MediaFormat::kWebp ? 16 : 4;
  for (size_t i = magic; i < encoded.size(); ++i) encoded[i] = static_cast<char>(rng());
  ExpectInvalid(DecodeImage(encoded), Name());
}

TEST_P(CorruptInputTest, OversizedInputIsRejectedBeforeParsing) {
  const std::string encoded = Encoded();
  DecodeLimits limits;
  limits.max_encoded_bytes = encoded.size() - 1;
  ExpectInvalid(DecodeImage(encoded, limits), "limit");
}

TEST_P(CorruptInputTest, DimensionLimitsApply) {
  const std::string encoded = Encoded();  // 64x48
  DecodeLimits narrow;
  narrow.max_width = 63;
  ExpectInvalid(DecodeImage(encoded, narrow), Name() + ": image is 64x48");
  DecodeLimits short_limit;
  short_limit.max_height = 47;
  ExpectInvalid(DecodeImage(encoded, short_limit), "64x48");
  DecodeLimits few;
  few.max_pixels = 64 * 48 - 1;
  ExpectInvalid(DecodeImage(encoded, few), "3072 pixels");
  DecodeLimits exact;
  exact.max_width = 64;
  exact.max_height = 48;
  exact.max_pixels = 64 * 48;
  EXPECT_TRUE(DecodeImage(encoded, exact).ok());
}

// A few random bytes changed anywhere past the signature: decoding may succeed (the damage
// can land in pixel data) or fail with INVALID_ARGUMENT, but never crash or hang.
TEST_P(CorruptInputTest, RandomByteDamageNeverCrashes) {
  std::mt19937 rng = FreshRng();
  const std::string encoded = Encoded();
  int rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string damaged = encoded;
    for (int k = 0; k < 1 + trial % 4; ++k) {
      damaged[8 + rng() % (damaged.size() - 8)] = static_cast<char>(rng());
    }
    absl::StatusOr<Rgb8Image> result = DecodeImage(damaged);
    if (result.ok()) {
      EXPECT_EQ(result->pixels.size(), static_cast<size_t>(result->width) * result->height * 3);
    } else {
      ASSERT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
      ++rejected;
    }
  }
  std::printf("%s: %d of 300 damaged files rejected\n", Name().c_str(), rejected);
}

INSTANTIATE_TEST_SUITE_P(Formats, CorruptInputTest,
                         ::testing::Values(MediaFormat::kPng, MediaFormat::kJpeg,
                                           MediaFormat::kWebp));

uint32_t Crc32(const char* data, size_t n) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= static_cast<uint8_t>(data[i]);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
  }
  return ~crc;
}

void PutBigEndian32(std::string& s, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) s[at + i] = static_cast<char>(v >> (24 - 8 * i));
}

// Headers that claim a huge image over a few bytes of data. Allocating their pixels would take
// gigabytes; each must be refused from the header alone, with the size in the message.
TEST(DecompressionBombTest, PngHeaderIsRejectedBeforeAllocation) {
  std::mt19937 rng = FreshRng();
  std::string png = EncodeImage(RandomImage(8, 8, rng), MediaFormat::kPng).value();
  PutBigEndian32(png, 16, 100000);  // IHDR width
  PutBigEndian32(png, 20, 90000);   // IHDR height
  PutBigEndian32(png, 29, Crc32(&png[12], 17));
  ExpectInvalid(DecodeImage(png), "PNG: image is 100000x90000");
}

TEST(DecompressionBombTest, JpegHeaderIsRejectedBeforeAllocation) {
  std::mt19937 rng = FreshRng();
  std::string jpeg = EncodeImage(RandomImage(8, 8, rng), MediaFormat::kJpeg).value();
  const size_t sof = jpeg.find("\xff\xc0");  // baseline SOF0: length, precision, height, width
  ASSERT_NE(sof, std::string::npos);
  jpeg[sof + 5] = jpeg[sof + 7] = '\xea';  // 60000 = 0xea60, within JPEG's 65500 limit
  jpeg[sof + 6] = jpeg[sof + 8] = '\x60';
  ExpectInvalid(DecodeImage(jpeg), "JPEG: image is 60000x60000");
}

TEST(DecompressionBombTest, WebpHeaderIsRejectedBeforeAllocation) {
  std::mt19937 rng = FreshRng();
  std::string webp = EncodeImage(RandomImage(8, 8, rng), MediaFormat::kWebp, 100).value();
  ASSERT_EQ(webp.substr(12, 4), "VP8L");
  ASSERT_EQ(webp[20], '\x2f');
  // VP8L: 14 bits width - 1, 14 bits height - 1, little-endian, after the 0x2f signature.
  const uint32_t bits = 16383u | (16383u << 14);
  for (int i = 0; i < 4; ++i) webp[21 + i] = static_cast<char>(bits >> (8 * i));
  ExpectInvalid(DecodeImage(webp), "WebP: image is 16384x16384");
}

TEST(ImageCodecTest, UnknownFormatListsTheAcceptedOnes) {
  ExpectInvalid(DecodeImage("GIF89a\x01\x00\x01\x00"), "PNG, JPEG, WebP");
  ExpectInvalid(DecodeImage(""), "PNG, JPEG, WebP");
}

TEST(MediaFormatTest, MimeTypesRoundTrip) {
  for (MediaFormat f :
       {MediaFormat::kPng, MediaFormat::kJpeg, MediaFormat::kWebp, MediaFormat::kMp4}) {
    EXPECT_EQ(MediaFormatFromMimeType(MimeType(f)).value(), f);
    EXPECT_EQ(MediaFormatFromName(FormatName(f)).value(), f);
  }
  EXPECT_EQ(MediaFormatFromMimeType("Image/JPG; q=0.9").value(), MediaFormat::kJpeg);
  EXPECT_EQ(MediaFormatFromName("JPG").value(), MediaFormat::kJpeg);
  EXPECT_EQ(MimeType(MediaFormat::kWebp), "image/webp");
  EXPECT_EQ(MediaFormatFromMimeType("image/gif").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(MediaFormatFromMimeType("image/gif").status().message()),
              HasSubstr("image/png, image/jpeg, image/webp, video/mp4"));
}

}  // namespace
}  // namespace diffmesh::media
