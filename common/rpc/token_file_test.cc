#include "common/rpc/token_file.h"

#include <filesystem>
#include <fstream>
#include <random>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

namespace fs = std::filesystem;

std::string TempPath(const std::string& name) {
  return (fs::path(::testing::TempDir()) / (name + "_" + std::to_string(std::random_device{}())))
      .string();
}

TEST(ReadTokenFileTest, ReadsTokensSkippingCommentsAndBlankLines) {
  const std::string path = TempPath("tokens");
  std::ofstream(path) << "# operators\n\n  tok-A1  \r\ntok_B2\n";
  auto tokens = ReadTokenFile(path);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(*tokens, (std::vector<std::string>{"tok-A1", "tok_B2"}));
  fs::remove(path);
}

// Regression: `--auth-token-file=/dev/zero` used to read without end and abort with bad_alloc.
TEST(ReadTokenFileTest, DevZeroIsInvalidArgumentNamingIt) {
  auto tokens = ReadTokenFile("/dev/zero");
  ASSERT_FALSE(tokens.ok());
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tokens.status().message().find("token file /dev/zero"), std::string::npos)
      << tokens.status();
}

TEST(ReadTokenFileTest, OversizedFileIsInvalidArgument) {
  const std::string path = TempPath("huge_tokens");
  {
    std::ofstream out(path);
    for (int i = 0; i < 40'000; ++i) out << "token-number-" << i << "-abcdefghijklmnop\n";
  }
  auto tokens = ReadTokenFile(path);
  ASSERT_FALSE(tokens.ok());
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tokens.status().message().find(path), std::string::npos);
  fs::remove(path);
}

TEST(ReadTokenFileTest, MissingFileIsNotFoundAndDirectoryIsInvalid) {
  const std::string path = TempPath("missing");
  auto missing = ReadTokenFile(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(path), std::string::npos);
  auto dir = ReadTokenFile(::testing::TempDir());
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReadClientTokenTest, NeedsExactlyOneToken) {
  const std::string path = TempPath("client_token");
  std::ofstream(path) << "one\ntwo\n";
  auto token = ReadClientToken(path);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
  std::ofstream(path, std::ios::trunc) << "only-one\n";
  token = ReadClientToken(path);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "only-one");
  fs::remove(path);
}

}  // namespace
}  // namespace diffmesh
