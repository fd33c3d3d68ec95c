// LTX2Pipeline snapshots in the diffusers layout, read into an Ltx2Spec and written from one:
//
//   model_index.json   {"_class_name": "LTX2Pipeline", "transformer": ["diffusers",
//                      "LTX2VideoTransformer3DModel"], "vae", "audio_vae", "vocoder",
//                      "connectors", "text_encoder" (Gemma3ForConditionalGeneration),
//                      "tokenizer" (GemmaTokenizerFast), "scheduler"}
//   transformer/       config.json, diffusion_pytorch_model[-0000k-of-0000n].safetensors (+ index)
//   connectors/ vae/ audio_vae/ vocoder/   config.json, diffusion_pytorch_model.safetensors
//   text_encoder/      config.json, model[-0000k-of-0000n].safetensors (+
//   model.safetensors.index.json) tokenizer/         tokenizer.model (SentencePiece),
//   tokenizer_config.json scheduler/         scheduler_config.json latent_upsampler/  config.json,
//   diffusion_pytorch_model.safetensors   (optional; diffusers
//                      loads it separately with LTX2LatentUpsamplePipeline)
//
// Reading checks every component's tensors against the parameters its config implies — names,
// shapes, floating-point dtypes, no unexpected tensor — from the safetensors headers (sharded
// sets through their index, common/safetensors Checkpoint) before any network is built; errors
// name the tensor and the file. The networks then load through models/core LoadWeights.
// Written snapshots hold the video VAE's encoder and decoder and the audio VAE's decoder only
// (its encoder is not ported), so diffusers' from_pretrained, which wants the audio encoder too,
// cannot load them. A vae/ without encoder.* tensors still reads (no image-to-video then).
#ifndef DIFFMESH_MODELS_LTX2_SNAPSHOT_H_
#define DIFFMESH_MODELS_LTX2_SNAPSHOT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor/dtype.h"
#include "models/ltx2/ltx2_spec.h"

namespace diffmesh::models::ltx2 {

// The spec of the snapshot in `dir`: model_index.json (an LTX2Pipeline naming every component
// above), each component's config.json, scheduler/scheduler_config.json, and latent_upsampler/
// when present; then ValidateSnapshot. spec.dir = `dir`; the name is the one every service
// serves it under (common/config SnapshotModelName: model_index.json's "_name_or_path", else
// "org/name" of a Hugging Face cache folder, else the folder's name). Errors name the file.
absl::StatusOr<Ltx2Spec> SpecFromSnapshot(const std::string& dir);

// Checks every component's checkpoint (headers only) and the tokenizer file.
absl::Status ValidateSnapshot(const Ltx2Spec& spec);

struct Ltx2SnapshotWriteOptions {
  // Element type of the floating-point weights (the release stores bf16).
  DType dtype = DType::kFloat32;
  // Split the transformer and the text encoder into this many shards with an index.json, as the
  // release does; 1 = one file per component.
  int num_shards = 2;
};

// Writes `spec` (a built-in model: its seeded weights, drawn exactly as the Build* functions of
// ltx2_spec.h draw them) into `dir` (created; existing files overwritten) in the layout above,
// with the built-in byte tokenizer. A snapshot read back builds the same networks (bit for bit
// in float32). FAILED_PRECONDITION / INVALID_ARGUMENT for a model that runs on CUDA only or
// draws its weights on the device (ltx2.3-release-random), before anything is drawn.
absl::Status WriteSnapshot(const Ltx2Spec& spec, const std::string& dir,
                           const Ltx2SnapshotWriteOptions& options = {});

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_SNAPSHOT_H_
