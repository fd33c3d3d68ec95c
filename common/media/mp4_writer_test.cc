#include "common/media/mp4_writer.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

// Decoded-content checks (frame count, sizes, rates, durations, pixels) are in
// testing/mp4_pyav_test.py, which reads the file back with PyAV; this test covers the API
// contract and the container layout.
namespace diffmesh::media {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<uint8_t> RandomFrames(int frames, int width, int height, std::mt19937& rng) {
  std::vector<uint8_t> out(static_cast<size_t>(frames) * width * height * 3);
  for (uint8_t& v : out) v = static_cast<uint8_t>(rng() % 64 + 96);
  return out;
}

std::vector<float> RandomAudio(int channels, int64_t samples, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-0.8f, 0.8f);
  std::vector<float> out(channels * samples);
  for (float& v : out) v = u(rng);
  return out;
}

uint32_t BigEndian32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 8 | static_cast<uint8_t>(s[at + i]);
  return v;
}

// The top-level ISO-BMFF boxes in file order; empty when a box size runs past the end.
std::vector<std::string> TopLevelBoxes(const std::string& mp4) {
  std::vector<std::string> boxes;
  size_t at = 0;
  while (at + 8 <= mp4.size()) {
    const uint32_t size = BigEndian32(mp4, at);
    if (size < 8 || at + size > mp4.size()) return {};
    boxes.push_back(mp4.substr(at + 4, 4));
    at += size;
  }
  return at == mp4.size() ? boxes : std::vector<std::string>{};
}

// Leaves freed heap blocks of many sizes filled with 0xFF, so what an encoder allocates next
// holds that instead of what the previous encode left behind.
void DirtyTheHeap() {
  std::vector<void*> blocks;
  for (int i = 0; i < 2000; ++i) {
    const size_t size = 16 + static_cast<size_t>(i) * 7919 % 20000;
    void* block = nullptr;
    ASSERT_EQ(posix_memalign(&block, 64, size), 0);
    std::memset(block, 0xFF, size);
    blocks.push_back(block);
  }
  for (void* block : blocks) std::free(block);
}

Mp4Options SmallOptions(int width, int height, int sample_rate) {
  Mp4Options options;
  options.width = width;
  options.height = height;
  options.fps = {25, 1};
  options.audio_sample_rate = sample_rate;
  return options;
}

TEST(Mp4WriterTest, MoovPrecedesMdat) {
  std::mt19937 rng(std::random_device{}());
  const Mp4Options options = SmallOptions(48, 32, 48000);
  const std::vector<uint8_t> frames = RandomFrames(10, 48, 32, rng);
  const std::vector<float> audio = RandomAudio(2, 48000 * 10 / 25, rng);
  absl::StatusOr<std::string> mp4 =
      EncodeMp4(frames.data(), 10, options, audio.data(), 48000 * 10 / 25);
  ASSERT_TRUE(mp4.ok()) << mp4.status();
  EXPECT_THAT(TopLevelBoxes(*mp4), ElementsAre("ftyp", "moov", "free", "mdat"));
}

TEST(Mp4WriterTest, IdenticalInputGivesIdenticalBytes) {
  std::mt19937 rng(std::random_device{}());
  Mp4Options options = SmallOptions(64, 48, 44100);
  options.audio_channels = 1;
  const std::vector<uint8_t> frames = RandomFrames(12, 64, 48, rng);
  const std::vector<float> audio = RandomAudio(1, 30000, rng);
  const std::string a = EncodeMp4(frames.data(), 12, options, audio.data(), 30000).value();
  const std::string b = EncodeMp4(frames.data(), 12, options, audio.data(), 30000).value();
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.find("Lavf"), std::string::npos) << "bitexact muxing writes no version string";
}

// A vocoder that overflowed (one step of random weights) hands over NaN and ±inf: the clip is
// still written, those samples as silence and full scale, as the same finite input would be.
TEST(Mp4WriterTest, NonFiniteSamplesAreSilenceOrFullScale) {
  std::mt19937 rng(7);
  const Mp4Options options = SmallOptions(64, 48, 44100);
  const std::vector<uint8_t> frames = RandomFrames(4, 64, 48, rng);
  std::vector<float> audio = RandomAudio(2, 8000, rng);
  std::vector<float> finite = audio;
  for (size_t i = 0; i < audio.size(); i += 7) {
    audio[i] = std::numeric_limits<float>::quiet_NaN();
    finite[i] = 0.0f;
  }
  audio[3] = std::numeric_limits<float>::infinity();
  finite[3] = 1.0f;
  audio[5] = -std::numeric_limits<float>::infinity();
  finite[5] = -1.0f;
  auto with_nan = EncodeMp4(frames.data(), 4, options, audio.data(), 8000);
  ASSERT_TRUE(with_nan.ok()) << with_nan.status();
  EXPECT_EQ(*with_nan, EncodeMp4(frames.data(), 4, options, finite.data(), 8000).value());
}

// An encoder that reads memory it never wrote gives other bytes once that memory is dirty
// (x264's AVX-512 macroblock-tree kernel did at this width, for about one clip in five).
TEST(Mp4WriterTest, IdenticalBytesWhateverTheHeapHeld) {
  std::mt19937 rng(std::random_device{}());
  Mp4Options options = SmallOptions(64, 48, 44100);
  options.audio_channels = 1;
  for (int clip = 0; clip < 24; ++clip) {
    const std::vector<uint8_t> frames = RandomFrames(12, 64, 48, rng);
    const std::vector<float> audio = RandomAudio(1, 30000, rng);
    const std::string a = EncodeMp4(frames.data(), 12, options, audio.data(), 30000).value();
    DirtyTheHeap();
    const std::string b = EncodeMp4(frames.data(), 12, options, audio.data(), 30000).value();
    ASSERT_EQ(a, b) << "clip " << clip;
  }
}

TEST(Mp4WriterTest, AudioInPiecesInterleavedWithFramesMatchesOneCall) {
  std::mt19937 rng(std::random_device{}());
  const Mp4Options options = SmallOptions(32, 32, 48000);
  const int frames = 8;
  const int64_t per_frame = 48000 / 25;
  const std::vector<uint8_t> video = RandomFrames(frames, 32, 32, rng);
  const std::vector<float> audio = RandomAudio(2, per_frame * frames, rng);
  const std::string whole =
      EncodeMp4(video.data(), frames, options, audio.data(), per_frame * frames).value();

  auto writer = Mp4Writer::Create(options).value();
  std::vector<float> piece(2 * per_frame);
  for (int f = 0; f < frames; ++f) {
    for (int c = 0; c < 2; ++c) {
      std::copy_n(&audio[c * per_frame * frames + f * per_frame], per_frame, &piece[c * per_frame]);
    }
    ASSERT_TRUE(writer->AddFrame(&video[f * 32 * 32 * 3]).ok());
    ASSERT_TRUE(writer->AddAudio(piece.data(), per_frame).ok());
  }
  const std::string pieces = writer->Finish().value();
  EXPECT_EQ(pieces, whole);
  EXPECT_THAT(TopLevelBoxes(pieces), ElementsAre("ftyp", "moov", "free", "mdat"));
}

TEST(Mp4WriterTest, OddSidesArePaddedOrCroppedOrRejected) {
  std::mt19937 rng(std::random_device{}());
  const std::vector<uint8_t> frames = RandomFrames(3, 33, 17, rng);
  Mp4Options options = SmallOptions(33, 17, 0);
  for (OddSizePolicy policy : {OddSizePolicy::kPad, OddSizePolicy::kCrop}) {
    options.odd_size = policy;
    absl::StatusOr<std::string> mp4 = EncodeMp4(frames.data(), 3, options);
    ASSERT_TRUE(mp4.ok()) << mp4.status();
    EXPECT_FALSE(TopLevelBoxes(*mp4).empty());
  }
  options.odd_size = OddSizePolicy::kReject;
  absl::StatusOr<std::string> rejected = EncodeMp4(frames.data(), 3, options);
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(rejected.status().message()), HasSubstr("33x17"));
}

TEST(Mp4WriterTest, BadOptionsAreInvalidArgument) {
  const Mp4Options good = SmallOptions(16, 16, 48000);
  std::vector<Mp4Options> bad(6, good);
  bad[0].width = 0;
  bad[1].fps = {0, 1};
  bad[2].fps = {24, -1};
  bad[3].crf = 52;
  bad[4].audio_channels = 3;
  bad[5].audio_sample_rate = -1;
  for (const Mp4Options& options : bad) {
    EXPECT_EQ(Mp4Writer::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(Mp4Writer::Create(good).ok());
}

TEST(Mp4WriterTest, MisuseIsRejected) {
  std::mt19937 rng(std::random_device{}());
  auto no_audio = Mp4Writer::Create(SmallOptions(16, 16, 0)).value();
  const std::vector<float> audio = RandomAudio(2, 100, rng);
  EXPECT_EQ(no_audio->AddAudio(audio.data(), 100).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(no_audio->Finish().status().code(), absl::StatusCode::kFailedPrecondition);

  const std::vector<uint8_t> frame = RandomFrames(1, 16, 16, rng);
  auto writer = Mp4Writer::Create(SmallOptions(16, 16, 0)).value();
  ASSERT_TRUE(writer->AddFrame(frame.data()).ok());
  ASSERT_TRUE(writer->Finish().ok());
  EXPECT_EQ(writer->AddFrame(frame.data()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(EncodeMp4(frame.data(), 1, SmallOptions(16, 16, 48000)).status().code(),
            absl::StatusCode::kInvalidArgument);  // audio rate without audio
  const std::vector<float> stray = RandomAudio(2, 64, rng);
  EXPECT_EQ(EncodeMp4(frame.data(), 1, SmallOptions(16, 16, 0), stray.data(), 64).status().code(),
            absl::StatusCode::kInvalidArgument);  // audio without a rate
}

TEST(Mp4WriterTest, UnknownOrNonH264EncoderFallsBackToAnH264One) {
  std::mt19937 rng(std::random_device{}());
  const std::vector<uint8_t> frames = RandomFrames(2, 16, 16, rng);
  for (const char* name : {"no_such_encoder", "aac"}) {
    Mp4Options options = SmallOptions(16, 16, 0);
    options.video_encoder = name;
    absl::StatusOr<std::string> mp4 = EncodeMp4(frames.data(), 2, options);
    ASSERT_TRUE(mp4.ok()) << name << ": " << mp4.status();
    EXPECT_NE(mp4->find("avc1"), std::string::npos) << name;
  }
}

TEST(Mp4WriterTest, AbandonedWriterFreesCleanly) {
  std::mt19937 rng(std::random_device{}());
  const std::vector<uint8_t> frames = RandomFrames(4, 16, 16, rng);
  const std::vector<float> audio = RandomAudio(2, 5000, rng);
  auto writer = Mp4Writer::Create(SmallOptions(16, 16, 22050)).value();
  for (int f = 0; f < 4; ++f) ASSERT_TRUE(writer->AddFrame(&frames[f * 16 * 16 * 3]).ok());
  ASSERT_TRUE(writer->AddAudio(audio.data(), 2500).ok());
  writer.reset();  // no Finish: the destructor must release FFmpeg's state without writing
}

TEST(FrameRateTest, FromDouble) {
  auto eq = [](FrameRate r, int num, int den) { return r.num == num && r.den == den; };
  EXPECT_TRUE(eq(FrameRateFromDouble(24.0), 24, 1));
  EXPECT_TRUE(eq(FrameRateFromDouble(12.5), 25, 2));
  EXPECT_TRUE(eq(FrameRateFromDouble(29.97), 30000, 1001));
  EXPECT_TRUE(eq(FrameRateFromDouble(23.976), 24000, 1001));
  EXPECT_TRUE(eq(FrameRateFromDouble(59.94), 60000, 1001));
}

}  // namespace
}  // namespace diffmesh::media
