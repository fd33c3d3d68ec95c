// In-process stage clients: the orchestrator calls the stage cores directly (no sockets).
// `diffmesh generate` without --server runs the pipeline this way.
#ifndef DIFFMESH_SERVICES_EMBEDDED_EMBEDDED_STAGES_H_
#define DIFFMESH_SERVICES_EMBEDDED_EMBEDDED_STAGES_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/parallel/layout.h"
#include "services/ar/ar_core.h"
#include "services/denoise/denoise_core.h"
#include "services/encoder/encoder_core.h"
#include "services/orchestrator/stage_client.h"

namespace diffmesh {

class EmbeddedStages final : public StageClientFactory {
 public:
  struct Options {
    // Built-in model to serve (ignored when model_dir is set).
    std::string model = "glm-image-tiny";
    // GlmImagePipeline snapshot folder to serve instead, under the snapshot's name.
    std::string model_dir;
    // Degrees of the denoise group. With more than one rank this process is rank 0 and ranks
    // 1..N-1 run as local diffmesh-denoise processes (found beside this executable or in
    // `bin_dir`).
    models::parallel::ParallelConfig parallel;
    std::string bin_dir;
    // AR and denoise on the GPU (cuda:0, bf16; each denoise rank on GPU rank % visible GPUs),
    // as the services' --device cuda; the glyph encoder stays on the CPU.
    bool cuda = false;
    // Start the AR stage; false for models whose pipeline has none (LTX-2).
    bool ar = true;
    // LoRA adapters the denoise group loads, name → file (DenoiseCore::Options::loras).
    std::map<std::string, std::string> denoise_loras;
  };
  static absl::StatusOr<std::unique_ptr<EmbeddedStages>> Create(const Options& options);
  ~EmbeddedStages() override;

  absl::StatusOr<ArStageClient*> Ar(const std::string& service) override;
  absl::StatusOr<EncoderStageClient*> Encoder(const std::string& service) override;
  absl::StatusOr<DenoiseStageClient*> Denoise(const std::string& service) override;

 private:
  class Clients;
  EmbeddedStages() = default;
  std::unique_ptr<ArCore> ar_;
  std::unique_ptr<EncoderCore> encoder_;
  std::unique_ptr<DenoiseCore> denoise_;
  std::unique_ptr<Clients> clients_;
  std::vector<pid_t> denoise_ranks_;  // local worker ranks of the denoise group
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_EMBEDDED_EMBEDDED_STAGES_H_
