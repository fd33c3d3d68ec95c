#include "services/denoise/glm_image_decode.h"

#include <ATen/ATen.h>

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/media/image_codec.h"
#include "common/media/media_format.h"
#include "common/output/output_chunks.h"
#include "common/status/status_macros.h"
#include "models/glm_image/vae.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {
namespace {

media::MediaFormat ImageFormatOf(v1::OutputFormat format) {
  switch (format) {
    case v1::OUTPUT_FORMAT_JPEG:
      return media::MediaFormat::kJpeg;
    case v1::OUTPUT_FORMAT_WEBP:
      return media::MediaFormat::kWebp;
    default:
      return media::MediaFormat::kPng;
  }
}

}  // namespace

GlmImageDecoder::GlmImageDecoder(std::string model, const models::glm_image::AutoencoderKl* vae,
                                 int max_image_size)
    : model_(std::move(model)), vae_(vae), max_image_size_(max_image_size) {}

absl::Status GlmImageDecoder::CheckOutput(const v1::OutputOptions& output) {
  switch (output.format()) {
    case v1::OUTPUT_FORMAT_PNG:
    case v1::OUTPUT_FORMAT_JPEG:
    case v1::OUTPUT_FORMAT_WEBP:
    case v1::OUTPUT_FORMAT_RAW:
    case v1::OUTPUT_FORMAT_LATENTS:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("output.format: ", v1::OutputFormat_Name(output.format()),
                       " is not made by this stage (PNG, JPEG, WEBP, RAW, LATENTS)"));
  }
  if (output.has_quality()) {
    const int q = output.quality();
    const bool jpeg = output.format() == v1::OUTPUT_FORMAT_JPEG;
    const bool webp = output.format() == v1::OUTPUT_FORMAT_WEBP;
    if ((!jpeg && !webp) || q < (jpeg ? 1 : 0) || q > 100) {
      return absl::InvalidArgumentError(
          absl::StrCat("output.quality: ", q, " (JPEG 1..100, WEBP 0..100, no other format)"));
    }
  }
  return absl::OkStatus();
}

absl::Status GlmImageDecoder::Run(
    CallContext& ctx, const v1::DenoiseRequest& r,
    const std::function<void(const v1::DenoiseEvent&)>& on_event) const {
  if (r.model() != model_) {
    return absl::NotFoundError(
        absl::StrCat("model: this decode stage serves '", model_, "', not '", r.model(), "'"));
  }
  RETURN_IF_ERROR(CheckOutput(r.output()));
  if (r.output().format() == v1::OUTPUT_FORMAT_LATENTS) {
    return absl::InvalidArgumentError("output.format: a decode stage does not make LATENTS");
  }
  if (!r.latents().has_image_latents()) {
    return absl::InvalidArgumentError("latents.image_latents: a decode stage needs them");
  }
  for (auto [field, v] : {std::pair{"height", r.height()}, std::pair{"width", r.width()}}) {
    if (v < 1 || v > max_image_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", v, " is outside 1..", max_image_size_));
    }
  }
  ASSIGN_OR_RETURN(at::Tensor latents, FromWire(r.latents().image_latents(),
                                                "latents.image_latents", DType::kFloat32, 4));
  const int64_t scale = vae_->config().ScaleFactor();
  const int64_t channels = vae_->config().latent_channels;
  if (latents.size(0) != 1 || latents.size(1) != channels ||
      latents.size(2) * scale != r.height() || latents.size(3) * scale != r.width()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "latents.image_latents: [", latents.size(0), ", ", latents.size(1), ", ", latents.size(2),
        ", ", latents.size(3), "] is not one image of ", channels, " channels that makes ",
        r.width(), "x", r.height()));
  }
  const at::Device device = vae_->weights().begin()->second.device();
  v1::DenoiseEvent done;
  RETURN_IF_ERROR(
      EmitOutputs(ctx, r.output(), latents.to(device), on_event, *done.mutable_result()));
  on_event(done);
  return absl::OkStatus();
}

absl::Status GlmImageDecoder::EmitOutputs(
    CallContext& ctx, const v1::OutputOptions& output, const at::Tensor& latents,
    const std::function<void(const v1::DenoiseEvent&)>& on_event,
    v1::DenoiseEvent::Result& result) const {
  v1::OutputInfo info;
  std::string data;
  const absl::Time start = absl::Now();
  if (output.format() == v1::OUTPUT_FORMAT_LATENTS) {
    ASSIGN_OR_RETURN(v1::Tensor t, ToWire(latents.to(at::kFloat).cpu().contiguous()));
    info = TensorOutputInfo(0, "latents", t);
    data = std::move(*t.mutable_data());
  } else {
    RETURN_IF_ERROR(ctx.Check("vae_decode"));
    at::Tensor image = vae_->DecodeNormalized(latents);
    // [1, H, W, 3]
    at::Tensor pixels = models::glm_image::ImageToUint8Hwc(image).cpu().contiguous();
    info.set_width(static_cast<int>(pixels.size(2)));
    info.set_height(static_cast<int>(pixels.size(1)));
    info.set_frames(1);
    if (output.format() == v1::OUTPUT_FORMAT_RAW) {
      ASSIGN_OR_RETURN(v1::Tensor t, ToWire(pixels));
      info.MergeFrom(TensorOutputInfo(0, "frames", t));  // beside width, height and frames
      data = std::move(*t.mutable_data());
    } else {
      const media::MediaFormat format = ImageFormatOf(output.format());
      info.set_name("image");
      info.set_kind(v1::OUTPUT_KIND_IMAGE);
      info.set_mime_type(std::string(media::MimeType(format)));
      ASSIGN_OR_RETURN(data, media::EncodeImage(
                                 pixels.data_ptr<uint8_t>(), info.width(), info.height(), format,
                                 output.has_quality() ? output.quality() : media::kDefaultQuality));
    }
  }
  ForEachOutputChunk(info, data, [&](v1::OutputChunk&& chunk) {
    v1::DenoiseEvent e;
    *e.mutable_output() = std::move(chunk);
    on_event(e);
  });
  if (output.format() != v1::OUTPUT_FORMAT_LATENTS) {
    result.set_vae_decode_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  }
  return absl::OkStatus();
}

}  // namespace diffmesh
