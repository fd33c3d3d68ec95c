// diffmesh-orchestrator: serves the public GenerationService and calls the stage services.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/synchronization/mutex.h"
#include "common/config/pipeline_config.h"
#include "common/flags/flags.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server.h"
#include "common/rpc/stage_token.h"
#include "common/rpc/tls_flags.h"
#include "common/rpc/token_authenticator.h"
#include "services/orchestrator/generation_service.h"
#include "services/orchestrator/grpc_stage_client.h"
#include "services/orchestrator/orchestrator_core.h"
#include "services/orchestrator/prometheus_observer.h"
#include "services/orchestrator/stage_describe.h"
#include "services/orchestrator/stage_health.h"

ABSL_FLAG(int, port, 50051, "Port of the public GenerationService.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(std::string, pipeline, "",
          "Pipeline config (JSON: models, limits, stage → service, service addresses). "
          "Empty: the built-in glm-image-tiny pipeline on 127.0.0.1:50052..50054.");
ABSL_FLAG(std::string, model_dir, "",
          "Serve one model: the GlmImagePipeline snapshot in this folder, which the stage services "
          "load with their own --model-dir (the pipeline is generated for it; not with --pipeline).");
ABSL_FLAG(std::vector<std::string>, models, {},
          "Serve only these models of the pipeline (comma-separated; default: all of them), for "
          "stage services that serve only those (diffmesh up passes its --model).");
ABSL_FLAG(std::string, ar_address, "", "Overrides the address of service 'ar'.");
ABSL_FLAG(std::string, encoder_address, "", "Overrides the address of service 'encoder'.");
ABSL_FLAG(std::string, denoise_address, "", "Overrides the address of service 'denoise'.");
ABSL_FLAG(int, metrics_port, 0, "Port of the Prometheus /metrics endpoint (on --host); 0: off.");
ABSL_FLAG(std::string, stage_tls_ca, "",
          "Call the stage services over TLS and verify their certificates against the CAs in "
          "this PEM file.");
ABSL_FLAG(std::string, stage_tls_cert, "",
          "Client certificate (PEM) for stage services that require one (their --tls-client-ca); "
          "implies TLS to the stages, with the system's roots unless --stage-tls-ca.");
ABSL_FLAG(std::string, stage_tls_key, "", "PEM private key of --stage-tls-cert.");
ABSL_FLAG(std::string, auth_token_file, "",
          "Require an API token on every GenerationService call (metadata 'authorization: Bearer "
          "<token>'); the file holds the accepted tokens, one per line (blank lines and # "
          "comments skipped). Health and reflection stay open.");

ABSL_FLAG(int, max_queued_requests, diffmesh::kDefaultMaxQueuedRequests,
          "Admission control: requests per model running or waiting at once; one more is "
          "answered RESOURCE_EXHAUSTED at once (with a retry hint). 0: no bound.");

namespace {
constexpr char kGenerationService[] = "diffmesh.v1.GenerationService";

// Asks every stage service for its Describe answer and checks the pipeline against them:
// FAILED_PRECONDITION on a mismatch, UNAVAILABLE when a stage could not be asked. Stage
// services that do not implement Describe are named on stdout and not checked.
absl::Status CheckStagesDescribe(const diffmesh::PipelineConfig& pipeline,
                                 const diffmesh::ChannelOptions& channel) {
  std::vector<std::string> undescribed;
  auto described = diffmesh::DescribeStages(pipeline, channel, absl::Seconds(10), &undescribed);
  if (!described.ok()) return described.status();
  for (const std::string& u : undescribed) {
    std::cout << "diffmesh-orchestrator: stage service " << u
              << " does not implement Describe; its config is not checked" << std::endl;
  }
  return diffmesh::CheckStageDescriptions(pipeline, *described);
}
}  // namespace

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
      "diffmesh-orchestrator --port P [--pipeline FILE] [--ar-address H:P ...] [--tls-cert F\n"
      "    --tls-key F [--tls-client-ca F]] [--stage-tls-ca F] [--auth-token-file F]\n"
      "    (dashes or underscores)\n"
      "Serves diffmesh.v1.GenerationService: validates requests, runs the pipeline's stages\n"
      "(AR tokens, encoder, denoise) over gRPC and streams progress and the PNG result.");
  diffmesh::BlockTerminationSignals();
  // Debian's Abseil is built without NDEBUG, so by default every absl::Mutex (gRPC's locks)
  // updates a process-wide lock-order graph to detect deadlocks: ~2 % of the orchestrator's
  // CPU per request in perf, for a check meant for debug builds.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  const std::string path = absl::GetFlag(FLAGS_pipeline);
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (!path.empty() && !model_dir.empty()) {
    std::cerr << "diffmesh-orchestrator: --pipeline and --model-dir: give one (a pipeline "
                 "config names snapshots with \"path\")\n";
    return 2;
  }
  auto pipeline = !path.empty()      ? diffmesh::PipelineConfig::Load(path)
                  : !model_dir.empty() ? diffmesh::PipelineConfig::ForSnapshot(model_dir)
                                       : diffmesh::PipelineConfig::Parse(
                                             diffmesh::PipelineConfig::DefaultJson());
  if (!pipeline.ok()) {
    std::cerr << "diffmesh-orchestrator: " << pipeline.status().message() << "\n";
    return 2;
  }
  for (auto [name, flag] : {std::pair{"ar", absl::GetFlag(FLAGS_ar_address)},
                            std::pair{"encoder", absl::GetFlag(FLAGS_encoder_address)},
                            std::pair{"denoise", absl::GetFlag(FLAGS_denoise_address)}}) {
    if (!flag.empty()) pipeline->services[name] = flag;
  }
  if (const auto models = absl::GetFlag(FLAGS_models); !models.empty()) {
    if (absl::Status s = pipeline->KeepModels(models); !s.ok()) {
      std::cerr << "diffmesh-orchestrator: --" << s.message() << "\n";
      return 2;
    }
  }
  auto server_tls = diffmesh::ServerTlsFromFlags();
  if (!server_tls.ok()) {
    std::cerr << "diffmesh-orchestrator: " << server_tls.status().message() << "\n";
    return 2;
  }
  diffmesh::ChannelOptions stage_channel;
  {
    auto tls = diffmesh::LoadChannelTls({absl::GetFlag(FLAGS_stage_tls_ca),
                                         absl::GetFlag(FLAGS_stage_tls_cert),
                                         absl::GetFlag(FLAGS_stage_tls_key)});
    if (!tls.ok()) {
      std::cerr << "diffmesh-orchestrator: --stage-tls-*: " << tls.status().message() << "\n";
      return 2;
    }
    stage_channel.tls = *std::move(tls);
    auto token = diffmesh::StageTokenFromFlags();
    if (!token.ok()) {
      std::cerr << "diffmesh-orchestrator: " << token.status().message() << "\n";
      return 2;
    }
    stage_channel.bearer_token = *std::move(token);
  }
  std::unique_ptr<diffmesh::TokenAuthenticator> auth;
  if (const std::string tokens = absl::GetFlag(FLAGS_auth_token_file); !tokens.empty()) {
    auto loaded = diffmesh::TokenAuthenticator::FromFile(tokens);
    if (!loaded.ok()) {
      std::cerr << "diffmesh-orchestrator: --auth-token-file: " << loaded.status().message()
                << "\n";
      return 2;
    }
    auth = *std::move(loaded);
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
  diffmesh::GrpcStageClientFactory stages(pipeline->services, stage_channel);
  auto core = diffmesh::OrchestratorCore::Create(
      {*pipeline, &stages, observer.get(), absl::GetFlag(FLAGS_max_queued_requests)});
  if (!core.ok()) {
    std::cerr << "diffmesh-orchestrator: " << core.status().message() << "\n";
    return 2;
  }
  diffmesh::GenerationService service(core->get(), auth.get());
  diffmesh::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.tls = *std::move(server_tls);
  // "" reports the process (liveness); kGenerationService whether generations can be served
  // (readiness): NOT_SERVING until every stage service of the pipeline reports SERVING, and
  // again whenever one stops.
  options.health_service_names = {"diffmesh.v1.GenerationService"};  // = kGenerationService
  options.start_not_serving = true;
  auto server = diffmesh::RunningServer::Start({&service}, options);
  if (!server.ok()) {
    std::cerr << "diffmesh-orchestrator: " << server.status().message() << std::endl;
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = (*server)->server()->GetHealthCheckService();
  std::cout << "diffmesh-orchestrator serving on " << options.host << ":" << (*server)->port()
            << (!options.tls ? "" : options.tls->client_ca.empty() ? " (TLS)" : " (mutual TLS)")
            << std::endl;
  // Once every stage serves, the first time: the stages' Describe answers are checked against
  // the pipeline config; on a mismatch the orchestrator never serves and exits with 2.
  bool described = false;
  std::atomic<bool> config_mismatch{false};
  {
    diffmesh::StageHealthMonitor monitor(
        diffmesh::StageHealthTargets(*pipeline), stage_channel, absl::Milliseconds(500),
        [&](bool serving, const std::string& why) {
          if (serving && !described) {
            absl::Status s = CheckStagesDescribe(*pipeline, stage_channel);
            described = s.ok() || absl::IsFailedPrecondition(s);
            if (absl::IsFailedPrecondition(s)) {
              std::cerr << "diffmesh-orchestrator: " << s.message() << std::endl;
              config_mismatch = true;
              kill(getpid(), SIGTERM);  // ends WaitForTerminationSignal below
              return;
            }
            if (!s.ok()) {
              // Not a mismatch (e.g. the stages refuse this orchestrator's stage token, which
              // each request then reports): checked again when the stages next become serving.
              std::cout << "diffmesh-orchestrator: the pipeline config is not checked against "
                           "the stages yet: "
                        << s.message() << std::endl;
            }
          }
          if (config_mismatch) return;
          health->SetServingStatus(kGenerationService, serving);
          if (serving) {
            std::cout << "diffmesh-orchestrator: every stage serves; " << kGenerationService
                      << " SERVING" << std::endl;
          } else {
            std::cout << "diffmesh-orchestrator: " << kGenerationService
                      << " NOT_SERVING until the stages serve (" << why << ")" << std::endl;
          }
        });
    const int sig = diffmesh::WaitForTerminationSignal();
    if (!config_mismatch) {
      std::cout << "diffmesh-orchestrator: signal " << sig << ", shutting down" << std::endl;
    }
  }
  (*server)->Shutdown();
  return config_mismatch ? 2 : 0;
}
