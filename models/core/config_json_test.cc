// Torch-free tests of the config.json readers (models/core/config_json.h).
#include "models/core/config_json.h"

#include <filesystem>
#include <fstream>
#include <random>

#include "gtest/gtest.h"

namespace diffmesh::models {
namespace {

using json = nlohmann::json;

template <typename T>
absl::Status Read(const std::string& text, T& out) {
  return ReadConfigField(json::parse(text), "transformer", "num_layers", out);
}

template <typename T>
void ExpectRejectedNamingKey(const std::string& text) {
  T out{};
  const T before = out;
  absl::Status s = Read(text, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << text << " → " << s;
  EXPECT_NE(s.message().find("'num_layers'"), std::string::npos) << s;
  EXPECT_NE(s.message().find("transformer config"), std::string::npos) << s;
  EXPECT_EQ(out, before) << text;
}

TEST(ReadConfigFieldTest, ReadsInRangeValues) {
  std::mt19937_64 rng(std::random_device{}());
  const int v = static_cast<int>(rng() % 100000);
  int i = -1;
  ASSERT_TRUE(Read("{\"num_layers\": " + std::to_string(v) + "}", i).ok());
  EXPECT_EQ(i, v);
  int64_t big = 0;
  ASSERT_TRUE(Read("{\"num_layers\": -9223372036854775808}", big).ok());
  EXPECT_EQ(big, std::numeric_limits<int64_t>::min());
  double d = 0;
  ASSERT_TRUE(Read("{\"num_layers\": 1e300}", d).ok());
  EXPECT_EQ(d, 1e300);
  float f = 0;
  ASSERT_TRUE(Read("{\"num_layers\": 7}", f).ok());
  EXPECT_EQ(f, 7.0f);
  int keep = 5;
  ASSERT_TRUE(Read("{\"num_layers\": null}", keep).ok());
  ASSERT_TRUE(Read("{}", keep).ok());
  EXPECT_EQ(keep, 5);
}

// Regression: 1e300 into an int was a float-to-int conversion (undefined; UBSan flags it).
TEST(ReadConfigFieldTest, HugeFloatIntoIntegerIsInvalidArgument) {
  ExpectRejectedNamingKey<int>("{\"num_layers\": 1e300}");
  ExpectRejectedNamingKey<int64_t>("{\"num_layers\": -1e300}");
  ExpectRejectedNamingKey<int>("{\"num_layers\": 2.5}");
}

TEST(ReadConfigFieldTest, IntegerOutsideTheFieldsRangeIsInvalidArgument) {
  ExpectRejectedNamingKey<int>("{\"num_layers\": 4294967296}");
  ExpectRejectedNamingKey<int>("{\"num_layers\": -2147483649}");
  ExpectRejectedNamingKey<int64_t>("{\"num_layers\": 18446744073709551615}");
  ExpectRejectedNamingKey<uint32_t>("{\"num_layers\": -1}");
  ExpectRejectedNamingKey<int8_t>("{\"num_layers\": 128}");
}

TEST(ReadConfigFieldTest, FloatOutOfRangeOrNonFiniteIsInvalidArgument) {
  ExpectRejectedNamingKey<float>("{\"num_layers\": 1e300}");
  // JSON text cannot spell NaN, but a config built in code can carry one.
  float f = 1.0f;
  json j = {{"num_layers", std::nan("")}};
  absl::Status s = ReadConfigField(j, "transformer", "num_layers", f);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(f, 1.0f);
  double d = 1.0;
  j = {{"num_layers", std::numeric_limits<double>::infinity()}};
  EXPECT_EQ(ReadConfigField(j, "transformer", "num_layers", d).code(),
            absl::StatusCode::kInvalidArgument);
}

// Regression: lists were converted by nlohmann (a float element into int64 was undefined).
TEST(ReadConfigFieldTest, ListElementsAreRangeChecked) {
  std::vector<int64_t> channels = {64};
  ASSERT_TRUE(Read("{\"num_layers\": [128, 256]}", channels).ok());
  EXPECT_EQ(channels, (std::vector<int64_t>{128, 256}));
  ExpectRejectedNamingKey<std::vector<int64_t>>("{\"num_layers\": [1, 1e300]}");
  ExpectRejectedNamingKey<std::vector<int64_t>>("{\"num_layers\": [1, 2.5]}");
  ExpectRejectedNamingKey<std::vector<int>>("{\"num_layers\": [4294967296]}");
  ExpectRejectedNamingKey<std::vector<float>>("{\"num_layers\": [1e300]}");
  ExpectRejectedNamingKey<std::vector<double>>("{\"num_layers\": 3}");
  std::vector<double> means;
  ASSERT_TRUE(Read("{\"num_layers\": [0.5, -1, 2e10]}", means).ok());
  EXPECT_EQ(means, (std::vector<double>{0.5, -1, 2e10}));
}

TEST(ReadConfigFieldTest, WrongKindIsInvalidArgument) {
  ExpectRejectedNamingKey<bool>("{\"num_layers\": 1}");
  ExpectRejectedNamingKey<double>("{\"num_layers\": \"3\"}");
  ExpectRejectedNamingKey<std::string>("{\"num_layers\": 3}");
  ExpectRejectedNamingKey<int>("{\"num_layers\": [1]}");
}

// A deeply nested bad value is described by kind, not dumped level by level.
TEST(ReadConfigFieldTest, DeeplyNestedValueIsDescribedWithoutRecursion) {
  const int depth = 200000;
  std::string text = "{\"num_layers\": " + std::string(depth, '[') + std::string(depth, ']') + "}";
  int out = 0;
  absl::Status s = Read(text, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(s.message().size(), 200u) << s.message().substr(0, 200);
}

TEST(ReadJsonFileTest, DevZeroAndDirectoriesAreErrorsNamingThePath) {
  auto zero = ReadJsonFile("/dev/zero");
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(zero.status().message().rfind("/dev/zero", 0), 0u) << zero.status();
  auto missing = ReadJsonFile("/nonexistent/config.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(ReadJsonFileTest, ReadsAnObject) {
  const std::string path = ::testing::TempDir() + "/config_json_test_" +
                           std::to_string(std::random_device{}()) + ".json";
  std::ofstream(path) << "{\"hidden_size\": 64, \"eps\": 1e-6}";
  auto j = ReadJsonFile(path);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ((*j)["hidden_size"], 64);
  std::ofstream(path, std::ios::trunc) << "[1, 2]";
  EXPECT_EQ(ReadJsonFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace diffmesh::models
