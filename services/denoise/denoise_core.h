// The denoise stage core: CFG-guided FlowMatch Euler denoising with the GLM-Image DiT, then the
// VAE decode. gRPC-free. Runs one request at a time (the model fills the machine).
#ifndef DIFFMESH_SERVICES_DENOISE_DENOISE_CORE_H_
#define DIFFMESH_SERVICES_DENOISE_DENOISE_CORE_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

class DenoiseCore {
 public:
  struct Options {
    // Built-in model to serve.
    std::string model = "glm-image-tiny";
    // Largest image side accepted.
    int max_image_size = 512;
  };
  static absl::StatusOr<std::unique_ptr<DenoiseCore>> Create(const Options& options);
  ~DenoiseCore();

  // Emits one Step event per denoising step, then the Result.
  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event);

 private:
  class Impl;
  explicit DenoiseCore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_DENOISE_CORE_H_
