// diffmesh-ltx2-snapshot: writes LTX2Pipeline snapshots (diffusers layout) of the built-in
// LTX-2 models with their seeded weights, checks snapshots, and runs a guided generation.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/snapshot.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {
namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  diffmesh-ltx2-snapshot write OUT_DIR [--model NAME] [--seed N] [--dtype f32|f16|bf16]\n"
    "                               [--shards N] [--patch FILE.json]\n"
    "    Writes an LTX2Pipeline snapshot with the seeded weights of built-in model NAME\n"
    "    (default ltx2-tiny): model_index.json, every component's config and weights (the\n"
    "    transformer and text encoder in N shards with index.json, default 2), the tokenizer.\n"
    "    Loading it gives the same networks as the built-in model.\n"
    "    --patch FILE    JSON merge patch over the spec's configs, e.g.\n"
    "                    {\"transformer\": {\"num_layers\": 4}}\n"
    "  diffmesh-ltx2-snapshot check DIR\n"
    "    Reads DIR's configs and checks every component's tensors (names, shapes, dtypes).\n"
    "  diffmesh-ltx2-snapshot run (DIR | --model NAME) [--prompt TEXT] [--frames N]\n"
    "                             [--height H] [--width W] [--steps N] [--seed N]\n"
    "    Generates video + audio with the pipeline defaults' guidance (cfg 3/7, stg 1,\n"
    "    modality 3, rescale 0.7, STG block 1) and prints shapes and seconds.\n";

int Fail(const absl::Status& s) {
  std::cerr << s << "\n";
  return 1;
}

std::string Flag(std::vector<std::string>& args, const std::string& name,
                 const std::string& fallback) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == name) {
      std::string v = args[i + 1];
      args.erase(args.begin() + i, args.begin() + i + 2);
      return v;
    }
  }
  return fallback;
}

int Write(std::vector<std::string> args) {
  const std::string model = Flag(args, "--model", "ltx2-tiny");
  const std::string seed = Flag(args, "--seed", "");
  const std::string dtype = Flag(args, "--dtype", "f32");
  const std::string shards = Flag(args, "--shards", "2");
  const std::string patch = Flag(args, "--patch", "");
  if (args.size() != 1) {
    std::cerr << kUsage;
    return 2;
  }
  auto spec = BuiltinSpec(model);
  if (!spec.ok()) return Fail(spec.status());
  if (!seed.empty()) spec->seed = std::stoull(seed);
  if (!patch.empty()) {
    std::ifstream in(patch);
    const nlohmann::json p = nlohmann::json::parse(in, nullptr, false);
    if (p.is_discarded() || !p.is_object())
      return Fail(absl::InvalidArgumentError(patch + ": not JSON"));
    for (const auto& [key, value] : p.items()) {
      nlohmann::json* target = key == "transformer"    ? &spec->transformer
                               : key == "vae"          ? &spec->vae
                               : key == "audio_vae"    ? &spec->audio_vae
                               : key == "vocoder"      ? &spec->vocoder
                               : key == "connectors"   ? &spec->connectors
                               : key == "text_encoder" ? &spec->text_encoder
                               : key == "scheduler"    ? &spec->scheduler
                                                       : nullptr;
      if (target == nullptr) return Fail(absl::InvalidArgumentError("unknown component " + key));
      target->merge_patch(value);
    }
  }
  Ltx2SnapshotWriteOptions options;
  options.num_shards = std::stoi(shards);
  if (dtype == "bf16") {
    options.dtype = DType::kBFloat16;
  } else if (dtype == "f16") {
    options.dtype = DType::kFloat16;
  } else if (dtype != "f32") {
    return Fail(absl::InvalidArgumentError("--dtype must be f32, f16 or bf16"));
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (auto s = WriteSnapshot(*spec, args[0], options); !s.ok()) return Fail(s);
  std::printf("wrote %s (%s) in %.2f s\n", args[0].c_str(), spec->name.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

int Check(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::cerr << kUsage;
    return 2;
  }
  auto spec = SpecFromSnapshot(args[0]);
  if (!spec.ok()) return Fail(spec.status());
  std::printf("%s: LTX2Pipeline '%s' OK (latent upsampler: %s)\n", args[0].c_str(),
              spec->name.c_str(), spec->latent_upsampler.is_null() ? "no" : "yes");
  return 0;
}

int Run(std::vector<std::string> args) {
  const std::string model = Flag(args, "--model", "");
  const std::string prompt = Flag(args, "--prompt", "a lighthouse in a storm, waves crashing");
  Ltx2LatentInit init;
  init.num_frames = std::stoll(Flag(args, "--frames", "9"));
  init.height = std::stoll(Flag(args, "--height", "64"));
  init.width = std::stoll(Flag(args, "--width", "64"));
  init.num_inference_steps = std::stoll(Flag(args, "--steps", "3"));
  init.seed = std::stoull(Flag(args, "--seed", "0"));
  if (args.size() > 1 || (args.empty() == model.empty())) {
    std::cerr << kUsage;
    return 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto spec = ResolveSpec(model, args.empty() ? "" : args[0]);
  if (!spec.ok()) return Fail(spec.status());
  auto models = BuildModels(*spec);
  if (!models.ok()) return Fail(models.status());
  GuidanceOptions g;
  g.video = {3.0, 1.0, 3.0, 0.7};
  g.audio = {7.0, 1.0, 3.0, 0.7};
  g.stg_blocks = {1};
  auto pipeline = Ltx2Pipeline::Create(models->networks(), g);
  if (!pipeline.ok()) return Fail(pipeline.status());
  const auto t1 = std::chrono::steady_clock::now();
  const auto pos = EncodePrompts(*models, *spec, {prompt});
  const auto neg = EncodePrompts(*models, *spec, {""});
  auto text = (*pipeline)->EncodeText(pos.prompt_embeds, pos.attention_mask, neg.prompt_embeds,
                                      neg.attention_mask);
  if (!text.ok()) return Fail(text.status());
  auto state = (*pipeline)->PrepareLatents(init);
  if (!state.ok()) return Fail(state.status());
  if (auto s = (*pipeline)->Denoise(*state, *text); !s.ok()) return Fail(s);
  const auto t2 = std::chrono::steady_clock::now();
  auto out = (*pipeline)->Decode(*state);
  if (!out.ok()) return Fail(out.status());
  const auto t3 = std::chrono::steady_clock::now();
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  std::printf("%s: frames [%ld, %ld, %ld, %ld, %ld], audio [%ld, %ld, %ld] at %ld Hz\n",
              spec->name.c_str(), out->frames.size(0), out->frames.size(1), out->frames.size(2),
              out->frames.size(3), out->frames.size(4), out->waveform.size(0),
              out->waveform.size(1), out->waveform.size(2), static_cast<long>(out->sample_rate));
  std::printf("load %.2f s, text + %ld steps %.2f s, decode %.2f s\n", secs(t0, t1),
              static_cast<long>(init.num_inference_steps), secs(t1, t2), secs(t2, t3));
  return 0;
}

}  // namespace
}  // namespace diffmesh::models::ltx2

int main(int argc, char** argv) {
  using namespace diffmesh::models::ltx2;
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "write") return Write(args);
  if (command == "check") return Check(args);
  if (command == "run") return Run(args);
  std::cerr << kUsage;
  return 2;
}
