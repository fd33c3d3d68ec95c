// The pipeline config harness's inputs: the seeds are valid configs of the current format, and
// the inputs of past findings (out-of-range numbers, the old format) are rejected cleanly.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "common/config/pipeline_config.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

std::string Read(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::filesystem::path Dir(const char* kind) {
  return std::filesystem::path(DIFFMESH_FUZZ_DIR) / kind / "pipeline_config_fuzzer";
}

TEST(PipelineConfigInputsTest, EverySeedParses) {
  int seeds = 0;
  for (const auto& entry : std::filesystem::directory_iterator(Dir("corpus"))) {
    auto config = PipelineConfig::Parse(Read(entry.path()));
    EXPECT_TRUE(config.ok()) << entry.path() << ": " << config.status();
    ++seeds;
  }
  EXPECT_GE(seeds, 3);
}

TEST(PipelineConfigInputsTest, EveryPastFindingIsRejectedWithAReason) {
  int inputs = 0;
  for (const auto& entry : std::filesystem::directory_iterator(Dir("regressions"))) {
    auto config = PipelineConfig::Parse(Read(entry.path()));
    ASSERT_FALSE(config.ok()) << entry.path() << " parses";
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument)
        << entry.path() << ": " << config.status();
    EXPECT_FALSE(config.status().message().empty()) << entry.path();
    std::cout << entry.path().filename() << ": " << config.status().message() << "\n";
    ++inputs;
  }
  EXPECT_GE(inputs, 4);
}

}  // namespace
}  // namespace diffmesh
