#include "services/denoise/ltx2_denoise.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/media/mp4_writer.h"
#include "common/output/output_chunks.h"
#include "common/status/status_macros.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/snapshot.h"
#include "models/ltx2/snapshot_pipeline.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {
namespace {

namespace ltx2 = models::ltx2;

// A bound on the work one request may ask (the orchestrator applies the model's own limits).
constexpr int kMaxSteps = 1000;
constexpr int kMaxSide = 4096;
constexpr int kMaxFrames = 1024;

absl::StatusOr<ltx2::StreamGuidance> StreamOf(const v1::StreamGuidance& g, const char* field) {
  ltx2::StreamGuidance s;
  if (g.has_cfg_scale()) s.cfg = g.cfg_scale();
  if (g.has_stg_scale()) s.stg = g.stg_scale();
  if (g.has_modality_scale()) s.modality = g.modality_scale();
  if (g.has_rescale()) s.rescale = g.rescale();
  for (double v : {s.cfg, s.stg, s.modality, s.rescale}) {
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": values must be finite"));
    }
  }
  if (s.cfg < 0) return absl::InvalidArgumentError(absl::StrCat(field, ".cfg_scale: must be >= 0"));
  if (s.rescale < 0 || s.rescale > 1) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".rescale: must lie in 0..1"));
  }
  return s;
}

void SetTensorInfo(int index, const char* name, const v1::Tensor& t, v1::OutputInfo& info) {
  info.set_index(index);
  info.set_name(name);
  info.set_kind(v1::OUTPUT_KIND_TENSOR);
  info.set_mime_type("application/octet-stream");
  info.set_tensor_dtype(t.dtype());
  *info.mutable_tensor_shape() = t.shape();
}

class Ltx2DenoiseEngine final : public DenoiseEngine {
 public:
  Ltx2DenoiseEngine(ltx2::Ltx2Spec spec, ltx2::Ltx2Models models, int64_t video_text_dim,
                    int64_t audio_text_dim)
      : spec_(std::move(spec)),
        models_(std::move(models)),
        video_text_dim_(video_text_dim),
        audio_text_dim_(audio_text_dim) {
    const auto& tc = models_.transformer->config();
    const auto& vc = models_.video_vae->config();
    spatial_ = vc.spatial_compression_ratio * tc.patch_size;
    temporal_ = vc.temporal_compression_ratio * tc.patch_size_t;
  }

  int rank() const override { return 0; }

  absl::Status RunWorker() override {
    return absl::FailedPreconditionError("ltx2 denoise runs on one rank: there are no workers");
  }

  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& r,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    RETURN_IF_ERROR(CheckRequest(r));
    std::lock_guard<std::mutex> lock(mu_);  // one request at a time: the model fills the cores
    return Execute(ctx, r, on_event);
  }

  // The request first, then the encoder's output (no AR stage feeds this model).
  absl::Status DenoiseStreamed(
      CallContext& ctx, InputQueue<v1::DenoiseInput>& inputs,
      const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    ScopedCancelHook wake(ctx,
                          [&inputs] { inputs.Close(absl::CancelledError("denoise: cancelled")); });
    v1::DenoiseRequest r;
    bool have_request = false, have_embeddings = false;
    while (!have_embeddings) {
      RETURN_IF_ERROR(ctx.Check("denoise"));
      auto next = inputs.Next(absl::Seconds(1));
      if (absl::IsOutOfRange(next.status())) {
        return absl::InvalidArgumentError(
            absl::StrCat("DenoiseStream: the inputs ended before the ",
                         have_request ? "embeddings" : "request"));
      }
      RETURN_IF_ERROR(next.status());
      if (!next->has_value()) continue;
      v1::DenoiseInput& in = **next;
      if (!have_request) {
        if (!in.has_request()) {
          return absl::InvalidArgumentError("DenoiseStream: the first input must be the request");
        }
        r = std::move(*in.mutable_request());
        RETURN_IF_ERROR(CheckRequest(r));
        have_request = true;
      } else if (in.has_embeddings()) {
        *r.mutable_prompt_embeds() = in.embeddings().prompt_embeds();
        *r.mutable_negative_prompt_embeds() = in.embeddings().negative_prompt_embeds();
        have_embeddings = true;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "DenoiseStream: ", spec_.name, " takes the request and the embeddings only"));
      }
    }
    return Denoise(ctx, r, on_event);
  }

 private:
  absl::StatusOr<ltx2::GuidanceOptions> GuidanceOf(const v1::DenoiseRequest& r) const {
    const v1::Guidance& g = r.guidance();
    ltx2::GuidanceOptions o;
    ASSIGN_OR_RETURN(o.video, StreamOf(g.main(), "guidance.main"));
    ASSIGN_OR_RETURN(o.audio, StreamOf(g.audio(), "guidance.audio"));
    const int64_t layers = models_.transformer->config().num_layers;
    for (int64_t b : g.stg_blocks().blocks()) {
      if (b < 0 || b >= layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("guidance.stg_blocks: no block ", b, " (the model has ", layers, ")"));
      }
      o.stg_blocks.push_back(b);
    }
    if (g.skip_step() < 0) return absl::InvalidArgumentError("guidance.skip_step: must be >= 0");
    o.skip_step = g.skip_step();
    return o;
  }

  // The scalar fields, before any tensor.
  absl::Status CheckRequest(const v1::DenoiseRequest& r) const {
    if (r.model() != spec_.name) {
      return absl::NotFoundError(absl::StrCat("model: this denoise stage serves '", spec_.name,
                                              "', not '", r.model(), "'"));
    }
    for (auto [field, v] : {std::pair{"height", r.height()}, std::pair{"width", r.width()}}) {
      if (v < spatial_ || v > kMaxSide || v % spatial_ != 0) {
        const int64_t nearest =
            std::max<int64_t>(spatial_, (v + spatial_ / 2) / spatial_ * spatial_);
        return absl::InvalidArgumentError(absl::StrCat(field, ": ", v, " must be a multiple of ",
                                                       spatial_, " in ", spatial_, "..", kMaxSide,
                                                       "; nearest: ", nearest));
      }
    }
    const int f = r.num_frames();
    if (f < 1 || f > kMaxFrames || (f - 1) % temporal_ != 0) {
      const int64_t k = std::max<int64_t>(0, (f - 1 + temporal_ / 2) / temporal_);
      return absl::InvalidArgumentError(absl::StrCat("num_frames: ", f, " must be ", temporal_,
                                                     "k+1 in 1..", kMaxFrames,
                                                     "; nearest: ", k * temporal_ + 1));
    }
    if (!std::isfinite(r.frame_rate()) || r.frame_rate() <= 0 || r.frame_rate() > 240) {
      return absl::InvalidArgumentError(
          absl::StrCat("frame_rate: ", r.frame_rate(), " must lie in (0, 240]"));
    }
    if (r.steps() < 1 || r.steps() > kMaxSteps) {
      return absl::InvalidArgumentError(
          absl::StrCat("steps: ", r.steps(), " is outside 1..", kMaxSteps));
    }
    if (r.inputs_size() > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inputs: ", spec_.name, " takes no input media yet (image-to-video is not served)"));
    }
    RETURN_IF_ERROR(GuidanceOf(r).status());
    switch (r.output().format()) {
      case v1::OUTPUT_FORMAT_MP4:
      case v1::OUTPUT_FORMAT_RAW:
      case v1::OUTPUT_FORMAT_LATENTS:
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("output.format: ", v1::OutputFormat_Name(r.output().format()),
                         " is not made by ", spec_.name, " (MP4, RAW, LATENTS)"));
    }
    if (r.output().has_quality()) {
      return absl::InvalidArgumentError("output.quality: not taken by video formats");
    }
    return absl::OkStatus();
  }

  // prompt_embeds-like field → (video, audio) embeddings [1, T, width] each.
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> SplitEmbeddings(const v1::Tensor& wire,
                                                                    const char* field) const {
    ASSIGN_OR_RETURN(at::Tensor t, FromWire(wire, field, DType::kFloat32, 3));
    if (t.size(0) != 1 || t.size(1) < 1 || t.size(2) != video_text_dim_ + audio_text_dim_) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": expected [1, T >= 1, ", video_text_dim_ + audio_text_dim_, "]"));
    }
    return std::pair{t.narrow(2, 0, video_text_dim_).contiguous(),
                     t.narrow(2, video_text_dim_, audio_text_dim_).contiguous()};
  }

  absl::Status Execute(CallContext& ctx, const v1::DenoiseRequest& r,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    const absl::Time t0 = absl::Now();
    ASSIGN_OR_RETURN(ltx2::GuidanceOptions guidance, GuidanceOf(r));
    ASSIGN_OR_RETURN(auto pipeline, ltx2::Ltx2Pipeline::Create(models_.networks(), guidance));
    // The encoder sends the connectors' output of the valid tokens only, so every key is live.
    ltx2::Ltx2TextEmbeddings text;
    ASSIGN_OR_RETURN(auto positive, SplitEmbeddings(r.prompt_embeds(), "prompt_embeds"));
    ASSIGN_OR_RETURN(auto negative,
                     SplitEmbeddings(r.negative_prompt_embeds(), "negative_prompt_embeds"));
    text.video = positive.first;
    text.audio = positive.second;
    text.mask = at::ones({1, text.video.size(1)}, at::kLong);
    text.negative_video = negative.first;
    text.negative_audio = negative.second;
    text.negative_mask = at::ones({1, text.negative_video.size(1)}, at::kLong);
    const at::ScalarType dtype = models_.transformer->dtype();
    for (at::Tensor* t : {&text.video, &text.audio, &text.negative_video, &text.negative_audio}) {
      *t = t->to(dtype);
    }

    ltx2::Ltx2LatentInit init;
    init.num_frames = r.num_frames();
    init.height = r.height();
    init.width = r.width();
    init.frame_rate = r.frame_rate();
    init.seed = r.seed();
    init.num_inference_steps = r.steps();
    ASSIGN_OR_RETURN(ltx2::Ltx2DenoiseState state, pipeline->PrepareLatents(init));
    while (!state.done()) {
      RETURN_IF_ERROR(ctx.Check("denoise"));
      ASSIGN_OR_RETURN(auto predictions, pipeline->RunLiveBranches(state, text));
      RETURN_IF_ERROR(pipeline->Step(state, predictions));
      v1::DenoiseEvent e;
      e.mutable_progress()->set_unit("step");
      e.mutable_progress()->set_done(state.step);
      e.mutable_progress()->set_total(state.num_steps());
      on_event(e);
    }
    v1::DenoiseEvent done;
    auto* result = done.mutable_result();
    result->set_denoise_seconds(absl::ToDoubleSeconds(absl::Now() - t0));
    const absl::Time t1 = absl::Now();
    const bool decode = r.output().format() != v1::OUTPUT_FORMAT_LATENTS;
    if (decode) RETURN_IF_ERROR(ctx.Check("vae_decode"));
    ltx2::Ltx2DecodeOptions decode_options;
    decode_options.decode_video = decode;
    decode_options.decode_audio = decode;
    decode_options.noise_seed = r.seed();
    ASSIGN_OR_RETURN(ltx2::Ltx2Output out, pipeline->Decode(state, decode_options));
    RETURN_IF_ERROR(EmitOutputs(r, out, on_event));
    if (decode) result->set_vae_decode_seconds(absl::ToDoubleSeconds(absl::Now() - t1));
    on_event(done);
    return absl::OkStatus();
  }

  static void Emit(const v1::OutputInfo& info, const std::string& data,
                   const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    ForEachOutputChunk(info, data, [&](v1::OutputChunk&& chunk) {
      v1::DenoiseEvent e;
      *e.mutable_output() = std::move(chunk);
      on_event(e);
    });
  }

  absl::Status EmitOutputs(const v1::DenoiseRequest& r, const ltx2::Ltx2Output& out,
                           const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    if (r.output().format() == v1::OUTPUT_FORMAT_LATENTS) {
      int index = 0;
      for (auto [name, t] : {std::pair{"video_latents", out.video_latents},
                             std::pair{"audio_latents", out.audio_latents}}) {
        ASSIGN_OR_RETURN(v1::Tensor wire, ToWire(t.to(at::kFloat).cpu().contiguous()));
        v1::OutputInfo info;
        SetTensorInfo(index++, name, wire, info);
        Emit(info, wire.data(), on_event);
      }
      return absl::OkStatus();
    }
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
      v1::OutputInfo frames_info;
      SetTensorInfo(0, "frames", wire_frames, frames_info);
      media_info(frames_info);
      Emit(frames_info, wire_frames.data(), on_event);
      ASSIGN_OR_RETURN(v1::Tensor wire_audio, ToWire(audio));
      v1::OutputInfo audio_info;
      SetTensorInfo(1, "audio", wire_audio, audio_info);
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

  const ltx2::Ltx2Spec spec_;
  const ltx2::Ltx2Models models_;
  const int64_t video_text_dim_, audio_text_dim_;
  int64_t spatial_ = 0, temporal_ = 0;  // pixels and frames per latent token
  std::mutex mu_;
};

}  // namespace

bool IsLtx2DenoiseModel(const std::string& model, const std::string& model_dir) {
  // By model_index.json's class alone: a broken LTX-2 snapshot then fails in its own loader,
  // naming the tensor and file, not in another family's.
  if (!model_dir.empty()) return models::ltx2::IsLtx2Snapshot(model_dir);
  for (const std::string& name : models::ltx2::BuiltinModelNames()) {
    if (name == model) return true;
  }
  return false;
}

absl::StatusOr<std::unique_ptr<DenoiseEngine>> CreateLtx2DenoiseEngine(
    const DenoiseCore::Options& options) {
  if (options.parallel.world() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel: LTX-2 is served on one rank for now (cfg, ulysses, ring and tp degrees 1); "
        "this group has ",
        options.parallel.world(), " ranks"));
  }
  if (options.cuda) {
    return absl::InvalidArgumentError("device: LTX-2 is served on the CPU for now");
  }
  ASSIGN_OR_RETURN(ltx2::Ltx2Spec spec, ltx2::ResolveSpec(options.model, options.model_dir));
  ASSIGN_OR_RETURN(auto connectors, ltx2::ConnectorsConfig::FromJson(spec.connectors));
  // The denoise stage runs everything but the text encoder and the connectors (encoder stage).
  ltx2::Ltx2Models models;
  ASSIGN_OR_RETURN(models.transformer, ltx2::BuildTransformer(spec));
  ASSIGN_OR_RETURN(models.video_vae, ltx2::BuildVideoDecoder(spec));
  ASSIGN_OR_RETURN(models.audio_vae, ltx2::BuildAudioDecoder(spec));
  ASSIGN_OR_RETURN(models.vocoder, ltx2::BuildVocoder(spec));
  ASSIGN_OR_RETURN(models.scheduler, ltx2::BuildSchedulerConfig(spec));
  return std::unique_ptr<DenoiseEngine>(new Ltx2DenoiseEngine(std::move(spec), std::move(models),
                                                              connectors.video.inner_dim(),
                                                              connectors.audio.inner_dim()));
}

}  // namespace diffmesh
