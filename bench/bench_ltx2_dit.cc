// bench_ltx2_dit: one forward of the LTX-2.3 audio-video transformer at its released
// configuration (48 blocks, video 32x128, audio 32x64, 768x512x121 frames at 24 fps → 6144
// video tokens, 126 audio tokens, 1024 text tokens), random weights built on the device, bf16
// on CUDA when available (fp32 on the CPU). Prints model TFLOP/s (matmul and attention FLOPs of
// the forward, counted from the config) and a line starting FINAL with JSON.
// --tiny runs the built-in ltx2-tiny transformer instead (a compile-and-run check on the CPU).
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <vector>

#include <torch/version.h>

#if defined(DIFFMESH_KERNEL_PROFILE)
#include "bench/kernel_profile.h"
#endif
#include "absl/flags/flag.h"
#include "common/flags/flags.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/release_configs.h"
#include "models/ltx2/transformer.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(bool, tiny, false, "Use the built-in ltx2-tiny transformer config.");
ABSL_FLAG(int, layers, 0, "Transformer blocks (0: the config's; release 48).");
ABSL_FLAG(int, height, 512, "Video height in pixels.");
ABSL_FLAG(int, width, 768, "Video width in pixels.");
ABSL_FLAG(int, frames, 121, "Video frames (8k+1).");
ABSL_FLAG(double, fps, 24.0, "Frame rate.");
ABSL_FLAG(int, text_tokens, 1024, "Text tokens (connector output length).");
ABSL_FLAG(int, batch, 1, "Batch rows (2 = batched CFG).");
ABSL_FLAG(int, warmup, 2, "Untimed forwards first.");
ABSL_FLAG(int, iters, 5, "Timed forwards (median reported).");
ABSL_FLAG(std::string, sdpa, "default",
          "Attention backend on CUDA: default (LibTorch's choice), flash, cudnn or efficient.");
ABSL_FLAG(bool, dump_config, false,
          "Print the transformer config JSON (for bench/ltx2_dit_reference.py) and exit.");

namespace {

using Clock = std::chrono::steady_clock;
namespace ltx2 = diffmesh::models::ltx2;

// Matmul + attention FLOPs of one forward (2 per multiply-add), per the block structure.
double ForwardFlops(const ltx2::Ltx2TransformerConfig& c, double b, double nv, double na,
                    double t) {
  const double d = c.inner_dim(), da = c.audio_inner_dim();
  const double dt = c.cross_attention_dim, dat = c.audio_cross_attention_dim;
  auto linear = [](double n, double in, double out) { return 2.0 * n * in * out; };
  auto sdpa = [](double nq, double nk, double width) { return 4.0 * nq * nk * width; };
  double block = 0;
  // Self-attention, text cross-attention, FFN per stream.
  block += 4 * linear(nv, d, d) + sdpa(nv, nv, d);
  block += 2 * linear(nv, d, d) + 2 * linear(t, dt, d) + sdpa(nv, t, d);
  block += 2 * linear(nv, d, 4 * d);
  block += 4 * linear(na, da, da) + sdpa(na, na, da);
  block += 2 * linear(na, da, da) + 2 * linear(t, dat, da) + sdpa(na, t, da);
  block += 2 * linear(na, da, 4 * da);
  // Audio→video (video queries, inner = audio width) and video→audio.
  block += linear(nv, d, da) + 2 * linear(na, da, da) + linear(nv, da, d) + sdpa(nv, na, da);
  block += 2 * linear(na, da, da) + 2 * linear(nv, d, da) + sdpa(na, nv, da);
  const double io = linear(nv, c.in_channels, d) + linear(nv, d, c.out_channels) +
                    linear(na, c.audio_in_channels, da) + linear(na, da, c.audio_out_channels);
  return b * (c.num_layers * block + io);
}

}  // namespace

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
                       "bench_ltx2_dit [--tiny] [--layers 48 --height 512 --width 768 "
                       "--frames 121]\nTimes one LTX-2.3 transformer forward.");
  nlohmann::json cj = ltx2::ReleaseTransformerConfig();
  if (absl::GetFlag(FLAGS_tiny)) cj = ltx2::BuiltinSpec("ltx2-tiny")->transformer;
  if (absl::GetFlag(FLAGS_layers) > 0) cj["num_layers"] = absl::GetFlag(FLAGS_layers);
  if (absl::GetFlag(FLAGS_dump_config)) {
    std::printf("%s\n", cj.dump(2).c_str());
    return 0;
  }
  auto config = ltx2::Ltx2TransformerConfig::FromJson(cj);
  if (!config.ok()) {
    std::cerr << config.status() << "\n";
    return 1;
  }
  const bool cuda = at::hasCUDA();
#if TORCH_VERSION_MAJOR >= 2
  if (const std::string sdpa = absl::GetFlag(FLAGS_sdpa); sdpa != "default") {
    auto& ctx = at::globalContext();
    ctx.setSDPUseFlash(sdpa == "flash");
    ctx.setSDPUseCuDNN(sdpa == "cudnn");
    ctx.setSDPUseMemEfficient(sdpa == "efficient");
    ctx.setSDPUseMath(false);
  }
#endif
  const at::Device dev = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const at::ScalarType dtype = cuda ? at::kBFloat16 : at::kFloat;
  const auto opts = at::TensorOptions().dtype(dtype).device(dev);

  // Random weights drawn on the device (a release-size fp32 CPU copy would not fit).
  diffmesh::models::WeightMap weights =
      ltx2::RandomWeightsOn(ltx2::Ltx2Transformer::Params(*config), opts);
  auto model = ltx2::Ltx2Transformer::Create(*config, std::move(weights));
  if (!model.ok()) {
    std::cerr << model.status() << "\n";
    return 1;
  }
  const auto& c = *config;
  const int64_t b = absl::GetFlag(FLAGS_batch);
  const int64_t f = (absl::GetFlag(FLAGS_frames) - 1) / c.vae_scale_factors[0] + 1;
  const int64_t h = absl::GetFlag(FLAGS_height) / c.vae_scale_factors[1];
  const int64_t w = absl::GetFlag(FLAGS_width) / c.vae_scale_factors[2];
  const double fps = absl::GetFlag(FLAGS_fps);
  const int64_t na = static_cast<int64_t>(
      std::nearbyint(absl::GetFlag(FLAGS_frames) / fps * c.audio_sampling_rate /
                     c.audio_hop_length / c.audio_scale_factor));
  const int64_t t = absl::GetFlag(FLAGS_text_tokens);
  const int64_t nv = f * h * w;

  ltx2::Ltx2TransformerInputs in;
  in.hidden_states = at::randn({b, nv, c.in_channels}, opts);
  in.audio_hidden_states = at::randn({b, na, c.audio_in_channels}, opts);
  in.encoder_hidden_states = at::randn({b, t, c.cross_attention_dim}, opts);
  in.audio_encoder_hidden_states = at::randn({b, t, c.audio_cross_attention_dim}, opts);
  in.timestep = at::full({b}, 700.0, opts.dtype(at::kFloat));
  in.sigma = in.timestep;
  in.num_frames = f;
  in.height = h;
  in.width = w;
  in.fps = fps;
  in.audio_num_frames = na;
  ltx2::Ltx2ForwardOptions options;
  options.use_cross_timestep = true;

  auto forward = [&] {
    auto out = (*model)->Forward(in, options);
    if (!out.ok()) {
      std::cerr << out.status() << "\n";
      std::exit(1);
    }
    out->video.sum().item<float>();  // device sync
  };
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) forward();
#if defined(DIFFMESH_KERNEL_PROFILE)
  std::printf("%s", diffmesh::bench::ProfileKernels(forward, 40).c_str());
#endif
  std::vector<double> ms;
  for (int i = 0; i < absl::GetFlag(FLAGS_iters); ++i) {
    const auto t0 = Clock::now();
    forward();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double flops = ForwardFlops(c, b, nv, na, t);
  nlohmann::json res = {{"device", cuda ? "cuda" : "cpu"},
                        {"sdpa", absl::GetFlag(FLAGS_sdpa)},
                        {"dtype", cuda ? "bf16" : "f32"},
                        {"layers", c.num_layers},
                        {"video_tokens", nv},
                        {"audio_tokens", na},
                        {"text_tokens", t},
                        {"batch", b},
                        {"forward_ms", median},
                        {"tflop", flops / 1e12},
                        {"tflops", flops / median / 1e9}};
  std::printf("LTX-2 DiT forward: %ld video + %ld audio tokens, %.1f ms, %.2f TFLOP/s\n",
              static_cast<long>(nv), static_cast<long>(na), median, flops / median / 1e9);
  std::printf("FINAL %s\n", res.dump().c_str());
  return 0;
}
