// RequestObserver recording the request metric families (common/metrics/families.h) in a
// Prometheus registry.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_PROMETHEUS_OBSERVER_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_PROMETHEUS_OBSERVER_H_

#include <string>
#include <vector>

#include "common/metrics/families.h"
#include "prometheus/registry.h"
#include "services/orchestrator/request_observer.h"

namespace diffmesh {

class PrometheusRequestObserver final : public RequestObserver {
 public:
  // Registers the families in `registry` (which must outlive this). The series of `models`
  // (the pipeline's) that dashboards plot from the start exist at zero before any request.
  PrometheusRequestObserver(prometheus::Registry& registry, const std::vector<std::string>& models);

  void RequestArrived() override;
  void RequestAccepted(const std::string& model) override;
  void FirstStageStarted(const std::string& model, double queue_seconds) override;
  void FirstProgress(const std::string& model, double seconds) override;
  void StageFinished(const std::string& model, const std::string& stage, double seconds) override;
  void StageBytes(const std::string& stage, bool sent, int64_t bytes) override;
  void MediaGenerated(const std::string& model, const Media& media, double seconds) override;
  void RequestFinished(const Outcome& outcome) override;

 private:
  metrics::RequestFamilies families_;
  prometheus::Gauge& waiting_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_PROMETHEUS_OBSERVER_H_
