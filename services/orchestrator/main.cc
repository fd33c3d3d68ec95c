// diffmesh-orchestrator: serves the public GenerationService and calls the stage services.
#include <iostream>

#include "absl/flags/flag.h"
#include "common/flags/flags.h"
#include "common/config/pipeline_config.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server.h"
#include "services/orchestrator/generation_service.h"
#include "services/orchestrator/grpc_stage_client.h"
#include "services/orchestrator/prometheus_observer.h"

ABSL_FLAG(int, port, 50051, "Port of the public GenerationService.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(std::string, pipeline, "",
          "Pipeline config (JSON: models, limits, stage → service, service addresses). "
          "Empty: the built-in glm-image-tiny pipeline on 127.0.0.1:50052..50054.");
ABSL_FLAG(std::string, ar_address, "", "Overrides the address of service 'ar'.");
ABSL_FLAG(std::string, encoder_address, "", "Overrides the address of service 'encoder'.");
ABSL_FLAG(std::string, denoise_address, "", "Overrides the address of service 'denoise'.");
ABSL_FLAG(int, metrics_port, 0, "Port of the Prometheus /metrics endpoint (on --host); 0: off.");

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
      "diffmesh-orchestrator --port P [--pipeline FILE] [--ar-address H:P ...] (dashes or underscores)\n"
      "Serves diffmesh.v1.GenerationService: validates requests, runs the pipeline's stages\n"
      "(AR tokens, encoder, denoise) over gRPC and streams progress and the PNG result.");
  diffmesh::BlockTerminationSignals();

  const std::string path = absl::GetFlag(FLAGS_pipeline);
  auto pipeline = path.empty() ? diffmesh::PipelineConfig::Parse(diffmesh::PipelineConfig::DefaultJson())
                               : diffmesh::PipelineConfig::Load(path);
  if (!pipeline.ok()) {
    std::cerr << "diffmesh-orchestrator: " << pipeline.status().message() << "\n";
    return 2;
  }
  for (auto [name, flag] : {std::pair{"ar", absl::GetFlag(FLAGS_ar_address)},
                            std::pair{"encoder", absl::GetFlag(FLAGS_encoder_address)},
                            std::pair{"denoise", absl::GetFlag(FLAGS_denoise_address)}}) {
    if (!flag.empty()) pipeline->services[name] = flag;
  }
  auto exposer = diffmesh::metrics::StartMetricsExposer(
      "diffmesh-orchestrator", absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port));
  if (!exposer.ok()) {
    std::cerr << "diffmesh-orchestrator: " << exposer.status().message() << "\n";
    return 2;
  }
  std::unique_ptr<diffmesh::PrometheusRequestObserver> observer;
  if (*exposer != nullptr) {
    std::vector<std::string> models;
    for (const auto& m : pipeline->models) models.push_back(m.name);
    observer = std::make_unique<diffmesh::PrometheusRequestObserver>((*exposer)->registry(), models);
  }
  diffmesh::GrpcStageClientFactory stages(pipeline->services);
  auto core = diffmesh::OrchestratorCore::Create({*pipeline, &stages, observer.get()});
  if (!core.ok()) {
    std::cerr << "diffmesh-orchestrator: " << core.status().message() << "\n";
    return 2;
  }
  diffmesh::GenerationService service(core->get());
  diffmesh::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.health_service_names = {"diffmesh.v1.GenerationService"};
  return diffmesh::ServeUntilSignal("diffmesh-orchestrator", {&service}, options);
}
