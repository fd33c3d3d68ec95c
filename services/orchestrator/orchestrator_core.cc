#include "services/orchestrator/orchestrator_core.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status/status_macros.h"

namespace diffmesh {
namespace {

double Seconds(absl::Time since) { return absl::ToDoubleSeconds(absl::Now() - since); }

// Waits for a call running beside the request's own thread (the encoder): Arm before it
// starts, Release when its outcome is in, Wait (or the destructor) before what it uses dies.
class Pending {
 public:
  Pending() = default;
  Pending(const Pending&) = delete;
  Pending& operator=(const Pending&) = delete;
  ~Pending() { Wait(); }

  void Arm() { running_ = true; }
  void Release() {
    // Notified under the lock: once Wait() sees the end, nothing here touches *this.
    std::lock_guard<std::mutex> lock(mu_);
    running_ = false;
    done_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return !running_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable done_;
  bool running_ = false;
};

v1::GenerateEvent StageEvent(const std::string& stage, v1::StageEvent::Kind kind,
                             double seconds = 0) {
  v1::GenerateEvent e;
  e.mutable_stage()->set_stage(stage);
  e.mutable_stage()->set_kind(kind);
  if (kind == v1::StageEvent::FINISHED) e.mutable_stage()->set_duration_seconds(seconds);
  return e;
}

std::string NewRequestId() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrCat("req-", absl::Hex(rng(), absl::kZeroPad16));
}

uint64_t NewSeed() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  return rng() >> 1;  // fits int64 for clients that only have signed integers
}

// The model label of a request: bounded to the pipeline's models.
std::string ModelLabel(const PipelineConfig& p, const v1::GenerateRequest& r) {
  const std::string& name = r.model().empty() ? p.default_model : r.model();
  return p.FindModel(name) != nullptr ? name : "unknown";
}

}  // namespace

// Reports one request to the observer; does nothing without one. Accepted and Finish run on the
// request's thread while no encoder thread runs, OnEvent under the core's emit lock;
// StageFinished and Bytes only read constant state, so the encoder thread may call them.
class OrchestratorCore::Trace {
 public:
  Trace(RequestObserver* observer, std::string model)
      : observer_(observer), arrival_(absl::Now()) {
    outcome_.model = std::move(model);
    if (observer_ != nullptr) observer_->RequestArrived();
  }
  Trace(const Trace&) = delete;
  Trace& operator=(const Trace&) = delete;

  bool on() const { return observer_ != nullptr; }

  void Accepted() {
    outcome_.accepted = true;
    if (observer_ != nullptr) observer_->RequestAccepted(outcome_.model);
  }

  // Called with every event the request emits, in order.
  void OnEvent(const v1::GenerateEvent& e) {
    if (observer_ == nullptr) return;
    if (!outcome_.started && e.has_stage() && e.stage().kind() == v1::StageEvent::STARTED) {
      outcome_.started = true;
      observer_->FirstStageStarted(outcome_.model, Seconds(arrival_));
    }
    if (!saw_progress_ && (e.has_ar_progress() || e.has_denoise_progress())) {
      saw_progress_ = true;
      observer_->FirstProgress(outcome_.model, Seconds(arrival_));
    }
  }

  void StageFinished(const char* stage, double seconds) {
    if (observer_ != nullptr) observer_->StageFinished(outcome_.model, stage, seconds);
  }

  // Serialized size of a message to or from a stage.
  void Bytes(const char* stage, bool sent, const google::protobuf::MessageLite& m) {
    if (observer_ != nullptr) {
      observer_->StageBytes(stage, sent, static_cast<int64_t>(m.ByteSizeLong()));
    }
  }

  void Finish(const absl::Status& status) {
    if (observer_ == nullptr) return;
    outcome_.code = status.code();
    outcome_.seconds = Seconds(arrival_);
    observer_->RequestFinished(outcome_);
  }

 private:
  RequestObserver* const observer_;
  const absl::Time arrival_;
  RequestObserver::Outcome outcome_;
  bool saw_progress_ = false;
};

absl::StatusOr<std::unique_ptr<OrchestratorCore>> OrchestratorCore::Create(Options options) {
  if (options.stages == nullptr) return absl::InvalidArgumentError("stages must be set");
  return std::unique_ptr<OrchestratorCore>(new OrchestratorCore(std::move(options)));
}

absl::StatusOr<v1::Accepted> ValidateRequest(const PipelineConfig& p, const v1::GenerateRequest& r) {
  const std::string name = r.model().empty() ? p.default_model : r.model();
  const PipelineModel* m = p.FindModel(name);
  if (m == nullptr) {
    return absl::NotFoundError(absl::StrCat("model: '", name, "' is not served here (see ListModels)"));
  }
  const ModelLimits& lim = m->limits;
  if (r.prompt().empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  if (static_cast<int>(r.prompt().size()) > lim.max_prompt_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", r.prompt().size(),
                                                   " bytes, the limit is ", lim.max_prompt_bytes));
  }
  if (static_cast<int>(r.negative_prompt().size()) > lim.max_prompt_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("negative_prompt: ", r.negative_prompt().size(),
                                                   " bytes, the limit is ", lim.max_prompt_bytes));
  }
  v1::Accepted a;
  a.set_request_id(r.request_id().empty() ? NewRequestId() : r.request_id());
  a.set_model(name);
  for (auto [field, value, fallback] : {std::tuple<const char*, int, int>{"height", r.height(), m->defaults.height},
                                        {"width", r.width(), m->defaults.width}}) {
    int v = value == 0 ? fallback : value;
    if (v < lim.min_size || v > lim.max_size || v % lim.pixel_granularity != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": ", v, " is not allowed for ", name, " (a multiple of ", lim.pixel_granularity,
          " in ", lim.min_size, "..", lim.max_size, ")"));
    }
    (std::string(field) == "height" ? a.set_height(v) : a.set_width(v));
  }
  const int steps = r.steps() == 0 ? m->defaults.steps : r.steps();
  if (steps < 1 || steps > lim.max_steps) {
    return absl::InvalidArgumentError(absl::StrCat("steps: ", steps, " is outside 1..", lim.max_steps));
  }
  a.set_steps(steps);
  const float g = r.has_guidance_scale() ? r.guidance_scale() : m->defaults.guidance_scale;
  if (!std::isfinite(g) || g < 0) {
    return absl::InvalidArgumentError(absl::StrCat("guidance_scale: ", g, " must be finite and >= 0"));
  }
  a.set_guidance_scale(g);
  a.set_seed(r.has_seed() ? r.seed() : NewSeed());
  return a;
}

v1::ListModelsResponse DescribeModels(const PipelineConfig& pipeline) {
  v1::ListModelsResponse out;
  out.set_default_model(pipeline.default_model);
  for (const PipelineModel& m : pipeline.models) {
    v1::ModelInfo* info = out.add_models();
    info->set_name(m.name);
    info->set_description(m.description);
    info->set_default_height(m.defaults.height);
    info->set_default_width(m.defaults.width);
    info->set_default_steps(m.defaults.steps);
    info->set_default_guidance_scale(m.defaults.guidance_scale);
    info->set_pixel_granularity(m.limits.pixel_granularity);
    info->set_min_size(m.limits.min_size);
    info->set_max_size(m.limits.max_size);
    info->set_max_prompt_bytes(m.limits.max_prompt_bytes);
    for (const auto& s : m.stages) info->add_stages(s.name);
  }
  return out;
}

absl::Status OrchestratorCore::Generate(CallContext& ctx, const v1::GenerateRequest& request,
                                        const Emit& emit) {
  Trace trace(options_.observer, ModelLabel(options_.pipeline, request));
  absl::Status status = Run(ctx, request, emit, trace);
  trace.Finish(status);
  return status;
}

absl::Status OrchestratorCore::Run(CallContext& ctx, const v1::GenerateRequest& request,
                                   const Emit& emit_unsafe, Trace& trace) {
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(v1::Accepted accepted, ValidateRequest(options_.pipeline, request));
  trace.Accepted();
  const PipelineModel& model = *options_.pipeline.FindModel(accepted.model());
  std::mutex emit_mu;
  const Emit emit = [&](const v1::GenerateEvent& e) {
    std::lock_guard<std::mutex> lock(emit_mu);
    trace.OnEvent(e);
    emit_unsafe(e);
  };
  {
    v1::GenerateEvent e;
    *e.mutable_accepted() = accepted;
    emit(e);
  }
  v1::ResultMetadata meta;
  meta.set_request_id(accepted.request_id());
  meta.set_model(accepted.model());
  meta.set_seed(accepted.seed());
  meta.set_height(accepted.height());
  meta.set_width(accepted.width());
  meta.set_steps(accepted.steps());
  meta.set_guidance_scale(accepted.guidance_scale());
  auto add_timing = [&meta](const std::string& stage, double s) {
    v1::StageTiming* t = meta.add_stage_timings();
    t->set_stage(stage);
    t->set_seconds(s);
  };
  auto service_of = [&model](const char* stage) -> std::string {
    for (const auto& s : model.stages) {
      if (s.name == stage) return s.service;
    }
    return "";
  };
  // Streaming needs both producers: the grid comes from the AR stage, the embeddings from the
  // encoder.
  bool stream_denoise = model.HasStage("ar") && model.HasStage("encoder");
  for (const auto& s : model.stages) {
    if (s.name == "denoise") stream_denoise &= s.stream;
  }

  v1::DenoiseRequest denoise_req;
  denoise_req.set_request_id(accepted.request_id());
  denoise_req.set_model(accepted.model());
  denoise_req.set_height(accepted.height());
  denoise_req.set_width(accepted.width());
  denoise_req.set_steps(accepted.steps());
  denoise_req.set_guidance_scale(accepted.guidance_scale());
  denoise_req.set_seed(accepted.seed());
  denoise_req.set_output(v1::PNG);
  denoise_req.set_include_latents(request.include_latents());
  ASSIGN_OR_RETURN(DenoiseStageClient* denoise, options_.stages->Denoise(service_of("denoise")));
  // Streamed: the denoise call opens now and takes the AR tokens and the encoder's output as
  // they come (its rank 0 broadcasts them to the other ranks as they arrive); a failed hand-over
  // means the call has ended, so the other stages stop and Finish tells why.
  std::unique_ptr<DenoiseStream> denoise_stream;
  auto hand_over = [&](const v1::DenoiseInput& in) {
    trace.Bytes("denoise", /*sent=*/true, in);
    if (!denoise_stream->Send(in).ok()) ctx.Cancel();
  };
  if (stream_denoise) {
    ASSIGN_OR_RETURN(denoise_stream, denoise->OpenStream(ctx));
    v1::DenoiseInput head;
    *head.mutable_request() = denoise_req;
    hand_over(head);
  }
  // The stream's own status once its inputs failed with `why` (it explains a CANCELLED `why`).
  auto end_stream = [&](const absl::Status& why) {
    if (denoise_stream == nullptr) return why;
    denoise_stream->CloseInputs(why);
    absl::Status own = denoise_stream->Finish([](const v1::DenoiseEvent&) {});
    denoise_stream.reset();
    return why.code() == absl::StatusCode::kCancelled && !own.ok() && !absl::IsCancelled(own) ? own
                                                                                               : why;
  };

  // The encoder does not depend on the AR output: it runs beside it.
  absl::StatusOr<v1::EncodeResponse> encoded = v1::EncodeResponse();
  double encoder_seconds = 0;
  // The encoder's outcome is handled where it arrives (on the transport's thread: everything
  // it does there is non-blocking); `encoder_done` is waited for on every path out of here.
  v1::EncodeRequest encode_req;
  Pending encoder_done;
  if (model.HasStage("encoder")) {
    ASSIGN_OR_RETURN(EncoderStageClient* encoder, options_.stages->Encoder(service_of("encoder")));
    emit(StageEvent("encoder", v1::StageEvent::STARTED));
    const absl::Time t0 = absl::Now();
    encode_req.set_request_id(accepted.request_id());
    encode_req.set_model(accepted.model());
    encode_req.set_prompt(request.prompt());
    encode_req.set_negative_prompt(request.negative_prompt());
    trace.Bytes("encoder", /*sent=*/true, encode_req);
    encoder_done.Arm();
    encoder->EncodeAsync(ctx, encode_req, [&, t0](absl::StatusOr<v1::EncodeResponse> result) {
      encoded = std::move(result);
      encoder_seconds = Seconds(t0);
      if (encoded.ok()) {
        trace.Bytes("encoder", /*sent=*/false, *encoded);
        if (denoise_stream != nullptr) {
          v1::DenoiseInput in;
          *in.mutable_embeddings() = *encoded;
          hand_over(in);
        }
        emit(StageEvent("encoder", v1::StageEvent::FINISHED, encoder_seconds));
      } else {
        ctx.Cancel();  // fail fast: stop the AR stage too
      }
      encoder_done.Release();
    });
  }

  v1::Tensor prior_tokens;
  int prior_count = 0;
  if (model.HasStage("ar")) {
    ASSIGN_OR_RETURN(ArStageClient* ar, options_.stages->Ar(service_of("ar")));
    emit(StageEvent("ar", v1::StageEvent::STARTED));
    const absl::Time t0 = absl::Now();
    v1::ArRequest req;
    req.set_request_id(accepted.request_id());
    req.set_model(accepted.model());
    req.set_prompt(request.prompt());
    req.set_height(accepted.height());
    req.set_width(accepted.width());
    req.set_seed(accepted.seed());
    trace.Bytes("ar", /*sent=*/true, req);
    bool done = false;
    // Chunks are handled where they arrive (the transport's thread; nothing there blocks);
    // this thread only waits for the end of the stream.
    absl::Status s;
    Pending ar_done;
    ar_done.Arm();
    ar->GenerateAsync(ctx, req, [&](const v1::ArTokenChunk& chunk) {
      trace.Bytes("ar", /*sent=*/false, chunk);
      prior_count = chunk.offset() + chunk.tokens_size();
      v1::GenerateEvent e;
      e.mutable_ar_progress()->set_tokens_generated(prior_count);
      e.mutable_ar_progress()->set_tokens_total(chunk.total());
      emit(e);
      if (chunk.done()) {
        prior_tokens = chunk.prior_tokens();
        done = true;
      }
      if (denoise_stream != nullptr) {
        v1::DenoiseInput in;
        *in.mutable_ar_tokens() = chunk;
        in.mutable_ar_tokens()->clear_prior_tokens();  // the tokens say it all
        hand_over(in);
      }
    }, [&](absl::Status end) {
      s = std::move(end);
      ar_done.Release();
    });
    ar_done.Wait();
    if (s.ok() && !done) s = absl::InternalError("stage 'ar' ended its stream without a final chunk");
    if (!s.ok()) {
      ctx.Cancel();
      encoder_done.Wait();
      // Report the encoder's error if it failed first and caused the cancel.
      if (!encoded.ok() && s.code() == absl::StatusCode::kCancelled) s = encoded.status();
      return end_stream(s);
    }
    const double ar_seconds = Seconds(t0);
    add_timing("ar", ar_seconds);
    trace.StageFinished("ar", ar_seconds);
    emit(StageEvent("ar", v1::StageEvent::FINISHED, ar_seconds));
  }
  encoder_done.Wait();
  if (!encoded.ok()) return end_stream(encoded.status());
  if (model.HasStage("encoder")) {
    add_timing("encoder", encoder_seconds);
    trace.StageFinished("encoder", encoder_seconds);
  }
  if (absl::Status live = ctx.Check("orchestrator"); !live.ok()) return end_stream(live);

  emit(StageEvent("denoise", v1::StageEvent::STARTED));
  const absl::Time t0 = absl::Now();
  v1::DenoiseEvent::Result result;
  bool have_result = false;
  auto on_denoise_event = [&](const v1::DenoiseEvent& e) {
    trace.Bytes("denoise", /*sent=*/false, e);
    if (e.has_step()) {
      v1::GenerateEvent g;
      g.mutable_denoise_progress()->set_step(e.step().step());
      g.mutable_denoise_progress()->set_total_steps(e.step().total_steps());
      emit(g);
    } else if (e.has_result()) {
      result = e.result();
      have_result = true;
    }
  };
  if (denoise_stream != nullptr) {
    denoise_stream->CloseInputs(absl::OkStatus());
    RETURN_IF_ERROR(denoise_stream->Finish(on_denoise_event));
  } else {
    *denoise_req.mutable_prior_tokens() = std::move(prior_tokens);
    *denoise_req.mutable_prompt_embeds() = std::move(*encoded->mutable_prompt_embeds());
    *denoise_req.mutable_negative_prompt_embeds() =
        std::move(*encoded->mutable_negative_prompt_embeds());
    trace.Bytes("denoise", /*sent=*/true, denoise_req);
    RETURN_IF_ERROR(denoise->Denoise(ctx, denoise_req, on_denoise_event));
  }
  if (!have_result || result.png().empty()) {
    return absl::InternalError("stage 'denoise' returned no image");
  }
  const double denoise_seconds = Seconds(t0);
  emit(StageEvent("denoise", v1::StageEvent::FINISHED, denoise_seconds));
  add_timing("denoise", result.denoise_seconds());
  add_timing("vae_decode", result.vae_decode_seconds());
  if (trace.on()) {
    trace.StageFinished("denoise", result.denoise_seconds());
    trace.StageFinished("vae_decode", result.vae_decode_seconds());
    // Wire, (de)serialisation and waiting for the denoise group: what the stage did not
    // report as its own compute. Left out when the stage reported no times.
    if (result.denoise_seconds() > 0) {
      trace.StageFinished("transfer", std::max(0.0, denoise_seconds - result.denoise_seconds() -
                                                        result.vae_decode_seconds()));
    }
  }
  meta.set_prior_tokens(prior_count);
  meta.set_total_seconds(Seconds(start));
  v1::GenerateEvent final_event;
  final_event.mutable_result()->set_png(std::move(*result.mutable_png()));
  if (request.include_latents()) {
    *final_event.mutable_result()->mutable_latents() = std::move(*result.mutable_latents());
  }
  *final_event.mutable_result()->mutable_metadata() = std::move(meta);
  emit(final_event);
  return absl::OkStatus();
}

}  // namespace diffmesh
