#include "services/orchestrator/stage_health.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace diffmesh {
namespace {

// The health name each stage service registers (services/*/main.cc).
std::string HealthName(const std::string& kind) {
  if (kind == "ar") return "diffmesh.v1.ArTokenService";
  if (kind == "encoder") return "diffmesh.v1.EncoderService";
  return "diffmesh.v1.DenoiseService";
}

}  // namespace

std::vector<StageHealthTarget> StageHealthTargets(const PipelineConfig& pipeline) {
  std::set<std::pair<std::string, std::string>> seen;
  std::vector<StageHealthTarget> targets;
  for (const PipelineModel& m : pipeline.models) {
    for (const StageSpec& s : m.stages) {
      auto address = pipeline.services.find(s.service);
      if (address == pipeline.services.end()) continue;  // Parse rejects such configs
      StageHealthTarget t{address->second, HealthName(s.kind)};
      if (seen.insert({t.address, t.health_name}).second) targets.push_back(std::move(t));
    }
  }
  return targets;
}

struct StageHealthMonitor::Probe {
  StageHealthTarget target;
  std::unique_ptr<grpc::health::v1::Health::Stub> stub;
};

StageHealthMonitor::StageHealthMonitor(std::vector<StageHealthTarget> targets,
                                       const ChannelOptions& channel, absl::Duration interval,
                                       OnChange on_change)
    : interval_(interval), on_change_(std::move(on_change)) {
  for (StageHealthTarget& t : targets) {
    auto stub = grpc::health::v1::Health::NewStub(CreateChannel(t.address, channel));
    probes_.push_back(new Probe{std::move(t), std::move(stub)});
  }
  thread_ = std::thread([this] { Run(); });
}

StageHealthMonitor::~StageHealthMonitor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  for (Probe* p : probes_) delete p;
}

void StageHealthMonitor::Run() {
  const absl::Duration deadline = std::max(interval_, absl::Seconds(1));
  std::optional<bool> reported;
  while (true) {
    std::string why;
    for (Probe* p : probes_) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
      grpc::health::v1::HealthCheckRequest request;
      request.set_service(p->target.health_name);
      grpc::health::v1::HealthCheckResponse response;
      grpc::Status s = p->stub->Check(&ctx, request, &response);
      if (!s.ok()) {
        why = absl::StrCat(p->target.health_name, " at ", p->target.address, ": ",
                           s.error_message());
      } else if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
        why = absl::StrCat(p->target.health_name, " at ", p->target.address, ": ",
                           grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                               response.status()));
      }
      if (!why.empty()) break;
    }
    const bool serving = why.empty();
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_) return;
    if (reported != serving) {
      reported = serving;
      on_change_(serving, why);
    }
    cv_.wait_for(lock, absl::ToChronoMilliseconds(interval_), [this] { return stop_; });
    if (stop_) return;
  }
}

}  // namespace diffmesh
