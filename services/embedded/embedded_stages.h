// In-process stage clients: the orchestrator calls the stage cores directly (no sockets).
// `diffmesh generate` without --server runs the pipeline this way.
#ifndef DIFFMESH_SERVICES_EMBEDDED_EMBEDDED_STAGES_H_
#define DIFFMESH_SERVICES_EMBEDDED_EMBEDDED_STAGES_H_

#include <memory>
#include <string>

#include "services/ar/ar_core.h"
#include "services/denoise/denoise_core.h"
#include "services/encoder/encoder_core.h"
#include "services/orchestrator/stage_client.h"

namespace diffmesh {

class EmbeddedStages final : public StageClientFactory {
 public:
  // Builds the three stage cores for `model` (a built-in model).
  static absl::StatusOr<std::unique_ptr<EmbeddedStages>> Create(const std::string& model);
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
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_EMBEDDED_EMBEDDED_STAGES_H_
