// Mp4Writer in a build without FFmpeg (-DDIFFMESH_WITH_FFMPEG=OFF): every MP4 request fails
// with FAILED_PRECONDITION naming the build option; the frame-rate helper still works.
#include <cmath>

#include "common/media/mp4_writer.h"

namespace diffmesh::media {
namespace {

constexpr char kNoFfmpeg[] =
    "MP4: this build has no FFmpeg (built with -DDIFFMESH_WITH_FFMPEG=OFF); ask for RAW frames "
    "or an image format instead";

}  // namespace

// The best rational with a denominator up to 1001000, by continued fractions (what FFmpeg's
// av_d2q gives for frame rates), the NTSC family first.
FrameRate FrameRateFromDouble(double fps) {
  for (int base : {24, 30, 48, 60, 120}) {
    if (std::abs(fps - base * 1000.0 / 1001.0) < 5e-3) return {base * 1000, 1001};
  }
  if (!(fps > 0) || !std::isfinite(fps)) return {};
  long long p0 = 0, q0 = 1, p1 = 1, q1 = 0;
  double x = fps;
  for (int i = 0; i < 32; ++i) {
    const long long a = static_cast<long long>(std::floor(x));
    const long long p2 = a * p1 + p0, q2 = a * q1 + q0;
    if (q2 > 1001000 || p2 > (1LL << 31) - 1) break;
    p0 = p1, q0 = q1, p1 = p2, q1 = q2;
    if (x - a < 1e-12) break;
    x = 1.0 / (x - a);
  }
  return {static_cast<int>(p1), static_cast<int>(q1)};
}

struct Mp4Writer::Impl {};

Mp4Writer::Mp4Writer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Mp4Writer::~Mp4Writer() = default;

absl::StatusOr<std::unique_ptr<Mp4Writer>> Mp4Writer::Create(const Mp4Options&) {
  return absl::FailedPreconditionError(kNoFfmpeg);
}
absl::Status Mp4Writer::AddFrame(const uint8_t*) { return absl::FailedPreconditionError(kNoFfmpeg); }
absl::Status Mp4Writer::AddAudio(const float*, int64_t) {
  return absl::FailedPreconditionError(kNoFfmpeg);
}
absl::StatusOr<std::string> Mp4Writer::Finish() { return absl::FailedPreconditionError(kNoFfmpeg); }

absl::StatusOr<std::string> EncodeMp4(const uint8_t*, int, const Mp4Options&, const float*,
                                      int64_t) {
  return absl::FailedPreconditionError(kNoFfmpeg);
}

}  // namespace diffmesh::media
