#include "models/glm_image/snapshot.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/glm_image/ar_prompt.h"
#include "models/glm_image/bpe_tokenizer.h"
#include "models/glm_image/glm_image_spec.h"

namespace diffmesh::models::glm_image {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Snapshots of the built-in tiny model, written once for the suite: sharded as the release
// (fp32, so that loads are bit-identical to the seeded model), one file per component, and
// sharded in bf16.
class SnapshotTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("diffmesh_snapshot_test_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    auto tiny = BuiltinSpec("glm-image-tiny");
    ASSERT_TRUE(tiny.ok());
    builtin_ = new GlmImageSpec(*tiny);
    ASSERT_TRUE(WriteSnapshot(*builtin_, Sharded()).ok());
    SnapshotWriteOptions single;
    single.sharded = false;
    ASSERT_TRUE(WriteSnapshot(*builtin_, SingleFile(), single).ok());
    SnapshotWriteOptions bf16;
    bf16.dtype = DType::kBFloat16;
    ASSERT_TRUE(WriteSnapshot(*builtin_, Bf16(), bf16).ok());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete builtin_;
  }

  static std::string Sharded() { return (*root_ / "sharded" / "glm-image-tiny").string(); }
  static std::string SingleFile() { return (*root_ / "single" / "glm-image-tiny").string(); }
  static std::string Bf16() { return (*root_ / "bf16" / "glm-image-tiny").string(); }

  // A fresh copy of the sharded snapshot to break.
  static std::string Copy(const std::string& name) {
    const fs::path dst = *root_ / "broken" / name;
    fs::remove_all(dst);
    fs::create_directories(dst.parent_path());
    fs::copy(Sharded(), dst, fs::copy_options::recursive);
    return dst.string();
  }

  static GlmImageSpec Load(const std::string& dir) {
    auto spec = SpecFromSnapshot(dir);
    EXPECT_TRUE(spec.ok()) << spec.status();
    return spec.ok() ? *spec : GlmImageSpec();
  }

  static fs::path* root_;
  static GlmImageSpec* builtin_;
};
fs::path* SnapshotTest::root_ = nullptr;
GlmImageSpec* SnapshotTest::builtin_ = nullptr;

// Reads a safetensors file, lets `edit` change its tensors and writes it back.
void RewriteShard(const std::string& path,
                  const std::function<void(std::map<std::string, OwnedTensor>&)>& edit) {
  std::map<std::string, OwnedTensor> tensors;
  {
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    for (const auto& [name, v] : (*file)->tensors()) {
      tensors[name] = {v.dtype, v.shape,
                       std::string(reinterpret_cast<const char*>(v.data), v.nbytes)};
    }
  }
  edit(tensors);
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
}

// The shard of `component_dir` that the index puts `tensor` in.
std::string ShardOf(const std::string& component_dir, const std::string& index_name,
                    const std::string& tensor) {
  std::ifstream in(fs::path(component_dir) / index_name);
  json index = json::parse(in);
  return (fs::path(component_dir) / index["weight_map"][tensor].get<std::string>()).string();
}

DitInputs SmallDitInputs() {
  at::manual_seed(7);
  DitInputs in;
  in.hidden_states = at::randn({1, 16, 8, 8});                  // 4 × 4 patches
  in.encoder_hidden_states = at::randn({1, 3, 64});             // glyph embeddings
  in.prior_token_id = at::randint(0, 256, {1, 16}, at::kLong);  // VQ ids
  in.prior_token_drop = at::zeros({1, 16}, at::kBool);
  in.timestep = at::full({1}, 499.0);
  in.target_size = at::full({1, 2}, 64.0);
  in.crop_coords = at::zeros({1, 2});
  return in;
}

void ExpectSameWeights(const WeightMap& a, const WeightMap& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name;
    EXPECT_EQ(t.sizes(), it->second.sizes()) << name;
    EXPECT_TRUE(at::equal(t, it->second)) << name;
  }
}

TEST_F(SnapshotTest, WritesTheReleaseLayout) {
  const fs::path dir(Sharded());
  for (const char* f : {"model_index.json",
                        "transformer/config.json",
                        "transformer/diffusion_pytorch_model.safetensors.index.json",
                        "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
                        "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
                        "vae/config.json",
                        "vae/diffusion_pytorch_model.safetensors",
                        "text_encoder/config.json",
                        "text_encoder/model.safetensors",
                        "vision_language_encoder/config.json",
                        "vision_language_encoder/generation_config.json",
                        "vision_language_encoder/model.safetensors.index.json",
                        "vision_language_encoder/model-00001-of-00004.safetensors",
                        "vision_language_encoder/model-00004-of-00004.safetensors",
                        "scheduler/scheduler_config.json",
                        "processor/tokenizer.json",
                        "processor/tokenizer_config.json",
                        "processor/chat_template.jinja",
                        "processor/preprocessor_config.json",
                        "tokenizer/tokenizer_config.json",
                        "tokenizer/special_tokens_map.json"}) {
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  }
  EXPECT_FALSE(fs::exists(dir / "transformer/diffusion_pytorch_model-00004-of-00003.safetensors"));
  // The index names every parameter, and every shard is non-empty.
  std::ifstream in(dir / "vision_language_encoder/model.safetensors.index.json");
  json index = json::parse(in);
  auto ar = ArConfig::FromJson(builtin_->vision_language_encoder);
  ASSERT_TRUE(ar.ok());
  EXPECT_EQ(index["weight_map"].size(), ArModel::Params(*ar).size());
  std::set<std::string> shards;
  for (const auto& [name, file] : index["weight_map"].items()) {
    shards.insert(file.get<std::string>());
  }
  EXPECT_EQ(shards.size(), 4u);
  EXPECT_GT(index["metadata"]["total_size"].get<int64_t>(), 0);
  EXPECT_TRUE(
      fs::exists(fs::path(SingleFile()) / "transformer/diffusion_pytorch_model.safetensors"));
  EXPECT_FALSE(fs::exists(fs::path(SingleFile()) /
                          "transformer/diffusion_pytorch_model.safetensors.index.json"));
}

TEST_F(SnapshotTest, SpecRoundTrips) {
  GlmImageSpec spec = Load(Sharded());
  EXPECT_EQ(spec.name, "glm-image-tiny");
  EXPECT_EQ(spec.dir, Sharded());
  EXPECT_EQ(spec.transformer, builtin_->transformer);
  EXPECT_EQ(spec.vae, builtin_->vae);
  EXPECT_EQ(spec.text_encoder, builtin_->text_encoder);
  EXPECT_EQ(spec.vision_language_encoder, builtin_->vision_language_encoder);
  EXPECT_EQ(spec.scheduler, builtin_->scheduler);
  EXPECT_TRUE(spec.byte_tokens);
  EXPECT_EQ(spec.ar_tokenizer_json, (fs::path(Sharded()) / "processor/tokenizer.json").string());
  EXPECT_EQ(spec.tokenizer.byte_offset, builtin_->tokenizer.byte_offset);
  EXPECT_EQ(spec.tokenizer.grid_bos_id, builtin_->tokenizer.grid_bos_id);
  EXPECT_EQ(spec.tokenizer.grid_eos_id, builtin_->tokenizer.grid_eos_id);
  EXPECT_EQ(spec.tokenizer.bos_id, builtin_->tokenizer.bos_id);
  EXPECT_EQ(spec.tokenizer.max_prompt_tokens, builtin_->tokenizer.max_prompt_tokens);
  EXPECT_EQ(spec.sampling.temperature, builtin_->sampling.temperature);
  EXPECT_EQ(spec.sampling.top_p, builtin_->sampling.top_p);
  EXPECT_EQ(spec.sampling.top_k, builtin_->sampling.top_k);
  EXPECT_TRUE(ValidateSnapshot(spec).ok()) << ValidateSnapshot(spec);

  auto resolved = ResolveSpec("ignored", Sharded());
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(resolved->dir, Sharded());
  EXPECT_TRUE(ResolveSpec("glm-image-tiny", "")->dir.empty());
}

TEST_F(SnapshotTest, NameOfAHuggingFaceCacheFolder) {
  const fs::path cache = *root_ / "hub" / "models--zai-org--GLM-Image" / "snapshots";
  fs::create_directories(cache);
  fs::create_directory_symlink(Sharded(), cache / "0123abcd");
  auto spec = SpecFromSnapshot((cache / "0123abcd").string() + "/");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, "zai-org/GLM-Image");
}

TEST_F(SnapshotTest, DitEqualsTheBuiltinModel) {
  auto builtin = BuildDit(*builtin_);
  auto loaded = BuildDit(Load(Sharded()));
  auto single = BuildDit(Load(SingleFile()));
  ASSERT_TRUE(builtin.ok() && loaded.ok() && single.ok()) << loaded.status() << single.status();
  const DitInputs in = SmallDitInputs();
  at::Tensor expected = (*builtin)->Forward(in);
  EXPECT_TRUE(at::equal((*loaded)->Forward(in), expected));
  EXPECT_TRUE(at::equal((*single)->Forward(in), expected));
  ExpectSameWeights((*loaded)->weights(), (*builtin)->weights());
}

TEST_F(SnapshotTest, TensorParallelRanksReadTheirSlices) {
  auto config = DitConfig::FromJson(builtin_->transformer);
  ASSERT_TRUE(config.ok());
  for (int tp : {2, 4}) {
    for (int rank = 0; rank < tp; ++rank) {
      // The reference: the full seeded weights, sliced by GlmImageDit::Create.
      auto full = BuildDit(*builtin_, at::kFloat, {rank, tp});
      auto sliced = BuildDit(Load(Sharded()), at::kFloat, {rank, tp});
      ASSERT_TRUE(full.ok() && sliced.ok()) << sliced.status();
      ExpectSameWeights((*sliced)->weights(), (*full)->weights());
      EXPECT_EQ((*sliced)->weights().at("transformer_blocks.0.ff.net.2.weight").size(1),
                4 * config->inner_dim() / tp);
    }
  }
  auto odd = BuildDit(Load(Sharded()), at::kFloat, {0, 3});  // 4 heads do not split 3 ways
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SnapshotTest, VaeDecoderEqualsTheBuiltinModel) {
  auto builtin = BuildVaeDecoder(*builtin_);
  auto loaded = BuildVaeDecoder(Load(Sharded()));
  ASSERT_TRUE(builtin.ok() && loaded.ok()) << loaded.status();
  at::manual_seed(3);
  at::Tensor z = at::randn({1, 16, 4, 4});
  EXPECT_TRUE(at::equal((*loaded)->DecodeNormalized(z), (*builtin)->DecodeNormalized(z)));
}

TEST_F(SnapshotTest, TextEncoderEqualsTheBuiltinModel) {
  auto builtin = BuildTextEncoder(*builtin_);
  auto loaded = BuildTextEncoder(Load(Sharded()));
  ASSERT_TRUE(builtin.ok() && loaded.ok()) << loaded.status();
  const std::vector<std::string> prompts = {"a sign that says \"OPEN\" and 'late'"};
  EXPECT_TRUE(at::equal((*loaded)->EncodeGlyphs(prompts), (*builtin)->EncodeGlyphs(prompts)));
}

TEST_F(SnapshotTest, TextEncoderAcceptsTheTiedEmbeddingName) {
  const std::string dir = Copy("tied");
  const std::string file = dir + "/text_encoder/model.safetensors";
  RewriteShard(file, [](std::map<std::string, OwnedTensor>& t) {
    t["encoder.embed_tokens.weight"] = t.at("shared.weight");
  });
  auto both = BuildTextEncoder(Load(dir));
  ASSERT_TRUE(both.ok()) << both.status();
  RewriteShard(file, [](std::map<std::string, OwnedTensor>& t) { t.erase("shared.weight"); });
  auto renamed = BuildTextEncoder(Load(dir));
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  auto builtin = BuildTextEncoder(*builtin_);
  const std::vector<std::string> prompts = {"\"tied\""};
  EXPECT_TRUE(at::equal((*renamed)->EncodeGlyphs(prompts), (*builtin)->EncodeGlyphs(prompts)));
}

TEST_F(SnapshotTest, ArModelEqualsTheBuiltinModel) {
  auto builtin = BuildArModel(*builtin_);
  auto loaded = BuildArModel(Load(Sharded()));
  auto single = BuildArModel(Load(SingleFile()));
  ASSERT_TRUE(builtin.ok() && loaded.ok() && single.ok()) << loaded.status() << single.status();
  at::Tensor ids = at::arange(320, 340, at::kLong).unsqueeze(0);  // byte tokens
  auto expected = (*builtin)->Forward(ids);
  auto got = (*loaded)->Forward(ids);
  auto got_single = (*single)->Forward(ids);
  ASSERT_TRUE(expected.ok() && got.ok() && got_single.ok());
  EXPECT_TRUE(at::equal(*got, *expected));
  EXPECT_TRUE(at::equal(*got_single, *expected));
}

TEST_F(SnapshotTest, Bf16SnapshotLoadsAsTheRoundedWeights) {
  const GlmImageSpec spec = Load(Bf16());
  auto builtin = BuildDit(*builtin_);
  auto as_fp32 = BuildDit(spec, at::kFloat);
  auto as_bf16 = BuildDit(spec, at::kBFloat16);
  ASSERT_TRUE(builtin.ok() && as_fp32.ok() && as_bf16.ok()) << as_fp32.status();
  EXPECT_EQ((*as_bf16)->dtype(), at::kBFloat16);
  for (const auto& [name, t] : (*builtin)->weights()) {
    const at::Tensor rounded = t.to(at::kBFloat16);
    EXPECT_TRUE(at::equal((*as_bf16)->weights().at(name), rounded)) << name;
    EXPECT_TRUE(at::equal((*as_fp32)->weights().at(name), rounded.to(at::kFloat))) << name;
  }
}

TEST_F(SnapshotTest, MissingTensorIsNamed) {
  const std::string dir = Copy("missing");
  const std::string tdir = dir + "/transformer";
  const std::string name = "transformer_blocks.1.attn1.to_k.weight";
  RewriteShard(ShardOf(tdir, "diffusion_pytorch_model.safetensors.index.json", name),
               [&](std::map<std::string, OwnedTensor>& t) { t.erase(name); });
  auto dit = BuildDit(Load(dir));
  ASSERT_EQ(dit.status().code(), absl::StatusCode::kNotFound) << dit.status();
  EXPECT_NE(dit.status().message().find("'" + name + "'"), std::string::npos) << dit.status();
  EXPECT_NE(dit.status().message().find(tdir), std::string::npos) << dit.status();
  EXPECT_FALSE(ValidateSnapshot(Load(dir)).ok());
}

TEST_F(SnapshotTest, MisshapedTensorIsNamedWithItsFile) {
  const std::string dir = Copy("shape");
  const std::string adir = dir + "/vision_language_encoder";
  const std::string name = "model.language_model.layers.1.mlp.down_proj.weight";
  const std::string shard = ShardOf(adir, "model.safetensors.index.json", name);
  RewriteShard(shard, [&](std::map<std::string, OwnedTensor>& t) {
    OwnedTensor& x = t.at(name);
    x.shape = {x.shape[1], x.shape[0]};  // transposed
  });
  auto ar = BuildArModel(Load(dir));
  ASSERT_EQ(ar.status().code(), absl::StatusCode::kInvalidArgument) << ar.status();
  EXPECT_NE(ar.status().message().find("'" + name + "'"), std::string::npos) << ar.status();
  EXPECT_NE(ar.status().message().find(shard), std::string::npos) << ar.status();
  EXPECT_NE(ar.status().message().find("shape"), std::string::npos) << ar.status();
}

TEST_F(SnapshotTest, NonFloatingTensorIsNamedWithItsFile) {
  const std::string dir = Copy("dtype");
  const std::string file = dir + "/vae/diffusion_pytorch_model.safetensors";
  RewriteShard(file, [&](std::map<std::string, OwnedTensor>& t) {
    t.at("decoder.conv_in.bias").dtype = DType::kInt32;
  });
  auto vae = BuildVaeDecoder(Load(dir));
  ASSERT_EQ(vae.status().code(), absl::StatusCode::kInvalidArgument) << vae.status();
  EXPECT_NE(vae.status().message().find("'decoder.conv_in.bias'"), std::string::npos)
      << vae.status();
  EXPECT_NE(vae.status().message().find(file), std::string::npos) << vae.status();
}

TEST_F(SnapshotTest, UnexpectedTensorIsNamedWithItsFile) {
  const std::string dir = Copy("unexpected");
  const std::string shard = dir + "/transformer/diffusion_pytorch_model-00002-of-00003.safetensors";
  RewriteShard(shard, [](std::map<std::string, OwnedTensor>& t) {
    t["transformer_blocks.0.attn1.norm_q.weight"] = {DType::kFloat32, {2}, std::string(8, '\0')};
  });
  auto dit = BuildDit(Load(dir));
  ASSERT_EQ(dit.status().code(), absl::StatusCode::kInvalidArgument) << dit.status();
  EXPECT_NE(dit.status().message().find(
                "unexpected parameter 'transformer_blocks.0.attn1.norm_q.weight'"),
            std::string::npos)
      << dit.status();
  EXPECT_NE(dit.status().message().find(shard), std::string::npos) << dit.status();
  // The encoder half of the VAE and the AR model's vision tower are skipped, not unexpected.
  EXPECT_TRUE(BuildVaeDecoder(Load(dir)).ok());
}

TEST_F(SnapshotTest, TruncatedShardIsNamed) {
  const std::string dir = Copy("truncated");
  const std::string shard = dir + "/transformer/diffusion_pytorch_model-00003-of-00003.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 100);
  auto dit = BuildDit(Load(dir));
  ASSERT_EQ(dit.status().code(), absl::StatusCode::kDataLoss) << dit.status();
  EXPECT_NE(dit.status().message().find(shard), std::string::npos) << dit.status();
  fs::resize_file(shard, 5);  // not even a header length
  dit = BuildDit(Load(dir));
  ASSERT_EQ(dit.status().code(), absl::StatusCode::kDataLoss) << dit.status();
  EXPECT_NE(dit.status().message().find(shard), std::string::npos) << dit.status();
}

TEST_F(SnapshotTest, MissingConfigIsNamed) {
  const std::string dir = Copy("config");
  fs::remove(dir + "/transformer/config.json");
  auto spec = SpecFromSnapshot(dir);
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kNotFound) << spec.status();
  EXPECT_NE(spec.status().message().find(dir + "/transformer/config.json"), std::string::npos)
      << spec.status();

  std::ofstream(dir + "/transformer/config.json") << R"({"num_layers": "two"})";
  spec = SpecFromSnapshot(dir);
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << spec.status();
  EXPECT_NE(spec.status().message().find(dir + "/transformer/config.json"), std::string::npos)
      << spec.status();

  fs::remove(dir + "/model_index.json");
  spec = SpecFromSnapshot(dir);
  EXPECT_NE(spec.status().message().find(dir + "/model_index.json"), std::string::npos)
      << spec.status();
  EXPECT_EQ(SpecFromSnapshot(dir + "/nowhere").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SnapshotTest, IndexNamingAMissingShardIsNamed) {
  const std::string dir = Copy("shard");
  const std::string shard = dir + "/vision_language_encoder/model-00002-of-00004.safetensors";
  fs::remove(shard);
  auto ar = BuildArModel(Load(dir));
  ASSERT_EQ(ar.status().code(), absl::StatusCode::kNotFound) << ar.status();
  EXPECT_NE(ar.status().message().find(shard), std::string::npos) << ar.status();
}

// The written processor/tokenizer.json is a standard tokenizer.json: the BPE tokenizer reads it
// and encodes the AR prompt (text, grid specials, bos) to the ids the byte tokenizer builds.
TEST_F(SnapshotTest, WrittenTokenizerJsonEncodesPromptsAsTheByteTokens) {
  const GlmImageSpec spec = Load(Sharded());
  auto bpe = BpeTokenizer::FromFile(spec.ar_tokenizer_json);
  ASSERT_TRUE(bpe.ok()) << bpe.status();
  const std::string text = "a red \"SALE\" sign, 50% off — «très» 日本 \n\t end ";
  auto prompt = BuildTextToImagePrompt(spec.tokenizer, text, 256, 192);
  ASSERT_TRUE(prompt.ok());
  auto bos = (*bpe)->IdToToken(spec.tokenizer.bos_id);
  ASSERT_TRUE(bos.has_value());
  const std::string expanded = text + "<sop>8 6<eop><sop>18 13<eop>" + *bos;
  auto ids = (*bpe)->Encode(expanded, /*add_special_tokens=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, prompt->ids);
  EXPECT_EQ((*bpe)->Decode(*ids), expanded);

  // The AR stage's loader of real tokenizers reads the same files to the same prompt.
  auto text_tokenizer = LoadArTextTokenizer((fs::path(Sharded()) / "processor").string());
  ASSERT_TRUE(text_tokenizer.ok()) << text_tokenizer.status();
  auto via_bpe = BuildTextToImagePrompt(*text_tokenizer, text, 256, 192);
  ASSERT_TRUE(via_bpe.ok()) << via_bpe.status();
  EXPECT_EQ(via_bpe->ids, prompt->ids);
}

TEST_F(SnapshotTest, RealBpeTokenizerIsNotTakenForBytes) {
  const std::string dir = Copy("bpe");
  const fs::path path = fs::path(dir) / "processor/tokenizer.json";
  json tok;
  {
    std::ifstream in(path);
    tok = json::parse(in);
  }
  tok["model"]["merges"] = json::array({"Ġ t"});
  std::ofstream(path) << tok.dump();
  GlmImageSpec spec = Load(dir);
  EXPECT_FALSE(spec.byte_tokens);
  EXPECT_EQ(spec.tokenizer.grid_bos_id, builtin_->tokenizer.grid_bos_id);  // specials still read
}

}  // namespace
}  // namespace diffmesh::models::glm_image
