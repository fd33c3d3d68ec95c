#include "services/denoise/ltx2_denoise.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/media/image_codec.h"
#include "common/status/status_macros.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/lora.h"
#include "models/core/ops.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/snapshot.h"
#include "models/ltx2/snapshot_pipeline.h"
#include "models/ltx2/video_vae_encoder.h"
#include "services/denoise/cfg_policy.h"
#include "services/denoise/denoise_group.h"
#include "services/denoise/ltx2_decode.h"
#include "services/denoise/ltx2_upsample.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {
namespace {

namespace ltx2 = models::ltx2;

constexpr int kMaxSteps = Ltx2StageBounds::kMaxSteps;
constexpr int kMaxSide = Ltx2StageBounds::kMaxSide;
constexpr int kMaxFrames = Ltx2StageBounds::kMaxFrames;

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

class Ltx2DenoiseEngine final : public DenoiseEngine {
 public:
  Ltx2DenoiseEngine(DenoiseCore::Options options, ltx2::Ltx2Spec spec,
                    std::unique_ptr<DenoiseGroup> group, ltx2::Ltx2Models models,
                    int64_t video_text_dim, int64_t audio_text_dim,
                    std::unique_ptr<Ltx2UpsampleStage> upsample,
                    std::map<std::string, std::unique_ptr<ltx2::Ltx2Lora>> loras)
      : options_(std::move(options)),
        spec_(std::move(spec)),
        group_(std::move(group)),
        models_(std::move(models)),
        video_text_dim_(video_text_dim),
        audio_text_dim_(audio_text_dim),
        upsample_(std::move(upsample)),
        loras_(std::move(loras)),
        decoder_(spec_.name, models_.video_vae.get(), models_.audio_vae.get(),
                 models_.vocoder.get()) {
    const auto& tc = models_.transformer->config();
    const auto& vc = models_.video_vae->config();
    spatial_ = vc.spatial_compression_ratio * tc.patch_size;
    temporal_ = vc.temporal_compression_ratio * tc.patch_size_t;
  }

  int rank() const override { return group_->layout().rank(); }

  v1::StageDescription Describe() const override {
    v1::StageDescription d;
    d.add_kinds("denoise");
    d.add_kinds("decode");
    if (upsample_ != nullptr) d.add_kinds("upsample");
    v1::ServedModel* m = d.add_models();
    m->set_name(spec_.name);
    m->set_family("ltx2");
    const int width = static_cast<int>(video_text_dim_ + audio_text_dim_);
    (*m->mutable_embedding_widths())["prompt_embeds"] = width;
    (*m->mutable_embedding_widths())["negative_prompt_embeds"] = width;
    m->set_size_granularity(static_cast<int>(spatial_));
    m->set_max_steps(kMaxSteps);
    return d;
  }

  // Rank 0: checks the request (a bad one never reaches the other ranks), broadcasts it whole
  // (the text embeddings reach every rank once) and runs it with the group, which it holds
  // meanwhile: one request at a time, the model fills the ranks.
  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& r,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    if (!group_->is_main()) return absl::FailedPreconditionError("only rank 0 takes requests");
    // An "upsample" stage call: rank 0 alone, the group stays idle.
    if (Ltx2UpsampleStage::IsUpsampleRequest(r)) {
      if (upsample_ == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat("upsample: model '", spec_.name, "' has no latent upsampler"));
      }
      return upsample_->Run(ctx, r, on_event);
    }
    // A "decode" stage call: rank 0 alone, the group free for the next request.
    if (r.has_decode()) return decoder_.Run(ctx, r, on_event);
    RETURN_IF_ERROR(CheckRequest(r));
    ASSIGN_OR_RETURN(ltx2::Ltx2TextEmbeddings text, TextOf(r));
    std::string bytes;
    r.SerializeToString(&bytes);
    // The request's deadline bounds the group's collective waits too (DenoiseGroup::Send).
    const absl::Time asked = absl::Now();  // the group runs one request at a time
    RETURN_IF_ERROR(group_->Send(DenoiseGroup::Command::kRun, bytes, ctx));
    absl::Status s = Execute(&ctx, r, text, WithQueueTime(on_event, absl::Now() - asked));
    group_->Release();
    return s;
  }

  // Ranks > 0: every request rank 0 broadcasts, until it stops the group.
  absl::Status RunWorker() override {
    if (group_->is_main()) return absl::FailedPreconditionError("rank 0 does not run as a worker");
    while (true) {
      ASSIGN_OR_RETURN(auto command, group_->Receive());
      if (command.first == DenoiseGroup::Command::kStop) return absl::OkStatus();
      if (command.first != DenoiseGroup::Command::kRun) {
        return absl::DataLossError(absl::StrCat("denoise group: ", spec_.name,
                                                " takes whole requests only, got command ",
                                                static_cast<int>(command.first)));
      }
      v1::DenoiseRequest r;
      if (!r.ParseFromString(command.second)) return absl::DataLossError("bad request from rank 0");
      // Rank 0 checked it: these cannot fail differently here.
      RETURN_IF_ERROR(CheckRequest(r));
      ASSIGN_OR_RETURN(ltx2::Ltx2TextEmbeddings text, TextOf(r));
      RETURN_IF_ERROR(Execute(nullptr, r, text, nullptr));
    }
  }

  // The request first, then the encoder's output (no AR stage feeds this model). Rank 0
  // gathers both before it takes the group, then runs them as a whole request (Denoise): the
  // other ranks keep answering the keepalive meanwhile.
  absl::Status DenoiseStreamed(
      CallContext& ctx, InputQueue<v1::DenoiseInput>& inputs,
      const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    if (!group_->is_main()) return absl::FailedPreconditionError("only rank 0 takes requests");
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
    // Ulysses × ring shard the video by whole latent frames (models/ltx2/transformer.h): their
    // count (f − 1)/temporal + 1 must divide by the sequence-parallel degree.
    const int sp = options_.parallel.sp();
    if (const int64_t latent = (f - 1) / temporal_ + 1; latent % sp != 0) {
      // The nearest multiple of the degree (the smaller on a tie) that fits kMaxFrames.
      const int64_t max_latent = (kMaxFrames - 1) / temporal_ + 1;
      int64_t down = latent / sp * sp, up = down + sp;
      if (up > max_latent) up = down;
      if (down < sp) down = up;
      const int64_t best = latent - down <= up - latent ? down : up;
      return absl::InvalidArgumentError(absl::StrCat(
          "num_frames: ", f, " makes ", latent, " latent frames, which do not divide by the "
          "sequence-parallel degree ", sp, " (ulysses ", options_.parallel.ulysses, " × ring ",
          options_.parallel.ring, ") of this denoise group (the video is sharded by whole "
          "latent frames); nearest: ", (best - 1) * temporal_ + 1));
    }
    if (!std::isfinite(r.frame_rate()) || r.frame_rate() <= 0 || r.frame_rate() > 240) {
      return absl::InvalidArgumentError(
          absl::StrCat("frame_rate: ", r.frame_rate(), " must lie in (0, 240]"));
    }
    if (r.steps() < 1 || r.steps() > kMaxSteps) {
      return absl::InvalidArgumentError(
          absl::StrCat("steps: ", r.steps(), " is outside 1..", kMaxSteps));
    }
    RETURN_IF_ERROR(CheckInputs(r));
    RETURN_IF_ERROR(GuidanceOf(r).status());
    // Stage-graph fields (a later stage of a multi-stage pipeline).
    RETURN_IF_ERROR(LoraOf(r).status());
    if (!std::isfinite(r.noise_scale()) || r.noise_scale() < 0 || r.noise_scale() > 1) {
      return absl::InvalidArgumentError("noise_scale: must lie in 0..1");
    }
    if (r.sigmas_size() > 0 && r.sigmas_size() != r.steps()) {
      return absl::InvalidArgumentError(absl::StrCat("sigmas: ", r.sigmas_size(),
                                                     " values for ", r.steps(), " steps"));
    }
    for (double sigma : r.sigmas()) {
      if (!std::isfinite(sigma) || sigma <= 0 || sigma > 1) {
        return absl::InvalidArgumentError("sigmas: each must lie in (0, 1]");
      }
    }
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

  // Image-to-video: at most one input, of role MEDIA_ROLE_FIRST_FRAME, an image that decodes
  // (checked on rank 0 before the request is broadcast, so that no rank fails it later).
  absl::Status CheckInputs(const v1::DenoiseRequest& r) const {
    for (int i = 0; i < r.inputs_size(); ++i) {
      const std::string field = absl::StrCat("inputs[", i, "]");
      const v1::InputMedia& in = r.inputs(i);
      if (in.role() != v1::MEDIA_ROLE_FIRST_FRAME) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".role: ", v1::MediaRole_Name(in.role()), " is not taken by ", spec_.name,
            " (it takes one MEDIA_ROLE_FIRST_FRAME image: image-to-video)"));
      }
      if (i > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": ", spec_.name, " takes one first-frame image, not ",
                         r.inputs_size()));
      }
      if (models_.video_encoder == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            field, ": ", spec_.name, "'s snapshot has no video VAE encoder (vae/ holds the "
            "decoder only), so it cannot take a first frame"));
      }
      if (auto image = media::DecodeImage(in.data()); !image.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".data: ", image.status().message()));
      }
    }
    return absl::OkStatus();
  }

  // The first-frame latent of an image-to-video request (undefined for text-to-video): the
  // image decoded and encoded by the video VAE encoder for the request's size
  // (EncodeConditioningImage). Every rank computes it from the broadcast request's bytes: the
  // same ops on the same input give the same latent on every rank (fp32 CPU; on CUDA the same
  // deterministic kernels on GPUs of one kind), so it needs no collective of its own.
  absl::StatusOr<at::Tensor> FirstFrameLatent(const v1::DenoiseRequest& r) const {
    if (r.inputs_size() == 0) return at::Tensor();
    ASSIGN_OR_RETURN(media::Rgb8Image rgb, media::DecodeImage(r.inputs(0).data()));
    const at::Tensor image =
        at::from_blob(rgb.pixels.data(), {rgb.height, rgb.width, 3}, at::kByte);
    return ltx2::EncodeConditioningImage(*models_.video_encoder, image, r.height(), r.width());
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

  // The request's text embeddings in the transformer's dtype. The encoder sends the connectors'
  // output of the valid tokens only, so every key is live.
  // The negative prompt's may be absent (the encoder leaves them out when the guidance runs no
  // negative branch); a guidance that needs them without them is INVALID_ARGUMENT.
  absl::StatusOr<ltx2::Ltx2TextEmbeddings> TextOf(const v1::DenoiseRequest& r) const {
    ltx2::Ltx2TextEmbeddings text;
    ASSIGN_OR_RETURN(auto positive, SplitEmbeddings(r.prompt_embeds(), "prompt_embeds"));
    text.video = positive.first;
    text.audio = positive.second;
    const at::Device device = group_->device();
    const at::TensorOptions mask = at::TensorOptions().dtype(at::kLong).device(device);
    text.mask = at::ones({1, text.video.size(1)}, mask);
    if (r.negative_prompt_embeds().shape_size() > 0) {
      ASSIGN_OR_RETURN(auto negative,
                       SplitEmbeddings(r.negative_prompt_embeds(), "negative_prompt_embeds"));
      text.negative_video = negative.first;
      text.negative_audio = negative.second;
      text.negative_mask = at::ones({1, text.negative_video.size(1)}, mask);
    } else {
      ASSIGN_OR_RETURN(ltx2::GuidanceOptions guidance, GuidanceOf(r));
      if (ltx2::UsesNegativePrompt(guidance)) {
        return absl::InvalidArgumentError(
            "negative_prompt_embeds: the guidance's negative branch (a CFG scale other than 1) "
            "needs them");
      }
    }
    const at::ScalarType dtype = models_.transformer->dtype();
    for (at::Tensor* t : {&text.video, &text.audio, &text.negative_video, &text.negative_audio}) {
      if (t->defined()) *t = t->to(device, dtype);
    }
    return text;
  }

  // One step on every rank in lockstep, CFG-parallel: the live branches of the step (cond first)
  // are dealt round-robin over the cfg ranks (live branch i on cfg rank i % degree, as
  // AssignBranches), each rank runs its own (cond and negative together in one batch-2 call when
  // both are its) and forms its weighted x0 sum of the PARALLEL form (Ltx2Pipeline::
  // PartialGuidance, per stream). One all-reduce over the cfg ranks sums
  //   [video sum | audio sum | cond x0 std per batch row, video | ..., audio]   float32, flat
  // where only the rank that ran cond (cfg rank 0) puts its stds and a rank without a branch
  // (degree > live branches) puts zeros without a forward pass: idle ranks stay in the
  // all-reduce, so it has the same members every step whatever the branch count. Then every rank
  // applies the rescale and the Euler step to the same sums. A skipped step (skip_step) runs no
  // branch and no collective: every rank reuses its own last guided x0, which the all-reduce
  // made equal on all of them.
  //
  // Sequence / tensor parallelism: every rank of one cfg rank's ulysses × tp block has the same
  // cfg_rank, so it runs the same branches in the same order, each call one sharded forward
  // (collective over the block: whole inputs in, whole outputs out, the same on every rank of
  // the block to rounding), and CfgAllReduce pairs the ranks of equal ulysses / tp coordinates
  // across the cfg axis; the rest of the step is as for CFG alone. (Leaving the video
  // predictions sharded by frames instead would need this rank's frames packed here and the
  // rescale's std statistics all-reduced over the block too.)
  absl::Status GuidedStep(const ltx2::Ltx2Pipeline& pipeline, ltx2::Ltx2DenoiseState& state,
                          const ltx2::Ltx2TextEmbeddings& text) {
    const std::vector<ltx2::Branch> live = pipeline.LiveBranches(state);
    if (live.empty()) return pipeline.StepGuided(state, {});
    const int degree = options_.parallel.cfg;
    const std::vector<std::vector<int>> assignment =
        AssignBranches(static_cast<int>(live.size()), degree);
    std::vector<ltx2::Branch> mine;
    for (int i : assignment[group_->layout().cfg_rank()]) mine.push_back(live[i]);
    ASSIGN_OR_RETURN(auto predictions, pipeline.RunBranches(state, mine, text));
    ASSIGN_OR_RETURN(ltx2::Ltx2Pipeline::Guided sum, pipeline.PartialGuidance(state, predictions));
    const int64_t batch = state.video.size(0);
    const at::TensorOptions f32 = state.video.options().dtype(at::kFloat);
    ltx2::Ltx2Pipeline::Guided cond_std{at::zeros({batch}, f32), at::zeros({batch}, f32)};
    if (auto cond = predictions.find(ltx2::Branch::kCond); cond != predictions.end()) {
      cond_std = pipeline.CondStd(state, cond->second);
    }
    const std::vector<at::Tensor> parts = {sum.video_x0, sum.audio_x0, cond_std.video_x0,
                                           cond_std.audio_x0};
    std::vector<at::Tensor> flat;
    for (const at::Tensor& t : parts) flat.push_back(t.to(at::kFloat).contiguous().view(-1));
    at::Tensor packed = at::cat(flat).contiguous();
    RETURN_IF_ERROR(group_->CfgAllReduce(packed));
    std::vector<at::Tensor> summed;
    int64_t offset = 0;
    for (const at::Tensor& t : parts) {
      summed.push_back(packed.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
    ASSIGN_OR_RETURN(ltx2::Ltx2Pipeline::Guided guided,
                     pipeline.FinishGuidance({summed[0], summed[1]}, {summed[2], summed[3]}));
    return pipeline.StepGuided(state, guided);
  }

  // The adapter a request names (DenoiseRequest.lora), null for none.
  absl::StatusOr<const ltx2::Ltx2Lora*> LoraOf(const v1::DenoiseRequest& r) const {
    if (!r.has_lora()) return nullptr;
    auto it = loras_.find(r.lora().name());
    if (it == loras_.end()) {
      std::string held;
      for (const auto& [name, lora] : loras_) {
        absl::StrAppend(&held, held.empty() ? "" : ", ", name);
      }
      return absl::FailedPreconditionError(absl::StrCat(
          "lora: this denoise group holds no LoRA adapter '", r.lora().name(),
          "' (it holds: ", held.empty() ? "none; start it with --lora name=path" : held, ")"));
    }
    if (!std::isfinite(r.lora().strength())) {
      return absl::InvalidArgumentError("lora.strength: not finite");
    }
    return it->second.get();
  }

  // A later stage of a stage graph: starts from the producer's raw latents (which must make the
  // requested size and frames), re-noised with noise_scale, on the given sigmas.
  absl::Status GivenLatents(const v1::DenoiseRequest& r, ltx2::Ltx2LatentInit& init) const {
    init.sigmas.assign(r.sigmas().begin(), r.sigmas().end());
    init.noise_scale = r.noise_scale();
    if (!r.has_latents()) return absl::OkStatus();
    if (r.latents().has_video_latents()) {
      ASSIGN_OR_RETURN(init.video_latents, FromWire(r.latents().video_latents(),
                                                    "latents.video_latents", DType::kFloat32, 5));
      const int64_t spatial = models_.video_vae->config().spatial_compression_ratio;
      const int64_t temporal = models_.video_vae->config().temporal_compression_ratio;
      const at::Tensor& v = init.video_latents;
      if (v.size(3) * spatial != r.height() || v.size(4) * spatial != r.width() ||
          (v.size(2) - 1) * temporal + 1 != r.num_frames()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "latents.video_latents: a ", v.size(2), "x", v.size(3), "x", v.size(4),
            " latent grid does not make ", r.num_frames(), " frames of ", r.width(), "x",
            r.height()));
      }
    }
    if (r.latents().has_audio_latents()) {
      ASSIGN_OR_RETURN(init.audio_latents, FromWire(r.latents().audio_latents(),
                                                    "latents.audio_latents", DType::kFloat32, 4));
    }
    return absl::OkStatus();
  }

  // The step loop, every rank in lockstep; `ctx` and `on_event` on rank 0 only, which alone
  // decodes (video VAE, audio VAE, vocoder) and emits the output.
  absl::Status Execute(CallContext* ctx, const v1::DenoiseRequest& r,
                       const ltx2::Ltx2TextEmbeddings& text,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    const absl::Time t0 = absl::Now();
    ASSIGN_OR_RETURN(ltx2::GuidanceOptions guidance, GuidanceOf(r));
    ltx2::Ltx2Networks networks = models_.networks();
    ASSIGN_OR_RETURN(networks.transformer_lora, LoraOf(r));
    networks.transformer_lora_strength = r.lora().strength();
    ASSIGN_OR_RETURN(auto pipeline, ltx2::Ltx2Pipeline::Create(networks, guidance));
    ltx2::Ltx2LatentInit init;
    init.num_frames = r.num_frames();
    init.height = r.height();
    init.width = r.width();
    init.frame_rate = r.frame_rate();
    init.seed = r.seed();
    init.num_inference_steps = r.steps();
    RETURN_IF_ERROR(GivenLatents(r, init));
    ASSIGN_OR_RETURN(init.first_frame_latent, FirstFrameLatent(r));
    ASSIGN_OR_RETURN(ltx2::Ltx2DenoiseState state, pipeline->PrepareLatents(init));
    while (!state.done()) {
      const absl::Time step_start = absl::Now();
      absl::Status live = ctx != nullptr ? ctx->Check("denoise") : absl::OkStatus();
      ASSIGN_OR_RETURN(bool go_on, group_->AgreeToContinue(live.ok()));
      if (!go_on) return live.ok() ? absl::AbortedError("denoise: stopped by rank 0") : live;
      RETURN_IF_ERROR(GuidedStep(*pipeline, state, text));
      if (options_.on_step) options_.on_step(absl::ToDoubleSeconds(absl::Now() - step_start));
      if (on_event) {
        v1::DenoiseEvent e;
        e.mutable_progress()->set_unit("step");
        e.mutable_progress()->set_done(state.step);
        e.mutable_progress()->set_total(state.num_steps());
        on_event(e);
      }
    }
    if (!group_->is_main()) return absl::OkStatus();
    v1::DenoiseEvent done;
    auto* result = done.mutable_result();
    result->set_denoise_seconds(absl::ToDoubleSeconds(absl::Now() - t0));
    // The latents (denormalised, with the decode noise of a timestep-conditioned VAE), then
    // the outputs: the latents themselves, or decoded by decoder_ (the same code as a "decode"
    // stage call on them).
    ltx2::Ltx2DecodeOptions latents_only;
    latents_only.decode_video = false;
    latents_only.decode_audio = false;
    latents_only.noise_seed = r.seed();
    ASSIGN_OR_RETURN(ltx2::Ltx2Output out, pipeline->Decode(state, latents_only));
    RETURN_IF_ERROR(decoder_.EmitOutputs(*ctx, r, out, on_event, *result));
    on_event(done);
    return absl::OkStatus();
  }

  const DenoiseCore::Options options_;
  const ltx2::Ltx2Spec spec_;
  std::unique_ptr<DenoiseGroup> group_;
  const ltx2::Ltx2Models models_;
  const int64_t video_text_dim_, audio_text_dim_;
  int64_t spatial_ = 0, temporal_ = 0;  // pixels and frames per latent token
  const std::unique_ptr<Ltx2UpsampleStage> upsample_;  // rank 0, when the model has one
  // LoRA adapters by name (options.loras), this rank's tensor-parallel slices.
  const std::map<std::string, std::unique_ptr<ltx2::Ltx2Lora>> loras_;
  const Ltx2Decoder decoder_;  // rank 0 decodes
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
  const models::parallel::ParallelConfig& p = options.parallel;
  ASSIGN_OR_RETURN(ltx2::Ltx2Spec spec, ltx2::ResolveSpec(options.model, options.model_dir));
  // Before the group meets: a model too large for the CPU is refused by name.
  RETURN_IF_ERROR(ltx2::CheckDevice(spec, options.cuda ? at::kCUDA : at::kCPU));
  ASSIGN_OR_RETURN(auto connectors, ltx2::ConnectorsConfig::FromJson(spec.connectors));
  // Tensor parallelism splits both streams' heads; checked before the group meets (the
  // transformer checks it again when it is sharded), so no rank waits on a rendezvous that
  // cannot serve. Ulysses and ring need no head count (the transformer gathers the keys and
  // values where a tp rank's heads do not divide by Ulysses); their product must divide a
  // request's latent frames (checked per request).
  ASSIGN_OR_RETURN(const ltx2::Ltx2TransformerConfig tc,
                   ltx2::Ltx2TransformerConfig::FromJson(spec.transformer));
  if (tc.num_attention_heads % p.tp != 0 || tc.audio_num_attention_heads % p.tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel: tp ", p.tp, " does not divide ", spec.name, "'s ", tc.num_attention_heads,
        " video and ", tc.audio_num_attention_heads, " audio attention heads"));
  }
  // Image-to-video only: a snapshot written before the encoder was ported has none, and then
  // serves text-to-video alone (a first-frame input is FAILED_PRECONDITION).
  bool has_encoder = spec.dir.empty();
  if (!has_encoder) {
    ASSIGN_OR_RETURN(has_encoder,
                     ltx2::CheckpointHasVideoEncoder(
                         (std::filesystem::path(spec.dir) /
                          ltx2::ComponentFolder(ltx2::Ltx2Component::kVae))
                             .string()));
  }
  // Collective: every rank meets here, then builds its networks on its own device (the CPU, or
  // cuda:<rank % visible GPUs> with --device cuda).
  DenoiseGroupOptions group_options;
  group_options.parallel = p;
  group_options.rendezvous = options.rendezvous;
  group_options.cuda = options.cuda;
  group_options.heartbeat_interval = options.heartbeat_interval;
  group_options.heartbeat_timeout = options.heartbeat_timeout;
  group_options.num_heads = 0;  // checked above and by the transformer
  ASSIGN_OR_RETURN(auto group, DenoiseGroup::Create(group_options));
  const at::Device device = group->device();
  // Each network in its serving dtype (ltx2::ServingDtype: on CUDA the transformer in bf16, the
  // decoders and the video encoder in float32 on TF32 tensor cores); the guidance sums, the
  // scheduler and the latents stay float32 (Ltx2Pipeline).
  using ltx2::Ltx2Component;
  if (device.is_cuda()) models::UseTensorCoresForFloat32();
  // The denoise stage runs everything but the text encoder and the connectors (encoder stage).
  ltx2::Ltx2Models models;
  ASSIGN_OR_RETURN(models.transformer,
                   ltx2::BuildTransformer(
                       spec, ltx2::ServingDtype(Ltx2Component::kTransformer, device), device));
  ASSIGN_OR_RETURN(models.video_vae,
                   ltx2::BuildVideoDecoder(spec, ltx2::ServingDtype(Ltx2Component::kVae, device),
                                           device));
  if (has_encoder) {
    ASSIGN_OR_RETURN(models.video_encoder,
                     ltx2::BuildVideoEncoder(
                         spec, ltx2::ServingDtype(Ltx2Component::kVae, device), device));
  }
  ASSIGN_OR_RETURN(models.audio_vae,
                   ltx2::BuildAudioDecoder(
                       spec, ltx2::ServingDtype(Ltx2Component::kAudioVae, device), device));
  ASSIGN_OR_RETURN(models.vocoder,
                   ltx2::BuildVocoder(spec, ltx2::ServingDtype(Ltx2Component::kVocoder, device),
                                      device));
  ASSIGN_OR_RETURN(models.scheduler, ltx2::BuildSchedulerConfig(spec));
  if (p.tp > 1 || p.sp() > 1) {
    // Whole weights in, this rank's tensor-parallel slices kept; every rank of one cfg rank's
    // ulysses × ring × tp block then runs the same branches as one sharded forward (GuidedStep).
    ASSIGN_OR_RETURN(models.transformer,
                     ltx2::Ltx2Transformer::Parallelize(
                         std::move(models.transformer),
                         ltx2::Ltx2ParallelContext{group->tp_group(), group->ulysses_group(),
                                                   group->ring_group()}));
  }
  // LoRA adapters, applied at run time per request (models/ltx2/lora.h): each rank keeps the
  // slices of its tp rank, in the transformer's dtype on its device.
  std::map<std::string, std::unique_ptr<ltx2::Ltx2Lora>> loras;
  for (const auto& [name, path] : options.loras) {
    auto lora = ltx2::Ltx2Lora::Load(
        path, tc, {models.transformer->dtype(), device, ltx2::SliceOf(group->tp_group())});
    if (!lora.ok()) {
      return absl::Status(lora.status().code(),
                          absl::StrCat("lora '", name, "': ", lora.status().message()));
    }
    loras[name] = *std::move(lora);
  }
  // The "upsample" stage kind runs beside rank 0 (ltx2_upsample.h).
  std::unique_ptr<Ltx2UpsampleStage> upsample;
  if (group->is_main() && !spec.latent_upsampler.is_null()) {
    ASSIGN_OR_RETURN(upsample, Ltx2UpsampleStage::Create(options.model, options.model_dir,
                                                         device.is_cuda()));
  }
  return std::unique_ptr<DenoiseEngine>(new Ltx2DenoiseEngine(
      options, std::move(spec), std::move(group), std::move(models), connectors.video.inner_dim(),
      connectors.audio.inner_dim(), std::move(upsample), std::move(loras)));
}

}  // namespace diffmesh
