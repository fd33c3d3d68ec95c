// bench_ar: KV-cache decoding of the GLM-Image AR model at its released configuration (random
// weights, bf16, one GPU): ms per decode step and tokens/s at several batch sizes, beside the
// HBM floor (bytes a step must read over the measured copy bandwidth). Prints FINAL {json}.
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <chrono>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "common/flags/flags.h"
#include "models/glm_image/ar_model.h"
#include "models/glm_image/cuda/ar_decode.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(int, layers, 40, "Decoder layers (released model: 40).");
ABSL_FLAG(int, prompt_tokens, 64, "Prompt length prefilled into every slot.");
ABSL_FLAG(int, steps, 64, "Timed decode steps per batch size.");
ABSL_FLAG(std::string, batches, "1,4,16,64", "Batch sizes.");
ABSL_FLAG(std::string, decode, "bucketed",
          "bucketed (a CUDA graph per batch/length bucket of the project's decode kernels), "
          "aten-graph (the same graphs of the ATen composition) or eager (one ATen call per "
          "operator).");

ABSL_FLAG(bool, overlap, true,
          "Programmatic dependent launch between the decode kernels (bucketed decode).");

namespace {
using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
}  // namespace

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv, "bench_ar [--layers 40 --batches 1,4,16,64]\n"
                                   "Times GLM-Image AR decode steps (bf16, one GPU).");
  namespace gi = diffmesh::models::glm_image;
  using diffmesh::models::Init;
  if (!at::hasCUDA()) {
    std::cerr << "bench_ar: no CUDA device\n";
    return 1;
  }
  const at::Device dev(at::kCUDA, 0);
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(dev);
  nlohmann::json res;

  // Copy bandwidth: read + write of a 4 GiB buffer.
  {
    at::Tensor src = at::empty({int64_t{2} << 30}, bf16), dst = at::empty_like(src);
    dst.copy_(src);
    c10::cuda::device_synchronize();
    auto t0 = Clock::now();
    for (int i = 0; i < 5; ++i) dst.copy_(src);
    c10::cuda::device_synchronize();
    res["copy_GBps"] = 5.0 * 2 * src.nbytes() / (Since(t0) / 1e3) / 1e9;
  }

  // Weight streaming alone: y = x·Wᵀ over a 1 GiB bf16 matrix at batch 1, the decode GEMV
  // kernel beside cuBLAS (at::mm), each timed over 10 back-to-back calls.
  {
    at::Tensor wt = at::randn({65536, 8192}, bf16), x = at::randn({1, 8192}, bf16);
    at::Tensor y = at::empty({1, 65536}, bf16);
    namespace kc = diffmesh::models::glm_image::cuda;
    kc::GemvArgs g;
    g.w = wt.data_ptr();
    g.x = x.data_ptr();
    g.y = y.data_ptr();
    g.batch = 1;
    g.rows = 65536;
    g.k = 8192;
    auto time = [&](auto&& fn) {
      fn();
      c10::cuda::device_synchronize();
      auto t0 = Clock::now();
      for (int i = 0; i < 10; ++i) fn();
      c10::cuda::device_synchronize();
      return 10.0 * wt.nbytes() / (Since(t0) / 1e3) / 1e9;
    };
    res["gemv_GBps"] = time([&] { (void)kc::LaunchGemv(g, c10::cuda::getCurrentCUDAStream()); });
    res["cublas_gemv_GBps"] = time([&] { at::mm_out(y, x, wt.t()); });
  }

  gi::ArConfig c;  // released sizes are the defaults
  c.num_hidden_layers = absl::GetFlag(FLAGS_layers);
  c.partial_rotary_factor = 0.5;
  c.max_position_embeddings = 8192;
  auto gen = at::globalContext().defaultGenerator(dev);
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(0);
  }
  diffmesh::models::WeightMap w;
  int64_t weight_bytes = 0, embed_bytes = 0;
  for (const auto& s : gi::ArModel::Params(c)) {
    at::Tensor t = at::empty(s.shape, bf16);
    if (s.init == Init::kOnes) t.fill_(1);
    else if (s.init == Init::kZeros) t.zero_();
    else t.normal_(0, s.std, gen);
    (s.name.find("embed_tokens") != std::string::npos ? embed_bytes : weight_bytes) += t.nbytes();
    w.emplace(s.name, t);
  }
  gi::ArModelOptions mo;
  mo.dtype = at::kBFloat16;
  mo.device = dev;
  mo.max_positions = 8192;
  mo.fused_decode = absl::GetFlag(FLAGS_decode) == "bucketed";
  diffmesh::models::glm_image::cuda::SetOverlappedLaunch(absl::GetFlag(FLAGS_overlap));
  res["overlap"] = absl::GetFlag(FLAGS_overlap);
  auto model = gi::ArModel::Create(c, w, mo);
  if (!model.ok()) {
    std::cerr << "bench_ar: " << model.status().message() << "\n";
    return 1;
  }
  w.clear();
  res["params_B"] = (weight_bytes + embed_bytes) / 2.0 / 1e9;
  const int prompt = absl::GetFlag(FLAGS_prompt_tokens), steps = absl::GetFlag(FLAGS_steps);
  std::vector<int> batches;
  for (const auto& b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',')) batches.push_back(std::stoi(std::string(b)));
  int max_batch = *std::max_element(batches.begin(), batches.end());
  gi::KvCacheOptions ko;
  ko.max_slots = max_batch;
  ko.capacity = prompt + steps + 8;
  ko.dtype = at::kBFloat16;
  ko.device = dev;
  auto cache = gi::KvCache::Create(c, ko);
  if (!cache.ok()) {
    std::cerr << "bench_ar: " << cache.status().message() << "\n";
    return 1;
  }
  const double bw = res["copy_GBps"].get<double>() * 1e9;
  const int64_t kv_per_token = int64_t{2} * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2;
  nlohmann::json rows = nlohmann::json::array();
  const bool bucketed = absl::GetFlag(FLAGS_decode) != "eager";
  res["decode"] = absl::GetFlag(FLAGS_decode);
  for (int b : batches) {
    std::vector<int64_t> slots;
    for (int i = 0; i < b; ++i) {
      auto slot = (*cache)->Allocate();
      slots.push_back(*slot);
      at::Tensor ids = at::randint(0, 16384, {prompt}, at::TensorOptions().dtype(at::kLong));
      auto logits = (*model)->Prefill(**cache, *slot, ids, at::arange(prompt, at::kLong));
      if (!logits.ok()) {
        std::cerr << "bench_ar: " << logits.status().message() << "\n";
        return 1;
      }
    }
    at::Tensor tokens = at::randint(0, 16384, {b}, at::TensorOptions().dtype(at::kLong));
    auto step = [&](int i) {
      at::Tensor pos = at::full({b}, prompt + i, at::kLong);
      auto logits = bucketed ? (*model)->DecodeBucketed(**cache, slots, tokens, pos)
                             : (*model)->Decode(**cache, slots, tokens, pos);
      return logits.ok() ? logits->argmax(1) : at::Tensor();
    };
    for (int i = 0; i < 3; ++i) step(i);  // warm-up (lengths advance; capacity allows it)
    c10::cuda::device_synchronize();
    auto t0 = Clock::now();
    for (int i = 3; i < steps; ++i) tokens = step(i).cpu();  // the sampled token returns to the host, as in serving
    c10::cuda::device_synchronize();
    const double ms = Since(t0) / (steps - 3);
    const double bytes = weight_bytes + static_cast<double>(b) * (prompt + steps / 2) * kv_per_token;
    rows.push_back({{"batch", b}, {"ms_per_step", ms}, {"tokens_per_s", b * 1000.0 / ms},
                    {"floor_ms", bytes / bw * 1e3}, {"fraction_of_floor", bytes / bw * 1e3 / ms}});
    for (int64_t s : slots) (void)(*cache)->Free(s);
  }
  res["rows"] = rows;
  std::cout << "FINAL " << res.dump() << std::endl;
  return 0;
}
