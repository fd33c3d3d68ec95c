#include "common/config/pipeline_config.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
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

ModelDefaults SnapshotDefaults() {
  ModelDefaults d;
  d.height = 1024;
  d.width = 1024;
  d.steps = 50;
  d.guidance_scale = 1.5f;
  return d;
}

ModelLimits SnapshotLimits() {
  ModelLimits l;
  l.pixel_granularity = 32;
  l.min_size = 256;
  l.max_size = 2048;
  l.max_prompt_bytes = 8000;
  l.max_steps = 200;
  return l;
}

bool PipelineModel::HasStage(const std::string& stage) const {
  for (const auto& s : stages) {
    if (s.name == stage) return true;
  }
  return false;
}

const PipelineModel* PipelineConfig::FindModel(const std::string& name) const {
  for (const auto& m : models) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

absl::StatusOr<PipelineConfig> PipelineConfig::Parse(const std::string& json_text) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) return Bad("not a JSON object");
  PipelineConfig cfg;
#define DM_READ(obj, key, out, req, where)                       \
  if (auto _st = Read(obj, key, out, req, where); !_st.ok()) return _st
  DM_READ(root, "default_model", cfg.default_model, true, "root");
  DM_READ(root, "services", cfg.services, true, "root");
  if (!root.contains("models") || !root["models"].is_array() || root["models"].empty()) {
    return Bad("'models' must be a non-empty array");
  }
  static const std::set<std::string> kStages = {"ar", "encoder", "denoise"};
  for (const json& m : root["models"]) {
    PipelineModel model;
    if (!m.is_object()) return Bad("each model must be an object");
    DM_READ(m, "path", model.path, false, "model");
    const bool snapshot = !model.path.empty();
    std::string served;  // the name the stage services serve the snapshot under
    if (snapshot) {
      auto name = SnapshotModelName(model.path);
      if (!name.ok()) return Bad(std::string(name.status().message()));
      served = *name;
      model.name = served;
      model.description = absl::StrCat("GlmImagePipeline snapshot ", model.path);
      model.defaults = SnapshotDefaults();
      model.limits = SnapshotLimits();
    }
    DM_READ(m, "name", model.name, !snapshot, "model");
    const std::string where = absl::StrCat("model '", model.name, "'");
    if (snapshot && model.name != served) {
      return Bad(absl::StrCat(where, ": the stage services serve ", model.path, " as '", served,
                              "' (its model_index.json _name_or_path, else the folder name)"));
    }
    DM_READ(m, "description", model.description, false, where);
    if ((!snapshot && (!m.contains("defaults") || !m.contains("limits"))) || !m.contains("stages")) {
      return Bad(absl::StrCat(where, " needs 'defaults', 'limits' and 'stages' ('defaults' and "
                              "'limits' may be left out with a 'path')"));
    }
    if (m.contains("defaults")) {
      const json& d = m["defaults"];
      DM_READ(d, "height", model.defaults.height, !snapshot, where);
      DM_READ(d, "width", model.defaults.width, !snapshot, where);
      DM_READ(d, "steps", model.defaults.steps, !snapshot, where);
      DM_READ(d, "guidance_scale", model.defaults.guidance_scale, !snapshot, where);
    }
    if (m.contains("limits")) {
      const json& l = m["limits"];
      DM_READ(l, "pixel_granularity", model.limits.pixel_granularity, !snapshot, where);
      DM_READ(l, "min_size", model.limits.min_size, !snapshot, where);
      DM_READ(l, "max_size", model.limits.max_size, !snapshot, where);
      DM_READ(l, "max_prompt_bytes", model.limits.max_prompt_bytes, !snapshot, where);
      DM_READ(l, "max_steps", model.limits.max_steps, false, where);
    }
    const ModelLimits& lim = model.limits;
    if (lim.pixel_granularity <= 0 || lim.min_size <= 0 || lim.max_size < lim.min_size ||
        lim.max_prompt_bytes <= 0 || lim.max_steps < 1) {
      return Bad(absl::StrCat(where, " has inconsistent limits"));
    }
    for (int v : {model.defaults.height, model.defaults.width}) {
      if (v < lim.min_size || v > lim.max_size || v % lim.pixel_granularity != 0) {
        return Bad(absl::StrCat(where, " default size ", v, " breaks its own limits"));
      }
    }
    if (model.defaults.steps < 1 || model.defaults.steps > lim.max_steps) {
      return Bad(absl::StrCat(where, " default steps out of range"));
    }
    if (!m["stages"].is_array()) return Bad(absl::StrCat(where, ".stages must be an array"));
    for (const json& js : m["stages"]) {
      StageSpec stage;
      DM_READ(js, "name", stage.name, true, where);
      DM_READ(js, "service", stage.service, true, where);
      DM_READ(js, "stream", stage.stream, false, where);
      if (!kStages.count(stage.name)) {
        return Bad(absl::StrCat(where, " has unknown stage '", stage.name, "'"));
      }
      if (!cfg.services.count(stage.service)) {
        return Bad(absl::StrCat(where, " stage '", stage.name, "' runs on undefined service '",
                                stage.service, "'"));
      }
      model.stages.push_back(stage);
    }
    if (!model.HasStage("denoise")) return Bad(absl::StrCat(where, " has no denoise stage"));
    if (cfg.FindModel(model.name) != nullptr) return Bad(absl::StrCat(where, " defined twice"));
    cfg.models.push_back(std::move(model));
  }
#undef DM_READ
  if (cfg.FindModel(cfg.default_model) == nullptr) {
    return Bad(absl::StrCat("default_model '", cfg.default_model, "' is not defined"));
  }
  return cfg;
}

absl::StatusOr<PipelineConfig> PipelineConfig::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read pipeline config ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto cfg = Parse(ss.str());
  if (!cfg.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", cfg.status().message()));
  return cfg;
}

absl::StatusOr<PipelineConfig> PipelineConfig::ForSnapshot(const std::string& dir) {
  const json defaults = json::parse(DefaultJson());
  json root = {{"default_model", ""},
               {"services", defaults["services"]},
               {"models", json::array({{{"path", dir}, {"stages", defaults["models"][0]["stages"]}}})}};
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
