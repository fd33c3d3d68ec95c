#include "common/config/pipeline_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/file/file.h"
#include "common/status/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "models/ltx2/snapshot_pipeline.h"
#include "nlohmann/json.hpp"

namespace diffmesh {
namespace {

using json = nlohmann::json;

// default_pipeline.json, embedded at build time.
constexpr char kDefaultPipelineJson[] =
#include "common/config/default_pipeline.inc"
    ;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("pipeline config: ", what));
}

template <typename T>
absl::Status Read(const json& obj, const char* key, T& out, bool required, const std::string& where) {
  if (!obj.contains(key)) {
    return required ? Bad(absl::StrCat(where, " lacks '", key, "'")) : absl::OkStatus();
  }
  try {
    out = obj.at(key).get<T>();
  } catch (const json::exception&) {
    return Bad(absl::StrCat(where, ".", key, " has the wrong type"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string SnapshotModelName(const std::string& name_or_path, const std::string& dir) {
  namespace fs = std::filesystem;
  if (!name_or_path.empty()) return name_or_path;
  fs::path p = fs::absolute(fs::path(dir)).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  const std::string repo = p.parent_path().parent_path().filename().string();
  if (p.parent_path().filename() == "snapshots" && absl::StartsWith(repo, "models--")) {
    return absl::StrReplaceAll(repo.substr(8), {{"--", "/"}});
  }
  return p.filename().string();
}

absl::StatusOr<std::string> SnapshotModelName(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "model_index.json").string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("model dir ", dir, ": cannot read ", path));
  json index = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  std::string name_or_path;
  if (index.contains("_name_or_path") && index["_name_or_path"].is_string()) {
    name_or_path = index["_name_or_path"].get<std::string>();
  }
  return SnapshotModelName(name_or_path, dir);
}

absl::StatusOr<std::string> SnapshotClassName(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "model_index.json").string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("model dir ", dir, ": cannot read ", path));
  json index = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  if (!index.contains("_class_name") || !index["_class_name"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no _class_name (the pipeline class of the snapshot)"));
  }
  return index["_class_name"].get<std::string>();
}

v1::GenerateRequest SnapshotDefaults() {
  v1::GenerateRequest d;
  d.set_height(1024);
  d.set_width(1024);
  d.set_steps(50);
  d.mutable_guidance()->mutable_main()->set_cfg_scale(1.5f);
  d.mutable_output()->set_format(v1::OUTPUT_FORMAT_PNG);
  return d;
}

v1::ModelLimits SnapshotLimits() {
  v1::ModelLimits l;
  l.set_size_granularity(32);
  l.set_min_size(256);
  l.set_max_size(2048);
  l.set_min_steps(1);
  l.set_max_steps(200);
  l.set_max_prompt_bytes(8000);
  l.set_max_input_bytes(32 << 20);
  l.set_max_input_pixels(4096 * 4096);
  return l;
}

const StageSpec* PipelineModel::FindStage(const std::string& name) const {
  for (const auto& s : stages) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

const PipelineModel* PipelineConfig::FindModel(const std::string& name) const {
  for (const auto& m : models) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

namespace {

// `obj`[key] (when present) merged into `message`, by the proto's JSON mapping; unknown
// fields and wrong types are errors naming the key.
absl::Status ReadProto(const json& obj, const char* key, google::protobuf::Message& message,
                       const std::string& where) {
  if (!obj.contains(key)) return absl::OkStatus();
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  std::unique_ptr<google::protobuf::Message> given(message.New());
  auto st = google::protobuf::util::JsonStringToMessage(obj[key].dump(), given.get(), options);
  if (!st.ok()) {
    return Bad(absl::StrCat(where, ".", key, ": ", std::string(st.message())));
  }
  message.MergeFrom(*given);  // over what `message` held already (a snapshot's defaults)
  return absl::OkStatus();
}

absl::Status ReadKind(const json& m, PipelineModel& model, const std::string& where) {
  std::string kind = "image";
  RETURN_IF_ERROR(Read(m, "kind", kind, false, where));
  if (kind == "image") {
    model.kind = ModelKind::kImage;
  } else if (kind == "video_with_audio") {
    model.kind = ModelKind::kVideoWithAudio;
  } else {
    return Bad(absl::StrCat(where, ".kind: '", kind, "' (image, video_with_audio)"));
  }
  std::vector<std::string> roles;
  RETURN_IF_ERROR(Read(m, "input_roles", roles, false, where));
  for (const std::string& r : roles) {
    v1::MediaRole role;
    if (!v1::MediaRole_Parse("MEDIA_ROLE_" + absl::AsciiStrToUpper(r), &role) ||
        role == v1::MEDIA_ROLE_UNSPECIFIED) {
      return Bad(absl::StrCat(where, ".input_roles: unknown role '", r,
                              "' (edit_image, first_frame, reference)"));
    }
    model.input_roles.push_back(role);
  }
  return absl::OkStatus();
}

absl::Status CheckLimitsAndDefaults(const PipelineModel& model, const std::string& where) {
  const v1::ModelLimits& l = model.limits;
  if (l.size_granularity() <= 0 || l.min_size() <= 0 || l.max_size() < l.min_size() ||
      l.max_prompt_bytes() <= 0 || l.min_steps() < 1 || l.max_steps() < l.min_steps()) {
    return Bad(absl::StrCat(where, " has inconsistent limits (size_granularity, min_size, "
                            "max_size, max_prompt_bytes, min_steps and max_steps are needed)"));
  }
  const v1::GenerateRequest& d = model.defaults;
  if (!d.has_height() || !d.has_width() || !d.has_steps() ||
      d.output().format() == v1::OUTPUT_FORMAT_UNSPECIFIED) {
    return Bad(absl::StrCat(where, ".defaults needs height, width, steps and output.format"));
  }
  for (int v : {d.height(), d.width()}) {
    if (v < l.min_size() || v > l.max_size() || v % l.size_granularity() != 0) {
      return Bad(absl::StrCat(where, " default size ", v, " breaks its own limits"));
    }
  }
  if (d.steps() < l.min_steps() || d.steps() > l.max_steps()) {
    return Bad(absl::StrCat(where, " default steps out of range"));
  }
  if (model.kind == ModelKind::kVideoWithAudio &&
      (!d.has_num_frames() || !d.has_frame_rate() || l.frames().multiple() <= 0 ||
       l.frames().max_frames() <= 0)) {
    return Bad(absl::StrCat(where, ": a video model needs defaults num_frames and frame_rate and "
                            "limits.frames (multiple, offset, max_frames)"));
  }
  return absl::OkStatus();
}

// "lora": {"name": ..., "strength": ...} (strength optional, 1 by default).
absl::Status ReadLora(const json& js, StageSpec& stage, const std::string& at) {
  if (!js.contains("lora")) return absl::OkStatus();
  const json& lora = js["lora"];
  const std::string where = at + ".lora";
  if (!lora.is_object()) return Bad(where + " must be an object {\"name\", \"strength\"}");
  for (const auto& [key, value] : lora.items()) {
    if (key != "name" && key != "strength") {
      return Bad(absl::StrCat(where, ": unknown key '", key, "'"));
    }
  }
  RETURN_IF_ERROR(Read(lora, "name", stage.lora, true, where));
  RETURN_IF_ERROR(Read(lora, "strength", stage.lora_strength, false, where));
  if (stage.lora.empty()) return Bad(where + ".name is empty");
  if (!std::isfinite(stage.lora_strength)) return Bad(where + ".strength is not finite");
  return absl::OkStatus();
}

// The multi-stage fields of a stage (StageSpec), each only on the kind it concerns.
absl::Status ReadMultiStage(const json& js, StageSpec& stage, const std::string& at) {
  const bool denoise = stage.kind == "denoise", upsample = stage.kind == "upsample";
  for (const auto& [key, allowed] :
       {std::pair{"size_divisor", denoise}, std::pair{"sigmas", denoise},
        std::pair{"noise_scale", denoise}, std::pair{"unguided", denoise},
        std::pair{"lora", denoise}, std::pair{"adain_factor", upsample},
        std::pair{"tone_map_compression_ratio", upsample}}) {
    if (js.contains(key) && !allowed) {
      return Bad(absl::StrCat(at, ".", key, " does not apply to a stage of kind '", stage.kind,
                              "'"));
    }
  }
  RETURN_IF_ERROR(Read(js, "size_divisor", stage.size_divisor, false, at));
  RETURN_IF_ERROR(Read(js, "sigmas", stage.sigmas, false, at));
  RETURN_IF_ERROR(Read(js, "noise_scale", stage.noise_scale, false, at));
  RETURN_IF_ERROR(Read(js, "unguided", stage.unguided, false, at));
  RETURN_IF_ERROR(ReadLora(js, stage, at));
  RETURN_IF_ERROR(Read(js, "adain_factor", stage.adain_factor, false, at));
  RETURN_IF_ERROR(
      Read(js, "tone_map_compression_ratio", stage.tone_map_compression_ratio, false, at));
  if (stage.size_divisor < 1 || stage.size_divisor > 16) {
    return Bad(absl::StrCat(at, ".size_divisor: ", stage.size_divisor, " is outside 1..16"));
  }
  for (double sigma : stage.sigmas) {
    if (!(sigma > 0 && sigma <= 1)) {
      return Bad(absl::StrCat(at, ".sigmas: ", sigma, " is outside (0, 1]"));
    }
  }
  for (auto [key, v] : {std::pair{"noise_scale", stage.noise_scale},
                        std::pair{"adain_factor", stage.adain_factor},
                        std::pair{"tone_map_compression_ratio", stage.tone_map_compression_ratio}}) {
    if (!(v >= 0 && v <= 1)) return Bad(absl::StrCat(at, ".", key, ": ", v, " is outside 0..1"));
  }
  return absl::OkStatus();
}

absl::Status ReadStages(const json& m, const PipelineConfig& cfg, PipelineModel& model,
                        const std::string& where) {
  static const std::set<std::string> kKinds = {"ar", "encoder", "denoise", "upsample", "decode"};
  if (!m.contains("stages") || !m["stages"].is_array() || m["stages"].empty()) {
    return Bad(absl::StrCat(where, ".stages must be a non-empty array"));
  }
  for (const json& js : m["stages"]) {
    StageSpec stage;
    if (!js.is_object()) return Bad(absl::StrCat(where, ".stages: each stage is an object"));
    RETURN_IF_ERROR(Read(js, "name", stage.name, true, where));
    const std::string at = absl::StrCat(where, " stage '", stage.name, "'");
    stage.kind = stage.name;
    RETURN_IF_ERROR(Read(js, "kind", stage.kind, false, at));
    RETURN_IF_ERROR(Read(js, "service", stage.service, true, at));
    RETURN_IF_ERROR(Read(js, "inputs", stage.inputs, false, at));
    RETURN_IF_ERROR(Read(js, "stream_inputs", stage.stream_inputs, false, at));
    if (!kKinds.count(stage.kind)) {
      return Bad(absl::StrCat(at, " has unknown kind '", stage.kind,
                              "' (ar, encoder, denoise, upsample, decode)"));
    }
    RETURN_IF_ERROR(ReadMultiStage(js, stage, at));
    if (!cfg.services.count(stage.service)) {
      return Bad(absl::StrCat(at, " runs on undefined service '", stage.service, "'"));
    }
    if (model.FindStage(stage.name) != nullptr) return Bad(absl::StrCat(at, " defined twice"));
    for (const std::string& in : stage.inputs) {
      if (model.FindStage(in) == nullptr) {
        return Bad(absl::StrCat(at, " takes input from '", in,
                                "', which is not a stage defined before it"));
      }
    }
    model.stages.push_back(std::move(stage));
  }
  return absl::OkStatus();
}

// The stages GlmImagePipeline runs, on the default pipeline's services.
json GlmImageStages() {
  return json::array({{{"name", "ar"}, {"kind", "ar"}, {"service", "ar"}},
                      {{"name", "encoder"}, {"kind", "encoder"}, {"service", "encoder"}},
                      {{"name", "denoise"},
                       {"kind", "denoise"},
                       {"service", "denoise"},
                       {"inputs", json::array({"ar", "encoder"})},
                       {"stream_inputs", true}},
                      {{"name", "vae_decode"},
                       {"kind", "decode"},
                       {"service", "denoise"},
                       {"inputs", json::array({"denoise"})}}});
}

json ProtoToJson(const google::protobuf::Message& message) {
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &text, options);
  return json::parse(text);
}

absl::StatusOr<json> GlmImageSnapshotEntry(const std::string& dir) {
  return json{{"kind", "image"},
              {"description", absl::StrCat("GlmImagePipeline snapshot ", dir)},
              {"input_roles", json::array({"edit_image"})},  // GlmImagePipeline edits images
              {"defaults", ProtoToJson(SnapshotDefaults())},
              {"limits", ProtoToJson(SnapshotLimits())},
              {"stages", GlmImageStages()}};
}

// The model families served from snapshots, by model_index.json's `_class_name`: each reads
// its snapshot's configs into a model entry of this file's format (kind, description,
// input_roles, defaults, limits, stages), which a pipeline config's own entry may override.
struct SnapshotFamily {
  const char* class_name;
  absl::StatusOr<json> (*entry)(const std::string& dir);
};
constexpr SnapshotFamily kSnapshotFamilies[] = {
    {"GlmImagePipeline", GlmImageSnapshotEntry},
    {models::ltx2::kLtx2PipelineClassName, models::ltx2::Ltx2SnapshotPipelineEntry},
};

absl::StatusOr<json> SnapshotEntry(const std::string& dir) {
  ASSIGN_OR_RETURN(const std::string class_name, SnapshotClassName(dir));
  std::string known;
  for (const SnapshotFamily& f : kSnapshotFamilies) {
    if (class_name == f.class_name) return f.entry(dir);
    absl::StrAppend(&known, known.empty() ? "" : ", ", f.class_name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat((std::filesystem::path(dir) / "model_index.json").string(), ": _class_name '",
                   class_name, "' is not a pipeline diffmesh serves (", known, ")"));
}

// A stage at 1/d of the request's size needs sizes that are multiples of d times the model's
// granularity: the model's granularity becomes the least common multiple over its stages, so
// that ListModels and the request validator state the rule the graph really has (LTX-2
// two-stage: 32 → 64). The defaults and the size range must then still fit.
absl::Status ApplyStageSizes(PipelineModel& model, const std::string& where) {
  const int base = model.limits.size_granularity();
  int64_t multiple = base;
  for (const StageSpec& stage : model.stages) {
    multiple = std::lcm(multiple, static_cast<int64_t>(base) * stage.size_divisor);
  }
  if (multiple == base) return absl::OkStatus();
  for (const StageSpec& stage : model.stages) {
    for (int v : {model.defaults.height(), model.defaults.width()}) {
      if (v % (base * stage.size_divisor) != 0) {
        return Bad(absl::StrCat(where, " default size ", v, " is not a multiple of ",
                                base * stage.size_divisor, " (stage '", stage.name,
                                "' runs at 1/", stage.size_divisor, " of it)"));
      }
    }
  }
  if (multiple > model.limits.max_size()) {
    return Bad(absl::StrCat(where, ": its stages need sizes that are multiples of ", multiple,
                            ", above limits.max_size ", model.limits.max_size()));
  }
  model.limits.set_size_granularity(static_cast<int>(multiple));
  // The smallest size left is the first multiple at or above the old minimum.
  const int64_t min_size = (model.limits.min_size() + multiple - 1) / multiple * multiple;
  if (min_size > model.limits.max_size()) {
    return Bad(absl::StrCat(where, ": no size in limits ", model.limits.min_size(), "..",
                            model.limits.max_size(), " is a multiple of ", multiple,
                            ", which its stages need"));
  }
  model.limits.set_min_size(static_cast<int>(min_size));
  return absl::OkStatus();
}

absl::StatusOr<PipelineModel> ReadModel(const json& m, const PipelineConfig& cfg) {
  PipelineModel model;
  if (!m.is_object()) return Bad("each model must be an object");
  RETURN_IF_ERROR(Read(m, "path", model.path, false, "model"));
  const bool snapshot = !model.path.empty();
  std::string served;  // the name the stage services serve the snapshot under
  json entry = json::object();  // the snapshot family's entry, under the config's own
  if (snapshot) {
    auto name = SnapshotModelName(model.path);
    if (!name.ok()) return Bad(std::string(name.status().message()));
    served = *name;
    model.name = served;
    auto family = SnapshotEntry(model.path);
    if (!family.ok()) return Bad(std::string(family.status().message()));
    entry = *std::move(family);
    RETURN_IF_ERROR(Read(entry, "description", model.description, false, "snapshot"));
  }
  RETURN_IF_ERROR(Read(m, "name", model.name, !snapshot, "model"));
  const std::string where = absl::StrCat("model '", model.name, "'");
  if (snapshot && model.name != served) {
    return Bad(absl::StrCat(where, ": the stage services serve ", model.path, " as '", served,
                            "' (its model_index.json _name_or_path, else the folder name)"));
  }
  RETURN_IF_ERROR(Read(m, "description", model.description, false, where));
  if (!snapshot && (!m.contains("defaults") || !m.contains("limits"))) {
    return Bad(absl::StrCat(where, " needs 'defaults' and 'limits' (they may be left out with "
                            "a 'path')"));
  }
  // Kind, roles and stages: the config's when given, else the snapshot family's.
  json shape = entry;
  for (const char* key : {"kind", "input_roles", "stages"}) {
    if (m.contains(key)) shape[key] = m[key];
  }
  RETURN_IF_ERROR(ReadKind(shape, model, where));
  RETURN_IF_ERROR(ReadProto(entry, "defaults", model.defaults, where));
  RETURN_IF_ERROR(ReadProto(entry, "limits", model.limits, where));
  RETURN_IF_ERROR(ReadProto(m, "defaults", model.defaults, where));
  RETURN_IF_ERROR(ReadProto(m, "limits", model.limits, where));
  RETURN_IF_ERROR(CheckLimitsAndDefaults(model, where));
  RETURN_IF_ERROR(ReadStages(shape, cfg, model, where));
  RETURN_IF_ERROR(ApplyStageSizes(model, where));
  return model;
}

}  // namespace

absl::StatusOr<PipelineConfig> PipelineConfig::Parse(const std::string& json_text) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) return Bad("not a JSON object");
  PipelineConfig cfg;
  RETURN_IF_ERROR(Read(root, "default_model", cfg.default_model, true, "root"));
  RETURN_IF_ERROR(Read(root, "services", cfg.services, true, "root"));
  if (!root.contains("models") || !root["models"].is_array() || root["models"].empty()) {
    return Bad("'models' must be a non-empty array");
  }
  for (const json& m : root["models"]) {
    ASSIGN_OR_RETURN(PipelineModel model, ReadModel(m, cfg));
    if (cfg.FindModel(model.name) != nullptr) {
      return Bad(absl::StrCat("model '", model.name, "' defined twice"));
    }
    cfg.models.push_back(std::move(model));
  }
  if (cfg.FindModel(cfg.default_model) == nullptr) {
    return Bad(absl::StrCat("default_model '", cfg.default_model, "' is not defined"));
  }
  return cfg;
}

absl::Status PipelineConfig::KeepModels(const std::vector<std::string>& names) {
  if (names.empty()) return absl::InvalidArgumentError("models: name at least one model");
  std::set<std::string> keep;
  for (const std::string& name : names) {
    if (FindModel(name) == nullptr) {
      std::string known;
      for (const PipelineModel& m : models) absl::StrAppend(&known, known.empty() ? "" : ", ", m.name);
      return absl::NotFoundError(absl::StrCat("models: '", name,
                                              "' is not in the pipeline (it has: ", known, ")"));
    }
    keep.insert(name);
  }
  std::vector<PipelineModel> kept;
  for (PipelineModel& m : models) {
    if (keep.count(m.name)) kept.push_back(std::move(m));
  }
  models = std::move(kept);
  if (!keep.count(default_model)) default_model = models.front().name;
  return absl::OkStatus();
}

absl::StatusOr<PipelineConfig> PipelineConfig::Load(const std::string& path) {
  // A pipeline config is a few kilobytes; the bound keeps /dev/zero or a wrong file an error.
  constexpr size_t kMaxPipelineConfigBytes = 4 << 20;
  auto text = ReadFileBounded(path, kMaxPipelineConfigBytes);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("pipeline config: ", text.status().message()));
  }
  auto cfg = Parse(*text);
  if (!cfg.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", cfg.status().message()));
  return cfg;
}

absl::StatusOr<PipelineConfig> PipelineConfig::ForSnapshot(const std::string& dir) {
  // The family's own stage graph (SnapshotEntry), on the default pipeline's services.
  const json defaults = json::parse(DefaultJson());
  json root = {{"default_model", ""},
               {"services", defaults["services"]},
               {"models", json::array({{{"path", dir}}})}};
  auto name = SnapshotModelName(dir);
  if (!name.ok()) return name.status();
  root["default_model"] = *name;
  auto cfg = Parse(root.dump());
  if (!cfg.ok()) return absl::InvalidArgumentError(cfg.status().message());
  return cfg;
}

const std::string& PipelineConfig::DefaultJson() {
  static const std::string* json_text = new std::string(kDefaultPipelineJson);
  return *json_text;
}

}  // namespace diffmesh
