// The decode of an LTX-2 request: final latents → frames (video VAE) and soundtrack (audio VAE,
// vocoder) → an MP4 with sound, raw frames and waveform, or the latents themselves. Used by the
// LTX-2 denoise engine for its own outputs, and as the "decode" stage kind of a stage graph
// (DenoiseRequest.decode: the latents come from the denoise stage before it), which runs on
// the calling thread beside rank 0 (or in a service started with --role decode) without the
// denoise group, so the group takes the next request meanwhile. ATen-free header.
#ifndef DIFFMESH_SERVICES_DENOISE_LTX2_DECODE_H_
#define DIFFMESH_SERVICES_DENOISE_LTX2_DECODE_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "common/call/call_context.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {
namespace models::ltx2 {
class Ltx2VideoDecoder;
class AudioVaeDecoder;
class Vocoder;
struct Ltx2Output;
}  // namespace models::ltx2

// Bounds on the work one LTX-2 stage call may ask (the orchestrator applies the model's own,
// tighter limits).
struct Ltx2StageBounds {
  static constexpr int kMaxSteps = 1000;
  static constexpr int kMaxSide = 4096;
  static constexpr int kMaxFrames = 1024;
};

class Ltx2Decoder {
 public:
  // The decoders of `model` (not owned; they outlive this), on one device.
  Ltx2Decoder(std::string model, const models::ltx2::Ltx2VideoDecoder* video_vae,
              const models::ltx2::AudioVaeDecoder* audio_vae,
              const models::ltx2::Vocoder* vocoder);

  // A "decode" stage call (r.decode set): r.latents' video_latents FLOAT32 [1, C, F, H, W] and
  // audio_latents FLOAT32 [1, C_a, L, M'] (denormalised, as the denoise stage's LATENTS outputs
  // give them), which must make r.num_frames frames of r.width × r.height; r.output MP4 or RAW.
  // Emits the outputs, then the Result (vae_decode_seconds).
  absl::Status Run(CallContext& ctx, const v1::DenoiseRequest& r,
                   const std::function<void(const v1::DenoiseEvent&)>& on_event) const;

  // The outputs r.output asks for, from `out`'s latents: LATENTS emits them as they are ("video_latents"
  // index 0, "audio_latents" index 1); MP4 and RAW decode them first (filling `out`) and set
  // result.vae_decode_seconds.
  absl::Status EmitOutputs(CallContext& ctx, const v1::DenoiseRequest& r,
                           models::ltx2::Ltx2Output& out,
                           const std::function<void(const v1::DenoiseEvent&)>& on_event,
                           v1::DenoiseEvent::Result& result) const;

 private:
  absl::Status CheckDecodeRequest(const v1::DenoiseRequest& r) const;
  absl::Status EmitMedia(const v1::DenoiseRequest& r, const models::ltx2::Ltx2Output& out,
                         const std::function<void(const v1::DenoiseEvent&)>& on_event) const;

  const std::string model_;
  const models::ltx2::Ltx2VideoDecoder* const video_vae_;
  const models::ltx2::AudioVaeDecoder* const audio_vae_;
  const models::ltx2::Vocoder* const vocoder_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_LTX2_DECODE_H_
