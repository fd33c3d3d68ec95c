#include "services/denoise/ltx2_upsample.h"

#include <ATen/ATen.h>

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/output/output_chunks.h"
#include "common/status/status_macros.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/upsampler.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {

namespace ltx2 = models::ltx2;

struct Ltx2UpsampleStage::Impl {
  std::string name;
  std::unique_ptr<ltx2::Ltx2LatentUpsampler> upsampler;
  at::Device device = at::kCPU;  // the upsampler's
};

Ltx2UpsampleStage::Ltx2UpsampleStage(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Ltx2UpsampleStage::~Ltx2UpsampleStage() = default;

absl::StatusOr<std::unique_ptr<Ltx2UpsampleStage>> Ltx2UpsampleStage::Create(
    const std::string& model, const std::string& model_dir, bool cuda) {
  ASSIGN_OR_RETURN(ltx2::Ltx2Spec spec, ltx2::ResolveSpec(model, model_dir));
  auto impl = std::make_unique<Impl>();
  impl->name = spec.name;
  const at::Device device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  ASSIGN_OR_RETURN(impl->upsampler,
                   ltx2::BuildLatentUpsampler(
                       spec, ltx2::ServingDtype(ltx2::Ltx2Component::kLatentUpsampler, device),
                       device));
  impl->device = device;
  return std::unique_ptr<Ltx2UpsampleStage>(new Ltx2UpsampleStage(std::move(impl)));
}

namespace {

absl::Status EmitLatents(int index, const char* name, const at::Tensor& t,
                         const std::function<void(const v1::DenoiseEvent&)>& on_event) {
  ASSIGN_OR_RETURN(v1::Tensor wire, ToWire(t.to(at::kFloat).cpu().contiguous()));
  ForEachOutputChunk(TensorOutputInfo(index, name, wire), wire.data(), [&](v1::OutputChunk&& chunk) {
    v1::DenoiseEvent e;
    *e.mutable_output() = std::move(chunk);
    on_event(e);
  });
  return absl::OkStatus();
}

}  // namespace

absl::Status Ltx2UpsampleStage::Run(
    CallContext& ctx, const v1::DenoiseRequest& r,
    const std::function<void(const v1::DenoiseEvent&)>& on_event) const {
  const absl::Time t0 = absl::Now();
  if (r.model() != impl_->name) {
    return absl::NotFoundError(absl::StrCat("model: this upsample stage serves '", impl_->name,
                                            "', not '", r.model(), "'"));
  }
  const v1::UpsampleOptions& o = r.upsample();
  if (!std::isfinite(o.adain_factor()) || o.adain_factor() < 0 || o.adain_factor() > 1) {
    return absl::InvalidArgumentError("upsample.adain_factor: must lie in 0..1");
  }
  if (!std::isfinite(o.tone_map_compression_ratio()) || o.tone_map_compression_ratio() < 0 ||
      o.tone_map_compression_ratio() > 1) {
    return absl::InvalidArgumentError("upsample.tone_map_compression_ratio: must lie in 0..1");
  }
  if (!r.has_latents() || !r.latents().has_video_latents()) {
    return absl::InvalidArgumentError("latents.video_latents: the upsample stage needs them");
  }
  ASSIGN_OR_RETURN(at::Tensor video, FromWire(r.latents().video_latents(),
                                              "latents.video_latents", DType::kFloat32, 5));
  const int64_t channels = impl_->upsampler->config().in_channels;
  if (video.size(1) != channels) {
    return absl::InvalidArgumentError(absl::StrCat("latents.video_latents: ", video.size(1),
                                                   " channels, the upsampler takes ", channels));
  }
  RETURN_IF_ERROR(ctx.Check("upsample"));
  ltx2::LatentUpsampleOptions options;
  options.latents_normalized = false;  // the denoise stage's LATENTS are raw
  options.adain_factor = o.adain_factor();
  options.tone_map_compression_ratio = o.tone_map_compression_ratio();
  // Statistics are read only for normalised latents.
  const at::Tensor up = ltx2::UpsampleVideoLatents(*impl_->upsampler, ltx2::VideoLatentStatistics{},
                                                   video.to(impl_->device), options);
  RETURN_IF_ERROR(EmitLatents(0, "video_latents", up, on_event));
  if (r.latents().has_audio_latents()) {
    ASSIGN_OR_RETURN(at::Tensor audio, FromWire(r.latents().audio_latents(),
                                                "latents.audio_latents", DType::kFloat32, 4));
    RETURN_IF_ERROR(EmitLatents(1, "audio_latents", audio, on_event));
  }
  v1::DenoiseEvent done;
  done.mutable_result()->set_denoise_seconds(absl::ToDoubleSeconds(absl::Now() - t0));
  on_event(done);
  return absl::OkStatus();
}

}  // namespace diffmesh
