#include "common/config/pipeline_config.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace diffmesh {
namespace {

TEST(PipelineConfigTest, DefaultParses) {
  auto cfg = PipelineConfig::Parse(PipelineConfig::DefaultJson());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const PipelineModel* m = cfg->FindModel(cfg->default_model);
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->HasStage("ar"));
  EXPECT_TRUE(m->HasStage("denoise"));
  EXPECT_EQ(m->defaults.height % m->limits.pixel_granularity, 0);
  EXPECT_EQ(cfg->services.size(), 3u);
}

TEST(PipelineConfigTest, RejectsBrokenConfigsWithReasons) {
  auto base = nlohmann::json::parse(PipelineConfig::DefaultJson());
  {
    auto j = base;
    j["models"][0]["stages"][0]["service"] = "nowhere";
    auto cfg = PipelineConfig::Parse(j.dump());
    ASSERT_FALSE(cfg.ok());
    EXPECT_NE(cfg.status().message().find("'nowhere'"), std::string::npos);
  }
  {
    auto j = base;
    j["models"][0]["stages"][1]["name"] = "upscaler";
    EXPECT_EQ(PipelineConfig::Parse(j.dump()).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    auto j = base;
    j["models"][0]["defaults"]["height"] = 250;  // not a multiple of the granularity
    EXPECT_FALSE(PipelineConfig::Parse(j.dump()).ok());
  }
  {
    auto j = base;
    j["default_model"] = "missing";
    EXPECT_FALSE(PipelineConfig::Parse(j.dump()).ok());
  }
  {
    auto j = base;
    j["models"][0]["limits"]["max_size"] = "big";
    auto cfg = PipelineConfig::Parse(j.dump());
    ASSERT_FALSE(cfg.ok());
    EXPECT_NE(cfg.status().message().find("max_size"), std::string::npos);
  }
  EXPECT_FALSE(PipelineConfig::Parse("{not json").ok());
  EXPECT_EQ(PipelineConfig::Load("/nonexistent/p.json").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace diffmesh
