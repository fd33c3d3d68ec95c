// In-process stage clients: the orchestrator calls the stage cores directly (no sockets).
// `diffmesh generate` without --server runs the pipeline this way.
#ifndef DIFFMESH_SERVICES_EMBEDDED_EMBEDDED_STAGES_H_
#define DIFFMESH_SERVICES_EMBEDDED_EMBEDDED_STAGES_H_

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
  // Builds the three stage cores for `model` (a built-in model). With a denoise group of more
  // than one rank, this process is rank 0 and ranks 1..N-1 run as local diffmesh-denoise
  // processes (found beside this executable or in `bin_dir`).
  static absl::StatusOr<std::unique_ptr<EmbeddedStages>> Create(
      const std::string& model, const models::parallel::ParallelConfig& parallel = {},
      const std::string& bin_dir = "");
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
