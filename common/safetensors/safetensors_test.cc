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

// A file with `header` (JSON text, written as is) and `data_bytes` random data bytes.
std::string WriteRaw(const std::string& dir, const std::string& name, const std::string& header,
                     size_t data_bytes) {
  const std::string path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary);
  const uint64_t len = header.size();
  char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out.write(len_bytes, 8);
  out << header;
  std::mt19937 rng(std::random_device{}());
  for (size_t i = 0; i < data_bytes; ++i) out.put(static_cast<char>(rng()));
  return path;
}

std::string Entry(const std::string& name, int64_t elements, uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(elements) +
         "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Opening `header` + `data_bytes` fails with INVALID_ARGUMENT naming the file and `tensor`.
void ExpectInvalid(const std::string& header, size_t data_bytes, const std::string& tensor) {
  std::string dir = TempDir();
  const std::string path = WriteRaw(dir, "bad.safetensors", header, data_bytes);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok()) << header;
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_NE(file.status().message().find(path), std::string::npos) << file.status();
  EXPECT_NE(file.status().message().find("'" + tensor + "'"), std::string::npos) << file.status();
  fs::remove_all(dir);
}

TEST(SafetensorsLayoutTest, OverlappingTensorsAreInvalid) {
  ExpectInvalid("{" + Entry("a", 4, 0, 16) + "," + Entry("b", 4, 8, 24) + "}", 24, "b");
  // The same bytes under two names.
  ExpectInvalid("{" + Entry("a", 4, 0, 16) + "," + Entry("b", 4, 0, 16) + "}", 16, "b");
}

TEST(SafetensorsLayoutTest, TensorOutsideTheFileIsInvalid) {
  ExpectInvalid("{" + Entry("far", 2, 1000, 1008) + "}", 8, "far");
  ExpectInvalid("{" + Entry("a", 2, 0, 8) + "," + Entry("huge", 2, 18446744073709551600ull,
                                                       18446744073709551608ull) + "}",
                8, "huge");
}

TEST(SafetensorsLayoutTest, GapBetweenTensorsIsInvalid) {
  ExpectInvalid("{" + Entry("a", 2, 0, 8) + "," + Entry("b", 2, 12, 20) + "}", 20, "b");
  ExpectInvalid("{" + Entry("late", 2, 4, 12) + "}", 12, "late");
}

TEST(SafetensorsLayoutTest, OffsetsEndingBeforeTheyBeginAreInvalid) {
  ExpectInvalid("{" + Entry("a", 0, 8, 0) + "}", 8, "a");
}

TEST(SafetensorsLayoutTest, BytesAfterTheLastTensorAreInvalid) {
  ExpectInvalid("{" + Entry("a", 2, 0, 8) + "}", 12, "a");
}

TEST(SafetensorsLayoutTest, DuplicateTensorNameIsInvalid) {
  ExpectInvalid("{" + Entry("w", 2, 0, 8) + "," + Entry("w", 2, 8, 16) + "}", 16, "w");
}

TEST(SafetensorsLayoutTest, EmptyTensorsAndMetadataAreFine) {
  std::string dir = TempDir();
  const std::string path = WriteRaw(
      dir, "ok.safetensors",
      "{\"__metadata__\":{\"format\":\"pt\"}," + Entry("empty", 0, 8, 8) + "," +
          Entry("a", 2, 0, 8) + "," + Entry("b", 3, 8, 20) + "}",
      20);
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().at("b").nbytes, 12u);
  EXPECT_EQ((*file)->tensors().at("empty").nbytes, 0u);
  fs::remove_all(dir);
}

TEST(SafetensorsLayoutTest, DirectoryIsNotASafetensorsFile) {
  std::string dir = TempDir();
  fs::create_directories(dir + "/d.safetensors");
  auto file = SafetensorsFile::Open(dir + "/d.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  fs::remove_all(dir);
}

// A header length within the file but past 100 MB is refused before parsing (a sparse file,
// so nothing is written).
TEST(SafetensorsLayoutTest, HugeHeaderIsRefusedBeforeParsing) {
  std::string dir = TempDir();
  const std::string path = dir + "/huge.safetensors";
  const uint64_t len = 200'000'000;
  {
    std::ofstream out(path, std::ios::binary);
    char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
    out.write(len_bytes, 8);
    out << '{';
  }
  fs::resize_file(path, 8 + len);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_NE(file.status().message().find(path), std::string::npos) << file.status();
  EXPECT_NE(file.status().message().find("100000000"), std::string::npos) << file.status();
  fs::remove_all(dir);
}

class ShardIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(std::random_device{}());
    root_ = TempDir();
    dir_ = root_ + "/transformer";
    fs::create_directories(dir_);
    ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00001-of-00001.safetensors",
                                 {{"x", RandomF32({2}, rng)}}).ok());
    ASSERT_TRUE(WriteSafetensors(root_ + "/outside.safetensors", {{"y", RandomF32({2}, rng)}}).ok());
  }
  void TearDown() override { fs::remove_all(root_); }

  // Writes an index mapping "x" to the first shard and "y" to `y_shard`.
  std::string WriteIndex(const std::string& y_shard) {
    nlohmann::json index = {{"weight_map", {{"x", "model-00001-of-00001.safetensors"},
                                            {"y", y_shard}}}};
    const std::string path = dir_ + "/model.safetensors.index.json";
    std::ofstream(path, std::ios::trunc) << index.dump();
    return path;
  }

  void ExpectRejected(const std::string& y_shard) {
    const std::string index = WriteIndex(y_shard);
    auto ckpt = Checkpoint::Open(dir_);
    ASSERT_FALSE(ckpt.ok()) << y_shard;
    EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << ckpt.status();
    EXPECT_NE(ckpt.status().message().find(index), std::string::npos) << ckpt.status();
    EXPECT_NE(ckpt.status().message().find("'y'"), std::string::npos) << ckpt.status();
  }

  std::string root_;
  std::string dir_;
};

TEST_F(ShardIndexTest, AbsoluteShardPathIsRejected) {
  ExpectRejected(root_ + "/outside.safetensors");
}

TEST_F(ShardIndexTest, DotDotShardPathIsRejected) {
  ExpectRejected("../outside.safetensors");
  ExpectRejected("sub/../../outside.safetensors");
}

TEST_F(ShardIndexTest, SymlinkOutOfTheFolderIsRejected) {
  fs::create_symlink(root_ + "/outside.safetensors", dir_ + "/link.safetensors");
  ExpectRejected("link.safetensors");
  fs::create_directory_symlink(root_, dir_ + "/up");
  ExpectRejected("up/outside.safetensors");
}

TEST_F(ShardIndexTest, EmbeddedNulIsRejected) {
  ExpectRejected(std::string("model-00001-of-00001.safetensors\0.x", 35));
}

TEST_F(ShardIndexTest, SymlinkInsideTheFolderIsFine) {
  fs::rename(root_ + "/outside.safetensors", dir_ + "/real.safetensors");
  fs::create_symlink("real.safetensors", dir_ + "/link.safetensors");
  WriteIndex("link.safetensors");
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_NE((*ckpt)->Find("y"), nullptr);
}

// A Hugging Face cache: snapshot files are symlinks into the model's blobs/.
TEST_F(ShardIndexTest, HuggingFaceCacheBlobLinksAreFine) {
  const fs::path model = fs::path(root_) / "hub" / "models--org--name";
  const fs::path snapshot = model / "snapshots" / "abc123" / "transformer";
  fs::create_directories(snapshot);
  fs::create_directories(model / "blobs");
  fs::rename(dir_ + "/model-00001-of-00001.safetensors", model / "blobs" / "1111");
  fs::rename(root_ + "/outside.safetensors", model / "blobs" / "2222");
  fs::create_symlink("../../../blobs/1111", snapshot / "model-00001-of-00002.safetensors");
  fs::create_symlink("../../../blobs/2222", snapshot / "model-00002-of-00002.safetensors");
  nlohmann::json index = {{"weight_map", {{"x", "model-00001-of-00002.safetensors"},
                                          {"y", "model-00002-of-00002.safetensors"}}}};
  std::ofstream((snapshot / "model.safetensors.index.json").string()) << index.dump();
  auto ckpt = Checkpoint::Open(snapshot.string());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_NE((*ckpt)->Find("x"), nullptr);
  EXPECT_NE((*ckpt)->Find("y"), nullptr);
}

TEST_F(ShardIndexTest, IndexThatIsADeviceIsAnErrorNotAHang) {
  fs::create_symlink("/dev/zero", dir_ + "/model.safetensors.index.json");
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << ckpt.status();
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
