// End-to-end, LTX-2 image-to-video: `diffmesh generate --model ltx2-tiny --first-frame img.png
// --output clip.mp4` (embedded) makes a playable MP4 of the requested frames that the image
// changes (against text-to-video), and a group of sequence-parallel denoise ranks (separate
// processes) reproduces one rank's latents; an image of another role is refused naming
// inputs[0].role.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/image/png.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace diffmesh {
namespace {

using testing::Binary;
using testing::ReadFile;

// argv[1], argv[2]: two MP4s. Prints "frames width height max_abs_diff" of the first and of its
// decoded frames against the second's (same frame count required, else max_abs_diff is -1).
constexpr char kCompare[] = R"(
import sys, av, numpy as np
def frames(path):
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24").astype(np.int32) for f in c.decode(video=0)]
a, b = frames(sys.argv[1]), frames(sys.argv[2])
diff = max(int(np.abs(x - y).max()) for x, y in zip(a, b)) if len(a) == len(b) else -1
print(len(a), a[0].shape[1], a[0].shape[0], diff)
)";

// argv[1], argv[2]: two CLI latents outputs (PATH.safetensors written as
// PATH.video_latents.safetensors and PATH.audio_latents.safetensors, one tensor each). Prints the
// relative error ‖a − b‖/‖b‖ of the video and of the audio latents (without the safetensors
// package).
constexpr char kLatentErrors[] = R"(
import sys, json, struct, numpy as np
def read(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    (t,) = [t for name, t in header.items() if name != "__metadata__"]
    assert t["dtype"] == "F32", t
    a, b = t["data_offsets"]
    return np.frombuffer(body[a:b], dtype=np.float32).astype(np.float64)
def latents(path, name):
    return read(path[:-len(".safetensors")] + "." + name + ".safetensors")
errors = []
for k in ("video_latents", "audio_latents"):
    a, b = latents(sys.argv[1], k), latents(sys.argv[2], k)
    errors.append("%.3g" % (np.linalg.norm(a - b) / np.linalg.norm(b)))
print(" ".join(errors))
)";

class Ltx2ImageToVideoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir();
    image_ = dir_ + "/ltx2_i2v_first_frame.png";
    // A smooth gradient with a bright square: a picture, not noise, of another size than the
    // video's (the stage resizes it).
    const int width = 80, height = 56;
    std::vector<uint8_t> rgb(width * height * 3);
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        uint8_t* p = &rgb[(y * width + x) * 3];
        const bool square = x > 20 && x < 44 && y > 12 && y < 36;
        p[0] = square ? 250 : static_cast<uint8_t>(3 * x);
        p[1] = square ? 240 : static_cast<uint8_t>(4 * y);
        p[2] = static_cast<uint8_t>(square ? 30 : 128);
      }
    }
    auto png = EncodePng(rgb.data(), width, height);
    ASSERT_TRUE(png.ok()) << png.status();
    std::ofstream(image_, std::ios::binary) << *png;
    probe_ = dir_ + "/ltx2_i2v_compare.py";
    std::ofstream(probe_) << kCompare;
    latents_ = dir_ + "/ltx2_i2v_latents.py";
    std::ofstream(latents_) << kLatentErrors;
  }

  static std::vector<std::string> Generate(const std::string& output) {
    return {Binary("diffmesh"), "generate", "--model", "ltx2-tiny", "--prompt",
            "a kite over the sea", "--seed", "4", "--steps", "2", "--width", "96",
            "--num-frames", "9", "--output", output};
  }

  // frames, width, height and the largest pixel difference of `a`'s frames against `b`'s.
  std::vector<int64_t> Compare(const std::string& a, const std::string& b) {
    std::string out;
    EXPECT_EQ(testing::RunCommand({"/usr/bin/python3", probe_, a, b}, &out), 0) << out;
    std::vector<std::string> f = absl::StrSplit(absl::StripAsciiWhitespace(out), ' ');
    std::vector<int64_t> v;
    for (const std::string& s : f) {
      int64_t x = 0;
      EXPECT_TRUE(absl::SimpleAtoi(s, &x)) << out;
      v.push_back(x);
    }
    EXPECT_EQ(v.size(), 4u) << out;
    v.resize(4, -2);
    return v;
  }

  std::string dir_, image_, probe_, latents_;
};

TEST_F(Ltx2ImageToVideoTest, FirstFrameMakesAnotherPlayableClipOnEveryLayout) {
  const std::string i2v = dir_ + "/ltx2_i2v.mp4", t2v = dir_ + "/ltx2_t2v.mp4",
                    again = dir_ + "/ltx2_i2v_again.mp4";
  std::string log;
  std::vector<std::string> args = Generate(i2v);
  args.insert(args.end(), {"--first-frame", image_});
  ASSERT_EQ(testing::RunCommand(args, &log), 0) << log;
  ASSERT_EQ(testing::RunCommand(Generate(t2v), &log), 0) << log;
  args[args.size() - 3] = again;  // --output's value
  ASSERT_EQ(testing::RunCommand(args, &log), 0) << log;
  EXPECT_EQ(ReadFile(again), ReadFile(i2v)) << "the same request gave another clip";

  const std::vector<int64_t> vs_text = Compare(i2v, t2v);
  EXPECT_EQ(vs_text[0], 9) << "frames";
  EXPECT_EQ(vs_text[1], 96) << "width";
  EXPECT_EQ(vs_text[2], 64) << "height";
  EXPECT_GT(vs_text[3], 8) << "the first frame did not change the clip";

  // cfg 2 × ulysses 2: four denoise ranks as processes, the video sharded by latent frames
  // (9 frames are 2). Their final latents (.safetensors) are one rank's to rounding; the MP4s
  // are not compared (one level of a pixel may change H.264's choices).
  const std::string one = dir_ + "/ltx2_i2v_one.safetensors",
                    grouped = dir_ + "/ltx2_i2v_group.safetensors";
  args[args.size() - 3] = one;
  ASSERT_EQ(testing::RunCommand(args, &log), 0) << log;
  std::vector<std::string> group_args = args;
  group_args[group_args.size() - 3] = grouped;
  group_args.insert(group_args.end(), {"--cfg-degree", "2", "--ulysses-degree", "2"});
  ASSERT_EQ(testing::RunCommand(group_args, &log), 0) << log;
  std::string out;
  ASSERT_EQ(testing::RunCommand({"/usr/bin/python3", latents_, grouped, one}, &out), 0) << out;
  std::vector<std::string> errors = absl::StrSplit(absl::StripAsciiWhitespace(out), ' ');
  ASSERT_EQ(errors.size(), 2u) << out;
  for (const std::string& e : errors) {
    double err = 1;
    ASSERT_TRUE(absl::SimpleAtod(e, &err)) << out;
    EXPECT_LE(err, 1e-5) << "video and audio latents' relative errors: " << out;
  }
  std::printf("cfg 2 × ulysses 2 (processes) against one rank: relative error video, audio %s",
              out.c_str());
}

TEST_F(Ltx2ImageToVideoTest, AnImageOfAnotherRoleIsRefused) {
  std::string log;
  std::vector<std::string> args = Generate(dir_ + "/ltx2_i2v_refused.mp4");
  args.insert(args.end(), {"--image", image_});
  EXPECT_NE(testing::RunCommand(args, &log), 0) << log;
  EXPECT_NE(log.find("inputs[0].role"), std::string::npos) << log;
  EXPECT_NE(log.find("first_frame"), std::string::npos) << log;
}

}  // namespace
}  // namespace diffmesh
