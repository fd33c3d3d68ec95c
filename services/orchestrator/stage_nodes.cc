#include "services/orchestrator/stage_nodes.h"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status/status_macros.h"

namespace diffmesh {
namespace {

double Since(absl::Time t) { return absl::ToDoubleSeconds(absl::Now() - t); }

// The outcome of a call that runs on the transport's threads: Set once when it ends, Wait (or
// the destructor) before what the call uses dies.
class CallOutcome {
 public:
  CallOutcome() = default;
  CallOutcome(const CallOutcome&) = delete;
  CallOutcome& operator=(const CallOutcome&) = delete;
  ~CallOutcome() { Wait().IgnoreError(); }  // only waits: the status went to the run

  void Arm() { running_ = true; }
  void Set(absl::Status status) {
    // Notified under the lock: once Wait() sees the end, nothing here touches *this.
    std::lock_guard<std::mutex> lock(mu_);
    status_ = std::move(status);
    running_ = false;
    done_.notify_all();
  }
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return !running_; });
    return status_;
  }

 private:
  std::mutex mu_;
  std::condition_variable done_;
  bool running_ = false;
  absl::Status status_;
};

// "ar": the prior-token stage. Streams token chunks to its consumers as they come.
class ArNode final : public StageNode {
 public:
  ArNode(PipelineRun& run, const StageSpec& spec, ArStageClient* client)
      : StageNode(run, spec), client_(client) {}

  absl::Status Start() override {
    const v1::GenerateRequest& a = run_.accepted();
    request_.set_request_id(a.request_id());
    request_.set_model(a.model());
    request_.set_prompt(a.prompt());
    request_.set_height(a.height());
    request_.set_width(a.width());
    request_.set_seed(a.seed());
    *request_.mutable_inputs() = a.inputs();
    run_.trace().Bytes(spec_.name, /*sent=*/true, request_);
    run_.EmitStage(spec_, v1::StageEvent::KIND_STARTED);
    start_ = absl::Now();
    outcome_.Arm();
    client_->GenerateAsync(
        run_.ctx(), request_, [this](const v1::ArTokenChunk& chunk) { OnChunk(chunk); },
        [this](absl::Status status) { OnDone(std::move(status)); });
    return absl::OkStatus();
  }

  absl::Status Wait() override { return outcome_.Wait(); }

 private:
  // On the transport's thread, in order; nothing here blocks.
  void OnChunk(const v1::ArTokenChunk& chunk) {
    run_.trace().Bytes(spec_.name, /*sent=*/false, chunk);
    tokens_ = chunk.offset() + chunk.tokens_size();
    run_.EmitProgress(spec_, "token", tokens_, chunk.total());
    saw_end_ |= chunk.done();
    StageOutput piece;
    piece.ar_chunk = &chunk;
    run_.Publish(*this, piece);
  }

  void OnDone(absl::Status status) {
    if (status.ok() && !saw_end_) {
      status = absl::InternalError(
          absl::StrCat("stage '", spec_.name, "' ended its stream without a final chunk"));
    }
    if (status.ok()) {
      const double seconds = Since(start_);
      run_.CountPriorTokens(tokens_);
      run_.StageTookSeconds(spec_, seconds);
    }
    run_.Finished(*this, status);
    outcome_.Set(std::move(status));
  }

  ArStageClient* const client_;
  v1::ArRequest request_;
  absl::Time start_;
  int tokens_ = 0;
  bool saw_end_ = false;
  CallOutcome outcome_;
};

// "encoder": the text encoders. Hands its whole output to its consumers.
class EncoderNode final : public StageNode {
 public:
  EncoderNode(PipelineRun& run, const StageSpec& spec, EncoderStageClient* client)
      : StageNode(run, spec), client_(client) {}

  absl::Status Start() override {
    const v1::GenerateRequest& a = run_.accepted();
    request_.set_request_id(a.request_id());
    request_.set_model(a.model());
    request_.set_prompt(a.prompt());
    request_.set_negative_prompt(a.negative_prompt());
    *request_.mutable_guidance() = a.guidance();  // whether a negative branch will run
    run_.trace().Bytes(spec_.name, /*sent=*/true, request_);
    run_.EmitStage(spec_, v1::StageEvent::KIND_STARTED);
    start_ = absl::Now();
    outcome_.Arm();
    client_->EncodeAsync(run_.ctx(), request_, [this](absl::StatusOr<v1::EncodeResponse> out) {
      OnDone(std::move(out));
    });
    return absl::OkStatus();
  }

  absl::Status Wait() override { return outcome_.Wait(); }

 private:
  void OnDone(absl::StatusOr<v1::EncodeResponse> out) {
    if (out.ok()) {
      const double seconds = Since(start_);
      run_.trace().Bytes(spec_.name, /*sent=*/false, *out);
      StageOutput piece;
      piece.embeddings = &*out;
      run_.Publish(*this, piece);
      run_.StageTookSeconds(spec_, seconds);
    }
    run_.Finished(*this, out.status());
    outcome_.Set(out.status());
  }

  EncoderStageClient* const client_;
  v1::EncodeRequest request_;
  absl::Time start_;
  CallOutcome outcome_;
};

// The stage kinds the denoise service answers: "denoise" (the denoise group; decoding its
// own latents when no "decode" stage follows); "upsample", the model's latent upsampler (a
// DenoiseRequest with `upsample` set) and "decode", the model's decoders on a denoise stage's
// latents (`decode` set), both beside the group's rank 0 or in a --role decode service.
// Without consumers its outputs are the request's; with consumers it asks for LATENTS and hands
// them on whole (StageOutput::latents) once its call has ended. Streamed (stream_inputs): the
// call opens at Start and takes each producer's piece as it comes; else it runs once every
// producer has finished, with their outputs in one request.
class DenoiseNode final : public StageNode {
 public:
  DenoiseNode(PipelineRun& run, const StageSpec& spec, DenoiseStageClient* client)
      : StageNode(run, spec), client_(client) {
    const v1::GenerateRequest& a = run_.accepted();
    request_.set_request_id(a.request_id());
    request_.set_model(a.model());
    if (spec_.kind == "upsample") {
      request_.mutable_upsample()->set_adain_factor(spec_.adain_factor);
      request_.mutable_upsample()->set_tone_map_compression_ratio(
          spec_.tone_map_compression_ratio);
      return;
    }
    if (spec_.kind == "decode") {  // the media the latents make, and the format asked for
      request_.mutable_decode();
      request_.set_height(a.height());
      request_.set_width(a.width());
      request_.set_num_frames(a.num_frames());
      request_.set_frame_rate(a.frame_rate());
      *request_.mutable_output() = a.output();
      return;
    }
    // Divisible: PipelineRun checked the request's size against every stage's divisor.
    request_.set_height(a.height() / spec_.size_divisor);
    request_.set_width(a.width() / spec_.size_divisor);
    request_.set_steps(spec_.sigmas.empty() ? a.steps() : static_cast<int>(spec_.sigmas.size()));
    for (double sigma : spec_.sigmas) request_.add_sigmas(sigma);
    request_.set_noise_scale(spec_.noise_scale);
    if (!spec_.lora.empty()) {
      request_.mutable_lora()->set_name(spec_.lora);
      request_.mutable_lora()->set_strength(spec_.lora_strength);
    }
    request_.set_seed(a.seed());
    request_.set_num_frames(a.num_frames());  // video models; 0 for images
    request_.set_frame_rate(a.frame_rate());
    if (!spec_.unguided) *request_.mutable_guidance() = a.guidance();  // unset: no guidance
    *request_.mutable_output() = a.output();
    *request_.mutable_inputs() = a.inputs();
  }

  absl::Status Start() override {
    hands_on_ = run_.HasConsumers(*this);
    if (hands_on_) {
      v1::OutputOptions latents;
      latents.set_format(v1::OUTPUT_FORMAT_LATENTS);
      *request_.mutable_output() = latents;
    }
    run_.EmitStage(spec_, v1::StageEvent::KIND_STARTED);
    start_ = absl::Now();
    if (!spec_.stream_inputs) return absl::OkStatus();  // Wait makes the call
    ASSIGN_OR_RETURN(stream_, client_->OpenStream(run_.ctx()));
    v1::DenoiseInput head;
    *head.mutable_request() = request_;
    Send(head);
    return absl::OkStatus();
  }

  void Take(const StageOutput& piece) override {
    if (stream_ != nullptr) {
      v1::DenoiseInput in;
      if (piece.ar_chunk != nullptr) {
        *in.mutable_ar_tokens() = *piece.ar_chunk;
        in.mutable_ar_tokens()->clear_prior_tokens();  // the tokens say it all
      } else if (piece.embeddings != nullptr) {
        *in.mutable_embeddings() = *piece.embeddings;
      } else {
        return;  // latents are not streamed (the stage's request would have to carry them)
      }
      Send(in);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);  // producers publish from their own threads
    if (piece.ar_chunk != nullptr && piece.ar_chunk->condition_prior_tokens_size() > 0) {
      *request_.mutable_condition_prior_tokens() = piece.ar_chunk->condition_prior_tokens();
    }
    if (piece.ar_chunk != nullptr && piece.ar_chunk->done()) {
      *request_.mutable_prior_tokens() = piece.ar_chunk->prior_tokens();
    } else if (piece.embeddings != nullptr) {
      *request_.mutable_prompt_embeds() = piece.embeddings->prompt_embeds();
      *request_.mutable_negative_prompt_embeds() = piece.embeddings->negative_prompt_embeds();
    } else if (piece.latents != nullptr) {
      *request_.mutable_latents() = *piece.latents;
    }
  }

  void InputsDone(const absl::Status& status) override {
    if (stream_ != nullptr) stream_->CloseInputs(status);
  }

  absl::Status Wait() override {
    const auto on_event = [this](const v1::DenoiseEvent& e) { OnEvent(e); };
    absl::Status status;
    if (stream_ != nullptr) {
      status = stream_->Finish(on_event);
      stream_.reset();
    } else {
      run_.trace().Bytes(spec_.name, /*sent=*/true, request_);
      status = client_->Denoise(run_.ctx(), request_, on_event);
    }
    if (status.ok() && (!have_result_ || outputs_ == 0)) {
      status = absl::InternalError(absl::StrCat("stage '", spec_.name, "' returned no output"));
    }
    if (status.ok() && hands_on_) status = HandOn();
    if (status.ok()) Report();
    if (hands_on_) run_.Finished(*this, status);
    return status;
  }

 private:
  // A failed hand-over means the call has ended: the other stages stop, and Wait tells why.
  void Send(const v1::DenoiseInput& in) {
    run_.trace().Bytes(spec_.name, /*sent=*/true, in);
    if (!stream_->Send(in).ok()) run_.ctx().Cancel();
  }

  void OnEvent(const v1::DenoiseEvent& e) {
    run_.trace().Bytes(spec_.name, /*sent=*/false, e);
    if (e.has_progress()) {
      run_.EmitProgress(spec_, "step", e.progress().done(), e.progress().total());
    } else if (e.has_output()) {
      if (e.output().has_info()) ++outputs_;
      if (hands_on_) {
        Collect(e.output());
      } else {
        run_.EmitOutput(*this, e.output());
      }
    } else if (e.has_result()) {
      result_ = e.result();
      have_result_ = true;
    }
  }

  // A LATENTS output chunk of a stage that hands its latents on: gathered by output index.
  void Collect(const v1::OutputChunk& chunk) {
    if (chunk.has_info()) {
      CollectedTensor& c = collected_[chunk.index()];
      c.name = chunk.info().name();
      c.tensor.set_dtype(chunk.info().tensor_dtype());
      *c.tensor.mutable_shape() = chunk.info().tensor_shape();
    }
    collected_[chunk.index()].tensor.mutable_data()->append(chunk.data());
  }

  // The gathered latents, to the consumers.
  absl::Status HandOn() {
    v1::StageLatents latents;
    for (auto& [index, c] : collected_) {
      if (c.name == "video_latents") {
        *latents.mutable_video_latents() = std::move(c.tensor);
      } else if (c.name == "audio_latents") {
        *latents.mutable_audio_latents() = std::move(c.tensor);
      } else if (c.name == "latents") {
        *latents.mutable_image_latents() = std::move(c.tensor);
      } else {
        return absl::InternalError(absl::StrCat("stage '", spec_.name, "' handed on output '",
                                                c.name, "', which is not a latent"));
      }
    }
    if (!latents.has_video_latents() && !latents.has_image_latents()) {
      return absl::InternalError(
          absl::StrCat("stage '", spec_.name, "' made no latents for its consumers"));
    }
    collected_.clear();
    StageOutput piece;
    piece.latents = &latents;
    run_.Publish(*this, piece);
    return absl::OkStatus();
  }

  // Timings: the stage's own compute under its name (a "decode" stage's is its decode time),
  // a decode made inside a denoise stage's call as "vae_decode"; and, for the stage whose
  // outputs are the request's, the rest of its call's wall time (wire, (de)serialisation) to
  // the observer as "transfer" — left out when the stage reported no times. Waiting for the
  // denoise group is queue time (StageQueued).
  void Report() {
    const double seconds = Since(start_);
    run_.EmitStage(spec_, v1::StageEvent::KIND_FINISHED, seconds);
    const bool decode_stage = spec_.kind == "decode";
    const double own = decode_stage ? result_.vae_decode_seconds() : result_.denoise_seconds();
    const double inner_decode = decode_stage ? 0.0 : result_.vae_decode_seconds();
    run_.AddTiming(spec_.name, own);
    run_.trace().StageFinished(spec_.name, own);
    run_.trace().StageQueued(result_.queue_seconds());  // waiting for the denoise group
    if (!decode_stage && !hands_on_) {
      run_.AddTiming("vae_decode", inner_decode);
      run_.trace().StageFinished("vae_decode", inner_decode);
    }
    if (!hands_on_ && own > 0) {
      run_.trace().StageFinished(
          "transfer", std::max(0.0, seconds - own - inner_decode - result_.queue_seconds()));
    }
  }

  DenoiseStageClient* const client_;
  std::mutex mu_;
  v1::DenoiseRequest request_;
  std::unique_ptr<DenoiseStream> stream_;
  absl::Time start_;
  v1::DenoiseEvent::Result result_;
  bool have_result_ = false;
  int outputs_ = 0;
  bool hands_on_ = false;  // some stage consumes its outputs
  struct CollectedTensor {
    std::string name;
    v1::Tensor tensor;
  };
  std::map<int, CollectedTensor> collected_;  // by output index
};

}  // namespace

bool StageKindAccepts(const std::string& consumer, const std::string& producer) {
  // Latents go from a denoise stage to an upsample, decode or another denoise stage, and from
  // an upsample stage to a denoise stage.
  if (consumer == "denoise") {
    return producer == "ar" || producer == "encoder" || producer == "upsample" ||
           producer == "denoise";
  }
  return (consumer == "upsample" || consumer == "decode") && producer == "denoise";
}

bool StageKindRunsFor(const std::string& kind, const v1::GenerateRequest& accepted) {
  return !(kind == "decode" && accepted.output().format() == v1::OUTPUT_FORMAT_LATENTS);
}

bool StageKindTakesOneProducer(const std::string& kind) {
  return kind == "upsample" || kind == "decode";
}

bool StageKindMakesOutputs(const std::string& kind) {
  return kind == "denoise" || kind == "decode";
}

absl::StatusOr<std::unique_ptr<StageNode>> MakeStageNode(PipelineRun& run, const StageSpec& spec) {
  StageClientFactory& stages = run.stages();
  if (spec.kind == "ar") {
    ASSIGN_OR_RETURN(ArStageClient * client, stages.Ar(spec.service));
    return std::make_unique<ArNode>(run, spec, client);
  }
  if (spec.kind == "encoder") {
    ASSIGN_OR_RETURN(EncoderStageClient * client, stages.Encoder(spec.service));
    return std::make_unique<EncoderNode>(run, spec, client);
  }
  if (spec.kind == "denoise" || spec.kind == "upsample" || spec.kind == "decode") {
    ASSIGN_OR_RETURN(DenoiseStageClient * client, stages.Denoise(spec.service));
    return std::make_unique<DenoiseNode>(run, spec, client);
  }
  return absl::InvalidArgumentError(absl::StrCat("stage '", spec.name, "': unknown kind '",
                                                 spec.kind, "'"));
}

}  // namespace diffmesh
