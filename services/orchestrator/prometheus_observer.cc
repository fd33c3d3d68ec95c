#include "services/orchestrator/prometheus_observer.h"

#include "common/metrics/metrics.h"

namespace diffmesh {

using metrics::CodeLabel;
using metrics::LatencyBuckets;

PrometheusRequestObserver::PrometheusRequestObserver(prometheus::Registry& registry,
                                                     const std::vector<std::string>& models)
    : families_(registry),
      waiting_(families_.waiting.Add({{"stage", metrics::kStageOrchestrator}})) {
  for (const std::string& model : models) {
    families_.in_flight.Add({{"model", model}});
    families_.requests.Add({{"model", model}, {"code", CodeLabel(absl::StatusCode::kOk)}});
  }
}

void PrometheusRequestObserver::RequestArrived() { waiting_.Increment(); }

void PrometheusRequestObserver::RequestAccepted(const std::string& model) {
  families_.in_flight.Add({{"model", model}}).Increment();
}

void PrometheusRequestObserver::FirstStageStarted(const std::string& /*model*/,
                                                  double /*queue_seconds*/) {
  // The queue time is observed whole when the request ends (RequestFinished): the stages'
  // part (waiting for the denoise group) is known only then.
  waiting_.Decrement();
}

void PrometheusRequestObserver::FirstProgress(const std::string& model, double seconds) {
  families_.time_to_first_event.Add({{"model", model}}, LatencyBuckets()).Observe(seconds);
}

void PrometheusRequestObserver::StageFinished(const std::string& model, const std::string& stage,
                                              double seconds) {
  families_.stage_duration.Add({{"model", model}, {"stage", stage}}, LatencyBuckets())
      .Observe(seconds);
}

void PrometheusRequestObserver::StageBytes(const std::string& stage, bool sent, int64_t bytes) {
  families_.stage_bytes
      .Add({{"stage", stage},
            {"direction", sent ? metrics::kDirectionSent : metrics::kDirectionReceived}})
      .Increment(static_cast<double>(bytes));
}

void PrometheusRequestObserver::MediaGenerated(const std::string& model, const Media& media,
                                               double seconds) {
  if (media.video_frames > 0) {
    families_.video_frames.Add({{"model", model}}).Increment(static_cast<double>(media.video_frames));
    families_.video_seconds.Add({{"model", model}}).Increment(media.video_seconds);
    families_.video_frame_seconds.Add({{"model", model}}, LatencyBuckets())
        .Observe(seconds / static_cast<double>(media.video_frames));
  }
  if (media.audio_seconds > 0) {
    families_.audio_seconds.Add({{"model", model}}).Increment(media.audio_seconds);
  }
}

void PrometheusRequestObserver::RequestFinished(const Outcome& o) {
  if (!o.started) waiting_.Decrement();
  // Every request that started waited this long, whatever its outcome.
  if (o.started) {
    families_.queue_duration.Add({{"model", o.model}}, LatencyBuckets()).Observe(o.queue_seconds);
  }
  if (o.accepted) families_.in_flight.Add({{"model", o.model}}).Decrement();
  families_.requests.Add({{"model", o.model}, {"code", CodeLabel(o.code)}}).Increment();
  if (o.code == absl::StatusCode::kOk) {
    families_.request_duration.Add({{"model", o.model}}, LatencyBuckets()).Observe(o.seconds);
  }
}

}  // namespace diffmesh
