// The built-in model "ltx2.3-release-random" as the stages resolve it (never built here: it is
// CUDA only), and the device-drawn weights it uses, through the same builders on a small config
// (ltx2-tiny's spec with draw_on_device set, on the CPU).
#include "models/ltx2/ltx2_spec.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "common/config/pipeline_config.h"
#include "gtest/gtest.h"
#include "models/ltx2/release_configs.h"
#include "models/ltx2/snapshot.h"
#include "models/ltx2/snapshot_pipeline.h"

namespace diffmesh::models::ltx2 {
namespace {

namespace fs = std::filesystem;

Ltx2Spec Release() {
  auto spec = BuiltinSpec(kReleaseRandomModel);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

// ltx2-tiny with its transformer, connectors and text encoder drawn on the builder's device.
Ltx2Spec TinyDrawnOnDevice(uint64_t seed) {
  Ltx2Spec spec = *BuiltinSpec("ltx2-tiny");
  spec.draw_on_device = true;
  spec.seed = seed;
  return spec;
}

bool SameWeights(const WeightMap& a, const WeightMap& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || !t.equal(it->second)) return false;
  }
  return true;
}

// Names and shapes exactly `params`, every tensor in `dtype`; ones and zeros where the spec says.
void ExpectMatches(const WeightMap& weights, const std::vector<ParamSpec>& params,
                   at::ScalarType dtype) {
  ASSERT_EQ(weights.size(), params.size());
  for (const ParamSpec& p : params) {
    auto it = weights.find(p.name);
    ASSERT_NE(it, weights.end()) << p.name;
    const at::Tensor& t = it->second;
    EXPECT_EQ(t.sizes().vec(), p.shape) << p.name;
    EXPECT_EQ(t.scalar_type(), dtype) << p.name;
    EXPECT_TRUE(t.device().is_cpu()) << p.name;
    if (p.init == Init::kOnes) {
      EXPECT_TRUE(t.eq(1).all().item<bool>()) << p.name;
    }
    if (p.init == Init::kZeros) {
      EXPECT_TRUE(t.eq(0).all().item<bool>()) << p.name;
    }
  }
}

TEST(ReleaseRandomModelTest, ResolvesAsABuiltinDrawnOnTheDevice) {
  const std::vector<std::string> names = BuiltinModelNames();
  EXPECT_NE(std::find(names.begin(), names.end(), kReleaseRandomModel), names.end());
  auto spec = ResolveSpec(kReleaseRandomModel, "");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name, kReleaseRandomModel);
  EXPECT_TRUE(spec->dir.empty());
  EXPECT_TRUE(spec->draw_on_device);
  EXPECT_FALSE(spec->cuda_only_reason.empty());
  EXPECT_EQ(spec->transformer, ReleaseTransformerConfig());
  EXPECT_EQ(spec->connectors, ReleaseConnectorsConfig());
  EXPECT_EQ(spec->text_encoder, ReleaseTextEncoderConfig());
  EXPECT_EQ(spec->vae, ReleaseVideoVaeConfig());
  EXPECT_TRUE(spec->latent_upsampler.is_null());
  // Every config parses as the networks read it (nothing is built).
  EXPECT_TRUE(Ltx2TransformerConfig::FromJson(spec->transformer).ok());
  EXPECT_TRUE(ConnectorsConfig::FromJson(spec->connectors).ok());
  EXPECT_TRUE(Gemma3Config::FromJson(spec->text_encoder).ok());
  EXPECT_TRUE(BuildSchedulerConfig(*spec).ok());
  auto tokenizer = BuildTokenizer(*spec);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  // The tiny model is unchanged: host-seeded, CPU allowed.
  auto tiny = BuiltinSpec("ltx2-tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_FALSE(tiny->draw_on_device);
  EXPECT_TRUE(CheckDevice(*tiny, at::kCPU).ok());
}

void ExpectCpuRefusal(const absl::Status& s, const std::string& what) {
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << what << ": " << s;
  const std::string m(s.message());
  EXPECT_NE(m.find(std::string("'") + kReleaseRandomModel + "'"), std::string::npos) << m;
  EXPECT_NE(m.find("does not run on the CPU"), std::string::npos) << m;
  EXPECT_NE(m.find("GB of GPU memory in bf16"), std::string::npos) << m;
  EXPECT_NE(m.find("--device cuda"), std::string::npos) << m;
}

// Every builder refuses the CPU before it allocates (a release-size host copy is ~76 GB in
// float32: this test would not finish if one did not).
TEST(ReleaseRandomModelTest, RefusedOnTheCpuNamingTheModelAndWhy) {
  const Ltx2Spec spec = Release();
  ExpectCpuRefusal(CheckDevice(spec, at::kCPU), "CheckDevice");
  EXPECT_TRUE(CheckDevice(spec, at::Device(at::kCUDA, 0)).ok());  // a value; nothing runs there
  ExpectCpuRefusal(BuildTransformer(spec).status(), "BuildTransformer");
  ExpectCpuRefusal(BuildTransformer(spec, at::kBFloat16).status(), "BuildTransformer bf16");
  ExpectCpuRefusal(BuildConnectors(spec).status(), "BuildConnectors");
  ExpectCpuRefusal(BuildTextEncoder(spec, at::kBFloat16).status(), "BuildTextEncoder");
  ExpectCpuRefusal(BuildVideoDecoder(spec).status(), "BuildVideoDecoder");
  ExpectCpuRefusal(BuildVideoEncoder(spec).status(), "BuildVideoEncoder");
  ExpectCpuRefusal(BuildAudioDecoder(spec).status(), "BuildAudioDecoder");
  ExpectCpuRefusal(BuildVocoder(spec).status(), "BuildVocoder");
  ExpectCpuRefusal(BuildModels(spec).status(), "BuildModels");
  ExpectCpuRefusal(BuildReleaseModels(at::kFloat, at::kCPU).status(), "BuildReleaseModels");
  // Nor is it written out as a snapshot (its weights would be drawn on the host).
  const fs::path dir = fs::temp_directory_path() / "ltx2_release_random_snapshot_test";
  fs::remove_all(dir);
  ExpectCpuRefusal(WriteSnapshot(spec, dir.string()), "WriteSnapshot");
  EXPECT_FALSE(fs::exists(dir));
  std::printf("refusal: %s\n", std::string(CheckDevice(spec, at::kCPU).message()).c_str());
}

// The pipeline config's entry states the limits an LTX2Pipeline snapshot of the release
// configs would get (models/ltx2/snapshot_pipeline.h), and the release request size.
TEST(ReleaseRandomModelTest, PipelineEntryHasTheReleaseConfigsLimits) {
  const Ltx2Spec spec = Release();
  const fs::path dir = fs::temp_directory_path() / "ltx2_release_random_configs_test";
  fs::remove_all(dir);
  for (const char* sub : {"vae", "transformer", "scheduler"}) fs::create_directories(dir / sub);
  std::ofstream(dir / "model_index.json") << nlohmann::json{{"_class_name", "LTX2Pipeline"}};
  std::ofstream(dir / "vae" / "config.json") << spec.vae;
  std::ofstream(dir / "transformer" / "config.json") << spec.transformer;
  std::ofstream(dir / "scheduler" / "scheduler_config.json") << spec.scheduler;
  auto entry = Ltx2SnapshotPipelineEntry(dir.string());
  fs::remove_all(dir);
  ASSERT_TRUE(entry.ok()) << entry.status();

  auto pipeline = PipelineConfig::Parse(PipelineConfig::DefaultJson());
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  const PipelineModel* m = pipeline->FindModel(kReleaseRandomModel);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->kind, ModelKind::kVideoWithAudio);
  const nlohmann::json& l = (*entry)["limits"];
  EXPECT_EQ(m->limits.size_granularity(), l["size_granularity"].get<int64_t>());
  EXPECT_EQ(m->limits.min_size(), l["min_size"].get<int64_t>());
  EXPECT_EQ(m->limits.max_size(), l["max_size"].get<int64_t>());
  EXPECT_EQ(m->limits.min_steps(), l["min_steps"].get<int64_t>());
  EXPECT_EQ(m->limits.max_steps(), l["max_steps"].get<int64_t>());
  EXPECT_EQ(m->limits.frames().multiple(), l["frames"]["multiple"].get<int64_t>());
  EXPECT_EQ(m->limits.frames().offset(), l["frames"]["offset"].get<int64_t>());
  EXPECT_EQ(m->limits.frames().max_frames(), l["frames"]["max_frames"].get<int64_t>());
  const nlohmann::json& d = (*entry)["defaults"];
  EXPECT_EQ(m->defaults.height(), d["height"].get<int64_t>());
  EXPECT_EQ(m->defaults.width(), d["width"].get<int64_t>());
  EXPECT_EQ(m->defaults.num_frames(), d["num_frames"].get<int64_t>());
  // Guidance off by default: one transformer call a step, as bench_ltx2_e2e runs.
  for (const v1::StreamGuidance& g :
       {m->defaults.guidance().main(), m->defaults.guidance().audio()}) {
    EXPECT_EQ(g.cfg_scale(), 1.0f);
    EXPECT_EQ(g.stg_scale(), 0.0f);
    EXPECT_EQ(g.modality_scale(), 1.0f);
  }
}

TEST(DeviceDrawnWeightsTest, DeterministicPerSeedWithTheParamsNamesAndShapes) {
  const Ltx2Spec spec = TinyDrawnOnDevice(7);
  auto config = Ltx2TransformerConfig::FromJson(spec.transformer);
  ASSERT_TRUE(config.ok()) << config.status();
  const std::vector<ParamSpec> params = Ltx2Transformer::Params(*config);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const WeightMap a = DrawWeightsOn(params, options, 11);
  const WeightMap b = DrawWeightsOn(params, options, 11);
  const WeightMap c = DrawWeightsOn(params, options, 12);
  ExpectMatches(a, params, at::kFloat);
  EXPECT_TRUE(SameWeights(a, b));
  EXPECT_FALSE(SameWeights(a, c));
  // N(0, std²) where the spec says: the largest such tensor's sample std within 10 %.
  const ParamSpec* largest = nullptr;
  int64_t largest_n = 0;
  for (const ParamSpec& p : params) {
    int64_t n = 1;
    for (int64_t d : p.shape) n *= d;
    if (p.init == Init::kNormal && n > largest_n) largest = &p, largest_n = n;
  }
  ASSERT_NE(largest, nullptr);
  ASSERT_GE(largest_n, 1000);
  const double sd = a.at(largest->name).std().item<double>();
  EXPECT_NEAR(sd, largest->std, 0.1 * largest->std) << largest->name;
  EXPECT_LT(std::abs(a.at(largest->name).mean().item<double>()), 0.1 * largest->std);
  // In the options' dtype directly.
  ExpectMatches(DrawWeightsOn(params, options.dtype(at::kBFloat16), 11), params, at::kBFloat16);
}

TEST(DeviceDrawnWeightsTest, LeavesTheDefaultGeneratorAlone) {
  const std::vector<ParamSpec> params = {{"w", {64, 64}, Init::kNormal, 0.02f}};
  at::Generator g = at::globalContext().defaultGenerator(at::kCPU);
  auto reseed = [&] {
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_current_seed(99);
  };
  reseed();
  const at::Tensor before = at::randn({16});
  reseed();
  const WeightMap drawn = DrawWeightsOn(params, at::TensorOptions(), 5);
  const at::Tensor after = at::randn({16});
  EXPECT_TRUE(before.equal(after));
  // Unseeded: from the default generator's own sequence.
  reseed();
  const WeightMap unseeded = DrawWeightsOn(params, at::TensorOptions(), std::nullopt);
  EXPECT_FALSE(unseeded.at("w").equal(drawn.at("w")));
}

// The builders' device-drawn path (what ltx2.3-release-random runs on CUDA) on ltx2-tiny.
TEST(DeviceDrawnWeightsTest, BuildersDrawEachComponentFromItsSeed) {
  const Ltx2Spec spec = TinyDrawnOnDevice(20260805);
  const Ltx2Spec other_seed = TinyDrawnOnDevice(20260806);
  const Ltx2Spec host = *BuiltinSpec("ltx2-tiny");

  auto connectors = BuildConnectors(spec);
  auto connectors_again = BuildConnectors(spec);
  auto connectors_other = BuildConnectors(other_seed);
  auto connectors_host = BuildConnectors(host);
  ASSERT_TRUE(connectors.ok()) << connectors.status();
  ASSERT_TRUE(connectors_again.ok() && connectors_other.ok() && connectors_host.ok());
  ExpectMatches((*connectors)->weights(), TextConnectors::Params((*connectors)->config()),
                at::kFloat);
  EXPECT_TRUE(SameWeights((*connectors)->weights(), (*connectors_again)->weights()));
  EXPECT_FALSE(SameWeights((*connectors)->weights(), (*connectors_other)->weights()));
  EXPECT_FALSE(SameWeights((*connectors)->weights(), (*connectors_host)->weights()));
  // Exactly DrawWeightsOn with the component's seed.
  EXPECT_TRUE(SameWeights((*connectors)->weights(),
                          DrawWeightsOn(TextConnectors::Params((*connectors)->config()),
                                        at::TensorOptions(),
                                        ComponentSeed(spec, Ltx2Component::kConnectors))));

  auto text = BuildTextEncoder(spec, at::kBFloat16);
  auto text_again = BuildTextEncoder(spec, at::kBFloat16);
  ASSERT_TRUE(text.ok()) << text.status();
  ASSERT_TRUE(text_again.ok());
  ExpectMatches((*text)->weights(), Gemma3TextModel::Params((*text)->config()), at::kBFloat16);
  EXPECT_TRUE(SameWeights((*text)->weights(), (*text_again)->weights()));

  // The transformer has no weights accessor: its weights come the connectors' way above
  // (DrawWeightsOn with its component seed), and Create checks every name and shape.
  auto transformer = BuildTransformer(spec);
  ASSERT_TRUE(transformer.ok()) << transformer.status();
  EXPECT_EQ((*transformer)->dtype(), at::kFloat);

  // A whole run through the device-drawn networks (the decoders host-seeded as before).
  auto models = BuildModels(spec);
  ASSERT_TRUE(models.ok()) << models.status();
  auto embeds = EncodePrompts(*models, spec, {"a kite"});
  EXPECT_TRUE(embeds.prompt_embeds.isfinite().all().item<bool>());
}

}  // namespace
}  // namespace diffmesh::models::ltx2
