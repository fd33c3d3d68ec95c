#include "services/denoise/ltx2_decode.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/media/mp4_writer.h"
#include "common/output/output_chunks.h"
#include "common/status/status_macros.h"
#include "models/ltx2/audio_vae.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/video_vae.h"
#include "models/ltx2/vocoder.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {
namespace {

namespace ltx2 = models::ltx2;
using EventFn = std::function<void(const v1::DenoiseEvent&)>;

void Emit(const v1::OutputInfo& info, const std::string& data, const EventFn& on_event) {
  ForEachOutputChunk(info, data, [&](v1::OutputChunk&& chunk) {
    v1::DenoiseEvent e;
    *e.mutable_output() = std::move(chunk);
    on_event(e);
  });
}

}  // namespace

Ltx2Decoder::Ltx2Decoder(std::string model, const ltx2::Ltx2VideoDecoder* video_vae,
                         const ltx2::AudioVaeDecoder* audio_vae, const ltx2::Vocoder* vocoder)
    : model_(std::move(model)), video_vae_(video_vae), audio_vae_(audio_vae), vocoder_(vocoder) {}

absl::Status Ltx2Decoder::CheckDecodeRequest(const v1::DenoiseRequest& r) const {
  if (r.model() != model_) {
    return absl::NotFoundError(
        absl::StrCat("model: this decode stage serves '", model_, "', not '", r.model(), "'"));
  }
  if (r.output().format() != v1::OUTPUT_FORMAT_MP4 && r.output().format() != v1::OUTPUT_FORMAT_RAW) {
    return absl::InvalidArgumentError(
        absl::StrCat("output.format: a decode stage makes MP4 or RAW, not ",
                     v1::OutputFormat_Name(r.output().format())));
  }
  if (r.output().has_quality()) {
    return absl::InvalidArgumentError("output.quality: not taken by video formats");
  }
  if (!std::isfinite(r.frame_rate()) || r.frame_rate() <= 0 || r.frame_rate() > 240) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame_rate: ", r.frame_rate(), " must lie in (0, 240]"));
  }
  for (auto [field, v, bound] : {std::tuple{"height", r.height(), Ltx2StageBounds::kMaxSide},
                                 std::tuple{"width", r.width(), Ltx2StageBounds::kMaxSide},
                                 std::tuple{"num_frames", r.num_frames(),
                                            Ltx2StageBounds::kMaxFrames}}) {
    if (v < 1 || v > bound) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": ", v, " is outside 1..", bound));
    }
  }
  if (!r.latents().has_video_latents() || !r.latents().has_audio_latents()) {
    return absl::InvalidArgumentError(
        "latents: a decode stage needs video_latents and audio_latents");
  }
  return absl::OkStatus();
}

absl::Status Ltx2Decoder::Run(CallContext& ctx, const v1::DenoiseRequest& r,
                              const EventFn& on_event) const {
  RETURN_IF_ERROR(CheckDecodeRequest(r));
  const at::Device device = video_vae_->latents_mean().device();
  ltx2::Ltx2Output out;
  ASSIGN_OR_RETURN(at::Tensor video, FromWire(r.latents().video_latents(),
                                              "latents.video_latents", DType::kFloat32, 5));
  ASSIGN_OR_RETURN(at::Tensor audio, FromWire(r.latents().audio_latents(),
                                              "latents.audio_latents", DType::kFloat32, 4));
  const ltx2::VideoVaeConfig& vc = video_vae_->config();
  const int64_t spatial = vc.spatial_compression_ratio, temporal = vc.temporal_compression_ratio;
  if (video.size(0) != 1 || video.size(1) != vc.latent_channels ||
      video.size(3) * spatial != r.height() || video.size(4) * spatial != r.width() ||
      (video.size(2) - 1) * temporal + 1 != r.num_frames()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "latents.video_latents: [", video.size(0), ", ", video.size(1), ", ", video.size(2), ", ",
        video.size(3), ", ", video.size(4), "] is not one clip of ", vc.latent_channels,
        " channels that makes ", r.num_frames(), " frames of ", r.width(), "x", r.height()));
  }
  if (audio.size(0) != 1 || audio.size(1) != audio_vae_->config().latent_channels ||
      audio.size(2) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("latents.audio_latents: expected [1, ", audio_vae_->config().latent_channels,
                     ", L >= 1, M']"));
  }
  out.video_latents = video.to(device);
  out.audio_latents = audio.to(device);
  v1::DenoiseEvent done;
  RETURN_IF_ERROR(EmitOutputs(ctx, r, out, on_event, *done.mutable_result()));
  on_event(done);
  return absl::OkStatus();
}

absl::Status Ltx2Decoder::EmitOutputs(CallContext& ctx, const v1::DenoiseRequest& r,
                                      ltx2::Ltx2Output& out, const EventFn& on_event,
                                      v1::DenoiseEvent::Result& result) const {
  if (r.output().format() == v1::OUTPUT_FORMAT_LATENTS) {
    int index = 0;
    for (auto [name, t] : {std::pair{"video_latents", out.video_latents},
                           std::pair{"audio_latents", out.audio_latents}}) {
      ASSIGN_OR_RETURN(v1::Tensor wire, ToWire(t.to(at::kFloat).cpu().contiguous()));
      Emit(TensorOutputInfo(index++, name, wire), wire.data(), on_event);
    }
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(ctx.Check("vae_decode"));
  const absl::Time start = absl::Now();
  ltx2::Ltx2Networks networks;
  networks.video_vae = video_vae_;
  networks.audio_vae = audio_vae_;
  networks.vocoder = vocoder_;
  RETURN_IF_ERROR(ltx2::DecodeLatents(networks, ltx2::Ltx2DecodeOptions{}, out));
  if (out.video_decoded_in_tiles) {
    std::cerr << "vae_decode: " << r.request_id()
              << ": out of memory decoding the video whole; decoded it in tiles" << std::endl;
  }
  RETURN_IF_ERROR(EmitMedia(r, out, on_event));
  result.set_vae_decode_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return absl::OkStatus();
}

absl::Status Ltx2Decoder::EmitMedia(const v1::DenoiseRequest& r, const ltx2::Ltx2Output& out,
                                    const EventFn& on_event) const {
  const at::Tensor frames = out.frames_uint8[0].cpu().contiguous();  // [F, H, W, 3]
  // float32 [C, samples]; the vocoder's range is about [-1, 1], the AAC input's exactly.
  const at::Tensor audio = out.waveform[0].to(at::kFloat).clamp(-1.0, 1.0).cpu().contiguous();
  const int num_frames = static_cast<int>(frames.size(0));
  const int height = static_cast<int>(frames.size(1)), width = static_cast<int>(frames.size(2));
  const int channels = static_cast<int>(audio.size(0));
  auto media_info = [&](v1::OutputInfo& info) {
    info.set_width(width);
    info.set_height(height);
    info.set_frames(num_frames);
    info.set_frame_rate(r.frame_rate());
    info.set_audio_sample_rate(static_cast<int>(out.sample_rate));
    info.set_audio_channels(channels);
  };
  if (r.output().format() == v1::OUTPUT_FORMAT_RAW) {
    ASSIGN_OR_RETURN(v1::Tensor wire_frames, ToWire(frames));
    v1::OutputInfo frames_info = TensorOutputInfo(0, "frames", wire_frames);
    media_info(frames_info);
    Emit(frames_info, wire_frames.data(), on_event);
    ASSIGN_OR_RETURN(v1::Tensor wire_audio, ToWire(audio));
    v1::OutputInfo audio_info = TensorOutputInfo(1, "audio", wire_audio);
    media_info(audio_info);
    Emit(audio_info, wire_audio.data(), on_event);
    return absl::OkStatus();
  }
  // The soundtrack is fitted to the clip: cut, or padded with silence, to num_frames /
  // frame_rate seconds. A released model's vocoder makes about that much (its upsampling equals
  // the mel hop); the built-in tiny one makes 4 samples per mel frame against a hop of 160, so
  // its waveform is far shorter than the video. RAW keeps the vocoder's waveform as it is.
  const int64_t track_samples =
      std::llround(num_frames / r.frame_rate() * static_cast<double>(out.sample_rate));
  at::Tensor track = at::zeros({channels, track_samples}, at::kFloat);
  const int64_t copied = std::min<int64_t>(track_samples, audio.size(1));
  track.narrow(1, 0, copied).copy_(audio.narrow(1, 0, copied));
  media::Mp4Options mp4;
  mp4.width = width;
  mp4.height = height;
  mp4.fps = media::FrameRateFromDouble(r.frame_rate());
  mp4.audio_sample_rate = static_cast<int>(out.sample_rate);
  mp4.audio_channels = channels;
  ASSIGN_OR_RETURN(std::string data, media::EncodeMp4(frames.data_ptr<uint8_t>(), num_frames, mp4,
                                                      track.data_ptr<float>(), track_samples));
  v1::OutputInfo info;
  info.set_name("video");
  info.set_kind(v1::OUTPUT_KIND_VIDEO);
  info.set_mime_type("video/mp4");
  media_info(info);
  Emit(info, data, on_event);
  return absl::OkStatus();
}

}  // namespace diffmesh
