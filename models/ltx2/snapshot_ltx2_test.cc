#include <ATen/ATen.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"
#include "models/core/weights.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/snapshot.h"

namespace diffmesh::models::ltx2 {
namespace {

namespace fs = std::filesystem;

class Ltx2SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ltx2_snapshot_test_" + std::to_string(getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// Runs the tiny model end to end: prompt → frames and waveform.
Ltx2Output Generate(const Ltx2Spec& spec) {
  auto models = BuildModels(spec);
  EXPECT_TRUE(models.ok()) << models.status();
  if (!models.ok()) return {};
  GuidanceOptions g;
  g.video = {3.0, 1.0, 3.0, 0.7};
  g.audio = {7.0, 1.0, 3.0, 0.7};
  g.stg_blocks = {1};
  auto pipeline = Ltx2Pipeline::Create(models->networks(), g);
  EXPECT_TRUE(pipeline.ok());
  const auto pos = EncodePrompts(*models, spec, {"waves on a beach at dusk"});
  const auto neg = EncodePrompts(*models, spec, {"static"});
  auto text = (*pipeline)->EncodeText(pos.prompt_embeds, pos.attention_mask, neg.prompt_embeds,
                                      neg.attention_mask);
  EXPECT_TRUE(text.ok());
  Ltx2LatentInit init;
  init.num_frames = 9;
  init.height = 64;
  init.width = 64;
  init.num_inference_steps = 3;
  init.seed = 3;
  auto state = (*pipeline)->PrepareLatents(init);
  EXPECT_TRUE(state.ok());
  EXPECT_TRUE((*pipeline)->Denoise(*state, *text).ok());
  auto out = (*pipeline)->Decode(*state);
  EXPECT_TRUE(out.ok());
  return out.ok() ? *out : Ltx2Output{};
}

TEST_F(Ltx2SnapshotTest, WrittenTinySnapshotLoadsToIdenticalOutputs) {
  auto spec = BuiltinSpec("ltx2-tiny");
  ASSERT_TRUE(spec.ok());
  ASSERT_TRUE(WriteSnapshot(*spec, dir_.string()).ok());
  // The layout: model_index.json and the sharded transformer / text encoder.
  auto index = ReadJsonFile((dir_ / "model_index.json").string());
  ASSERT_TRUE(index.ok());
  EXPECT_EQ((*index)["_class_name"], "LTX2Pipeline");
  EXPECT_EQ((*index)["text_encoder"][1], "Gemma3ForConditionalGeneration");
  EXPECT_EQ((*index)["vocoder"][1], "LTX2VocoderWithBWE");
  EXPECT_TRUE(fs::exists(dir_ / "transformer" / "diffusion_pytorch_model.safetensors.index.json"));
  EXPECT_TRUE(
      fs::exists(dir_ / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ / "text_encoder" / "model.safetensors.index.json"));

  auto read = SpecFromSnapshot(dir_.string());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->name, dir_.filename().string());  // served under its folder's name
  EXPECT_EQ(read->transformer, spec->transformer);
  EXPECT_EQ(read->max_sequence_length, spec->max_sequence_length);
  EXPECT_EQ(read->latent_upsampler, spec->latent_upsampler);  // ltx2-tiny has one

  const Ltx2Output a = Generate(*spec);
  const Ltx2Output b = Generate(*read);
  ASSERT_TRUE(a.frames.defined() && b.frames.defined());
  EXPECT_TRUE(at::equal(a.frames, b.frames));
  EXPECT_TRUE(at::equal(a.waveform, b.waveform));
  EXPECT_TRUE(at::equal(a.frames_uint8, b.frames_uint8));
}

// The stages serve a snapshot under the name the pipeline config gives it (SnapshotModelName):
// "org/name" in a Hugging Face cache folder.
TEST_F(Ltx2SnapshotTest, HubCacheSnapshotsAreServedAsOrgSlashName) {
  auto spec = BuiltinSpec("ltx2-tiny");
  ASSERT_TRUE(spec.ok());
  const fs::path dir = dir_ / "models--Lightricks--LTX-2.3" / "snapshots" / "0123abcd";
  ASSERT_TRUE(WriteSnapshot(*spec, dir.string(), {.num_shards = 1}).ok());
  auto read = SpecFromSnapshot(dir.string());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->name, "Lightricks/LTX-2.3");
}

TEST_F(Ltx2SnapshotTest, Bf16SnapshotLoads) {
  auto spec = BuiltinSpec("ltx2-tiny");
  ASSERT_TRUE(spec.ok());
  ASSERT_TRUE(
      WriteSnapshot(*spec, dir_.string(), {.dtype = DType::kBFloat16, .num_shards = 1}).ok());
  auto ckpt = Checkpoint::Open((dir_ / "transformer").string());
  ASSERT_TRUE(ckpt.ok());
  EXPECT_EQ((*ckpt)->Find("proj_in.weight")->dtype, DType::kBFloat16);
  auto read = SpecFromSnapshot(dir_.string());
  ASSERT_TRUE(read.ok()) << read.status();
  auto transformer = BuildTransformer(*read);
  ASSERT_TRUE(transformer.ok()) << transformer.status();
}

// Each check fails before any network is built, naming the tensor and the file.
TEST_F(Ltx2SnapshotTest, BadCheckpointsAreNamed) {
  auto spec = BuiltinSpec("ltx2-tiny");
  ASSERT_TRUE(spec.ok());
  ASSERT_TRUE(WriteSnapshot(*spec, dir_.string(), {.num_shards = 1}).ok());
  const std::string vae_file = (dir_ / "vae" / "diffusion_pytorch_model.safetensors").string();
  auto original = SafetensorsFile::Open(vae_file);
  ASSERT_TRUE(original.ok());
  std::map<std::string, OwnedTensor> tensors;
  for (const auto& [name, view] : (*original)->tensors()) {
    tensors[name] = OwnedTensor{view.dtype, view.shape,
                                std::string(reinterpret_cast<const char*>(view.data), view.nbytes)};
  }
  original->reset();
  auto rewrite = [&](std::map<std::string, OwnedTensor> t) {
    ASSERT_TRUE(WriteSafetensors(vae_file, t).ok());
  };
  const std::string victim = tensors.begin()->first;

  {  // Missing tensor.
    auto t = tensors;
    t.erase(victim);
    rewrite(t);
    auto s = SpecFromSnapshot(dir_.string()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
    EXPECT_NE(std::string(s.message()).find(victim), std::string::npos) << s;
    EXPECT_NE(std::string(s.message()).find(vae_file), std::string::npos) << s;
  }
  {  // Wrong shape.
    auto t = tensors;
    t[victim].shape.push_back(1);
    rewrite(t);
    auto s = SpecFromSnapshot(dir_.string()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.message()).find(victim), std::string::npos) << s;
    EXPECT_NE(std::string(s.message()).find(vae_file), std::string::npos) << s;
  }
  {  // Integer dtype.
    auto t = tensors;
    t[victim].dtype = DType::kInt32;
    rewrite(t);
    auto s = SpecFromSnapshot(dir_.string()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.message()).find("dtype"), std::string::npos) << s;
  }
  {  // Unexpected tensor (an encoder tensor would be ignored).
    auto t = tensors;
    t["decoder.extra.weight"] = t[victim];
    t["encoder.conv_in.conv.weight"] = t[victim];
    rewrite(t);
    auto s = SpecFromSnapshot(dir_.string()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.message()).find("decoder.extra.weight"), std::string::npos) << s;
  }
  rewrite(tensors);
  EXPECT_TRUE(SpecFromSnapshot(dir_.string()).ok());
  // A missing shard named by the index.
  auto spec2 = BuiltinSpec("ltx2-tiny");
  const fs::path sharded = dir_ / "sharded";
  ASSERT_TRUE(WriteSnapshot(*spec2, sharded.string()).ok());
  fs::remove(sharded / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors");
  auto s = SpecFromSnapshot(sharded.string()).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("00001-of-00002"), std::string::npos) << s;
  // Not an LTX2Pipeline.
  std::ofstream(sharded / "model_index.json") << R"({"_class_name": "GlmImagePipeline"})";
  s = SpecFromSnapshot(sharded.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("model_index.json"), std::string::npos) << s;
}

TEST(Ltx2SpecTest, BuiltinsAndTokenizer) {
  EXPECT_EQ(BuiltinModelNames(),
            (std::vector<std::string>{"ltx2-tiny", "ltx2.3-release-random"}));
  EXPECT_EQ(BuiltinSpec("ltx2-huge").status().code(), absl::StatusCode::kNotFound);
  auto spec = BuiltinSpec("ltx2-tiny");
  ASSERT_TRUE(spec.ok());
  auto tok = BuildTokenizer(*spec);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // Byte fallback: every byte its own id 4 + b.
  const std::vector<int> ids = (*tok)->Encode("Az\xC3\xA9");
  EXPECT_EQ(ids, (std::vector<int>{4 + 'A', 4 + 'z', 4 + 0xC3, 4 + 0xA9}));
  const PromptTokens pt = (*tok)->EncodePrompts({"hi"}, spec->max_sequence_length);
  EXPECT_EQ(pt.max_length, spec->max_sequence_length);
  EXPECT_EQ(pt.input_ids.back(), 4 + 'i');
  EXPECT_EQ(pt.input_ids[pt.input_ids.size() - 3], (*tok)->bos_id());
}

}  // namespace
}  // namespace diffmesh::models::ltx2
