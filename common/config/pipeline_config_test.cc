#include "common/config/pipeline_config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

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
  ASSERT_EQ(cfg->models.size(), 3u);  // and ltx2.3-release-random (CUDA only)
  EXPECT_EQ(cfg->default_model, "glm-image-tiny");
  const PipelineModel* m = cfg->FindModel("ltx2-tiny");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->kind, ModelKind::kVideoWithAudio);
  EXPECT_EQ(m->input_roles, std::vector<v1::MediaRole>{v1::MEDIA_ROLE_FIRST_FRAME});
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

TEST(PipelineConfigTest, KeepModelsLeavesTheNamedOnes) {
  auto cfg = PipelineConfig::Parse(PipelineConfig::DefaultJson());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_TRUE(cfg->KeepModels({"ltx2-tiny"}).ok());
  ASSERT_EQ(cfg->models.size(), 1u);
  EXPECT_EQ(cfg->models[0].name, "ltx2-tiny");
  EXPECT_EQ(cfg->default_model, "ltx2-tiny");  // the old default is gone
  absl::Status s = cfg->KeepModels({"glm-image-tiny"});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find("'glm-image-tiny' is not in the pipeline (it has: ltx2-tiny)"),
            std::string::npos)
      << s;
  EXPECT_EQ(cfg->KeepModels({}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PipelineConfigTest, TwoStageGraphReadsItsStageParameters) {
  auto cfg = PipelineConfig::Load(DIFFMESH_LTX2_TWO_STAGE_CONFIG);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const PipelineModel* m = cfg->FindModel("ltx2-tiny");
  ASSERT_NE(m, nullptr);
  ASSERT_EQ(m->stages.size(), 5u);
  const StageSpec* half = m->FindStage("denoise_half");
  const StageSpec* up = m->FindStage("upsample");
  const StageSpec* full = m->FindStage("denoise_full");
  ASSERT_TRUE(half != nullptr && up != nullptr && full != nullptr);
  EXPECT_EQ(half->size_divisor, 2);
  EXPECT_TRUE(half->sigmas.empty());
  EXPECT_FALSE(half->unguided);
  EXPECT_EQ(up->kind, "upsample");
  EXPECT_EQ(up->inputs, (std::vector<std::string>{"denoise_half"}));
  EXPECT_EQ(full->size_divisor, 1);
  EXPECT_EQ(full->sigmas, (std::vector<double>{0.909375, 0.725, 0.421875}));
  EXPECT_DOUBLE_EQ(full->noise_scale, 0.909375);
  EXPECT_TRUE(full->unguided);
  EXPECT_EQ(full->inputs, (std::vector<std::string>{"encoder", "upsample"}));
  const StageSpec* decode = m->FindStage("vae_decode");
  ASSERT_NE(decode, nullptr);
  EXPECT_EQ(decode->kind, "decode");
  EXPECT_EQ(decode->inputs, (std::vector<std::string>{"denoise_full"}));
  // Stage 1 runs at half size: every size must halve to the model's 32, so the model's rule,
  // as ListModels and the validator state it, is 64.
  EXPECT_EQ(m->limits.size_granularity(), 64);
  EXPECT_EQ(m->limits.min_size(), 64);

  std::ifstream in(DIFFMESH_LTX2_TWO_STAGE_CONFIG);
  const auto base = nlohmann::json::parse(in);
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, nlohmann::json>>{{"sigmas", nlohmann::json::array({0.5})},
                                                           {"size_divisor", 2},
                                                           {"adain_factor", 0.5},
                                                           {"lora", {{"name", "distilled"}}}}) {
    auto j = base;
    j["models"][0]["stages"][0][key] = value;  // not a field of an encoder stage
    auto parsed = PipelineConfig::Parse(j.dump());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_NE(parsed.status().message().find(key), std::string::npos) << parsed.status();
  }
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"sigmas", nlohmann::json::array({1.5})}, {"size_divisor", 0}, {"noise_scale", -0.1}}) {
    auto j = base;
    j["models"][0]["stages"][1][key] = value;  // denoise_half
    auto parsed = PipelineConfig::Parse(j.dump());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_NE(parsed.status().message().find(key), std::string::npos) << parsed.status();
  }
  // A LoRA adapter by name, strength 1 unless given; malformed entries name the field.
  EXPECT_TRUE(full->lora.empty());
  for (const auto& [lora, strength] : std::vector<std::pair<nlohmann::json, double>>{
           {{{"name", "distilled"}}, 1.0}, {{{"name", "distilled"}, {"strength", 0.25}}, 0.25}}) {
    auto j = base;
    j["models"][0]["stages"][3]["lora"] = lora;  // denoise_full
    auto parsed = PipelineConfig::Parse(j.dump());
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    const StageSpec* stage = parsed->FindModel("ltx2-tiny")->FindStage("denoise_full");
    EXPECT_EQ(stage->lora, "distilled");
    EXPECT_DOUBLE_EQ(stage->lora_strength, strength);
  }
  for (const nlohmann::json& lora :
       {nlohmann::json("distilled"), nlohmann::json{{"strength", 1.0}},
        nlohmann::json{{"name", ""}}, nlohmann::json{{"name", "d"}, {"scale", 1.0}},
        nlohmann::json{{"name", "d"}, {"strength", "high"}}}) {
    auto j = base;
    j["models"][0]["stages"][3]["lora"] = lora;
    auto parsed = PipelineConfig::Parse(j.dump());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << lora.dump();
    EXPECT_NE(parsed.status().message().find("lora"), std::string::npos) << parsed.status();
  }

  auto j = base;
  j["models"][0]["defaults"]["width"] = 96;  // a multiple of 32, not of 64
  auto parsed = PipelineConfig::Parse(j.dump());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("default size 96 is not a multiple of 64"),
            std::string::npos)
      << parsed.status();
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
    Write(root_ / "named" / "model_index.json",
          R"({"_class_name": "GlmImagePipeline", "_name_or_path": "my-glm"})");
    Write(root_ / "hub" / "models--zai-org--GLM-Image" / "snapshots" / "abc123" / "model_index.json",
          R"({"_class_name": "GlmImagePipeline"})");
    Write(root_ / "plain-folder" / "model_index.json",
          R"({"_class_name": "GlmImagePipeline", "_name_or_path": ""})");
    // An LTX2Pipeline's configs, as far as the pipeline entry reads them (LTX-2.3-style flags,
    // a ×16 VAE and 2x2 patches so no number below is a constant of the code).
    const std::filesystem::path ltx = root_ / "ltx";
    for (const char* sub : {"vae", "transformer", "scheduler"}) {
      std::filesystem::create_directories(ltx / sub);
    }
    Write(ltx / "model_index.json", R"({"_class_name": "LTX2Pipeline", "_name_or_path": "ltx"})");
    Write(ltx / "vae" / "config.json",
          R"({"spatial_compression_ratio": 16, "temporal_compression_ratio": 4})");
    Write(ltx / "transformer" / "config.json",
          R"({"patch_size": 2, "patch_size_t": 1, "base_height": 1000, "base_width": 1536,
              "pos_embed_max_pos": 10, "num_layers": 6, "gated_attn": true,
              "perturbed_attn": true})");
    Write(ltx / "scheduler" / "scheduler_config.json", R"({"num_train_timesteps": 500})");
    std::filesystem::create_directories(root_ / "other");
    Write(root_ / "other" / "model_index.json", R"({"_class_name": "FluxPipeline"})");
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

TEST_F(SnapshotEntryTest, Ltx2SnapshotTakesItsLimitsAndDefaultsFromItsConfigs) {
  auto cfg = PipelineConfig::ForSnapshot(Dir("ltx"));
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_EQ(cfg->models.size(), 1u);
  const PipelineModel& m = cfg->models[0];
  EXPECT_EQ(m.name, "ltx");
  EXPECT_EQ(m.kind, ModelKind::kVideoWithAudio);
  EXPECT_EQ(m.input_roles, std::vector<v1::MediaRole>{v1::MEDIA_ROLE_FIRST_FRAME});  // I2V
  ASSERT_EQ(m.stages.size(), 3u);  // encoder → denoise → decode, no AR
  EXPECT_EQ(m.stages[0].kind, "encoder");
  EXPECT_EQ(m.stages[1].kind, "denoise");
  EXPECT_EQ(m.stages[1].inputs, std::vector<std::string>{"encoder"});
  EXPECT_EQ(m.stages[2].kind, "decode");
  EXPECT_EQ(m.stages[2].inputs, std::vector<std::string>{"denoise"});
  // 16 × 2 pixels per token; sizes up to the RoPE base (1000 → 992); 4k+1 frames within
  // 10 s at 24 fps; steps up to the scheduler's training timesteps.
  EXPECT_EQ(m.limits.size_granularity(), 32);
  EXPECT_EQ(m.limits.min_size(), 32);
  EXPECT_EQ(m.limits.max_size(), 992);
  EXPECT_EQ(m.limits.frames().multiple(), 4);
  EXPECT_EQ(m.limits.frames().offset(), 1);
  EXPECT_EQ(m.limits.frames().max_frames(), 241);
  EXPECT_EQ(m.limits.max_steps(), 500);
  // The reference pipeline's defaults (LTX-2.3: 30 steps), STG clamped to the last block.
  EXPECT_EQ(m.defaults.height(), 512);
  EXPECT_EQ(m.defaults.width(), 768);
  EXPECT_EQ(m.defaults.num_frames(), 121);
  EXPECT_EQ(m.defaults.frame_rate(), 24);
  EXPECT_EQ(m.defaults.steps(), 30);
  EXPECT_EQ(m.defaults.guidance().main().cfg_scale(), 3);
  EXPECT_EQ(m.defaults.guidance().audio().cfg_scale(), 7);
  EXPECT_EQ(m.defaults.guidance().main().stg_scale(), 1);
  ASSERT_EQ(m.defaults.guidance().stg_blocks().blocks_size(), 1);
  EXPECT_EQ(m.defaults.guidance().stg_blocks().blocks(0), 5);
  EXPECT_EQ(m.defaults.output().format(), v1::OUTPUT_FORMAT_MP4);
}

TEST_F(SnapshotEntryTest, Ltx2ConfigErrorsNameTheFileAndAConfigEntryMayOverride) {
  Write(root_ / "ltx" / "transformer" / "config.json", R"({"patch_size": "two"})");
  auto bad = PipelineConfig::ForSnapshot(Dir("ltx"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("transformer/config.json"), std::string::npos)
      << bad.status();
  EXPECT_NE(bad.status().message().find("patch_size"), std::string::npos) << bad.status();

  Write(root_ / "ltx" / "transformer" / "config.json", R"({"num_layers": 2})");  // LTX-2.0
  auto base = nlohmann::json::parse(PipelineConfig::DefaultJson());
  base["models"].push_back({{"path", Dir("ltx")}, {"defaults", {{"steps", 4}}}});
  auto cfg = PipelineConfig::Parse(base.dump());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const PipelineModel* m = cfg->FindModel("ltx");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->defaults.steps(), 4);
  EXPECT_EQ(m->defaults.height(), 512);
  EXPECT_EQ(m->defaults.guidance().main().stg_scale(), 0) << "not perturbed_attn";
  EXPECT_EQ(m->defaults.guidance().stg_blocks().blocks(0), 1);
  EXPECT_EQ(m->limits.size_granularity(), 16);
  EXPECT_EQ(m->stages.size(), 3u);
}

TEST_F(SnapshotEntryTest, UnknownPipelineClassesAreRefusedNamingTheFile) {
  auto cfg = PipelineConfig::ForSnapshot(Dir("other"));
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.status().message().find("model_index.json"), std::string::npos) << cfg.status();
  EXPECT_NE(cfg.status().message().find("FluxPipeline"), std::string::npos) << cfg.status();
  EXPECT_NE(cfg.status().message().find("LTX2Pipeline"), std::string::npos) << cfg.status();
  EXPECT_EQ(*SnapshotClassName(Dir("ltx")), "LTX2Pipeline");
}

}  // namespace
}  // namespace diffmesh
