// Test-only: writes an MP4 of random moving content (and optional tones) with Mp4Writer, plus
// the raw input it was made from, for mp4_pyav_test.py to decode and compare:
//   <out>/video.mp4
//   <out>/frames.rgb   uint8 [frames, height, width, 3]
//   <out>/audio.f32    float32 [channels, samples] planar (only with --sample_rate)
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/media/mp4_writer.h"

ABSL_FLAG(std::string, out, "", "output folder (must exist)");
ABSL_FLAG(int, frames, 24, "number of frames");
ABSL_FLAG(int, width, 64, "frame width");
ABSL_FLAG(int, height, 48, "frame height");
ABSL_FLAG(int, fps_num, 24, "frame rate numerator");
ABSL_FLAG(int, fps_den, 1, "frame rate denominator");
ABSL_FLAG(std::string, odd_size, "pad", "pad, crop or reject");
ABSL_FLAG(int, sample_rate, 0, "audio rate in Hz; 0 = no audio");
ABSL_FLAG(int, channels, 2, "audio channels (1 or 2)");
ABSL_FLAG(double, audio_seconds, -1, "audio length; < 0 = the video's length");
ABSL_FLAG(int, threads, 1, "encoder threads");

namespace {

// Smooth colour waves drifting a few pixels per frame, with mild noise.
std::vector<uint8_t> MakeFrames(int frames, int width, int height, std::mt19937& rng) {
  std::uniform_real_distribution<float> freq(0.03f, 0.12f), phase(0, 6.28f);
  std::uniform_int_distribution<int> noise(-2, 2);
  float fx[3], fy[3], ph[3];
  for (int c = 0; c < 3; ++c) fx[c] = freq(rng), fy[c] = freq(rng), ph[c] = phase(rng);
  std::vector<uint8_t> out(static_cast<size_t>(frames) * height * width * 3);
  size_t i = 0;
  for (int f = 0; f < frames; ++f) {
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        for (int c = 0; c < 3; ++c) {
          const float v = 128 + 90 * std::sin(fx[c] * (x + 2 * f) + fy[c] * y + ph[c]);
          out[i++] = static_cast<uint8_t>(std::clamp(v + noise(rng), 0.0f, 255.0f));
        }
      }
    }
  }
  return out;
}

// A different tone per channel (so a channel swap shows), amplitude 0.5.
std::vector<float> MakeAudio(int channels, int64_t samples, int rate, std::mt19937& rng) {
  std::uniform_real_distribution<float> freq(200.0f, 1200.0f);
  std::vector<float> out(channels * samples);
  for (int c = 0; c < channels; ++c) {
    const float hz = freq(rng);
    for (int64_t i = 0; i < samples; ++i) {
      out[c * samples + i] = 0.5f * std::sin(6.2831853f * hz * i / rate);
    }
  }
  return out;
}

bool WriteFile(const std::string& path, const void* data, size_t size) {
  std::ofstream file(path, std::ios::binary);
  file.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  return static_cast<bool>(file);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using diffmesh::media::OddSizePolicy;
  diffmesh::media::Mp4Options options;
  options.width = absl::GetFlag(FLAGS_width);
  options.height = absl::GetFlag(FLAGS_height);
  options.fps = {absl::GetFlag(FLAGS_fps_num), absl::GetFlag(FLAGS_fps_den)};
  const std::string odd = absl::GetFlag(FLAGS_odd_size);
  options.odd_size = odd == "crop"     ? OddSizePolicy::kCrop
                     : odd == "reject" ? OddSizePolicy::kReject
                                       : OddSizePolicy::kPad;
  options.audio_sample_rate = absl::GetFlag(FLAGS_sample_rate);
  options.audio_channels = absl::GetFlag(FLAGS_channels);
  options.threads = absl::GetFlag(FLAGS_threads);
  const int frames = absl::GetFlag(FLAGS_frames);
  const std::string out = absl::GetFlag(FLAGS_out);

  std::mt19937 rng(std::random_device{}());
  const std::vector<uint8_t> video = MakeFrames(frames, options.width, options.height, rng);
  double seconds = absl::GetFlag(FLAGS_audio_seconds);
  if (seconds < 0) seconds = frames * double(options.fps.den) / options.fps.num;
  const auto samples = static_cast<int64_t>(std::llround(seconds * options.audio_sample_rate));
  std::vector<float> audio;
  if (options.audio_sample_rate > 0) {
    audio = MakeAudio(options.audio_channels, samples, options.audio_sample_rate, rng);
  }
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> mp4 = diffmesh::media::EncodeMp4(
      video.data(), frames, options, audio.empty() ? nullptr : audio.data(), samples);
  if (!mp4.ok()) {
    std::fprintf(stderr, "%s\n", mp4.status().ToString().c_str());
    return 1;
  }
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf("encoded %d frames of %dx%d in %.3f s: %zu bytes\n", frames, options.width,
              options.height, took.count(), mp4->size());
  const bool ok =
      WriteFile(out + "/video.mp4", mp4->data(), mp4->size()) &&
      WriteFile(out + "/frames.rgb", video.data(), video.size()) &&
      (audio.empty() || WriteFile(out + "/audio.f32", audio.data(), audio.size() * sizeof(float)));
  if (!ok) std::fprintf(stderr, "cannot write to %s\n", out.c_str());
  return ok ? 0 : 1;
}
