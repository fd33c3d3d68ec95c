// A GLM-Image model as the stages see it: the config.json of each component (transformer,
// vae, text_encoder, vision_language_encoder, scheduler) and where the weights come from —
// seeded random weights for the built-in small configurations, or a GlmImagePipeline snapshot
// folder (models/glm_image/snapshot.h). Each stage builds only the components it runs.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_GLM_IMAGE_SPEC_H_
#define DIFFMESH_MODELS_GLM_IMAGE_GLM_IMAGE_SPEC_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/glm_image/ar_model.h"
#include "models/glm_image/ar_prompt.h"
#include "models/glm_image/condition_image.h"
#include "models/glm_image/dit.h"
#include "models/glm_image/scheduler.h"
#include "models/glm_image/t5_encoder.h"
#include "models/glm_image/vae.h"
#include "models/glm_image/vision_tokenizer.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {

struct GlmImageSpec {
  std::string name;
  // Component configs, in the checkpoint's config.json format.
  nlohmann::json transformer, vae, text_encoder, vision_language_encoder, scheduler;
  // Seed of the built-in weights; each component derives its own from it.
  uint64_t seed = 0;
  // Tokenizer the AR prompt is built with.
  ArTokenizerSpec tokenizer;
  // Sampling defaults of the AR stage.
  ArSampling sampling;
  // Snapshot folder the weights are read from (SpecFromSnapshot); empty: seeded weights.
  std::string dir;
  // The snapshot's processor/tokenizer.json; empty for built-in models. `byte_tokens` says
  // whether `tokenizer` encodes prompts exactly: true for the built-ins and for snapshots whose
  // tokenizer.json is a plain byte vocabulary (every byte its own token at byte_offset + b, no
  // merges); false for a real BPE vocabulary, which prompts must be encoded with.
  std::string ar_tokenizer_json;
  bool byte_tokens = true;
  // The AR image processor's preprocessor_config.json for built-in models (condition images of
  // edit requests); empty for snapshots, which hold it as processor/preprocessor_config.json.
  nlohmann::json image_processor;
  // Largest image side the stages serve unless told otherwise (the AR stage sizes its KV cache
  // for it): 512 for the small built-ins, the released pipeline's limit for snapshots.
  int max_image_size = 512;
};

// The components whose weights a spec describes; each draws its seeded weights from its own
// seed (ComponentSeed), and the snapshot writer draws the same ones.
enum class Component {
  kTransformer = 1,
  kVae = 2,
  kTextEncoder = 3,
  kVisionLanguageEncoder = 4,
};
uint64_t ComponentSeed(const GlmImageSpec& spec, Component component);

// Names of the built-in models ("glm-image-tiny").
std::vector<std::string> BuiltinModelNames();
// NOT_FOUND naming the model when unknown.
absl::StatusOr<GlmImageSpec> BuiltinSpec(const std::string& name);
// What a stage serves: the snapshot in `model_dir` (SpecFromSnapshot, served under the
// snapshot's name) when it is set, else the built-in model `model`.
absl::StatusOr<GlmImageSpec> ResolveSpec(const std::string& model, const std::string& model_dir);

// Builders for each stage's components, in `dtype` on `device`. With spec.dir set the weights
// are read from the snapshot (every parameter checked by name, shape and dtype first, then
// converted tensor by tensor from the mapped files, a thread per shard); else they are the
// seeded ones. `tp`: the tensor-parallel slice this rank keeps; from a snapshot a rank reads
// only its slice of each split tensor.
absl::StatusOr<std::unique_ptr<GlmImageDit>> BuildDit(const GlmImageSpec& spec,
                                                      at::ScalarType dtype = at::kFloat,
                                                      TensorParallelShard tp = {},
                                                      at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<AutoencoderKl>> BuildVaeDecoder(const GlmImageSpec& spec,
                                                               at::ScalarType dtype = at::kFloat,
                                                               at::Device device = at::kCPU);
// fp32 on the CPU.
absl::StatusOr<std::unique_ptr<T5Encoder>> BuildTextEncoder(const GlmImageSpec& spec);
absl::StatusOr<std::unique_ptr<ArModel>> BuildArModel(const GlmImageSpec& spec,
                                                      const ArModelOptions& options = {});
absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> BuildScheduler(const GlmImageSpec& spec);

// ---- Image-to-image (editing) components.

// The whole autoencoder (encoder for condition images, decoder for the output).
absl::StatusOr<std::unique_ptr<AutoencoderKl>> BuildVae(const GlmImageSpec& spec,
                                                        at::ScalarType dtype = at::kFloat,
                                                        at::Device device = at::kCPU);
// The AR checkpoint's vision tower and VQ model (vision_language_encoder's `vision_config` /
// `vq_config`); FailedPrecondition when the spec's config has no vision_config.
absl::StatusOr<std::unique_ptr<GlmImageVisionTokenizer>> BuildVisionTokenizer(
    const GlmImageSpec& spec, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
// The AR image processor settings: spec.image_processor, or the snapshot's
// processor/preprocessor_config.json.
absl::StatusOr<ArImageProcessorConfig> BuildArImageProcessorConfig(const GlmImageSpec& spec);

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_GLM_IMAGE_SPEC_H_
