#include "models/ltx2/snapshot.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/config/pipeline_config.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/weights.h"

namespace diffmesh::models::ltx2 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct ComponentEntry {
  const char* key;      // model_index.json key and folder
  const char* library;  // model_index.json [library, class]
  const char* class_name;
};

// What LTX2Pipeline.save_pretrained lists (the vocoder class follows the config).
const ComponentEntry kIndexEntries[] = {
    {"transformer", "diffusers", "LTX2VideoTransformer3DModel"},
    {"vae", "diffusers", "AutoencoderKLLTX2Video"},
    {"audio_vae", "diffusers", "AutoencoderKLLTX2Audio"},
    {"vocoder", "ltx2", "LTX2Vocoder"},
    {"connectors", "ltx2", "LTX2TextConnectors"},
    {"text_encoder", "transformers", "Gemma3ForConditionalGeneration"},
    {"tokenizer", "transformers", "GemmaTokenizerFast"},
    {"scheduler", "diffusers", "FlowMatchEulerDiscreteScheduler"},
};

bool IsFloating(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16 ||
         d == DType::kFloat64;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

// The parameters a component's checkpoint must hold, the tensor-name prefix they are stored
// under, and the checkpoint tensors that may be present unclaimed.
struct ExpectedTensors {
  std::vector<ParamSpec> specs;
  std::string prefix;
  std::vector<std::string> ignored_prefixes;
  bool ignore_outside_prefix = false;
};

absl::Status CheckHeaders(const std::string& component_dir, const ExpectedTensors& expected) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(component_dir));
  std::set<std::string> claimed;
  for (const ParamSpec& spec : expected.specs) {
    const std::string name = expected.prefix + spec.name;
    claimed.insert(name);
    const TensorView* view = checkpoint->Find(name);
    if (view == nullptr) {
      // The files the tensor should be in: the shards (or the one file) of the checkpoint.
      return absl::NotFoundError(absl::StrCat("tensor '", name, "' (shape ",
                                              ShapeText(spec.shape), ") is missing from ",
                                              absl::StrJoin(checkpoint->files(), ", ")));
    }
    if (view->shape != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", *view->file,
                                                     " has shape ", ShapeText(view->shape),
                                                     ", expected ", ShapeText(spec.shape)));
    }
    if (!IsFloating(view->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", *view->file,
                                                     " has dtype ", DTypeName(view->dtype),
                                                     ", expected a floating-point type"));
    }
  }
  for (const auto& [name, view] : checkpoint->tensors()) {
    if (claimed.count(name)) continue;
    if (expected.ignore_outside_prefix && !absl::StartsWith(name, expected.prefix)) continue;
    const bool ignored = std::any_of(
        expected.ignored_prefixes.begin(), expected.ignored_prefixes.end(),
        [&](const std::string& p) { return absl::StartsWith(name, expected.prefix + p); });
    if (!ignored) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected tensor '", name, "' in ", *view->file));
    }
  }
  return absl::OkStatus();
}

// Where a Gemma-3 checkpoint keeps the language model (as Gemma3TextModel::Load finds it).
absl::StatusOr<std::string> GemmaPrefix(const std::string& dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  for (const char* prefix : {"", "model.", "language_model.model.", "model.language_model."}) {
    if (checkpoint->Find(absl::StrCat(prefix, "embed_tokens.weight")) != nullptr) {
      return std::string(prefix);
    }
  }
  return absl::NotFoundError(absl::StrCat(dir, ": no Gemma-3 embed_tokens.weight"));
}

// ---- Writing

OwnedTensor ToOwned(const at::Tensor& tensor, DType float_dtype) {
  at::Tensor t = tensor.detach().to(at::kCPU);
  if (t.is_floating_point()) t = t.to(ToScalarType(float_dtype));
  t = t.contiguous();
  OwnedTensor out;
  out.dtype = *FromScalarType(t.scalar_type());
  out.shape = t.sizes().vec();
  out.bytes.assign(static_cast<const char*>(t.data_ptr()), t.nbytes());
  return out;
}

absl::Status WriteJson(const fs::path& path, const json& j) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << j.dump(2) << "\n";
  if (!out) return absl::InternalError(absl::StrCat(path.string(), ": write failed"));
  return absl::OkStatus();
}

// Writes `weights` (names prefixed with `prefix`) as `base`.safetensors, or as `shards` files
// `base`-0000k-of-0000n.safetensors with `base`.safetensors.index.json.
absl::Status WriteWeights(const fs::path& folder, const std::string& base, const WeightMap& weights,
                          const std::string& prefix, DType dtype, int shards) {
  std::vector<std::string> names;
  for (const auto& [name, t] : weights) names.push_back(name);
  std::sort(names.begin(), names.end());
  shards = std::max(1, std::min<int>(shards, static_cast<int>(names.size())));
  if (shards == 1) {
    std::map<std::string, OwnedTensor> tensors;
    for (const auto& n : names) tensors.emplace(prefix + n, ToOwned(weights.at(n), dtype));
    return WriteSafetensors((folder / (base + ".safetensors")).string(), tensors,
                            {{"format", "pt"}});
  }
  json weight_map = json::object();
  int64_t total = 0;
  for (int k = 0; k < shards; ++k) {
    const std::string file = absl::StrFormat("%s-%05d-of-%05d.safetensors", base, k + 1, shards);
    std::map<std::string, OwnedTensor> tensors;
    for (size_t i = k; i < names.size(); i += shards) {
      OwnedTensor t = ToOwned(weights.at(names[i]), dtype);
      total += static_cast<int64_t>(t.bytes.size());
      weight_map[prefix + names[i]] = file;
      tensors.emplace(prefix + names[i], std::move(t));
    }
    RETURN_IF_ERROR(WriteSafetensors((folder / file).string(), tensors, {{"format", "pt"}}));
  }
  return WriteJson(folder / (base + ".safetensors.index.json"),
                   json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
}

absl::Status WriteComponent(const fs::path& root, const char* folder, json config,
                            const WeightMap& weights, const std::string& base,
                            const std::string& prefix, DType dtype, int shards) {
  const fs::path dir = root / folder;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir.string(), ": ", ec.message()));
  RETURN_IF_ERROR(WriteJson(dir / "config.json", config));
  return WriteWeights(dir, base, weights, prefix, dtype, shards);
}

}  // namespace

absl::StatusOr<Ltx2Spec> SpecFromSnapshot(const std::string& dir) {
  const fs::path root(dir);
  const std::string index_path = (root / "model_index.json").string();
  ASSIGN_OR_RETURN(json index, ReadJsonFile(index_path));
  if (index.value("_class_name", "") != "LTX2Pipeline") {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": _class_name is '",
                                                   index.value("_class_name", ""),
                                                   "', expected LTX2Pipeline"));
  }
  for (const ComponentEntry& e : kIndexEntries) {
    if (!index.contains(e.key) || index[e.key].is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": no component '", e.key, "'"));
    }
  }
  Ltx2Spec spec;
  spec.dir = dir;
  // The name every service serves the snapshot under (the orchestrator's pipeline config too).
  std::string name_or_path;
  if (index.contains("_name_or_path") && index["_name_or_path"].is_string()) {
    name_or_path = index["_name_or_path"].get<std::string>();
  }
  spec.name = SnapshotModelName(name_or_path, dir);
  auto read = [&](const char* folder, const char* file, json& out) -> absl::Status {
    ASSIGN_OR_RETURN(out, ReadJsonFile((root / folder / file).string()));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(read("transformer", "config.json", spec.transformer));
  RETURN_IF_ERROR(read("vae", "config.json", spec.vae));
  RETURN_IF_ERROR(read("audio_vae", "config.json", spec.audio_vae));
  RETURN_IF_ERROR(read("vocoder", "config.json", spec.vocoder));
  RETURN_IF_ERROR(read("connectors", "config.json", spec.connectors));
  RETURN_IF_ERROR(read("text_encoder", "config.json", spec.text_encoder));
  RETURN_IF_ERROR(read("scheduler", "scheduler_config.json", spec.scheduler));
  if (fs::exists(root / "latent_upsampler" / "config.json")) {
    RETURN_IF_ERROR(read("latent_upsampler", "config.json", spec.latent_upsampler));
  } else {
    spec.latent_upsampler = nullptr;
  }
  const fs::path tok_config = root / "tokenizer" / "tokenizer_config.json";
  if (fs::exists(tok_config)) {
    ASSIGN_OR_RETURN(json tc, ReadJsonFile(tok_config.string()));
    if (tc.contains("model_max_length") && tc["model_max_length"].is_number_integer() &&
        tc["model_max_length"].get<int64_t>() < spec.max_sequence_length) {
      spec.max_sequence_length = tc["model_max_length"].get<int64_t>();
    }
  }
  RETURN_IF_ERROR(ValidateSnapshot(spec));
  return spec;
}

absl::Status ValidateSnapshot(const Ltx2Spec& spec) {
  const fs::path root(spec.dir);
  auto where = [&](Ltx2Component c) { return (root / ComponentFolder(c)).string(); };
  auto annotate = [](const absl::Status& s, const std::string& file) {
    return absl::Status(s.code(), absl::StrCat(file, ": ", s.message()));
  };
  {
    auto c = Ltx2TransformerConfig::FromJson(spec.transformer);
    if (!c.ok()) return annotate(c.status(), where(Ltx2Component::kTransformer) + "/config.json");
    RETURN_IF_ERROR(CheckHeaders(where(Ltx2Component::kTransformer),
                                 {Ltx2Transformer::Params(*c), "", {}, false}));
  }
  {
    auto c = ConnectorsConfig::FromJson(spec.connectors);
    if (!c.ok()) return annotate(c.status(), where(Ltx2Component::kConnectors) + "/config.json");
    RETURN_IF_ERROR(CheckHeaders(where(Ltx2Component::kConnectors),
                                 {TextConnectors::Params(*c), "", {}, false}));
  }
  {
    auto c = VideoVaeConfig::FromJson(spec.vae);
    if (!c.ok()) return annotate(c.status(), where(Ltx2Component::kVae) + "/config.json");
    RETURN_IF_ERROR(CheckHeaders(where(Ltx2Component::kVae),
                                 {Ltx2VideoDecoder::Params(*c), "", {"encoder."}, false}));
    // The encoder (image-to-video) is optional; when present it is checked in full.
    ASSIGN_OR_RETURN(const bool has_encoder, CheckpointHasVideoEncoder(where(Ltx2Component::kVae)));
    if (has_encoder) {
      auto e = VideoVaeEncoderConfig::FromJson(spec.vae);
      if (!e.ok()) return annotate(e.status(), where(Ltx2Component::kVae) + "/config.json");
      RETURN_IF_ERROR(CheckHeaders(where(Ltx2Component::kVae),
                                   {Ltx2VideoEncoder::Params(*e), "", {"decoder."}, false}));
    }
  }
  {
    auto c = AudioVaeConfig::FromJson(spec.audio_vae);
    if (!c.ok()) return annotate(c.status(), where(Ltx2Component::kAudioVae) + "/config.json");
    RETURN_IF_ERROR(CheckHeaders(where(Ltx2Component::kAudioVae),
                                 {AudioVaeDecoder::Params(*c), "", {"encoder."}, false}));
  }
  {
    auto c = VocoderConfig::FromJson(spec.vocoder);
    if (!c.ok()) return annotate(c.status(), where(Ltx2Component::kVocoder) + "/config.json");
    RETURN_IF_ERROR(
        CheckHeaders(where(Ltx2Component::kVocoder),
                     {Vocoder::Params(*c), "", {"mel_stft.stft_fn.inverse_basis"}, false}));
  }
  {
    auto c = Gemma3Config::FromJson(spec.text_encoder);
    if (!c.ok()) return annotate(c.status(), where(Ltx2Component::kTextEncoder) + "/config.json");
    ASSIGN_OR_RETURN(std::string prefix, GemmaPrefix(where(Ltx2Component::kTextEncoder)));
    // A multimodal checkpoint also holds the vision tower, projector and lm_head.
    RETURN_IF_ERROR(CheckHeaders(where(Ltx2Component::kTextEncoder),
                                 {Gemma3TextModel::Params(*c), prefix, {}, !prefix.empty()}));
  }
  if (!spec.latent_upsampler.is_null()) {
    auto c = LatentUpsamplerConfig::FromJson(spec.latent_upsampler);
    if (!c.ok()) {
      return annotate(c.status(), where(Ltx2Component::kLatentUpsampler) + "/config.json");
    }
    RETURN_IF_ERROR(CheckHeaders(where(Ltx2Component::kLatentUpsampler),
                                 {Ltx2LatentUpsampler::Params(*c), "", {}, false}));
  }
  if (auto c = SchedulerConfig::FromJson(spec.scheduler); !c.ok()) {
    return annotate(c.status(), (root / "scheduler" / "scheduler_config.json").string());
  }
  const fs::path tokenizer = root / "tokenizer" / "tokenizer.model";
  if (!fs::exists(tokenizer)) {
    return absl::NotFoundError(absl::StrCat(tokenizer.string(), ": missing"));
  }
  return absl::OkStatus();
}

absl::Status WriteSnapshot(const Ltx2Spec& spec, const std::string& dir,
                           const Ltx2SnapshotWriteOptions& options) {
  if (!spec.dir.empty()) {
    return absl::InvalidArgumentError("WriteSnapshot writes built-in (seeded) models only");
  }
  // Its weights are drawn on the host below: a CUDA-only model is refused before any of them.
  RETURN_IF_ERROR(CheckDevice(spec, at::kCPU));
  if (spec.draw_on_device) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WriteSnapshot writes host-seeded models only; '", spec.name,
        "' draws its weights on the device"));
  }
  const fs::path root(dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": ", ec.message()));
  const DType dt = options.dtype;
  const std::string dpm = "diffusion_pytorch_model";

  // No _name_or_path, as in the GLM snapshots diffmesh-snapshot writes: the snapshot is served
  // under its folder's name, apart from the built-in model it was drawn from.
  json index = {{"_class_name", "LTX2Pipeline"}, {"_diffusers_version", "0.40.0.dev0"}};
  for (const ComponentEntry& e : kIndexEntries) index[e.key] = {e.library, e.class_name};
  if (spec.vocoder.value("_class_name", "") == "LTX2VocoderWithBWE") {
    index["vocoder"] = {"ltx2", "LTX2VocoderWithBWE"};
  }
  RETURN_IF_ERROR(WriteJson(root / "model_index.json", index));

  {
    // Drawn as BuildTransformer draws them (the network is not built).
    ASSIGN_OR_RETURN(auto c, Ltx2TransformerConfig::FromJson(spec.transformer));
    const WeightMap w =
        InitSeeded(Ltx2Transformer::Params(c), ComponentSeed(spec, Ltx2Component::kTransformer));
    RETURN_IF_ERROR(
        WriteComponent(root, "transformer", spec.transformer, w, dpm, "", dt, options.num_shards));
  }
  {
    ASSIGN_OR_RETURN(auto m, BuildConnectors(spec));
    RETURN_IF_ERROR(
        WriteComponent(root, "connectors", spec.connectors, m->weights(), dpm, "", dt, 1));
  }
  {
    ASSIGN_OR_RETURN(auto m, BuildVideoDecoder(spec));
    ASSIGN_OR_RETURN(auto e, BuildVideoEncoder(spec));
    WeightMap w = m->weights();
    w.insert(e->weights().begin(), e->weights().end());  // latents_mean/std: the decoder's
    RETURN_IF_ERROR(WriteComponent(root, "vae", spec.vae, w, dpm, "", dt, 1));
  }
  {
    ASSIGN_OR_RETURN(auto m, BuildAudioDecoder(spec));
    RETURN_IF_ERROR(
        WriteComponent(root, "audio_vae", spec.audio_vae, m->weights(), dpm, "", dt, 1));
  }
  {
    ASSIGN_OR_RETURN(auto m, BuildVocoder(spec));
    RETURN_IF_ERROR(WriteComponent(root, "vocoder", spec.vocoder, m->weights(), dpm, "", dt, 1));
  }
  {
    ASSIGN_OR_RETURN(auto m, BuildTextEncoder(spec));
    RETURN_IF_ERROR(WriteComponent(root, "text_encoder", spec.text_encoder, m->weights(), "model",
                                   "language_model.model.", dt, options.num_shards));
  }
  if (!spec.latent_upsampler.is_null()) {
    ASSIGN_OR_RETURN(auto m, BuildLatentUpsampler(spec));
    RETURN_IF_ERROR(WriteComponent(root, "latent_upsampler", spec.latent_upsampler, m->weights(),
                                   dpm, "", dt, 1));
  }
  fs::create_directories(root / "scheduler", ec);
  RETURN_IF_ERROR(WriteJson(root / "scheduler" / "scheduler_config.json", spec.scheduler));
  fs::create_directories(root / "tokenizer", ec);
  {
    std::ofstream out(root / "tokenizer" / "tokenizer.model", std::ios::binary | std::ios::trunc);
    out << BuiltinTokenizerProto();
    if (!out)
      return absl::InternalError(absl::StrCat(dir, "/tokenizer/tokenizer.model: write failed"));
  }
  RETURN_IF_ERROR(WriteJson(root / "tokenizer" / "tokenizer_config.json",
                            json{{"tokenizer_class", "GemmaTokenizer"},
                                 {"padding_side", "left"},
                                 {"model_max_length", spec.max_sequence_length},
                                 {"bos_token", "<bos>"},
                                 {"eos_token", "<eos>"},
                                 {"pad_token", "<pad>"},
                                 {"unk_token", "<unk>"}}));
  return absl::OkStatus();
}

}  // namespace diffmesh::models::ltx2
