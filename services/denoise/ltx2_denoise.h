// LTX-2 in the denoise stage: text+audio-to-video denoising with the four-branch guidance of
// models/ltx2/pipeline.h on one rank, then the video VAE, audio VAE and vocoder, and the output
// as MP4 (H.264 + AAC), RAW tensors or latents. ATen-free header.
//
// Inputs (from the encoder stage, services/encoder/encoder_core.h): prompt_embeds and
// negative_prompt_embeds FLOAT32 [1, T, video width + audio width] — the text connectors'
// video and audio embeddings of the prompt's valid tokens, concatenated on the last axis.
// Guidance: DenoiseRequest.guidance.main drives the video stream, .audio the audio stream;
// unset fields are off (cfg 1, stg 0, modality 1, rescale 0).
#ifndef DIFFMESH_SERVICES_DENOISE_LTX2_DENOISE_H_
#define DIFFMESH_SERVICES_DENOISE_LTX2_DENOISE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/denoise_engine.h"

namespace diffmesh {

// Whether `model` (or, when set, the snapshot in `model_dir`) is an LTX-2 model.
bool IsLtx2DenoiseModel(const std::string& model, const std::string& model_dir);

// One rank only for now: a group of world size > 1, or CUDA, is INVALID_ARGUMENT.
absl::StatusOr<std::unique_ptr<DenoiseEngine>> CreateLtx2DenoiseEngine(
    const DenoiseCore::Options& options);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_LTX2_DENOISE_H_
