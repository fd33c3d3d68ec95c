// Run-time LoRA of the LTX-2 transformer against diffusers with the same LoRA merged into the
// weights (testdata/make_lora_ref.py), both key styles, strength handling, and the loader's
// errors.
#include "models/ltx2/lora.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/weights.h"
#include "models/ltx2/transformer.h"

namespace diffmesh::models::ltx2 {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr double kTolerance = 1e-4;

std::string TestdataDir() {
  const std::string file = __FILE__;
  return file.substr(0, file.rfind('/')) + "/testdata";
}
std::string LtxStyleFile() { return TestdataDir() + "/lora_v23_ltx.safetensors"; }
std::string DiffusersStyleFile() { return TestdataDir() + "/lora_v23_diffusers.safetensors"; }

std::unique_ptr<SafetensorsFile> OpenOrDie(const std::string& path) {
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(f).value() : nullptr;
}

at::Tensor Tensor(const SafetensorsFile& f, const std::string& name) {
  auto it = f.tensors().find(name);
  EXPECT_NE(it, f.tensors().end()) << f.path() << " lacks " << name;
  return it == f.tensors().end() ? at::Tensor() : ToTensor(it->second);
}

// The inputs of the fixture's "base" call (ltx2-ref-a/v23/transformer_io.safetensors).
Ltx2TransformerInputs FixtureInputs(const SafetensorsFile& io) {
  Ltx2TransformerInputs in;
  in.hidden_states = Tensor(io, "in.hidden_states");
  in.audio_hidden_states = Tensor(io, "in.audio_hidden_states");
  in.encoder_hidden_states = Tensor(io, "in.encoder_hidden_states");
  in.audio_encoder_hidden_states = Tensor(io, "in.audio_encoder_hidden_states");
  in.encoder_attention_mask = Tensor(io, "in.encoder_attention_mask");
  in.audio_encoder_attention_mask = in.encoder_attention_mask;
  in.timestep = Tensor(io, "in.timestep");
  in.sigma = in.timestep;
  in.video_coords = Tensor(io, "in.video_coords");
  in.audio_coords = Tensor(io, "in.audio_coords");
  return in;
}

// The reference's calls (make_lora_ref.py CALLS): base, and STG in block 1 on every row.
Ltx2ForwardOptions CallOptions(const std::string& call) {
  Ltx2ForwardOptions options;
  options.use_cross_timestep = true;
  if (call == "stg") options.stg_blocks = {1};
  return options;
}

class Ltx2LoraTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = Ltx2Transformer::FromConfig(FixturePath("ltx2-ref-a/v23/transformer"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    fixture_io_ = OpenOrDie(FixturePath("ltx2-ref-a/v23/transformer_io.safetensors"));
    ref_ = OpenOrDie(TestdataDir() + "/lora_v23_io.safetensors");
    ASSERT_TRUE(fixture_io_ != nullptr && ref_ != nullptr);
    strength_ = std::stod(ref_->metadata().at("strength"));
  }

  std::unique_ptr<Ltx2Lora> LoadLora(const std::string& path) {
    auto lora = Ltx2Lora::Load(path, model_->config(), {model_->dtype(), at::kCPU, {}});
    EXPECT_TRUE(lora.ok()) << lora.status();
    return lora.ok() ? std::move(lora).value() : nullptr;
  }

  Ltx2TransformerOutputs Run(const std::string& call, const Ltx2Lora* lora, double strength) {
    Ltx2ForwardOptions options = CallOptions(call);
    options.lora = lora;
    options.lora_strength = strength;
    auto out = model_->Forward(FixtureInputs(*fixture_io_), options);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : Ltx2TransformerOutputs{};
  }

  std::unique_ptr<Ltx2Transformer> model_;
  std::unique_ptr<SafetensorsFile> fixture_io_, ref_;
  double strength_ = 0;
};

TEST_F(Ltx2LoraTest, MatchesMergedReferenceInBothKeyStyles) {
  // Every Linear layer of the model is adapted.
  size_t linears = 0;
  for (const ParamSpec& s : Ltx2Transformer::Params(model_->config())) {
    linears += s.shape.size() == 2 && s.name.size() > 7 &&
               s.name.compare(s.name.size() - 7, 7, ".weight") == 0;
  }
  for (const std::string& file : {LtxStyleFile(), DiffusersStyleFile()}) {
    SCOPED_TRACE(file);
    std::unique_ptr<Ltx2Lora> lora = LoadLora(file);
    ASSERT_NE(lora, nullptr);
    EXPECT_EQ(lora->num_layers(), linears);
    for (const char* call : {"base", "stg"}) {
      const Ltx2TransformerOutputs out = Run(call, lora.get(), strength_);
      const at::Tensor video = Tensor(*ref_, absl::StrCat("out.", call, ".video"));
      const at::Tensor audio = Tensor(*ref_, absl::StrCat("out.", call, ".audio"));
      const double video_err = RelativeError(out.video, video);
      const double audio_err = RelativeError(out.audio, audio);
      std::printf("%s %s: video %.2e audio %.2e\n", file.substr(file.rfind('/') + 1).c_str(), call,
                  video_err, audio_err);
      EXPECT_LE(video_err, kTolerance) << call;
      EXPECT_LE(audio_err, kTolerance) << call;
      // The same model without the adapter is far from the reference: the LoRA matters.
      const Ltx2TransformerOutputs plain = Run(call, nullptr, 1.0);
      EXPECT_GT(RelativeError(plain.video, video), 100 * kTolerance) << call;
      EXPECT_GT(RelativeError(plain.audio, audio), 100 * kTolerance) << call;
    }
  }
}

TEST_F(Ltx2LoraTest, PlainCallsAfterAdaptedOnesAreUnchanged) {
  std::unique_ptr<Ltx2Lora> lora = LoadLora(LtxStyleFile());
  ASSERT_NE(lora, nullptr);
  const Ltx2TransformerOutputs before = Run("base", nullptr, 1.0);
  Run("base", lora.get(), strength_);
  const Ltx2TransformerOutputs after = Run("base", nullptr, 1.0);
  EXPECT_TRUE(at::equal(before.video, after.video));
  EXPECT_TRUE(at::equal(before.audio, after.audio));
  // Strength 0 is the plain model; the fixture's own base output.
  const Ltx2TransformerOutputs zero = Run("base", lora.get(), 0.0);
  EXPECT_TRUE(at::equal(zero.video, before.video));
  EXPECT_LE(RelativeError(zero.video, Tensor(*fixture_io_, "out.base.video")), kTolerance);
}

// Applied at another strength equals the weights merged here (W + s·scale·B·A) at that strength.
TEST_F(Ltx2LoraTest, AppliedEqualsMergedAtAnyStrength) {
  const double strength = -0.6;
  std::unique_ptr<Ltx2Lora> lora = LoadLora(LtxStyleFile());
  ASSERT_NE(lora, nullptr);
  auto checkpoint = Checkpoint::Open(FixturePath("ltx2-ref-a/v23/transformer"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const std::vector<ParamSpec> specs = Ltx2Transformer::Params(model_->config());
  auto weights = LoadWeights(**checkpoint, specs);
  ASSERT_TRUE(weights.ok()) << weights.status();
  int merged = 0;
  for (auto& [name, w] : *weights) {
    if (name.size() < 7 || name.compare(name.size() - 7, 7, ".weight") != 0) continue;
    const LoraLayer* l = lora->Find(name.substr(0, name.size() - 7));
    if (l == nullptr) continue;
    w = w + strength * l->scale * at::matmul(l->up, l->down);
    ++merged;
  }
  EXPECT_EQ(merged, static_cast<int>(lora->num_layers()));
  auto merged_model = Ltx2Transformer::Create(model_->config(), *std::move(weights));
  ASSERT_TRUE(merged_model.ok()) << merged_model.status();
  auto expected = (*merged_model)->Forward(FixtureInputs(*fixture_io_), CallOptions("base"));
  ASSERT_TRUE(expected.ok()) << expected.status();
  const Ltx2TransformerOutputs out = Run("base", lora.get(), strength);
  EXPECT_LE(RelativeError(out.video, expected->video), 1e-5);
  EXPECT_LE(RelativeError(out.audio, expected->audio), 1e-5);
}

TEST_F(Ltx2LoraTest, ForwardRejectsAdapterOfAnotherRankOrDtype) {
  auto lora = Ltx2Lora::Load(LtxStyleFile(), model_->config(), {at::kDouble, at::kCPU, {}});
  ASSERT_TRUE(lora.ok()) << lora.status();
  Ltx2ForwardOptions options = CallOptions("base");
  options.lora = lora->get();
  auto out = model_->Forward(FixtureInputs(*fixture_io_), options);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("lora_v23_ltx.safetensors"));
  auto sliced = Ltx2Lora::Load(LtxStyleFile(), model_->config(), {at::kFloat, at::kCPU, {1, 2}});
  ASSERT_TRUE(sliced.ok()) << sliced.status();
  options.lora = sliced->get();
  EXPECT_EQ(model_->Forward(FixtureInputs(*fixture_io_), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Ltx2LoraNamesTest, OriginalNamesMapAsDiffusersMapsThem) {
  EXPECT_EQ(LoraModuleName("diffusion_model.patchify_proj"), "proj_in");
  EXPECT_EQ(LoraModuleName("diffusion_model.audio_patchify_proj"), "audio_proj_in");
  EXPECT_EQ(LoraModuleName("diffusion_model.adaln_single.linear"), "time_embed.linear");
  EXPECT_EQ(LoraModuleName("diffusion_model.audio_adaln_single.emb.timestep_embedder.linear_1"),
            "audio_time_embed.emb.timestep_embedder.linear_1");
  EXPECT_EQ(LoraModuleName("diffusion_model.av_ca_a2v_gate_adaln_single.linear"),
            "av_cross_attn_video_a2v_gate.linear");
  EXPECT_EQ(LoraModuleName("diffusion_model.audio_prompt_adaln_single.linear"),
            "audio_prompt_adaln.linear");
  EXPECT_EQ(LoraModuleName("diffusion_model.prompt_adaln_single.linear"), "prompt_adaln.linear");
  EXPECT_EQ(LoraModuleName("diffusion_model.transformer_blocks.7.attn1.to_out.0"),
            "transformer_blocks.7.attn1.to_out.0");
  EXPECT_EQ(LoraModuleName("transformer.transformer_blocks.0.ff.net.2"),
            "transformer_blocks.0.ff.net.2");
  EXPECT_EQ(LoraModuleName("text_embedding_projection.aggregate_embed"), "");
}

// ---------------------------------------------------------------------------------------------
// Loader errors: each names the key and the file.

class Ltx2LoraLoadErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config =
        Ltx2TransformerConfig::FromFile(FixturePath("ltx2-ref-a/v23/transformer/config.json"));
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto file = SafetensorsFile::Open(LtxStyleFile());
    ASSERT_TRUE(file.ok()) << file.status();
    for (const auto& [name, view] : (*file)->tensors()) tensors_[name] = ToTensor(view);
    dir_ = absl::StrCat(::testing::TempDir(), "/ltx2_lora_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // `tensors_` written to a file and loaded from it.
  absl::Status Load() {
    std::map<std::string, OwnedTensor> owned;
    for (const auto& [name, t] : tensors_) {
      const at::Tensor c = t.contiguous();
      OwnedTensor o{*FromScalarType(c.scalar_type()), c.sizes().vec(),
                    std::string(c.nbytes(), '\0')};
      std::memcpy(o.bytes.data(), c.data_ptr(), c.nbytes());
      owned[name] = std::move(o);
    }
    const std::string path = dir_ + "/lora.safetensors";
    absl::Status written = WriteSafetensors(path, owned);
    if (!written.ok()) return written;
    return Ltx2Lora::Load(path, config_).status();
  }

  static void ExpectInvalid(const absl::Status& s, const std::string& key) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), AllOf(HasSubstr(key), HasSubstr("lora.safetensors"))) << s;
  }

  Ltx2TransformerConfig config_;
  std::map<std::string, at::Tensor> tensors_;
  std::string dir_;
};

TEST_F(Ltx2LoraLoadErrorTest, TheUnchangedFileLoads) { EXPECT_TRUE(Load().ok()); }

TEST_F(Ltx2LoraLoadErrorTest, LoraDownAndUpNamesLoadAsAAndB) {
  std::map<std::string, at::Tensor> renamed;
  for (const auto& [name, t] : tensors_) {
    std::string n = name;
    for (const auto& [from, to] : {std::pair<std::string, std::string>{".lora_A.", ".lora_down."},
                                   {".lora_B.", ".lora_up."}}) {
      if (const size_t at = n.find(from); at != std::string::npos) n.replace(at, from.size(), to);
    }
    renamed[n] = t;
  }
  const std::map<std::string, at::Tensor> original = tensors_;
  tensors_ = renamed;
  ASSERT_TRUE(Load().ok());
  auto a = Ltx2Lora::FromTensors(original, config_, {}, "original");
  auto b = Ltx2Lora::FromTensors(renamed, config_, {}, "renamed");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->num_layers(), (*b)->num_layers());
  const LoraLayer* la = (*a)->Find("transformer_blocks.1.audio_to_video_attn.to_out.0");
  const LoraLayer* lb = (*b)->Find("transformer_blocks.1.audio_to_video_attn.to_out.0");
  ASSERT_TRUE(la != nullptr && lb != nullptr);
  EXPECT_TRUE(at::equal(la->down, lb->down));
  EXPECT_TRUE(at::equal(la->up, lb->up));
}

TEST_F(Ltx2LoraLoadErrorTest, UnknownModule) {
  const std::string key = "diffusion_model.transformer_blocks.0.attn1.to_qq.lora_A.weight";
  tensors_[key] = at::randn({4, 32});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, LayerBeyondTheModelsBlocks) {
  const std::string key = absl::StrCat("diffusion_model.transformer_blocks.", config_.num_layers,
                                       ".attn1.to_q.lora_A.weight");
  tensors_[key] = at::randn({4, 32});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, NotALinearLayer) {
  const std::string key = "diffusion_model.transformer_blocks.0.attn1.q_norm.lora_A.weight";
  tensors_[key] = at::randn({4, 32});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, InputWidthMismatch) {
  const std::string key = "diffusion_model.transformer_blocks.1.attn2.to_k.lora_A.weight";
  const at::Tensor a = tensors_.at(key);
  tensors_[key] = at::randn({a.size(0), a.size(1) + 1});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, OutputWidthMismatch) {
  const std::string key = "diffusion_model.transformer_blocks.0.ff.net.0.proj.lora_B.weight";
  const at::Tensor b = tensors_.at(key);
  tensors_[key] = at::randn({b.size(0) - 1, b.size(1)});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, RanksDisagree) {
  const std::string key = "diffusion_model.transformer_blocks.0.audio_attn2.to_v.lora_B.weight";
  const at::Tensor b = tensors_.at(key);
  tensors_[key] = at::randn({b.size(0), b.size(1) + 1});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, MissingMatrix) {
  tensors_.erase("diffusion_model.transformer_blocks.1.video_to_audio_attn.to_q.lora_B.weight");
  ExpectInvalid(Load(), "diffusion_model.transformer_blocks.1.video_to_audio_attn.to_q");
}

TEST_F(Ltx2LoraLoadErrorTest, ConnectorKeys) {
  const std::string key = "text_embedding_projection.aggregate_embed.lora_A.weight";
  tensors_[key] = at::randn({4, 8});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, UnsupportedTensorKind) {
  const std::string key = "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.bias";
  tensors_[key] = at::randn({32});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, SameLayerInBothStyles) {
  const std::string key = "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight";
  tensors_[key] = tensors_.at("diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight");
  ExpectInvalid(Load(), "transformer_blocks.0.attn1.to_q");
}

TEST_F(Ltx2LoraLoadErrorTest, AlphaNotAScalar) {
  const std::string key = "diffusion_model.transformer_blocks.0.attn1.to_k.alpha";
  tensors_[key] = at::ones({2});
  ExpectInvalid(Load(), key);
}

TEST_F(Ltx2LoraLoadErrorTest, MissingFileNamesIt) {
  auto lora = Ltx2Lora::Load(dir_ + "/absent.safetensors", config_);
  EXPECT_FALSE(lora.ok());
  EXPECT_THAT(lora.status().message(), HasSubstr("absent.safetensors"));
}

}  // namespace
}  // namespace diffmesh::models::ltx2
