// diffmesh-snapshot: writes random-weight snapshots of the built-in models in the release layout
// (for tests, benchmarks and GPU-host trials of the loading path at any size) and checks
// snapshots, for every model family: GlmImagePipeline here, LTX2Pipeline through
// models/ltx2/tools/snapshot_commands.h (a built-in LTX-2 --model, or a snapshot whose
// model_index.json names LTX2Pipeline).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "models/glm_image/glm_image_spec.h"
#include "models/glm_image/snapshot.h"
#include "models/ltx2/snapshot_pipeline.h"
#include "models/ltx2/tools/snapshot_commands.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {
namespace {

using json = nlohmann::json;

constexpr char kUsage[] =
    "usage:\n"
    "  diffmesh-snapshot write OUT_DIR [--model NAME] [--like DIR] [--patch FILE.json]\n"
    "                          [--seed N] [--dtype f32|f16|bf16] [--single-file]\n"
    "                          [--tokenizer DIR]\n"
    "    Writes a GlmImagePipeline snapshot with the seeded random weights of built-in model\n"
    "    NAME (default glm-image-tiny): the AR model in 4 shards and the DiT in 3 with their\n"
    "    index.json files (one file each with --single-file), configs, model_index.json and\n"
    "    tokenizer files. Loading it gives the same networks as the built-in model.\n"
    "    --like DIR      take the component configs of snapshot DIR (e.g. the release's\n"
    "                    config files), for a random model of that size\n"
    "    --patch FILE    JSON merge patch (RFC 7386) over the spec, e.g.\n"
    "                    {\"transformer\": {\"num_layers\": 4}, \"seed\": 7,\n"
    "                     \"tokenizer\": {\"byte_offset\": 320}, \"sampling\": {\"top_k\": 16}}\n"
    "    --dtype         element type of the weight files (default f32; the release is bf16)\n"
    "    --tokenizer DIR copy DIR/tokenizer.json and DIR/tokenizer_config.json (a real BPE\n"
    "                    tokenizer, e.g. the release's processor/) into processor/ instead of\n"
    "                    the byte vocabulary; the AR vocab_size must cover its ids\n"
    "  diffmesh-snapshot check DIR\n"
    "    Reads DIR's configs and checks every component's weights (names, shapes, dtypes)\n"
    "    against them from the safetensors headers (any family: GlmImagePipeline,\n"
    "    LTX2Pipeline, told by model_index.json).\n"
    "  diffmesh-snapshot load DIR [--cuda] [--tp RANK/SIZE] [--only dit|vae|t5|ar]\n"
    "    (GlmImagePipeline)\n"
    "    Builds the components as the stages do (fp32 on the CPU; bf16 DiT and AR, fp32 VAE\n"
    "    on cuda:0 with --cuda; the DiT slice of tensor-parallel rank RANK of SIZE) and\n"
    "    prints the seconds each load took and the process's peak resident memory.\n";

json SpecToJson(const GlmImageSpec& s) {
  return {{"seed", s.seed},
          {"transformer", s.transformer},
          {"vae", s.vae},
          {"text_encoder", s.text_encoder},
          {"vision_language_encoder", s.vision_language_encoder},
          {"scheduler", s.scheduler},
          {"tokenizer",
           {{"byte_offset", s.tokenizer.byte_offset},
            {"grid_bos_id", s.tokenizer.grid_bos_id},
            {"grid_eos_id", s.tokenizer.grid_eos_id},
            {"bos_id", s.tokenizer.bos_id},
            {"max_prompt_tokens", s.tokenizer.max_prompt_tokens}}},
          {"sampling",
           {{"temperature", s.sampling.temperature},
            {"top_k", s.sampling.top_k},
            {"top_p", s.sampling.top_p}}}};
}

absl::Status SpecFromJson(const json& j, GlmImageSpec& s) {
  try {
    s.seed = j.at("seed").get<uint64_t>();
    s.transformer = j.at("transformer");
    s.vae = j.at("vae");
    s.text_encoder = j.at("text_encoder");
    s.vision_language_encoder = j.at("vision_language_encoder");
    s.scheduler = j.at("scheduler");
    const json& t = j.at("tokenizer");
    s.tokenizer.byte_offset = t.at("byte_offset").get<int64_t>();
    s.tokenizer.grid_bos_id = t.at("grid_bos_id").get<int64_t>();
    s.tokenizer.grid_eos_id = t.at("grid_eos_id").get<int64_t>();
    s.tokenizer.bos_id = t.at("bos_id").get<int64_t>();
    s.tokenizer.max_prompt_tokens = t.at("max_prompt_tokens").get<int64_t>();
    const json& g = j.at("sampling");
    s.sampling.temperature = g.at("temperature").get<float>();
    s.sampling.top_k = g.at("top_k").get<int64_t>();
    s.sampling.top_p = g.at("top_p").get<float>();
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("spec after --patch: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status Write(const std::vector<std::string>& args) {
  if (args.empty()) return absl::InvalidArgumentError("write: no OUT_DIR");
  std::string out, model = "glm-image-tiny", like, patch, seed;
  SnapshotWriteOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string& dst) -> absl::Status {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(a, " needs a value"));
      }
      dst = args[++i];
      return absl::OkStatus();
    };
    absl::Status st;
    if (a == "--model") {
      st = value(model);
    } else if (a == "--like") {
      st = value(like);
    } else if (a == "--patch") {
      st = value(patch);
    } else if (a == "--seed") {
      st = value(seed);
    } else if (a == "--dtype") {
      std::string d;
      st = value(d);
      if (d == "f32") {
        options.dtype = DType::kFloat32;
      } else if (d == "f16") {
        options.dtype = DType::kFloat16;
      } else if (d == "bf16") {
        options.dtype = DType::kBFloat16;
      } else if (st.ok()) {
        st = absl::InvalidArgumentError(absl::StrCat("--dtype ", d, ": f32, f16 or bf16"));
      }
    } else if (a == "--tokenizer") {
      st = value(options.ar_tokenizer_dir);
    } else if (a == "--single-file") {
      options.sharded = false;
    } else if (!a.empty() && a[0] == '-') {
      st = absl::InvalidArgumentError(absl::StrCat("unknown option ", a));
    } else if (out.empty()) {
      out = a;
    } else {
      st = absl::InvalidArgumentError(absl::StrCat("unexpected argument ", a));
    }
    if (!st.ok()) return st;
  }
  if (out.empty()) return absl::InvalidArgumentError("write: no OUT_DIR");
  auto builtin = BuiltinSpec(model);
  if (!builtin.ok()) return builtin.status();
  GlmImageSpec spec = *builtin;
  if (!like.empty()) {
    auto other = SpecFromSnapshot(like);
    if (!other.ok()) return other.status();
    spec.transformer = other->transformer;
    spec.vae = other->vae;
    spec.text_encoder = other->text_encoder;
    spec.vision_language_encoder = other->vision_language_encoder;
    spec.scheduler = other->scheduler;
    spec.sampling = other->sampling;
    spec.tokenizer = other->tokenizer;
    if (!other->byte_tokens) {
      // A BPE vocabulary cannot be written; put the byte tokens after the image tokens.
      auto ar = ArConfig::FromJson(spec.vision_language_encoder);
      if (!ar.ok()) return ar.status();
      spec.tokenizer.byte_offset = ar->vision_vocab_size;
    }
  }
  if (!patch.empty()) {
    std::ifstream in(patch);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", patch));
    json p = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (p.is_discarded() || !p.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(patch, ": not a JSON object"));
    }
    json j = SpecToJson(spec);
    j.merge_patch(p);
    absl::Status st = SpecFromJson(j, spec);
    if (!st.ok()) return st;
  }
  if (!seed.empty()) spec.seed = std::strtoull(seed.c_str(), nullptr, 10);
  absl::Status st = WriteSnapshot(spec, out, options);
  if (!st.ok()) return st;
  std::cout << "wrote " << out << "\n";
  return absl::OkStatus();
}

absl::Status Check(const std::vector<std::string>& args) {
  if (args.size() != 1) return absl::InvalidArgumentError("check: one DIR");
  auto spec = SpecFromSnapshot(args[0]);
  if (!spec.ok()) return spec.status();
  absl::Status st = ValidateSnapshot(*spec);
  if (!st.ok()) return st;
  std::cout << args[0] << ": model '" << spec->name << "', every component matches its config"
            << (spec->byte_tokens ? " (byte-token AR tokenizer)" : " (BPE AR tokenizer)") << "\n";
  return absl::OkStatus();
}

// Peak and current resident memory of this process, from /proc/self/status.
std::string MemoryLine() {
  std::ifstream in("/proc/self/status");
  std::string line, out;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0 || line.rfind("RssAnon:", 0) == 0 ||
        line.rfind("RssFile:", 0) == 0) {
      out += (out.empty() ? "" : ", ") + line.substr(0, line.find(':')) + " " +
             line.substr(line.find_first_not_of(" \t", line.find(':') + 1));
    }
  }
  return out;
}

absl::Status Load(const std::vector<std::string>& args) {
  std::string dir, only;
  bool cuda = false;
  TensorParallelShard tp;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--cuda") {
      cuda = true;
    } else if (args[i] == "--tp" && i + 1 < args.size()) {
      if (std::sscanf(args[++i].c_str(), "%d/%d", &tp.rank, &tp.size) != 2) {
        return absl::InvalidArgumentError("--tp RANK/SIZE");
      }
    } else if (args[i] == "--only" && i + 1 < args.size()) {
      only = args[++i];
    } else if (dir.empty() && !args[i].empty() && args[i][0] != '-') {
      dir = args[i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument ", args[i]));
    }
  }
  if (dir.empty()) return absl::InvalidArgumentError("load: no DIR");
  if (cuda && !at::hasCUDA()) return absl::FailedPreconditionError("--cuda: no CUDA device here");
  const at::Device device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const at::ScalarType dtype = cuda ? at::kBFloat16 : at::kFloat;
  auto spec = SpecFromSnapshot(dir);
  if (!spec.ok()) return spec.status();
  auto timed = [&](const char* what, auto build) -> absl::Status {
    if (!only.empty() && only != what) return absl::OkStatus();
    const auto start = std::chrono::steady_clock::now();
    auto model = build();
    if (!model.ok()) return model.status();
    if (cuda) at::empty({1}, at::TensorOptions().device(device)).cpu();  // wait for the copies
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << what << ": " << s << " s; " << MemoryLine() << "\n";
    return absl::OkStatus();
  };
  absl::Status st = timed("dit", [&] { return BuildDit(*spec, dtype, tp, device); });
  if (st.ok()) st = timed("vae", [&] { return BuildVaeDecoder(*spec, at::kFloat, device); });
  if (st.ok()) st = timed("t5", [&] { return BuildTextEncoder(*spec); });
  if (st.ok()) {
    ArModelOptions ar;
    ar.dtype = dtype;
    ar.device = device;
    st = timed("ar", [&] { return BuildArModel(*spec, ar); });
  }
  return st;
}

}  // namespace
}  // namespace diffmesh::models::glm_image

int main(int argc, char** argv) {
  constexpr char kLtx2Usage[] = "LTX-2 (built-in ltx2-tiny; LTX2Pipeline snapshots):\n";
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << diffmesh::models::glm_image::kUsage << kLtx2Usage
              << diffmesh::models::ltx2::kLtx2WriteUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  absl::Status st;
  namespace ltx2 = diffmesh::models::ltx2;
  // The family: a write's built-in --model, a check's model_index.json _class_name.
  bool ltx2_family = false;
  for (size_t i = 0; command == "write" && i + 1 < args.size(); ++i) {
    if (args[i] == "--model") ltx2_family = ltx2::IsLtx2BuiltinModel(args[i + 1]);
  }
  if (command == "check" && args.size() == 1) ltx2_family = ltx2::IsLtx2Snapshot(args[0]);
  if (ltx2_family) {
    st = command == "write" ? ltx2::Ltx2WriteCommand(args) : ltx2::Ltx2CheckCommand(args);
  } else if (command == "write") {
    st = diffmesh::models::glm_image::Write(args);
  } else if (command == "check") {
    st = diffmesh::models::glm_image::Check(args);
  } else if (command == "load") {
    st = diffmesh::models::glm_image::Load(args);
  } else {
    std::cerr << "diffmesh-snapshot: unknown command " << command << "\n"
              << diffmesh::models::glm_image::kUsage << kLtx2Usage
              << diffmesh::models::ltx2::kLtx2WriteUsage;
    return 2;
  }
  if (!st.ok()) {
    std::cerr << "diffmesh-snapshot: " << st.message() << "\n";
    return 1;
  }
  return 0;
}
