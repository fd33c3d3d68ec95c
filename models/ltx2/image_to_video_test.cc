// Image-to-video from an image: EncodeConditioningImage's latent driven through Ltx2Pipeline,
// against diffusers' LTX2ImageToVideoPipeline given the image itself
// (testdata/make_vae_encoder_refs.py), and on the built-in ltx2-tiny, also through a snapshot.
#include <ATen/ATen.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/testing/fixture_tensor.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/snapshot.h"
#include "models/ltx2/video_vae_encoder.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {
namespace {

constexpr double kEndTol = 1e-3;

template <typename T>
std::unique_ptr<T> Take(absl::StatusOr<std::unique_ptr<T>> r) {
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::move(r).value() : nullptr;
}

std::string Testdata(const std::string& name) {
  const std::string file = __FILE__;
  return file.substr(0, file.rfind('/')) + "/testdata/" + name;
}

nlohmann::json Meta(const std::string& path, const std::string& key) {
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return nlohmann::json();
  auto it = (*f)->metadata().find(key);
  EXPECT_NE(it, (*f)->metadata().end()) << path << " metadata lacks " << key;
  return it == (*f)->metadata().end() ? nlohmann::json() : nlohmann::json::parse(it->second);
}

// diffusers: `audio_x = audio_x or x` (None and 0 fall back to the video value).
double AudioOr(const nlohmann::json& kw, const std::string& key, double video) {
  const auto it = kw.find(key);
  if (it == kw.end() || it->is_null()) return video;
  const double v = it->get<double>();
  return v == 0.0 ? video : v;
}

GuidanceOptions GuidanceFromKwargs(const nlohmann::json& kw) {
  GuidanceOptions g;
  g.video.cfg = kw.at("guidance_scale").get<double>();
  g.video.stg = kw.at("stg_scale").get<double>();
  g.video.modality = kw.at("modality_scale").get<double>();
  g.video.rescale = kw.at("guidance_rescale").get<double>();
  g.audio.cfg = AudioOr(kw, "audio_guidance_scale", g.video.cfg);
  g.audio.stg = AudioOr(kw, "audio_stg_scale", g.video.stg);
  g.audio.modality = AudioOr(kw, "audio_modality_scale", g.video.modality);
  g.audio.rescale = AudioOr(kw, "audio_guidance_rescale", g.video.rescale);
  g.stg_blocks = kw.at("spatio_temporal_guidance_blocks").get<std::vector<int64_t>>();
  g.use_cross_timestep = kw.value("use_cross_timestep", false);
  g.reference_branch_gating = true;
  return g;
}

// Every variant whose reference holds a whole run (those whose encoder's grid is the
// pipeline's): the image goes in, the denoised latents come out.
TEST(Ltx2ImageToVideoTest, FromImageMatchesReferencePipeline) {
  int runs = 0;
  for (const std::string variant : {"v20", "v23"}) {
    SCOPED_TRACE(variant);
    const std::string io = Testdata("vae_encoder_" + variant + "_io.safetensors");
    if (!FixtureHasTensor(io, "e2e.video_latents")) continue;
    ++runs;
    const std::string dir = FixturePath("ltx2-ref-a/" + variant);
    auto encoder = Take(Ltx2VideoEncoder::Load(dir + "/vae"));
    auto transformer = Take(Ltx2Transformer::FromConfig(dir + "/transformer"));
    auto connectors = Take(TextConnectors::Load(dir + "/connectors"));
    auto video_vae = Take(Ltx2VideoDecoder::Load(dir + "/vae"));
    auto audio_vae = Take(AudioVaeDecoder::Load(dir + "/audio_vae"));
    auto vocoder = Take(Vocoder::Load(dir + "/vocoder"));
    auto sched = SchedulerConfig::FromFile(dir + "/scheduler/scheduler_config.json");
    ASSERT_TRUE(encoder && transformer && connectors && video_vae && audio_vae && vocoder &&
                sched.ok());
    const Ltx2Networks networks{transformer.get(), connectors.get(), video_vae.get(),
                                audio_vae.get(),   vocoder.get(),    *sched};
    const nlohmann::json kw = Meta(io, "pipeline_kwargs");
    auto pipeline = Take(Ltx2Pipeline::Create(networks, GuidanceFromKwargs(kw)));
    ASSERT_NE(pipeline, nullptr);
    const std::string prompts = dir + "/pipeline_io.safetensors";
    auto text =
        pipeline->EncodeText(ReadFixtureTensor(prompts, "in.prompt_embeds"),
                             ReadFixtureTensor(prompts, "in.prompt_attention_mask"),
                             ReadFixtureTensor(prompts, "in.negative_prompt_embeds"),
                             ReadFixtureTensor(prompts, "in.negative_prompt_attention_mask"));
    ASSERT_TRUE(text.ok()) << text.status();

    const int64_t height = kw.at("height").get<int64_t>();
    const int64_t width = kw.at("width").get<int64_t>();
    auto first =
        EncodeConditioningImage(*encoder, ReadFixtureTensor(io, "in.image_a_u8"), height, width);
    ASSERT_TRUE(first.ok()) << first.status();
    Ltx2LatentInit init;
    // The reference's generator noise is in normalised space; the pipeline takes raw latents.
    init.video_latents = video_vae->DenormalizeLatents(ReadFixtureTensor(io, "e2e.noise"));
    init.first_frame_latent = *first;
    init.audio_latents = ReadFixtureTensor(io, "e2e.audio_latents_in");
    init.num_inference_steps = kw.at("num_inference_steps").get<int64_t>();
    init.frame_rate = kw.at("frame_rate").get<double>();
    auto state = pipeline->PrepareLatents(init);
    ASSERT_TRUE(state.ok()) << state.status();
    ASSERT_TRUE(pipeline->Denoise(*state, *text).ok());
    auto out = pipeline->Decode(*state, {.decode_video = false, .decode_audio = false});
    ASSERT_TRUE(out.ok()) << out.status();
    const double ev = RelativeError(out->video_latents, ReadFixtureTensor(io, "e2e.video_latents"));
    const double ea = RelativeError(out->audio_latents, ReadFixtureTensor(io, "e2e.audio_latents"));
    std::printf("i2v from image %s: video latents %.2e, audio latents %.2e\n", variant.c_str(), ev,
                ea);
    EXPECT_LE(ev, kEndTol);
    EXPECT_LE(ea, kEndTol);
  }
  EXPECT_GE(runs, 1) << "no reference holds a whole image-to-video run";
}

// The built-in model carries an encoder whose latent fits its pipeline's grid, and a written
// snapshot carries the same encoder.
TEST(Ltx2ImageToVideoTest, TinyModelEncodesAnImageAndSnapshotKeepsTheEncoder) {
  auto spec = BuiltinSpec("ltx2-tiny");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto models = BuildModels(*spec);
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_NE(models->video_encoder, nullptr);
  const auto& vc = models->video_vae->config();
  const int64_t height = 2 * vc.spatial_compression_ratio, width = 3 * vc.spatial_compression_ratio;
  const at::Tensor image = at::randint(0, 256, {45, 61, 3}, at::kByte);
  auto first = EncodeConditioningImage(*models->video_encoder, image, height, width);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->sizes(), (at::IntArrayRef{1, vc.latent_channels, 1, 2, 3}));
  // Its decoder's statistics are the encoder's.
  EXPECT_TRUE(at::equal(models->video_encoder->latents_mean(), models->video_vae->latents_mean()));
  EXPECT_TRUE(at::equal(models->video_encoder->latents_std(), models->video_vae->latents_std()));

  auto pipeline = Take(Ltx2Pipeline::Create(models->networks(), GuidanceOptions{}));
  ASSERT_NE(pipeline, nullptr);
  Ltx2LatentInit init;
  init.num_frames = 9;
  init.height = height;
  init.width = width;
  init.seed = 3;
  init.num_inference_steps = 2;
  init.first_frame_latent = *first;
  auto state = pipeline->PrepareLatents(init);
  ASSERT_TRUE(state.ok()) << state.status();

  const std::string dir =
      (std::filesystem::temp_directory_path() / ("ltx2_i2v_snapshot_" + std::to_string(getpid())))
          .string();
  ASSERT_TRUE(WriteSnapshot(*spec, dir, {.num_shards = 1}).ok());
  auto read = SpecFromSnapshot(dir);
  ASSERT_TRUE(read.ok()) << read.status();
  auto encoder = BuildVideoEncoder(*read);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  auto again = EncodeConditioningImage(**encoder, image, height, width);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(at::equal(*again, *first));
  std::filesystem::remove_all(dir);
}

// A snapshot's vae/ may lack the encoder (no image-to-video then); an encoder that is there is
// checked like every other tensor.
TEST(Ltx2ImageToVideoTest, SnapshotEncoderIsOptionalButChecked) {
  auto spec = BuiltinSpec("ltx2-tiny");
  ASSERT_TRUE(spec.ok()) << spec.status();
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("ltx2_i2v_optional_" + std::to_string(getpid()));
  ASSERT_TRUE(WriteSnapshot(*spec, dir.string(), {.num_shards = 1}).ok());
  const std::string vae_file = (dir / "vae" / "diffusion_pytorch_model.safetensors").string();
  std::map<std::string, OwnedTensor> tensors;
  {
    auto original = SafetensorsFile::Open(vae_file);
    ASSERT_TRUE(original.ok()) << original.status();
    for (const auto& [name, view] : (*original)->tensors()) {
      tensors[name] =
          OwnedTensor{view.dtype, view.shape,
                      std::string(reinterpret_cast<const char*>(view.data), view.nbytes)};
    }
  }
  const std::string victim = "encoder.mid_block.resnets.0.conv1.conv.weight";
  ASSERT_EQ(tensors.count(victim), 1u);
  {  // No encoder at all: reads, builds without one.
    auto t = tensors;
    for (auto it = t.begin(); it != t.end();) {
      it = it->first.rfind("encoder.", 0) == 0 ? t.erase(it) : std::next(it);
    }
    ASSERT_TRUE(WriteSafetensors(vae_file, t).ok());
    auto read = SpecFromSnapshot(dir.string());
    ASSERT_TRUE(read.ok()) << read.status();
    auto models = BuildModels(*read);
    ASSERT_TRUE(models.ok()) << models.status();
    EXPECT_EQ(models->video_encoder, nullptr);
    EXPECT_EQ(BuildVideoEncoder(*read).status().code(), absl::StatusCode::kNotFound);
  }
  {  // One encoder tensor missing.
    auto t = tensors;
    t.erase(victim);
    ASSERT_TRUE(WriteSafetensors(vae_file, t).ok());
    auto s = SpecFromSnapshot(dir.string()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
    EXPECT_NE(std::string(s.message()).find(victim), std::string::npos) << s;
  }
  {  // One encoder tensor misshaped.
    auto t = tensors;
    t[victim].shape.push_back(1);
    ASSERT_TRUE(WriteSafetensors(vae_file, t).ok());
    auto s = SpecFromSnapshot(dir.string()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.message()).find(victim), std::string::npos) << s;
    EXPECT_NE(std::string(s.message()).find(vae_file), std::string::npos) << s;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
