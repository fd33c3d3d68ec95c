#include "common/config/pipeline_config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace diffmesh {
namespace {

TEST(PipelineConfigTest, DefaultParses) {
  auto cfg = PipelineConfig::Parse(PipelineConfig::DefaultJson());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const PipelineModel* m = cfg->FindModel(cfg->default_model);
  ASSERT_NE(m, nullptr);
  ASSERT_NE(m->FindStage("ar"), nullptr);
  const StageSpec* denoise = m->FindStage("denoise");
  ASSERT_NE(denoise, nullptr);
  EXPECT_EQ(denoise->kind, "denoise");
  EXPECT_EQ(denoise->inputs, (std::vector<std::string>{"ar", "encoder"}));
  EXPECT_TRUE(denoise->stream_inputs);
  EXPECT_EQ(m->defaults.height() % m->limits.size_granularity(), 0);
  EXPECT_TRUE(m->defaults.guidance().main().has_cfg_scale());
  EXPECT_FALSE(m->defaults.guidance().main().has_modality_scale());
  EXPECT_EQ(m->defaults.output().format(), v1::OUTPUT_FORMAT_PNG);
  EXPECT_EQ(cfg->services.size(), 3u);
}

TEST(PipelineConfigTest, DefaultServesLtx2TinyVideoWithSound) {
  auto cfg = PipelineConfig::Parse(PipelineConfig::DefaultJson());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_EQ(cfg->models.size(), 2u);
  EXPECT_EQ(cfg->default_model, "glm-image-tiny");
  const PipelineModel* m = cfg->FindModel("ltx2-tiny");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->kind, ModelKind::kVideoWithAudio);
  EXPECT_EQ(m->FindStage("ar"), nullptr);
  const StageSpec* denoise = m->FindStage("denoise");
  ASSERT_NE(denoise, nullptr);
  EXPECT_EQ(denoise->inputs, (std::vector<std::string>{"encoder"}));
  EXPECT_EQ(m->defaults.num_frames() % m->limits.frames().multiple(), m->limits.frames().offset());
  EXPECT_EQ(m->defaults.height() % m->limits.size_granularity(), 0);
  EXPECT_TRUE(m->defaults.guidance().has_audio());
  EXPECT_EQ(m->defaults.output().format(), v1::OUTPUT_FORMAT_MP4);
}

TEST(PipelineConfigTest, StageGraphsAreCheckedWhenRead) {
  auto base = nlohmann::json::parse(PipelineConfig::DefaultJson());
  {
    auto j = base;  // an input that is not a stage defined before it
    j["models"][0]["stages"][2]["inputs"] = {"ar", "vae"};
    auto cfg = PipelineConfig::Parse(j.dump());
    ASSERT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(cfg.status().message().find("'vae'"), std::string::npos) << cfg.status();
  }
  {
    auto j = base;  // an unknown stage kind
    j["models"][0]["stages"][1]["kind"] = "upscaler";
    auto cfg = PipelineConfig::Parse(j.dump());
    ASSERT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(cfg.status().message().find("'upscaler'"), std::string::npos) << cfg.status();
  }
  {
    auto j = base;  // a misspelt default is an error naming it, never ignored
    j["models"][0]["defaults"]["guidance"]["main"]["cfg_scal"] = 2.0;
    auto cfg = PipelineConfig::Parse(j.dump());
    ASSERT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(cfg.status().message().find("cfg_scal"), std::string::npos) << cfg.status();
  }
  {
    auto j = base;  // a video model needs its frame rule
    j["models"][0]["kind"] = "video_with_audio";
    auto cfg = PipelineConfig::Parse(j.dump());
    ASSERT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(cfg.status().message().find("frames"), std::string::npos) << cfg.status();
  }
  {
    auto j = base;  // two stages of one name
    j["models"][0]["stages"][1]["name"] = "ar";
    EXPECT_EQ(PipelineConfig::Parse(j.dump()).status().code(), absl::StatusCode::kInvalidArgument);
  }
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
    j["models"][0]["stages"][1]["kind"] = "upscaler";
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
  // A device that never ends is refused at the size bound, naming the file.
  auto zero = PipelineConfig::Load("/dev/zero");
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("/dev/zero"), std::string::npos) << zero.status();
}

class SnapshotEntryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() /
            ("diffmesh_pipeline_config_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(root_ / "named");
    std::filesystem::create_directories(root_ / "hub" / "models--zai-org--GLM-Image" /
                                        "snapshots" / "abc123");
    std::filesystem::create_directories(root_ / "plain-folder");
    Write(root_ / "named" / "model_index.json", R"({"_name_or_path": "my-glm"})");
    Write(root_ / "hub" / "models--zai-org--GLM-Image" / "snapshots" / "abc123" / "model_index.json",
          R"({"_class_name": "GlmImagePipeline"})");
    Write(root_ / "plain-folder" / "model_index.json", R"({"_name_or_path": ""})");
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  static void Write(const std::filesystem::path& p, const std::string& text) {
    std::ofstream(p) << text;
  }
  std::string Dir(const std::string& sub) const { return (root_ / sub).string(); }
  std::filesystem::path root_;
};

TEST_F(SnapshotEntryTest, NameComesFromTheSnapshot) {
  EXPECT_EQ(*SnapshotModelName(Dir("named")), "my-glm");
  EXPECT_EQ(*SnapshotModelName(Dir("hub/models--zai-org--GLM-Image/snapshots/abc123")),
            "zai-org/GLM-Image");
  EXPECT_EQ(*SnapshotModelName(Dir("plain-folder") + "/"), "plain-folder");
  EXPECT_EQ(SnapshotModelName(Dir("nowhere")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SnapshotEntryTest, PathEntriesTakeTheReleasedDefaultsUnlessGiven) {
  auto base = nlohmann::json::parse(PipelineConfig::DefaultJson());
  auto j = base;
  nlohmann::json entry = {{"path", Dir("named")}, {"stages", base["models"][0]["stages"]}};
  entry["defaults"] = {{"steps", 20}};
  j["models"].push_back(entry);
  auto cfg = PipelineConfig::Parse(j.dump());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const PipelineModel* m = cfg->FindModel("my-glm");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->path, Dir("named"));
  EXPECT_EQ(m->defaults.steps(), 20);
  EXPECT_EQ(m->defaults.height(), SnapshotDefaults().height());
  EXPECT_EQ(m->defaults.guidance().main().cfg_scale(),
            SnapshotDefaults().guidance().main().cfg_scale());
  EXPECT_EQ(m->limits.max_size(), SnapshotLimits().max_size());
  EXPECT_TRUE(cfg->FindModel("glm-image-tiny")->path.empty());

  // A name the stage services would not serve the snapshot under is refused, naming both.
  j["models"].back()["name"] = "other";
  auto renamed = PipelineConfig::Parse(j.dump());
  ASSERT_FALSE(renamed.ok());
  EXPECT_NE(renamed.status().message().find("'my-glm'"), std::string::npos) << renamed.status();
  // A path without a snapshot names the file it could not read.
  j["models"].back().erase("name");
  j["models"].back()["path"] = Dir("nowhere");
  auto missing = PipelineConfig::Parse(j.dump());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("model_index.json"), std::string::npos);
}

TEST_F(SnapshotEntryTest, ForSnapshotServesOneModelOnTheDefaultServices) {
  auto cfg = PipelineConfig::ForSnapshot(Dir("hub/models--zai-org--GLM-Image/snapshots/abc123"));
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_EQ(cfg->models.size(), 1u);
  EXPECT_EQ(cfg->default_model, "zai-org/GLM-Image");
  EXPECT_TRUE(cfg->models[0].FindStage("ar") != nullptr &&
              cfg->models[0].FindStage("encoder") != nullptr);
  EXPECT_EQ(cfg->services.size(), 3u);
  EXPECT_FALSE(PipelineConfig::ForSnapshot(Dir("nowhere")).ok());
}

}  // namespace
}  // namespace diffmesh
