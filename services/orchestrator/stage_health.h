// Health gating: the orchestrator serves generations only while every stage service that its
// pipeline uses reports SERVING. A background thread polls each stage's grpc.health.v1 and
// reports when the aggregate changes; main.cc turns that into the orchestrator's own
// "diffmesh.v1.GenerationService" health status (load balancers and `diffmesh up` wait for it).
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_HEALTH_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_HEALTH_H_

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "common/config/pipeline_config.h"
#include "common/rpc/server.h"

namespace diffmesh {

struct StageHealthTarget {
  std::string address;      // "host:port"
  std::string health_name;  // e.g. "diffmesh.v1.DenoiseService"
};

// One target per (address, stage API) that some model's stage graph uses, in a stable order.
std::vector<StageHealthTarget> StageHealthTargets(const PipelineConfig& pipeline);

class StageHealthMonitor {
 public:
  // `serving`: every target answered SERVING in the last round. `why`: the first target that
  // did not and what it answered (empty when serving).
  using OnChange = std::function<void(bool serving, const std::string& why)>;

  // Starts polling at once, every `interval` (each check's deadline is `interval` too, at least
  // 1 s); `on_change` runs on the monitor's thread after the first round and whenever the
  // aggregate changes. `channel`: the stage channels' TLS.
  StageHealthMonitor(std::vector<StageHealthTarget> targets, const ChannelOptions& channel,
                     absl::Duration interval, OnChange on_change);
  // Stops and joins the thread; `on_change` is not called afterwards.
  ~StageHealthMonitor();

  StageHealthMonitor(const StageHealthMonitor&) = delete;
  StageHealthMonitor& operator=(const StageHealthMonitor&) = delete;

 private:
  void Run();

  struct Probe;
  std::vector<Probe*> probes_;
  const absl::Duration interval_;
  const OnChange on_change_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_HEALTH_H_
