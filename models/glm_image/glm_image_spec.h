// A GLM-Image model as the stages see it: the config.json of each component (transformer,
// vae, text_encoder, vision_language_encoder, scheduler) and where the weights come from —
// seeded random weights for the built-in small configurations, a checkpoint directory later.
// Each stage builds only the components it runs.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_GLM_IMAGE_SPEC_H_
#define DIFFMESH_MODELS_GLM_IMAGE_GLM_IMAGE_SPEC_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/glm_image/ar_model.h"
#include "models/glm_image/ar_prompt.h"
#include "models/glm_image/dit.h"
#include "models/glm_image/scheduler.h"
#include "models/glm_image/t5_encoder.h"
#include "models/glm_image/vae.h"
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
};

// Names of the built-in models ("glm-image-tiny").
std::vector<std::string> BuiltinModelNames();
// NOT_FOUND naming the model when unknown.
absl::StatusOr<GlmImageSpec> BuiltinSpec(const std::string& name);

// Builders for each stage's components, in `dtype` on the CPU.
// `tp`: the tensor-parallel slice this rank keeps (built from the full weights).
absl::StatusOr<std::unique_ptr<GlmImageDit>> BuildDit(const GlmImageSpec& spec,
                                                      at::ScalarType dtype = at::kFloat,
                                                      TensorParallelShard tp = {},
                                                      at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<AutoencoderKl>> BuildVaeDecoder(const GlmImageSpec& spec,
                                                               at::ScalarType dtype = at::kFloat,
                                                               at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<T5Encoder>> BuildTextEncoder(const GlmImageSpec& spec);
absl::StatusOr<std::unique_ptr<ArModel>> BuildArModel(const GlmImageSpec& spec,
                                                      const ArModelOptions& options = {});
absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> BuildScheduler(const GlmImageSpec& spec);

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_GLM_IMAGE_SPEC_H_
