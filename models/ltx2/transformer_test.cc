#include "models/ltx2/transformer.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/config_json.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/weights.h"
#include "models/ltx2/rope.h"

namespace diffmesh::models::ltx2 {
namespace {

// Shared reference sets (diffusers 58eb52c): LTX-2.0-style and LTX-2.3-style tiny models.
const char* const kVariants[] = {"ltx2-ref-a/v20", "ltx2-ref-a/v23"};
// Reference data of this folder (make_transformer_extra.py): configurations the shared set lacks.
const char* const kExtraCases[] = {"transformer_interleaved", "transformer_split_heads"};

std::string TestdataDir() {
  const std::string file = __FILE__;
  return file.substr(0, file.rfind('/')) + "/testdata";
}

// A reference io file: its tensors by name and its metadata.
class IoFile {
 public:
  explicit IoFile(const std::string& path) {
    auto f = SafetensorsFile::Open(path);
    EXPECT_TRUE(f.ok()) << f.status();
    if (f.ok()) file_ = std::move(f).value();
  }
  bool ok() const { return file_ != nullptr; }
  at::Tensor operator[](const std::string& name) const {
    auto it = file_->tensors().find(name);
    EXPECT_NE(it, file_->tensors().end()) << "reference lacks " << name;
    return it == file_->tensors().end() ? at::Tensor() : ToTensor(it->second);
  }
  bool Has(const std::string& name) const { return file_->tensors().count(name) > 0; }
  std::string Meta(const std::string& key) const {
    auto it = file_->metadata().find(key);
    EXPECT_NE(it, file_->metadata().end()) << "reference metadata lacks " << key;
    return it == file_->metadata().end() ? "" : it->second;
  }
  int64_t MetaInt(const std::string& key) const { return std::stoll(Meta(key)); }
  double MetaDouble(const std::string& key) const { return std::stod(Meta(key)); }

 private:
  std::unique_ptr<SafetensorsFile> file_;
};

std::unique_ptr<Ltx2Transformer> LoadModel(const std::string& dir) {
  auto model = Ltx2Transformer::FromConfig(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(model).value() : nullptr;
}

// The blocks listed as `spatio_temporal_guidance_blocks=[...]` in a call description; empty
// when the description names none.
std::vector<int64_t> StgBlocks(const std::string& description) {
  std::smatch m;
  static const std::regex kList(R"(spatio_temporal_guidance_blocks=\[([0-9, ]*)\])");
  std::vector<int64_t> blocks;
  if (!std::regex_search(description, m, kList)) return blocks;
  const std::string list = m[1].str();
  static const std::regex kInt("[0-9]+");
  for (auto it = std::sregex_iterator(list.begin(), list.end(), kInt); it != std::sregex_iterator();
       ++it) {
    blocks.push_back(std::stoll(it->str()));
  }
  return blocks;
}

// The common inputs of every call of transformer_io.safetensors (its metadata
// call_common_kwargs): timestep = sigma = in.timestep, one text mask for both streams.
Ltx2TransformerInputs CommonInputs(const IoFile& io) {
  Ltx2TransformerInputs in;
  in.hidden_states = io["in.hidden_states"];
  in.audio_hidden_states = io["in.audio_hidden_states"];
  in.encoder_hidden_states = io["in.encoder_hidden_states"];
  in.audio_encoder_hidden_states = io["in.audio_encoder_hidden_states"];
  in.encoder_attention_mask = io["in.encoder_attention_mask"];
  in.audio_encoder_attention_mask = in.encoder_attention_mask;
  in.timestep = io["in.timestep"];
  in.sigma = in.timestep;
  in.video_coords = io["in.video_coords"];
  in.audio_coords = io["in.audio_coords"];
  return in;
}

// The fixture's calls (metadata `calls`), as inputs and options.
struct Call {
  std::string name;
  Ltx2TransformerInputs in;
  Ltx2ForwardOptions options;
};

std::vector<Call> FixtureCalls(const IoFile& io) {
  const nlohmann::json calls = nlohmann::json::parse(io.Meta("calls"));
  std::vector<Call> out;
  for (const auto& [name, description] : calls.items()) {
    Call c{name, CommonInputs(io), {}};
    c.options.use_cross_timestep = true;  // the pipeline's conditional call
    if (name == "stg" || name == "stg_partial") {
      // stg_partial describes only its mask: it uses the blocks of the stg call.
      c.options.stg_blocks = StgBlocks(description.get<std::string>());
      if (c.options.stg_blocks.empty())
        c.options.stg_blocks = StgBlocks(calls.value("stg", std::string()));
      EXPECT_FALSE(c.options.stg_blocks.empty()) << name << ": no STG blocks in the metadata";
      if (name == "stg_partial") c.options.perturbation_mask = io["in.perturbation_mask"];
    } else if (name == "modality") {
      c.options.isolate_modalities = true;
    } else if (name == "cross_ts" || name == "cross_ts_legacy") {
      c.in.audio_timestep = io["in.audio_timestep_cross"];
      c.in.audio_sigma = c.in.audio_timestep;
      c.options.use_cross_timestep = name == "cross_ts";
    } else {
      EXPECT_EQ(name, "base") << "unknown fixture call";
    }
    out.push_back(std::move(c));
  }
  return out;
}

TEST(Ltx2TransformerTest, ConfigReadsEveryFlag) {
  for (const char* variant : kVariants) {
    const std::string path = FixturePath(std::string(variant) + "/transformer/config.json");
    auto config = Ltx2TransformerConfig::FromFile(path);
    ASSERT_TRUE(config.ok()) << config.status();
    auto json = ReadJsonFile(path);
    ASSERT_TRUE(json.ok());
    const nlohmann::json& j = *json;
    EXPECT_EQ(config->num_layers, j["num_layers"].get<int64_t>());
    EXPECT_EQ(config->inner_dim(),
              j["num_attention_heads"].get<int64_t>() * j["attention_head_dim"].get<int64_t>());
    EXPECT_EQ(config->gated_attn, j["gated_attn"].get<bool>());
    EXPECT_EQ(config->audio_gated_attn, j["audio_gated_attn"].get<bool>());
    EXPECT_EQ(config->cross_attn_mod, j["cross_attn_mod"].get<bool>());
    EXPECT_EQ(config->audio_cross_attn_mod, j["audio_cross_attn_mod"].get<bool>());
    EXPECT_EQ(config->use_prompt_embeddings, j["use_prompt_embeddings"].get<bool>());
    EXPECT_EQ(config->perturbed_attn, j["perturbed_attn"].get<bool>());
    EXPECT_EQ(config->rope_type == RopeType::kSplit, j["rope_type"].get<std::string>() == "split");
    EXPECT_EQ(config->vae_scale_factors[2], j["vae_scale_factors"][2].get<int64_t>());
  }
  // Absent keys take the diffusers constructor defaults; bad values are errors naming the key.
  auto defaults = Ltx2TransformerConfig::FromJson(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->num_layers, 48);
  EXPECT_EQ(defaults->rope_type, RopeType::kInterleaved);
  auto bad = Ltx2TransformerConfig::FromJson({{"rope_type", "spiral"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "rope_type"));
  EXPECT_FALSE(Ltx2TransformerConfig::FromJson({{"num_layers", "two"}}).ok());
  auto nulled = Ltx2TransformerConfig::FromJson({{"in_channels", 16}, {"out_channels", nullptr}});
  ASSERT_TRUE(nulled.ok());
  EXPECT_EQ(nulled->out_channels, 16);
}

TEST(Ltx2TransformerTest, ParamsEqualCheckpoint) {
  for (const char* variant : kVariants) {
    const std::string dir = FixturePath(std::string(variant) + "/transformer");
    auto config = Ltx2TransformerConfig::FromFile(dir + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    auto ckpt = Checkpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    std::map<std::string, std::vector<int64_t>> expected, declared;
    for (const auto& [name, view] : (*ckpt)->tensors()) expected[name] = view->shape;
    for (const ParamSpec& s : Ltx2Transformer::Params(*config)) {
      EXPECT_TRUE(declared.emplace(s.name, s.shape).second) << "duplicate " << s.name;
    }
    EXPECT_EQ(declared, expected) << variant;
  }
}

TEST(Ltx2TransformerTest, CoordsAndRopeMatchReference) {
  for (const char* variant : kVariants) {
    auto model = LoadModel(FixturePath(std::string(variant) + "/transformer"));
    IoFile io(FixturePath(std::string(variant) + "/transformer_io.safetensors"));
    ASSERT_TRUE(model && io.ok());
    const at::Tensor video_coords = io["in.video_coords"], audio_coords = io["in.audio_coords"];
    const int64_t batch = video_coords.size(0);
    at::Tensor video = PrepareVideoCoords(batch, io.MetaInt("num_frames"), io.MetaInt("height"),
                                          io.MetaInt("width"), io.MetaDouble("fps"),
                                          model->VideoCoords(), at::kCPU);
    at::Tensor audio =
        PrepareAudioCoords(batch, io.MetaInt("audio_num_frames"), model->AudioCoords(), at::kCPU);
    ASSERT_EQ(video.sizes(), video_coords.sizes());
    ASSERT_EQ(audio.sizes(), audio_coords.sizes());
    EXPECT_LE((video - video_coords).abs().max().item<double>(), 1e-6) << variant;
    EXPECT_LE((audio - audio_coords).abs().max().item<double>(), 1e-7) << variant;

    const std::pair<const char*, RopeTables> tables[] = {
        {"video", ComputeRope(model->VideoRopeSpec(), video_coords)},
        {"audio", ComputeRope(model->AudioRopeSpec(), audio_coords)},
        {"cross_video", ComputeRope(model->CrossVideoRopeSpec(), video_coords.narrow(1, 0, 1))},
        {"cross_audio", ComputeRope(model->CrossAudioRopeSpec(), audio_coords.narrow(1, 0, 1))},
    };
    for (const auto& [name, t] : tables) {
      const std::string prefix = absl::StrCat("dbg.rope.", name);
      const at::Tensor cos = io[prefix + ".cos"], sin = io[prefix + ".sin"];
      ASSERT_EQ(t.cos.sizes(), cos.sizes()) << prefix;
      EXPECT_LE(RelativeError(t.cos, cos), 1e-6) << variant << " " << prefix;
      EXPECT_LE(RelativeError(t.sin, sin), 1e-6) << variant << " " << prefix;
    }
  }
}

// Every recorded call of both variants, and the per-block outputs of the base call.
TEST(Ltx2TransformerTest, MatchesReferenceCalls) {
  for (const char* variant : kVariants) {
    auto model = LoadModel(FixturePath(std::string(variant) + "/transformer"));
    IoFile io(FixturePath(std::string(variant) + "/transformer_io.safetensors"));
    ASSERT_TRUE(model && io.ok());
    const std::vector<Call> calls = FixtureCalls(io);
    EXPECT_GE(calls.size(), 6u);
    for (const Call& call : calls) {
      Ltx2ForwardOptions options = call.options;
      if (call.name == "base") {
        options.block_observer = [&](int64_t block, const at::Tensor& v, const at::Tensor& a) {
          const std::string p = absl::StrCat("dbg.base.block", block);
          EXPECT_LE(RelativeError(v, io[p + ".video"]), 1e-5) << variant << " " << p;
          EXPECT_LE(RelativeError(a, io[p + ".audio"]), 1e-5) << variant << " " << p;
        };
      }
      auto out = model->Forward(call.in, options);
      ASSERT_TRUE(out.ok()) << out.status();
      const at::Tensor video = io["out." + call.name + ".video"];
      const at::Tensor audio = io["out." + call.name + ".audio"];
      ASSERT_EQ(out->video.sizes(), video.sizes());
      ASSERT_EQ(out->audio.sizes(), audio.sizes());
      const double ev = RelativeError(out->video, video), ea = RelativeError(out->audio, audio);
      std::printf("%s %-16s video rel err %.3g  audio rel err %.3g\n", variant, call.name.c_str(),
                  ev, ea);
      EXPECT_LE(ev, 1e-4) << variant << " " << call.name;
      EXPECT_LE(ea, 1e-4) << variant << " " << call.name;
    }
  }
}

// Every transformer call of the recorded 3-step pipeline run (CFG batch, STG and modality
// branches per step; kwargs in the metadata `transformer_calls`).
TEST(Ltx2TransformerTest, MatchesPipelineTransformerCalls) {
  for (const char* variant : kVariants) {
    auto model = LoadModel(FixturePath(std::string(variant) + "/transformer"));
    IoFile io(FixturePath(std::string(variant) + "/pipeline_io.safetensors"));
    ASSERT_TRUE(model && io.ok());
    const nlohmann::json calls = nlohmann::json::parse(io.Meta("transformer_calls"));
    ASSERT_FALSE(calls.empty());
    double worst = 0;
    for (size_t i = 0; i < calls.size(); ++i) {
      const std::string p = absl::StrCat("call", i, ".");
      Ltx2TransformerInputs in;
      in.hidden_states = io[p + "in.hidden_states"];
      in.audio_hidden_states = io[p + "in.audio_hidden_states"];
      in.encoder_hidden_states = io[p + "in.encoder_hidden_states"];
      in.audio_encoder_hidden_states = io[p + "in.audio_encoder_hidden_states"];
      in.encoder_attention_mask = io[p + "in.encoder_attention_mask"];
      in.audio_encoder_attention_mask = in.encoder_attention_mask;
      in.timestep = io[p + "in.timestep"];
      in.sigma = in.timestep;  // the pipeline passes sigma = timestep
      in.video_coords = io[p + "in.video_coords"];
      in.audio_coords = io[p + "in.audio_coords"];
      Ltx2ForwardOptions options;
      options.isolate_modalities = calls[i].value("isolate_modalities", false);
      options.use_cross_timestep = calls[i].value("use_cross_timestep", false);
      if (calls[i]["spatio_temporal_guidance_blocks"].is_array()) {
        options.stg_blocks =
            calls[i]["spatio_temporal_guidance_blocks"].get<std::vector<int64_t>>();
      }
      auto out = model->Forward(in, options);
      ASSERT_TRUE(out.ok()) << out.status();
      const double ev = RelativeError(out->video, io[p + "out.video"]);
      const double ea = RelativeError(out->audio, io[p + "out.audio"]);
      worst = std::max({worst, ev, ea});
      EXPECT_LE(ev, 1e-4) << variant << " " << p;
      EXPECT_LE(ea, 1e-4) << variant << " " << p;
    }
    std::printf("%s pipeline: %zu transformer calls, worst rel err %.3g\n", variant, calls.size(),
                worst);
  }
}

// STG must change the output exactly where the config enables it, and only the perturbed rows.
TEST(Ltx2TransformerTest, StgActsOnlyWithPerturbedAttention) {
  for (const char* variant : kVariants) {
    auto model = LoadModel(FixturePath(std::string(variant) + "/transformer"));
    IoFile io(FixturePath(std::string(variant) + "/transformer_io.safetensors"));
    ASSERT_TRUE(model && io.ok());
    Ltx2ForwardOptions base;
    base.use_cross_timestep = true;
    Ltx2ForwardOptions stg = base;
    stg.stg_blocks = {model->config().num_layers - 1};
    stg.perturbation_mask = at::ones({io["in.timestep"].size(0)});
    stg.perturbation_mask[0] = 0;  // row 0 perturbed, the others not
    auto a = model->Forward(CommonInputs(io), base);
    auto b = model->Forward(CommonInputs(io), stg);
    ASSERT_TRUE(a.ok() && b.ok());
    const double row0 = RelativeError(b->video[0], a->video[0]);
    if (model->config().perturbed_attn) {
      EXPECT_GT(row0, 1e-4) << variant;
    } else {
      EXPECT_EQ(row0, 0.0) << variant;
    }
    for (int64_t r = 1; r < a->video.size(0); ++r) {
      EXPECT_LE(RelativeError(b->video[r], a->video[r]), 1e-6) << variant << " row " << r;
    }
  }
}

// Sizes instead of coordinates, and a per-token timestep equal within each row, give the
// recorded base call.
TEST(Ltx2TransformerTest, SizesAndPerTokenTimestepMatchBase) {
  for (const char* variant : kVariants) {
    auto model = LoadModel(FixturePath(std::string(variant) + "/transformer"));
    IoFile io(FixturePath(std::string(variant) + "/transformer_io.safetensors"));
    ASSERT_TRUE(model && io.ok());
    Ltx2TransformerInputs in = CommonInputs(io);
    in.video_coords = at::Tensor();
    in.audio_coords = at::Tensor();
    in.num_frames = io.MetaInt("num_frames");
    in.height = io.MetaInt("height");
    in.width = io.MetaInt("width");
    in.fps = io.MetaDouble("fps");
    in.audio_num_frames = io.MetaInt("audio_num_frames");
    const int64_t tokens = in.hidden_states.size(1);
    in.timestep = in.timestep.unsqueeze(1).expand({-1, tokens}).contiguous();
    in.audio_timestep = in.sigma;
    Ltx2ForwardOptions options;
    options.use_cross_timestep = true;
    auto out = model->Forward(in, options);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_LE(RelativeError(out->video, io["out.base.video"]), 1e-5) << variant;
    EXPECT_LE(RelativeError(out->audio, io["out.base.audio"]), 1e-5) << variant;
  }
}

// Calls of the extra reference data: interleaved RoPE, unequal head counts, per-token video and
// audio timesteps, a video self-attention mask, STG + modality isolation together, coordinates
// computed from sizes.
TEST(Ltx2TransformerTest, MatchesExtraReferenceCalls) {
  for (const char* name : kExtraCases) {
    auto model = LoadModel(TestdataDir() + "/" + name);
    IoFile io(TestdataDir() + "/" + name + "_io.safetensors");
    ASSERT_TRUE(model && io.ok());
    const nlohmann::json calls = nlohmann::json::parse(io.Meta("calls"));
    for (const auto& [call, kwargs] : calls.items()) {
      Ltx2TransformerInputs in;
      in.hidden_states = io["in.hidden_states"];
      in.audio_hidden_states = io["in.audio_hidden_states"];
      in.encoder_hidden_states = io["in.encoder_hidden_states"];
      in.audio_encoder_hidden_states = io["in.audio_encoder_hidden_states"];
      in.encoder_attention_mask = io["in.encoder_attention_mask"];
      in.audio_encoder_attention_mask = in.encoder_attention_mask;
      in.num_frames = io.MetaInt("num_frames");
      in.height = io.MetaInt("height");
      in.width = io.MetaInt("width");
      in.fps = io.MetaDouble("fps");
      in.audio_num_frames = io.MetaInt("audio_num_frames");
      Ltx2ForwardOptions options;
      const std::map<std::string, at::Tensor*> tensor_args = {
          {"timestep", &in.timestep},
          {"audio_timestep", &in.audio_timestep},
          {"sigma", &in.sigma},
          {"audio_sigma", &in.audio_sigma},
          {"video_self_attention_mask", &in.video_self_attention_mask},
          {"perturbation_mask", &options.perturbation_mask}};
      for (const auto& [key, value] : kwargs.items()) {
        if (tensor_args.count(key)) {
          *tensor_args.at(key) = io[value.get<std::string>()];
        } else if (key == "use_cross_timestep") {
          options.use_cross_timestep = value.get<bool>();
        } else if (key == "isolate_modalities") {
          options.isolate_modalities = value.get<bool>();
        } else if (key == "spatio_temporal_guidance_blocks") {
          options.stg_blocks = value.get<std::vector<int64_t>>();
        } else {
          ADD_FAILURE() << "unknown kwarg " << key;
        }
      }
      auto out = model->Forward(in, options);
      ASSERT_TRUE(out.ok()) << out.status();
      const double ev = RelativeError(out->video, io["out." + call + ".video"]);
      const double ea = RelativeError(out->audio, io["out." + call + ".audio"]);
      std::printf("%s %-16s video rel err %.3g  audio rel err %.3g\n", name, call.c_str(), ev, ea);
      EXPECT_LE(ev, 1e-4) << name << " " << call;
      EXPECT_LE(ea, 1e-4) << name << " " << call;
    }
  }
}

// Writes the fixture checkpoint of `variant` to a new directory with the tensor `victim`
// reshaped to `new_shape` (null: dropped); returns the directory.
std::string WriteAlteredCheckpoint(const std::string& variant, const std::string& victim,
                                   const std::vector<int64_t>* new_shape) {
  const std::string src = FixturePath(variant + "/transformer");
  const std::string dir = absl::StrCat(::testing::TempDir(), "/ltx2_tr_", getpid(), "_",
                                       new_shape ? "shape" : "missing");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto ckpt = Checkpoint::Open(src);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, OwnedTensor> tensors;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    if (name == victim && new_shape == nullptr) continue;
    OwnedTensor t{view->dtype, view->shape,
                  std::string(reinterpret_cast<const char*>(view->data), view->nbytes)};
    if (name == victim) {
      t.shape = *new_shape;
      int64_t n = 1;
      for (int64_t s : t.shape) n *= s;
      t.bytes.assign(n * DTypeSize(t.dtype), '\0');
    }
    tensors.emplace(name, std::move(t));
  }
  EXPECT_TRUE(WriteSafetensors(dir + "/diffusion_pytorch_model.safetensors", tensors).ok());
  return dir;
}

TEST(Ltx2TransformerTest, LoadRejectsMisshapedOrMissingTensor) {
  const std::string victim = "transformer_blocks.0.video_to_audio_attn.to_k.weight";
  auto config =
      Ltx2TransformerConfig::FromFile(FixturePath("ltx2-ref-a/v23/transformer/config.json"));
  ASSERT_TRUE(config.ok());
  const std::vector<int64_t> wrong = {config->audio_inner_dim() + 1, config->inner_dim()};
  auto misshaped =
      Ltx2Transformer::FromConfig(WriteAlteredCheckpoint("ltx2-ref-a/v23", victim, &wrong));
  ASSERT_FALSE(misshaped.ok());
  EXPECT_EQ(misshaped.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(misshaped.status().message(), victim)) << misshaped.status();

  auto missing =
      Ltx2Transformer::FromConfig(WriteAlteredCheckpoint("ltx2-ref-a/v23", victim, nullptr));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), victim)) << missing.status();

  // A 2.0 checkpoint under a 2.3 config lacks the gate projections.
  auto weights = LoadWeights(**Checkpoint::Open(FixturePath("ltx2-ref-a/v20/transformer")),
                             Ltx2Transformer::Params(*config));
  EXPECT_FALSE(weights.ok());
}

TEST(Ltx2TransformerTest, ForwardRejectsBadInputs) {
  auto model = LoadModel(FixturePath("ltx2-ref-a/v23/transformer"));
  IoFile io(FixturePath("ltx2-ref-a/v23/transformer_io.safetensors"));
  ASSERT_TRUE(model && io.ok());
  Ltx2TransformerInputs in = CommonInputs(io);
  in.sigma = at::Tensor();  // the prompt modulation needs it
  auto no_sigma = model->Forward(in);
  ASSERT_FALSE(no_sigma.ok());
  EXPECT_TRUE(absl::StrContains(no_sigma.status().message(), "sigma"));

  in = CommonInputs(io);
  in.hidden_states = in.hidden_states.narrow(2, 0, in.hidden_states.size(2) - 1);
  EXPECT_EQ(model->Forward(in).status().code(), absl::StatusCode::kInvalidArgument);

  in = CommonInputs(io);
  Ltx2ForwardOptions options;
  options.stg_blocks = {model->config().num_layers};
  EXPECT_EQ(model->Forward(in, options).status().code(), absl::StatusCode::kInvalidArgument);

  in = CommonInputs(io);
  in.video_coords = at::Tensor();
  in.num_frames = 1;  // too few tokens for the latents
  in.height = in.width = 1;
  EXPECT_EQ(model->Forward(in).status().code(), absl::StatusCode::kInvalidArgument);
}

// With a CUDA device (GPU builds): every fixture call on the GPU, in fp32 against the reference
// tolerance and in bf16 against a coarse one (bf16 keeps ~3 significant digits).
TEST(Ltx2TransformerTest, MatchesReferenceOnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (const char* variant : kVariants) {
    const std::string dir = FixturePath(std::string(variant) + "/transformer");
    auto config = Ltx2TransformerConfig::FromFile(dir + "/config.json");
    auto ckpt = Checkpoint::Open(dir);
    IoFile io(FixturePath(std::string(variant) + "/transformer_io.safetensors"));
    ASSERT_TRUE(config.ok() && ckpt.ok() && io.ok());
    std::map<std::string, std::pair<at::Tensor, at::Tensor>> fp32_out;  // call → video, audio
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      auto weights = LoadWeights(**ckpt, Ltx2Transformer::Params(*config), dtype);
      ASSERT_TRUE(weights.ok()) << weights.status();
      for (auto& [name, t] : *weights) t = t.to(at::kCUDA);
      auto model = Ltx2Transformer::Create(*config, std::move(weights).value());
      ASSERT_TRUE(model.ok()) << model.status();
      const double tolerance = dtype == at::kFloat ? 1e-4 : 5e-2;
      for (const Call& call : FixtureCalls(io)) {
        auto out = (*model)->Forward(call.in, call.options);
        ASSERT_TRUE(out.ok()) << out.status();
        ASSERT_TRUE(out->video.is_cuda());
        const double ev = RelativeError(out->video.cpu(), io["out." + call.name + ".video"]);
        const double ea = RelativeError(out->audio.cpu(), io["out." + call.name + ".audio"]);
        std::printf("cuda %s %s %-16s video rel err %.3g  audio rel err %.3g\n",
                    dtype == at::kFloat ? "fp32" : "bf16", variant, call.name.c_str(), ev, ea);
        EXPECT_LE(ev, tolerance) << variant << " " << call.name;
        EXPECT_LE(ea, tolerance) << variant << " " << call.name;
        if (dtype == at::kFloat) {
          fp32_out[call.name] = {out->video.cpu(), out->audio.cpu()};
          continue;
        }
        // The serving dtype's own cost: bf16 against fp32, both on the GPU.
        const auto& [v32, a32] = fp32_out.at(call.name);
        const double bv = RelativeError(out->video.cpu().to(at::kFloat), v32);
        const double ba = RelativeError(out->audio.cpu().to(at::kFloat), a32);
        std::printf("bf16 transformer     %s %-16s rel err vs fp32 video %.3g  audio %.3g\n",
                    variant, call.name.c_str(), bv, ba);
        EXPECT_LE(bv, 1e-2) << variant << " " << call.name;
        EXPECT_LE(ba, 1e-2) << variant << " " << call.name;
      }
    }
  }
}

// The built-in seeded model: deterministic, finite, and sensitive to its inputs.
TEST(Ltx2TransformerTest, SeededTinyModel) {
  auto config =
      Ltx2TransformerConfig::FromFile(FixturePath("ltx2-ref-a/v23/transformer/config.json"));
  ASSERT_TRUE(config.ok());
  auto a = Ltx2Transformer::InitSeeded(*config, 5);
  auto b = Ltx2Transformer::InitSeeded(*config, 5);
  ASSERT_TRUE(a.ok() && b.ok());
  IoFile io(FixturePath("ltx2-ref-a/v23/transformer_io.safetensors"));
  ASSERT_TRUE(io.ok());
  Ltx2TransformerInputs in = CommonInputs(io);
  auto ya = (*a)->Forward(in);
  auto yb = (*b)->Forward(in);
  ASSERT_TRUE(ya.ok() && yb.ok());
  EXPECT_TRUE(at::equal(ya->video, yb->video));
  EXPECT_TRUE(at::equal(ya->audio, yb->audio));
  EXPECT_TRUE(at::isfinite(ya->video).all().item<bool>());
  EXPECT_GT(ya->video.abs().max().item<double>(), 0.0);
  in.audio_hidden_states = in.audio_hidden_states + 1;  // audio reaches video through a2v
  auto yc = (*a)->Forward(in);
  ASSERT_TRUE(yc.ok());
  EXPECT_GT(RelativeError(yc->video, ya->video), 1e-6);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
