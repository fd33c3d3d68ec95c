#include "common/media/media_format.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace diffmesh::media {
namespace {

constexpr absl::string_view kAcceptedImages = "PNG, JPEG, WebP";

}  // namespace

absl::string_view MimeType(MediaFormat format) {
  switch (format) {
    case MediaFormat::kPng:
      return "image/png";
    case MediaFormat::kJpeg:
      return "image/jpeg";
    case MediaFormat::kWebp:
      return "image/webp";
    case MediaFormat::kMp4:
      return "video/mp4";
  }
  return "application/octet-stream";
}

absl::string_view FormatName(MediaFormat format) {
  switch (format) {
    case MediaFormat::kPng:
      return "png";
    case MediaFormat::kJpeg:
      return "jpeg";
    case MediaFormat::kWebp:
      return "webp";
    case MediaFormat::kMp4:
      return "mp4";
  }
  return "unknown";
}

absl::StatusOr<MediaFormat> MediaFormatFromMimeType(absl::string_view mime_type) {
  const size_t semicolon = mime_type.find(';');
  std::string type =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(mime_type.substr(0, semicolon)));
  if (type == "image/png") return MediaFormat::kPng;
  if (type == "image/jpeg" || type == "image/jpg") return MediaFormat::kJpeg;
  if (type == "image/webp") return MediaFormat::kWebp;
  if (type == "video/mp4") return MediaFormat::kMp4;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported media type '", mime_type,
                   "'; accepted: image/png, image/jpeg, image/webp, video/mp4"));
}

absl::StatusOr<MediaFormat> MediaFormatFromName(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  if (lower == "png") return MediaFormat::kPng;
  if (lower == "jpeg" || lower == "jpg") return MediaFormat::kJpeg;
  if (lower == "webp") return MediaFormat::kWebp;
  if (lower == "mp4") return MediaFormat::kMp4;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported media format '", name, "'; accepted: png, jpeg, webp, mp4"));
}

absl::StatusOr<MediaFormat> SniffImageFormat(absl::string_view bytes) {
  if (absl::StartsWith(bytes, "\x89PNG\r\n\x1a\n")) return MediaFormat::kPng;
  if (absl::StartsWith(bytes, "\xff\xd8\xff")) return MediaFormat::kJpeg;
  if (bytes.size() >= 12 && absl::StartsWith(bytes, "RIFF") && bytes.substr(8, 4) == "WEBP") {
    return MediaFormat::kWebp;
  }
  return absl::InvalidArgumentError(absl::StrCat("unrecognised image data (", bytes.size(),
                                                 " bytes): accepted formats are ",
                                                 kAcceptedImages));
}

}  // namespace diffmesh::media
