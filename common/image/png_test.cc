#include "common/image/png.h"

#include <random>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

TEST(PngTest, RoundTripsRandomPixelsDeterministically) {
  std::mt19937 rng(std::random_device{}());
  const int w = 37, h = 23;
  std::vector<uint8_t> px(w * h * 3);
  for (auto& p : px) p = static_cast<uint8_t>(rng());
  auto a = EncodePng(px.data(), w, h);
  auto b = EncodePng(px.data(), w, h);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(a->substr(1, 3), "PNG");
  auto img = DecodePng(*a);
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->width, w);
  EXPECT_EQ(img->height, h);
  EXPECT_EQ(img->pixels, px);
}

TEST(PngTest, RejectsGarbage) {
  EXPECT_FALSE(DecodePng("definitely not a png").ok());
  EXPECT_EQ(EncodePng(nullptr, 0, 4).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace diffmesh
