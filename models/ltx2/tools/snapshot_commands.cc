#include "models/ltx2/tools/snapshot_commands.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/snapshot.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

const char kLtx2WriteUsage[] =
    "  write OUT_DIR --model ltx2-tiny [--seed N] [--dtype f32|f16|bf16] [--shards N]\n"
    "                [--patch FILE.json]\n"
    "    Writes an LTX2Pipeline snapshot with the seeded weights of the built-in LTX-2 model:\n"
    "    model_index.json, every component's config and weights (the transformer and text\n"
    "    encoder in N shards with index.json, default 2), the tokenizer. Loading it gives the\n"
    "    same networks as the built-in model.\n"
    "    --patch FILE    JSON merge patch over the component configs, e.g.\n"
    "                    {\"transformer\": {\"num_layers\": 4}}\n";
const char kLtx2CheckUsage[] =
    "  check DIR   (an LTX2Pipeline snapshot)\n"
    "    Reads DIR's configs and checks every component's tensors (names, shapes, dtypes),\n"
    "    the latent upsampler's too when DIR has one.\n";

namespace {

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("write: ", what));
}

absl::Status ApplyPatch(const std::string& path, Ltx2Spec& spec) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  const nlohmann::json p = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (p.is_discarded() || !p.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  for (const auto& [key, value] : p.items()) {
    nlohmann::json* target = key == "transformer"    ? &spec.transformer
                             : key == "vae"          ? &spec.vae
                             : key == "audio_vae"    ? &spec.audio_vae
                             : key == "vocoder"      ? &spec.vocoder
                             : key == "connectors"   ? &spec.connectors
                             : key == "text_encoder" ? &spec.text_encoder
                             : key == "scheduler"    ? &spec.scheduler
                                                     : nullptr;
    if (target == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown component '", key, "'"));
    }
    target->merge_patch(value);
  }
  return absl::OkStatus();
}

}  // namespace

bool IsLtx2BuiltinModel(const std::string& model) {
  for (const std::string& name : BuiltinModelNames()) {
    if (name == model) return true;
  }
  return false;
}

absl::Status Ltx2WriteCommand(const std::vector<std::string>& args) {
  std::string out, model = "ltx2-tiny", patch;
  std::optional<uint64_t> seed;
  Ltx2SnapshotWriteOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has_value = i + 1 < args.size();
    if (a == "--model" || a == "--seed" || a == "--dtype" || a == "--shards" || a == "--patch") {
      if (!has_value) return Bad(absl::StrCat(a, " needs a value"));
      const std::string& v = args[++i];
      if (a == "--model") {
        model = v;
      } else if (a == "--patch") {
        patch = v;
      } else if (a == "--seed") {
        uint64_t s = 0;
        if (!absl::SimpleAtoi(v, &s)) return Bad(absl::StrCat("--seed ", v, ": not a number"));
        seed = s;
      } else if (a == "--shards") {
        if (!absl::SimpleAtoi(v, &options.num_shards) || options.num_shards < 1 ||
            options.num_shards > 1000) {
          return Bad(absl::StrCat("--shards ", v, ": 1..1000"));
        }
      } else if (v == "f32") {
        options.dtype = DType::kFloat32;
      } else if (v == "f16") {
        options.dtype = DType::kFloat16;
      } else if (v == "bf16") {
        options.dtype = DType::kBFloat16;
      } else {
        return Bad(absl::StrCat("--dtype ", v, ": f32, f16 or bf16"));
      }
    } else if (!a.empty() && a[0] == '-') {
      return Bad(absl::StrCat("unknown option ", a));
    } else if (out.empty()) {
      out = a;
    } else {
      return Bad(absl::StrCat("unexpected argument ", a));
    }
  }
  if (out.empty()) return Bad("no OUT_DIR");
  absl::StatusOr<Ltx2Spec> spec = BuiltinSpec(model);
  if (!spec.ok()) return spec.status();
  if (seed.has_value()) spec->seed = *seed;
  if (!patch.empty()) {
    if (absl::Status s = ApplyPatch(patch, *spec); !s.ok()) return s;
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (absl::Status s = WriteSnapshot(*spec, out, options); !s.ok()) return s;
  std::printf("wrote %s (LTX2Pipeline with the weights of '%s') in %.2f s\n", out.c_str(),
              spec->name.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return absl::OkStatus();
}

absl::Status Ltx2CheckCommand(const std::vector<std::string>& args) {
  if (args.size() != 1) return absl::InvalidArgumentError("check: one DIR");
  absl::StatusOr<Ltx2Spec> spec = SpecFromSnapshot(args[0]);
  if (!spec.ok()) return spec.status();
  std::printf("%s: LTX2Pipeline '%s' OK (latent upsampler: %s)\n", args[0].c_str(),
              spec->name.c_str(), spec->latent_upsampler.is_null() ? "no" : "yes");
  return absl::OkStatus();
}

}  // namespace diffmesh::models::ltx2
