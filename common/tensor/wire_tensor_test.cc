#include "common/tensor/wire_tensor.h"

#include <random>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

TEST(WireTensorTest, AcceptsConsistentTensor) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> v(6);
  for (auto& x : v) x = std::uniform_real_distribution<float>(-1, 1)(rng);
  v1::Tensor t = MakeTensor(DType::kFloat32, {2, 3}, v.data(), v.size() * 4);
  EXPECT_TRUE(ValidateTensor(t, "x").ok());
  EXPECT_TRUE(ValidateTensor(t, "x", DType::kFloat32, 2).ok());
  EXPECT_EQ(t.data().size(), 24u);
}

TEST(WireTensorTest, RejectsSizeMismatchNamingTheField) {
  std::vector<int64_t> v(5, 7);
  v1::Tensor t = MakeTensor(DType::kInt64, {2, 3}, v.data(), v.size() * 8);
  absl::Status s = ValidateTensor(t, "prior_tokens");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("prior_tokens"), std::string::npos);
  EXPECT_NE(s.message().find("expected 48"), std::string::npos);
}

TEST(WireTensorTest, RejectsWrongDtypeRankAndUnknownDtype) {
  std::vector<float> v(4, 1.5f);
  v1::Tensor t = MakeTensor(DType::kFloat32, {4}, v.data(), 16);
  EXPECT_EQ(ValidateTensor(t, "x", DType::kInt64).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateTensor(t, "x", std::nullopt, 2).code(), absl::StatusCode::kInvalidArgument);
  t.set_dtype(static_cast<v1::DType>(77));
  EXPECT_EQ(ValidateTensor(t, "x").code(), absl::StatusCode::kInvalidArgument);
  t.set_dtype(v1::FLOAT32);
  t.add_shape(-1);
  EXPECT_EQ(ValidateTensor(t, "x").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace diffmesh
