// Pipeline configuration: which models exist, their request limits and defaults, and each
// model's pipeline as a graph of stages with the service each runs on. Data, not code: read
// from JSON in this one place.
#ifndef DIFFMESH_COMMON_CONFIG_PIPELINE_CONFIG_H_
#define DIFFMESH_COMMON_CONFIG_PIPELINE_CONFIG_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "diffmesh/v1/generation.pb.h"

namespace diffmesh {

// One stage of a model's pipeline graph.
struct StageSpec {
  // Unique within the model; progress, timings and metrics carry it.
  std::string name;
  // What runs it, and so which stage API it speaks: "ar", "encoder", "denoise" or "upsample"
  // (the model's latent upsampler, served by the denoise service).
  std::string kind;
  // Key into PipelineConfig::services.
  std::string service;
  // Stages whose outputs it consumes (each defined before it in the list).
  std::vector<std::string> inputs;
  // Fed with its inputs as they are produced (e.g. AR tokens streamed to the denoise group),
  // rather than once every input is complete.
  bool stream_inputs = false;

  // Multi-stage pipelines (e.g. LTX-2 two-stage: denoise at half size → upsample → denoise).
  // A stage whose outputs some stage consumes hands them on as latents instead of returning them.
  // "denoise": runs at the request's height and width divided by this (the request's size is
  // the final size; it must then be a multiple of the model's granularity times this).
  int size_divisor = 1;
  // "denoise": explicit sigmas (their count is the stage's steps; terminal 0 implied), and the
  // noise its given latents are re-noised with (given latents become
  // noise_scale·noise + (1 − noise_scale)·latents). Empty / 0: the request's steps, no noise.
  std::vector<double> sigmas;
  double noise_scale = 0.0;
  // "denoise": no guidance (conditional branch only), as a distilled stage runs.
  bool unguided = false;
  // "denoise": a LoRA adapter of the model that this stage's transformer calls apply, by the
  // name the denoise service loaded it under (its --lora flag), at lora_strength; JSON
  // "lora": {"name": "distilled", "strength": 1.0}. Empty: the plain weights.
  std::string lora;
  double lora_strength = 1.0;
  // "upsample": the reference pipeline's AdaIN factor and tone-map compression (0 skips each).
  double adain_factor = 0.0;
  double tone_map_compression_ratio = 0.0;
};

enum class ModelKind { kImage, kVideoWithAudio };

struct PipelineModel {
  std::string name;
  std::string description;
  ModelKind kind = ModelKind::kImage;
  // Snapshot folder (diffusers layout) the stage services serve this model from (their
  // --model-dir); empty for a built-in model. With a path the model family follows
  // model_index.json's `_class_name` (GlmImagePipeline, LTX2Pipeline), the name is the
  // snapshot's (SnapshotModelName), and kind, input roles, stages, defaults and limits are the
  // family's for that snapshot (read from its configs by the family's code) unless the entry
  // gives them (defaults and limits field by field).
  std::string path;
  // Every default a request may leave unset (sizes, steps, guidance, output format).
  v1::GenerateRequest defaults;
  v1::ModelLimits limits;
  // Roles of the input media it accepts; empty: none.
  std::vector<v1::MediaRole> input_roles;
  // The stage graph, each stage after its inputs.
  std::vector<StageSpec> stages;
  const StageSpec* FindStage(const std::string& name) const;
};

struct PipelineConfig {
  std::string default_model;
  std::map<std::string, std::string> services;  // service name → "host:port"
  std::vector<PipelineModel> models;

  const PipelineModel* FindModel(const std::string& name) const;

  // Keeps only the models named in `names` (in the config's order), for a mesh whose stage
  // services serve those alone (`diffmesh up --model M`); the default model becomes the first
  // kept one unless it is kept. NOT_FOUND naming a model the config lacks; INVALID_ARGUMENT
  // for an empty list.
  absl::Status KeepModels(const std::vector<std::string>& names);

  // Parses and validates (known stage kinds, inputs defined before use, services defined,
  // sane limits and defaults). Defaults and limits use the field names of
  // diffmesh.v1.GenerateRequest and diffmesh.v1.ModelLimits.
  static absl::StatusOr<PipelineConfig> Parse(const std::string& json_text);
  static absl::StatusOr<PipelineConfig> Load(const std::string& path);
  // The built-in pipeline (glm-image-tiny on the default loopback ports).
  static const std::string& DefaultJson();
  // One model: the snapshot in `dir` (any family above), its stages on the default pipeline's
  // services.
  static absl::StatusOr<PipelineConfig> ForSnapshot(const std::string& dir);
};

// The name stage services serve a snapshot under, read from `dir`/model_index.json: its
// `_name_or_path` when set; else "org/name" for a Hugging Face cache folder
// (.../models--org--name/snapshots/<revision>); else the folder's name. NOT_FOUND /
// INVALID_ARGUMENT naming model_index.json when it is missing or not JSON.
absl::StatusOr<std::string> SnapshotModelName(const std::string& dir);
// The same rule, given model_index.json's `_name_or_path` ("" when absent).
std::string SnapshotModelName(const std::string& name_or_path, const std::string& dir);

// `dir`/model_index.json's `_class_name`: NOT_FOUND / INVALID_ARGUMENT naming the file when it
// is missing, not JSON or has none.
absl::StatusOr<std::string> SnapshotClassName(const std::string& dir);

// GlmImagePipeline's own defaults (1024², 50 steps, guidance 1.5) and the sizes it accepts.
v1::GenerateRequest SnapshotDefaults();
v1::ModelLimits SnapshotLimits();

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_CONFIG_PIPELINE_CONFIG_H_
