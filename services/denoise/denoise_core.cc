#include "services/denoise/denoise_core.h"

#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/image/png.h"
#include "common/media/image_codec.h"
#include "models/glm_image/condition_image.h"
#include "models/glm_image/edit_pipeline.h"
#include "models/glm_image/vision_tokenizer.h"
#include "common/media/media_format.h"
#include "common/output/output_chunks.h"
#include "common/status/status_macros.h"
#include "models/glm_image/glm_image_spec.h"
#include "services/denoise/cfg_policy.h"
#include "services/denoise/decode_engine.h"
#include "services/denoise/denoise_group.h"
#include "services/denoise/glm_image_decode.h"
#include "services/denoise/ltx2_denoise.h"
#include "services/stage_common/torch_errors.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {

using models::glm_image::AutoencoderKl;
using models::glm_image::GlmImageDit;
using models::glm_image::GlmImageSpec;

namespace {

// A bound on the work one request may ask of the group, far above any model's step limit
// (the orchestrator applies the model's own).
constexpr int kMaxSteps = 1000;
// Largest prior-token grid side a stream may announce.
constexpr int kMaxGridSide = 1024;

// The inputs of a streamed request as they arrive: the prior-token grid, filled from the AR
// stage's chunks (the first of which says where the grid lies among the generated tokens), and
// the embeddings. Rank 0 turns each AR chunk into a grid piece (an ArTokenChunk whose offset
// indexes the grid, the first also carrying the grid's shape) and broadcasts it; every rank
// applies the same pieces.
class StreamedInputs {
 public:
  // The grid-aligned tokens of `chunk`; chunks must come in generation order.
  absl::StatusOr<v1::ArTokenChunk> GridPiece(const v1::ArTokenChunk& chunk) {
    if (chunk.offset() != next_ar_offset_) {
      return absl::InvalidArgumentError(absl::StrCat("ar_tokens: chunk at offset ", chunk.offset(),
                                                     ", expected ", next_ar_offset_));
    }
    v1::ArTokenChunk piece;
    if (chunk.has_grid() && !have_grid()) {
      const v1::TokenGrid& g = chunk.grid();
      if (g.height() < 1 || g.width() < 1 || g.height() > kMaxGridSide ||
          g.width() > kMaxGridSide || g.offset() < 0 ||
          g.offset() + int64_t{g.height()} * g.width() > chunk.total()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ar_tokens.grid: ", g.height(), "x", g.width(), " at ", g.offset(), " does not fit ",
            chunk.total(), " tokens"));
      }
      *piece.mutable_grid() = g;
      RETURN_IF_ERROR(SetGrid(g));
      *piece.mutable_condition_prior_tokens() = chunk.condition_prior_tokens();
      *condition_.mutable_condition_prior_tokens() = chunk.condition_prior_tokens();
    }
    if (!have_grid()) return absl::InvalidArgumentError("ar_tokens: the first chunk lacks its grid");
    const int64_t n = static_cast<int64_t>(grid_.size());
    next_ar_offset_ += chunk.tokens_size();
    const int64_t start = grid_offset_;
    for (int j = 0; j < chunk.tokens_size(); ++j) {
      const int64_t i = chunk.offset() + j;
      if (i < start || i >= start + n) continue;
      if (piece.tokens_size() == 0) piece.set_offset(static_cast<int32_t>(i - start));
      piece.add_tokens(chunk.tokens(j));
    }
    return piece;
  }

  absl::Status Apply(const v1::ArTokenChunk& piece) {
    if (piece.has_grid() && !have_grid()) {
      RETURN_IF_ERROR(SetGrid(piece.grid()));
      *condition_.mutable_condition_prior_tokens() = piece.condition_prior_tokens();
    }
    if (!have_grid()) return absl::InvalidArgumentError("ar_tokens: a piece before the grid");
    if (piece.offset() < 0 || piece.offset() + piece.tokens_size() > static_cast<int64_t>(grid_.size())) {
      return absl::InvalidArgumentError("ar_tokens: piece outside the grid");
    }
    for (int j = 0; j < piece.tokens_size(); ++j) grid_[piece.offset() + j] = piece.tokens(j);
    filled_ += piece.tokens_size();
    return absl::OkStatus();
  }

  void SetEmbeddings(v1::EncodeResponse embeddings) {
    embeddings_ = std::move(embeddings);
    have_embeddings_ = true;
  }

  bool complete() const {
    return have_grid() && filled_ == static_cast<int64_t>(grid_.size()) && have_embeddings_;
  }
  std::string Progress() const {
    return absl::StrCat(filled_, " of ", grid_.size(), " grid tokens, ",
                        have_embeddings_ ? "" : "no ", "embeddings");
  }

  // `header` with the assembled tensors.
  v1::DenoiseRequest Request(const v1::DenoiseRequest& header) const {
    v1::DenoiseRequest r = header;
    *r.mutable_prior_tokens() = MakeTensor(DType::kInt64, {grid_h_, grid_w_}, grid_.data(),
                                           grid_.size() * sizeof(int64_t));
    *r.mutable_prompt_embeds() = embeddings_.prompt_embeds();
    *r.mutable_negative_prompt_embeds() = embeddings_.negative_prompt_embeds();
    *r.mutable_condition_prior_tokens() = condition_.condition_prior_tokens();
    return r;
  }

 private:
  bool have_grid() const { return grid_h_ > 0; }
  absl::Status SetGrid(const v1::TokenGrid& g) {
    if (g.height() < 1 || g.width() < 1 || g.height() > kMaxGridSide || g.width() > kMaxGridSide) {
      return absl::InvalidArgumentError("ar_tokens.grid: bad shape");
    }
    grid_h_ = g.height();
    grid_w_ = g.width();
    grid_offset_ = g.offset();
    grid_.assign(static_cast<size_t>(grid_h_ * grid_w_), 0);
    return absl::OkStatus();
  }

  int64_t grid_h_ = 0, grid_w_ = 0, grid_offset_ = 0;
  std::vector<int64_t> grid_;
  v1::ArTokenChunk condition_;  // the first chunk's condition_prior_tokens
  int64_t filled_ = 0;
  int64_t next_ar_offset_ = 0;
  v1::EncodeResponse embeddings_;
  bool have_embeddings_ = false;
};

// How long rank 0 waits for the next input before it pings the other ranks.
constexpr absl::Duration kInputWait = absl::Seconds(1);

// The idle limit of a streamed request: DEADLINE_EXCEEDED once no input came for `limit`.
class InputIdleLimit {
 public:
  explicit InputIdleLimit(absl::Duration limit) : limit_(limit) {}
  void Arrived() { last_ = absl::Now(); }
  bool Expired() const { return absl::Now() - last_ > limit_; }
  absl::Status Error(const std::string& waiting_for) const {
    return absl::DeadlineExceededError(absl::StrCat(
        "DenoiseStream: no input for ", absl::FormatDuration(limit_), " while waiting for ",
        waiting_for, " (the stream's idle limit, --stream-idle-timeout)"));
  }

 private:
  absl::Duration limit_;
  absl::Time last_ = absl::Now();
};

// A request's tensors, checked.
struct Prepared {
  at::Tensor prior_ids;  // [1, N] int64, the AR grid upsampled 2× to the patch grid
  at::Tensor prompt;     // [1, T, text_embed_dim]
  at::Tensor negative;   // [1, T', text_embed_dim]
  // Edit requests: the condition images' keys and values, written once by this rank's DiT and
  // read by every branch but the negative one (as GlmImagePipeline's conditional branch).
  models::glm_image::DitKvCache condition;
};

}  // namespace

class DenoiseCore::Impl final : public DenoiseEngine {
 public:
  Impl(Options options, GlmImageSpec spec, std::unique_ptr<DenoiseGroup> group,
       std::unique_ptr<GlmImageDit> dit, std::unique_ptr<AutoencoderKl> vae, int vae_scale)
      : options_(std::move(options)), spec_(std::move(spec)), group_(std::move(group)),
        dit_(std::move(dit)), vae_(std::move(vae)), vae_scale_(vae_scale),
        granularity_(vae_scale * static_cast<int>(dit_->config().patch_size) *
                     static_cast<int>(models::glm_image::kPriorTokenUpsample)),
        decoder_(spec_.name, vae_.get(), options_.max_image_size) {}

  int rank() const override { return group_->layout().rank(); }

  v1::StageDescription Describe() const override {
    v1::StageDescription d;
    d.add_kinds("denoise");
    d.add_kinds("decode");
    v1::ServedModel* m = d.add_models();
    m->set_name(spec_.name);
    m->set_family("glm_image");
    const int width = static_cast<int>(dit_->config().text_embed_dim);
    (*m->mutable_embedding_widths())["prompt_embeds"] = width;
    (*m->mutable_embedding_widths())["negative_prompt_embeds"] = width;
    m->set_size_granularity(granularity_);
    m->set_max_steps(kMaxSteps);
    return d;
  }

  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& r,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    if (!group_->is_main()) return absl::FailedPreconditionError("only rank 0 takes requests");
    // A "decode" stage call: rank 0 alone, the group free for the next request.
    if (r.has_decode()) return decoder_.Run(ctx, r, on_event);
    if (r.has_upsample()) {
      return absl::FailedPreconditionError(
          absl::StrCat("upsample: model '", spec_.name, "' has no latent upsampler"));
    }
    // Checked here first, so a bad request never reaches the other ranks.
    ASSIGN_OR_RETURN(Prepared p, Prepare(r));
    std::string bytes;
    r.SerializeToString(&bytes);
    const absl::Time asked = absl::Now();  // the group runs one request at a time
    RETURN_IF_ERROR(group_->Send(DenoiseGroup::Command::kRun, bytes, ctx));
    absl::Status s = Execute(r, p, &ctx, WithQueueTime(on_event, absl::Now() - asked));
    group_->Release();
    return s;
  }

  absl::Status RunWorker() override {
    if (group_->is_main()) return absl::FailedPreconditionError("rank 0 does not run as a worker");
    while (true) {
      ASSIGN_OR_RETURN(auto command, group_->Receive());
      if (command.first == DenoiseGroup::Command::kStop) return absl::OkStatus();
      v1::DenoiseRequest r;
      if (!r.ParseFromString(command.second)) return absl::DataLossError("bad request from rank 0");
      if (command.first == DenoiseGroup::Command::kBegin) {
        RETURN_IF_ERROR(ReceiveStreamed(r));
        continue;
      }
      ASSIGN_OR_RETURN(Prepared p, Prepare(r));  // rank 0 checked it: this cannot fail differently
      RETURN_IF_ERROR(Execute(r, p, nullptr, nullptr));
    }
  }

  absl::Status DenoiseStreamed(CallContext& ctx, InputQueue<v1::DenoiseInput>& inputs,
                               const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    if (!group_->is_main()) return absl::FailedPreconditionError("only rank 0 takes requests");
    // A cancelled call wakes the wait for inputs at once (a deadline within kInputWait).
    ScopedCancelHook wake(ctx, [&inputs] { inputs.Close(absl::CancelledError("denoise: cancelled")); });
    v1::DenoiseRequest header;
    const InputIdleLimit idle(options_.stream_idle_timeout);
    while (true) {  // the request comes first
      RETURN_IF_ERROR(ctx.Check("denoise"));
      auto next = inputs.Next(kInputWait);
      if (absl::IsOutOfRange(next.status())) {
        return absl::InvalidArgumentError("DenoiseStream: the inputs ended before the request");
      }
      RETURN_IF_ERROR(next.status());
      if (!next->has_value()) {
        if (idle.Expired()) return idle.Error("the request");
        continue;
      }
      if (!(*next)->has_request()) {
        return absl::InvalidArgumentError("DenoiseStream: the first input must be the request");
      }
      header = std::move(*(*next)->mutable_request());
      break;
    }
    // Checked before the group is involved, like a whole request.
    RETURN_IF_ERROR(CheckRequest(header));
    std::string bytes;
    header.SerializeToString(&bytes);
    const absl::Time asked = absl::Now();  // the group runs one request at a time
    RETURN_IF_ERROR(group_->Send(DenoiseGroup::Command::kBegin, bytes, ctx));
    absl::Status s =
        StreamAndExecute(ctx, header, inputs, WithQueueTime(on_event, absl::Now() - asked));
    group_->Release();
    return s;
  }

 private:
  // Rank 0, holding the group: forwards each input to the other ranks as it arrives, then runs
  // the request with them (kGo) or drops it (kAbort) when the inputs fail or the call ends.
  absl::Status StreamAndExecute(CallContext& ctx, const v1::DenoiseRequest& header,
                                InputQueue<v1::DenoiseInput>& inputs,
                                const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    StreamedInputs assembly;
    auto abort = [&](absl::Status why) {
      group_->SendMore(DenoiseGroup::Command::kAbort, "").IgnoreError();
      return why;
    };
    std::string bytes;
    InputIdleLimit idle(options_.stream_idle_timeout);
    while (!assembly.complete()) {
      if (absl::Status live = ctx.Check("denoise"); !live.ok()) return abort(live);
      if (idle.Expired()) {
        return abort(idle.Error(absl::StrCat("the rest of the inputs (", assembly.Progress(), ")")));
      }
      auto next = inputs.Next(kInputWait);
      if (absl::IsOutOfRange(next.status())) {
        return abort(absl::InvalidArgumentError(absl::StrCat(
            "DenoiseStream: the inputs ended with ", assembly.Progress())));
      }
      if (!next.ok()) return abort(next.status());
      if (!next->has_value()) {  // nothing yet: keep the other ranks' waits alive
        RETURN_IF_ERROR(group_->SendMore(DenoiseGroup::Command::kPing, ""));
        continue;
      }
      idle.Arrived();
      v1::DenoiseInput& in = **next;
      if (in.has_ar_tokens()) {
        auto piece = assembly.GridPiece(in.ar_tokens());
        if (!piece.ok()) return abort(piece.status());
        if (piece->tokens_size() == 0 && !piece->has_grid()) continue;  // before the grid
        piece->SerializeToString(&bytes);
        RETURN_IF_ERROR(group_->SendMore(DenoiseGroup::Command::kTokens, bytes));
        RETURN_IF_ERROR(assembly.Apply(*piece));
      } else if (in.has_embeddings()) {
        in.embeddings().SerializeToString(&bytes);
        RETURN_IF_ERROR(group_->SendMore(DenoiseGroup::Command::kEmbeddings, bytes));
        assembly.SetEmbeddings(std::move(*in.mutable_embeddings()));
      } else {
        return abort(absl::InvalidArgumentError("DenoiseStream: a second request"));
      }
    }
    const v1::DenoiseRequest r = assembly.Request(header);
    auto p = Prepare(r);
    if (!p.ok()) return abort(p.status());
    RETURN_IF_ERROR(group_->SendMore(DenoiseGroup::Command::kGo, ""));
    return Execute(r, *p, &ctx, on_event);
  }

  // Ranks > 0: the pieces of a streamed request, in rank 0's order, until kGo or kAbort.
  absl::Status ReceiveStreamed(const v1::DenoiseRequest& header) {
    StreamedInputs assembly;
    while (true) {
      ASSIGN_OR_RETURN(auto command, group_->Receive());
      switch (command.first) {
        case DenoiseGroup::Command::kTokens: {
          v1::ArTokenChunk piece;
          if (!piece.ParseFromString(command.second)) return absl::DataLossError("bad tokens from rank 0");
          RETURN_IF_ERROR(assembly.Apply(piece));
          break;
        }
        case DenoiseGroup::Command::kEmbeddings: {
          v1::EncodeResponse e;
          if (!e.ParseFromString(command.second)) return absl::DataLossError("bad embeddings from rank 0");
          assembly.SetEmbeddings(std::move(e));
          break;
        }
        case DenoiseGroup::Command::kAbort:
          return absl::OkStatus();
        case DenoiseGroup::Command::kGo: {
          const v1::DenoiseRequest r = assembly.Request(header);
          ASSIGN_OR_RETURN(Prepared p, Prepare(r));  // as rank 0's, which passed
          return Execute(r, p, nullptr, nullptr);
        }
        default:
          return absl::DataLossError("denoise group: unexpected command in a streamed request");
      }
    }
  }

  // The request's scalar fields (a whole or a streamed request, before its tensors).
  absl::Status CheckRequest(const v1::DenoiseRequest& r) const {
    if (r.model() != spec_.name) {
      return absl::NotFoundError(
          absl::StrCat("model: this denoise group serves '", spec_.name, "', not '", r.model(), "'"));
    }
    if (r.has_lora()) {
      return absl::FailedPreconditionError(
          absl::StrCat("lora: this denoise group holds no LoRA adapter '", r.lora().name(), "'"));
    }
    const int g = granularity_;
    for (auto [field, v] : {std::pair{"height", r.height()}, std::pair{"width", r.width()}}) {
      if (v < g || v > options_.max_image_size || v % g != 0) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": ", v, " must be a multiple of ",
                                                        g, " in ", g, "..", options_.max_image_size));
      }
    }
    if (r.steps() < 1 || r.steps() > kMaxSteps) {
      return absl::InvalidArgumentError(absl::StrCat("steps: ", r.steps(), " is outside 1..", kMaxSteps));
    }
    RETURN_IF_ERROR(GuidanceOf(r).status());
    RETURN_IF_ERROR(GlmImageDecoder::CheckOutput(r.output()));
    return absl::OkStatus();
  }

  // The request's guidance as this model runs it: two-branch CFG, or the four-branch policy
  // when a perturbed or modality branch or a rescale is asked for. Unset fields are off.
  absl::StatusOr<MultiModalGuidanceParams> GuidanceOf(const v1::DenoiseRequest& r) const {
    const v1::Guidance& g = r.guidance();
    if (g.has_audio()) return absl::InvalidArgumentError("guidance.audio: this model has no audio");
    if (g.skip_step() != 0) {
      return absl::InvalidArgumentError("guidance.skip_step: not supported by this model");
    }
    MultiModalGuidanceParams params;
    const v1::StreamGuidance& m = g.main();
    params.cfg_scale = m.has_cfg_scale() ? m.cfg_scale() : 1.0f;
    params.stg_scale = m.has_stg_scale() ? m.stg_scale() : 0.0f;
    params.modality_scale = m.has_modality_scale() ? m.modality_scale() : 1.0f;
    params.rescale_scale = m.has_rescale() ? m.rescale() : 0.0f;
    for (float v : {params.cfg_scale, params.stg_scale, params.modality_scale, params.rescale_scale}) {
      if (!std::isfinite(v)) return absl::InvalidArgumentError("guidance: values must be finite");
    }
    if (params.cfg_scale < 0) return absl::InvalidArgumentError("guidance.main.cfg_scale: must be >= 0");
    for (int64_t b : g.stg_blocks().blocks()) {
      if (b < 0 || b >= dit_->config().num_layers) {
        return absl::InvalidArgumentError(absl::StrCat("guidance.stg_blocks: no block ", b));
      }
      params.stg_blocks.push_back(b);
    }
    return params;
  }

  static bool FourBranch(const MultiModalGuidanceParams& p) {
    return p.stg_scale != 0 || p.modality_scale != 1 || p.rescale_scale != 0;
  }

  absl::StatusOr<Prepared> Prepare(const v1::DenoiseRequest& r) const {
    RETURN_IF_ERROR(CheckRequest(r));
    const auto& cfg = dit_->config();
    const int64_t grid_h = r.height() / granularity_, grid_w = r.width() / granularity_;
    ASSIGN_OR_RETURN(at::Tensor grid, FromWire(r.prior_tokens(), "prior_tokens", DType::kInt64, 2));
    if (grid.size(0) != grid_h || grid.size(1) != grid_w) {
      return absl::InvalidArgumentError(absl::StrCat("prior_tokens: grid ", grid.size(0), "x",
                                                     grid.size(1), ", expected ", grid_h, "x", grid_w));
    }
    if (grid.numel() > 0 && (grid.min().item<int64_t>() < 0 ||
                             grid.max().item<int64_t>() >= cfg.prior_vq_quantizer_codebook_size)) {
      return absl::InvalidArgumentError(absl::StrCat("prior_tokens: ids must lie in 0..",
                                                     cfg.prior_vq_quantizer_codebook_size - 1));
    }
    Prepared p;
    ASSIGN_OR_RETURN(p.prompt, FromWire(r.prompt_embeds(), "prompt_embeds", DType::kFloat32, 3));
    ASSIGN_OR_RETURN(p.negative, FromWire(r.negative_prompt_embeds(), "negative_prompt_embeds",
                                          DType::kFloat32, 3));
    for (auto [field, t] : {std::pair{"prompt_embeds", p.prompt}, std::pair{"negative_prompt_embeds", p.negative}}) {
      if (t.size(0) != 1 || t.size(2) != cfg.text_embed_dim) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": expected [1, T, ", cfg.text_embed_dim, "]"));
      }
    }
    // Prior tokens: the AR grid upsampled 2× (nearest) to the DiT's patch grid, row-major.
    p.prior_ids = models::glm_image::UpsampleTokenIds(grid, {grid_h, grid_w}).reshape({1, -1});
    if (r.inputs_size() > 0) RETURN_IF_ERROR(PrepareCondition(r, p));
    return p;
  }

  // Edit requests: each condition image VAE-encoded and run through the DiT's write pass with
  // its prior tokens, filling p.condition (GlmImagePipeline's image-to-image path).
  absl::Status PrepareCondition(const v1::DenoiseRequest& r, Prepared& p) const {
    if (options_.parallel.ulysses > 1 || options_.parallel.ring > 1) {
      return absl::InvalidArgumentError(
          "inputs: image editing runs on groups of Ulysses and ring degree 1 (the condition "
          "keys and values are not sequence-parallel)");
    }
    if (r.condition_prior_tokens_size() != r.inputs_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "condition_prior_tokens: ", r.condition_prior_tokens_size(), " grids for ",
          r.inputs_size(), " input images"));
    }
    const int64_t codebook = dit_->config().prior_vq_quantizer_codebook_size;
    for (int i = 0; i < r.inputs_size(); ++i) {
      const std::string field = absl::StrCat("inputs[", i, "]");
      if (r.inputs(i).role() != v1::MEDIA_ROLE_EDIT_IMAGE) {
        return absl::InvalidArgumentError(field + ".role: this stage takes images to edit only");
      }
      auto rgb = media::DecodeImage(r.inputs(i).data());
      if (!rgb.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ".data: ", rgb.status().message()));
      ASSIGN_OR_RETURN(at::Tensor image,
                       models::glm_image::PreprocessVaeConditionImage(
                           rgb->pixels.data(), rgb->width, rgb->height,
                           vae_scale_ * dit_->config().patch_size));
      ASSIGN_OR_RETURN(at::Tensor latents, models::glm_image::EncodeConditionLatents(
                                               *vae_, image.to(group_->device())));
      ASSIGN_OR_RETURN(at::Tensor grid, FromWire(r.condition_prior_tokens(i),
                                                 absl::StrCat("condition_prior_tokens[", i, "]"),
                                                 DType::kInt64, 2));
      if (grid.numel() > 0 && (grid.min().item<int64_t>() < 0 || grid.max().item<int64_t>() >= codebook)) {
        return absl::InvalidArgumentError(absl::StrCat("condition_prior_tokens[", i,
                                                       "]: ids must lie in 0..", codebook - 1));
      }
      const at::Tensor ids =
          models::glm_image::UpsampleTokenIds(grid, {grid.size(0), grid.size(1)})
              .reshape({1, -1})
              .to(group_->device());
      RETURN_IF_ERROR(models::glm_image::WriteConditionKv(*dit_, latents.to(dit_->dtype()), ids,
                                                          image.size(2), image.size(3),
                                                          p.condition)
                          .status());
    }
    return absl::OkStatus();
  }

  // The step loop, run by every rank in lockstep. `ctx` and `on_event` only on rank 0.
  absl::Status Execute(const v1::DenoiseRequest& r, const Prepared& p, CallContext* ctx,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    const absl::Time t0 = absl::Now();
    const auto& cfg = dit_->config();
    const int64_t lat_h = r.height() / vae_scale_, lat_w = r.width() / vae_scale_;
    // Every rank draws the same initial latents from the request's seed.
    auto gen = at::detail::createCPUGenerator(r.seed());
    at::Tensor latents =
        at::randn({1, cfg.in_channels, lat_h, lat_w}, gen, at::kFloat).to(group_->device());
    std::unique_ptr<CfgPolicy> policy;
    ASSIGN_OR_RETURN(MultiModalGuidanceParams params, GuidanceOf(r));
    if (FourBranch(params)) {
      ASSIGN_OR_RETURN(policy, MakeGlmImageMultiModalCfg(p.prompt, p.negative, p.prior_ids.size(1), params));
    } else {
      policy = MakeGlmImageCfg(p.prompt, p.negative, p.prior_ids.size(1), params.cfg_scale);
    }

    ASSIGN_OR_RETURN(auto scheduler, models::glm_image::BuildScheduler(spec_));
    const int64_t image_seq_len = (lat_h / cfg.patch_size) * (lat_w / cfg.patch_size);
    RETURN_IF_ERROR(scheduler->SetTimesteps(
        r.steps(), models::glm_image::CalculateShift(image_seq_len, scheduler->config())));

    models::glm_image::DitInputs in;
    in.prior_token_id = p.prior_ids;
    in.target_size = at::tensor({static_cast<float>(r.height()), static_cast<float>(r.width())}).view({1, 2});
    in.crop_coords = at::zeros({1, 2});
    const auto* collectives = &group_->dit_collectives();
    for (int64_t i = 0; i < scheduler->num_steps(); ++i) {
      const absl::Time step_start = absl::Now();
      absl::Status live = ctx != nullptr ? ctx->Check("denoise") : absl::OkStatus();
      ASSIGN_OR_RETURN(bool go_on, group_->AgreeToContinue(live.ok()));
      if (!go_on) return live.ok() ? absl::AbortedError("denoise: stopped by rank 0") : live;
      in.hidden_states = latents.to(dit_->dtype());
      // The reference pipeline feeds the transformer t − 1.
      in.timestep = at::full({1}, scheduler->timesteps()[i], at::kFloat) - 1;
      ASSIGN_OR_RETURN(std::vector<at::Tensor> predictions,
                       group_->RunBranches(*policy, [&](const CfgBranch& b) {
                         models::glm_image::DitInputs branch = in;
                         branch.encoder_hidden_states = b.encoder_hidden_states.to(dit_->dtype());
                         branch.prior_token_drop = b.prior_token_drop;
                         branch.skip_attention_layers = b.skip_layers;
                         if (b.kind != BranchKind::kNegative && !p.condition.keys.empty()) {
                           branch.kv_read = &p.condition;
                         }
                         return dit_->Forward(branch, collectives).to(at::kFloat);
                       }, latents));
      latents = scheduler->Step(policy->Combine(predictions, i), i, latents);
      if (options_.on_step) {
        // On a GPU the step's kernels are still queued: wait for them, so the time is the step's.
        if (latents.is_cuda()) latents.sum().item<float>();
        options_.on_step(absl::ToDoubleSeconds(absl::Now() - step_start));
      }
      if (on_event) {
        v1::DenoiseEvent e;
        e.mutable_progress()->set_unit("step");
        e.mutable_progress()->set_done(i + 1);
        e.mutable_progress()->set_total(scheduler->num_steps());
        on_event(e);
      }
    }
    if (!group_->is_main()) return absl::OkStatus();  // the VAE decode is rank 0's alone

    v1::DenoiseEvent done;
    auto* result = done.mutable_result();
    result->set_denoise_seconds(absl::ToDoubleSeconds(absl::Now() - t0));
    RETURN_IF_ERROR(decoder_.EmitOutputs(*ctx, r.output(), latents, on_event, *result));
    on_event(done);
    return absl::OkStatus();
  }

  const Options options_;
  const GlmImageSpec spec_;
  std::unique_ptr<DenoiseGroup> group_;
  std::unique_ptr<GlmImageDit> dit_;
  // Every rank: its encoder takes edit requests' condition images; rank 0 also decodes.
  std::unique_ptr<AutoencoderKl> vae_;
  // Pixels per latent, and per prior token (a multiple of every valid image side).
  const int vae_scale_;
  const int granularity_;
  const GlmImageDecoder decoder_;  // rank 0 decodes
};

absl::StatusOr<std::unique_ptr<DenoiseCore>> DenoiseCore::Create(const Options& options) {
  if (options.role == Options::Role::kDecode) {
    ASSIGN_OR_RETURN(auto engine, CreateDecodeEngine(options));
    return std::unique_ptr<DenoiseCore>(new DenoiseCore(std::move(engine)));
  }
  if (IsLtx2DenoiseModel(options.model, options.model_dir)) {
    ASSIGN_OR_RETURN(auto engine, CreateLtx2DenoiseEngine(options));
    return std::unique_ptr<DenoiseCore>(new DenoiseCore(std::move(engine)));
  }
  if (!options.loras.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora: LoRA adapters are implemented for LTX-2 models only, not '",
                     options.model_dir.empty() ? options.model : options.model_dir, "'"));
  }
  ASSIGN_OR_RETURN(GlmImageSpec spec,
                   models::glm_image::ResolveSpec(options.model, options.model_dir));
  ASSIGN_OR_RETURN(auto dit_config, models::glm_image::DitConfig::FromJson(spec.transformer));
  ASSIGN_OR_RETURN(auto vae_config, models::glm_image::VaeConfig::FromJson(spec.vae));
  Options resolved = options;
  if (resolved.max_image_size <= 0) resolved.max_image_size = spec.max_image_size;
  DenoiseGroupOptions group_options;
  group_options.parallel = options.parallel;
  group_options.rendezvous = options.rendezvous;
  group_options.num_heads = static_cast<int>(dit_config.num_attention_heads);
  group_options.cuda = options.cuda;
  group_options.heartbeat_interval = options.heartbeat_interval;
  group_options.heartbeat_timeout = options.heartbeat_timeout;
  ASSIGN_OR_RETURN(auto group, DenoiseGroup::Create(group_options));
  models::glm_image::TensorParallelShard tp{group->layout().tp_rank(), options.parallel.tp};
  const at::ScalarType dtype = options.cuda ? at::kBFloat16 : at::kFloat;
  ASSIGN_OR_RETURN(auto dit, models::glm_image::BuildDit(spec, dtype, tp, group->device()));
  ASSIGN_OR_RETURN(auto vae, models::glm_image::BuildVae(spec, at::kFloat, group->device()));
  return std::unique_ptr<DenoiseCore>(new DenoiseCore(std::make_unique<Impl>(
      resolved, std::move(spec), std::move(group), std::move(dit), std::move(vae),
      static_cast<int>(vae_config.ScaleFactor()))));
}

DenoiseCore::DenoiseCore(std::unique_ptr<DenoiseEngine> impl) : impl_(std::move(impl)) {}
DenoiseCore::~DenoiseCore() = default;

// The exception boundary: a LibTorch exception (a shape check, CUDA OOM) ends the request with
// INTERNAL / RESOURCE_EXHAUSTED instead of the process.
absl::Status DenoiseCore::Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                                  const std::function<void(const v1::DenoiseEvent&)>& on_event) {
  return CatchTorchErrors("denoise", [&] { return impl_->Denoise(ctx, request, on_event); });
}

absl::Status DenoiseCore::DenoiseStreamed(
    CallContext& ctx, InputQueue<v1::DenoiseInput>& inputs,
    const std::function<void(const v1::DenoiseEvent&)>& on_event) {
  return CatchTorchErrors("denoise",
                          [&] { return impl_->DenoiseStreamed(ctx, inputs, on_event); });
}

absl::Status DenoiseCore::RunWorker() {
  return CatchTorchErrors("denoise worker", [&] { return impl_->RunWorker(); });
}

int DenoiseCore::rank() const { return impl_->rank(); }

v1::StageDescription DenoiseCore::Describe() const { return impl_->Describe(); }

}  // namespace diffmesh
