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

void PrometheusRequestObserver::FirstStageStarted(const std::string& model, double queue_seconds) {
  waiting_.Decrement();
  families_.queue_duration.Add({{"model", model}}, LatencyBuckets()).Observe(queue_seconds);
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

void PrometheusRequestObserver::RequestFinished(const Outcome& o) {
  if (!o.started) waiting_.Decrement();
  if (o.accepted) families_.in_flight.Add({{"model", o.model}}).Decrement();
  families_.requests.Add({{"model", o.model}, {"code", CodeLabel(o.code)}}).Increment();
  if (o.code == absl::StatusCode::kOk) {
    families_.request_duration.Add({{"model", o.model}}, LatencyBuckets()).Observe(o.seconds);
  }
}

}  // namespace diffmesh
