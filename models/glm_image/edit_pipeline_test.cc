// The DiT/VAE side of an edit request against glm-image-edit-ref-a: VAE encoding of the
// condition image (vae_encode_io), the DiT's KV-cache write pass and a read pass with and without
// the cache (transformer_kv_io), and the 3-step edit loop as GlmImagePipeline runs it
// (denoise_loop_io + denoise_loop.json).
#include "models/glm_image/edit_pipeline.h"

#include <ATen/ATen.h>

#include <iostream>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "gtest/gtest.h"
#include "models/core/config_json.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/weights.h"
#include "models/glm_image/ar_prompt.h"
#include "models/glm_image/condition_image.h"
#include "models/glm_image/glm_image_spec.h"
#include "models/glm_image/vision_tokenizer.h"

namespace diffmesh::models::glm_image {
namespace {

const std::string kSet = "glm-image-edit-ref-a/";

at::Tensor Fixture(const Checkpoint& ckpt, const std::string& name) {
  const TensorView* v = ckpt.Find(name);
  EXPECT_NE(v, nullptr) << "fixture lacks " << name;
  return v == nullptr ? at::Tensor() : ToTensor(*v);
}

std::unique_ptr<Checkpoint> Open(const std::string& file) {
  auto ckpt = Checkpoint::Open(FixturePath(kSet + file));
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  return ckpt.ok() ? std::move(*ckpt) : nullptr;
}

double Check(const std::string& what, const at::Tensor& got, const at::Tensor& want,
             double tolerance) {
  EXPECT_EQ(got.sizes(), want.sizes()) << what;
  if (got.sizes() != want.sizes()) return 1.0;
  const double err = RelativeError(got, want);
  std::cout << what << " rel err " << err << "\n";
  EXPECT_LE(err, tolerance) << what;
  return err;
}

TEST(EditPipelineTest, VaeEncodesConditionImage) {
  auto vae = AutoencoderKl::Load(FixturePath(kSet + "vae"));
  ASSERT_TRUE(vae.ok()) << vae.status();
  auto io = Open("vae_encode_io.safetensors");
  ASSERT_TRUE(io);
  const at::Tensor image = Fixture(*io, "image_0.preprocessed");
  const auto dist = (*vae)->Encode(image);
  Check("latent_mean", dist.mean, Fixture(*io, "image_0.latent_mean"), 1e-5);
  Check("latent_logvar", dist.logvar, Fixture(*io, "image_0.latent_logvar"), 1e-5);
  auto latents = EncodeConditionLatents(**vae, image);
  ASSERT_TRUE(latents.ok()) << latents.status();
  Check("condition_latents", *latents, Fixture(*io, "image_0.condition_latents"), 1e-5);

  auto decoder_only = AutoencoderKl::Load(FixturePath(kSet + "vae"), at::kFloat,
                                          VaeParts::kDecoderOnly);
  ASSERT_TRUE(decoder_only.ok());
  EXPECT_EQ(EncodeConditionLatents(**decoder_only, image).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(EditPipelineTest, KvCacheWriteAndReadPasses) {
  auto dit = GlmImageDit::Load(FixturePath(kSet + "transformer"));
  ASSERT_TRUE(dit.ok()) << dit.status();
  auto io = Open("transformer_kv_io.safetensors");
  ASSERT_TRUE(io);
  const int64_t layers = (*dit)->config().num_layers;

  // One write pass per condition image present in the fixture, into one cache.
  DitKvCache cache;
  for (int i = 0; (*io).Find("write_" + std::to_string(i) + ".hidden_states") != nullptr; ++i) {
    const std::string w = "write_" + std::to_string(i) + ".";
    const at::Tensor target_size = Fixture(*io, w + "target_size");
    auto sample = WriteConditionKv(**dit, Fixture(*io, w + "hidden_states"),
                                   Fixture(*io, w + "prior_token_id"),
                                   target_size[0][0].item<int64_t>(),
                                   target_size[0][1].item<int64_t>(), cache);
    ASSERT_TRUE(sample.ok()) << sample.status();
    Check(w + "sample", *sample, Fixture(*io, w + "sample"), 1e-5);
  }
  ASSERT_EQ(static_cast<int64_t>(cache.keys.size()), layers);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string c = "kv_cache.layer_" + std::to_string(l) + ".";
    Check(c + "key", cache.keys[l], Fixture(*io, c + "key"), 1e-5);
    Check(c + "value", cache.values[l], Fixture(*io, c + "value"), 1e-5);
  }

  DitInputs in;
  in.hidden_states = Fixture(*io, "read.hidden_states");
  in.encoder_hidden_states = Fixture(*io, "read.encoder_hidden_states");
  in.prior_token_id = Fixture(*io, "read.prior_token_id");
  in.prior_token_drop = at::zeros(in.prior_token_id.sizes(), at::kBool);
  in.timestep = Fixture(*io, "read.timestep");
  in.target_size = Fixture(*io, "read.target_size");
  in.crop_coords = Fixture(*io, "read.crop_coords");
  const at::Tensor without = (*dit)->Forward(in);
  Check("read.sample_without_cache", without, Fixture(*io, "read.sample_without_cache"), 1e-5);
  in.kv_read = &cache;
  const at::Tensor with = (*dit)->Forward(in);
  Check("read.sample_with_cache", with, Fixture(*io, "read.sample_with_cache"), 1e-5);
  // The cache must matter (the fixture records how much).
  EXPECT_GT(RelativeError(with, without), 1e-3);

  // Two condition images: the second write pass appends after the first (and does not attend
  // to it), so writing the same image twice gives the one-image cache twice along N.
  DitKvCache twice;
  for (int r = 0; r < 2; ++r) {
    const at::Tensor ts = Fixture(*io, "write_0.target_size");
    ASSERT_TRUE(WriteConditionKv(**dit, Fixture(*io, "write_0.hidden_states"),
                                 Fixture(*io, "write_0.prior_token_id"), ts[0][0].item<int64_t>(),
                                 ts[0][1].item<int64_t>(), twice)
                    .ok());
  }
  DitKvCache once;
  const at::Tensor ts0 = Fixture(*io, "write_0.target_size");
  ASSERT_TRUE(WriteConditionKv(**dit, Fixture(*io, "write_0.hidden_states"),
                               Fixture(*io, "write_0.prior_token_id"), ts0[0][0].item<int64_t>(),
                               ts0[0][1].item<int64_t>(), once)
                  .ok());
  EXPECT_EQ(twice.num_tokens(), 2 * once.num_tokens());
  for (int64_t l = 0; l < layers; ++l) {
    EXPECT_TRUE(at::equal(twice.keys[l], at::cat({once.keys[l], once.keys[l]}, 1)));
    EXPECT_TRUE(at::equal(twice.values[l], at::cat({once.values[l], once.values[l]}, 1)));
  }
  // An empty cache reads as no cache, bit for bit (the text-to-image path).
  DitKvCache empty;
  in.kv_read = &empty;
  EXPECT_TRUE(at::equal((*dit)->Forward(in), without));

  // A prior-token count that does not fit the latent grid is an error.
  DitKvCache other;
  EXPECT_FALSE(WriteConditionKv(**dit, Fixture(*io, "write_0.hidden_states"),
                                at::zeros({3}, at::kLong), 64, 96, other)
                   .ok());
}

TEST(EditPipelineTest, DenoiseLoopMatchesPipeline) {
  auto dit = GlmImageDit::Load(FixturePath(kSet + "transformer"));
  ASSERT_TRUE(dit.ok()) << dit.status();
  auto vae = AutoencoderKl::Load(FixturePath(kSet + "vae"));
  ASSERT_TRUE(vae.ok()) << vae.status();
  auto scheduler = FlowMatchEulerScheduler::Load(FixturePath(kSet + "scheduler/scheduler_config.json"));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  auto loop_json = ReadJsonFile(FixturePath(kSet + "denoise_loop.json"));
  ASSERT_TRUE(loop_json.ok()) << loop_json.status();
  auto io = Open("denoise_loop_io.safetensors");
  ASSERT_TRUE(io);

  const int64_t steps = (*loop_json)["steps"].get<int64_t>();
  const int64_t height = (*loop_json)["height"].get<int64_t>();
  const int64_t width = (*loop_json)["width"].get<int64_t>();
  const DitConfig& dc = (*dit)->config();
  const int64_t vae_scale = (*vae)->config().ScaleFactor();

  // Schedule: the target's patch count only (condition tokens do not count).
  const int64_t image_seq_len = (height / vae_scale) * (width / vae_scale) / (dc.patch_size * dc.patch_size);
  EXPECT_EQ(image_seq_len, (*loop_json)["image_seq_len"].get<int64_t>());
  const double mu = CalculateShift(image_seq_len, (*scheduler)->config());
  EXPECT_NEAR(mu, (*loop_json)["mu"].get<double>(), 1e-12);
  ASSERT_TRUE((*scheduler)->SetTimesteps(steps, mu).ok());
  Check("timesteps", (*scheduler)->timesteps_tensor(), Fixture(*io, "timesteps"), 1e-7);
  Check("sigmas", (*scheduler)->sigmas_tensor(), Fixture(*io, "sigmas"), 1e-7);

  // Condition: VAE encode, then one write pass per image with its d16 tokens.
  const at::Tensor grids = Fixture(*io, "source_image_grid_thw");  // d16 grids
  const at::Tensor cond_ids = Fixture(*io, "prior_token_image_ids");
  DitKvCache cache;
  int64_t start = 0;
  for (int64_t i = 0; i < grids.size(0); ++i) {
    const at::Tensor image = Fixture(*io, "condition_image_" + std::to_string(i) + ".preprocessed");
    auto latents = EncodeConditionLatents(**vae, image);
    ASSERT_TRUE(latents.ok()) << latents.status();
    const int64_t n = grids[i][1].item<int64_t>() * grids[i][2].item<int64_t>();
    auto written = WriteConditionKv(**dit, *latents, cond_ids.narrow(0, start, n), image.size(2),
                                    image.size(3), cache);
    ASSERT_TRUE(written.ok()) << written.status();
    start += n;
  }
  EXPECT_EQ(start, cond_ids.numel());
  EXPECT_EQ(cache.num_tokens(), cond_ids.numel());

  EditDenoiseInputs in;
  in.latents = Fixture(*io, "initial_latents");
  in.prompt_embeds = Fixture(*io, "prompt_embeds");
  in.negative_prompt_embeds = Fixture(*io, "negative_prompt_embeds");
  in.prior_token_ids = Fixture(*io, "prior_token_ids");
  in.height = height;
  in.width = width;
  in.guidance_scale = (*loop_json)["guidance_scale"].get<double>();
  int64_t seen = 0;
  auto final_latents = RunEditDenoiseLoop(**dit, **scheduler, cache, in, [&](const EditStep& s) {
    const std::string p = "step_" + std::to_string(s.index) + ".";
    Check(p + "latents_in", s.latents_in, Fixture(*io, p + "latents_in"), 1e-5);
    Check(p + "timestep_model", s.timestep_model, Fixture(*io, p + "timestep_model"), 1e-7);
    Check(p + "noise_pred_cond", s.noise_pred_cond, Fixture(*io, p + "noise_pred_cond"), 1e-5);
    Check(p + "noise_pred_uncond", s.noise_pred_uncond, Fixture(*io, p + "noise_pred_uncond"), 1e-5);
    Check(p + "noise_pred", s.noise_pred, Fixture(*io, p + "noise_pred"), 1e-5);
    Check(p + "latents_out", s.latents_out, Fixture(*io, p + "latents_out"), 1e-5);
    ++seen;
  });
  ASSERT_TRUE(final_latents.ok()) << final_latents.status();
  EXPECT_EQ(seen, steps);
  Check("final_latents", *final_latents, Fixture(*io, "final_latents"), 1e-4);

  const at::Tensor decoded = (*vae)->DecodeNormalized(*final_latents);
  Check("decoded", decoded, Fixture(*io, "decoded"), 1e-4);
  Check("image", (decoded / 2 + 0.5).clamp(0, 1), Fixture(*io, "image"), 1e-4);
}

// The built-in tiny model composes the whole edit path from RGB pixels: AR preprocessing and VQ
// tokens (in the codebook, as many as the grid), the edit prompt, VAE encoding, the write pass
// and a guided loop whose result depends on the condition.
TEST(EditPipelineTest, BuiltinTinyModelRunsAnEdit) {
  auto spec = BuiltinSpec("glm-image-tiny");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto processor = BuildArImageProcessorConfig(*spec);
  ASSERT_TRUE(processor.ok()) << processor.status();
  auto tokenizer = BuildVisionTokenizer(*spec);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto vae = BuildVae(*spec);
  ASSERT_TRUE(vae.ok()) << vae.status();
  auto dit = BuildDit(*spec);
  ASSERT_TRUE(dit.ok()) << dit.status();
  auto ar_config = ArConfig::FromJson(spec->vision_language_encoder);
  ASSERT_TRUE(ar_config.ok());

  // A random 128 × 192 (h × w) condition image.
  const int w = 192, h = 128;
  at::Tensor rgb = at::randint(0, 256, {h, w, 3}, at::kByte).contiguous();
  auto ar_image = PreprocessArConditionImage(*processor, rgb.data_ptr<uint8_t>(), w, h);
  ASSERT_TRUE(ar_image.ok()) << ar_image.status();
  EXPECT_EQ(ar_image->grid.height, h / 32);
  EXPECT_EQ(ar_image->grid.width, w / 32);
  auto tokens = (*tokenizer)->ImageTokens(ar_image->pixel_values, {ar_image->grid});
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->numel(), ar_image->grid.height * ar_image->grid.width);
  EXPECT_GE(tokens->min().item<int64_t>(), 0);
  EXPECT_LT(tokens->max().item<int64_t>(), (*dit)->config().prior_vq_quantizer_codebook_size);
  auto prompt = BuildImageToImagePrompt(spec->tokenizer, *ar_config, "make it blue",
                                        {ar_image->grid}, 64, 96);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  std::vector<int64_t> vq(tokens->data_ptr<int64_t>(), tokens->data_ptr<int64_t>() + tokens->numel());
  EXPECT_TRUE(PlaceImageTokens(prompt->ids, ar_config->image_token_id, vq).ok());

  auto pixels = PreprocessVaeConditionImage(rgb.data_ptr<uint8_t>(), w, h, 16);
  ASSERT_TRUE(pixels.ok()) << pixels.status();
  auto latents = EncodeConditionLatents(**vae, *pixels);
  ASSERT_TRUE(latents.ok()) << latents.status();
  DitKvCache cache;
  ASSERT_TRUE(WriteConditionKv(**dit, *latents, UpsampleTokenIds(*tokens, ar_image->grid), h, w,
                               cache)
                  .ok());
  EXPECT_EQ(cache.num_tokens(), 4 * tokens->numel());

  auto scheduler = BuildScheduler(*spec);
  ASSERT_TRUE(scheduler.ok());
  const int64_t out_h = 64, out_w = 96;  // target pixels
  ASSERT_TRUE((*scheduler)->SetTimesteps(2, CalculateShift((out_h / 16) * (out_w / 16),
                                                           (*scheduler)->config())).ok());
  const auto& dc = (*dit)->config();
  EditDenoiseInputs in;
  in.latents = at::randn({1, dc.in_channels, out_h / 8, out_w / 8});
  in.prompt_embeds = at::randn({1, 3, dc.text_embed_dim});
  in.negative_prompt_embeds = at::randn({1, 3, dc.text_embed_dim});
  in.prior_token_ids = at::randint(0, dc.prior_vq_quantizer_codebook_size,
                                   {1, (out_h / 16) * (out_w / 16)}, at::kLong);
  in.height = out_h;
  in.width = out_w;
  auto with = RunEditDenoiseLoop(**dit, **scheduler, cache, in);
  ASSERT_TRUE(with.ok()) << with.status();
  auto without = RunEditDenoiseLoop(**dit, **scheduler, DitKvCache{}, in);
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_EQ(with->sizes(), in.latents.sizes());
  // Tiny seeded weights (std 0.02) make the condition a small but real effect.
  EXPECT_GT(RelativeError(*with, *without), 1e-6);

  EditDenoiseInputs missing = in;
  missing.negative_prompt_embeds = at::Tensor();
  EXPECT_FALSE(RunEditDenoiseLoop(**dit, **scheduler, cache, missing).ok());
}

}  // namespace
}  // namespace diffmesh::models::glm_image
