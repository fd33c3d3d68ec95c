// `diffmesh up`: starts the four services as child processes on loopback and waits until each
// reports SERVING (a service that dies before that fails the start; the orchestrator's
// GenerationService, which serves once every stage does). Then it supervises: a
// service that dies is logged and restarted with exponential backoff (0.5 s doubling to 10 s,
// back to 0.5 s after 30 s of stable running) while the others keep serving. SIGINT/SIGTERM
// stop them all.
#ifndef DIFFMESH_SERVICES_CLI_MESH_H_
#define DIFFMESH_SERVICES_CLI_MESH_H_

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "models/parallel/layout.h"

namespace diffmesh::cli {

// TLS and the API token of a local mesh (PEM / token file paths; empty: off).
struct MeshSecurity {
  // Every service's --tls-cert / --tls-key / --tls-client-ca.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // The CA of tls_cert: the orchestrator's --stage-tls-ca, and the roots of `up`'s health checks.
  std::string tls_ca;
  // The client certificate of calls inside the mesh (orchestrator → stages, `up`'s health
  // checks), for services that require one (tls_client_ca).
  std::string stage_tls_cert;
  std::string stage_tls_key;
  // The orchestrator's --auth-token-file.
  std::string auth_token_file;
  // Every service's --stage-token-file (the stages accept its tokens, the orchestrator presents
  // the first). Empty: `up` writes a throw-away random token to a private temporary file for
  // the mesh's lifetime.
  std::string stage_token_file;
};

struct MeshOptions {
  // Orchestrator on base_port, AR / encoder / denoise on base_port + 1..3; their Prometheus
  // /metrics endpoints on base_port + 10..13 in the same order.
  int base_port = 50051;
  // Built-in model the stage services load.
  std::string model = "glm-image-tiny";
  // Snapshot folder the stages serve instead (their --model-dir; any family the pipeline
  // config knows, e.g. GlmImagePipeline or LTX2Pipeline; the orchestrator's pipeline is
  // generated for it).
  std::string model_dir;
  // Pipeline config the orchestrator runs (its --pipeline); empty: the built-in one, or the
  // snapshot's. Its service addresses are replaced by the mesh's own.
  std::string pipeline_file;
  // Start the AR service; false for a model whose pipeline has no AR stage (LTX-2): the mesh
  // then runs the encoder, the denoise group and the orchestrator only.
  bool ar = true;
  // Folder with the service binaries; empty: beside this executable or in the build tree.
  std::string bin_dir;
  // Degrees of the denoise group (its ranks are processes started by diffmesh-denoise).
  models::parallel::ParallelConfig parallel;
  // "cpu" or "cuda": every stage service's --device (the AR service, the LTX-2 encoder's text
  // encoder and connectors, the denoise ranks).
  std::string device = "cpu";
  MeshSecurity security;
  // How long each service may take to report SERVING.
  absl::Duration start_timeout = absl::Seconds(120);
};

// Runs until a termination signal (exit code 0) or a failure to start (non-zero). Expects SIGINT,
// SIGTERM and SIGCHLD to be blocked in the calling thread.
int RunMesh(const MeshOptions& options);

}  // namespace diffmesh::cli

#endif  // DIFFMESH_SERVICES_CLI_MESH_H_
