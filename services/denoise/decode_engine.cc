#include "services/denoise/decode_engine.h"

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/glm_image/glm_image_spec.h"
#include "models/glm_image/vae.h"
#include "models/ltx2/audio_vae.h"
#include "models/core/ops.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/video_vae.h"
#include "models/ltx2/vocoder.h"
#include "services/denoise/glm_image_decode.h"
#include "services/denoise/ltx2_decode.h"
#include "services/denoise/ltx2_denoise.h"
#include "services/denoise/ltx2_upsample.h"

namespace diffmesh {
namespace {

using EventFn = std::function<void(const v1::DenoiseEvent&)>;

absl::Status NotServedHere(const std::string& model) {
  return absl::FailedPreconditionError(absl::StrCat(
      "this service decodes '", model, "' only (--role decode: the \"decode\" and \"upsample\" "
      "stage kinds); denoising runs on the denoise group's service"));
}

// The networks one family's decoding needs, owned, and the stage calls they answer.
class DecodeEngine final : public DenoiseEngine {
 public:
  using RunFn = std::function<absl::Status(CallContext&, const v1::DenoiseRequest&,
                                           const EventFn&)>;
  DecodeEngine(std::string model, std::string family, RunFn decode, RunFn upsample,
               std::shared_ptr<void> owned)
      : model_(std::move(model)),
        family_(std::move(family)),
        decode_(std::move(decode)),
        upsample_(std::move(upsample)),
        owned_(std::move(owned)) {}

  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& r,
                       const EventFn& on_event) override {
    if (r.has_decode()) return decode_(ctx, r, on_event);
    if (r.has_upsample()) {
      if (!upsample_) {
        return absl::FailedPreconditionError(
            absl::StrCat("upsample: model '", model_, "' has no latent upsampler"));
      }
      return upsample_(ctx, r, on_event);
    }
    return NotServedHere(model_);
  }
  absl::Status DenoiseStreamed(CallContext&, InputQueue<v1::DenoiseInput>&,
                               const EventFn&) override {
    return NotServedHere(model_);
  }
  absl::Status RunWorker() override {
    return absl::FailedPreconditionError("a decode service has no group to work in");
  }
  int rank() const override { return 0; }
  v1::StageDescription Describe() const override {
    v1::StageDescription d;
    d.add_kinds("decode");
    if (upsample_) d.add_kinds("upsample");
    v1::ServedModel* m = d.add_models();
    m->set_name(model_);
    m->set_family(family_);
    return d;
  }

 private:
  const std::string model_;
  const std::string family_;
  const RunFn decode_;
  const RunFn upsample_;
  const std::shared_ptr<void> owned_;  // the networks decode_ and upsample_ use
};

struct Ltx2Decoders {
  std::unique_ptr<models::ltx2::Ltx2VideoDecoder> video_vae;
  std::unique_ptr<models::ltx2::AudioVaeDecoder> audio_vae;
  std::unique_ptr<models::ltx2::Vocoder> vocoder;
  std::unique_ptr<Ltx2Decoder> decoder;
  std::unique_ptr<Ltx2UpsampleStage> upsample;
};

absl::StatusOr<std::unique_ptr<DenoiseEngine>> CreateLtx2(const DenoiseCore::Options& options,
                                                          at::Device device) {
  namespace ltx2 = models::ltx2;
  ASSIGN_OR_RETURN(ltx2::Ltx2Spec spec, ltx2::ResolveSpec(options.model, options.model_dir));
  auto d = std::make_shared<Ltx2Decoders>();
  using ltx2::Ltx2Component;
  if (device.is_cuda()) models::UseTensorCoresForFloat32();
  ASSIGN_OR_RETURN(d->video_vae,
                   ltx2::BuildVideoDecoder(spec, ltx2::ServingDtype(Ltx2Component::kVae, device),
                                           device));
  ASSIGN_OR_RETURN(d->audio_vae,
                   ltx2::BuildAudioDecoder(
                       spec, ltx2::ServingDtype(Ltx2Component::kAudioVae, device), device));
  ASSIGN_OR_RETURN(d->vocoder,
                   ltx2::BuildVocoder(spec, ltx2::ServingDtype(Ltx2Component::kVocoder, device),
                                      device));
  d->decoder = std::make_unique<Ltx2Decoder>(spec.name, d->video_vae.get(), d->audio_vae.get(),
                                             d->vocoder.get());
  if (!spec.latent_upsampler.is_null()) {
    ASSIGN_OR_RETURN(d->upsample, Ltx2UpsampleStage::Create(options.model, options.model_dir,
                                                            device.is_cuda()));
  }
  Ltx2Decoders* raw = d.get();
  DecodeEngine::RunFn upsample;
  if (raw->upsample != nullptr) {
    upsample = [raw](CallContext& ctx, const v1::DenoiseRequest& r, const EventFn& on_event) {
      return raw->upsample->Run(ctx, r, on_event);
    };
  }
  return std::make_unique<DecodeEngine>(
      spec.name, "ltx2",
      [raw](CallContext& ctx, const v1::DenoiseRequest& r, const EventFn& on_event) {
        return raw->decoder->Run(ctx, r, on_event);
      },
      std::move(upsample), std::move(d));
}

struct GlmImageDecoders {
  std::unique_ptr<models::glm_image::AutoencoderKl> vae;
  std::unique_ptr<GlmImageDecoder> decoder;
};

absl::StatusOr<std::unique_ptr<DenoiseEngine>> CreateGlmImage(const DenoiseCore::Options& options,
                                                              at::Device device) {
  namespace glm = models::glm_image;
  ASSIGN_OR_RETURN(glm::GlmImageSpec spec, glm::ResolveSpec(options.model, options.model_dir));
  const int max_image_size = options.max_image_size > 0 ? options.max_image_size
                                                        : spec.max_image_size;
  auto d = std::make_shared<GlmImageDecoders>();
  ASSIGN_OR_RETURN(d->vae, glm::BuildVaeDecoder(spec, at::kFloat, device));
  d->decoder = std::make_unique<GlmImageDecoder>(spec.name, d->vae.get(), max_image_size);
  GlmImageDecoders* raw = d.get();
  return std::make_unique<DecodeEngine>(
      spec.name, "glm_image",
      [raw](CallContext& ctx, const v1::DenoiseRequest& r, const EventFn& on_event) {
        return raw->decoder->Run(ctx, r, on_event);
      },
      DecodeEngine::RunFn(), std::move(d));
}

}  // namespace

absl::StatusOr<std::unique_ptr<DenoiseEngine>> CreateDecodeEngine(
    const DenoiseCore::Options& options) {
  if (options.parallel.world() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel: a decode service runs on one device without a group; this one asks ",
        options.parallel.ToString()));
  }
  const at::Device device = options.cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  if (IsLtx2DenoiseModel(options.model, options.model_dir)) return CreateLtx2(options, device);
  return CreateGlmImage(options, device);
}

}  // namespace diffmesh
