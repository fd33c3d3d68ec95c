// bench_ltx2_e2e: one LTX-2.3 text-to-video-with-audio generation at the released configuration
// (48-block transformer, Gemma 3 12B text encoder, 8-layer connectors, video VAE, audio VAE, BWE
// vocoder), random weights built on the device, bf16 on CUDA (the vocoder float32): each stage
// timed (tokenise + text encoder + connectors, latent preparation, every denoising step, video
// decode, audio decode + vocoder, frames to the host) and the total. The model layer in one
// process, as `diffmesh generate` embeds it; MP4 muxing is not included. Warm-up generations run
// first and are not counted. Prints a line starting FINAL with JSON.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <vector>

#include "absl/flags/flag.h"
#include "common/flags/flags.h"
#include "models/core/ops.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/release_configs.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(int, height, 512, "Video height in pixels.");
ABSL_FLAG(int, width, 768, "Video width in pixels.");
ABSL_FLAG(int, frames, 121, "Video frames (8k+1).");
ABSL_FLAG(double, fps, 24.0, "Frame rate.");
ABSL_FLAG(int, steps, 8, "Denoising steps.");
ABSL_FLAG(double, cfg, 1.0, "CFG scale, both streams (1 = off: no negative branch).");
ABSL_FLAG(double, stg, 0.0, "STG scale, both streams (0 = off).");
ABSL_FLAG(double, modality, 1.0, "Modality scale, both streams (1 = off).");
ABSL_FLAG(int, warmup, 1, "Untimed generations first.");
ABSL_FLAG(bool, vae_tiling, false, "Decode the video in spatial and temporal tiles.");
ABSL_FLAG(bool, bf16_decoders, false,
          "Video and audio VAE decoders in bf16 (default: their serving dtype, float32 on CUDA, "
          "as the denoise service runs them).");

namespace {

namespace ltx2 = diffmesh::models::ltx2;
using Clock = std::chrono::steady_clock;

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::cerr << s << "\n";
    std::exit(1);
  }
}

// Waits for the device's queued work (the default stream is the only one used).
void Sync(const at::Device& device) {
  if (device.is_cuda()) at::zeros({1}, at::TensorOptions().device(device)).item<float>();
}

struct Timer {
  at::Device device;
  Clock::time_point t0 = Clock::now();
  double Lap() {
    Sync(device);
    const auto now = Clock::now();
    const double s = std::chrono::duration<double>(now - t0).count();
    t0 = now;
    return s;
  }
};

nlohmann::json Generate(const ltx2::Ltx2Models& models, const ltx2::Ltx2Pipeline& pipeline,
                        const at::Device& device) {
  const ltx2::Ltx2Spec spec = ltx2::ReleaseSpec();
  nlohmann::json t;
  Timer timer{device};
  const auto begin = Clock::now();
  const bool negative = absl::GetFlag(FLAGS_cfg) != 1.0;
  std::vector<std::string> prompts = {
      "A red fox runs through fresh snow at sunrise, its breath visible, wind in the pines"};
  if (negative) prompts.insert(prompts.begin(), "blurry, low quality, distorted");
  auto embeds = ltx2::EncodePrompts(models, spec, prompts);
  const int64_t n = negative ? 1 : 0;
  auto text = pipeline.EncodeText(embeds.prompt_embeds.narrow(0, n, 1),
                                  embeds.attention_mask.narrow(0, n, 1),
                                  negative ? embeds.prompt_embeds.narrow(0, 0, 1) : at::Tensor(),
                                  negative ? embeds.attention_mask.narrow(0, 0, 1) : at::Tensor());
  Check(text.status());
  t["text_s"] = timer.Lap();

  ltx2::Ltx2LatentInit init;
  init.height = absl::GetFlag(FLAGS_height);
  init.width = absl::GetFlag(FLAGS_width);
  init.num_frames = absl::GetFlag(FLAGS_frames);
  init.frame_rate = absl::GetFlag(FLAGS_fps);
  init.num_inference_steps = absl::GetFlag(FLAGS_steps);
  init.seed = 42;
  auto state = pipeline.PrepareLatents(init);
  Check(state.status());
  t["prepare_s"] = timer.Lap();

  std::vector<double> steps;
  int64_t calls = 0;
  while (!state->done()) {
    auto predictions = pipeline.RunLiveBranches(*state, *text);
    Check(predictions.status());
    calls += static_cast<int64_t>(predictions->size());
    Check(pipeline.Step(*state, *predictions));
    steps.push_back(timer.Lap());
  }
  double denoise = 0;
  for (double s : steps) denoise += s;
  t["steps_s"] = steps;
  t["denoise_s"] = denoise;
  t["branch_calls"] = calls;

  ltx2::Ltx2DecodeOptions video_only;
  video_only.decode_audio = false;
  auto video = pipeline.Decode(*state, video_only);
  Check(video.status());
  t["video_decode_s"] = timer.Lap();
  ltx2::Ltx2DecodeOptions audio_only;
  audio_only.decode_video = false;
  auto audio = pipeline.Decode(*state, audio_only);
  Check(audio.status());
  t["audio_decode_s"] = timer.Lap();
  at::Tensor frames = video->frames_uint8.cpu();
  at::Tensor wave = audio->waveform.cpu();
  t["to_host_s"] = timer.Lap();
  t["total_s"] = std::chrono::duration<double>(Clock::now() - begin).count();
  t["frames_shape"] = frames.sizes().vec();
  t["waveform_shape"] = wave.sizes().vec();
  t["sample_rate"] = audio->sample_rate;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
                       "bench_ltx2_e2e [--steps 8 --height 512 --width 768 --frames 121]\n"
                       "Times one LTX-2.3 generation at the released configuration.");
  const bool cuda = at::hasCUDA();
  const at::Device device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const at::ScalarType dtype = cuda ? at::kBFloat16 : at::kFloat;
  const auto t0 = Clock::now();
  if (cuda) diffmesh::models::UseTensorCoresForFloat32();  // as the stages serve
  auto models = ltx2::BuildReleaseModels(
      dtype, device, absl::GetFlag(FLAGS_bf16_decoders) ? at::kBFloat16 : at::ScalarType::Undefined);
  Check(models.status());
  if (absl::GetFlag(FLAGS_vae_tiling)) {
    ltx2::VideoVaeTiling tiling;
    tiling.spatial = true;
    tiling.temporal = true;
    models->video_vae->set_tiling(tiling);
  }
  const double build_s = std::chrono::duration<double>(Clock::now() - t0).count();
  ltx2::GuidanceOptions guidance;
  for (ltx2::StreamGuidance* g : {&guidance.video, &guidance.audio}) {
    g->cfg = absl::GetFlag(FLAGS_cfg);
    g->stg = absl::GetFlag(FLAGS_stg);
    g->modality = absl::GetFlag(FLAGS_modality);
  }
  if (guidance.video.stg != 0) guidance.stg_blocks = {28};
  auto pipeline = ltx2::Ltx2Pipeline::Create(models->networks(), guidance);
  Check(pipeline.status());
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) {
    nlohmann::json w = Generate(*models, **pipeline, device);
    std::printf("warm-up %s\n", w.dump().c_str());
  }
  nlohmann::json res = Generate(*models, **pipeline, device);
  res["build_s"] = build_s;
  res["device"] = cuda ? "cuda" : "cpu";
  res["dtype"] = cuda ? "bf16" : "f32";
  res["decoder_dtype"] = absl::GetFlag(FLAGS_bf16_decoders) ? "bf16" : "serving";
  res["height"] = absl::GetFlag(FLAGS_height);
  res["width"] = absl::GetFlag(FLAGS_width);
  res["frames"] = absl::GetFlag(FLAGS_frames);
  res["steps"] = absl::GetFlag(FLAGS_steps);
  res["guidance"] = {{"cfg", guidance.video.cfg},
                     {"stg", guidance.video.stg},
                     {"modality", guidance.video.modality}};
  std::printf("FINAL %s\n", res.dump().c_str());
  return 0;
}
