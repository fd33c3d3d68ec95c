// Pipeline configuration: which models exist, their request limits and defaults, and which
// service each stage runs on. Data, not code: read from JSON in this one place.
#ifndef DIFFMESH_COMMON_CONFIG_PIPELINE_CONFIG_H_
#define DIFFMESH_COMMON_CONFIG_PIPELINE_CONFIG_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh {

struct ModelDefaults {
  int height = 0;
  int width = 0;
  int steps = 0;
  float guidance_scale = 0;
};

struct ModelLimits {
  int pixel_granularity = 1;  // height and width must be multiples
  int min_size = 1;
  int max_size = 0;
  int max_prompt_bytes = 0;
  int max_steps = 200;
};

struct StageSpec {
  std::string name;     // "ar", "encoder", "denoise"
  std::string service;  // key into PipelineConfig::services
  // Denoise stage: hand it the AR tokens and the encoder's output as they are produced
  // (DenoiseService.DenoiseStream) rather than in one request once both stages are done.
  bool stream = true;
};

struct PipelineModel {
  std::string name;
  std::string description;
  // GlmImagePipeline snapshot folder the stage services serve this model from (their
  // --model-dir); empty for a built-in model. With a path the name defaults to the snapshot's
  // name (SnapshotModelName), and defaults / limits to the released pipeline's
  // (SnapshotDefaults / SnapshotLimits) unless the entry gives them.
  std::string path;
  ModelDefaults defaults;
  ModelLimits limits;
  std::vector<StageSpec> stages;
  bool HasStage(const std::string& stage) const;
};

struct PipelineConfig {
  std::string default_model;
  std::map<std::string, std::string> services;  // service name → "host:port"
  std::vector<PipelineModel> models;

  const PipelineModel* FindModel(const std::string& name) const;

  // Parses and validates (known stages, services defined, sane limits and defaults).
  static absl::StatusOr<PipelineConfig> Parse(const std::string& json_text);
  static absl::StatusOr<PipelineConfig> Load(const std::string& path);
  // The built-in pipeline (glm-image-tiny on the default loopback ports).
  static const std::string& DefaultJson();
  // One model: the snapshot in `dir`, with every stage on the default pipeline's services.
  static absl::StatusOr<PipelineConfig> ForSnapshot(const std::string& dir);
};

// The name stage services serve a snapshot under, read from `dir`/model_index.json: its
// `_name_or_path` when set; else "org/name" for a Hugging Face cache folder
// (.../models--org--name/snapshots/<revision>); else the folder's name. NOT_FOUND /
// INVALID_ARGUMENT naming model_index.json when it is missing or not JSON.
absl::StatusOr<std::string> SnapshotModelName(const std::string& dir);
// The same rule, given model_index.json's `_name_or_path` ("" when absent).
std::string SnapshotModelName(const std::string& name_or_path, const std::string& dir);

// GlmImagePipeline's own defaults (1024², 50 steps, guidance 1.5) and the sizes it accepts.
ModelDefaults SnapshotDefaults();
ModelLimits SnapshotLimits();

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_CONFIG_PIPELINE_CONFIG_H_
