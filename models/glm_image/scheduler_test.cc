#include "models/glm_image/scheduler.h"

#include <ATen/ATen.h>

#include <fstream>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/weights.h"
#include "models/glm_image/dit.h"

namespace diffmesh::models::glm_image {
namespace {

const std::string kRoot = "glm-image-ref-a/";

at::Tensor Fixture(const Checkpoint& ckpt, const std::string& name) {
  const TensorView* v = ckpt.Find(name);
  EXPECT_NE(v, nullptr) << "fixture lacks " << name;
  return v == nullptr ? at::Tensor() : ToTensor(*v);
}

nlohmann::json LoopJson() {
  std::ifstream in(FixturePath(kRoot + "denoise_loop.json"));
  return nlohmann::json::parse(in);
}

std::unique_ptr<FlowMatchEulerScheduler> FixtureScheduler() {
  auto s = FlowMatchEulerScheduler::Load(FixturePath(kRoot + "scheduler/scheduler_config.json"));
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(s).value() : nullptr;
}

// Image sequence length as the pipeline computes it: DiT patches of the latent grid.
int64_t ImageSeqLen(const at::Tensor& latents, int64_t patch_size) {
  return (latents.size(2) * latents.size(3)) / (patch_size * patch_size);
}

TEST(FlowMatchEulerSchedulerTest, ConfigFromFixture) {
  auto c = SchedulerConfig::FromFile(FixturePath(kRoot + "scheduler/scheduler_config.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_train_timesteps, 1000);
  EXPECT_TRUE(c->use_dynamic_shifting);
  EXPECT_EQ(c->time_shift_type, "linear");
  EXPECT_DOUBLE_EQ(c->base_shift, 0.25);
  EXPECT_DOUBLE_EQ(c->max_shift, 0.75);
  EXPECT_EQ(c->base_image_seq_len, 256);
  EXPECT_FALSE(c->shift_terminal.has_value());

  auto defaults = SchedulerConfig::FromJson(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->time_shift_type, "exponential");
  EXPECT_FALSE(defaults->use_dynamic_shifting);
  EXPECT_FALSE(SchedulerConfig::FromJson({{"time_shift_type", "cubic"}}).ok());
  SchedulerConfig karras;
  karras.use_karras_sigmas = true;
  EXPECT_FALSE(FlowMatchEulerScheduler::Create(karras).ok());
}

TEST(FlowMatchEulerSchedulerTest, ShiftAndScheduleMatchReference) {
  auto sched = FixtureScheduler();
  ASSERT_TRUE(sched);
  auto io = Checkpoint::Open(FixturePath(kRoot + "denoise_loop_io.safetensors"));
  ASSERT_TRUE(io.ok()) << io.status();
  const nlohmann::json loop = LoopJson();

  auto dit_config = DitConfig::FromFile(FixturePath(kRoot + "transformer/config.json"));
  ASSERT_TRUE(dit_config.ok());
  const int64_t seq_len = ImageSeqLen(Fixture(**io, "initial_latents"), dit_config->patch_size);
  EXPECT_EQ(seq_len, 64);
  const double mu = CalculateShift(seq_len, sched->config());
  EXPECT_EQ(mu, 0.625);
  EXPECT_EQ(mu, loop["mu"].get<double>());
  EXPECT_EQ(CalculateShift(seq_len, 256, 0.25, 0.75), 0.625);

  ASSERT_TRUE(sched->SetTimesteps(loop["steps"].get<int64_t>(), mu).ok());
  at::Tensor timesteps = Fixture(**io, "timesteps");
  at::Tensor sigmas = Fixture(**io, "sigmas");
  EXPECT_TRUE(at::equal(sched->timesteps_tensor(), timesteps))
      << sched->timesteps_tensor() << " vs " << timesteps;
  EXPECT_TRUE(at::equal(sched->sigmas_tensor(), sigmas))
      << sched->sigmas_tensor() << " vs " << sigmas;

  EXPECT_FALSE(sched->SetTimesteps(4, std::nullopt).ok());  // dynamic shifting needs mu
}

TEST(FlowMatchEulerSchedulerTest, ScheduleShape) {
  auto sched = FixtureScheduler();
  ASSERT_TRUE(sched);
  ASSERT_TRUE(sched->SetTimesteps(50, CalculateShift(4096, sched->config())).ok());
  ASSERT_EQ(sched->num_steps(), 50);
  ASSERT_EQ(sched->sigmas().size(), 51u);
  EXPECT_EQ(sched->timesteps().front(), 1000.0f);
  EXPECT_EQ(sched->sigmas().front(), 1.0f);
  EXPECT_EQ(sched->sigmas().back(), 0.0f);
  for (int64_t i = 0; i + 1 < 51; ++i) EXPECT_GT(sched->sigmas()[i], sched->sigmas()[i + 1]);

  // Static shift without dynamic shifting: σ' = sσ / (1 + (s − 1)σ).
  SchedulerConfig c;
  c.shift = 3.0;
  auto s3 = FlowMatchEulerScheduler::Create(c);
  ASSERT_TRUE(s3.ok());
  ASSERT_TRUE((*s3)->SetSigmas({1.0f, 0.5f}, std::nullopt).ok());
  EXPECT_FLOAT_EQ((*s3)->sigmas()[1], 0.75f);
  EXPECT_FLOAT_EQ((*s3)->timesteps()[1], 750.0f);
}

TEST(FlowMatchEulerSchedulerTest, EulerStep) {
  auto sched = FixtureScheduler();
  ASSERT_TRUE(sched);
  ASSERT_TRUE(sched->SetTimesteps(4, 0.625).ok());
  at::Tensor x = at::ones({2, 3});
  at::Tensor v = at::full({2, 3}, 2.0);
  const float dt = sched->sigmas()[2] - sched->sigmas()[1];
  at::Tensor y = sched->Step(v, 1, x);
  EXPECT_TRUE(at::allclose(y, at::full({2, 3}, 1.0 + 2.0 * dt)));
  EXPECT_EQ(y.scalar_type(), at::kFloat);
}

// The reference text-to-image loop (pipeline_glm_image.py, without KV cache / condition
// images): per step, the transformer runs twice on the same latents with timestep t − 1 —
// conditional (prompt embeddings, no prior token dropped) and unconditional (negative prompt
// embeddings, every prior token dropped) — combined as u + g·(c − u), then one Euler step.
TEST(FlowMatchEulerSchedulerTest, DenoiseLoopMatchesReference) {
  auto dit = GlmImageDit::Load(FixturePath(kRoot + "transformer"));
  ASSERT_TRUE(dit.ok()) << dit.status();
  auto sched = FixtureScheduler();
  ASSERT_TRUE(sched);
  auto io = Checkpoint::Open(FixturePath(kRoot + "denoise_loop_io.safetensors"));
  ASSERT_TRUE(io.ok()) << io.status();
  const nlohmann::json loop = LoopJson();

  at::Tensor latents = Fixture(**io, "initial_latents");                 // [1, 16, 16, 16]
  at::Tensor prompt_embeds = Fixture(**io, "prompt_embeds");             // [1, 7, 32]
  at::Tensor negative_embeds = Fixture(**io, "negative_prompt_embeds");  // [1, 1, 32]
  at::Tensor prior_ids = Fixture(**io, "prior_token_ids");               // [1, 64]
  const double guidance = loop["guidance_scale"].get<double>();
  const int64_t batch = latents.size(0);

  const double mu =
      CalculateShift(ImageSeqLen(latents, (*dit)->config().patch_size), sched->config());
  ASSERT_TRUE(sched->SetTimesteps(loop["steps"].get<int64_t>(), mu).ok());

  // target_size = (height, width) in pixels; crops_coords_top_left = (0, 0). The reference loop
  // took height/width as latent size × 8 (GLM-Image's VAE factor), i.e. (128, 128), although the
  // tiny fixture VAE only upsamples 2× (`image` is 32×32): (32, 32) misses by ~3e-3.
  constexpr int64_t kPixelsPerLatent = 8;
  const std::vector<float> hw = {static_cast<float>(latents.size(2) * kPixelsPerLatent),
                                 static_cast<float>(latents.size(3) * kPixelsPerLatent)};
  at::Tensor target_size = at::tensor(hw).view({1, 2}).repeat({batch, 1});
  at::Tensor crop_coords = at::zeros({batch, 2});

  DitInputs cond;
  cond.encoder_hidden_states = prompt_embeds;
  cond.prior_token_id = prior_ids;
  cond.prior_token_drop = at::zeros_like(prior_ids, at::kBool);
  cond.target_size = target_size;
  cond.crop_coords = crop_coords;
  DitInputs uncond = cond;
  uncond.encoder_hidden_states = negative_embeds;
  uncond.prior_token_drop = at::ones_like(prior_ids, at::kBool);

  for (int64_t i = 0; i < sched->num_steps(); ++i) {
    // float32 t − 1, broadcast over the batch.
    at::Tensor timestep = at::full({batch}, sched->timesteps()[i], at::kFloat) - 1;
    cond.hidden_states = uncond.hidden_states = latents;
    cond.timestep = uncond.timestep = timestep;
    at::Tensor c = (*dit)->Forward(cond).to(at::kFloat);
    at::Tensor u = (*dit)->Forward(uncond).to(at::kFloat);
    at::Tensor noise_pred = u + guidance * (c - u);
    latents = sched->Step(noise_pred, i, latents);
  }

  // ≤ 1e-4: four steps × two transformer calls accumulate fp32 rounding differences.
  const double err = RelativeError(latents, Fixture(**io, "final_latents"));
  std::printf("denoise loop final_latents rel err = %.3g\n", err);
  EXPECT_LE(err, 1e-4);
}

}  // namespace
}  // namespace diffmesh::models::glm_image
