// diffmesh-denoise: the denoise group (DiT + VAE decode); this process is rank 0.
#include <iostream>

#include "absl/flags/flag.h"
#include "common/flags/flags.h"
#include "common/rpc/server.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/denoise_service.h"

ABSL_FLAG(int, port, 50054, "Port of the DenoiseService.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(std::string, model, "glm-image-tiny", "Built-in model to serve.");

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
                       "diffmesh-denoise --port P [--model M]\n"
                       "Serves diffmesh.v1.DenoiseService: CFG-guided FlowMatch Euler denoising "
                       "with the GLM-Image DiT, then the VAE decode to PNG.");
  diffmesh::BlockTerminationSignals();
  diffmesh::DenoiseCore::Options o;
  o.model = absl::GetFlag(FLAGS_model);
  auto core = diffmesh::DenoiseCore::Create(o);
  if (!core.ok()) {
    std::cerr << "diffmesh-denoise: " << core.status().message() << "\n";
    return 2;
  }
  diffmesh::DenoiseService service(core->get());
  diffmesh::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.health_service_names = {"diffmesh.v1.DenoiseService"};
  return diffmesh::ServeUntilSignal("diffmesh-denoise", {&service}, options);
}
