// The released LTX-2.3 configurations (diffusers' convert script, version "2.3"; the text encoder
// is Gemma 3 12B's text model), for the GPU benchmarks and checks at the real sizes. No release
// snapshot fits the GPU host's disk (19 B + 12 B + 3 B parameters), so the benchmarks and the
// built-in model "ltx2.3-release-random" (which the stage services serve like ltx2-tiny) build
// these networks with random weights drawn on the device.
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

// The built-in model of ReleaseSpec (BuiltinSpec resolves it).
inline constexpr char kReleaseRandomModel[] = "ltx2.3-release-random";

nlohmann::json ReleaseTransformerConfig();
nlohmann::json ReleaseConnectorsConfig();
nlohmann::json ReleaseVideoVaeConfig();
nlohmann::json ReleaseAudioVaeConfig();
nlohmann::json ReleaseVocoderConfig();
nlohmann::json ReleaseTextEncoderConfig();  // Gemma3ForConditionalGeneration (text_config)

// Every component at the release configuration, weights seeded (ltx2-tiny's scheduler, which is
// the release one), named kReleaseRandomModel: the transformer, connectors and text encoder
// drawn on the device (draw_on_device), and refused on the CPU (cuda_only_reason: their size).
Ltx2Spec ReleaseSpec();

// Unseeded random weights for `specs` drawn directly on the device of `options`
// (DrawWeightsOn without a seed), so a 19 B-parameter network never passes through host memory.
WeightMap RandomWeightsOn(const std::vector<ParamSpec>& specs, const at::TensorOptions& options);

// The release networks of a text-to-video-with-audio run on `device`, as the ltx2_spec builders
// make them for ReleaseSpec(): transformer, connectors and text encoder in `dtype`, drawn on the
// device; the video and audio VAE decoders seeded on the host and moved, in `decoder_dtype`
// (Undefined: their serving dtype, ServingDtype, as the denoise service runs them); the vocoder
// in its serving dtype (float32); the built-in byte tokenizer; no video encoder.
// FAILED_PRECONDITION on the CPU (every builder checks it).
absl::StatusOr<Ltx2Models> BuildReleaseModels(at::ScalarType dtype, at::Device device,
                                              at::ScalarType decoder_dtype = at::ScalarType::Undefined);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_RELEASE_CONFIGS_H_
