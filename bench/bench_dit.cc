// bench_dit: one forward of the GLM-Image DiT at its released configuration (random weights),
// bf16 on one GPU, beside the measured bf16 matmul peak. Prints a line starting FINAL with JSON.
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "absl/flags/flag.h"
#include "common/flags/flags.h"
#include "models/glm_image/dit.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(int, layers, 30, "Transformer blocks (released model: 30).");
ABSL_FLAG(int, height, 1024, "Image height in pixels.");
ABSL_FLAG(int, width, 1024, "Image width in pixels.");
ABSL_FLAG(int, text_tokens, 128, "Glyph text tokens.");
ABSL_FLAG(int, warmup, 3, "Untimed forwards first.");
ABSL_FLAG(int, iters, 10, "Timed forwards (median reported).");

namespace {

using Clock = std::chrono::steady_clock;

// Median milliseconds of `fn` over `iters` runs after `warmup`, each ended by a device sync.
template <typename Fn>
double MedianMs(Fn fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  c10::cuda::device_synchronize();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    auto t0 = Clock::now();
    fn();
    c10::cuda::device_synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv, "bench_dit [--layers 30 --height 1024 --width 1024]\n"
                                   "Times one GLM-Image DiT forward (bf16, one GPU).");
  using namespace diffmesh::models;
  namespace gi = diffmesh::models::glm_image;
  if (!at::hasCUDA()) {
    std::cerr << "bench_dit: no CUDA device\n";
    return 1;
  }
  const at::Device dev(at::kCUDA, 0);
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(dev);
  nlohmann::json res;

  at::Tensor a = at::randn({8192, 8192}, bf16);
  const double mm_ms = MedianMs([&] { at::matmul(a, a); }, 3, 10);
  res["matmul_tflops"] = 2.0 * 8192.0 * 8192.0 * 8192.0 / mm_ms / 1e9;
  a.reset();

  gi::DitConfig c;  // released sizes
  c.num_layers = absl::GetFlag(FLAGS_layers);
  c.attention_head_dim = 128;
  c.num_attention_heads = 32;
  c.text_embed_dim = 1472;
  c.time_embed_dim = 512;
  c.condition_dim = 256;
  c.prior_vq_quantizer_codebook_size = 16384;
  // Random weights drawn on the device (the benchmark measures compute, not loading).
  auto gen = at::globalContext().defaultGenerator(dev);
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(0);
  }
  WeightMap w;
  int64_t params = 0;
  for (const ParamSpec& s : gi::GlmImageDit::Params(c)) {
    at::Tensor t = at::empty(s.shape, bf16);
    if (s.init == Init::kOnes) t.fill_(1);
    else if (s.init == Init::kZeros) t.zero_();
    else t.normal_(0, s.std, gen);
    params += t.numel();
    w.emplace(s.name, t);
  }
  auto dit = gi::GlmImageDit::Create(c, std::move(w));
  if (!dit.ok()) {
    std::cerr << "bench_dit: " << dit.status().message() << "\n";
    return 1;
  }
  const int64_t H = absl::GetFlag(FLAGS_height) / 8, W = absl::GetFlag(FLAGS_width) / 8;
  const int64_t T = absl::GetFlag(FLAGS_text_tokens), N = (H / 2) * (W / 2);
  gi::DitInputs in;
  in.hidden_states = at::randn({1, 16, H, W}, bf16);
  in.encoder_hidden_states = at::randn({1, T, 1472}, bf16);
  in.prior_token_id = at::randint(0, 16384, {1, N}, at::TensorOptions().dtype(at::kLong).device(dev));
  in.prior_token_drop = at::zeros({1, N}, at::TensorOptions().dtype(at::kBool).device(dev));
  in.timestep = at::full({1}, 500.0, at::TensorOptions().dtype(at::kFloat).device(dev));
  in.target_size = at::tensor({static_cast<float>(H * 8), static_cast<float>(W * 8)}).view({1, 2}).to(dev);
  in.crop_coords = at::zeros({1, 2}, at::TensorOptions().dtype(at::kFloat).device(dev));

  const double D = 4096, L = c.num_layers, S = N + T;
  const double lin_params = L * (4 * D * D + 2 * D * 4 * D);
  const double flops = 2 * lin_params * S + L * 4 * S * S * D;
  const double ms = MedianMs([&] { (*dit)->Forward(in); }, absl::GetFlag(FLAGS_warmup),
                             absl::GetFlag(FLAGS_iters));
  res["dit_params_B"] = params / 1e9;
  res["dit_tokens"] = S;
  res["dit_flops_T"] = flops / 1e12;
  res["dit_ms"] = ms;
  res["dit_tflops"] = flops / ms / 1e9;
  res["fraction_of_matmul_peak"] = res["dit_tflops"].get<double>() / res["matmul_tflops"].get<double>();
  std::cout << "FINAL " << res.dump() << std::endl;
  return 0;
}
