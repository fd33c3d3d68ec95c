// LTX-2 in the denoise stage: text+audio-to-video denoising with the four-branch guidance of
// models/ltx2/pipeline.h on a denoise group (denoise_group.h) of CFG-parallel ranks, then, on
// rank 0 alone, the video VAE, audio VAE and vocoder, and the output as MP4 (H.264 + AAC), RAW
// tensors or latents. ATen-free header.
//
// CFG parallelism (any degree 1..N): each step's live branches (cond; negative iff cfg ≠ 1 in
// either stream; perturbed iff stg ≠ 0 with STG blocks; modality iff modality ≠ 1) are dealt
// round-robin over the cfg ranks, each rank's weighted x0 sum (the PARALLEL form, per stream) is
// all-reduced over the cfg ranks, and every rank applies the rescale and the Euler step. Ranks
// beyond the live-branch count run no forward and add zeros to the all-reduce. Rank 0 takes the
// requests and broadcasts each whole (text embeddings included) once; the others run RunWorker.
//
// Inputs (from the encoder stage, services/encoder/encoder_core.h): prompt_embeds and
// negative_prompt_embeds FLOAT32 [1, T, video width + audio width] — the text connectors'
// video and audio embeddings of the prompt's valid tokens, concatenated on the last axis.
// Image-to-video: DenoiseRequest.inputs may hold one image (PNG, JPEG or WebP) of role
// MEDIA_ROLE_FIRST_FRAME; every rank encodes it with the video VAE encoder for the request's
// size (models/ltx2/video_vae_encoder.h EncodeConditioningImage) and the pipeline holds the first
// latent frame at it. Another role is INVALID_ARGUMENT naming inputs[i].role.
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

// Sequence and tensor parallelism (options.parallel.ulysses, .ring, .tp): every
// ulysses × ring × tp block runs the transformer sharded (Ltx2Transformer::Parallelize over the
// group's tp, Ulysses and ring communicators: video tokens by whole latent frames over
// Ulysses × ring, audio replicated, heads and feed-forward columns over tp), the cfg axis as
// above. A request's latent frames ((num_frames − 1)/8 + 1 for the released VAEs) must divide by
// ulysses × ring (INVALID_ARGUMENT naming the nearest valid num_frames).
//
// CUDA (options.cuda): each rank on cuda:<rank % visible GPUs>, NCCL between ranks; the
// transformer in bf16, the decoders and the video encoder in float32 (ltx2_spec's builders), the
// latents, guidance sums and scheduler float32.
//
// Collective over the group's ranks (options.rendezvous). A tp degree that does not divide both
// streams' heads is INVALID_ARGUMENT, before any rank meets.
absl::StatusOr<std::unique_ptr<DenoiseEngine>> CreateLtx2DenoiseEngine(
    const DenoiseCore::Options& options);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_LTX2_DENOISE_H_
