// The denoise stage core: CFG-guided FlowMatch Euler denoising with the GLM-Image DiT, then the
// VAE decode; or, for an LTX-2 model, its audio-video pipeline
// (services/denoise/ltx2_denoise.h), behind the same calls (denoise_engine.h). gRPC-free. One
// DenoiseCore per rank of the denoise group: rank 0 takes requests (Denoise) and broadcasts them;
// the other ranks run RunWorker until rank 0 stops them. A group runs one request at a time (the
// model fills its devices).
#ifndef DIFFMESH_SERVICES_DENOISE_DENOISE_CORE_H_
#define DIFFMESH_SERVICES_DENOISE_DENOISE_CORE_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "common/call/input_queue.h"
#include "diffmesh/v1/stages.pb.h"
#include "models/parallel/comm.h"
#include "models/parallel/layout.h"
#include "services/denoise/denoise_engine.h"

namespace diffmesh {

class DenoiseCore {
 public:
  struct Options {
    // What the service runs. kDenoise: the denoise group, whose rank 0 also serves the model's
    // "upsample" and "decode" stage kinds. kDecode: only those two kinds, on one device,
    // without a DiT or a group (decode_engine.h).
    enum class Role { kDenoise, kDecode };
    Role role = Role::kDenoise;
    // Built-in model to serve (ignored when model_dir is set).
    std::string model = "glm-image-tiny";
    // A GlmImagePipeline snapshot folder to serve instead of a built-in model, under the
    // snapshot's name (models/glm_image/snapshot.h: SpecFromSnapshot).
    std::string model_dir;
    // Largest image side served; 0: the model's (512 for the built-ins, 2048 for snapshots).
    // The AR stage sizes its KV cache for it (prompt + preview + target grid).
    int max_image_size = 0;
    // Degrees of parallelism of the group (world = tp × ulysses × ring × cfg).
    models::parallel::ParallelConfig parallel;
    // Run on CUDA: one GPU per rank, bf16 DiT (VAE in fp32), NCCL between ranks.
    bool cuda = false;
    // This rank and where the ranks meet (world_size must equal parallel.world()).
    models::parallel::RendezvousOptions rendezvous;
    // A streamed request (DenoiseStream) whose next input takes longer than this is ended
    // with DEADLINE_EXCEEDED and the group released, so a stalled client cannot hold the group.
    absl::Duration stream_idle_timeout = absl::Seconds(60);
    // LoRA adapters of the model's transformer (LTX-2), name → safetensors file (--lora
    // name=path). Every rank loads its slices at start; a request names one in
    // DenoiseRequest.lora. Empty: none (a request naming one is FAILED_PRECONDITION).
    std::map<std::string, std::string> loras;
    // The group's heartbeats (models/parallel/comm_membership.h): every rank beats each
    // heartbeat_interval; a rank silent for heartbeat_timeout (> 2 × interval) is lost and the
    // group re-forms without waiting for a collective to time out.
    absl::Duration heartbeat_interval = absl::Milliseconds(500);
    absl::Duration heartbeat_timeout = absl::Seconds(4);
    // Optional: called on every rank after each denoising step with its wall time (this rank's
    // DiT passes plus its waits in the collectives).
    std::function<void(double seconds)> on_step;
  };
  // Collective: every rank of the group calls it.
  static absl::StatusOr<std::unique_ptr<DenoiseCore>> Create(const Options& options);
  ~DenoiseCore();

  // Rank 0: runs a request with the whole group. Emits one Step event per denoising step,
  // then the Result.
  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event);

  // Rank 0: the streamed form (DenoiseService.DenoiseStream). Takes the request, then its
  // inputs from `inputs` as the stages before produce them (AR token chunks and the encoder's
  // output, any order; the queue closed at the end), broadcasting each piece to the other ranks
  // as it arrives, and runs the steps once the target grid and the embeddings are complete.
  // Waits for the group while another request runs; the inputs queue up meanwhile.
  absl::Status DenoiseStreamed(CallContext& ctx, InputQueue<v1::DenoiseInput>& inputs,
                               const std::function<void(const v1::DenoiseEvent&)>& on_event);

  // Ranks > 0: takes part in every request rank 0 runs; returns when rank 0 stops the group
  // (OK) or the group breaks.
  absl::Status RunWorker();

  int rank() const;

  // Rank 0 (or a --role decode service): what it serves, for DenoiseService.Describe.
  v1::StageDescription Describe() const;

 private:
  class Impl;  // GLM-Image's engine
  explicit DenoiseCore(std::unique_ptr<DenoiseEngine> impl);
  std::unique_ptr<DenoiseEngine> impl_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_DENOISE_CORE_H_
