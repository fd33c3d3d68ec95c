#include "common/file/file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

namespace fs = std::filesystem;

class ReadFileBoundedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("file_test_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  fs::path dir_;
};

std::string RandomBytes(size_t n) {
  std::mt19937 rng(std::random_device{}());
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

TEST_F(ReadFileBoundedTest, ReadsAFileUpToTheLimitExactly) {
  const std::string content = RandomBytes(100'000);
  const std::string path = Write("a.bin", content);
  auto read = ReadFileBounded(path, content.size());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, content);
}

TEST_F(ReadFileBoundedTest, EmptyFileIsEmpty) {
  auto read = ReadFileBounded(Write("empty", ""), 10);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->empty());
}

TEST_F(ReadFileBoundedTest, LargerFileIsInvalidArgumentNamingPathAndLimit) {
  const std::string path = Write("big.bin", RandomBytes(4097));
  auto read = ReadFileBounded(path, 4096);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(read.status().message().find(path), std::string::npos) << read.status();
  EXPECT_NE(read.status().message().find("4096"), std::string::npos) << read.status();
}

// A character device reports size 0 and never ends: the read must stop at the limit.
TEST_F(ReadFileBoundedTest, DevZeroStopsAtTheLimit) {
  auto read = ReadFileBounded("/dev/zero", 1 << 20);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(read.status().message().find("/dev/zero"), std::string::npos);
  EXPECT_NE(read.status().message().find("1048576"), std::string::npos);
}

TEST_F(ReadFileBoundedTest, DevNullIsEmpty) {
  auto read = ReadFileBounded("/dev/null", 16);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->empty());
}

TEST_F(ReadFileBoundedTest, MissingFileIsNotFound) {
  const std::string path = (dir_ / "nope").string();
  auto read = ReadFileBounded(path, 16);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find(path), std::string::npos);
}

TEST_F(ReadFileBoundedTest, DirectoryIsInvalidArgument) {
  auto read = ReadFileBounded(dir_.string(), 16);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(read.status().message().find(dir_.string()), std::string::npos);
}

// A FIFO with no writer must not block the open; with a writer that closes, it reads its bytes.
TEST_F(ReadFileBoundedTest, FifoWithoutWriterDoesNotHang) {
  const std::string path = (dir_ / "fifo").string();
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  auto read = ReadFileBounded(path, 16);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->empty());
}

TEST_F(ReadFileBoundedTest, UnreadableFileIsPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads every file";
  const std::string path = Write("secret", "x");
  fs::permissions(path, fs::perms::none);
  auto read = ReadFileBounded(path, 16);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace diffmesh
