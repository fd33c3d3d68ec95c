// Reports one request to the RequestObserver; does nothing without one. Accepted and Finish
// run on the request's thread, OnEvent under the run's emit lock; StageFinished and Bytes only
// read constant state and StageQueued takes its own lock, so stage callbacks on the transports'
// threads may call them.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_TRACE_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_TRACE_H_

#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "diffmesh/v1/generation.pb.h"
#include "services/orchestrator/request_observer.h"

namespace diffmesh {

class RequestTrace {
 public:
  RequestTrace(RequestObserver* observer, std::string model)
      : observer_(observer), arrival_(absl::Now()) {
    outcome_.model = std::move(model);
    if (observer_ != nullptr) observer_->RequestArrived();
  }
  RequestTrace(const RequestTrace&) = delete;
  RequestTrace& operator=(const RequestTrace&) = delete;

  bool on() const { return observer_ != nullptr; }

  void Accepted() {
    outcome_.accepted = true;
    if (observer_ != nullptr) observer_->RequestAccepted(outcome_.model);
  }

  // Called with every event the request emits, in order.
  void OnEvent(const v1::GenerateEvent& e) {
    if (observer_ == nullptr) return;
    if (!outcome_.started && e.has_stage() && e.stage().kind() == v1::StageEvent::KIND_STARTED) {
      outcome_.started = true;
      orchestrator_queue_seconds_ = SinceArrival();
      observer_->FirstStageStarted(outcome_.model, orchestrator_queue_seconds_);
    }
    if (!saw_progress_ && e.has_progress()) {
      saw_progress_ = true;
      observer_->FirstProgress(outcome_.model, SinceArrival());
    }
    if (e.has_result()) {
      const RequestObserver::Media media = MediaOf(e.result());
      if (media.video_frames > 0 || media.audio_seconds > 0) {
        observer_->MediaGenerated(outcome_.model, media, SinceArrival());
      }
    }
  }

  // A stage reported that the request waited `seconds` for its turn there (the denoise
  // group): queue time beyond the orchestrator's.
  void StageQueued(double seconds) {
    if (observer_ == nullptr || !(seconds > 0)) return;
    std::lock_guard<std::mutex> lock(queued_mu_);
    stage_queue_seconds_ += seconds;
  }

  // The video and sound in a result's outputs. An MP4's sound track is cut or padded to the
  // clip (frames / frame rate); RAW audio is a FLOAT32 [channels, samples] tensor.
  static RequestObserver::Media MediaOf(const v1::GenerateResult& result) {
    RequestObserver::Media media;
    for (const v1::Output& out : result.outputs()) {
      const v1::OutputInfo& info = out.info();
      const bool video = info.kind() == v1::OUTPUT_KIND_VIDEO ||
                         (info.kind() == v1::OUTPUT_KIND_TENSOR && info.name() == "frames");
      const double clip = info.frame_rate() > 0 ? info.frames() / info.frame_rate() : 0.0;
      if (video) {
        media.video_frames += info.frames();
        media.video_seconds += clip;
        if (info.kind() == v1::OUTPUT_KIND_VIDEO && info.audio_sample_rate() > 0 &&
            info.audio_channels() > 0) {
          media.audio_seconds += clip;
        }
      } else if ((info.kind() == v1::OUTPUT_KIND_AUDIO || info.name() == "audio") &&
                 info.audio_sample_rate() > 0) {
        if (info.kind() == v1::OUTPUT_KIND_TENSOR && info.tensor_shape_size() > 0) {
          media.audio_seconds += static_cast<double>(info.tensor_shape(info.tensor_shape_size() - 1)) /
                                 info.audio_sample_rate();
        } else {
          media.audio_seconds += clip;
        }
      }
    }
    return media;
  }

  void StageFinished(const std::string& stage, double seconds) {
    if (observer_ != nullptr) observer_->StageFinished(outcome_.model, stage, seconds);
  }

  // Serialized size of a message to or from a stage.
  void Bytes(const std::string& stage, bool sent, const google::protobuf::MessageLite& m) {
    if (observer_ != nullptr) {
      observer_->StageBytes(stage, sent, static_cast<int64_t>(m.ByteSizeLong()));
    }
  }

  void Finish(const absl::Status& status) {
    if (observer_ == nullptr) return;
    outcome_.code = status.code();
    outcome_.seconds = SinceArrival();
    {
      std::lock_guard<std::mutex> lock(queued_mu_);
      outcome_.queue_seconds = orchestrator_queue_seconds_ + stage_queue_seconds_;
    }
    observer_->RequestFinished(outcome_);
  }

 private:
  double SinceArrival() const { return absl::ToDoubleSeconds(absl::Now() - arrival_); }

  RequestObserver* const observer_;
  const absl::Time arrival_;
  RequestObserver::Outcome outcome_;
  bool saw_progress_ = false;
  double orchestrator_queue_seconds_ = 0;  // arrival to the first stage's start
  std::mutex queued_mu_;
  double stage_queue_seconds_ = 0;  // guarded by queued_mu_
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_TRACE_H_
