// The decode of a GLM-Image request: final latents → image (the VAE) → PNG, JPEG, WebP or raw
// pixels, or the latents themselves. Used by the GLM-Image denoise engine for its own outputs,
// and as the "decode" stage kind of a stage graph (DenoiseRequest.decode: the latents come from
// the denoise stage before it), which runs on the calling thread beside rank 0 (or in a service
// started with --role decode) without the denoise group, so the group takes the next request
// meanwhile. ATen-free header.
#ifndef DIFFMESH_SERVICES_DENOISE_GLM_IMAGE_DECODE_H_
#define DIFFMESH_SERVICES_DENOISE_GLM_IMAGE_DECODE_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "common/call/call_context.h"
#include "diffmesh/v1/stages.pb.h"

namespace at {
class Tensor;
}  // namespace at

namespace diffmesh {
namespace models::glm_image {
class AutoencoderKl;
}  // namespace models::glm_image

class GlmImageDecoder {
 public:
  // `vae` (not owned; outlives this) decodes; requests' sides may reach `max_image_size`.
  GlmImageDecoder(std::string model, const models::glm_image::AutoencoderKl* vae,
                  int max_image_size);

  // What GLM-Image makes: PNG, JPEG, WEBP (with an optional quality), RAW and LATENTS.
  static absl::Status CheckOutput(const v1::OutputOptions& output);

  // A "decode" stage call (r.decode set): r.latents.image_latents FLOAT32 [1, C, h, w] (the
  // denoise stage's LATENTS output "latents"), which must make r.width × r.height; r.output an
  // image format or RAW. Emits the output, then the Result (vae_decode_seconds).
  absl::Status Run(CallContext& ctx, const v1::DenoiseRequest& r,
                   const std::function<void(const v1::DenoiseEvent&)>& on_event) const;

  // The output `output` asks for from the final latents [1, C, h, w] (the DiT's, normalised):
  // LATENTS emits them as "latents"; the others decode them first and set
  // result.vae_decode_seconds.
  absl::Status EmitOutputs(CallContext& ctx, const v1::OutputOptions& output,
                           const at::Tensor& latents,
                           const std::function<void(const v1::DenoiseEvent&)>& on_event,
                           v1::DenoiseEvent::Result& result) const;

 private:
  const std::string model_;
  const models::glm_image::AutoencoderKl* const vae_;
  const int max_image_size_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_GLM_IMAGE_DECODE_H_
