// GLM-Image pipeline snapshots: the folder layout diffusers' GlmImagePipeline saves and the
// released checkpoint uses, read into a GlmImageSpec and written with random weights.
//
//   model_index.json
//   transformer/      config.json, diffusion_pytorch_model-0000k-of-00003.safetensors + index
//   vae/              config.json, diffusion_pytorch_model.safetensors
//   text_encoder/     config.json, model.safetensors                      (ByT5 encoder)
//   vision_language_encoder/  config.json, generation_config.json,
//                     model-0000k-of-00004.safetensors + model.safetensors.index.json (AR model)
//   scheduler/        scheduler_config.json
//   processor/        tokenizer.json, tokenizer_config.json, chat_template.jinja,
//                     preprocessor_config.json                            (AR tokenizer)
//   tokenizer/        tokenizer_config.json, special_tokens_map.json      (ByT5)
//
// Weights are read from the memory-mapped safetensors files tensor by tensor: every expected
// parameter is checked (name, shape, floating-point dtype; no unexpected tensor) from the headers
// before any data is read, then each shard is converted by its own thread straight from the
// mapping into the serving dtype and device. A tensor-parallel rank cuts its slice from the
// mapping before converting, so it never materialises a split tensor whole.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_SNAPSHOT_H_
#define DIFFMESH_MODELS_GLM_IMAGE_SNAPSHOT_H_

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor/dtype.h"
#include "models/core/weights.h"
#include "models/glm_image/glm_image_spec.h"

namespace diffmesh::models::glm_image {

// ---- Reading

// The spec of the snapshot in `dir`: model_index.json (a GlmImagePipeline), each component's
// config.json, scheduler/scheduler_config.json, vision_language_encoder/generation_config.json
// (sampling defaults; optional), and processor/tokenizer.json with tokenizer_config.json (ids of
// the AR prompt's special tokens <sop>, <eop> and bos). Reads no weights; spec.dir = `dir`.
// Name: model_index.json's "_name_or_path" when present, else "org/name" for a Hugging Face
// cache folder (models--org--name/snapshots/<hash>), else the folder's name. Every error names
// the file it is about.
absl::StatusOr<GlmImageSpec> SpecFromSnapshot(const std::string& dir);

// `spec.dir`/<component folder>.
std::string SnapshotComponentDir(const GlmImageSpec& spec, Component component);

// Checks every component's checkpoint against the parameters its config implies (names,
// shapes, floating-point dtypes, no unexpected tensors) from the safetensors headers alone.
absl::Status ValidateSnapshot(const GlmImageSpec& spec);

struct WeightLoadOptions {
  // Floating-point tensors are converted to `dtype`; others keep theirs.
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // Checkpoint tensors under these prefixes are skipped rather than reported as unexpected.
  std::vector<std::string> ignored_prefixes;
  // Other names a parameter may be stored under (tied weights), tried in order when its own
  // name is absent; whichever of them are present are not unexpected.
  std::map<std::string, std::vector<std::string>> aliases;
  // Tensor parallelism: tp_dim(name) is the dim of that parameter split over tp_size ranks
  // (-1: whole); this rank keeps part tp_rank of tp_size equal parts. Null: nothing split.
  int (*tp_dim)(const std::string& name) = nullptr;
  int tp_rank = 0;
  int tp_size = 1;
};

// Loads exactly `specs` from the checkpoint in `component_dir` (one .safetensors file or a
// sharded set with its index): NOT_FOUND naming a missing parameter and the files searched;
// INVALID_ARGUMENT naming a misshaped, non-floating or unexpected tensor and its file;
// DATA_LOSS naming a truncated or corrupt file; NOT_FOUND naming a shard the index lists but
// that is absent. The result holds this rank's slices.
absl::StatusOr<WeightMap> LoadComponentWeights(const std::string& component_dir,
                                               const std::vector<ParamSpec>& specs,
                                               const WeightLoadOptions& options);

// ---- Writing

struct SnapshotWriteOptions {
  // Element type of the weight files (the release stores bf16).
  DType dtype = DType::kFloat32;
  // Shard the AR model into 4 files and the DiT into 3 with index.json files, as the release
  // does; false: one model.safetensors / diffusion_pytorch_model.safetensors per component.
  bool sharded = true;
  // A folder with a real AR tokenizer (tokenizer.json + tokenizer_config.json, e.g. the
  // release's processor/ folder) copied into processor/ instead of the byte vocabulary; the AR
  // config's vocab_size must cover its ids. Empty: the byte vocabulary described below.
  std::string ar_tokenizer_dir;
};

// Writes a snapshot of `spec` into `dir` (created; existing files are overwritten) in the
// layout above: the configs, model_index.json, the tokenizer files, and the seeded weights
// BuildDit / BuildVaeDecoder / BuildTextEncoder / BuildArModel draw for a built-in spec
// (InitSeeded with ComponentSeed), so a snapshot of a built-in model loads to the same
// networks. The VAE is written whole (encoder and decoder); the AR checkpoint holds the text
// decoder and lm_head only (no vision tower / VQ model, which the AR stage does not run).
// processor/tokenizer.json is a byte-level BPE vocabulary without merges: byte b is token
// spec.tokenizer.byte_offset + b, plus the special tokens <sop>, <eop>, the bos token and
// <|image|>. Tensors are generated and written one at a time.
absl::Status WriteSnapshot(const GlmImageSpec& spec, const std::string& dir,
                           const SnapshotWriteOptions& options = {});

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_SNAPSHOT_H_
