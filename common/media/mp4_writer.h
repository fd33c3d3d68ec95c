// MP4 (H.264 video + optional AAC audio) written to memory with FFmpeg's libraries.
// LibTorch-free; FFmpeg headers stay in mp4_writer.cc (pImpl).
//
// Output contract:
//  - Video: H.264 (Mp4Options::video_encoder, libx264 by default; when that is missing or fails
//    to open, the first other H.264 encoder FFmpeg has that opens), yuv420p, BT.709 limited
//    range (tagged), constant frame rate; frame i has pts i / fps.
//  - yuv420p needs even sides. Odd widths/heights follow Mp4Options::odd_size: by default the
//    last column/row is repeated to pad to even (the video is 1 pixel wider/taller).
//  - Audio: AAC-LC stereo, FFmpeg's native "aac" encoder (fltp). Mono input is copied to both
//    channels; input at a rate AAC lacks is resampled (libswresample).
//  - "Fast start": the moov box precedes mdat, so the file plays while it downloads.
//  - The encoders' INFO messages (x264's per-file statistics) are logged at VERBOSE.
//  - Deterministic: with threads = 1 (the default) identical input gives identical bytes on a
//    given FFmpeg/x264 build (bitexact muxer and encoders, no creation time; x264 runs without
//    its AVX-512 kernels, whose output depended on what the heap held before).
#ifndef DIFFMESH_COMMON_MEDIA_MP4_WRITER_H_
#define DIFFMESH_COMMON_MEDIA_MP4_WRITER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace diffmesh::media {

// Frames per second as num/den (30000/1001 for NTSC 29.97).
struct FrameRate {
  int num = 24;  // > 0
  int den = 1;   // > 0
};
// The nearest rational with a denominator up to 1001000 (29.97 -> 30000/1001, 24 -> 24/1).
FrameRate FrameRateFromDouble(double fps);

enum class OddSizePolicy {
  kPad,     // repeat the last column/row: output sides are rounded up to even
  kCrop,    // drop the last column/row: output sides are rounded down to even
  kReject,  // INVALID_ARGUMENT from Create
};

struct Mp4Options {
  int width = 0;                                 // input frame width in pixels (> 0)
  int height = 0;                                // input frame height in pixels (> 0)
  FrameRate fps;                                 // constant frame rate
  OddSizePolicy odd_size = OddSizePolicy::kPad;  // what to do with odd sides
  int crf = 19;                                  // x264 constant rate factor (0-51, lower = better)
  std::string preset = "veryfast";               // x264 speed/size preset
  std::string video_encoder = "libx264";         // tried first; then FFmpeg's default H.264
  int64_t fallback_bit_rate = 8'000'000;         // bit/s, for an encoder without crf
  int threads = 1;                               // encoder threads; 1 = deterministic, 0 = auto
  int audio_sample_rate = 0;                     // input audio rate in Hz; 0 = no audio track
  int audio_channels = 2;                        // input audio channels: 1 (mono) or 2
  int64_t audio_bit_rate = 192'000;              // AAC bit/s
};

// Streams frames and audio into an in-memory MP4. Not thread-safe; one writer per file.
class Mp4Writer {
 public:
  // INVALID_ARGUMENT for bad options; FAILED_PRECONDITION when no H.264 or AAC encoder opens.
  static absl::StatusOr<std::unique_ptr<Mp4Writer>> Create(const Mp4Options& options);
  ~Mp4Writer();
  Mp4Writer(const Mp4Writer&) = delete;
  Mp4Writer& operator=(const Mp4Writer&) = delete;

  // One frame, uint8 RGB [height, width, 3] (options' size), row-major.
  absl::Status AddFrame(const uint8_t* rgb);
  // `samples` samples per channel, float [channels, samples] planar, values in [-1, 1]
  // (clipped; NaN is written as silence). Audio may be added in any number of pieces, before, between or after frames.
  absl::Status AddAudio(const float* planar, int64_t samples);
  // Flushes the encoders and returns the whole file. The writer is spent afterwards.
  absl::StatusOr<std::string> Finish();

 private:
  struct Impl;
  explicit Mp4Writer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Whole-clip convenience: `frames` uint8 [num_frames, height, width, 3]; `audio` float
// [audio_channels, audio_samples] planar, given exactly when options.audio_sample_rate > 0.
absl::StatusOr<std::string> EncodeMp4(const uint8_t* frames, int num_frames,
                                      const Mp4Options& options, const float* audio = nullptr,
                                      int64_t audio_samples = 0);

}  // namespace diffmesh::media

#endif  // DIFFMESH_COMMON_MEDIA_MP4_WRITER_H_
