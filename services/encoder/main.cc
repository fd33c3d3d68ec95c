// diffmesh-encoder: the text/vision encoder stage service.
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "common/flags/flags.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server.h"
#include "common/rpc/stage_token.h"
#include "common/rpc/tls_flags.h"
#include "services/encoder/encoder_core.h"
#include "services/encoder/encoder_service.h"

ABSL_FLAG(int, port, 50053, "Port of the EncoderService.");
ABSL_FLAG(std::string, host, "127.0.0.1",
          "Address to listen on (loopback by default: a stage serves the orchestrator only; "
          "0.0.0.0 or a pod IP to serve it from elsewhere, then with --stage-token-file).");
ABSL_FLAG(std::string, device, "cpu",
          "cpu, or cuda (LTX-2: text encoder and connectors in bf16 on cuda:0; GLM-Image's "
          "glyph encoder stays on the CPU).");
ABSL_FLAG(int, metrics_port, 0, "Port of the Prometheus /metrics endpoint (on --host); 0: off.");
ABSL_FLAG(std::string, model, "glm-image-tiny",
          "Built-in model to serve (without --model-dir): glm-image-tiny, ltx2-tiny, or "
          "ltx2.3-release-random (LTX-2.3 at its released sizes, random weights drawn on the "
          "GPU; --device cuda only).");
ABSL_FLAG(std::string, model_dir, "",
          "A snapshot directory in the diffusers layout (model_index.json, component configs, "
          "safetensors): a GlmImagePipeline or an LTX2Pipeline, told by model_index.json's "
          "_class_name, checked by tensor name, shape and dtype before serving; served under its "
          "own name. The orchestrator's pipeline config must list that name.");

ABSL_FLAG(absl::Duration, max_request_time, absl::Minutes(10),
          "The longest one call may run, whatever deadline the caller sent (none included): "
          "its work then ends with DEADLINE_EXCEEDED, so no client can hold this stage. "
          "E.g. 90s, 10m; an encoder call takes well under a second to seconds.");

ABSL_FLAG(bool, release_gpu_cache, true,
          "With --device cuda: after each call, give the GPU memory LibTorch's caching allocator "
          "keeps free back to the device. The encoder runs once per request and often shares its "
          "GPU with the denoise stage, whose video decode then has that memory (on one H100 the "
          "release-size LTX-2 decode otherwise falls back to tiles). false: keep it, slightly "
          "faster when the GPU is the encoder's own.");

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
                       "diffmesh-encoder --port P [--model M]\n"
                       "Serves diffmesh.v1.EncoderService: the text encoders (GLM-Image's ByT5 "
                       "glyph encoder; LTX-2's Gemma 3 and its text connectors).");
  diffmesh::BlockTerminationSignals();
  // Checked before the model loads: a wrong path fails in a moment, not after the weights.
  auto tls = diffmesh::ServerTlsFromFlags();
  if (!tls.ok()) {
    std::cerr << "diffmesh-encoder: " << tls.status().message() << "\n";
    return 2;
  }
  auto stage_auth = diffmesh::StageAuthenticatorFromFlags();
  if (!stage_auth.ok()) {
    std::cerr << "diffmesh-encoder: " << stage_auth.status().message() << "\n";
    return 2;
  }
  const absl::Duration max_request_time = absl::GetFlag(FLAGS_max_request_time);
  if (max_request_time <= absl::ZeroDuration()) {
    std::cerr << "diffmesh-encoder: --max-request-time must be positive\n";
    return 2;
  }
  diffmesh::EncoderCore::Options o;
  o.model = absl::GetFlag(FLAGS_model);
  o.model_dir = absl::GetFlag(FLAGS_model_dir);
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "cpu" && device != "cuda") {
    std::cerr << "diffmesh-encoder: --device must be cpu or cuda, not '" << device << "'\n";
    return 2;
  }
  o.cuda = device == "cuda";
  auto core = diffmesh::EncoderCore::Create(o);
  if (!core.ok()) {
    std::cerr << "diffmesh-encoder: " << core.status().message() << "\n";
    return 2;
  }
  auto exposer = diffmesh::metrics::StartMetricsExposer(
      "diffmesh-encoder", absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port));
  if (!exposer.ok()) {
    std::cerr << "diffmesh-encoder: " << exposer.status().message() << "\n";
    return 2;
  }
  diffmesh::EncoderService service(core->get(), *exposer ? &(*exposer)->registry() : nullptr);
  service.set_authenticator(stage_auth->get());
  service.set_max_request_time(max_request_time);
  service.set_release_gpu_cache(o.cuda && absl::GetFlag(FLAGS_release_gpu_cache));
  diffmesh::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.health_service_names = {"diffmesh.v1.EncoderService"};
  options.tls = *std::move(tls);
  return diffmesh::ServeUntilSignal("diffmesh-encoder", {&service}, options);
}
