// Condition-image preprocessing against glm-image-edit-ref-a: the AR processor's resize and
// patches, and the pipeline's VAE input, from the fixture PNG decoded by the project's decoder.
#include "models/glm_image/condition_image.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/image/png.h"
#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/config_json.h"
#include "models/core/weights.h"
#include "models/glm_image/image_resample.h"

namespace diffmesh::models::glm_image {
namespace {

const std::string kSet = "glm-image-edit-ref-a/";

at::Tensor Fixture(const Checkpoint& ckpt, const std::string& name) {
  const TensorView* v = ckpt.Find(name);
  EXPECT_NE(v, nullptr) << "fixture lacks " << name;
  return v == nullptr ? at::Tensor() : ToTensor(*v);
}

Rgb8Image ConditionPng() {
  std::ifstream in(FixturePath(kSet + "condition_image_0.png"), std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  auto image = DecodePng(bytes.str());
  EXPECT_TRUE(image.ok()) << image.status();
  return image.ok() ? *image : Rgb8Image{};
}

TEST(ConditionImageTest, SmartResizeFollowsTheReference) {
  // Halved, then rounded half to even to multiples of 16.
  auto s = ArSmartResize(64, 96, 16, 1024, 65536);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->first, 32);
  EXPECT_EQ(s->second, 48);
  s = ArSmartResize(1024, 1024, 32, 512 * 512, 2048 * 2048);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->first, 512);
  EXPECT_EQ(s->second, 512);
  // 40 / 2 = 20 → 20/16 = 1.25 → 1 (×16); 200 / 2 = 100 → 6.25 → 6.
  s = ArSmartResize(40, 104, 16, 16, 1 << 20);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->first, 16);
  EXPECT_EQ(s->second, 48);
  // A short side below shortest_edge scales both up: 100×100 with min 400² → scale 4.
  s = ArSmartResize(100, 100, 16, 400 * 400, 4096 * 4096);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->first, 192);  // round(50·4/16) = round(12.5) = 12 (Python rounds half to even)
  EXPECT_EQ(s->first, s->second);
  EXPECT_FALSE(ArSmartResize(8, 64, 16, 16, 1 << 20).ok());
  EXPECT_FALSE(ArSmartResize(64, 320, 16, 16, 1 << 20).ok());  // aspect ratio above 4
}

TEST(ConditionImageTest, ArPreprocessingMatchesProcessor) {
  auto config = ArImageProcessorConfig::FromFile(FixturePath(kSet + "processor"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto io = Checkpoint::Open(FixturePath(kSet + "ar_io.safetensors"));
  ASSERT_TRUE(io.ok()) << io.status();
  const Rgb8Image png = ConditionPng();
  ASSERT_GT(png.width, 0);

  auto image = PreprocessArConditionImage(*config, png.pixels.data(), png.width, png.height);
  ASSERT_TRUE(image.ok()) << image.status();
  // The PIL bicubic resize, exactly.
  const at::Tensor resized = Fixture(**io, "resized_image_0");
  ASSERT_EQ(image->resized.sizes(), resized.sizes());
  EXPECT_TRUE(at::equal(image->resized, resized))
      << "max abs diff "
      << (image->resized.to(at::kInt) - resized.to(at::kInt)).abs().max().item<int>();
  // The grid the processor reports for the source image (first row of image_grid_thw).
  const at::Tensor grids = Fixture(**io, "image_grid_thw");
  EXPECT_EQ(image->grid.height, grids[0][1].item<int64_t>());
  EXPECT_EQ(image->grid.width, grids[0][2].item<int64_t>());

  const at::Tensor expected = Fixture(**io, "pixel_values");
  ASSERT_EQ(image->pixel_values.sizes(), expected.sizes());
  const double err = RelativeError(image->pixel_values, expected);
  std::cout << "pixel_values rel err " << err << "\n";
  EXPECT_LE(err, 1e-6);

  // Everything after the resize, from the fixture's resized image alone.
  auto patches = PatchifyArImage(*config, resized);
  ASSERT_TRUE(patches.ok()) << patches.status();
  EXPECT_LE(RelativeError(*patches, expected), 1e-6);
}

TEST(ConditionImageTest, VaePreprocessingMatchesPipeline) {
  auto io = Checkpoint::Open(FixturePath(kSet + "vae_encode_io.safetensors"));
  ASSERT_TRUE(io.ok()) << io.status();
  const Rgb8Image png = ConditionPng();
  ASSERT_GT(png.width, 0);
  // vae_scale_factor 8 × transformer patch 2.
  auto image = PreprocessVaeConditionImage(png.pixels.data(), png.width, png.height, 16);
  ASSERT_TRUE(image.ok()) << image.status();
  const at::Tensor expected = Fixture(**io, "image_0.preprocessed");
  ASSERT_EQ(image->sizes(), expected.sizes());
  const double err = RelativeError(*image, expected);
  std::cout << "vae preprocessed rel err " << err << "\n";
  EXPECT_LE(err, 1e-6);
  EXPECT_FALSE(PreprocessVaeConditionImage(png.pixels.data(), 8, 8, 16).ok());
}

// Pillow's resampler on a small image with a known result: equal sizes copy, and a 2× box
// reduction of constant rows keeps them.
TEST(ImageResampleTest, PillowProperties) {
  std::vector<uint8_t> img(6 * 4 * 3);
  for (size_t i = 0; i < img.size(); ++i) img[i] = static_cast<uint8_t>((i * 37) % 251);
  auto same = ResizeLikePil(img.data(), 6, 4, 3, 6, 4, ResampleFilter::kBicubic);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, img);
  std::vector<uint8_t> flat(8 * 8 * 3, 77);
  for (ResampleFilter f : {ResampleFilter::kBicubic, ResampleFilter::kLanczos}) {
    auto down = ResizeLikePil(flat.data(), 8, 8, 3, 3, 5, f);
    ASSERT_TRUE(down.ok());
    for (uint8_t v : *down) EXPECT_EQ(v, 77);
  }
  EXPECT_FALSE(ResizeLikePil(img.data(), 6, 4, 3, 0, 4, ResampleFilter::kBicubic).ok());
  EXPECT_FALSE(ResampleFilterFromPil(0).ok());
}

// Pillow 9.4's own outputs (testdata/make_pil_resize_ref.py) for shrinking, growing and mixed
// resizes with each filter: equal byte for byte.
TEST(ImageResampleTest, MatchesPillowBytes) {
  const char* src = std::getenv("DIFFMESH_SOURCE_DIR");
  const std::string path = std::string(src != nullptr ? src : ".") +
                           "/models/glm_image/testdata/pil_resize_ref.json";
  auto ref = ReadJsonFile(path);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const auto input = (*ref)["pixels"].get<std::vector<uint8_t>>();
  const int w = (*ref)["width"].get<int>(), h = (*ref)["height"].get<int>();
  ASSERT_EQ(input.size(), static_cast<size_t>(w * h * 3));
  int cases = 0;
  for (const auto& c : (*ref)["cases"]) {
    auto filter = ResampleFilterFromPil(c["pil_filter"].get<int>());
    ASSERT_TRUE(filter.ok()) << filter.status();
    const int ow = c["width"].get<int>(), oh = c["height"].get<int>();
    auto out = ResizeLikePil(input.data(), w, h, 3, ow, oh, *filter);
    ASSERT_TRUE(out.ok()) << out.status();
    const auto want = c["pixels"].get<std::vector<uint8_t>>();
    int mismatches = 0;
    for (size_t i = 0; i < want.size(); ++i) mismatches += (*out)[i] != want[i];
    EXPECT_EQ(mismatches, 0) << c["filter"] << " " << w << "x" << h << " -> " << ow << "x" << oh;
    ++cases;
  }
  EXPECT_GE(cases, 3);
}

}  // namespace
}  // namespace diffmesh::models::glm_image
