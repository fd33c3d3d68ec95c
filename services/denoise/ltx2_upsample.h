// The "upsample" stage of an LTX-2 stage graph, served by the denoise service beside the
// denoise engine: the model's latent upsampler (models/ltx2/upsampler.h) on the latents of the
// stage before it. The latent-space part of diffusers' LTX2LatentUpsamplePipeline with
// output_type="latent" on raw latents (what LTX2Pipeline(output_type="latent") returns):
// upsample, then the optional AdaIN and tone map (UpsampleOptions; 0 skips each, the reference
// defaults). ATen-free header.
//
// Request: a DenoiseRequest with `upsample` set, `model`, and `latents`: video FLOAT32
// [B, C, F, H, W] raw latents, audio (optional) FLOAT32 [B, C_a, L, M']. Events: LATENTS outputs
// "video_latents" (index 0, [B, C, F, H·s, W·s]) and, when given, "audio_latents" (index 1,
// passed through unchanged: the upsampler is video-only), then the Result (its denoise_seconds
// is the upsampler's time). Runs on the calling thread, on rank 0 only (no group collective).
#ifndef DIFFMESH_SERVICES_DENOISE_LTX2_UPSAMPLE_H_
#define DIFFMESH_SERVICES_DENOISE_LTX2_UPSAMPLE_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

class Ltx2UpsampleStage {
 public:
  // The latent upsampler of the built-in `model`, or of the snapshot in `model_dir` when set, on
  // the first CUDA device when `cuda` (in its serving dtype, ltx2::ServingDtype), else on the
  // CPU. FAILED_PRECONDITION naming the model when it has none.
  static absl::StatusOr<std::unique_ptr<Ltx2UpsampleStage>> Create(const std::string& model,
                                                                   const std::string& model_dir,
                                                                   bool cuda);
  ~Ltx2UpsampleStage();
  Ltx2UpsampleStage(const Ltx2UpsampleStage&) = delete;
  Ltx2UpsampleStage& operator=(const Ltx2UpsampleStage&) = delete;

  // Whether `r` asks for this stage (DenoiseRequest.upsample set).
  static bool IsUpsampleRequest(const v1::DenoiseRequest& r) { return r.has_upsample(); }

  absl::Status Run(CallContext& ctx, const v1::DenoiseRequest& r,
                   const std::function<void(const v1::DenoiseEvent&)>& on_event) const;

 private:
  struct Impl;
  explicit Ltx2UpsampleStage(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_LTX2_UPSAMPLE_H_
