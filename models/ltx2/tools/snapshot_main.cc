// diffmesh-ltx2-snapshot: runs a guided generation on an LTX2Pipeline snapshot or a built-in
// LTX-2 model; also writes and checks snapshots as diffmesh-snapshot does (the same code).
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
#include "models/ltx2/tools/snapshot_commands.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {
namespace {

// The write and check commands are diffmesh-snapshot's (snapshot_commands.h); `run` is this
// tool's own.
std::string Usage() {
  return absl::StrCat(
      "usage: diffmesh-ltx2-snapshot COMMAND ...\n", kLtx2WriteUsage, kLtx2CheckUsage,
      "  run (DIR | --model NAME) [--prompt TEXT] [--frames N] [--height H] [--width W]\n"
      "      [--steps N] [--seed N]\n"
      "    Generates video + audio with the pipeline defaults' guidance (cfg 3/7, stg 1,\n"
      "    modality 3, rescale 0.7, STG block 1) and prints shapes and seconds.\n");
}

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
    std::cerr << Usage();
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
    std::cerr << Usage();
    return 2;
  }
  const std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "write" || command == "check") {
    const absl::Status s = command == "write" ? Ltx2WriteCommand(args) : Ltx2CheckCommand(args);
    return s.ok() ? 0 : Fail(s);
  }
  if (command == "run") return Run(args);
  std::cerr << Usage();
  return 2;
}
