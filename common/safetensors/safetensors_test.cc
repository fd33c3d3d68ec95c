#include "common/safetensors/safetensors.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace diffmesh {
namespace {

namespace fs = std::filesystem;

std::string TempDir() {
  std::random_device rd;
  auto dir = fs::temp_directory_path() / ("st_test_" + std::to_string(rd()));
  fs::create_directories(dir);
  return dir.string();
}

OwnedTensor RandomF32(std::vector<int64_t> shape, std::mt19937& rng) {
  OwnedTensor t{DType::kFloat32, shape, {}};
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> v(n);
  std::normal_distribution<float> dist;
  for (auto& x : v) x = dist(rng);
  t.bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  return t;
}

TEST(SafetensorsTest, WriteThenReadRoundTrips) {
  std::mt19937 rng(std::random_device{}());
  std::string dir = TempDir();
  std::map<std::string, OwnedTensor> in = {{"a.weight", RandomF32({3, 5}, rng)},
                                           {"b", RandomF32({7}, rng)}};
  ASSERT_TRUE(WriteSafetensors(dir + "/x.safetensors", in, {{"format", "pt"}}).ok());
  auto file = SafetensorsFile::Open(dir + "/x.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 2u);
  const TensorView& a = (*file)->tensors().at("a.weight");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(a.dtype, DType::kFloat32);
  ASSERT_EQ(a.nbytes, in["a.weight"].bytes.size());
  EXPECT_EQ(std::memcmp(a.data, in["a.weight"].bytes.data(), a.nbytes), 0);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  fs::remove_all(dir);
}

TEST(SafetensorsTest, TruncatedFileIsAnErrorNamingIt) {
  std::mt19937 rng(1234);
  std::string dir = TempDir();
  std::string path = dir + "/t.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"w", RandomF32({64, 64}, rng)}}).ok());
  fs::resize_file(path, fs::file_size(path) - 100);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(file.status().message().find(path), std::string::npos);
  EXPECT_NE(file.status().message().find("'w'"), std::string::npos);
  fs::remove_all(dir);
}

TEST(SafetensorsTest, GarbageHeaderIsDataLoss) {
  std::string dir = TempDir();
  std::string path = dir + "/g.safetensors";
  {
    std::ofstream out(path, std::ios::binary);
    uint64_t len = 5;
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << "{{{{{";
  }
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss);
  fs::remove_all(dir);
}

TEST(SafetensorsTest, ShardedIndexJoinsShards) {
  std::mt19937 rng(std::random_device{}());
  std::string dir = TempDir();
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors", {{"x", RandomF32({2}, rng)}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors", {{"y", RandomF32({4}, rng)}}).ok());
  nlohmann::json index = {{"metadata", {{"total_size", 24}}},
                          {"weight_map", {{"x", "model-00001-of-00002.safetensors"},
                                          {"y", "model-00002-of-00002.safetensors"}}}};
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_NE((*ckpt)->Find("x"), nullptr);
  ASSERT_NE((*ckpt)->Find("y"), nullptr);
  EXPECT_EQ((*ckpt)->Find("y")->shape, (std::vector<int64_t>{4}));
  EXPECT_EQ((*ckpt)->Find("z"), nullptr);
  EXPECT_EQ((*ckpt)->files().size(), 2u);
  fs::remove_all(dir);
}

TEST(SafetensorsTest, ReadsReferenceFixture) {
  const char* root = std::getenv("DIFFMESH_FIXTURES");
  std::string dir = std::string(root ? root : "../shared/fixtures") + "/glm-image-ref-a/transformer";
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_GT((*ckpt)->tensors().size(), 10u);
}

}  // namespace
}  // namespace diffmesh
