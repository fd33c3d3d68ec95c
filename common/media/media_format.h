// Media formats the serving stack reads and writes, their MIME types, and content sniffing.
// LibTorch-free and codec-free: safe to include anywhere.
#ifndef DIFFMESH_COMMON_MEDIA_MEDIA_FORMAT_H_
#define DIFFMESH_COMMON_MEDIA_MEDIA_FORMAT_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace diffmesh::media {

enum class MediaFormat { kPng, kJpeg, kWebp, kMp4 };

// "image/png", "image/jpeg", "image/webp", "video/mp4".
absl::string_view MimeType(MediaFormat format);
// "png", "jpeg", "webp", "mp4" (also the usual file extension, without the dot).
absl::string_view FormatName(MediaFormat format);
// Accepts the four MIME types above, case-insensitively, ignoring parameters after ';', and the
// common alias "image/jpg". INVALID_ARGUMENT names the accepted ones otherwise.
absl::StatusOr<MediaFormat> MediaFormatFromMimeType(absl::string_view mime_type);
// Accepts FormatName()'s names and "jpg", case-insensitively.
absl::StatusOr<MediaFormat> MediaFormatFromName(absl::string_view name);
// The image format of `bytes` from its magic bytes (PNG signature, JPEG SOI marker,
// RIFF....WEBP). INVALID_ARGUMENT, listing the accepted formats, for anything else.
absl::StatusOr<MediaFormat> SniffImageFormat(absl::string_view bytes);

}  // namespace diffmesh::media

#endif  // DIFFMESH_COMMON_MEDIA_MEDIA_FORMAT_H_
