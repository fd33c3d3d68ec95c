// diffmesh-ar: the AR-token stage service.
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "common/flags/flags.h"
#include "common/metrics/families.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server.h"
#include "common/rpc/stage_token.h"
#include "common/rpc/tls_flags.h"
#include "services/ar/ar_core.h"
#include "services/ar/ar_service.h"
#include "services/stage_common/gpu_metrics.h"

ABSL_FLAG(int, port, 50052, "Port of the ArTokenService.");
ABSL_FLAG(std::string, host, "127.0.0.1",
          "Address to listen on (loopback by default: a stage serves the orchestrator only; "
          "0.0.0.0 or a pod IP to serve it from elsewhere, then with --stage-token-file).");
ABSL_FLAG(int, metrics_port, 0, "Port of the Prometheus /metrics endpoint (on --host); 0: off.");
ABSL_FLAG(std::string, model, "glm-image-tiny", "Built-in model to serve (without --model-dir).");
ABSL_FLAG(std::string, model_dir, "",
          "A GlmImagePipeline snapshot directory (model_index.json, component configs, "
          "safetensors); served under its own name. The orchestrator's pipeline config must list "
          "that name.");
ABSL_FLAG(int, max_batch, 8, "Sequences decoded together (continuous batching; KV-cache slots).");
ABSL_FLAG(int, max_queue, 64, "Requests waiting for a slot before RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, chunk_tokens, 32, "Tokens per streamed chunk.");
ABSL_FLAG(std::string, device, "cpu", "cpu (fp32), or cuda (cuda:0, bf16, CUDA-graph decode).");
ABSL_FLAG(double, kv_cache_memory_gib, 0,
          "KV-cache budget in GiB; 0: room for exactly --max-batch sequences. The batch is the "
          "budget over one sequence's cache, capped at --max-batch.");

ABSL_FLAG(absl::Duration, max_request_time, absl::Minutes(10),
          "The longest one call may run, whatever deadline the caller sent (none included): "
          "its work then ends with DEADLINE_EXCEEDED, so no client can hold this stage. "
          "E.g. 90s, 10m; an AR prior of the largest image takes seconds to a minute.");

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
                       "diffmesh-ar --port P [--model M]\n"
                       "Serves diffmesh.v1.ArTokenService: the AR prior-token model with a KV cache "
                       "and continuous batching, streaming tokens in chunks.");
  diffmesh::BlockTerminationSignals();
  // Checked before the model loads: a wrong path fails in a moment, not after the weights.
  auto tls = diffmesh::ServerTlsFromFlags();
  if (!tls.ok()) {
    std::cerr << "diffmesh-ar: " << tls.status().message() << "\n";
    return 2;
  }
  auto stage_auth = diffmesh::StageAuthenticatorFromFlags();
  if (!stage_auth.ok()) {
    std::cerr << "diffmesh-ar: " << stage_auth.status().message() << "\n";
    return 2;
  }
  const absl::Duration max_request_time = absl::GetFlag(FLAGS_max_request_time);
  if (max_request_time <= absl::ZeroDuration()) {
    std::cerr << "diffmesh-ar: --max-request-time must be positive\n";
    return 2;
  }
  diffmesh::ArCore::Options o;
  o.model = absl::GetFlag(FLAGS_model);
  o.model_dir = absl::GetFlag(FLAGS_model_dir);
  o.max_batch = absl::GetFlag(FLAGS_max_batch);
  o.max_queue = absl::GetFlag(FLAGS_max_queue);
  o.chunk_tokens = absl::GetFlag(FLAGS_chunk_tokens);
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "cpu" && device != "cuda") {
    std::cerr << "diffmesh-ar: --device must be cpu or cuda, not '" << device << "'\n";
    return 2;
  }
  o.cuda = device == "cuda";
  o.kv_cache_memory_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_kv_cache_memory_gib) * (1LL << 30));
  auto core = diffmesh::ArCore::Create(o);
  if (!core.ok()) {
    std::cerr << "diffmesh-ar: " << core.status().message() << "\n";
    return 2;
  }
  // Declared after the core: the exposer's scrape threads read the core's stats.
  auto exposer = diffmesh::metrics::StartMetricsExposer("diffmesh-ar", absl::GetFlag(FLAGS_host),
                                                        absl::GetFlag(FLAGS_metrics_port));
  if (!exposer.ok()) {
    std::cerr << "diffmesh-ar: " << exposer.status().message() << "\n";
    return 2;
  }
  if (*exposer != nullptr) {
    using Sample = diffmesh::metrics::CallbackGauge::Sample;
    const diffmesh::ArCore* ar = core->get();
    (*exposer)->Add(std::make_shared<diffmesh::metrics::CallbackGauge>(
        diffmesh::metrics::kArKvCacheSlots, diffmesh::metrics::kArKvCacheSlotsHelp, [ar] {
          const auto s = ar->stats();
          return std::vector<Sample>{{{{"state", "used"}}, static_cast<double>(s.running)},
                                     {{{"state", "free"}}, static_cast<double>(s.free_slots)}};
        }));
    (*exposer)->Add(std::make_shared<diffmesh::metrics::CallbackGauge>(
        diffmesh::metrics::kRequestsWaiting, diffmesh::metrics::kRequestsWaitingHelp, [ar] {
          return std::vector<Sample>{{{{"stage", diffmesh::metrics::kStageAr}},
                                      static_cast<double>(ar->stats().waiting)}};
        }));
    if (auto gpu = diffmesh::GpuMemoryCollector()) (*exposer)->Add(std::move(gpu));
  }
  diffmesh::ArTokenService service(core->get(), *exposer ? &(*exposer)->registry() : nullptr);
  service.set_authenticator(stage_auth->get());
  service.set_max_request_time(max_request_time);
  diffmesh::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.health_service_names = {"diffmesh.v1.ArTokenService"};
  options.tls = *std::move(tls);
  return diffmesh::ServeUntilSignal("diffmesh-ar", {&service}, options);
}
