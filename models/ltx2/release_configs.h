// The released LTX-2.3 configurations (diffusers' convert script, version "2.3"; the text encoder
// is Gemma 3 12B's text model), for the GPU benchmarks and checks at the real sizes. No release
// snapshot fits the GPU host's disk (19 B + 12 B + 3 B parameters), so the benchmarks build these
// networks with random weights drawn on the device.
#ifndef DIFFMESH_MODELS_LTX2_RELEASE_CONFIGS_H_
#define DIFFMESH_MODELS_LTX2_RELEASE_CONFIGS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "models/ltx2/ltx2_spec.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

nlohmann::json ReleaseTransformerConfig();
nlohmann::json ReleaseConnectorsConfig();
nlohmann::json ReleaseVideoVaeConfig();
nlohmann::json ReleaseAudioVaeConfig();
nlohmann::json ReleaseVocoderConfig();
nlohmann::json ReleaseTextEncoderConfig();  // Gemma3ForConditionalGeneration (text_config)

// Every component at the release configuration, weights seeded (ltx2-tiny's scheduler, which is
// the release one), named "ltx2.3-release-random".
Ltx2Spec ReleaseSpec();

// Random weights for `specs` drawn directly on the device of `options` (ones / zeros / normal as
// each spec says), so a 19 B-parameter network never passes through host memory.
WeightMap RandomWeightsOn(const std::vector<ParamSpec>& specs, const at::TensorOptions& options);

// The release networks of a text-to-video-with-audio run on `device`: transformer, connectors and
// text encoder in `dtype` with device-drawn weights; the decoders seeded on the host and moved
// (the BWE vocoder float32); the built-in byte tokenizer.
absl::StatusOr<Ltx2Models> BuildReleaseModels(at::ScalarType dtype, at::Device device);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_RELEASE_CONFIGS_H_
