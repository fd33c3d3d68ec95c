// What an LTX2Pipeline snapshot contributes to the pipeline configuration
// (common/config/pipeline_config.h): its kind, stage graph, request limits and defaults, read
// from the snapshot's configs. Torch-free and header-light (JSON files only, no network is
// built), so the control plane — the orchestrator, `diffmesh up` — links it without LibTorch.
//
// Limits, from the configs:
//   size_granularity = min_size  vae spatial_compression_ratio × transformer patch_size
//   max_size                     min(transformer base_height, base_width): the extent the video
//                                RoPE positions are normalised to (larger sizes extrapolate)
//   frames                       multiple = vae temporal_compression_ratio × patch_size_t,
//                                offset 1; max_frames the largest such count within the
//                                transformer's pos_embed_max_pos seconds at the default frame
//                                rate (video positions are in seconds)
//   steps                        1 .. scheduler num_train_timesteps
// Defaults: the reference pipeline's (Lightricks' LTX_2_PARAMS / LTX_2_3_PARAMS, diffusers'
// LTX2Pipeline.__call__ at the fixtures' commit): 512 high × 768 wide, 121 frames at 24 fps,
// 40 steps (LTX-2.0) or 30 (LTX-2.3, told by the transformer's gated_attn), video guidance
// cfg 3 / stg 1 / modality 3 / rescale 0.7, audio cfg 7 / stg 1 / modality 3 / rescale 0.7, STG
// at block 29 (2.0) or 28 (2.3) — the last block when the model has fewer; stg 0 when the
// transformer is not perturbed_attn (its perturbed pass would equal the conditional one). Each
// default is clamped to the limits above.
#ifndef DIFFMESH_MODELS_LTX2_SNAPSHOT_PIPELINE_H_
#define DIFFMESH_MODELS_LTX2_SNAPSHOT_PIPELINE_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// model_index.json's `_class_name` of the snapshots this family serves.
inline constexpr char kLtx2PipelineClassName[] = "LTX2Pipeline";

// Frames per second the reference pipeline generates at when the request names none.
inline constexpr double kLtx2DefaultFrameRate = 24.0;

// Whether `dir`/model_index.json names an LTX2Pipeline (nothing else is read or checked).
bool IsLtx2Snapshot(const std::string& dir);

// The pipeline-config model entry for the snapshot in `dir`, in pipeline_config's JSON format:
// {"kind": "video_with_audio", "description", "defaults", "limits", "stages" (encoder → denoise
// on the services "encoder" and "denoise")}. Errors name the config file and the field.
absl::StatusOr<nlohmann::json> Ltx2SnapshotPipelineEntry(const std::string& dir);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_SNAPSHOT_PIPELINE_H_
