#include "models/ltx2/conv3d.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "models/core/ops.h"

namespace diffmesh::models::ltx2 {
namespace {

// The reference's LTX2VideoCausalConv3d written with the torch calls it makes: frames
// concatenated at the edges, then Conv3d with its padding_mode on height and width.
at::Tensor Reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, bool causal,
                     SpatialPadding mode) {
  const int64_t kt = w.size(2);
  std::vector<at::Tensor> parts;
  if (causal) {
    parts = {x.narrow(2, 0, 1).repeat({1, 1, kt - 1, 1, 1}), x};
  } else {
    const int64_t p = (kt - 1) / 2;
    parts = {x.narrow(2, 0, 1).repeat({1, 1, p, 1, 1}), x,
             x.narrow(2, x.size(2) - 1, 1).repeat({1, 1, p, 1, 1})};
  }
  at::Tensor h = at::cat(parts, 2);
  const int64_t ph = w.size(3) / 2, pw = w.size(4) / 2;
  switch (mode) {
    case SpatialPadding::kZeros:
      return at::conv3d(h, w, b, {1, 1, 1}, {0, ph, pw});
    case SpatialPadding::kReflect:
      h = at::reflection_pad3d(h, {pw, pw, ph, ph, 0, 0});
      break;
    case SpatialPadding::kReplicate:
      h = at::replication_pad3d(h, {pw, pw, ph, ph, 0, 0});
      break;
    case SpatialPadding::kCircular:
      h = at::cat({h.narrow(4, h.size(4) - pw, pw), h, h.narrow(4, 0, pw)}, 4);
      h = at::cat({h.narrow(3, h.size(3) - ph, ph), h, h.narrow(3, 0, ph)}, 3);
      break;
  }
  return at::conv3d(h, w, b);
}

TEST(Conv3dTest, CausalConvMatchesReferencePaddingInEveryModeAndDtype) {
  auto gen = at::detail::createCPUGenerator(4);
  at::Tensor x = at::normal(0.0, 1.0, {2, 3, 5, 6, 7}, gen, at::TensorOptions());
  at::Tensor w = at::normal(0.0, 0.2, {4, 3, 3, 3, 3}, gen, at::TensorOptions());
  at::Tensor b = at::normal(0.0, 0.2, {4}, gen, at::TensorOptions());
  for (SpatialPadding mode : {SpatialPadding::kZeros, SpatialPadding::kReflect,
                              SpatialPadding::kReplicate, SpatialPadding::kCircular}) {
    for (bool causal : {false, true}) {
      at::Tensor expected = Reference(x, w, b, causal, mode);
      at::Tensor got = CausalConv3d(x, w, b, causal, mode);
      ASSERT_EQ(got.sizes(), expected.sizes());
      EXPECT_LE(RelativeError(got, expected), 1e-6) << static_cast<int>(mode) << causal;
      // bf16 goes through the index-based pads where ATen has no kernel.
      at::Tensor low =
          CausalConv3d(x.to(at::kBFloat16), w.to(at::kBFloat16), b.to(at::kBFloat16), causal, mode);
      EXPECT_LE(RelativeError(low, expected), 3e-2) << static_cast<int>(mode) << causal;
    }
  }
  EXPECT_EQ(ParseSpatialPadding("reflect").value(), SpatialPadding::kReflect);
  EXPECT_FALSE(ParseSpatialPadding("mirror").ok());
}

TEST(Conv3dTest, DepthToSpaceAndPixelNorm) {
  at::Tensor x = at::arange(2 * 12 * 2 * 1 * 1, at::kFloat).view({2, 12, 2, 1, 1});
  at::Tensor y = DepthToSpace3d(x, {3, 2, 2});
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 1, 6, 2, 2}));
  // out[b, 0, f·3 + i, j, k] = in[b, i·4 + j·2 + k, f].
  EXPECT_EQ(y[1][0][3 + 2][1][0].item<float>(), x[1][2 * 4 + 1 * 2 + 0][1][0][0].item<float>());
  at::Tensor n = PixelNorm(at::full({1, 4, 1, 1, 1}, 3.0f));
  EXPECT_NEAR(n[0][2][0][0][0].item<float>(), 1.0f, 1e-6);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
